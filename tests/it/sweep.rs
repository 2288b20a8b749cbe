//! The health sweep against the simulator: classification end to end, outages, request
//! budgets, the register and its schedule.

use std::collections::BTreeMap;

use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::classify::Health;
use basiq_sim::{OUTAGE_CONNECTOR, Outcome, Route, RunningSim, ScriptedConnection, ScriptedJob};
use chrono::{Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::cli::bin;
use crate::helpers::*;

/// A connector the simulator reports `operational`.
const UP: (&str, &str) = ("AU00004", "web");

struct Script {
    status: &'static str,
    connector: (&'static str, &'static str),
    job: Option<(Outcome, bool)>,
    last_used_days: i64,
}

fn fail(code: &str) -> Outcome {
    Outcome::fail("verify-credentials", code, "title", "detail")
}

/// Adds a user with one connection as scripted; returns (user, connection).
fn script(sim: &RunningSim, name: &str, s: Script) -> (UserId, ConnectionId) {
    let user = format!("user-{name}");
    let conn = format!("conn-{name}");
    let now = Utc::now();
    sim.sim.add_user(&user);
    let mut c = ScriptedConnection::new(s.connector.0, s.connector.1);
    c.id = conn.clone();
    c.status = s.status.into();
    c.last_used = Some(now - Duration::days(s.last_used_days));
    sim.sim.add_connection(&user, c);
    if let Some((outcome, running)) = s.job {
        sim.sim.add_job(
            &user,
            ScriptedJob {
                id: Some(format!("job-{name}")),
                connection_id: conn.clone(),
                created: now - Duration::minutes(20),
                updated: now - Duration::minutes(19),
                outcome,
                running,
                with_source: true,
            },
        );
    }
    (
        UserId::parse(user).unwrap(),
        ConnectionId::parse(conn).unwrap(),
    )
}

fn ok() -> Script {
    Script {
        status: "active",
        connector: UP,
        job: Some((Outcome::Success, false)),
        last_used_days: 0,
    }
}

async fn health_of(sweeper: &Context, conn: &ConnectionId) -> (Option<Health>, Option<String>) {
    crate::app::health_of(sweeper.store(), conn).await
}

#[tokio::test]
async fn every_health_value_is_reached_and_reported_by_status_json() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let outage = (OUTAGE_CONNECTOR.0, OUTAGE_CONNECTOR.1);
    let cases: Vec<(&str, Script, Health, Option<&str>)> = vec![
        ("healthy", ok(), Health::Healthy, None),
        (
            "running",
            Script {
                job: Some((Outcome::Hang, true)),
                ..ok()
            },
            Health::InProgress,
            None,
        ),
        (
            "pending",
            Script {
                status: "pending",
                job: None,
                ..ok()
            },
            Health::Pending,
            Some("pending"),
        ),
        (
            "badpass",
            Script {
                job: Some((fail("invalid-credentials"), false)),
                ..ok()
            },
            Health::ActionRequired,
            Some("invalid-credentials"),
        ),
        (
            "bankdown",
            Script {
                connector: outage,
                job: Some((fail("service-unavailable"), false)),
                ..ok()
            },
            Health::InstitutionOutage,
            Some("service-unavailable"),
        ),
        (
            "blip",
            Script {
                job: Some((fail("service-unavailable"), false)),
                ..ok()
            },
            Health::TransientFailure,
            Some("service-unavailable"),
        ),
        (
            "stale",
            Script {
                job: None,
                last_used_days: 5,
                ..ok()
            },
            Health::Stale,
            Some("no-recent-job"),
        ),
        (
            "weird",
            Script {
                job: Some((fail("quantum-flux"), false)),
                ..ok()
            },
            Health::Unknown,
            Some("quantum-flux"),
        ),
    ];
    let db = t.db();
    let mut users = Vec::new();
    let mut expected = Vec::new();
    for (name, s, health, reason) in cases {
        let (user, conn) = script(sim, name, s);
        users.push(user);
        expected.push((conn, health, reason));
    }
    t.register(&users).await;
    let counts = t.sweep(&users).await;
    assert_eq!(counts.users_swept, 8);
    for (conn, health, reason) in &expected {
        assert_eq!(
            t.health_of(conn).await,
            (Some(*health), reason.map(str::to_owned)),
            "{conn}"
        );
    }
    t.store().await.close().await;

    // The same, from the outside.
    let out = bin()
        .args(["status", "--json"])
        .env("BASIQ_HEALTH__DATABASE__PATH", &db)
        .env("BASIQ_HEALTH__API__LISTEN", "")
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/basiq-health.toml"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_conn: BTreeMap<String, &serde_json::Value> = report["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["connection_id"].as_str().unwrap().to_owned(), c))
        .collect();
    for (conn, health, reason) in &expected {
        let c = by_conn[conn.as_str()];
        for key in [
            "user_id",
            "connection_id",
            "institution_id",
            "method",
            "connection_status",
            "health",
            "reason",
            "job_id",
            "checked_at",
            "consent_expires_at",
        ] {
            assert!(c.get(key).is_some(), "`{key}` in {c}");
        }
        assert_eq!(c["health"], health.as_str());
        assert_eq!(c["reason"].as_str(), *reason);
    }
    assert_eq!(report["summary"]["by_health"]["unknown"], 1);
    assert!(
        report["outages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["institution_id"] == OUTAGE_CONNECTOR.0)
    );
}

