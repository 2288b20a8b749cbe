//! Events in and out: Basiq's signed webhooks and the `/events` poll through the inbox, and
//! notifications to the partner's app through the outbox, against the simulator and a
//! receiver that verifies with the official Python `standardwebhooks` package.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration as StdDuration;

use basiq_health::app::App;
use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::classify::Health;
use basiq_health::store::Store;
use basiq_sim::{Outcome, Route, RunningSim, ScriptedConnection, ScriptedJob, WebhookFault};
use chrono::{Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

/// A Standard Webhooks secret for Basiq's deliveries, and another for the partner's.
pub const BASIQ_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const APP_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A user with one healthy open-banking connection (a job that succeeded an hour ago).
fn healthy_user(sim: &RunningSim, user: &str, connection: &str) -> (UserId, ConnectionId) {
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
    (
        UserId::parse(user).unwrap(),
        ConnectionId::parse(connection).unwrap(),
    )
}

fn write_secret(dir: &tempfile::TempDir, name: &str, secret: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

/// Settings with the receiver on a loopback port, the poll off unless asked, a day's period.
fn events_toml(dir: &tempfile::TempDir, extra_webhooks: &str, rest: &str) -> String {
    let secret = write_secret(dir, "basiq-webhook-secret", BASIQ_SECRET);
    format!(
        "[sweep]\nperiod = \"24h\"\n[webhooks]\nlisten = \"127.0.0.1:0\"\nsecret_file = {:?}\n\
         poll_interval = \"0s\"\n{extra_webhooks}\n{rest}",
        secret.display().to_string()
    )
}

async fn health_of(store: &Store, id: &ConnectionId) -> Option<(Option<Health>, Option<String>)> {
    store
        .connection(id)
        .await
        .unwrap()
        .map(|r| (r.health, r.reason))
}

/// Waits (up to 20 s) until `check` holds.
async fn until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, StdDuration::from_secs(20), check).await;
}

fn requests(sim: &RunningSim, route: Route) -> u64 {
    sim.sim
        .counters()
        .requests
        .get(&route)
        .copied()
        .unwrap_or(0)
}

/// Registers and sweeps the user once in a store of its own, closed after (a daemon
/// process opens the database next).
async fn swept_and_closed(t: &TestApp, user: &UserId) {
    let sweeper = t.sweeper_with("[sweep]\nperiod = \"24h\"").await;
    sweep_now(&sweeper, user).await;
    sweeper.store().close().await;
}

/// Waits until something answers at `url`.
async fn listening(url: &str) {
    until("the receiver to listen", || async {
        reqwest::Client::new().post(url).send().await.is_ok()
    })
    .await;
}

