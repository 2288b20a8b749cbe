//! The fault matrix: a 500-user sweep against the simulator while it answers with every
//! transport fault Basiq or the network can produce. After at most two passes every user
//! is swept, nothing stored is lost, no connection is told to act because of a transport
//! fault, and every error line carries its ids (and Basiq's correlation id when there was
//! an answer).

use std::collections::BTreeMap;
use std::time::Duration;

use basiq_health::domain::UserId;
use basiq_health::plan::classify::Health;
use basiq_sim::{Fault, Route, RunningSim, SimConfig};
use chrono::{Timelike, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

const USERS: usize = 500;

/// Sixteen users at a time; the sweeper only sweeps (no refresh is sent).
const EXTRA: &str = "[sweep]\nconcurrency = 16\n";

/// The population's one live refresh (running as the simulator starts) ends within a few
/// milliseconds, so every pass sees the same finished state whenever it runs: the tests
/// compare passes made seconds apart, and a pass that ran fast enough to catch the live
/// job running would otherwise differ from a later one for a reason that is not a fault.
async fn matrix_sim() -> RunningSim {
    let sim = start_sim(SimConfig {
        users: USERS,
        seed: 23,
        step_duration: Duration::from_millis(1),
        ..sim_config()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    sim
}

async fn sweeper(t: &TestApp, db: &std::path::Path) -> Context {
    let mut settings = t.settings_at(db, EXTRA);
    settings.basiq.timeout = Duration::from_millis(400);
    settings.basiq.max_retry_delay = Duration::from_millis(1500);
    t.sweeper_from(&settings).await
}

async fn pass(sweeper: &Context, users: &[UserId]) -> basiq_health::store::SweepCounts {
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.to_vec()),
            &CancellationToken::new(),
        )
        .await
        .expect("a pass survives transport faults")
}

/// Health and reason per connection, and each connection's number of health changes.
async fn snapshot(sweeper: &Context) -> BTreeMap<String, (Option<Health>, Option<String>, usize)> {
    let store = sweeper.store();
    let mut out = BTreeMap::new();
    for row in store.all_connections(None).await.unwrap() {
        let changes = store
            .health_history(&row.connection_id)
            .await
            .unwrap()
            .len();
        out.insert(
            row.connection_id.as_str().to_owned(),
            (row.health, row.reason.clone(), changes),
        );
    }
    out
}

fn every_fault() -> Vec<Fault> {
    vec![
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
        Fault::Status {
            status: 429,
            retry_after: None,
        },
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        Fault::Delay { ms: 900 },
        Fault::Malformed,
        Fault::Drop,
    ]
}

#[tokio::test]
async fn a_500_user_sweep_survives_the_fault_matrix_within_two_passes() {
    let t = TestApp::on(matrix_sim().await);
    let sim = t.sim();
    let db = t.db();
    let users: Vec<UserId> = sim_users(sim);
    assert_eq!(users.len(), USERS);
    let sweeper = sweeper(&t, &db).await;
    sweeper.add_users(&users).await.unwrap();

    // A clean pass: what is stored before the faults, and the right answer after them.
    let clean = pass(&sweeper, &users).await;
    assert_eq!(clean.users_swept, USERS as u64, "{clean:?}");
    let before = snapshot(&sweeper).await;
    assert!(before.len() >= USERS, "every user has connections");

    // Faults on every route the sweep reads, bursts first, then every third request.
    for route in [Route::Connections, Route::Jobs] {
        sim.sim.inject_fault(
            route,
            Fault::Status {
                status: 503,
                retry_after: None,
            },
            5,
        );
        sim.sim.set_chaos(route, 3, every_fault());
    }
    sim.sim.set_chaos(
        Route::Token,
        2,
        vec![Fault::Status {
            status: 500,
            retry_after: None,
        }],
    );
    // The token expires mid-sweep.
    let expirer = {
        let sim = sim.sim.clone();
        tokio::spawn(async move {
            let start = sim.counters().requests.values().sum::<u64>();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if sim.counters().requests.values().sum::<u64>() > start + 300 {
                    sim.expire_tokens();
                    return;
                }
            }
        })
    };

    let (logs, _guard) = capture_logs();
    // Sweep times are stored to the second: start on a fresh second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Utc::now().with_nanosecond(0).unwrap();
    let first = pass(&sweeper, &users).await;
    expirer.await.unwrap();
    for route in [Route::Connections, Route::Jobs, Route::Token] {
        sim.sim.set_chaos(route, 0, vec![]);
    }
    let failed: Vec<UserId> = sweeper
        .store()
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.last_swept_at.is_none_or(|t| t < started))
        .map(|u| u.user_id)
        .collect();
    assert_eq!(failed.len() as u64, first.users_failed, "{first:?}");
    let second = pass(&sweeper, &failed).await;
    eprintln!(
        "fault matrix: pass 1 swept {} and failed {}; pass 2 swept {} and failed {}",
        first.users_swept, first.users_failed, second.users_swept, second.users_failed
    );

    // Every user swept within two passes, none gone.
    let stored = sweeper.store().list_users().await.unwrap();
    assert_eq!(stored.len(), USERS);
    for user in &stored {
        assert!(user.gone_at.is_none(), "{} marked gone", user.user_id);
        assert!(
            user.last_swept_at.is_some_and(|t| t >= started),
            "{} not swept after two passes",
            user.user_id
        );
    }
    // Nothing stored was lost, and no transport fault changed anyone's health.
    let after = snapshot(&sweeper).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (id, was) in &before {
        assert_eq!(
            &after[id], was,
            "connection {id} changed under transport faults"
        );
    }
    let told_to_act = after
        .values()
        .filter(|(h, _, _)| *h == Some(Health::ActionRequired))
        .count();
    let told_before = before
        .values()
        .filter(|(h, _, _)| *h == Some(Health::ActionRequired))
        .count();
    assert_eq!(told_to_act, told_before);

    // Every warning or error of the daemon names the user it is about, and carries Basiq's
    // correlation id when Basiq answered with its error envelope.
    let lines = logs.lines();
    let daemon_lines: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("basiq_health"))
                && matches!(l["level"].as_str(), Some("WARN" | "ERROR"))
        })
        .collect();
    assert!(
        !daemon_lines.is_empty(),
        "the faults were logged: {}",
        lines.len()
    );
    for line in &daemon_lines {
        let endpoint = line["endpoint"].as_str().unwrap_or("");
        if endpoint != "token" && endpoint != "connectors" {
            assert!(line["user_id"].is_string(), "no user id: {line}");
        }
        if line["status"].as_u64().is_some_and(|s| s >= 400) {
            assert!(
                line["correlation_id"].is_string(),
                "no correlation id: {line}"
            );
        }
    }
}

