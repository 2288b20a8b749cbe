//! The Basiq client against the simulator over real HTTP.

use std::time::{Duration, Instant};

use basiq_health::basiq::{Error, RefreshOutcome};
use basiq_health::domain::{ConnectionId, UserId};
use basiq_sim::{Fault, Outcome, Route, ScriptedConnection};

use crate::helpers::*;

fn first_user(sim: &basiq_sim::RunningSim) -> UserId {
    UserId::parse(sim.sim.user_ids()[0].clone()).unwrap()
}

/// A fresh active open-banking connection with a scripted successful refresh.
fn add_active_connection(sim: &basiq_sim::RunningSim, user: &UserId, id: &str) -> ConnectionId {
    let now = chrono::Utc::now();
    sim.sim.add_connection(
        user.as_str(),
        ScriptedConnection {
            id: id.into(),
            institution_id: "AU00099".into(),
            method: "open-banking".into(),
            status: "active".into(),
            outcome: Outcome::Success,
            last_used: Some(now - chrono::Duration::days(2)),
            created: now - chrono::Duration::days(30),
            expiry: Some(now + chrono::Duration::days(200)),
            mfa: None,
            recorded_shape: false,
        },
    );
    ConnectionId::parse(id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_callers_at_token_expiry_cause_one_token_call() {
    // The client and the simulator share one driven clock: the token ages by it.
    let (clock, sim_clock) = driven_clock();
    let mut config = sim_config();
    config.token_ttl = Duration::from_secs(2);
    config.clock = sim_clock;
    let sim = start_sim(config).await;
    let client = client_on(&sim, clock.clone());
    let user = first_user(&sim);
    client.list_connections(&user).await.unwrap();
    assert_eq!(sim.sim.counters().token_calls, 1);

    // The client renews a 2 s token after 1.5 s (a quarter of its life ahead of expiry).
    clock.advance(Duration::from_millis(1700));
    sim.sim.reset_counters();
    let calls = (0..64).map(|_| {
        let client = client.clone();
        let user = user.clone();
        tokio::spawn(async move { client.list_connections(&user).await })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    let counters = sim.sim.counters();
    assert_eq!(
        counters.token_calls, 1,
        "one /token call for 64 concurrent callers"
    );
    assert_eq!(
        counters.requests.get(&Route::Connections).copied(),
        Some(64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_as_expired_is_replaced_once_for_all_callers() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    client.list_connections(&user).await.unwrap();
    sim.sim.expire_tokens();
    sim.sim.reset_counters();
    let calls = (0..64).map(|_| {
        let client = client.clone();
        let user = user.clone();
        tokio::spawn(async move { client.list_jobs(&user, None).await })
    });
    for call in futures_util::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    let counters = sim.sim.counters();
    assert_eq!(
        counters.token_calls, 1,
        "the refused token is replaced once, not per caller"
    );
    let jobs_requests = counters.requests.get(&Route::Jobs).copied().unwrap_or(0);
    assert!(
        (65..=128).contains(&jobs_requests),
        "each caller retried at most once: {jobs_requests} requests"
    );
}

#[tokio::test]
async fn an_expired_token_is_replaced_and_the_request_retried_once() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    client.list_connections(&user).await.unwrap();
    sim.sim.expire_tokens();
    sim.sim.reset_counters();
    let connections = client.list_connections(&user).await.unwrap();
    assert!(!connections.items.is_empty());
    let counters = sim.sim.counters();
    assert_eq!(counters.token_calls, 1);
    assert_eq!(counters.requests.get(&Route::Connections).copied(), Some(2));
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_succeeds() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    sim.sim.inject_fault(
        Route::Connections,
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
        1,
    );
    let started = Instant::now();
    let connections = client.list_connections(&user).await.unwrap();
    assert!(!connections.items.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was honoured (waited {:?})",
        started.elapsed()
    );
    assert_eq!(
        sim.sim
            .counters()
            .requests
            .get(&Route::Connections)
            .copied(),
        Some(2)
    );
}

#[tokio::test]
async fn a_malformed_body_is_a_decode_error_not_a_panic() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    sim.sim.inject_fault(Route::Jobs, Fault::Malformed, 1);
    let err = client.list_jobs(&user, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Decode {
                endpoint: "jobs",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_dropped_connection_is_transient_and_retried() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    sim.sim.inject_fault(Route::Connections, Fault::Drop, 1);
    client.list_connections(&user).await.unwrap();
    assert_eq!(
        sim.sim
            .counters()
            .requests
            .get(&Route::Connections)
            .copied(),
        Some(2)
    );
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times_and_logged_with_ids() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    let (logs, _guard) = capture_logs();
    sim.sim.inject_fault(
        Route::Connections,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        5,
    );
    let err = client.list_connections(&user).await.unwrap_err();
    assert!(matches!(err, Error::Server { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(
        sim.sim
            .counters()
            .requests
            .get(&Route::Connections)
            .copied(),
        Some(3)
    );
    let correlation_id = err
        .correlation_id()
        .expect("Basiq's correlationId is kept")
        .to_owned();

    let warnings: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "WARN" && l["message"] == "Basiq request failed")
        .collect();
    assert_eq!(warnings.len(), 3, "one warning per failed attempt");
    for line in &warnings {
        assert_eq!(
            line["user_id"],
            user.as_str(),
            "user_id is a top-level key: {line}"
        );
        assert!(
            line["correlation_id"].is_string(),
            "correlation_id on the line: {line}"
        );
    }
    assert_eq!(warnings[2]["correlation_id"], correlation_id.as_str());
}

#[tokio::test]
async fn refresh_tells_a_new_job_from_the_running_one_and_refuses_inactive_connections() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    let conn = add_active_connection(&sim, &user, "c-refresh-1");

    let first = client.refresh_connection(&user, &conn).await.unwrap();
    assert!(
        matches!(first, RefreshOutcome::Created(_)),
        "202: {first:?}"
    );
    let second = client.refresh_connection(&user, &conn).await.unwrap();
    assert_eq!(
        second,
        RefreshOutcome::Existing(first.job_id().clone()),
        "200 with the running job"
    );

    let job = client.get_job(first.job_id()).await.unwrap();
    assert_eq!(job.connection_id.as_ref(), Some(&conn));

    let invalid = sim
        .sim
        .scripted(user.as_str())
        .into_iter()
        .chain(sim.sim.user_ids().iter().flat_map(|u| sim.sim.scripted(u)))
        .find(|c| c.status != "active");
    if let Some(invalid) = invalid {
        let owner = sim
            .sim
            .user_ids()
            .into_iter()
            .find(|u| sim.sim.connection_ids(u).contains(&invalid.id))
            .unwrap();
        let err = client
            .refresh_connection(
                &UserId::parse(owner).unwrap(),
                &ConnectionId::parse(invalid.id).unwrap(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{err:?}");
    } else {
        panic!("the population has a connection that is not active");
    }
    assert_eq!(sim.sim.counters().bulk_refresh_calls, 0);
}

#[tokio::test]
async fn a_refresh_that_times_out_is_not_sent_again() {
    let sim = start_sim(sim_config()).await;
    let mut options = client_options(&sim);
    options.timeout = Duration::from_millis(300);
    let client = basiq_health::basiq::Client::new(options).unwrap();
    let user = first_user(&sim);
    let conn = add_active_connection(&sim, &user, "c-refresh-timeout");
    client.list_connections(&user).await.unwrap();
    sim.sim
        .inject_fault(Route::Refresh, Fault::Delay { ms: 1500 }, 1);
    let result = client.refresh_connection(&user, &conn).await;
    let counters = sim.sim.counters();
    assert_eq!(
        counters.requests.get(&Route::Refresh).copied(),
        Some(1),
        "never resent blindly"
    );
    assert!(
        counters.requests.get(&Route::Jobs).copied().unwrap_or(0) >= 1,
        "looked for the job instead"
    );
    match result {
        Err(Error::Transport { timeout: true, .. }) | Ok(RefreshOutcome::FoundAfterTimeout(_)) => {}
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[tokio::test]
async fn a_refresh_accepted_after_the_timeout_is_found_by_a_later_look() {
    let sim = start_sim(sim_config()).await;
    let mut options = client_options(&sim);
    options.timeout = Duration::from_millis(300);
    // Looks at about 0.6 s and 2.1 s; Basiq takes the request at 1 s.
    options.refresh_lookups = [Duration::from_millis(300), Duration::from_millis(1500)];
    let client = basiq_health::basiq::Client::new(options).unwrap();
    let user = first_user(&sim);
    let conn = add_active_connection(&sim, &user, "c-refresh-late");
    client.list_connections(&user).await.unwrap();
    sim.sim
        .inject_fault(Route::Refresh, Fault::LateAccept { ms: 1000 }, 1);
    let result = client.refresh_connection(&user, &conn).await;
    let counters = sim.sim.counters();
    assert_eq!(
        counters
            .refresh_calls
            .get(conn.as_str())
            .map_or(0, Vec::len),
        1,
        "sent once, never again"
    );
    assert!(
        counters.requests.get(&Route::Jobs).copied().unwrap_or(0) == 2,
        "looked twice: too early, then in time"
    );
    match result {
        Ok(RefreshOutcome::FoundAfterTimeout(job)) => {
            let read = client.get_job(&job).await.unwrap();
            assert_eq!(read.connection_id.as_ref(), Some(&conn));
        }
        other => panic!("the late job was not found: {other:?}"),
    }
}

#[tokio::test]
async fn every_connection_and_job_of_the_population_parses() {
    let mut config = sim_config();
    config.users = 200;
    let sim = start_sim(config).await;
    let client = client(&sim);
    let mut connections = 0;
    let mut jobs_without_source = 0;
    // Last users first: the job running without `links.source` sits on the last healthy
    // connection and gets its source once it ends (a few steps of 150 ms).
    for user in sim.sim.user_ids().into_iter().rev() {
        let user = UserId::parse(user).unwrap();
        connections += client.list_connections(&user).await.unwrap().items.len();
        jobs_without_source += client
            .list_jobs(&user, None)
            .await
            .unwrap()
            .iter()
            .filter(|j| j.connection_id.is_none())
            .count();
    }
    assert!(connections >= 200);
    assert!(
        jobs_without_source >= 1,
        "the running-job-without-source quirk is served"
    );
    let connectors = client.list_connectors().await.unwrap();
    assert!(connectors.iter().any(|c| c.status.is_down()));
}

#[tokio::test]
async fn a_404_user_is_not_found() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let err = client
        .list_connections(&UserId::parse("no-such-user").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(err.correlation_id().is_some());
}

#[tokio::test]
async fn a_wrong_api_key_is_an_authentication_failure_not_retried() {
    let sim = start_sim(sim_config()).await;
    let mut options = client_options(&sim);
    options.api_key = secrecy::SecretString::from("d3Jvbmcta2V5".to_owned());
    let client = basiq_health::basiq::Client::new(options).unwrap();
    let err = client.list_connectors().await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.is_auth() && !err.is_transient());
    assert_eq!(
        sim.sim.counters().token_calls,
        1,
        "a refused key is not retried"
    );
    assert!(err.to_string().contains("basiq.api_key"), "{err}");
}

#[tokio::test]
async fn a_revoked_key_is_an_authentication_failure_whatever_basiq_answers() {
    let sim = start_sim(sim_config()).await;
    for status in [401, 403, 404] {
        sim.sim.revoke_api_key(status);
        let err = client(&sim).list_connectors().await.unwrap_err();
        assert!(matches!(err, Error::Auth { .. }), "{status}: {err:?}");
        assert_eq!(err.status(), Some(status));
    }
}

#[tokio::test]
async fn a_stale_token_answer_fetches_one_new_token() {
    // 403 access-denied "Token has expired", then 401 invalid-authorization-token, each on
    // its own simulator (two fresh tokens refused in a row would open the token backoff).
    for expired in [true, false] {
        let sim = start_sim(sim_config()).await;
        let client = client(&sim);
        let user = first_user(&sim);
        client.list_connections(&user).await.unwrap();
        sim.sim.reset_counters();
        if expired {
            sim.sim.expire_tokens();
        } else {
            sim.sim.inject_fault(
                Route::Connections,
                Fault::Status {
                    status: 401,
                    retry_after: None,
                },
                1,
            );
        }
        client.list_connections(&user).await.unwrap();
        client.list_jobs(&user, None).await.unwrap();
        let c = sim.sim.counters();
        assert_eq!(c.token_calls, 1, "expired: {expired}");
        assert_eq!(c.requests.get(&Route::Connections).copied(), Some(2));
        assert_eq!(c.requests.get(&Route::Jobs).copied(), Some(1));
    }
}

#[tokio::test]
async fn an_unauthorized_access_answer_is_not_retried_with_a_new_token() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let users = sim.sim.user_ids();
    let (denied, other) = (
        UserId::parse(users[0].clone()).unwrap(),
        UserId::parse(users[1].clone()).unwrap(),
    );
    client.list_connections(&other).await.unwrap();
    sim.sim.reset_counters();
    for status in [401, 403] {
        sim.sim
            .inject_user_fault(denied.as_str(), Fault::UnauthorizedAccess { status }, 1);
        let err = client.list_connections(&denied).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorised { .. }), "{err:?}");
        assert_eq!(err.code(), Some("unauthorized-access"));
        assert!(!err.is_auth());
    }
    client.list_connections(&other).await.unwrap();
    let c = sim.sim.counters();
    assert_eq!(c.token_calls, 0, "the shared token is kept");
    assert_eq!(
        c.requests.get(&Route::Connections).copied(),
        Some(3),
        "each refusal sent once, then the other user with the same token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_route_is_tried_once_for_sixty_four_callers() {
    let sim = start_sim(sim_config()).await;
    let client = client(&sim);
    let user = first_user(&sim);
    sim.sim.inject_fault(
        Route::Token,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        1000,
    );
    let calls = (0..64).map(|_| {
        let client = client.clone();
        let user = user.clone();
        tokio::spawn(async move { client.list_connections(&user).await })
    });
    for call in futures_util::future::join_all(calls).await {
        let err = call.unwrap().unwrap_err();
        assert_eq!(err.status(), Some(503), "{err}");
    }
    let c = sim.sim.counters();
    assert_eq!(
        c.token_calls, 3,
        "one fetch of max_attempts = 3 tries, shared by every caller in the backoff window"
    );
    assert_eq!(c.requests.get(&Route::Connections), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_expires_in_does_not_storm_the_token_route() {
    // `expires_in: 0`, and tokens that are dead on arrival.
    let mut config = sim_config();
    config.token_ttl = Duration::ZERO;
    let sim = start_sim(config).await;
    let client = client(&sim);
    let user = first_user(&sim);
    let tasks = (0..8).map(|_| {
        let client = client.clone();
        let user = user.clone();
        tokio::spawn(async move {
            for _ in 0..25 {
                let err = client.list_connections(&user).await.unwrap_err();
                assert!(matches!(err, Error::Unauthorised { .. }), "{err:?}");
            }
        })
    });
    for task in futures_util::future::join_all(tasks).await {
        task.unwrap();
    }
    let c = sim.sim.counters();
    assert!(
        c.token_calls <= 5,
        "{} /token calls for 200 requests",
        c.token_calls
    );
}

#[tokio::test]
async fn neither_the_api_key_nor_the_token_ever_reaches_the_logs() {
    let sim = start_sim(sim_config()).await;
    let (logs, _guard) = capture_logs();
    let client = client(&sim);
    let user = first_user(&sim);
    client.list_connections(&user).await.unwrap();
    sim.sim.expire_tokens();
    sim.sim.inject_fault(
        Route::Jobs,
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        2,
    );
    client.list_jobs(&user, None).await.unwrap();
    sim.sim.inject_fault(
        Route::Connectors,
        Fault::Status {
            status: 429,
            retry_after: None,
        },
        3,
    );
    let err = client.list_connectors().await.unwrap_err();
    let conn = add_active_connection(&sim, &user, "c-canary");
    client.refresh_connection(&user, &conn).await.unwrap();

    let mut everything = logs.text();
    everything.push_str(&format!("{err} {err:?} {client:?}"));
    assert!(
        everything.contains("Basiq request failed"),
        "the run did log"
    );
    assert!(!everything.contains(CANARY_KEY), "the API key leaked");
    let tokens = sim.sim.counters().issued_tokens;
    assert!(tokens.len() >= 2);
    for token in tokens {
        assert!(!everything.contains(&token), "a bearer token leaked");
    }
}