#[tokio::test]
async fn an_outage_is_inferred_from_three_users_whatever_the_order_they_are_swept_in() {
    for order in [[0usize, 1, 2], [2, 1, 0]] {
        let t = TestApp::empty().await;
        let sim = t.sim();
        let sweeper = t.context().await;
        let pairs: Vec<_> = (0..3)
            .map(|i| {
                script(
                    sim,
                    &format!("down{i}"),
                    Script {
                        job: Some((fail("service-unavailable"), false)),
                        ..ok()
                    },
                )
            })
            .collect();
        let users: Vec<UserId> = pairs.iter().map(|(u, _)| u.clone()).collect();
        t.register(&users).await;
        // One user at a time, in the given order.
        for i in order {
            t.sweep(std::slice::from_ref(&users[i])).await;
        }
        // The users swept before the outage was inferred are reclassified in the background.
        t.reclassified().await;
        for (_, conn) in &pairs {
            assert_eq!(
                t.health_of(conn).await.0,
                Some(Health::InstitutionOutage),
                "order {order:?}: every user at the connector is in the inferred outage"
            );
        }
        let outages = sweeper.store().open_outages().await.unwrap();
        assert!(
            outages
                .iter()
                .any(|o| o.source.as_str() == "inferred" && o.institution_id == UP.0),
            "{outages:?}"
        );
    }
}

#[tokio::test]
async fn two_users_failing_is_not_yet_an_outage() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let pairs: Vec<_> = (0..2)
        .map(|i| {
            script(
                sim,
                &format!("pair{i}"),
                Script {
                    job: Some((fail("service-unavailable"), false)),
                    ..ok()
                },
            )
        })
        .collect();
    let users: Vec<UserId> = pairs.iter().map(|(u, _)| u.clone()).collect();
    t.register(&users).await;
    t.sweep(&users).await;
    for (_, conn) in &pairs {
        assert_eq!(t.health_of(conn).await.0, Some(Health::TransientFailure));
    }
    assert!(
        sweeper
            .store()
            .open_outages()
            .await
            .unwrap()
            .iter()
            .all(|o| o.source.as_str() != "inferred")
    );
}

