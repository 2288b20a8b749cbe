//! The register, the login check, the status report and the demo, as a user runs them.

use std::path::Path;
use std::process::Output;

use basiq_sim::RunningSim;

use crate::app::*;
use crate::cli::bin;
use crate::helpers::*;

fn config() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/basiq-health.toml")
}

/// Runs the binary against `sim` with its database at `db` (blocking: call it from a
/// multi-thread runtime so the in-process simulator keeps serving).
pub fn run(sim: &RunningSim, db: &Path, args: &[&str]) -> Output {
    run_with_key(sim, db, args, &sim.sim.api_key())
}

/// [`run`] with this API key.
fn run_with_key(sim: &RunningSim, db: &Path, args: &[&str], key: &str) -> Output {
    bin()
        .arg("--config")
        .arg(config())
        .args(args)
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", db)
        .env("BASIQ_HEALTH__API__LISTEN", "")
        .env("BASIQ_HEALTH_API_KEY", key)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_import_is_idempotent_and_list_shows_the_schedule() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let file = t.path("users.txt");
    std::fs::write(
        &file,
        "# partner export\nu-1\nu-2  # trailing comment\n\nu-1\nu-3\n",
    )
    .unwrap();
    let first = stdout(&run(sim, &db, &["users", "import", file.to_str().unwrap()]));
    assert!(first.contains("3 new"), "{first}");
    let again = stdout(&run(sim, &db, &["users", "import", file.to_str().unwrap()]));
    assert!(again.contains("0 new"), "{again}");
    stdout(&run(sim, &db, &["users", "add", "u-4"]));
    stdout(&run(sim, &db, &["users", "remove", "u-2"]));

    let list: serde_json::Value =
        serde_json::from_str(&stdout(&run(sim, &db, &["users", "list", "--json"]))).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["u-1", "u-3", "u-4"]);
    for u in list.as_array().unwrap() {
        assert!(u["next_due_at"].is_string(), "{u}");
        assert!(
            u.get("last_swept_at").is_some() && u["last_swept_at"].is_null(),
            "{u}"
        );
    }
    let table = stdout(&run(sim, &db, &["users", "list"]));
    assert!(table.contains("u-3") && !table.contains("u-2"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_check_and_status_work_from_the_command_line() {
    let t = TestApp::builder().users(12).spawn().await;
    let sim = t.sim();
    let db = t.db();
    let users = sim.sim.user_ids();
    let mut add = vec!["users", "add"];
    add.extend(users.iter().map(String::as_str));
    stdout(&run(sim, &db, &add));

    let counts: serde_json::Value =
        serde_json::from_str(&stdout(&run(sim, &db, &["sweep"]))).unwrap();
    assert_eq!(counts["users_swept"], 12);

    sim.sim.reset_counters();
    let checked: serde_json::Value =
        serde_json::from_str(&stdout(&run(sim, &db, &["check", &users[0]]))).unwrap();
    assert_eq!(checked["user_id"], users[0].as_str());
    assert_eq!(
        checked["swept"], false,
        "swept moments ago: within sweep.login_min_interval"
    );
    assert!(!checked["connections"].as_array().unwrap().is_empty());
    let c = sim.sim.counters();
    assert_eq!(
        c.requests.get(&basiq_sim::Route::Connections),
        None,
        "not swept again"
    );
    assert_eq!(
        c.requests.get(&basiq_sim::Route::Jobs),
        None,
        "not swept again"
    );
    assert!(
        checked["refreshes"].is_array(),
        "login-triggered refresh decisions: {checked}"
    );

    let table = stdout(&run(sim, &db, &["status"]));
    assert!(
        table.contains("open outages") && table.contains("healthy"),
        "{table}"
    );
    let one: serde_json::Value = serde_json::from_str(&stdout(&run(
        sim,
        &db,
        &["status", "--json", "--user", &users[1]],
    )))
    .unwrap();
    assert!(
        one["connections"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["user_id"] == users[1].as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_check_of_a_new_user_sweeps_it_at_once() {
    let t = TestApp::builder().users(3).spawn().await;
    let sim = t.sim();
    let db = t.db();
    let user = sim.sim.user_ids()[2].clone();
    let checked: serde_json::Value =
        serde_json::from_str(&stdout(&run(sim, &db, &["check", &user]))).unwrap();
    assert_eq!(checked["swept"], true);
    let healths: Vec<&str> = checked["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["health"].as_str().unwrap())
        .collect();
    assert!(!healths.is_empty());
}

#[tokio::test]
async fn the_local_api_registers_users_checks_logins_and_reports() {
    let t = TestApp::builder().users(4).spawn().await;
    let sim = t.sim();
    let mut settings = t.settings_with("");
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().unwrap());
    let http = api_client(&app);
    let daemon = Daemon::start(app);
    let user = sim.sim.user_ids()[0].clone();

    let put = http
        .put(format!("{base}/v1/users/{user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let login: serde_json::Value = http
        .post(format!("{base}/v1/users/{user}/login"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(login["swept"], true);
    assert!(!login["connections"].as_array().unwrap().is_empty());
    let health = http
        .get(format!("{base}/v1/users/{user}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let status: serde_json::Value = http
        .get(format!("{base}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["summary"]["users"], 1);
    let healthz = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    let users: serde_json::Value = http
        .get(format!("{base}/v1/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users[0]["user_id"], user.as_str());
    let gone = http
        .delete(format!("{base}/v1/users/{user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 200);
    let unknown = http
        .get(format!("{base}/v1/users/{user}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    daemon.stop().await;
}

#[test]
fn the_demo_runs_end_to_end_and_names_an_outage_and_a_user_who_must_act() {
    let out = bin()
        .args(["demo", "--users", "40", "--day", "12s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("== outages seen during the day =="), "{text}");
    assert!(
        text.contains("recovered at"),
        "an outage started and ended: {text}"
    );
    assert!(text.contains("major-outage"), "{text}");
    assert!(
        text.contains("connections needing the user's action"),
        "{text}"
    );
    assert!(
        text.contains("-> ask the user"),
        "at least one action-required connection: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let mut child = bin()
        .arg("--config")
        .arg(config())
        .arg("run")
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", &db)
        .env("BASIQ_HEALTH__API__LISTEN", "127.0.0.1:0")
        .env("BASIQ_HEALTH__LOG__FORMAT", "json")
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("\"event\":\"started\""));
    assert!(started.is_some(), "the daemon says it is running");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("\"event\":\"stopped\"")),
        "{rest:?}"
    );
}

#[test]
fn a_non_loopback_api_without_a_token_is_refused() {
    let out = bin()
        .arg("--config")
        .arg(config())
        .args(["config", "check"])
        .env("BASIQ_HEALTH__API__LISTEN", "0.0.0.0:8088")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api.listen") && stderr.contains("api.token_file"),
        "{stderr}"
    );
}

#[test]
fn an_unwritable_database_path_exits_74() {
    let out = bin()
        .arg("--config")
        .arg(config())
        .args(["status"])
        .env("BASIQ_HEALTH__DATABASE__PATH", "/nonexistent-dir/sub/bh.db")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(74),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir/sub/bh.db"));
}

/// Registers the simulator's users; returns their ids.
fn register_all(sim: &RunningSim, db: &Path) -> Vec<String> {
    let users = sim.sim.user_ids();
    let mut add = vec!["users", "add"];
    add.extend(users.iter().map(String::as_str));
    stdout(&run(sim, db, &add));
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_exits_non_zero_with_a_wrong_key() {
    let t = TestApp::builder().users(30).spawn().await;
    let sim = t.sim();
    let db = t.db();
    register_all(sim, &db);
    sim.sim.reset_counters();
    let wrong = "d3Jvbmcta2V5LWZvci1iYXNpcS1oZWFsdGg=";
    let out = run_with_key(sim, &db, &["sweep"], wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts["users_swept"], 0);
    assert_eq!(counts["aborted"]["cause"], "auth", "{counts}");
    assert!(
        stderr.contains("Basiq refused the API key"),
        "one clear line: {stderr}"
    );
    assert!(!stderr.contains(wrong), "the key leaked: {stderr}");
    assert!(sim.sim.counters().token_calls <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_exits_non_zero_when_no_user_could_be_swept() {
    let t = TestApp::builder().users(3).spawn().await;
    let sim = t.sim();
    let db = t.db();
    let users = register_all(sim, &db);
    let deny = |user: &str| {
        sim.sim.inject_user_fault(
            user,
            basiq_sim::Fault::UnauthorizedAccess { status: 403 },
            1,
        )
    };
    for user in &users {
        deny(user);
    }
    let out = run(sim, &db, &["sweep"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            counts["users_swept"].as_u64(),
            counts["users_failed"].as_u64()
        ),
        (Some(0), Some(3))
    );
    assert!(
        counts["aborted"].is_null(),
        "a failure per user does not stop the pass"
    );
    assert!(stderr.contains("no user could be swept"), "{stderr}");

    // One user failing out of three is a partial success: exit 0.
    deny(&users[0]);
    let out = run(sim, &db, &["sweep"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            counts["users_swept"].as_u64(),
            counts["users_failed"].as_u64()
        ),
        (Some(2), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_77_when_basiq_refuses_the_key() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    sim.sim.revoke_api_key(401);
    let out = run(sim, &db, &["check", "some-user"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("basiq.api_key"), "{stderr}");
}
