//! The planner's rules end to end: the real daemon path, SQLite and the simulator serving
//! Basiq's recorded shapes and chosen faults. One test per rule of issue "One planner".

use std::time::Duration as StdDuration;

use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::classify::Health;
use basiq_health::plan::policy::{DecisionKind, Trigger};
use basiq_sim::{Fault, Outcome, Route, RunningSim, ScriptedConnection, ScriptedJob};
use chrono::{Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

fn connection(sim: &RunningSim, user: &str, id: &str, institution: &str) -> ScriptedConnection {
    sim.sim.add_user(user);
    let mut c = ScriptedConnection::new(institution, "web");
    c.id = id.into();
    c.last_used = Some(Utc::now() - Duration::days(2));
    c
}

fn failed_job(connection: &str, code: &str, ago: Duration) -> ScriptedJob {
    ScriptedJob {
        id: None,
        connection_id: connection.into(),
        created: Utc::now() - ago,
        updated: Utc::now() - ago + Duration::seconds(30),
        outcome: Outcome::fail("verify-credentials", code, "t", "d"),
        running: false,
        with_source: true,
    }
}

async fn sweep(app: &basiq_health::app::App, users: &[UserId]) {
    app.context().add_users(users).await.unwrap();
    app.context()
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.to_vec()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
}

fn posts(sim: &RunningSim, id: &str) -> usize {
    sim.sim.counters().refresh_calls.get(id).map_or(0, Vec::len)
}

/// Rule 1: an MFA connection is never refreshed by the daily slot, only by a login or the
/// `refresh` command; the denial is stored as its last decision.
#[tokio::test]
async fn an_mfa_connection_is_refreshed_only_with_the_user_present() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let mut mfa = connection(sim, "u-mfa", "c-mfa", "AU00000");
    mfa.mfa = Some(true);
    sim.sim.add_connection("u-mfa", mfa);
    let plain = connection(sim, "u-plain", "c-plain", "AU00000");
    sim.sim.add_connection("u-plain", plain);
    let now = Utc::now();
    let window = format!(
        "{}-{}",
        (now - Duration::hours(3)).format("%H:%M"),
        (now + Duration::minutes(30)).format("%H:%M")
    );
    let app = t
        .app_with(&format!(
            "[refresh]\nmode = \"daily\"\nunattended_window = \"{window}\"\ntimezone = \"UTC\"\n"
        ))
        .await;
    let users = [
        UserId::parse("u-mfa").unwrap(),
        UserId::parse("u-plain").unwrap(),
    ];
    sweep(&app, &users).await;
    let refresher = app.refresher();
    // Every daily slot of the window has passed or is due within the test.
    for _ in 0..3 {
        refresher.run_due(&CancellationToken::new()).await.unwrap();
        if posts(sim, "c-plain") > 0 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(300)).await;
    }
    let store = app.context().store();
    let row = store
        .connection(&ConnectionId::parse("c-mfa").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(row.needs_user_present);
    assert_eq!(
        posts(sim, "c-mfa"),
        0,
        "an MFA connection refreshed unattended"
    );
    // Each connection has its own random slot in the window: the MFA one's may still be
    // ahead when the plain one's has come. Once it has come, the denial is stored.
    match row.last_decision {
        Some(last) => {
            assert_eq!(last.decision, DecisionKind::Denied);
            assert_eq!(last.reason.as_deref(), Some("needs-user-present"));
            assert_eq!(last.trigger, Some(Trigger::Scheduled));
        }
        None => assert!(
            row.daily_due_at
                .is_some_and(|at| at > Utc::now() - Duration::seconds(5)),
            "no decision stored although the slot has passed: {row:?}"
        ),
    }
    let d = refresher
        .request(
            &users[0],
            &ConnectionId::parse("c-mfa").unwrap(),
            Trigger::Manual,
            false,
            false,
        )
        .await
        .unwrap();
    assert!(d.refreshed(), "{d:?}");
    assert_eq!(posts(sim, "c-mfa"), 1);
}

