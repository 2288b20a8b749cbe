//! Ids from the outside world: every entry (command line, import file, local API) refuses an
//! id outside `[A-Za-z0-9-]{1,64}` before it reaches the database or Basiq.

use std::path::Path;
use std::process::Output;

use basiq_health::domain::UserId;
use basiq_sim::RunningSim;

use crate::app::*;
use crate::commands::run;
use crate::helpers::*;

const RULE: &str = "[A-Za-z0-9-]{1,64}";

/// Asserts the command was refused as bad input, naming `bad` (quoted as our errors quote).
fn assert_refused(out: &Output, bad: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{bad:?}")),
        "names {bad:?}: {stderr}"
    );
    assert!(stderr.contains(RULE), "states the rule: {stderr}");
}

/// Asserts the simulator was not asked anything, not even for a token.
fn assert_no_request(sim: &RunningSim) {
    let counters = sim.sim.counters();
    assert_eq!(counters.token_calls, 0, "{counters:?}");
    assert!(counters.requests.is_empty(), "{counters:?}");
}

fn registered(sim: &RunningSim, db: &Path) -> Vec<String> {
    let out = run(sim, db, &["users", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_id_with_dots_and_slashes_is_refused_at_the_cli_with_exit_2() {
    let t = TestApp::spawn().await;
    let sim = t.sim();
    let real = sim.sim.user_ids()[0].clone();
    let db = t.db();
    let climbing = format!("{real}/connections/x/../..");

    assert_refused(
        &run(sim, &db, &["sweep", "--user", "../../etc"]),
        "../../etc",
    );
    assert_refused(&run(sim, &db, &["sweep", "--user", &climbing]), &climbing);
    assert_refused(
        &run(sim, &db, &["users", "add", &real, "../../etc"]),
        "../../etc",
    );

    assert!(!db.exists(), "the database was not even opened");
    assert_no_request(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_argument_of_the_cli_is_checked_before_anything_runs() {
    let t = TestApp::spawn().await;
    let sim = t.sim();
    let user = sim.sim.user_ids()[0].clone();
    let conn = sim.sim.connection_ids(&user)[0].clone();
    let db = t.db();
    let long = "a".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["sweep", "--user", &user, "--user", ""], ""),
        (vec!["check", "a/b"], "a/b"),
        (vec!["status", "--user", "%2e%2e"], "%2e%2e"),
        (vec!["refresh", "--user", "..", &conn], ".."),
        (
            vec!["refresh", "--user", &user, "../x/refresh"],
            "../x/refresh",
        ),
        (vec!["purge", "--user", &user, "c 1", "--yes"], "c 1"),
        (
            vec!["purge", "--user", "u\u{e9}", &conn, "--yes"],
            "u\u{e9}",
        ),
        (vec!["plan", "--user", &long], &long),
        (vec!["users", "remove", "u_1"], "u_1"),
    ];
    for (args, bad) in cases {
        assert_refused(&run(sim, &db, &args), bad);
    }
    assert!(!db.exists(), "the database was not even opened");
    assert_no_request(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_import_refuses_a_file_with_a_bad_id_and_imports_nothing() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let good = t.path("good.txt");
    std::fs::write(&good, "u-1\nu-2\n").unwrap();
    assert!(
        run(sim, &db, &["users", "import", good.to_str().unwrap()])
            .status
            .success()
    );

    let bad = t.path("bad.txt");
    let mut text =
        b"u-3\n# a comment\n../../etc\nu-4\nu-1/connections/x/../..  # trailing\n".to_vec();
    text.extend_from_slice(b"u-\xff5\n");
    std::fs::write(&bad, text).unwrap();
    let out = run(sim, &db, &["users", "import", bad.to_str().unwrap()]);
    assert_refused(&out, "../../etc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing imported"), "{stderr}");
    assert!(stderr.contains("bad.txt"), "names the file: {stderr}");
    assert!(stderr.contains("3 line(s) with a bad id"), "{stderr}");
    assert!(
        stderr.contains("line 3: invalid user id \"../../etc\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5: invalid user id \"u-1/connections/x/../..\""),
        "{stderr}"
    );
    assert!(stderr.contains("line 6: invalid user id"), "{stderr}");

    assert_eq!(
        registered(sim, &db),
        ["u-1", "u-2"],
        "neither u-3 nor u-4 was added"
    );
    assert_no_request(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_400_for_a_bad_user_id() {
    let t = TestApp::spawn().await;
    let sim = t.sim();
    let real = sim.sim.user_ids()[0].clone();
    // A tick once a year: nothing but the requests below may reach the simulator.
    let mut settings = t.settings_with("[sweep]\ntick = \"0 0 0 1 1 *\"\n");
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().unwrap());
    app.context()
        .add_users(&[UserId::parse(real.as_str()).unwrap()])
        .await
        .unwrap();
    let http = api_client(&app);
    let daemon = Daemon::start(app);
    sim.sim.reset_counters();

    // (as sent in the path, percent-encoded; as the API decodes it)
    let climbing = format!("{real}/connections/x/../..");
    let cases = [
        ("..%2F..%2Fetc".to_owned(), "../../etc".to_owned()),
        (
            format!("{real}%2Fconnections%2Fx%2F..%2F.."),
            climbing.clone(),
        ),
        ("a%20b".to_owned(), "a b".to_owned()),
        ("caf%C3%A9".to_owned(), "caf\u{e9}".to_owned()),
        ("u%00".to_owned(), "u\0".to_owned()),
        ("a".repeat(65), "a".repeat(65)),
    ];
    for (sent, id) in &cases {
        let response = http
            .get(format!("{base}/v1/users/{sent}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{sent}");
        let body: serde_json::Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("invalid user id {id:?}")),
            "{sent}: {body}"
        );
        assert!(error.contains(RULE), "{body}");
    }
    // The mutating routes refuse the id too.
    for (sent, _) in &cases {
        for request in [
            http.put(format!("{base}/v1/users/{sent}")),
            http.delete(format!("{base}/v1/users/{sent}")),
            http.post(format!("{base}/v1/users/{sent}/login")),
        ] {
            let status = request.send().await.unwrap().status();
            assert_eq!(status, 400, "{sent}");
        }
    }

    let users: serde_json::Value = http
        .get(format!("{base}/v1/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [real.as_str()], "nothing registered or removed");
    assert_no_request(sim);
    daemon.stop().await;
}

#[tokio::test]
async fn a_stored_id_from_before_the_rule_still_names_only_itself_at_basiq() {
    let t = TestApp::spawn().await;
    let sim = t.sim();
    let real = sim.sim.user_ids()[0].clone();
    let sweeper = t.context().await;
    // A row an older build let in: it climbs back to the real user's connections when
    // formatted into a URL.
    let legacy = format!("{real}/connections/x/../..");
    sqlx::query("INSERT INTO users (user_id, added_at, next_due_at) VALUES (?, 0, 0)")
        .bind(&legacy)
        .execute(sweeper.store().write_pool())
        .await
        .unwrap();
    let ids: Vec<UserId> = sweeper
        .store()
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(ids.len(), 1);
    let counts = sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(ids),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();

    // Sent as one encoded segment, it names a user Basiq does not know: 404, gone.
    assert_eq!(
        (counts.users_swept, counts.users_gone),
        (0, 1),
        "{counts:?}"
    );
    let copied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connections WHERE user_id = ?")
        .bind(&legacy)
        .fetch_one(sweeper.store().pool())
        .await
        .unwrap();
    assert_eq!(
        copied, 0,
        "the real user's connections were not read into it"
    );
    assert!(sim.sim.counters().refresh_calls.is_empty());
}