#[tokio::test]
async fn a_connector_status_change_reclassifies_its_connections_and_records_the_outage() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.sweeper_with("[sweep]\nconnectors_ttl = \"0s\"\n").await;
    let (a, conn_a) = script(
        sim,
        "a",
        Script {
            job: Some((fail("service-unavailable"), false)),
            ..ok()
        },
    );
    let (b, _) = script(sim, "b", ok());
    sweeper.add_users(&[a.clone(), b.clone()]).await.unwrap();
    sweep_users(&sweeper, std::slice::from_ref(&a)).await;
    assert_eq!(
        health_of(&sweeper, &conn_a).await.0,
        Some(Health::TransientFailure)
    );

    sim.sim.set_connector_status(UP.0, UP.1, "major-outage");
    // Sweeping another user reads /connectors again; user a is reclassified without a sweep
    // (in the background).
    sweep_users(&sweeper, std::slice::from_ref(&b)).await;
    reclassified(sweeper.store()).await;
    assert_eq!(
        health_of(&sweeper, &conn_a).await.0,
        Some(Health::InstitutionOutage)
    );

    sim.sim.set_connector_status(UP.0, UP.1, "operational");
    sweep_users(&sweeper, std::slice::from_ref(&b)).await;
    assert_eq!(
        health_of(&sweeper, &conn_a).await.0,
        Some(Health::TransientFailure)
    );
    let since = Utc::now() - Duration::hours(1);
    let outages = sweeper.store().outages_since(since).await.unwrap();
    let ours = outages
        .iter()
        .find(|o| o.institution_id == UP.0 && o.source.as_str() == "connectors")
        .expect("outage recorded");
    assert!(
        ours.ended_at.is_some(),
        "the outage has a start and an end: {ours:?}"
    );
}

#[tokio::test]
async fn a_user_side_failure_during_a_major_outage_does_not_ask_the_user_to_act() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let outage = (OUTAGE_CONNECTOR.0, OUTAGE_CONNECTOR.1);
    let (user, conn) = script(
        sim,
        "locked",
        Script {
            connector: outage,
            job: Some((fail("invalid-credentials"), false)),
            ..ok()
        },
    );
    t.register(std::slice::from_ref(&user)).await;
    t.sweep(std::slice::from_ref(&user)).await;
    assert_eq!(t.health_of(&conn).await.0, Some(Health::InstitutionOutage));
}

#[tokio::test]
async fn a_sweep_of_500_users_costs_two_requests_each_one_connectors_and_one_token() {
    let t = TestApp::builder()
        .users(500)
        .extra("[sweep]\nconcurrency = 16\n")
        .spawn()
        .await;
    let sim = t.sim();
    let users: Vec<UserId> = sim_users(sim);
    t.register(&users).await;
    sim.sim.reset_counters();
    let counts = t.sweep(&users).await;
    assert_eq!(counts.users_swept, 500);
    assert_eq!(counts.users_failed, 0);
    let c = sim.sim.counters();
    assert_eq!(c.requests.get(&Route::Connections).copied(), Some(500));
    assert_eq!(c.requests.get(&Route::Jobs).copied(), Some(500));
    assert_eq!(
        c.requests.get(&Route::Connectors).copied(),
        Some(1),
        "one /connectors per TTL"
    );
    assert_eq!(c.token_calls, 1, "one token for the whole sweep");
    assert_eq!(c.bulk_refresh_calls, 0);
    let healths = counts.by_health;
    for h in ["healthy", "action-required", "institution-outage"] {
        assert!(
            healths.get(h).copied().unwrap_or(0) > 0,
            "{h} in {healths:?}"
        );
    }
}

#[tokio::test]
async fn a_user_basiq_does_not_know_is_marked_gone_and_the_sweep_goes_on() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let (good, conn) = script(sim, "good", ok());
    let ghost = UserId::parse("user-that-basiq-forgot").unwrap();
    let users = vec![ghost.clone(), good.clone()];
    t.register(&users).await;
    let counts = t.sweep(&users).await;
    assert_eq!((counts.users_swept, counts.users_gone), (1, 1));
    assert_eq!(t.health_of(&conn).await.0, Some(Health::Healthy));
    let ghost_row = sweeper.store().get_user(&ghost).await.unwrap().unwrap();
    assert!(ghost_row.gone_at.is_some());
    // Not due any more: the scheduled pass skips it.
    let due = sweeper
        .store()
        .due_users(Utc::now() + Duration::days(3), 100)
        .await
        .unwrap();
    assert!(!due.contains(&ghost) && due.contains(&good));
}