/// Rule 2: a failed step with `"result": null` is `unknown` (`no-failure-code`) and never
/// retried automatically.
#[tokio::test]
async fn a_failure_without_a_code_is_unknown_and_never_retried() {
    let t = TestApp::builder().quick().driven().spawn().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    sim.sim
        .add_job("u1", failed_job("c1", "", Duration::hours(2)));
    let app = t
        .app_with("[refresh]\ntransient_retry_base = \"1s\"\nmin_interval = \"0s\"\n")
        .await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let row = app
        .context()
        .store()
        .connection(&ConnectionId::parse("c1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.health, Some(Health::Unknown));
    assert_eq!(
        row.newest_job
            .as_ref()
            .and_then(|j| j.failure_code.as_deref()),
        Some("no-failure-code")
    );
    assert_eq!(row.refresh_due, None);
    // Past the first retry's delay (1 s) had one been scheduled.
    t.clock().advance(StdDuration::from_millis(1500));
    app.refresher()
        .run_due(&CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(posts(sim, "c1"), 0);
}

/// Rule 3: a job step failing with Basiq's `too-many-requests` sets "capped until"; no
/// retry is scheduled and a login refresh is denied without a request.
#[tokio::test]
async fn a_too_many_requests_step_caps_the_connection() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    sim.sim.add_job(
        "u1",
        failed_job("c1", "too-many-requests", Duration::hours(2)),
    );
    let app = t
        .app_with("[refresh]\nmin_interval = \"0s\"\nlogin_stale_after = \"0s\"\n")
        .await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let row = app
        .context()
        .store()
        .connection(&ConnectionId::parse("c1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.basiq_capped_until.is_some_and(|t| t > Utc::now()),
        "{row:?}"
    );
    assert_eq!(row.refresh_due, None);
    let d = app
        .refresher()
        .request(
            &UserId::parse("u1").unwrap(),
            &ConnectionId::parse("c1").unwrap(),
            Trigger::Login,
            false,
            false,
        )
        .await
        .unwrap();
    assert_eq!(d.reason.as_deref(), Some("daily-cap"));
    assert_eq!(posts(sim, "c1"), 0);
}

/// Rule 4: a 400 `invalid-credentials` to the refresh POST makes the connection
/// `action-required` at once; the next attempt is refused without a request.
#[tokio::test]
async fn a_refresh_refused_for_the_user_s_reason_needs_the_user() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    let app = t.app_with("[refresh]\nmin_interval = \"0s\"\n").await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    sim.sim.inject_fault(
        Route::Refresh,
        Fault::Error {
            status: 400,
            code: "invalid-credentials".into(),
        },
        1,
    );
    let (user, c) = (
        UserId::parse("u1").unwrap(),
        ConnectionId::parse("c1").unwrap(),
    );
    let d = app
        .refresher()
        .request(&user, &c, Trigger::Manual, false, false)
        .await
        .unwrap();
    assert!(!d.refreshed());
    let row = app.context().store().connection(&c).await.unwrap().unwrap();
    assert_eq!(row.health, Some(Health::ActionRequired));
    assert_eq!(row.reason.as_deref(), Some("invalid-credentials"));
    let before = sim
        .sim
        .counters()
        .refresh_calls
        .get("c1")
        .map_or(0, Vec::len);
    let d = app
        .refresher()
        .request(&user, &c, Trigger::Login, false, false)
        .await
        .unwrap();
    assert_eq!(d.reason.as_deref(), Some("needs-user-action"));
    assert_eq!(posts(sim, "c1"), before);
}

/// Rule 5: a refresh made by the partner's app (a job we never asked for) ten minutes ago
/// counts as recent, although Basiq's `lastUsed` is two days old.
#[tokio::test]
async fn a_refresh_by_the_partner_s_app_counts_as_recent() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    sim.sim.add_job(
        "u1",
        ScriptedJob {
            outcome: Outcome::Success,
            ..failed_job("c1", "x", Duration::minutes(10))
        },
    );
    let app = t.app_with("").await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let d = app
        .refresher()
        .request(
            &UserId::parse("u1").unwrap(),
            &ConnectionId::parse("c1").unwrap(),
            Trigger::Login,
            false,
            false,
        )
        .await
        .unwrap();
    assert_eq!(d.reason.as_deref(), Some("recently-refreshed"));
    assert_eq!(posts(sim, "c1"), 0);
}

/// Rule 6: eight `refresh` commands at once for one connection, default 1 h floor: one POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_refresh_commands_send_one_post() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let db = t.db();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    let children: Vec<std::process::Child> = (0..8)
        .map(|_| {
            crate::cli::bin()
                .arg("--config")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/config/basiq-health.toml"
                ))
                .args(["refresh", "--user", "u1", "c1"])
                .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
                .env("BASIQ_HEALTH__DATABASE__PATH", &db)
                .env("BASIQ_HEALTH__API__LISTEN", "")
                .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut refreshed = 0;
    for child in children {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        refreshed += usize::from(v["decision"] == "refreshed");
    }
    assert_eq!(posts(sim, "c1"), 1);
    assert_eq!(refreshed, 1);
}

