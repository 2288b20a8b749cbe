//! Reclassification at a bank with many connections: when its connector goes down (or is
//! first seen), the connections there are classified again in the background while login
//! checks and sweeps are answered with what is known; a connection the new status leaves as
//! it was is not written; a stop does not wait for the rest; and what a crash or a stop left
//! queued is resumed at start.

use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::classify::Health;
use basiq_health::store::Store;
use basiq_sim::{Outcome, RunningSim, ScriptedConnection, ScriptedJob};
use chrono::{Duration, Utc};

use crate::app::*;
use crate::helpers::{Daemon, eventually};

/// A connector the simulator reports `operational`.
const BANK: (&str, &str) = ("AU00004", "web");

/// Copies of each scripted connection, failing and healthy: a bank's worth of
/// reclassification (a hundred batches).
const COPIES: usize = 25_000;

/// Adds a user with one connection at [`BANK`] whose job 20 minutes ago failed bank-side
/// (`failing`) or succeeded; returns (user, connection).
fn scripted(sim: &RunningSim, name: &str, failing: bool) -> (UserId, ConnectionId) {
    let (user, conn) = (format!("user-{name}"), format!("conn-{name}"));
    let now = Utc::now();
    sim.sim.add_user(&user);
    let mut c = ScriptedConnection::new(BANK.0, BANK.1);
    c.id = conn.clone();
    c.last_used = Some(now);
    sim.sim.add_connection(&user, c);
    let outcome = if failing {
        Outcome::fail(
            "verify-credentials",
            "service-unavailable",
            "title",
            "detail",
        )
    } else {
        Outcome::Success
    };
    sim.sim.add_job(
        &user,
        ScriptedJob {
            id: Some(format!("job-{name}")),
            connection_id: conn.clone(),
            created: now - Duration::minutes(20),
            updated: now - Duration::minutes(19),
            outcome,
            running: false,
            with_source: true,
        },
    );
    (
        UserId::parse(user).unwrap(),
        ConnectionId::parse(conn).unwrap(),
    )
}