async fn first_sweep(app: &App, user: &UserId) {
    sweep_now(app.context(), user).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_connection_heard_by_webhook_is_action_required_at_once_for_two_requests_and_a_replay_does_nothing()
 {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let (user, conn) = healthy_user(sim, "u-hook", "c-hook");
    let app = t.app_with(&events_toml(dir, "", "")).await;
    let addr = app.webhook_addr().expect("the receiver is bound");
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    assert_eq!(
        health_of(&store, &conn).await.unwrap().0,
        Some(Health::Healthy)
    );
    // The user's slot is a day away: only the event can make this sweep happen now.
    let row = store.get_user(&user).await.unwrap().unwrap();
    assert!(row.next_due_at > Utc::now() + Duration::minutes(1));
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    let (lists, jobs) = (
        requests(sim, Route::Connections),
        requests(sim, Route::Jobs),
    );
    sim.sim.invalidate_connection("c-hook").unwrap();
    until(
        "the invalidated connection to be action-required",
        || async { health_of(&store, &conn).await.unwrap().0 == Some(Health::ActionRequired) },
    )
    .await;
    sim.sim.webhooks_settled().await;
    // The event is marked processed just after the sweep it caused is committed.
    until("the event to be marked processed", || async {
        let events = store.recent_events(10).await.unwrap();
        events.iter().all(|e| e.outcome.is_some())
    })
    .await;
    assert_eq!(
        requests(sim, Route::Connections) - lists,
        1,
        "one list of connections"
    );
    assert_eq!(requests(sim, Route::Jobs) - jobs, 1, "one list of jobs");
    let events = store.recent_events(10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].event_type.as_deref(),
        Some("connection.invalidated")
    );
    assert_eq!(events[0].outcome.as_deref(), Some("swept"));

    // The same delivery twice (a retry Basiq thought lost): both acknowledged, one stored,
    // one sweep.
    let (lists, jobs) = (
        requests(sim, Route::Connections),
        requests(sim, Route::Jobs),
    );
    sim.sim.inject_webhook_fault(WebhookFault::Duplicate, 1);
    let dup = sim
        .sim
        .emit_event("connection.activated", "u-hook", Some("c-hook"));
    sim.sim.webhooks_settled().await;
    let answers: Vec<u16> = sim
        .sim
        .webhooks_sent()
        .iter()
        .filter(|s| s.event_type == "connection.activated")
        .map(|s| s.status)
        .collect();
    assert_eq!(answers, vec![200, 200], "both copies acknowledged");
    until("the activated event to be processed", || async {
        store
            .recent_events(10)
            .await
            .unwrap()
            .iter()
            .any(|e| e.event_id.as_deref() == Some(dup.id.as_str()) && e.processed_at.is_some())
    })
    .await;
    // Give a second processing every chance to happen before counting.
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let stored: Vec<_> = store
        .recent_events(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_id.as_deref() == Some(dup.id.as_str()))
        .collect();
    assert_eq!(stored.len(), 1, "a replay is not stored twice");
    assert_eq!(requests(sim, Route::Connections) - lists, 1, "swept once");
    assert_eq!(requests(sim, Route::Jobs) - jobs, 1, "swept once");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_stale_timestamps_and_oversized_bodies_are_refused_and_nothing_is_stored() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let (user, conn) = healthy_user(sim, "u-bad", "c-bad");
    let app = t.app_with(&events_toml(dir, "max_body = 4096", "")).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    let url = format!("http://{addr}/v1/basiq/webhook");
    sim.sim.set_webhook_target(&url, BASIQ_SECRET);
    sim.sim.inject_webhook_fault(WebhookFault::BadSignature, 1);
    sim.sim
        .inject_webhook_fault(WebhookFault::StaleTimestamp, 1);
    sim.sim.emit_event("consent.revoked", "u-bad", None);
    sim.sim.emit_event("consent.revoked", "u-bad", None);
    sim.sim.webhooks_settled().await;
    let statuses: Vec<(Option<WebhookFault>, u16)> = sim
        .sim
        .webhooks_sent()
        .iter()
        .map(|s| (s.fault, s.status))
        .collect();
    assert!(
        statuses.contains(&(Some(WebhookFault::BadSignature), 401)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&(Some(WebhookFault::StaleTimestamp), 401)),
        "{statuses:?}"
    );

    // Signed right, but too big: 413 before anything is read into the inbox.
    let signer = standardwebhooks::Webhook::new(BASIQ_SECRET).unwrap();
    let body = format!(
        "{{\"eventTypeId\":\"consent.revoked\",\"pad\":\"{}\"}}",
        "x".repeat(8000)
    );
    let ts = Utc::now().timestamp();
    let signature = signer.sign("msg_big", ts, body.as_bytes()).unwrap();
    let http = reqwest::Client::new();
    let big = http
        .post(&url)
        .header("webhook-id", "msg_big")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", &signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);
    // No headers at all.
    let bare = http.post(&url).body("{}").send().await.unwrap();
    assert_eq!(bare.status().as_u16(), 400);
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    assert!(
        store.recent_events(10).await.unwrap().is_empty(),
        "nothing stored"
    );
    assert_eq!(
        health_of(&store, &conn).await.unwrap().0,
        Some(Health::Healthy),
        "nothing done"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_either_secret_is_accepted() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let (user, conn) = healthy_user(sim, "u-rot", "c-rot");
    let file = t.path("rotating");
    std::fs::write(&file, format!("{APP_SECRET}\n{BASIQ_SECRET}\n")).unwrap();
    let toml = format!(
        "[sweep]\nperiod = \"24h\"\n[webhooks]\nlisten = \"127.0.0.1:0\"\nsecret_file = {:?}\npoll_interval = \"0s\"\n",
        file.display().to_string()
    );
    let app = t.app_with(&toml).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.emit_event("consent.revoked", "u-rot", None);
    until("the consent to be revoked", || async {
        health_of(&store, &conn).await.unwrap()
            == (Some(Health::ActionRequired), Some("consent-revoked".into()))
    })
    .await;
    // A sweep afterwards (Basiq still shows the connection active, its old job a success)
    // keeps the consent ended.
    t.sweep_now(&user).await;
    assert_eq!(
        health_of(&store, &conn).await.unwrap(),
        (Some(Health::ActionRequired), Some("consent-revoked".into()))
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_poll_with_webhooks_off_finds_the_event_and_does_it_once() {
    let t = TestApp::builder()
        .quick()
        .extra("[sweep]\nperiod = \"24h\"")
        .spawn()
        .await;
    let sim = t.sim();
    let (user, conn) = healthy_user(sim, "u-poll", "c-poll");
    let sweeper = t.context().await;
    sweep_now(sweeper, &user).await;
    sim.sim.invalidate_connection("c-poll").unwrap();
    sim.sim.emit_event("transactions.updated", "u-poll", None);
    let processor = basiq_health::work::event::Processor {
        context: sweeper.clone(),
        register_new_users: false,
        wake: Default::default(),
    };
    let cancel = CancellationToken::new();
    let (lists, jobs) = (
        requests(sim, Route::Connections),
        requests(sim, Route::Jobs),
    );
    let polled =
        basiq_health::events::poll::poll_once(sweeper.client(), sweeper.store(), Utc::now())
            .await
            .unwrap();
    assert_eq!((polled.listed, polled.stored, polled.skipped), (2, 1, 1));
    assert_eq!(processor.process_pending(&cancel).await.unwrap(), 1);
    assert_eq!(
        health_of(sweeper.store(), &conn).await.unwrap().0,
        Some(Health::ActionRequired)
    );
    // Polled again: the event is known, nothing is stored or done.
    let again =
        basiq_health::events::poll::poll_once(sweeper.client(), sweeper.store(), Utc::now())
            .await
            .unwrap();
    assert_eq!((again.listed, again.stored), (2, 0));
    assert_eq!(processor.process_pending(&cancel).await.unwrap(), 0);
    assert_eq!(requests(sim, Route::Connections) - lists, 1);
    assert_eq!(requests(sim, Route::Jobs) - jobs, 1);
    assert_eq!(requests(sim, Route::Events), 2, "one request per poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_heard_by_webhook_and_by_the_poll_is_done_once_and_one_without_its_link_is_looked_up()
 {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let (user, conn) = healthy_user(sim, "u-both", "c-both");
    let app = t.app_with(&events_toml(dir, "", "")).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    let client = app.context().client().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    // No eventEntity link: the user comes from GET /events/{id}.
    sim.sim.inject_webhook_fault(WebhookFault::NoEntityLink, 1);
    let e = sim.sim.invalidate_connection("c-both").unwrap();
    until("the event to be processed", || async {
        health_of(&store, &conn).await.unwrap().0 == Some(Health::ActionRequired)
    })
    .await;
    assert_eq!(requests(sim, Route::Events), 1, "one look-up of the event");
    let polled = basiq_health::events::poll::poll_once(&client, &store, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        (polled.listed, polled.stored),
        (1, 0),
        "the poll finds it known"
    );
    let events = store.recent_events(10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id.as_deref(), Some(e.id.as_str()));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_connections_and_users_leave_the_watched_state_and_unwatched_users_are_not_swept() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let (user, conn) = healthy_user(sim, "u-del", "c-del");
    let (other, _) = healthy_user(sim, "u-del2", "c-del2");
    let app = t
        .app_with(&events_toml(dir, "register_new_users = true", ""))
        .await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    first_sweep(&app, &other).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.delete_connection("u-del", "c-del").unwrap();
    sim.sim.emit_event("user.deleted", "u-del2", None);
    sim.sim
        .emit_event("connection.invalidated", "u-stranger", Some("c-x"));
    sim.sim.emit_event("user.created", "u-new", None);
    sim.sim.emit_event("transactions.updated", "u-del2", None);
    until("five events processed", || async {
        let e = store.recent_events(10).await.unwrap();
        e.len() == 5 && e.iter().all(|e| e.processed_at.is_some())
    })
    .await;
    let outcomes: std::collections::BTreeMap<String, String> = store
        .recent_events(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.event_type.unwrap(), e.outcome.unwrap()))
        .collect();
    assert_eq!(outcomes["connection.deleted"], "connection-removed");
    assert_eq!(outcomes["user.deleted"], "user-gone");
    assert_eq!(outcomes["connection.invalidated"], "not-watched");
    assert_eq!(outcomes["user.created"], "user-registered");
    assert_eq!(outcomes["transactions.updated"], "not-handled");
    assert!(
        store
            .connection(&conn)
            .await
            .unwrap()
            .unwrap()
            .gone_at
            .is_some()
    );
    assert!(
        store
            .get_user(&other)
            .await
            .unwrap()
            .unwrap()
            .gone_at
            .is_some()
    );
    assert!(
        store
            .get_user(&UserId::parse("u-new").unwrap())
            .await
            .unwrap()
            .is_some()
    );
    daemon.stop().await;
}

// ---- the daemon as a process: SIGKILL ------------------------------------------------------

fn daemon_process(sim: &RunningSim, db: &std::path::Path, config: &std::path::Path) -> Child {
    crate::cli::bin()
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env("BASIQ_HEALTH__DATABASE__PATH", db)
        .spawn()
        .unwrap()
}

fn kill9(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn process_config(
    sim: &RunningSim,
    dir: &tempfile::TempDir,
    webhook_port: u16,
    notify: &str,
) -> std::path::PathBuf {
    let secret = write_secret(dir, "basiq-webhook-secret", BASIQ_SECRET);
    let path = dir.path().join("bh.toml");
    std::fs::write(
        &path,
        format!(
            "shutdown_grace = \"2s\"\n[basiq]\nbase_url = {:?}\nretry_base_delay = \"20ms\"\n\
             [api]\nlisten = \"\"\n[log]\nformat = \"json\"\n[sweep]\nperiod = \"24h\"\n\
             [webhooks]\nlisten = \"127.0.0.1:{webhook_port}\"\nsecret_file = {:?}\npoll_interval = \"0s\"\n{notify}",
            sim.base_url(),
            secret.display().to_string()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_after_the_2xx_and_before_processing_loses_nothing() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let db = t.db();
    let (user, conn) = healthy_user(sim, "u-kill", "c-kill");
    swept_and_closed(&t, &user).await;
    let port = free_port();
    let config = process_config(sim, dir, port, "");
    let mut child = daemon_process(sim, &db, &config);
    let url = format!("http://127.0.0.1:{port}/v1/basiq/webhook");
    listening(&url).await;
    // The sweep the event causes hangs at Basiq: the daemon is killed while processing.
    sim.sim
        .set_delay(Some(Route::Connections), StdDuration::from_secs(30));
    sim.sim.set_webhook_target(&url, BASIQ_SECRET);
    let e = sim.sim.invalidate_connection("c-kill").unwrap();
    sim.sim.webhooks_settled().await;
    assert!(
        sim.sim.webhooks_sent().iter().any(|s| s.status == 200),
        "acknowledged: {:?}",
        sim.sim.webhooks_sent()
    );
    kill9(&mut child);
    {
        let store = Store::open(&db).await.unwrap();
        let events = store.recent_events(10).await.unwrap();
        assert_eq!(events.len(), 1, "stored before the 2xx");
        assert!(events[0].processed_at.is_none(), "killed before processing");
        store.close().await;
    }
    sim.sim
        .set_delay(Some(Route::Connections), StdDuration::ZERO);
    let mut child = daemon_process(sim, &db, &config);
    let store = Store::open(&db).await.unwrap();
    until("the event to be processed after the restart", || async {
        health_of(&store, &conn).await.unwrap().0 == Some(Health::ActionRequired)
    })
    .await;
    let events = store.recent_events(10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id.as_deref(), Some(e.id.as_str()));
    assert_eq!(events[0].outcome.as_deref(), Some("swept"));
    kill9(&mut child);
}

// ---- notifications out ------------------------------------------------------------------

/// The Python receiver (tests/receiver.py, the official `standardwebhooks` package).
pub(crate) struct Receiver {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    pub(crate) fn start(dir: &tempfile::TempDir, name: &str, fail_first: u32) -> Self {
        Self::spawn(dir, name, fail_first, 0)
    }

    fn start_on(dir: &tempfile::TempDir, name: &str, port: u16) -> Self {
        Self::spawn(dir, name, 0, port)
    }

    fn spawn(dir: &tempfile::TempDir, name: &str, fail_first: u32, port: u16) -> Self {
        let secret = write_secret(dir, &format!("{name}-secret"), APP_SECRET);
        let out = dir.path().join(format!("{name}.jsonl"));
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/receiver.py"))
            .arg(&secret)
            .arg(&out)
            .arg(fail_first.to_string())
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (.ci/run installs the standardwebhooks package)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the receiver prints its port (is the standardwebhooks package installed?): {line:?}"));
        Self { child, port, out }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub(crate) fn seen(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One endpoint at `url` for every notification type.
pub(crate) fn endpoint_toml_all(dir: &tempfile::TempDir, url: &str) -> String {
    let secret = write_secret(dir, "app-secret", APP_SECRET);
    format!(
        "[notify]\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\ntimeout = \"2s\"\n\
         [[notify.endpoints]]\nurl = {url:?}\nsecret_file = {:?}\n",
        secret.display().to_string()
    )
}

fn endpoint_toml(dir: &tempfile::TempDir, url: &str, notify: &str) -> String {
    let secret = write_secret(dir, "app-secret", APP_SECRET);
    format!(
        "[notify]\nbackoff_initial = \"50ms\"\nbackoff_max = \"200ms\"\ntimeout = \"2s\"\n{notify}\n\
         [[notify.endpoints]]\nurl = {url:?}\nsecret_file = {:?}\nevents = [\"connection.health_changed\"]\n",
        secret.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_three_times_gets_the_notification_on_the_fourth_try_verified_with_one_webhook_id()
 {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let receiver = Receiver::start(dir, "app", 3);
    let (user, conn) = healthy_user(sim, "u-out", "c-out");
    let toml = events_toml(dir, "", &endpoint_toml(dir, &receiver.url(), ""));
    let app = t.app_with(&toml).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.invalidate_connection("c-out").unwrap();
    until("the notification to be delivered", || async {
        receiver.seen().iter().any(|s| s["status"] == 204)
    })
    .await;
    let seen = receiver.seen();
    assert!(
        seen.iter().all(|s| s["verified"] == true),
        "every delivery verifies: {seen:?}"
    );
    let tries: Vec<_> = seen
        .iter()
        .filter(|s| s["body"]["type"] == "connection.health_changed")
        .collect();
    assert_eq!(tries.len(), 4, "three 500s, then delivered: {seen:?}");
    let ids: std::collections::BTreeSet<_> =
        tries.iter().map(|s| s["webhook_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "one webhook-id across retries");
    let data = &tries[3]["body"]["data"];
    assert_eq!(data["user_id"], "u-out");
    assert_eq!(data["connection_id"], "c-out");
    assert_eq!(data["institution_id"], "AU00000");
    assert_eq!(data["from"], "healthy");
    assert_eq!(data["to"], "action-required");
    assert_eq!(data["user_action"], "reenter-credentials");
    assert!(
        tries[3]["body"]["timestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(
        health_of(&store, &conn).await.unwrap().0,
        Some(Health::ActionRequired)
    );
    // The deliverer records the answer just after the receiver sent it.
    until("the delivery to be recorded", || async {
        let list = store.list_deliveries(false, 10).await.unwrap();
        list.first().is_some_and(|d| d.state == "succeeded")
    })
    .await;
    let list = store.list_deliveries(false, 10).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].state.as_str(), list[0].attempts, list[0].failures),
        ("succeeded", 4, 3)
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_the_whole_max_age_gets_the_notification_dead_lettered_and_counted() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let (user, _) = healthy_user(sim, "u-dead", "c-dead");
    let toml = events_toml(dir, "", &endpoint_toml(dir, &down, "max_age = \"2s\""));
    let app = t.app_with(&toml).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    let sweeper = app.context().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.invalidate_connection("c-dead").unwrap();
    until("the notification to be dead-lettered", || async {
        store
            .list_deliveries(true, 10)
            .await
            .unwrap()
            .iter()
            .any(|d| d.state == "dead")
    })
    .await;
    let dead = store.list_deliveries(true, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].attempts >= 2, "retried before giving up: {dead:?}");
    assert_eq!(dead[0].attempts, dead[0].failures);
    // /metrics as the daemon renders it.
    let settings = t.settings_with(&toml);
    let refresher = t.refresher(&sweeper, &settings).await;
    let text = metrics_text(&sweeper, &refresher).await;
    let sample = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(
        sample("basiq_health_notify_deliveries{endpoint=\"default\",state=\"dead_lettered\"}"),
        1.0
    );
    assert_eq!(
        sample("basiq_health_notify_failed_attempts{endpoint=\"default\"}"),
        dead[0].failures as f64
    );
    // The family is there (the receiver's counters live in the daemon, not in this render).
    assert_eq!(
        sample("basiq_health_webhooks_received_total{outcome=\"stored\"}"),
        0.0
    );
    assert_eq!(
        sample(
            "basiq_health_events_stored{event_type=\"connection.invalidated\",source=\"webhook\",processed=\"true\"}"
        ),
        1.0
    );
    // `notify retry` queues it again.
    assert_eq!(
        store
            .retry_delivery(&dead[0].webhook_id, StdDuration::from_secs(60), Utc::now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.list_deliveries(false, 10).await.unwrap()[0].state,
        "pending"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_the_commit_and_the_delivery_delivers_after_the_restart_with_one_webhook_id()
 {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let db = t.db();
    let (user, conn) = healthy_user(sim, "u-k2", "c-k2");
    swept_and_closed(&t, &user).await;
    // The app's receiver is not up yet: the first daemon cannot deliver.
    let app_port = free_port();
    let port = free_port();
    let notify = endpoint_toml(dir, &format!("http://127.0.0.1:{app_port}/hook"), "")
        .replace("backoff_initial = \"50ms\"", "backoff_initial = \"5s\"")
        .replace("backoff_max = \"200ms\"", "backoff_max = \"5s\"");
    let config = process_config(sim, dir, port, &notify);
    let mut child = daemon_process(sim, &db, &config);
    let url = format!("http://127.0.0.1:{port}/v1/basiq/webhook");
    listening(&url).await;
    sim.sim.set_webhook_target(&url, BASIQ_SECRET);
    sim.sim.invalidate_connection("c-k2").unwrap();
    let store = Store::open(&db).await.unwrap();
    until("the health change to be committed", || async {
        health_of(&store, &conn).await.unwrap().0 == Some(Health::ActionRequired)
    })
    .await;
    kill9(&mut child);
    let pending = store.list_deliveries(false, 10).await.unwrap();
    let webhook_id = match pending.first() {
        Some(d) => {
            assert_eq!(d.state, "pending");
            d.webhook_id.clone()
        }
        // Killed before the deliverer made the delivery: the outbox row is there.
        None => sqlx::query_scalar::<_, String>(
            "SELECT webhook_id FROM outbox WHERE event_type = 'connection.health_changed'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap(),
    };
    // Now the app is up, on the port the endpoint names.
    let receiver = Receiver::start_on(dir, "late", app_port);
    let mut child = daemon_process(sim, &db, &config);
    until(
        "the notification to be delivered after the restart",
        || async { receiver.seen().iter().any(|s| s["status"] == 204) },
    )
    .await;
    let ids: Vec<_> = receiver
        .seen()
        .iter()
        .filter(|s| s["body"]["type"] == "connection.health_changed")
        .map(|s| s["webhook_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        vec![webhook_id],
        "exactly one delivery, with the stored webhook-id"
    );
    kill9(&mut child);
}

// ---- what the notifications say -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_told_as_two_notices_and_no_notice_asks_a_user_to_act_during_or_after_it() {
    let t = TestApp::builder().quick().spawn().await;
    let sim = t.sim();
    let dir = t.dir();
    let (user, conn) = healthy_user(sim, "u-out1", "c-out1");
    // An endpoint is configured (no deliverer runs here): notifications are kept.
    let toml = format!(
        "[sweep]\nperiod = \"24h\"\nconnectors_ttl = \"0s\"\n{}",
        endpoint_toml(dir, "http://127.0.0.1:9/hook", "")
    );
    let sweeper = t.sweeper_with(&toml).await;
    sweeper
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    sim.sim
        .set_connector_status("AU00000", "open-banking", "major-outage");
    sim.sim.invalidate_connection("c-out1").unwrap();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(
        health_of(sweeper.store(), &conn).await.unwrap().0,
        Some(Health::InstitutionOutage)
    );
    sim.sim
        .set_connector_status("AU00000", "open-banking", "operational");
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    // Invalid since a read during the outage: the outage may be why. Re-checked, not asked
    // (a connection Basiq will not refresh becomes the user's 6 hours after the end).
    assert_eq!(
        health_of(sweeper.store(), &conn).await,
        Some((
            Some(Health::Pending),
            Some("recheck-after-outage".to_owned())
        ))
    );
    // The simulator starts with another bank in outage: only AU00000's notices here.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, payload FROM outbox WHERE payload LIKE '%AU00000%' ORDER BY id",
    )
    .fetch_all(sweeper.store().pool())
    .await
    .unwrap();
    let types: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "institution.outage_started",
            "connection.health_changed",
            "institution.outage_ended",
        ],
        "{rows:?}"
    );
    let payloads: Vec<serde_json::Value> = rows
        .iter()
        .map(|(_, p)| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(payloads[0]["data"]["source"], "connectors");
    assert_eq!(payloads[0]["data"]["affected_connections"], 1);
    assert_eq!(payloads[1]["data"]["to"], "institution-outage");
    assert_eq!(
        payloads[1]["data"]["user_action"], "none",
        "no action during the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_asking_a_user_to_act_is_not_sent_once_an_outage_explains_the_failure() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    // The first attempt fails: by the retry, the outage is known.
    let receiver = Receiver::start(dir, "sup", 1);
    let (user, conn) = healthy_user(sim, "u-sup", "c-sup");
    let notify = endpoint_toml(dir, &receiver.url(), "")
        .replace("backoff_initial = \"50ms\"", "backoff_initial = \"2s\"")
        .replace("backoff_max = \"200ms\"", "backoff_max = \"2s\"");
    let toml = events_toml(dir, "", &notify).replace(
        "[sweep]\nperiod = \"24h\"",
        "[sweep]\nperiod = \"24h\"\nconnectors_ttl = \"0s\"",
    );
    let app = t.app_with(&toml).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    let sweeper = app.context().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.invalidate_connection("c-sup").unwrap();
    until("the first attempt to fail", || async {
        receiver.seen().iter().any(|s| s["status"] == 500)
    })
    .await;
    // The bank turns out to be down: the next sweep says so.
    sim.sim
        .set_connector_status("AU00000", "open-banking", "major-outage");
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        health_of(&store, &conn).await.unwrap().0,
        Some(Health::InstitutionOutage)
    );
    until("the outage's notice to be delivered", || async {
        receiver
            .seen()
            .iter()
            .any(|s| s["status"] == 204 && s["body"]["data"]["to"] == "institution-outage")
    })
    .await;
    let delivered: Vec<_> = receiver
        .seen()
        .into_iter()
        .filter(|s| s["status"] == 204)
        .collect();
    assert!(
        delivered
            .iter()
            .all(|s| s["body"]["data"]["user_action"] == "none"),
        "nobody is asked to act: {delivered:?}"
    );
    let states: Vec<String> = store
        .list_deliveries(false, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.state)
        .collect();
    assert!(states.contains(&"superseded".to_owned()), "{states:?}");
    daemon.stop().await;
}

// ---- the commands ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_no_notification_is_kept() {
    let t = TestApp::builder()
        .quick()
        .extra("[sweep]\nperiod = \"24h\"")
        .spawn()
        .await;
    let sim = t.sim();
    let (user, conn) = healthy_user(sim, "u-none", "c-none");
    let sweeper = t.context().await;
    t.register(std::slice::from_ref(&user)).await;
    let cancel = CancellationToken::new();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    sim.sim.invalidate_connection("c-none").unwrap();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(
        health_of(sweeper.store(), &conn).await.unwrap().0,
        Some(Health::ActionRequired)
    );
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(sweeper.store().pool())
        .await
        .unwrap();
    assert_eq!(kept, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_polls_events_every_interval_when_webhooks_are_off() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let (user, conn) = healthy_user(sim, "u-tick", "c-tick");
    // The interval is at least a minute: a driven clock passes it.
    let clock = basiq_health::clock::Clock::manual(Utc::now());
    let settings =
        t.settings_with("[sweep]\nperiod = \"24h\"\n[webhooks]\npoll_interval = \"1m\"\n");
    let app = App::build_with_clock(
        settings,
        secrecy::SecretString::from(sim.sim.api_key()),
        clock.clone(),
    )
    .await
    .unwrap();
    assert!(app.webhook_addr().is_none(), "no receiver");
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    assert_eq!(requests(sim, Route::Events), 0, "a start asks nothing");
    sim.sim.invalidate_connection("c-tick").unwrap();
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    assert_eq!(requests(sim, Route::Events), 0, "not before the interval");
    clock.advance(StdDuration::from_secs(60));
    until("the polled event to be done", || async {
        health_of(&store, &conn).await.unwrap().0 == Some(Health::ActionRequired)
    })
    .await;
    assert_eq!(requests(sim, Route::Events), 1);
    clock.advance(StdDuration::from_secs(60));
    until("another poll", || async {
        requests(sim, Route::Events) >= 2
    })
    .await;
    let events = store.recent_events(10).await.unwrap();
    assert_eq!(events.len(), 1, "polled twice, stored once");
    assert_eq!(events[0].source, "poll");
    assert_eq!(events[0].outcome.as_deref(), Some("swept"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_poll_and_list_and_notify_list_and_retry_work_from_the_command_line() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let db = t.db();
    let (user, conn) = healthy_user(sim, "u-cli", "c-cli");
    swept_and_closed(&t, &user).await;
    sim.sim.invalidate_connection("c-cli").unwrap();
    let config = t.path("bh.toml");
    let app_secret = write_secret(dir, "app-secret", APP_SECRET);
    std::fs::write(
        &config,
        format!(
            "[basiq]\nbase_url = {:?}\n[database]\npath = {:?}\n[api]\nlisten = \"\"\n\
             [[notify.endpoints]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret_file = {:?}\n",
            sim.base_url(),
            db.display().to_string(),
            app_secret.display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = crate::cli::bin()
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["events", "poll"]);
    assert_eq!(code, 0, "{stderr}");
    let polled: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        polled,
        serde_json::json!({"listed": 1, "stored": 1, "skipped": 0, "processed": 1})
    );
    let (code, stdout, _) = run(&["events", "poll"]);
    assert_eq!(code, 0);
    let again: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(again["stored"], 0, "known already");
    let (code, stdout, _) = run(&["events", "list"]);
    assert_eq!(code, 0);
    let listed: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["event_type"], "connection.invalidated");
    assert_eq!(listed[0]["source"], "poll");
    assert_eq!(listed[0]["outcome"], "swept");
    {
        let store = Store::open(&db).await.unwrap();
        assert_eq!(
            health_of(&store, &conn).await.unwrap().0,
            Some(Health::ActionRequired)
        );
        // No daemon ran a deliverer: make the endpoint's delivery as it would, so the
        // commands have one to show.
        store
            .enqueue_deliveries(
                "default",
                &["connection.health_changed".into()],
                StdDuration::from_secs(3600),
                Utc::now(),
            )
            .await
            .unwrap();
        store.close().await;
    }
    let (code, stdout, _) = run(&["notify", "list"]);
    assert_eq!(code, 0);
    let deliveries: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(deliveries.len(), 1, "{stdout}");
    assert_eq!(deliveries[0]["state"], "pending");
    assert_eq!(deliveries[0]["event_type"], "connection.health_changed");
    assert_eq!(
        deliveries[0]["endpoint"], "default",
        "a lone endpoint's name"
    );
    let (code, stdout, _) = run(&["notify", "list", "--failed"]);
    assert_eq!((code, stdout.trim()), (0, ""), "nothing failed yet");
    let (code, _, _) = run(&[
        "notify",
        "retry",
        deliveries[0]["webhook_id"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let unknown = "msg_00000000000000000000000000000000";
    let (code, _, stderr) = run(&["notify", "retry", unknown]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(unknown), "{stderr}");
    let (code, _, stderr) = run(&["notify", "retry", "msg_nothing"]);
    assert_eq!(code, 2, "not a webhook id: {stderr}");
}

#[test]
fn webhook_secrets_never_show_in_config_check_and_a_bad_one_is_named_by_its_key() {
    let t = TestApp::offline();
    let dir = t.dir();
    let basiq = write_secret(dir, "basiq", BASIQ_SECRET);
    let app = write_secret(dir, "app", APP_SECRET);
    let config = t.path("bh.toml");
    let text = format!(
        "[webhooks]\nlisten = \"127.0.0.1:8089\"\nsecret_file = {:?}\n\
         [[notify.endpoints]]\nurl = \"https://app.example.com/hook\"\nsecret_file = {:?}\n",
        basiq.display().to_string(),
        app.display().to_string()
    );
    std::fs::write(&config, &text).unwrap();
    let out = crate::cli::bin()
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .env("BASIQ_HEALTH_API_KEY", "c2VjcmV0LWNhbmFyeQ==")
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{all}");
    for secret in [BASIQ_SECRET, APP_SECRET] {
        let key = secret.trim_start_matches("whsec_");
        assert!(!all.contains(key), "a secret is printed: {all}");
    }
    assert!(all.contains("https://app.example.com/hook"), "{all}");
    // A secret that is not whsec_/base64: exit 78 naming the key, not the value.
    std::fs::write(&app, "not a secret at all!\n").unwrap();
    let out = crate::cli::bin()
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .env("BASIQ_HEALTH_API_KEY", "c2VjcmV0LWNhbmFyeQ==")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("notify.endpoints[0].secret_file"), "{err}");
    assert!(!err.contains("not a secret at all"), "{err}");
    // A receiver without a secret is refused.
    std::fs::write(&config, "[webhooks]\nlisten = \"127.0.0.1:8089\"\n").unwrap();
    let out = crate::cli::bin()
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .env("BASIQ_HEALTH_API_KEY", "c2VjcmV0LWNhbmFyeQ==")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("webhooks.listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_s_notifications_reach_an_endpoint_in_order_even_when_the_first_is_retried() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let receiver = Receiver::start(dir, "order", 1);
    let (user, conn) = healthy_user(sim, "u-ord", "c-ord");
    let notify = endpoint_toml(dir, &receiver.url(), "")
        .replace("backoff_initial = \"50ms\"", "backoff_initial = \"1s\"")
        .replace("backoff_max = \"200ms\"", "backoff_max = \"1s\"")
        .replace(
            "events = [\"connection.health_changed\"]",
            "events = [\"connection.health_changed\", \"connection.consent_expiring\"]",
        );
    let app = t.app_with(&events_toml(dir, "", &notify)).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.invalidate_connection("c-ord").unwrap();
    until("the first notice's first attempt to fail", || async {
        receiver.seen().iter().any(|s| s["status"] == 500)
    })
    .await;
    sim.sim.emit_event("consent.warning", "u-ord", None);
    until("the consent warning to be stored", || async {
        store
            .connection(&conn)
            .await
            .unwrap()
            .unwrap()
            .consent_warned_days
            == Some(7)
    })
    .await;
    until("both notices delivered", || async {
        receiver
            .seen()
            .iter()
            .filter(|s| s["status"] == 204)
            .count()
            == 2
    })
    .await;
    let asks: Vec<(String, i64)> = receiver
        .seen()
        .iter()
        .map(|s| {
            (
                s["body"]["data"]["user_action"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                s["status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        asks,
        vec![
            ("reenter-credentials".to_owned(), 500),
            ("reenter-credentials".to_owned(), 204),
            ("reconsent".to_owned(), 204),
        ],
        "the second waited for the first"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_a_notice_asks_a_user_to_act_the_bank_s_status_is_read_again_and_an_outage_stops_it()
{
    let t = TestApp::builder().quick().driven().spawn().await;
    let sim = t.sim();
    let dir = t.dir();
    let receiver = Receiver::start(dir, "confirm", 0);
    let (user, conn) = healthy_user(sim, "u-conf", "c-conf");
    // /connectors is cached for the default 5 minutes.
    let app = t
        .app_with(&events_toml(
            dir,
            "",
            &endpoint_toml(dir, &receiver.url(), ""),
        ))
        .await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    // The bank goes down after the last read of /connectors; then the user's connection
    // is invalidated (the sweep, with the cached statuses, sees the bank up).
    t.clock().advance(StdDuration::from_millis(2500));
    settled(t.clock(), 1).await;
    sim.sim
        .set_connector_status("AU00000", "open-banking", "major-outage");
    let connectors = requests(sim, Route::Connectors);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.invalidate_connection("c-conf").unwrap();
    until("the connection to be in outage", || async {
        health_of(&store, &conn).await.unwrap().0 == Some(Health::InstitutionOutage)
    })
    .await;
    eventually_driving(
        t.clock(),
        StdDuration::from_millis(50),
        "the outage notice to be delivered",
        || async {
            receiver
                .seen()
                .iter()
                .any(|s| s["body"]["data"]["to"] == "institution-outage")
        },
    )
    .await;
    assert!(requests(sim, Route::Connectors) > connectors, "read again");
    let asked: Vec<_> = receiver
        .seen()
        .into_iter()
        .filter(|s| {
            s["body"]["data"]["user_action"]
                .as_str()
                .is_some_and(|a| a != "none")
        })
        .collect();
    assert!(
        asked.is_empty(),
        "nobody is asked to act while the bank is down: {asked:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_command_signs_and_sends_its_events_to_a_webhook_url() {
    let t = TestApp::offline();
    let dir = t.dir();
    let receiver = Receiver::start(dir, "simcmd", 0);
    let secret = write_secret(dir, "sim-secret", APP_SECRET);
    let sim = crate::cli::spawn_simulator(&[
        "--users",
        "0",
        "--webhook-url",
        &receiver.url(),
        "--webhook-secret-file",
        secret.to_str().unwrap(),
    ]);
    let emitted: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/_sim/events", sim.base_url))
        .json(&serde_json::json!({"type": "user.created", "user_id": "u-cmd"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    until("the webhook to arrive", || async {
        !receiver.seen().is_empty()
    })
    .await;
    let seen = receiver.seen();
    assert_eq!(seen[0]["verified"], true, "{seen:?}");
    assert_eq!(seen[0]["body"]["eventTypeId"], "user.created");
    assert_eq!(seen[0]["body"]["eventId"], emitted["id"]);
    assert!(
        seen[0]["body"]["links"]["eventEntity"]
            .as_str()
            .unwrap()
            .ends_with("/users/u-cmd")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_with_hostile_ids_or_no_json_is_stored_and_reaches_nothing_at_basiq() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let app = t.app_with(&events_toml(dir, "", "")).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    let daemon = Daemon::start(app);
    let url = format!("http://{addr}/v1/basiq/webhook");
    let signer = standardwebhooks::Webhook::new(BASIQ_SECRET).unwrap();
    let http = reqwest::Client::new();
    let bodies = [
        (
            "msg_hostile",
            serde_json::json!({
                "eventTypeId": "connection.invalidated",
                "eventId": "../../etc/passwd",
                "links": {"eventEntity": "https://au-api.basiq.io/users/..%2F..%2Fetc/connections/x%20y"}
            })
            .to_string(),
        ),
        ("msg_notjson", "<html>not json</html>".to_owned()),
    ];
    for (id, body) in &bodies {
        let ts = Utc::now().timestamp();
        let answer = http
            .post(&url)
            .header("webhook-id", *id)
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                signer.sign(id, ts, body.as_bytes()).unwrap(),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200, "signed: stored");
    }
    until("both to be processed", || async {
        let e = store.recent_events(10).await.unwrap();
        e.len() == 2 && e.iter().all(|e| e.processed_at.is_some())
    })
    .await;
    let outcomes: std::collections::BTreeMap<String, Option<String>> = store
        .recent_events(10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.delivery_id, e.outcome))
        .collect();
    assert_eq!(outcomes["msg_hostile"].as_deref(), Some("no-user"));
    assert_eq!(outcomes["msg_notjson"].as_deref(), Some("unreadable"));
    let counters = sim.sim.counters();
    assert_eq!(
        counters.requests.get(&Route::Events),
        None,
        "no look-up with a bad id"
    );
    assert_eq!(counters.requests.get(&Route::Connections), None);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_nearing_its_end_is_told_once_per_threshold() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let (user, conn) = healthy_user(sim, "u-exp", "c-exp");
    let mut c = sim.sim.scripted("u-exp").remove(0);
    c.expiry = Some(Utc::now() + Duration::days(20));
    sim.sim.add_connection("u-exp", c.clone());
    let toml = format!(
        "[sweep]\nperiod = \"24h\"\n{}",
        endpoint_toml(dir, "http://127.0.0.1:9/hook", "")
    );
    let sweeper = t.sweeper_with(&toml).await;
    sweeper
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let notices = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT payload FROM outbox WHERE event_type = 'connection.consent_expiring' ORDER BY id",
        )
        .fetch_all(sweeper.store().pool())
        .await
        .unwrap()
        .into_iter()
        .map(|p| serde_json::from_str::<serde_json::Value>(&p).unwrap())
        .collect::<Vec<_>>()
    };
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    let told = notices().await;
    assert_eq!(told.len(), 1, "the 30-day threshold, once: {told:?}");
    assert_eq!(told[0]["data"]["days"], 30);
    assert_eq!(told[0]["data"]["connection_id"], conn.as_str());
    assert_eq!(told[0]["data"]["user_action"], "reconsent");
    // Six days left: the 7-day threshold, once.
    c.expiry = Some(Utc::now() + Duration::days(6));
    sim.sim.add_connection("u-exp", c);
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    let told = notices().await;
    assert_eq!(told.len(), 2, "{told:?}");
    assert_eq!(told[1]["data"]["days"], 7);
}

#[test]
fn the_secrets_can_come_from_systemd_credentials() {
    let t = TestApp::offline();
    let creds = t.path("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(
        creds.join("basiq-webhook-secret"),
        format!("{BASIQ_SECRET}\n"),
    )
    .unwrap();
    std::fs::write(creds.join("notify-secret"), format!("{APP_SECRET}\n")).unwrap();
    let config = t.path("bh.toml");
    std::fs::write(
        &config,
        "[webhooks]\nlisten = \"127.0.0.1:8089\"\n\
         [[notify.endpoints]]\nurl = \"https://app.example.com/hook\"\nsecret_credential = \"notify-secret\"\n",
    )
    .unwrap();
    let check = |creds: Option<&std::path::Path>| {
        let mut cmd = crate::cli::bin();
        cmd.arg("--config")
            .arg(&config)
            .args(["config", "check"])
            .env("BASIQ_HEALTH_API_KEY", "c2VjcmV0LWNhbmFyeQ==");
        if let Some(c) = creds {
            cmd.env("CREDENTIALS_DIRECTORY", c);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(Some(&creds));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("notify-secret"),
        "the file it came from is shown: {text}"
    );
    assert!(
        !text.contains(BASIQ_SECRET.trim_start_matches("whsec_")),
        "{text}"
    );
    assert!(
        !text.contains(APP_SECRET.trim_start_matches("whsec_")),
        "{text}"
    );
    let (code, text) = check(None);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("webhooks.listen") || text.contains("secret_credential"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_events_about_one_user_cost_one_sweep_and_a_failing_one_waits_before_its_retry() {
    let t = TestApp::builder()
        .quick()
        .extra("[sweep]\nperiod = \"24h\"")
        .spawn()
        .await;
    let sim = t.sim();
    let (user, _) = healthy_user(sim, "u-many", "c-many1");
    let (other, _) = healthy_user(sim, "u-fail", "c-fail1");
    let sweeper = t.context().await;
    t.register(&[user.clone(), other.clone()]).await;
    let cancel = CancellationToken::new();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone(), other.clone()]),
            &cancel,
        )
        .await
        .unwrap();
    for c in ["c-many2", "c-many3", "c-many4"] {
        sim.sim.emit_event("connection.created", "u-many", Some(c));
    }
    sim.sim
        .emit_event("connection.invalidated", "u-fail", Some("c-fail1"));
    let polled =
        basiq_health::events::poll::poll_once(sweeper.client(), sweeper.store(), Utc::now())
            .await
            .unwrap();
    assert_eq!(polled.stored, 4);
    // Basiq fails every request about the second user for now.
    sim.sim.inject_user_fault(
        "u-fail",
        basiq_sim::Fault::Status {
            status: 503,
            retry_after: None,
        },
        100,
    );
    let processor = basiq_health::work::event::Processor {
        context: sweeper.clone(),
        register_new_users: false,
        wake: Default::default(),
    };
    let (lists, jobs) = (
        requests(sim, Route::Connections),
        requests(sim, Route::Jobs),
    );
    assert_eq!(processor.process_pending(&cancel).await.unwrap(), 3);
    let outcomes: Vec<(String, Option<String>)> = sweeper
        .store()
        .recent_events(10)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|e| (e.user_id.unwrap_or_default(), e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("u-many".to_owned(), Some("swept".to_owned())),
            ("u-many".to_owned(), Some("swept-already".to_owned())),
            ("u-many".to_owned(), Some("swept-already".to_owned())),
            ("u-fail".to_owned(), None),
        ]
    );
    assert_eq!(
        requests(sim, Route::Jobs) - jobs,
        1,
        "one sweep for the three events"
    );
    // The failing one is not tried again at once.
    let asked = requests(sim, Route::Connections);
    assert!(asked > lists);
    assert_eq!(processor.process_pending(&cancel).await.unwrap(), 0);
    assert_eq!(
        requests(sim, Route::Connections),
        asked,
        "waits for its retry time"
    );
    let waiting: (i64, Option<i64>) =
        sqlx::query_as("SELECT attempts, next_attempt_at FROM inbox WHERE processed_at IS NULL")
            .fetch_one(sweeper.store().pool())
            .await
            .unwrap();
    assert_eq!(waiting.0, 1);
    assert!(waiting.1.unwrap() > Utc::now().timestamp(), "{waiting:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_arriving_on_a_full_disk_is_answered_503_and_its_retry_is_stored_once_space_returns()
 {
    let t = TestApp::quick().await;
    let dir = t.dir();
    let data = t.path("data");
    std::fs::create_dir(&data).unwrap();
    let _mount = crate::disk::Tmpfs::mount(&data, "16m");
    let secret = write_secret(dir, "basiq-webhook-secret", BASIQ_SECRET);
    let toml = format!(
        "[webhooks]\nlisten = \"127.0.0.1:0\"\nsecret_file = {:?}\npoll_interval = \"0s\"\n",
        secret.display().to_string()
    );
    let settings = t.settings_at(&data.join("bh.db"), &toml);
    let app = t.app_from(settings).await;
    let url = format!("http://{}/v1/basiq/webhook", app.webhook_addr().unwrap());
    let store = app.context().store().clone();
    let daemon = Daemon::start(app);
    let signer = standardwebhooks::Webhook::new(BASIQ_SECRET).unwrap();
    let http = reqwest::Client::new();
    let post = |id: String| {
        let http = http.clone();
        let url = url.clone();
        let body = serde_json::json!({"eventTypeId": "transactions.updated", "eventId": format!("e{}", id.trim_start_matches("msg_")), "links": {"eventEntity": "https://x/users/u-disk"}}).to_string();
        let ts = Utc::now().timestamp();
        let signature = signer.sign(&id, ts, body.as_bytes()).unwrap();
        async move {
            http.post(&url)
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("msg_before".into()).await, 200);
    crate::disk::fill(&data.join("filler"));
    // Deliveries until one cannot be stored (the WAL may hold a few).
    let mut refused = None;
    for n in 0..5000 {
        let id = format!("msg_full{n}");
        match post(id.clone()).await {
            200 => continue,
            503 => {
                refused = Some(id);
                break;
            }
            other => panic!("answered {other}"),
        }
    }
    let refused = refused.expect("a delivery is refused 503 once the disk is full");
    std::fs::remove_file(data.join("filler")).unwrap();
    // Basiq's retry of the refused delivery: stored now.
    assert_eq!(post(refused.clone()).await, 200);
    until("the retried delivery to be processed", || async {
        store
            .recent_events(10_000)
            .await
            .unwrap()
            .iter()
            .any(|e| e.delivery_id == refused && e.processed_at.is_some())
    })
    .await;
    let events = store.recent_events(10_000).await.unwrap();
    assert!(
        events.iter().any(|e| e.delivery_id == "msg_before"),
        "nothing stored was lost"
    );
    assert_eq!(
        events.iter().filter(|e| e.delivery_id == refused).count(),
        1
    );
    assert!(store.integrity_ok().await.unwrap());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_that_holds_during_an_outage_waits_for_its_end_and_arrives_after_the_end_is_told() {
    let t = TestApp::builder().quick().driven().spawn().await;
    let sim = t.sim();
    let dir = t.dir();
    let receiver = Receiver::start(dir, "hold", 0);
    let (user, conn) = healthy_user(sim, "u-hold", "c-hold");
    // The consent ended yesterday: the user must re-consent whatever the bank's state...
    let mut c = sim.sim.scripted("u-hold").remove(0);
    c.expiry = Some(Utc::now() - Duration::days(1));
    sim.sim.add_connection("u-hold", c);
    // ... but the bank is down, so renewing it now would fail.
    sim.sim
        .set_connector_status("AU00000", "open-banking", "major-outage");
    let notify = endpoint_toml(dir, &receiver.url(), "").replace(
        "events = [\"connection.health_changed\"]",
        "events = [\"connection.health_changed\", \"institution.outage_started\", \"institution.outage_ended\"]",
    );
    let toml = events_toml(dir, "", &notify).replace(
        "[sweep]\nperiod = \"24h\"",
        "[sweep]\nperiod = \"24h\"\nconnectors_ttl = \"0s\"",
    );
    let app = t.app_with(&toml).await;
    let store = app.context().store().clone();
    let sweeper = app.context().clone();
    first_sweep(&app, &user).await;
    assert_eq!(
        health_of(&store, &conn).await.unwrap(),
        (Some(Health::ActionRequired), Some("consent-expired".into()))
    );
    let daemon = Daemon::start(app);
    until("the outage's start to be told", || async {
        receiver.seen().iter().any(|s| {
            s["body"]["type"] == "institution.outage_started"
                && s["body"]["data"]["institution_id"] == "AU00000"
        })
    })
    .await;
    // A second and a half of the deliverer's rounds (it naps 250 ms when idle), each one
    // run to its end.
    for _ in 0..6 {
        t.clock().advance(StdDuration::from_millis(250));
        settled(t.clock(), 1).await;
    }
    let asks = |seen: &[serde_json::Value]| {
        seen.iter()
            .position(|s| s["body"]["data"]["user_action"] == "reconsent")
    };
    assert_eq!(asks(&receiver.seen()), None, "held while the bank is down");
    sim.sim
        .set_connector_status("AU00000", "open-banking", "operational");
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    eventually_driving(
        t.clock(),
        StdDuration::from_millis(50),
        "the ask to arrive",
        || async { asks(&receiver.seen()).is_some() },
    )
    .await;
    let seen = receiver.seen();
    let ended = seen
        .iter()
        .position(|s| {
            s["body"]["type"] == "institution.outage_ended"
                && s["body"]["data"]["institution_id"] == "AU00000"
        })
        .expect("the end is told");
    assert!(ended < asks(&seen).unwrap(), "the end first: {seen:?}");
    daemon.stop().await;
}

// ---- the edges of events in -----------------------------------------------------------------

/// Issue 21, item 10: a body that is not UTF-8, even signed with the right secret, is
/// answered 400 saying so (not 401 "the signature does not match"), counted as unreadable,
/// and stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_that_is_not_utf8_is_answered_400_as_unreadable_and_stored_nowhere() {
    use base64::Engine as _;
    let t = TestApp::quick().await;
    let dir = t.dir();
    let app = t.app_with(&events_toml(dir, "", "")).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    let daemon = Daemon::start(app);
    let body: &[u8] = b"{\"eventTypeId\": \"connection.invalidated\", \"x\": \"\xff\xfe\"}";
    let ts = Utc::now().timestamp();
    let key = base64::engine::general_purpose::STANDARD
        .decode(BASIQ_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut signed = format!("msg_notutf8.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let signature =
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256::HMAC::mac(&signed, &key));
    let answer = reqwest::Client::new()
        .post(format!("http://{addr}/v1/basiq/webhook"))
        .header("webhook-id", "msg_notutf8")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", format!("v1,{signature}"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let text = answer.text().await.unwrap();
    assert!(text.contains("not UTF-8"), "{text}");
    assert!(store.recent_events(10).await.unwrap().is_empty());
    daemon.stop().await;
}

/// Issue 21, item 11: an event Basiq no longer knows (`GET /events/{id}` answers its own
/// 404 `resource-not-found`) is done with at once, not retried 8 times over 42 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_basiq_no_longer_knows_is_not_retried() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let app = t.app_with(&events_toml(dir, "", "")).await;
    let store = app.context().store().clone();
    let event_id = "0f".repeat(32);
    let stored = store
        .insert_event(
            &basiq_health::store::events::NewEvent {
                delivery_id: "msg_gone",
                event_id: Some(&event_id),
                event_type: Some("connection.invalidated"),
                source: "webhook",
                user_id: None,
                entity_link: None,
                body: "{}",
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert!(stored);
    let processor = basiq_health::work::event::Processor {
        context: app.context().clone(),
        register_new_users: false,
        wake: Default::default(),
    };
    processor
        .process_pending(&CancellationToken::new())
        .await
        .unwrap();
    let events = store.recent_events(10).await.unwrap();
    assert_eq!(events[0].outcome.as_deref(), Some("event-not-found"));
    assert!(
        events[0].processed_at.is_some(),
        "done with, not waiting for a retry"
    );
    assert_eq!(requests(sim, Route::Events), 1, "one look-up");
    // A gateway's 404 (not Basiq's envelope) is retried like a 5xx: it says nothing of the
    // event.
    sim.sim.inject_fault(
        Route::Events,
        basiq_sim::Fault::GatewayPage { status: 404 },
        10,
    );
    let stored = store
        .insert_event(
            &basiq_health::store::events::NewEvent {
                delivery_id: "msg_gateway",
                event_id: Some(&"1e".repeat(32)),
                event_type: Some("connection.invalidated"),
                source: "webhook",
                user_id: None,
                entity_link: None,
                body: "{}",
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert!(stored);
    processor
        .process_pending(&CancellationToken::new())
        .await
        .unwrap();
    let retried = store
        .recent_events(10)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.delivery_id == "msg_gateway")
        .unwrap();
    assert_eq!(retried.processed_at, None, "waits for a retry");
}

/// Writes notices to the outbox as a commit would, and wakes the deliverers.
async fn write_outbox(store: &Store, notices: &[basiq_health::plan::notices::Notice]) {
    let mut tx = store.write().await.unwrap();
    basiq_health::store::events::write_notices(&mut tx, notices, Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store.outbox_written().notify_waiters();
}

/// An outage notice about `institution` (its own order key: no notice waits for another).
fn outage_notice(institution: &str) -> basiq_health::plan::notices::Notice {
    basiq_health::plan::notices::outage_notice(
        &basiq_health::domain::ConnectorKey::new(
            institution,
            &basiq_health::domain::Method::parse("web"),
        ),
        true,
        basiq_health::plan::OutageSource::Connectors,
        1,
    )
}

/// A partner's endpoint in the test: records the query and `webhook-id` of every POST and
/// its answer, 500 while `failing`, else 204.
struct Hook {
    base: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hook {
    async fn start() -> Self {
        use std::sync::atomic::Ordering;
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>> =
            std::sync::Arc::default();
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kept, fail) = (seen.clone(), failing.clone());
        let hook = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
                    let status = if fail.load(Ordering::SeqCst) {
                        500
                    } else {
                        204
                    };
                    let id = headers["webhook-id"].to_str().unwrap().to_owned();
                    let query = uri.query().unwrap_or_default().to_owned();
                    kept.lock().unwrap().push((query, id, status));
                    async move { axum::http::StatusCode::from_u16(status).unwrap() }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, hook).await });
        Self {
            base,
            seen,
            failing,
        }
    }

    fn seen(&self) -> Vec<(String, String, u16)> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_endpoint_url_takes_over_its_pending_deliveries_and_sends_nothing_twice() {
    use std::sync::atomic::Ordering;
    let t = TestApp::offline();
    let dir = t.dir();
    let hook = Hook::start().await;
    let secret = write_secret(dir, "app-secret", APP_SECRET);
    let db = t.db();
    // Two endpoints, so each has its name; "crm" wants none of these notices.
    let settings = |token: &str| {
        basiq_health::settings::Settings::from_toml(&format!(
            "[database]\npath = {:?}\n[api]\nlisten = \"\"\n[notify]\nbackoff_initial = \"1s\"\n\
             [[notify.endpoints]]\nname = \"app\"\nurl = \"{}?token={token}\"\nsecret_file = {:?}\n\
             [[notify.endpoints]]\nname = \"crm\"\nurl = \"{}?token=crm\"\nsecret_file = {:?}\n\
             events = [\"connection.consent_expiring\"]\n",
            db.display().to_string(),
            hook.base,
            secret.display().to_string(),
            hook.base,
            secret.display().to_string(),
        ))
        .unwrap()
    };
    let clock = basiq_health::clock::Clock::manual(Utc::now());
    let store = Store::open(&db).await.unwrap();
    let round = |s: basiq_health::settings::Settings| {
        let (store, clock) = (store.clone(), clock.clone());
        async move {
            for endpoint in &s.notify.endpoints {
                basiq_health::work::delivery::deliver_round(
                    &store, &s.notify, None, endpoint, &clock,
                )
                .await
                .unwrap();
            }
        }
    };
    let before = settings("old-secret-1");
    write_outbox(
        &store,
        &(1..=3)
            .map(|i| outage_notice(&format!("AU0000{i}")))
            .collect::<Vec<_>>(),
    )
    .await;
    round(settings("old-secret-1")).await;
    let delivered: Vec<String> = hook.seen().into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(delivered.len(), 3);
    // The endpoint fails for two more, then its URL changes (a rotated token).
    hook.failing.store(true, Ordering::SeqCst);
    write_outbox(
        &store,
        &[outage_notice("AU00004"), outage_notice("AU00005")],
    )
    .await;
    round(before).await;
    hook.failing.store(false, Ordering::SeqCst);
    for _ in 0..6 {
        clock.advance(StdDuration::from_secs(60));
        round(settings("new-secret-2")).await;
    }
    let seen = hook.seen();
    let succeeded: Vec<&(String, String, u16)> = seen.iter().filter(|s| s.2 == 204).collect();
    let ids: std::collections::BTreeSet<&str> = succeeded.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(
        (succeeded.len(), ids.len()),
        (5, 5),
        "each notification delivered once: {seen:?}"
    );
    let after: Vec<&str> = succeeded
        .iter()
        .filter(|s| s.0 == "token=new-secret-2")
        .map(|s| s.1.as_str())
        .collect();
    assert_eq!(
        after.len(),
        2,
        "the pending two go to the new URL: {seen:?}"
    );
    assert!(
        after.iter().all(|id| !delivered.iter().any(|d| d == id)),
        "nothing delivered is sent again: {seen:?}"
    );
    let list = store.list_deliveries(false, 100).await.unwrap();
    assert_eq!(list.len(), 5, "{list:?}");
    assert!(
        list.iter()
            .all(|d| d.endpoint == "app" && d.state == "succeeded"),
        "{list:?}"
    );
}

/// A database as the daemon left it before endpoints had names (migrations 1 to 8), with
/// one pending delivery per `(endpoint key, outbox id)` and a cursor per key.
async fn database_before_names(path: &std::path::Path, rows: &[(&str, i64)]) {
    let pool = crate::helpers::database_migrated_before(path, "0009").await;
    for (key, outbox) in rows {
        sqlx::query(
            "INSERT OR IGNORE INTO outbox (id, webhook_id, event_type, order_key, payload, created_at)
             VALUES (?1, 'msg_' || printf('%032x', ?1), 'institution.outage_started',
                     'institution:AU00000/web', '{}', strftime('%s', 'now'))",
        )
        .bind(outbox)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO deliveries (endpoint, outbox_id, order_key, state, next_at, deadline)
             VALUES (?, ?, 'institution:AU00000/web', 'pending', 0, 9999999999)",
        )
        .bind(key)
        .bind(outbox)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO delivery_cursors (endpoint, last_outbox_id) VALUES (?1, ?2)
             ON CONFLICT (endpoint) DO UPDATE SET last_outbox_id = MAX(last_outbox_id, ?2)",
        )
        .bind(key)
        .bind(outbox)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_keyed_by_url_before_endpoint_names_are_kept_under_the_endpoint_s_name() {
    let t = TestApp::offline();
    let dir = t.dir();
    // One endpoint before: its rows become "default"'s (migration 0009).
    let lone = t.path("lone.db");
    database_before_names(
        &lone,
        &[
            ("http://127.0.0.1:9/hook?token=tok-lone", 1),
            ("http://127.0.0.1:9/hook?token=tok-lone", 2),
        ],
    )
    .await;
    let store = Store::open(&lone).await.unwrap();
    let keys: Vec<String> = store
        .list_deliveries(false, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.endpoint)
        .collect();
    assert_eq!(keys, ["default", "default"]);
    assert_eq!(store.endpoint_keys().await.unwrap(), ["default"]);
    store.close().await;
    // Several before: each configured endpoint whose URL is unchanged takes its rows; one no
    // longer configured keeps its URL, its credentials redacted.
    let several = t.path("several.db");
    database_before_names(
        &several,
        &[
            ("http://127.0.0.1:9/a?token=tok-a", 1),
            ("http://user:[redacted]@127.0.0.1:9/b?token=tok-b", 1),
            ("http://user:[redacted]@127.0.0.1:9/b?token=tok-b", 2),
            ("http://127.0.0.1:9/gone?token=tok-gone", 2),
        ],
    )
    .await;
    let secret = write_secret(dir, "app-secret", APP_SECRET);
    let settings = basiq_health::settings::Settings::from_toml(&format!(
        "[database]\npath = {:?}\n[api]\nlisten = \"\"\n\
         [[notify.endpoints]]\nname = \"app\"\nurl = \"http://127.0.0.1:9/a?token=tok-a\"\nsecret_file = {secret:?}\n\
         [[notify.endpoints]]\nname = \"crm\"\nurl = \"http://user:pw-b@127.0.0.1:9/b?token=tok-b\"\nsecret_file = {secret:?}\n",
        several.display().to_string(),
    ))
    .unwrap();
    let store = basiq_health::app::open_store(&settings, &basiq_health::clock::Clock::system())
        .await
        .unwrap();
    let mut keys: Vec<(String, i64)> = store
        .list_deliveries(false, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.endpoint, d.id))
        .collect();
    keys.sort();
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "app",
            "crm",
            "crm",
            "http://127.0.0.1:9/gone?token=[redacted]"
        ]
    );
    assert_eq!(
        store.endpoint_keys().await.unwrap(),
        ["app", "crm", "http://127.0.0.1:9/gone?token=[redacted]"]
    );
    // The deliverer of "crm" finds its pending rows under its name.
    assert_eq!(
        store
            .next_delivery_at("crm")
            .await
            .unwrap()
            .map(|t| t.timestamp()),
        Some(0)
    );
    store.close().await;
}

#[tokio::test]
async fn a_credential_in_an_endpoint_url_shows_in_no_log_metric_command_or_database_byte() {
    const CANARIES: [&str; 3] = ["bh-user-canary", "bh-pass-canary", "bh-token-canary"];
    let (logs, _guard) = capture_logs();
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let db = t.db();
    let url = format!(
        "http://bh-user-canary:bh-pass-canary@127.0.0.1:{}/hook?token=bh-token-canary&v=1",
        free_port()
    );
    let (user, _) = healthy_user(sim, "u-canary", "c-canary");
    let toml = events_toml(dir, "", &endpoint_toml(dir, &url, "max_age = \"2s\""));
    let app = t.app_with(&toml).await;
    let addr = app.webhook_addr().unwrap();
    let store = app.context().store().clone();
    let sweeper = app.context().clone();
    first_sweep(&app, &user).await;
    let daemon = Daemon::start(app);
    sim.sim
        .set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
    sim.sim.invalidate_connection("c-canary").unwrap();
    until("the notification to be dead-lettered", || async {
        let all = store.list_deliveries(false, 10).await.unwrap();
        !all.is_empty() && all.iter().all(|d| d.state == "dead")
    })
    .await;
    let settings = t.settings_at(&db, &toml);
    let refresher = t.refresher(&sweeper, &settings).await;
    let metrics = metrics_text(&sweeper, &refresher).await;
    daemon.stop().await;
    store.close().await;
    // The commands, from the outside.
    let config = t.path("bh.toml");
    std::fs::write(
        &config,
        format!(
            "[basiq]\nbase_url = {:?}\n[database]\npath = {:?}\n[api]\nlisten = \"\"\n{toml}",
            sim.base_url(),
            db.display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = crate::cli::bin()
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let check = run(&["config", "check"]);
    let list = run(&["notify", "list"]);
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let file = t.path(format!("bh.db{suffix}"));
        bytes.extend(std::fs::read(&file).unwrap_or_default());
    }
    let database = String::from_utf8_lossy(&bytes).into_owned();
    let logs = logs.text();
    for (place, text) in [
        ("the logs", &logs),
        ("/metrics", &metrics),
        ("config check", &check),
        ("notify list", &list),
        ("the database", &database),
    ] {
        for canary in CANARIES {
            assert!(!text.contains(canary), "{canary} in {place}");
        }
    }
    // Named where it is shown, its URL redacted.
    assert!(
        logs.contains("\"event\":\"notify_dead_lettered\"")
            && logs.contains("\"endpoint\":\"default\""),
        "the endpoint's lines carry its name"
    );
    assert!(
        metrics.contains(
            "basiq_health_notify_deliveries{endpoint=\"default\",state=\"dead_lettered\"} 1"
        ),
        "{metrics}"
    );
    assert!(list.contains("\"endpoint\":\"default\""), "{list}");
    assert!(
        check.contains("url = \"http://[redacted]@127.0.0.1:")
            && check.contains("/hook?token=[redacted]&v=[redacted]\""),
        "{check}"
    );
}

/// A loopback listener that counts the connections it accepts; each is closed at once
/// (`hold` false: the request gets no answer, the connection is reset) or held open
/// unanswered (`hold` true: the request times out).
fn counting_listener(hold: bool) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if hold {
                held.push(stream);
            }
        }
    });
    (port, accepted)
}

/// The most attempts an endpoint can get within `max_age` when every failed attempt waits
/// at least its backoff (the jitter at its lowest) before the next: the first, then one per
/// wait that fits, with a second to spare (deadlines and due times are whole seconds).
fn attempts_allowed(initial: StdDuration, max_age: StdDuration) -> usize {
    let mut waited = StdDuration::ZERO;
    let mut attempts = 1;
    loop {
        waited += basiq_health::work::delivery::backoff(
            initial,
            StdDuration::from_secs(3600),
            i64::try_from(attempts).unwrap(),
            -1.0,
        );
        if waited > max_age + StdDuration::from_secs(1) {
            return attempts;
        }
        attempts += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_resets_times_out_or_answers_500_gets_no_more_attempts_than_the_backoff_allows()
 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let t = TestApp::offline();
    let dir = t.dir();
    // Refused: a port bound, then closed; counted by the attempts the store records.
    let refused = free_port();
    let (reset, resets) = counting_listener(false);
    let (silent, timeouts) = counting_listener(true);
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let failing = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, hook).await });

    let secret = write_secret(dir, "app-secret", APP_SECRET);
    let mut toml = format!(
        "[database]\npath = {:?}\n[api]\nlisten = \"\"\n\
         [notify]\nbackoff_initial = \"100ms\"\nmax_age = \"2s\"\ntimeout = \"300ms\"\n",
        t.db().display().to_string()
    );
    let endpoints = [
        ("refused", refused),
        ("reset", reset),
        ("timeout", silent),
        ("error", failing),
    ];
    for (name, port) in endpoints {
        toml += &format!(
            "[[notify.endpoints]]\nname = {name:?}\nurl = \"http://127.0.0.1:{port}/hook\"\n\
             secret_file = {:?}\n",
            secret.display().to_string()
        );
    }
    let settings = basiq_health::settings::Settings::from_toml(&toml).unwrap();
    let store = Store::open(&settings.database.path).await.unwrap();
    let cancel = CancellationToken::new();
    let deliverers = tokio::spawn(basiq_health::work::delivery::run(
        store.clone(),
        settings.notify.clone(),
        None,
        basiq_health::clock::Clock::system(),
        cancel.clone(),
    ));
    // Many notifications waiting, as after an outage told to every user.
    let notices: Vec<_> = (0..40)
        .map(|i| outage_notice(&format!("AU{i:05}")))
        .collect();
    write_outbox(&store, &notices).await;
    until("every delivery to be dead-lettered", || async {
        let all = store.list_deliveries(false, 1000).await.unwrap();
        all.len() == 160 && all.iter().all(|d| d.state == "dead")
    })
    .await;
    cancel.cancel();
    deliverers.await.unwrap();
    let allowed = attempts_allowed(settings.notify.backoff_initial, settings.notify.max_age);
    let deliveries = store.list_deliveries(false, 1000).await.unwrap();
    for (name, _) in endpoints {
        let attempts: i64 = deliveries
            .iter()
            .filter(|d| d.endpoint == name)
            .map(|d| d.attempts)
            .sum();
        assert!(
            attempts >= 2 && attempts as usize <= allowed,
            "{name}: {attempts} attempts recorded within max_age, the backoff allows {allowed}"
        );
    }
    for (name, seen) in [
        ("reset", resets.load(Ordering::SeqCst)),
        ("timeout", timeouts.load(Ordering::SeqCst)),
        ("error", answered.load(Ordering::SeqCst)),
    ] {
        assert!(
            seen >= 2 && seen <= allowed,
            "{name}: the receiver saw {seen} attempts, the backoff allows {allowed}"
        );
    }
}

/// Issue 21, item 7, through the daemon binary: a receiver whose port refuses connections,
/// and one that accepts and closes at once, each get no more attempts than the backoff
/// allows within `max_age`, however many notifications wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_gives_a_refusing_or_resetting_receiver_no_more_attempts_than_the_backoff_allows()
 {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let dir = t.dir();
    let db = t.db();
    let users: Vec<_> = (0..8)
        .map(|n| healthy_user(sim, &format!("u-bo{n}"), &format!("c-bo{n}")).0)
        .collect();
    for user in &users {
        swept_and_closed(&t, user).await;
    }
    let refused = free_port();
    let (reset, resets) = counting_listener(false);
    let secret = write_secret(dir, "app-secret", APP_SECRET);
    let mut notify =
        "[notify]\nbackoff_initial = \"100ms\"\nmax_age = \"2s\"\ntimeout = \"300ms\"\n".to_owned();
    for (name, port) in [("refused", refused), ("reset", reset)] {
        notify += &format!(
            "[[notify.endpoints]]\nname = {name:?}\nurl = \"http://127.0.0.1:{port}/hook\"\n\
             secret_file = {:?}\n",
            secret.display().to_string()
        );
    }
    let port = free_port();
    let config = process_config(sim, dir, port, &notify);
    let mut child = daemon_process(sim, &db, &config);
    let url = format!("http://127.0.0.1:{port}/v1/basiq/webhook");
    listening(&url).await;
    sim.sim.set_webhook_target(&url, BASIQ_SECRET);
    for n in 0..8 {
        sim.sim.invalidate_connection(&format!("c-bo{n}")).unwrap();
    }
    let store = Store::open(&db).await.unwrap();
    until("every delivery to be dead-lettered", || async {
        let all = store.list_deliveries(false, 100).await.unwrap();
        all.len() >= 16 && all.iter().all(|d| d.state == "dead")
    })
    .await;
    kill9(&mut child);
    let allowed = attempts_allowed(StdDuration::from_millis(100), StdDuration::from_secs(2));
    let deliveries = store.list_deliveries(false, 100).await.unwrap();
    let refused_attempts: i64 = deliveries
        .iter()
        .filter(|d| d.endpoint == "refused")
        .map(|d| d.attempts)
        .sum();
    assert!(
        refused_attempts >= 1 && refused_attempts as usize <= allowed,
        "refused: {refused_attempts} attempts, the backoff allows {allowed}"
    );
    let seen = resets.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        seen >= 1 && seen <= allowed,
        "reset: the receiver saw {seen} connections, the backoff allows {allowed}"
    );
}