#[tokio::test]
async fn a_health_change_is_recorded_and_logged_once() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let (user, conn) = script(
        sim,
        "once",
        Script {
            job: Some((fail("invalid-credentials"), false)),
            ..ok()
        },
    );
    t.register(std::slice::from_ref(&user)).await;
    let (logs, _guard) = capture_logs();
    for _ in 0..3 {
        t.sweep(std::slice::from_ref(&user)).await;
    }
    let history = sweeper.store().health_history(&conn).await.unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let lines = logs.lines();
    let changes: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "health_changed")
        .collect();
    assert_eq!(changes.len(), 1);
    let line = changes[0];
    assert_eq!(line["user_id"], user.as_str());
    assert_eq!(line["connection_id"], conn.as_str());
    assert_eq!(line["job_id"], "job-once");
    assert_eq!(line["to"], "action-required");
    assert_eq!(line["reason"], "invalid-credentials");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "sweep_finished")
            .count(),
        3
    );
}

#[tokio::test]
async fn a_restart_does_not_move_a_users_offset() {
    let t = TestApp::empty().await;
    let db = t.db();
    let users: Vec<UserId> = (0..20)
        .map(|i| UserId::parse(format!("restart-{i}")).unwrap())
        .collect();
    let first = t.sweeper_at(&db, "").await;
    first.add_users(&users).await.unwrap();
    let before = first.store().list_users().await.unwrap();
    let probe = Utc::now();
    let slots_before: Vec<_> = users.iter().map(|u| first.next_due(u, probe)).collect();
    first.store().close().await;

    let second = t.sweeper_at(&db, "").await;
    let slots_after: Vec<_> = users.iter().map(|u| second.next_due(u, probe)).collect();
    assert_eq!(slots_before, slots_after);
    assert_eq!(before, second.store().list_users().await.unwrap());

    // Another installation spreads the same users differently.
    let other = t.sweeper_at(&t.path("other.db"), "").await;
    let elsewhere: Vec<_> = users.iter().map(|u| other.next_due(u, probe)).collect();
    assert_ne!(slots_before, elsewhere);
}

#[tokio::test]
async fn the_tick_sweeps_due_users_and_reschedules_them_one_period_later() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let settings = t.settings_at(&db, "[sweep]\nperiod = \"3s\"\ntick = \"* * * * * *\"\n");
    let app = t.app_from(settings).await;
    let pairs: Vec<_> = (0..5)
        .map(|i| script(sim, &format!("tick{i}"), ok()))
        .collect();
    let users: Vec<UserId> = pairs.iter().map(|(u, _)| u.clone()).collect();
    app.context().add_users(&users).await.unwrap();
    let store = app.context().store().clone();
    let daemon = Daemon::start(app);
    // Poll the database for the outcome (bounded): every user swept by the tick.
    eventually(
        "every user swept by the tick",
        std::time::Duration::from_secs(30),
        || async { swept_count(&store).await == users.len() },
    )
    .await;
    for u in store.list_users().await.unwrap() {
        let last = u.last_swept_at.unwrap();
        assert!(
            u.next_due_at > last && u.next_due_at <= last + Duration::seconds(4),
            "{u:?}"
        );
    }
    daemon.stop().await;
}