/// Rule 7: when an outage ends, the recovery refreshes of 20 connections cover the window
/// (default `transient_retry_base`), and a sweep that sees their old failure keeps them.
#[tokio::test]
async fn recovery_slots_cover_the_window_and_survive_a_sweep() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let (inst, method) = ("AU00004", "web");
    let mut users = Vec::new();
    for i in 0..20 {
        let (u, c) = (format!("r-{i:02}"), format!("c-r-{i:02}"));
        sim.sim.add_connection(&u, connection(sim, &u, &c, inst));
        sim.sim.add_job(
            &u,
            failed_job(&c, "service-unavailable", Duration::hours(2)),
        );
        users.push(UserId::parse(u).unwrap());
    }
    sim.sim.set_connector_status(inst, method, "major-outage");
    let app = t
        .app_with("[sweep]\nconnectors_ttl = \"0s\"\n[refresh]\nrecovery_window = \"30m\"\n")
        .await;
    sweep(&app, &users).await;
    let store = app.context().store();
    let rows = store.all_connections(None).await.unwrap();
    assert!(
        rows.iter()
            .all(|r| r.health == Some(Health::InstitutionOutage))
    );
    let ended = Utc::now();
    sim.sim.set_connector_status(inst, method, "operational");
    app.context().connectors().await;
    // The next sweep sees the old bank-side failure again: the slots stay.
    app.context()
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let rows = store.all_connections(None).await.unwrap();
    let mut times: Vec<_> = rows
        .iter()
        .map(|r| {
            let owed = r
                .refresh_due
                .unwrap_or_else(|| panic!("no recovery for {r:?}"));
            assert_eq!(owed.trigger, Trigger::Recovery, "{r:?}");
            owed.at
        })
        .collect();
    times.sort();
    let window = Duration::minutes(30);
    let mut edges = vec![ended];
    edges.extend(times.iter().copied());
    edges.push(ended + window);
    let gap = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(gap <= window * 3 / 20, "largest gap {gap} in {times:?}");
}

/// Rule 8: a refresh that keeps failing bank-side is retried exactly
/// `transient_max_retries` times, each retry decided when its job ends.
#[tokio::test]
async fn transient_retries_are_bounded_and_happen() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let mut c = connection(sim, "u1", "c1", "AU00000");
    c.outcome = Outcome::fail("verify-credentials", "service-unavailable", "t", "d");
    sim.sim.add_connection("u1", c);
    sim.sim.add_job(
        "u1",
        failed_job("c1", "service-unavailable", Duration::hours(2)),
    );
    let app = t.app_with("[sweep]\ntick = \"* * * * * *\"\n[refresh]\ntransient_retry_base = \"1s\"\nmin_interval = \"0s\"\n\
         follow_poll_initial = \"100ms\"\nfollow_poll_max = \"200ms\"\n",
    )
    .await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let daemon = Daemon::start(app);
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
    while posts(sim, "c1") < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
    // Longer than any third retry could take.
    tokio::time::sleep(StdDuration::from_secs(6)).await;
    daemon.stop().await;
    assert_eq!(posts(sim, "c1"), 2);
}

