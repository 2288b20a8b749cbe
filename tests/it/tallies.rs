//! Counts kept, not counted: the tallies /metrics, `status` and /v1/status read are moved
//! by triggers in the transactions that change the rows, and always equal a full recount.

use basiq_health::domain::UserId;
use basiq_health::store::{Store, Tallies};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

/// Zero counts are kept in the tallies and absent from a recount: compare without them.
fn nonzero(mut t: Tallies) -> Tallies {
    t.connections.retain(|_, n| *n != 0);
    t.reservations.retain(|_, n| *n != 0);
    t
}

async fn assert_tallies_match(store: &Store, step: &str) {
    let kept = nonzero(store.tallies().await.unwrap());
    let counted = store.recount().await.unwrap();
    assert_eq!(
        kept, counted,
        "after {step}: kept tallies differ from a recount"
    );
}

#[tokio::test]
async fn the_kept_tallies_equal_a_recount_through_sweeps_removals_gone_users_and_pruning() {
    let t = TestApp::builder().users(60).spawn().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let store = sweeper.store().clone();
    let users = sim_users(sim);
    t.register(&users).await;
    assert_tallies_match(&store, "registering").await;
    assert_eq!(store.tallies().await.unwrap().users_active, 60);

    let cancel = CancellationToken::new();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &cancel,
        )
        .await
        .unwrap();
    assert_tallies_match(&store, "the first sweep").await;
    let after_sweep = store.tallies().await.unwrap();
    assert!(after_sweep.connections_total() >= 60, "{after_sweep:?}");
    assert!(
        after_sweep.connections.len() >= 3,
        "the population reaches several healths: {after_sweep:?}"
    );

    // Removing users takes their connections out; re-adding one puts its back.
    store.remove_users(&users[..10], Utc::now()).await.unwrap();
    assert_tallies_match(&store, "removing 10 users").await;
    assert_eq!(store.tallies().await.unwrap().users_active, 50);
    t.register(&users[..1]).await;
    assert_tallies_match(&store, "re-adding one").await;

    // A user Basiq no longer knows is gone; a connection deleted at Basiq is gone.
    sim.sim.remove_user(users[20].as_str());
    let victim = users[30].clone();
    let connection = sim.sim.connection_ids(victim.as_str())[0].clone();
    sqlx::query("UPDATE connections SET gone_at = ? WHERE connection_id = ?")
        .bind(Utc::now().timestamp())
        .bind(&connection)
        .execute(store.write_pool())
        .await
        .unwrap();
    assert_tallies_match(&store, "a connection gone").await;
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users[11..].to_vec()),
            &cancel,
        )
        .await
        .unwrap();
    assert_tallies_match(&store, "a second sweep with a user gone").await;

    // Health moves one by one, and rows deleted outright.
    sqlx::query("UPDATE connections SET health = 'action-required' WHERE rowid % 3 = 0")
        .execute(store.write_pool())
        .await
        .unwrap();
    assert_tallies_match(&store, "healths moved").await;
    sqlx::query("DELETE FROM connections WHERE rowid % 7 = 0")
        .execute(store.write_pool())
        .await
        .unwrap();
    assert_tallies_match(&store, "connections deleted").await;

    // Refresh reservations: reserved, finished, pruned.
    let row = store.all_connections(Some(&users[40])).await.unwrap();
    if let Some(c) = row.first() {
        for outcome in ["created", "rejected"] {
            sqlx::query(
                "INSERT INTO refresh_attempts (connection_id, user_id, institution_id, method, trigger, reserved_at)
                 VALUES (?, ?, ?, ?, 'login', ?)",
            )
            .bind(c.connection_id.as_str())
            .bind(c.user_id.as_str())
            .bind(c.institution_id.as_str())
            .bind(c.method.as_str())
            .bind(Utc::now().timestamp() - 86_400 * 400)
            .execute(store.write_pool())
            .await
            .unwrap();
            sqlx::query("UPDATE refresh_attempts SET outcome = ? WHERE id = last_insert_rowid()")
                .bind(outcome)
                .execute(store.write_pool())
                .await
                .unwrap();
        }
        assert_tallies_match(&store, "reservations").await;
        assert_eq!(
            store
                .refresh_attempt_counts()
                .await
                .unwrap()
                .iter()
                .map(|(_, _, n)| n)
                .sum::<i64>(),
            2
        );
    }
    store.prune(90, Utc::now()).await.unwrap();
    assert_tallies_match(&store, "pruning").await;
    assert!(store.refresh_attempt_counts().await.unwrap().is_empty());
}

#[tokio::test]
async fn status_lists_at_most_its_limit_those_needing_action_first_with_whole_counts() {
    let t = TestApp::builder().users(80).spawn().await;
    let sim = t.sim();
    let db = t.db();
    let sweeper = t.context().await;
    let store = sweeper.store().clone();
    let users: Vec<UserId> = sim_users(sim);
    t.register(&users).await;
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let all = basiq_health::report::status(&store, None, None, chrono::Utc::now())
        .await
        .unwrap();
    let total = all.summary.connections;
    let needing = all.summary.action_required as usize;
    assert!(needing >= 2 && total > needing + 5, "{:?}", all.summary);
    assert_eq!(all.connections.len(), total);
    assert!(!all.summary.truncated);

    let limit = needing + 3;
    let some = basiq_health::report::status(&store, None, Some(limit), chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(some.connections.len(), limit);
    assert_eq!(some.summary.connections_listed, limit);
    assert!(some.summary.truncated);
    assert_eq!(some.summary.connections, total, "counts stay whole");
    assert_eq!(some.summary.by_health, all.summary.by_health);
    assert!(
        some.connections[..needing]
            .iter()
            .all(|c| c.health.as_deref() == Some("action-required")),
        "those needing the user's action come first"
    );
    let few = basiq_health::report::status(&store, None, Some(1), chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(few.connections.len(), 1);
    assert_eq!(
        few.connections[0].health.as_deref(),
        Some("action-required")
    );
    store.close().await;

    // The command line: --limit, --all, and the table's count of who must act.
    let run = |args: &[&str]| {
        let out = crate::commands::run(sim, &db, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value =
        serde_json::from_str(&run(&["status", "--json", "--limit", "2"])).unwrap();
    assert_eq!(json["connections"].as_array().unwrap().len(), 2);
    assert_eq!(json["summary"]["truncated"], true);
    assert_eq!(json["summary"]["connections"], total);
    let json: serde_json::Value =
        serde_json::from_str(&run(&["status", "--json", "--all"])).unwrap();
    assert_eq!(json["connections"].as_array().unwrap().len(), total);
    assert_eq!(json["summary"]["truncated"], false);
    let table = run(&["status", "--limit", "1"]);
    assert!(
        table.contains(&format!("connections needing the user's action: {needing}")),
        "{table}"
    );
    assert!(
        table.contains(&format!("and {} more", needing - 1)),
        "{table}"
    );
}