#[tokio::test]
async fn connectors_failing_on_a_fresh_database_blame_nobody_and_the_next_pass_is_right() {
    let t = TestApp::on(matrix_sim().await);
    let sim = t.sim();
    let users: Vec<UserId> = sim_users(sim);

    // The right answer, from a database that saw /connectors answer.
    let reference = sweeper(&t, &t.path("reference.db")).await;
    reference.add_users(&users).await.unwrap();
    pass(&reference, &users).await;
    let expected = snapshot(&reference).await;
    assert!(
        expected
            .values()
            .any(|(h, reason, _)| *h == Some(Health::ActionRequired)
                && reason.as_deref() != Some("consent-expired")),
        "the population has users who must act on a failed job"
    );

    // A fresh database while /connectors fails every time.
    let fresh = sweeper(&t, &t.path("fresh.db")).await;
    fresh.add_users(&users).await.unwrap();
    sim.sim.set_chaos(
        Route::Connectors,
        1,
        vec![
            Fault::Status {
                status: 503,
                retry_after: None,
            },
            Fault::Drop,
            Fault::Malformed,
        ],
    );
    let first = pass(&fresh, &users).await;
    assert_eq!(first.users_swept, USERS as u64, "{first:?}");
    let blind = snapshot(&fresh).await;
    let blamed: Vec<_> = blind
        .iter()
        .filter(|(_, (h, reason, _))| {
            // An expired consent is the user's to renew whatever the bank's state.
            *h == Some(Health::ActionRequired) && reason.as_deref() != Some("consent-expired")
        })
        .map(|(id, (_, reason, _))| (id, reason))
        .collect();
    assert!(
        blamed.is_empty(),
        "told to act while the bank's status was unknown: {blamed:?}"
    );

    // /connectors answers again: the next pass gives the reference's answer.
    sim.sim.set_chaos(Route::Connectors, 0, vec![]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !fresh.connectors().await.known {
        assert!(
            tokio::time::Instant::now() < deadline,
            "/connectors never fetched again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pass(&fresh, &users).await;
    let now_known = snapshot(&fresh).await;
    for (id, (health, reason, _)) in &expected {
        let (h, r, _) = &now_known[id];
        assert_eq!((h, r), (health, reason), "connection {id}");
    }
}