/// Rule 10: Basiq's recorded connection shape has no `method`: with the bank's connector in
/// `major-outage`, a failed login is the bank's outage, not the user's credentials.
#[tokio::test]
async fn the_recorded_shape_in_a_major_outage_is_an_institution_outage() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let mut c = connection(sim, "u1", "c1", "AU00000");
    c.recorded_shape = true;
    c.expiry = None;
    sim.sim.add_connection("u1", c);
    sim.sim.add_job(
        "u1",
        failed_job("c1", "invalid-credentials", Duration::minutes(30)),
    );
    sim.sim
        .set_connector_status("AU00000", "web", "major-outage");
    let app = t.app_with("").await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let row = app
        .context()
        .store()
        .connection(&ConnectionId::parse("c1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.method.as_str(), "unknown");
    assert_eq!(row.health, Some(Health::InstitutionOutage));
}

/// Rule 11: a fresh database, `/connectors` answering 503 three times, a bank in outage
/// with failing logins: no connection is `action-required` at any moment, and the health is
/// right once `/connectors` answers (retried with backoff, not after the TTL).
#[tokio::test]
async fn no_connector_status_on_a_fresh_database_blames_no_user() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let mut users = Vec::new();
    for i in 0..3 {
        let (u, c) = (format!("u{i}"), format!("c{i}"));
        sim.sim
            .add_connection(&u, connection(sim, &u, &c, "AU00000"));
        sim.sim.add_job(
            &u,
            failed_job(&c, "invalid-credentials", Duration::minutes(20)),
        );
        users.push(UserId::parse(u).unwrap());
    }
    sim.sim
        .set_connector_status("AU00000", "web", "major-outage");
    sim.sim.inject_fault(
        Route::Connectors,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        3,
    );
    let app = t.app_with("").await;
    app.context().add_users(&users).await.unwrap();
    let store = app.context().store();
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(60);
    loop {
        app.context()
            .run_pass(
                basiq_health::work::PassTrigger::Command,
                Some(users.clone()),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let rows = store.all_connections(None).await.unwrap();
        assert_eq!(rows.len(), 3);
        assert!(
            rows.iter()
                .all(|r| r.health != Some(Health::ActionRequired)),
            "a user blamed with no connector status: {rows:?}"
        );
        if rows
            .iter()
            .all(|r| r.health == Some(Health::InstitutionOutage))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(StdDuration::from_millis(500)).await;
    }
}

/// Rule 12: a connector status this version does not know reads as down.
#[tokio::test]
async fn an_unknown_connector_status_is_read_as_down() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    sim.sim.add_job(
        "u1",
        failed_job("c1", "invalid-credentials", Duration::minutes(30)),
    );
    sim.sim
        .set_connector_status("AU00000", "web", "scheduled-outage");
    let app = t.app_with("").await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let row = app
        .context()
        .store()
        .connection(&ConnectionId::parse("c1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.health, Some(Health::InstitutionOutage));
}

/// Rule 13: `multi-factor-authentication` is the user's to fix.
#[tokio::test]
async fn a_multi_factor_authentication_failure_needs_the_user() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    sim.sim.add_job(
        "u1",
        failed_job("c1", "multi-factor-authentication", Duration::minutes(30)),
    );
    let app = t.app_with("").await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let row = app
        .context()
        .store()
        .connection(&ConnectionId::parse("c1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.health, Some(Health::ActionRequired));
    assert_eq!(row.reason.as_deref(), Some("multi-factor-authentication"));
}

/// Rule 14: a newer statement job at the same bank, without `links.source`, does not hide
/// the failing connection job.
#[tokio::test]
async fn a_statement_job_does_not_hide_a_failing_connection() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c1", "AU00000"));
    sim.sim.add_job(
        "u1",
        failed_job("c1", "invalid-credentials", Duration::minutes(30)),
    );
    sim.sim.add_job(
        "u1",
        ScriptedJob {
            id: Some("stmt-1".into()),
            outcome: Outcome::Success,
            with_source: false,
            ..failed_job("c1", "x", Duration::minutes(5))
        },
    );
    assert!(sim.sim.set_job_type("stmt-1", "statement"));
    let app = t.app_with("").await;
    sweep(&app, &[UserId::parse("u1").unwrap()]).await;
    let row = app
        .context()
        .store()
        .connection(&ConnectionId::parse("c1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.health, Some(Health::ActionRequired), "{row:?}");
}

/// `plan --json`: every registered connection with either `{"refresh_at", "trigger"}` or
/// `{"denied": reason}`; nothing is sent to Basiq. `status --user --json` carries the
/// next scheduled refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_json_lists_each_connection_s_next_refresh_or_why_not() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .add_connection("u1", connection(sim, "u1", "c-retry", "AU00000"));
    sim.sim.add_job(
        "u1",
        failed_job("c-retry", "service-unavailable", Duration::hours(2)),
    );
    sim.sim
        .add_connection("u2", connection(sim, "u2", "c-user", "AU00001"));
    sim.sim.add_job(
        "u2",
        failed_job("c-user", "invalid-credentials", Duration::hours(2)),
    );
    let app = t.app_with("").await;
    sweep(
        &app,
        &[UserId::parse("u1").unwrap(), UserId::parse("u2").unwrap()],
    )
    .await;
    sim.sim.reset_counters();
    let run = |args: &[&str]| {
        let out = crate::cli::bin()
            .arg("--config")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/basiq-health.toml"
            ))
            .args(args)
            .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
            .env("BASIQ_HEALTH__DATABASE__PATH", t.db())
            .env("BASIQ_HEALTH__API__LISTEN", "")
            .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let plan = run(&["plan", "--json"]);
    let lines = plan.as_array().unwrap();
    assert_eq!(lines.len(), 2, "{plan}");
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["connection_id"] == id)
            .unwrap_or_else(|| panic!("{id} missing: {plan}"))
            .clone()
    };
    let retry = by_id("c-retry");
    assert_eq!(retry["trigger"], "transient-retry", "{retry}");
    assert!(retry["refresh_at"].is_string(), "{retry}");
    assert_eq!(by_id("c-user")["denied"], "needs-user-action");
    let counters = sim.sim.counters();
    assert_eq!(
        counters.token_calls + counters.refresh_calls.len() as u64,
        0
    );

    let status = run(&["status", "--json", "--user", "u1"]);
    let c = &status["connections"][0];
    assert_eq!(c["next_refresh"]["trigger"], "transient-retry", "{status}");
}