#[tokio::test]
async fn an_expiring_consent_is_warned_once_per_threshold() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let (user, conn) = script(
        sim,
        "consent",
        Script {
            connector: ("AU00004", "open-banking"),
            ..ok()
        },
    );
    // Re-script the connection as an open-banking consent ending in 5 days.
    let mut c = sim.sim.scripted(user.as_str()).remove(0);
    c.expiry = Some(Utc::now() + Duration::days(5));
    sim.sim.remove_user(user.as_str());
    sim.sim.add_user(user.as_str());
    sim.sim.add_connection(user.as_str(), c);
    t.register(std::slice::from_ref(&user)).await;
    let (logs, _guard) = capture_logs();
    t.sweep(std::slice::from_ref(&user)).await;
    t.sweep(std::slice::from_ref(&user)).await;
    let warnings: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "consent_expiring")
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the 7-day threshold, not one per sweep"
    );
    assert_eq!(warnings[0]["days"], 7);
    assert_eq!(warnings[0]["connection_id"], conn.as_str());
}

#[tokio::test]
async fn a_locked_database_fails_the_pass_clearly_loses_nothing_and_the_next_pass_works() {
    use sqlx::Connection;
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let mut settings = t.settings_at(&db, "");
    settings.database.busy_timeout = std::time::Duration::from_millis(200);
    let sweeper = t.sweeper_from(&settings).await;
    let (first, conn) = script(sim, "first", ok());
    let (second, _) = script(sim, "second", ok());
    sweeper
        .add_users(&[first.clone(), second.clone()])
        .await
        .unwrap();
    sweep_users(&sweeper, std::slice::from_ref(&first)).await;
    let jobs_before = sweeper.store().count_jobs().await.unwrap();

    // Another process holds the write lock (a long backup, a stuck CLI).
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let err = sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![second.clone()]),
            &CancellationToken::new(),
        )
        .await
        .expect_err("the pass fails while the database is locked");
    assert!(err.to_string().contains("locked"), "a clear error: {err}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();

    assert_eq!(
        sweeper.store().count_jobs().await.unwrap(),
        jobs_before,
        "nothing stored was lost"
    );
    assert_eq!(health_of(&sweeper, &conn).await.0, Some(Health::Healthy));
    assert!(sweeper.store().integrity_ok().await.unwrap());
    let counts = sweep_users(&sweeper, std::slice::from_ref(&second)).await;
    assert_eq!(counts.users_swept, 1, "the next pass works");
}

// ---- the shared token and a refused key ---------------------------------------------------

#[tokio::test]
async fn a_revoked_key_stops_the_pass_after_a_handful_of_token_calls() {
    let t = TestApp::builder()
        .users(500)
        .extra("[sweep]\nconcurrency = 16\n")
        .spawn()
        .await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let users: Vec<UserId> = sim_users(sim);
    t.register(&users).await;
    let schedule_before = sweeper.store().list_users().await.unwrap();
    sim.sim.revoke_api_key(403);
    sim.sim.reset_counters();

    let (logs, _guard) = capture_logs();
    let counts = t.sweep(&users).await;
    let c = sim.sim.counters();
    assert!(
        c.token_calls <= 5,
        "{} /token calls for 500 users",
        c.token_calls
    );
    assert_eq!(
        c.requests.get(&Route::Connections),
        None,
        "no user route asked"
    );
    assert_eq!(counts.users_swept, 0);
    assert!(
        counts.users_failed <= 16,
        "only the users in flight: {counts:?}"
    );
    let abort = counts.aborted.expect("the pass reports its abort");
    assert_eq!(abort.cause, basiq_health::store::AbortCause::Auth);
    assert!(abort.error.contains("403"), "{}", abort.error);

    let (cause, error): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT aborted, abort_error FROM sweeps ORDER BY id DESC LIMIT 1")
            .fetch_one(sweeper.store().pool())
            .await
            .unwrap();
    assert_eq!(cause.as_deref(), Some("auth"));
    assert_eq!(error.as_deref(), Some(abort.error.as_str()));
    assert_eq!(
        sweeper.store().list_users().await.unwrap(),
        schedule_before,
        "nobody postponed: the next pass takes them again"
    );

    let errors: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {errors:?}");
    assert_eq!(errors[0]["event"], "sweep_aborted");
    assert_eq!(errors[0]["status"], 403);
    assert!(!logs.text().contains(CANARY_KEY), "the API key leaked");
}

