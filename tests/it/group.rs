//! Group commit: many users' plans per transaction, each still applied whole or not at all.

use std::sync::atomic::Ordering::Relaxed;

use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

/// A plan that fails for a reason of its own (here a trigger planted to refuse one user's
/// row) fails that user only: the group is rolled back and its members committed alone;
/// nothing of the failing user's plan is written, everyone else's is.
#[tokio::test]
async fn one_failing_plan_fails_only_its_user_and_the_others_of_its_group_are_committed() {
    let t = TestApp::builder()
        .users(40)
        .extra("[sweep]\nconcurrency = 8\n")
        .spawn()
        .await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let store = sweeper.store().clone();
    let users = sim_users(sim);
    t.register(&users).await;
    let victim = users[7].clone();
    // The id is one of the simulator's, checked by the id rule: no quote can be in it.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TRIGGER planted BEFORE UPDATE OF last_swept_at ON users
         WHEN NEW.user_id = '{victim}' BEGIN SELECT RAISE(ABORT, 'planted failure'); END"
    )))
    .execute(store.write_pool())
    .await
    .unwrap();

    let (logs, _guard) = capture_logs();
    let counts = sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(counts.users_swept, 39, "{counts:?}");
    assert_eq!(counts.users_failed, 1, "{counts:?}");
    let failed = logs
        .lines()
        .into_iter()
        .find(|l| l["fields"]["event"] == "user_sweep_failed" || l["event"] == "user_sweep_failed")
        .expect("the failure is logged");
    assert!(failed.to_string().contains(victim.as_str()), "{failed}");
    assert!(failed.to_string().contains("planted failure"), "{failed}");

    let victims_rows = store.all_connections(Some(&victim)).await.unwrap();
    assert!(
        victims_rows.is_empty(),
        "nothing of the failed plan is written"
    );
    let swept: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE last_swept_at IS NOT NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(swept, 39);
    for u in users.iter().filter(|u| **u != victim) {
        assert!(
            !store.all_connections(Some(u)).await.unwrap().is_empty()
                || sim.sim.connection_ids(u.as_str()).is_empty(),
            "user {u} was swept and stored"
        );
    }
    // Without the planted failure, users are committed together: fewer commits than plans.
    sqlx::query("DROP TRIGGER planted")
        .execute(store.write_pool())
        .await
        .unwrap();
    let stats = store.group_stats();
    let (commits0, plans0) = (stats.commits.load(Relaxed), stats.plans.load(Relaxed));
    let again = sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(again.users_swept, 40);
    let commits = stats.commits.load(Relaxed) - commits0;
    let plans = stats.plans.load(Relaxed) - plans0;
    assert_eq!(plans, 40);
    assert!(commits < plans, "{commits} commits for {plans} plans");
}
