//! The one clock, driven: a manual `Clock` through the real sweeper, client, receiver and
//! deliverer moves what they decide by the world's time, and nothing else does.

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use basiq_health::clock::Clock;
use basiq_health::domain::UserId;
use basiq_sim::{Outcome, Route, RunningSim, ScriptedConnection, ScriptedJob, SimConfig};
use chrono::{Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

const BASIQ_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const APP_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

async fn quick_sim() -> RunningSim {
    start_sim(SimConfig {
        users: 0,
        step_duration: StdDuration::from_millis(1),
        ..sim_config()
    })
    .await
}

fn requests(sim: &RunningSim, route: Route) -> u64 {
    sim.sim
        .counters()
        .requests
        .get(&route)
        .copied()
        .unwrap_or(0)
}

/// A user with one healthy open-banking connection (a job that succeeded an hour ago).
fn healthy_user(sim: &RunningSim, user: &str, connection: &str) -> UserId {
    sim.sim.add_user(user);
    let mut c = ScriptedConnection::new("AU00000", "open-banking");
    c.id = connection.into();
    c.last_used = Some(Utc::now() - Duration::hours(1));
    sim.sim.add_connection(user, c);
    sim.sim.add_job(
        user,
        ScriptedJob {
            id: None,
            connection_id: connection.into(),
            created: Utc::now() - Duration::hours(1),
            updated: Utc::now() - Duration::hours(1) + Duration::seconds(30),
            outcome: Outcome::Success,
            running: false,
            with_source: true,
        },
    );
    UserId::parse(user).unwrap()
}

fn write_secret(dir: &tempfile::TempDir, name: &str, secret: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn the_connectors_cache_is_read_again_once_the_driven_clock_passes_its_ttl_and_not_before() {
    let t = TestApp::builder()
        .quick()
        .extra("[sweep]\nconnectors_ttl = \"5m\"\n")
        .clock(Clock::manual(Utc::now()))
        .spawn()
        .await;
    let sim = t.sim();
    let sweeper = t.context().await;
    sweeper.connectors().await;
    assert_eq!(requests(sim, Route::Connectors), 1);
    t.clock().advance(StdDuration::from_secs(5 * 60 - 1));
    sweeper.connectors().await;
    assert_eq!(
        requests(sim, Route::Connectors),
        1,
        "fresh for 5 driven minutes, however long the wall took"
    );
    t.clock().advance(StdDuration::from_secs(1));
    sweeper.connectors().await;
    assert_eq!(requests(sim, Route::Connectors), 2, "read again at the TTL");

    // A read forced to confirm a notice: at most one per driven second.
    assert!(!sweeper.connectors_confirm(i64::MAX).await);
    assert_eq!(requests(sim, Route::Connectors), 3);
    assert!(!sweeper.connectors_confirm(i64::MAX).await);
    assert_eq!(requests(sim, Route::Connectors), 3, "not twice in a second");
    t.clock().advance(StdDuration::from_secs(1));
    assert!(!sweeper.connectors_confirm(i64::MAX).await);
    assert_eq!(requests(sim, Route::Connectors), 4);
}

#[tokio::test]
async fn the_token_is_fetched_again_when_the_driven_clock_passes_its_refresh_time() {
    let sim = quick_sim().await;
    let clock = Clock::manual(Utc::now());
    let client =
        basiq_health::basiq::Client::with_clock(client_options(&sim), clock.clone()).unwrap();
    client.list_connectors().await.unwrap();
    assert_eq!(client.stats().token_fetches(), 1);
    // The simulator's tokens live an hour: refreshed five minutes ahead of expiry.
    clock.advance(StdDuration::from_secs(55 * 60 - 1));
    client.list_connectors().await.unwrap();
    assert_eq!(
        client.stats().token_fetches(),
        1,
        "still fresh by the clock"
    );
    clock.advance(StdDuration::from_secs(1));
    client.list_connectors().await.unwrap();
    assert_eq!(client.stats().token_fetches(), 2, "due by the clock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_checks_timestamps_against_the_daemon_s_clock() {
    let t = TestApp::quick().await;
    let dir = t.dir();
    let secret = write_secret(dir, "basiq-secret", BASIQ_SECRET);
    let settings = t.settings_with(&format!(
        "[webhooks]\nlisten = \"127.0.0.1:0\"\nsecret_file = {secret:?}\npoll_interval = \"0s\"\n"
    ));
    // Two driven hours ahead of the wall.
    let clock = Clock::manual(Utc::now() + Duration::hours(2));
    let app = basiq_health::app::App::build_with_clock(settings, t.key(), clock.clone())
        .await
        .unwrap();
    let url = format!("http://{}/v1/basiq/webhook", app.webhook_addr().unwrap());
    let store = app.context().store().clone();
    let daemon = Daemon::start(app);
    let signer = standardwebhooks::Webhook::new(BASIQ_SECRET).unwrap();
    let http = reqwest::Client::new();
    let post = |id: &'static str, ts: i64| {
        let body = format!("{{\"eventTypeId\":\"transactions.updated\",\"eventId\":\"{id}\"}}");
        let signature = signer.sign(id, ts, body.as_bytes()).unwrap();
        http.post(&url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };
    let now = clock.now().timestamp();
    let wall = post("msg-wall", Utc::now().timestamp()).await.unwrap();
    assert_eq!(
        wall.status().as_u16(),
        401,
        "the wall's time is not the daemon's"
    );
    let late = post("msg-late", now - 6 * 60).await.unwrap();
    assert_eq!(late.status().as_u16(), 401, "six driven minutes old");
    let early = post("msg-early", now + 6 * 60).await.unwrap();
    assert_eq!(early.status().as_u16(), 401, "six driven minutes ahead");
    let edge = post("msg-edge", now - 5 * 60).await.unwrap();
    assert_eq!(edge.status().as_u16(), 200, "five minutes is within");
    let good = post("msg-good", now).await.unwrap();
    assert_eq!(good.status().as_u16(), 200);
    let stored = store.recent_events(10).await.unwrap();
    let ids: Vec<&str> = stored.iter().map(|e| e.delivery_id.as_str()).collect();
    assert_eq!(ids, vec!["msg-good", "msg-edge"]);
    assert!(
        stored.iter().all(|e| e.received_at == now),
        "stored at the driven time: {stored:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_delivery_round_signs_with_the_driven_clock() {
    type Seen = Arc<Mutex<Vec<(axum::http::HeaderMap, bytes::Bytes)>>>;
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hook).await });

    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let secret = write_secret(dir, "app-secret", APP_SECRET);
    let settings = t.settings_with(&format!(
        "[[notify.endpoints]]\nurl = \"http://{hook_addr}/hook\"\nsecret_file = {secret:?}\n\
             events = [\"connection.health_changed\"]\n"
    ));
    let clock = Clock::manual(Utc::now());
    let sweeper = t.sweeper_on(&settings, clock.clone()).await;
    let user = healthy_user(sim, "u-clock", "c-clock");
    sweeper
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    let sweep = |sweeper: Context, user: UserId| async move {
        sweeper
            .run_pass(
                basiq_health::work::PassTrigger::Command,
                Some(vec![user]),
                &CancellationToken::new(),
            )
            .await
            .unwrap()
    };
    sweep(sweeper.clone(), user.clone()).await;
    sim.sim.invalidate_connection("c-clock").unwrap();
    clock.advance(StdDuration::from_secs(2 * 3600));
    sweep(sweeper.clone(), user.clone()).await;

    let endpoint = &settings.notify.endpoints[0];
    let attempted = basiq_health::work::delivery::deliver_round(
        sweeper.store(),
        &settings.notify,
        Some(&sweeper),
        endpoint,
        sweeper.clock(),
    )
    .await
    .unwrap();
    assert_eq!(attempted, 1, "the action-required notice");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    let now = clock.now();
    assert_eq!(
        headers["webhook-timestamp"].to_str().unwrap(),
        now.timestamp().to_string(),
        "signed at the driven time, two hours past the wall"
    );
    let verifier = [standardwebhooks::Webhook::new(APP_SECRET).unwrap()];
    basiq_health::events::receiver::verify(&verifier, headers, body, now)
        .expect("verifies at the driven time");
    assert!(
        basiq_health::events::receiver::verify(&verifier, headers, body, Utc::now()).is_err(),
        "not at the wall's"
    );
    let deliveries = sweeper.store().list_deliveries(false, 10).await.unwrap();
    assert_eq!(deliveries[0].state, "succeeded");
    assert_eq!(deliveries[0].done_at, Some(now.timestamp()));
}