/// Stores `n` copies of the stored connection `template` as `copy-{name}-{k}`, each with a
/// copy of its user, as its sweep left them but checked an hour earlier: a bank's worth of
/// connections without sweeping them one by one.
async fn copies(store: &Store, template: &ConnectionId, name: &str, n: usize) {
    let user: String =
        sqlx::query_scalar("SELECT user_id FROM connections WHERE connection_id = ?")
            .bind(template.as_str())
            .fetch_one(store.pool())
            .await
            .unwrap();
    for (table, key, id) in [
        ("users", "user_id", user.as_str()),
        ("connections", "connection_id", template.as_str()),
    ] {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind(table)
                .fetch_all(store.pool())
                .await
                .unwrap();
        let values: Vec<String> = columns
            .iter()
            .map(|c| match c.as_str() {
                "connection_id" => "printf('copy-%s-%07d', ?1, k.n)".to_owned(),
                "user_id" => "printf('user-copy-%s-%07d', ?1, k.n)".to_owned(),
                "checked_at" => "checked_at - 3600".to_owned(),
                other => other.to_owned(),
            })
            .collect();
        let sql = format!(
            "WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < ?2)
             INSERT INTO {table} ({}) SELECT {} FROM {table}, k WHERE {key} = ?3",
            columns.join(", "),
            values.join(", ")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(i64::try_from(n).unwrap())
            .bind(id)
            .execute(store.write_pool())
            .await
            .unwrap();
    }
}

/// The copies named `name` by health, and how many of them still have the `checked_at`
/// they were stored with (none written since).
async fn copies_by_health(store: &Store, name: &str) -> (Vec<(Option<String>, i64)>, i64) {
    let pattern = format!("copy-{name}-%");
    let by_health = sqlx::query_as(
        "SELECT health, COUNT(*) FROM connections WHERE connection_id LIKE ?
         GROUP BY health ORDER BY health",
    )
    .bind(&pattern)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let unwritten = sqlx::query_scalar(
        "SELECT COUNT(*) FROM connections c WHERE c.connection_id LIKE ?1
           AND c.checked_at = (SELECT t.checked_at - 3600 FROM connections t
                               WHERE t.connection_id = ?2)",
    )
    .bind(&pattern)
    .bind(format!("conn-{name}"))
    .fetch_one(store.pool())
    .await
    .unwrap();
    (by_health, unwritten)
}

/// Health changes recorded for the copies named `name`.
async fn changes_of_copies(store: &Store, name: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM health_changes WHERE connection_id LIKE ?")
        .bind(format!("copy-{name}-%"))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// A bank with 50,000 connections goes down. The login check that reads the news is answered
/// while they are still queued for reclassification (it waited for all of them before), its
/// own connection judged with the new status; then the background reclassification puts
/// every failing connection in the outage and leaves the healthy ones (a success 20 minutes
/// ago: the bank answered them) unwritten.
#[tokio::test]
async fn a_login_check_is_answered_while_a_bank_s_connections_are_reclassified() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.sweeper_with("[sweep]\nconnectors_ttl = \"0s\"\n").await;
    let store = sweeper.store();
    let (failing, failing_conn) = scripted(sim, "failing", true);
    let (happy, happy_conn) = scripted(sim, "happy", false);
    let (checker, checker_conn) = scripted(sim, "checker", true);
    sweeper
        .add_users(&[failing.clone(), happy.clone(), checker.clone()])
        .await
        .unwrap();
    sweep_users(&sweeper, &[failing, happy]).await;
    reclassified(store).await;
    assert_eq!(
        health_of(store, &failing_conn).await.0,
        Some(Health::TransientFailure)
    );
    assert_eq!(health_of(store, &happy_conn).await.0, Some(Health::Healthy));
    copies(store, &failing_conn, "failing", COPIES).await;
    copies(store, &happy_conn, "happy", COPIES).await;

    sim.sim.set_connector_status(BANK.0, BANK.1, "major-outage");
    assert!(sweeper.login_check(&checker).await.unwrap(), "swept");
    let queued = queued_reclassifications(store).await;
    assert!(
        queued > 0,
        "the check is answered before the bank's connections are all reclassified"
    );
    assert_eq!(
        health_of(store, &checker_conn).await.0,
        Some(Health::InstitutionOutage),
        "the checked user's connection is judged with the new status"
    );

    reclassified(store).await;
    let (failing_copies, unwritten) = copies_by_health(store, "failing").await;
    assert_eq!(
        failing_copies,
        [(Some("institution-outage".to_owned()), COPIES as i64)]
    );
    assert_eq!(unwritten, 0);
    assert_eq!(changes_of_copies(store, "failing").await, COPIES as i64);
    assert_eq!(
        health_of(store, &failing_conn).await.0,
        Some(Health::InstitutionOutage)
    );
    let (happy_copies, unwritten) = copies_by_health(store, "happy").await;
    assert_eq!(happy_copies, [(Some("healthy".to_owned()), COPIES as i64)]);
    assert_eq!(
        unwritten, COPIES as i64,
        "a connection the outage leaves healthy is not written"
    );
    assert_eq!(changes_of_copies(store, "happy").await, 0);
}

/// What a read of `/connectors` saying [`BANK`] is down committed just before a crash: the
/// new status and the reclassification queued, none of it done.
async fn crash_after_the_bank_went_down(store: &Store) {
    for sql in [
        "UPDATE connectors SET status = 'major-outage' WHERE institution_id = ? AND method = ?",
        "INSERT INTO reclassify_queue (institution_id, method, queued_at) VALUES (?, ?, 0)",
    ] {
        sqlx::query(sql)
            .bind(BANK.0)
            .bind(BANK.1)
            .execute(store.write_pool())
            .await
            .unwrap();
    }
}

/// The bank's reclassification as queued: its cursor (the last connection done), if any.
async fn queued_cursor(store: &Store) -> Option<String> {
    sqlx::query_scalar("SELECT cursor FROM reclassify_queue WHERE institution_id = ?")
        .bind(BANK.0)
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

/// A house with `n` copies of a connection failing at [`BANK`] (and as many healthy ones),
/// swept while the bank was up, by a sweeper gone since.
async fn a_bank_swept_while_up(t: &TestApp, n: usize) {
    let sim = t.sim();
    let (failing, failing_conn) = scripted(sim, "failing", true);
    let (happy, happy_conn) = scripted(sim, "happy", false);
    let before = t.sweeper_with("").await;
    register(&before, &[failing.clone(), happy.clone()]).await;
    sweep_users(&before, &[failing, happy]).await;
    reclassified(before.store()).await;
    copies(before.store(), &failing_conn, "failing", n).await;
    copies(before.store(), &happy_conn, "happy", n).await;
}

/// A crash after `/connectors` was committed leaves the reclassification queued: the next
/// start works through it without waiting for `/connectors` to be read again.
#[tokio::test]
async fn a_reclassification_a_crash_left_queued_is_resumed_at_start() {
    let t = TestApp::empty().await;
    a_bank_swept_while_up(&t, 600).await;
    let store = Store::open(&t.db()).await.unwrap();
    crash_after_the_bank_went_down(&store).await;

    let restarted = t.sweeper_with("").await;
    reclassified(restarted.store()).await;
    let (failing_copies, _) = copies_by_health(&store, "failing").await;
    assert_eq!(
        failing_copies,
        [(Some("institution-outage".to_owned()), 600)]
    );
}

/// A daemon asked to stop while a bank's reclassification runs stops between two batches
/// without waiting for the rest, which stays queued (a batch is a transaction) and is
/// finished by the next start.
#[tokio::test]
async fn a_daemon_stops_between_two_batches_and_the_next_start_finishes_the_rest() {
    let t = TestApp::empty().await;
    a_bank_swept_while_up(&t, COPIES).await;
    let store = Store::open(&t.db()).await.unwrap();
    crash_after_the_bank_went_down(&store).await;

    // Ticking every second: each tick resumes the queue too.
    let daemon = Daemon::start(t.app_with("[sweep]\ntick = \"* * * * * *\"\n").await);
    eventually(
        "a first batch",
        std::time::Duration::from_secs(30),
        || async { queued_cursor(&store).await.is_some_and(|c| !c.is_empty()) },
    )
    .await;
    daemon.stop().await;
    let left = queued_cursor(&store).await;
    assert!(
        left.is_some(),
        "the daemon stopped without waiting for the whole bank"
    );

    let restarted = t.sweeper_with("").await;
    reclassified(restarted.store()).await;
    let (failing_copies, _) = copies_by_health(&store, "failing").await;
    assert_eq!(
        failing_copies,
        [(Some("institution-outage".to_owned()), COPIES as i64)]
    );
    assert_eq!(changes_of_copies(&store, "failing").await, COPIES as i64);
}
