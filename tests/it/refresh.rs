//! Refreshing without hurting banks: the cap across processes and crashes, the gates end to
//! end, the pace, recovery spreading, job following, purge.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration as StdDuration;

use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::policy::Trigger;
use basiq_sim::{
    Fault, OUTAGE_CONNECTOR, Outcome, Route, RunningSim, ScriptedConnection, ScriptedJob, SimConfig,
};
use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::cli::bin;
use crate::helpers::*;

fn config() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/basiq-health.toml")
}

fn command(
    sim: &RunningSim,
    db: &std::path::Path,
    envs: &[(&str, &str)],
    args: &[&str],
) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(config())
        .args(args)
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", db)
        .env("BASIQ_HEALTH__API__LISTEN", "")
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
        .envs(envs.iter().copied());
    cmd
}

fn decision(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn add(
    sim: &RunningSim,
    user: &str,
    conn: &str,
    institution: &str,
    method: &str,
    status: &str,
    last_used: Duration,
) -> (UserId, ConnectionId) {
    sim.sim.add_user(user);
    let mut c = ScriptedConnection::new(institution, method);
    c.id = conn.into();
    c.status = status.into();
    c.last_used = Some(Utc::now() - last_used);
    c.expiry = (method == "open-banking").then(|| Utc::now() + Duration::days(200));
    sim.sim.add_connection(user, c);
    (
        UserId::parse(user).unwrap(),
        ConnectionId::parse(conn).unwrap(),
    )
}

const NO_FLOOR: [(&str, &str); 2] = [
    ("BASIQ_HEALTH__REFRESH__MIN_INTERVAL", "0s"),
    ("BASIQ_HEALTH__REFRESH__LOGIN_STALE_AFTER", "0s"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_refresh_commands_reach_basiq_at_most_twenty_times() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let (user, conn) = add(
        sim,
        "cap-user",
        "cap-conn",
        "AU00004",
        "open-banking",
        "active",
        Duration::days(2),
    );
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..25 {
        let out = command(
            sim,
            &db,
            &NO_FLOOR,
            &["refresh", "--user", user.as_str(), conn.as_str()],
        )
        .output()
        .unwrap();
        let d = decision(&out);
        let key = format!(
            "{}:{}",
            d["decision"].as_str().unwrap(),
            d["reason"].as_str().unwrap_or("")
        );
        *outcomes.entry(key).or_default() += 1;
    }
    let calls = sim
        .sim
        .counters()
        .refresh_calls
        .get(conn.as_str())
        .map_or(0, Vec::len);
    assert_eq!(calls, 20, "the 20-a-day cap holds: {outcomes:?}");
    assert_eq!(
        outcomes.get("refreshed:").copied(),
        Some(20),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.get("denied:daily-cap").copied(),
        Some(5),
        "{outcomes:?}"
    );
    assert_eq!(sim.sim.counters().bulk_refresh_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_refresh_processes_at_random_moments_never_allows_a_twenty_first() {
    use rand::Rng;
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let (user, conn) = add(
        sim,
        "kill-user",
        "kill-conn",
        "AU00005",
        "open-banking",
        "active",
        Duration::days(2),
    );
    let mut rng = rand::rng();
    let mut killed = 0;
    for _round in 0..5 {
        // Several processes at once, some killed mid-flight.
        let mut children: Vec<_> = (0..8)
            .map(|_| {
                command(
                    sim,
                    &db,
                    &NO_FLOOR,
                    &["refresh", "--user", user.as_str(), conn.as_str()],
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
            })
            .collect();
        for child in children.iter_mut() {
            if rng.random_bool(0.5) {
                std::thread::sleep(StdDuration::from_millis(rng.random_range(0..150)));
                if child.kill().is_ok() {
                    killed += 1;
                }
            }
        }
        for mut child in children {
            let _ = child.wait();
        }
    }
    assert!(killed > 0);
    let calls = sim
        .sim
        .counters()
        .refresh_calls
        .get(conn.as_str())
        .map_or(0, Vec::len);
    assert!(calls <= 20, "{calls} refreshes reached Basiq in 24 h");
    let store = basiq_health::store::Store::open(&db).await.unwrap();
    let (attempts, _, _) = store.refresh_window(&conn, Utc::now()).await.unwrap();
    assert!(attempts <= 20, "{attempts} attempts reserved");
    assert!(store.integrity_ok().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_the_gates_deny_never_reach_basiq() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let now = Utc::now();
    let invalid = add(
        sim,
        "g-invalid",
        "c-invalid",
        "AU00004",
        "web",
        "invalid",
        Duration::days(2),
    );
    let running = add(
        sim,
        "g-running",
        "c-running",
        "AU00004",
        "web",
        "active",
        Duration::days(2),
    );
    sim.sim.add_job(
        running.0.as_str(),
        ScriptedJob {
            id: Some("job-running".into()),
            connection_id: running.1.to_string(),
            created: now - Duration::minutes(2),
            updated: now - Duration::minutes(1),
            outcome: Outcome::Hang,
            running: true,
            with_source: false,
        },
    );
    let recent = add(
        sim,
        "g-recent",
        "c-recent",
        "AU00004",
        "web",
        "active",
        Duration::minutes(10),
    );
    let down = add(
        sim,
        "g-down",
        "c-down",
        OUTAGE_CONNECTOR.0,
        OUTAGE_CONNECTOR.1,
        "active",
        Duration::days(2),
    );
    let cases = [
        (invalid, "connection-not-active"),
        (running, "job-in-progress"),
        (recent, "recently-refreshed"),
        (down, "institution-outage"),
    ];
    for ((user, conn), reason) in &cases {
        let out = command(
            sim,
            &db,
            &[],
            &["refresh", "--user", user.as_str(), conn.as_str()],
        )
        .output()
        .unwrap();
        let d = decision(&out);
        assert_eq!(d["decision"], "denied", "{conn}: {d}");
        assert_eq!(d["reason"], *reason, "{conn}: {d}");
        assert!(d.get("job_id").is_some());
    }
    let calls = sim.sim.counters().refresh_calls;
    for ((_, conn), _) in &cases {
        assert!(!calls.contains_key(conn.as_str()), "{conn} reached Basiq");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_decides_without_reserving_or_sending() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let (user, conn) = add(
        sim,
        "dry",
        "c-dry",
        "AU00004",
        "web",
        "active",
        Duration::days(2),
    );
    let d = decision(
        &command(
            sim,
            &db,
            &[],
            &[
                "refresh",
                "--user",
                user.as_str(),
                conn.as_str(),
                "--dry-run",
            ],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(d["decision"], "refreshed");
    assert_eq!(d["dry_run"], true);
    assert!(sim.sim.counters().refresh_calls.is_empty());
    let store = basiq_health::store::Store::open(&db).await.unwrap();
    assert_eq!(store.refresh_window(&conn, Utc::now()).await.unwrap().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basiq_saying_429_to_a_refresh_stops_attempts_for_that_connection() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let (user, conn) = add(
        sim,
        "capped",
        "c-capped",
        "AU00004",
        "open-banking",
        "active",
        Duration::days(2),
    );
    sim.sim.inject_fault(
        Route::Refresh,
        Fault::Status {
            status: 429,
            retry_after: None,
        },
        1,
    );
    let first = decision(
        &command(
            sim,
            &db,
            &NO_FLOOR,
            &["refresh", "--user", user.as_str(), conn.as_str()],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(
        (first["decision"].as_str(), first["reason"].as_str()),
        (Some("denied"), Some("daily-cap"))
    );
    let second = decision(
        &command(
            sim,
            &db,
            &NO_FLOOR,
            &["refresh", "--user", user.as_str(), conn.as_str()],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(second["reason"], "daily-cap");
    assert_eq!(
        sim.sim
            .counters()
            .refresh_calls
            .get(conn.as_str())
            .map_or(0, Vec::len),
        1,
        "no attempt after Basiq's 429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_for_confirmation_refuses_inactive_connections_and_is_audited() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let (user, conn) = add(
        sim,
        "purger",
        "c-purge",
        "AU00004",
        "web",
        "active",
        Duration::days(2),
    );
    let (_, bad) = add(
        sim,
        "purger",
        "c-purge-invalid",
        "AU00005",
        "web",
        "invalid",
        Duration::days(2),
    );

    let dry = command(
        sim,
        &db,
        &[],
        &["purge", "--user", user.as_str(), conn.as_str()],
    )
    .output()
    .unwrap();
    assert_eq!(dry.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("--yes"));
    assert_eq!(sim.sim.counters().purge_calls, 0);

    let refused = command(
        sim,
        &db,
        &[],
        &["purge", "--user", user.as_str(), bad.as_str(), "--yes"],
    )
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only active"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let done = command(
        sim,
        &db,
        &[],
        &["purge", "--user", user.as_str(), conn.as_str(), "--yes"],
    )
    .output()
    .unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(sim.sim.counters().purge_calls, 1);
    let store = basiq_health::store::Store::open(&db).await.unwrap();
    assert_eq!(store.count_purges(&conn).await.unwrap(), 1);
    assert_eq!(
        store.count_purges(&bad).await.unwrap(),
        1,
        "the refusal is audited too"
    );
}

/// The largest number of times in `times` that fall in any window of `window`.
fn max_in_window(mut times: Vec<DateTime<Utc>>, window: Duration) -> usize {
    times.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[tokio::test]
async fn daily_mode_refreshes_two_hundred_connections_never_faster_than_the_global_pace() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    // No MFA bank: those are never refreshed unattended (a test of its own).
    let institutions = ["AU00000", "AU00001", "AU00004", "AU00005"];
    let mut users = Vec::new();
    let mut conns = Vec::new();
    for i in 0..200 {
        let (u, c) = add(
            sim,
            &format!("daily-{i}"),
            &format!("c-daily-{i}"),
            institutions[i % 4],
            "open-banking",
            "active",
            Duration::days(2),
        );
        users.push(u);
        conns.push(c);
    }
    let per_minute = 150;
    // A window that covers the test: nearly every connection's stable slot in it has
    // passed (a backlog drained at the pace), a few come in the next three minutes.
    let now = Utc::now();
    let window = format!(
        "{}-{}",
        (now - Duration::hours(3)).format("%H:%M"),
        (now + Duration::minutes(4)).format("%H:%M")
    );
    let extra = format!(
        "[sweep]\ntick = \"* * * * * *\"\n\
         [refresh]\nmode = \"daily\"\nunattended_window = \"{window}\"\ntimezone = \"UTC\"\n\
         global_per_minute = {per_minute}\nper_institution_per_minute = 1000\nmax_wait = \"2s\"\n\
         follow_poll_initial = \"100ms\"\nfollow_poll_max = \"200ms\"\nfollow_timeout = \"5s\"\n"
    );
    let settings = t.settings_with(&extra);
    let app = t.app_from(settings).await;
    app.context().add_users(&users).await.unwrap();
    app.context()
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let refresher = app.refresher().clone();
    let daemon = Daemon::start(app);
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(240);
    loop {
        let done = sim.sim.counters().refresh_calls.len();
        if done >= 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of 200 refreshed: {:?}",
            refresher.decision_counts()
        );
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
    daemon.stop().await;
    let counters = sim.sim.counters();
    let times: Vec<DateTime<Utc>> = counters.refresh_calls.values().flatten().copied().collect();
    assert!(times.len() >= 200);
    for c in &conns {
        assert_eq!(
            counters.refresh_calls.get(c.as_str()).map_or(0, Vec::len),
            1,
            "{c} refreshed once a day"
        );
    }
    let busiest = max_in_window(times, Duration::seconds(60));
    assert!(
        busiest <= per_minute,
        "{busiest} refreshes in one minute (pace {per_minute}/min)"
    );
    assert_eq!(counters.bulk_refresh_calls, 0);
}

#[tokio::test]
async fn an_outage_that_ends_triggers_recovery_refreshes_spread_over_the_window() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let (inst, method) = ("AU00004", "web");
    let mut users = Vec::new();
    let mut conns = Vec::new();
    for i in 0..6 {
        let (u, c) = add(
            sim,
            &format!("rec-{i}"),
            &format!("c-rec-{i}"),
            inst,
            method,
            "active",
            Duration::days(2),
        );
        sim.sim.add_job(
            u.as_str(),
            ScriptedJob {
                id: None,
                connection_id: c.to_string(),
                created: Utc::now() - Duration::minutes(120),
                updated: Utc::now() - Duration::minutes(119),
                outcome: Outcome::fail("verify-credentials", "service-unavailable", "t", "d"),
                running: false,
                with_source: true,
            },
        );
        users.push(u);
        conns.push(c);
    }
    sim.sim.set_connector_status(inst, method, "major-outage");
    let extra = "[sweep]\ntick = \"* * * * * *\"\nconnectors_ttl = \"0s\"\n\
                 [refresh]\nrecovery_window = \"8s\"\ntransient_retry_base = \"1h\"\nper_institution_per_minute = 600\nglobal_per_minute = 600\n\
                 follow_poll_initial = \"100ms\"\n";
    let settings = t.settings_with(extra);
    let app = t.app_from(settings).await;
    app.context().add_users(&users).await.unwrap();
    app.context()
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    for c in &conns {
        let row = app.context().store().connection(c).await.unwrap().unwrap();
        assert_eq!(
            row.health,
            Some(basiq_health::plan::classify::Health::InstitutionOutage)
        );
    }
    let daemon = Daemon::start(app);
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    assert!(
        sim.sim.counters().refresh_calls.is_empty(),
        "nothing is refreshed during the outage"
    );
    let ended = Utc::now();
    sim.sim.set_connector_status(inst, method, "operational");
    eventually(
        "every connection's recovery refresh",
        StdDuration::from_secs(40),
        || async {
            let calls = sim.sim.counters().refresh_calls;
            conns.iter().all(|c| calls.contains_key(c.as_str()))
        },
    )
    .await;
    daemon.stop().await;
    let calls = sim.sim.counters().refresh_calls;
    let mut times: Vec<DateTime<Utc>> = conns.iter().map(|c| calls[c.as_str()][0]).collect();
    times.sort();
    let spread = *times.last().unwrap() - times[0];
    assert!(
        spread >= Duration::seconds(3),
        "recovery refreshes spread over the window, not at once: {times:?}"
    );
    assert!(
        max_in_window(times.clone(), Duration::seconds(1)) < conns.len(),
        "{times:?}"
    );
    assert!(times.iter().all(|t| *t >= ended - Duration::seconds(1)));
}

#[tokio::test]
async fn every_job_step_change_is_logged_with_its_job_id() {
    let t = TestApp::builder()
        .sim(SimConfig {
            users: 0,
            step_duration: StdDuration::from_millis(150),
            ..sim_config()
        })
        .spawn()
        .await;
    let sim = t.sim();
    let (user, conn) = add(
        sim,
        "steps",
        "c-steps",
        "AU00004",
        "web",
        "active",
        Duration::days(2),
    );
    let settings =
        t.settings_with("[refresh]\nfollow_poll_initial = \"40ms\"\nfollow_poll_max = \"60ms\"\n");
    let app = t.app_from(settings).await;
    app.context()
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    app.context().sweep_user(&user).await.unwrap();
    let (logs, _guard) = capture_logs();
    let d = app
        .refresher()
        .request(&user, &conn, Trigger::Manual, false, true)
        .await
        .unwrap();
    assert!(d.refreshed(), "{d:?}");
    let job_id = d.job_id.clone().unwrap();
    app.refresher().wait_for_followers().await;
    let steps: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "job_step")
        .collect();
    assert!(steps.len() >= 4, "step changes logged: {steps:?}");
    for line in &steps {
        assert_eq!(line["job_id"], job_id.as_str());
        assert_eq!(line["connection_id"], conn.as_str());
    }
    let seen: Vec<(String, String)> = steps
        .iter()
        .map(|l| {
            (
                l["step"].as_str().unwrap().to_owned(),
                l["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        seen.contains(&("retrieve-transactions".into(), "success".into())),
        "{seen:?}"
    );
    let stored = app
        .context()
        .store()
        .get_job(&basiq_health::domain::JobId::parse(job_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, "success");
    let row = app
        .context()
        .store()
        .connection(&conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.health,
        Some(basiq_health::plan::classify::Health::Healthy),
        "classified again when the job ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_follow_exits_non_zero_when_the_job_cannot_be_read_to_its_end() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let (user, good) = add(
        sim,
        "follower",
        "c-follow-ok",
        "AU00004",
        "web",
        "active",
        Duration::days(2),
    );
    let (_, lost) = add(
        sim,
        "follower",
        "c-follow-lost",
        "AU00005",
        "web",
        "active",
        Duration::days(2),
    );
    let mut envs = NO_FLOOR.to_vec();
    envs.extend([
        ("BASIQ_HEALTH__REFRESH__FOLLOW_POLL_INITIAL", "50ms"),
        ("BASIQ_HEALTH__REFRESH__FOLLOW_POLL_MAX", "100ms"),
        ("BASIQ_HEALTH__REFRESH__FOLLOW_TIMEOUT", "1s"),
        ("BASIQ_HEALTH__BASIQ__MAX_ATTEMPTS", "1"),
    ]);

    let followed = command(
        sim,
        &db,
        &envs,
        &[
            "refresh",
            "--user",
            user.as_str(),
            good.as_str(),
            "--follow",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(decision(&followed)["decision"], "refreshed");

    // Every read of the job fails until the follow timeout.
    sim.sim.inject_fault(
        Route::Job,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        1000,
    );
    let unread = command(
        sim,
        &db,
        &envs,
        &[
            "refresh",
            "--user",
            user.as_str(),
            lost.as_str(),
            "--follow",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&unread.stderr);
    assert_eq!(unread.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(lost.as_str()), "{stderr}");
    let printed: serde_json::Value = serde_json::from_slice(&unread.stdout).unwrap();
    assert_eq!(
        printed["decision"], "refreshed",
        "the refresh itself went out and is reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_names_the_connection_it_was_asked_about() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    let (user, conn) = add(
        sim,
        "purge-names",
        "c-purge-named",
        "AU00004",
        "web",
        "active",
        Duration::days(2),
    );
    let dry = command(
        sim,
        &db,
        &[],
        &["purge", "--user", user.as_str(), conn.as_str()],
    )
    .output()
    .unwrap();
    assert_eq!(dry.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&dry.stdout).contains(conn.as_str()));

    let missing = command(
        sim,
        &db,
        &[],
        &[
            "purge",
            "--user",
            user.as_str(),
            "c-nowhere-to-be-found",
            "--yes",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("c-nowhere-to-be-found"), "{stderr}");
    assert!(stderr.contains(user.as_str()), "{stderr}");
    assert_eq!(sim.sim.counters().purge_calls, 0);
}