#[tokio::test]
async fn a_key_revoked_while_running_stops_the_next_pass_at_once() {
    let t = TestApp::builder()
        .extra("[sweep]\nconcurrency = 8\n")
        .spawn()
        .await;
    let sim = t.sim();
    let users: Vec<UserId> = sim_users(sim);
    t.register(&users).await;
    assert_eq!(t.sweep(&users).await.users_swept, 20);
    // The key is revoked and its tokens die with it.
    sim.sim.revoke_api_key(401);
    sim.sim.expire_tokens();
    sim.sim.reset_counters();
    let counts = t.sweep(&users).await;
    assert!(
        counts.users_failed <= 8,
        "no user started after the refusal: {counts:?}"
    );
    assert_eq!(
        counts.aborted.map(|a| a.cause),
        Some(basiq_health::store::AbortCause::Auth)
    );
    let c = sim.sim.counters();
    assert!(c.token_calls <= 2, "{} /token calls", c.token_calls);
    let asked = c.requests.get(&Route::Connections).copied().unwrap_or(0);
    assert!(asked <= 8, "only the users in flight asked: {asked}");
}

#[tokio::test]
async fn an_unauthorized_access_answer_about_one_user_keeps_the_shared_token() {
    let t = TestApp::builder()
        .extra("[sweep]\nconcurrency = 4\n")
        .spawn()
        .await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let users: Vec<UserId> = sim_users(sim);
    t.register(&users).await;
    let denied = users[3].clone();
    sim.sim.inject_user_fault(
        denied.as_str(),
        basiq_sim::Fault::UnauthorizedAccess { status: 401 },
        10,
    );
    sim.sim.reset_counters();
    let (logs, _guard) = capture_logs();
    let counts = t.sweep(&users).await;
    assert_eq!(sim.sim.counters().token_calls, 1, "one token for the pass");
    assert_eq!((counts.users_swept, counts.users_failed), (19, 1));
    assert_eq!(counts.aborted, None);
    let failed: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "user_sweep_failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["user_id"], denied.as_str());
    assert_eq!(failed[0]["status"], 401);
    let row = sweeper.store().get_user(&denied).await.unwrap().unwrap();
    assert!(row.next_due_at > Utc::now(), "the user alone is postponed");
}

#[tokio::test]
async fn a_scheduled_pass_stopped_by_a_refused_key_is_tried_again_on_a_later_tick() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let settings = t.settings_at(&db, "[sweep]\nperiod = \"2s\"\ntick = \"* * * * * *\"\n");
    let app = t.app_from(settings).await;
    let users: Vec<UserId> = (0..3)
        .map(|i| script(sim, &format!("refused{i}"), ok()).0)
        .collect();
    app.context().add_users(&users).await.unwrap();
    let store = app.context().store().clone();
    sim.sim.revoke_api_key(404);
    let daemon = Daemon::start(app);

    // Two aborted passes (bounded poll on the database).
    let aborted = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM sweeps WHERE aborted = 'auth'")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    eventually(
        "two aborted passes",
        std::time::Duration::from_secs(30),
        || async { aborted().await >= 2 },
    )
    .await;
    let passes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sweeps")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(
        sim.sim.counters().token_calls <= u64::try_from(passes).unwrap() + 1,
        "at most one /token call per tick"
    );
    // The key works again: a later tick sweeps everyone.
    sim.sim.restore_api_key();
    eventually(
        "every user swept after the key came back",
        std::time::Duration::from_secs(30),
        || async { swept_count(&store).await == users.len() },
    )
    .await;
    daemon.stop().await;
}
