//! Shared test plumbing: a simulator on port 0, a client for it, captured logs.

use std::io::Write;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basiq_health::basiq::{Client, ClientOptions};
use basiq_health::clock::Clock;
use basiq_health::domain::UserId;
use basiq_health::settings::{LogFormat, LogSettings};
use basiq_sim::{RunningSim, SimConfig, Simulator};
use secrecy::SecretString;

use crate::app::Context;

pub const CANARY_KEY: &str = "Y2FuYXJ5LWtleS1kby1ub3QtbG9nLTdmM2E5";

pub fn sim_config() -> SimConfig {
    SimConfig {
        users: 20,
        seed: 11,
        api_key: CANARY_KEY.into(),
        step_duration: Duration::from_millis(150),
        ..SimConfig::default()
    }
}

pub async fn start_sim(config: SimConfig) -> RunningSim {
    Simulator::new(config)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds a loopback port")
}

pub fn client_options(sim: &RunningSim) -> ClientOptions {
    ClientOptions {
        base_url: sim.base_url().parse().unwrap(),
        api_key: SecretString::from(sim.sim.api_key()),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_requests_per_second: NonZeroU32::new(1000).unwrap(),
        max_attempts: 3,
        retry_base_delay: Duration::from_millis(20),
        max_retry_delay: Duration::from_secs(5),
        refresh_lookups: [Duration::from_millis(300), Duration::from_millis(1500)],
    }
}

pub fn client(sim: &RunningSim) -> Client {
    Client::new(client_options(sim)).unwrap()
}

/// A client on `clock` (token ages and backoffs by its time).
pub fn client_on(sim: &RunningSim, clock: Clock) -> Client {
    Client::with_clock(client_options(sim), clock).unwrap()
}

/// A driven clock standing at the wall clock's now, and the simulator's view of it (for
/// [`SimConfig::clock`]): both read the same time.
pub fn driven_clock() -> (Clock, basiq_sim::SimClock) {
    let clock = Clock::manual(chrono::Utc::now());
    let sim_clock = clock.clone();
    (clock, Arc::new(move || sim_clock.now()))
}

/// Polls `check` every 25 ms until it holds; panics naming `what` once `timeout` has passed.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// As [`eventually`], moving a driven clock on by `step` before each look: for a wait on
/// work the clock paces (a nap, a hold, a backoff).
pub async fn eventually_driving<F, Fut>(clock: &Clock, step: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, Duration::from_secs(20), || {
        clock.advance(step);
        check()
    })
    .await;
}

/// Waits until the tasks sleeping on a driven clock have caught up with it: none is
/// overdue and at least `parked` sleep again (each one woken has done what it woke for).
pub async fn settled(clock: &Clock, parked: usize) {
    eventually(
        "the clock's sleepers to run and sleep again",
        Duration::from_secs(20),
        || async { clock.overdue() == 0 && clock.parked() >= parked },
    )
    .await;
}

/// Everything the subscriber writes, for assertions on log lines.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// Every line, parsed as JSON (a line that is not JSON fails the test).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
            })
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

thread_local! {
    static SINK: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the capture of the current thread, if any. One global subscriber for the whole
/// test binary keeps tracing's global callsite and level caches consistent; scoped
/// subscribers in parallel tests lose events.
#[derive(Clone, Copy)]
struct ThreadSink;

impl Write for ThreadSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        SINK.with(|s| match s.borrow_mut().as_mut() {
            Some(c) => c.write(buf),
            None => Ok(buf.len()),
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThreadSink {
    type Writer = ThreadSink;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        SINK.with(|s| *s.borrow_mut() = None);
    }
}

/// Captures every JSON log line (all levels) emitted on this thread until the guard drops.
/// Use with a current-thread runtime so every task of the test runs on this thread.
pub fn capture_logs() -> (Captured, CaptureGuard) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let settings = LogSettings {
            format: LogFormat::Json,
            level: "trace".into(),
        };
        tracing::subscriber::set_global_default(basiq_health::telemetry::subscriber(
            &settings, ThreadSink,
        ))
        .expect("one global subscriber for the tests");
    });
    let captured = Captured::default();
    SINK.with(|s| *s.borrow_mut() = Some(captured.clone()));
    (captured, CaptureGuard)
}

/// Settings for a daemon pointed at `sim` with its database at `db`; `extra` is appended
/// TOML (sections not already present).
pub fn settings_for(
    sim: &RunningSim,
    db: &std::path::Path,
    extra: &str,
) -> basiq_health::settings::Settings {
    // The CDR Register is the simulator's unless the test sets its own `[cdr]`.
    let cdr = if extra.contains("[cdr]") {
        String::new()
    } else {
        format!(
            "[cdr]\nregister_url = {:?}\nmax_requests_per_second = 1000\n",
            sim.cdr_register_url()
        )
    };
    let toml = format!(
        "[basiq]\nbase_url = {:?}\nmax_requests_per_second = 1000\nretry_base_delay = \"20ms\"\n\
         [database]\npath = {:?}\n[api]\nlisten = \"\"\n{cdr}{extra}",
        sim.base_url(),
        db.display().to_string()
    );
    basiq_health::settings::Settings::from_toml(&toml).expect("test settings are valid")
}

pub async fn sweeper_for(sim: &RunningSim, db: &std::path::Path, extra: &str) -> Context {
    let settings = settings_for(sim, db, extra);
    basiq_health::app::build_sweeper_with_key(&settings, SecretString::from(sim.sim.api_key()))
        .await
        .expect("sweeper builds")
}

/// A simulator with no seeded users, for scripted cases.
pub async fn empty_sim() -> RunningSim {
    let mut config = sim_config();
    config.users = 0;
    start_sim(config).await
}

/// The real daemon path (`App::run_until_stopped`) in a task, stopped on demand.
pub struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    pub fn start(app: basiq_health::app::App) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops it as SIGTERM would, and checks it stopped cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("daemon task")
            .expect("daemon stopped cleanly");
    }
}

/// Every user the simulator holds, as the daemon's ids.
pub fn sim_users(sim: &RunningSim) -> Vec<UserId> {
    sim.sim
        .user_ids()
        .into_iter()
        .map(|id| UserId::parse(id).expect("the simulator's ids are valid"))
        .collect()
}

/// An HTTP client for the local API that sends the app's bearer token on every request.
pub fn api_client(app: &basiq_health::app::App) -> reqwest::Client {
    use secrecy::ExposeSecret;
    let token = app.api_token().expect("the local API is enabled");
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// How many registered users have been swept at least once.
pub async fn swept_count(store: &basiq_health::store::Store) -> usize {
    store
        .list_users()
        .await
        .unwrap()
        .iter()
        .filter(|u| u.last_swept_at.is_some())
        .count()
}

/// A database at `path` made by the migrations numbered below `before` only (e.g. "0012"):
/// the schema an older daemon left, for a migration test to fill and carry over.
pub async fn database_migrated_before(path: &std::path::Path, before: &str) -> sqlx::SqlitePool {
    let old = path.with_extension(format!("migrations-before-{before}"));
    std::fs::create_dir(&old).unwrap();
    let all = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"));
    for entry in std::fs::read_dir(all).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < before {
            std::fs::copy(entry.path(), old.join(&name)).unwrap();
        }
    }
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=rwc", path.display()))
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old)
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}
