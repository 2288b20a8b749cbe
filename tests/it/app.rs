//! The test house: one [`TestApp`] owns the temporary directory, the simulator, the settings
//! and the clock (in the spirit of Zero To Production's `spawn_app`), and offers typed helpers
//! for what the tests repeat: the database, a sweeper, a refresher, the daemon, registering
//! and sweeping users, reading a connection's health, the `/metrics` text.
//!
//! Every test's temporary directory comes from here ([`TestApp::offline`] for the tests that
//! only need files), and the library's sweep and refresh types are named here only, so the
//! tests read as arrange-act-assert on the house.

use std::path::{Path, PathBuf};
use std::time::Duration;

use basiq_health::app::App;
use basiq_health::clock::Clock;
use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::classify::Health;
use basiq_health::settings::Settings;
use basiq_health::store::{Store, SweepCounts};
use basiq_sim::{RunningSim, SimConfig};
use secrecy::SecretString;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::helpers::{settings_for, sim_config, start_sim};

/// The context the tests drive (named once, here).
pub use basiq_health::work::Context;
/// The refresher the tests drive (named once, here).
pub type Refresher = basiq_health::work::refresh::Refresher;

/// The one place a test's temporary directory is made.
fn scratch() -> TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// One test's world: a temporary directory, maybe a simulator, the extra settings and a clock.
pub struct TestApp {
    // The simulator stops before the directory goes.
    sim: Option<RunningSim>,
    dir: TempDir,
    extra: String,
    clock: Clock,
    sweeper: tokio::sync::OnceCell<Context>,
}

/// How a [`TestApp`] is made: [`TestApp::builder`].
pub struct Builder {
    sim: Option<SimConfig>,
    extra: String,
    clock: Clock,
}

impl Builder {
    /// The simulator's configuration (default: [`sim_config`], 20 seeded users).
    pub fn sim(mut self, config: SimConfig) -> Self {
        self.sim = Some(config);
        self
    }

    /// This many seeded users.
    pub fn users(mut self, users: usize) -> Self {
        self.sim.get_or_insert_with(sim_config).users = users;
        self
    }

    /// No seeded users and jobs over in a millisecond: a refresh's job ends before the next
    /// look.
    pub fn quick(mut self) -> Self {
        let config = self.sim.get_or_insert_with(sim_config);
        config.users = 0;
        config.step_duration = Duration::from_millis(1);
        self
    }

    /// TOML appended to the settings of [`TestApp::settings`] and [`TestApp::sweeper`].
    pub fn extra(mut self, extra: &str) -> Self {
        self.extra = extra.to_owned();
        self
    }

    /// The clock the sweepers and daemons of the house run on (default: the system's).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// One driven clock, standing at the wall clock's now, for the simulator and for the
    /// sweepers and daemons of the house: it moves only when the test moves it
    /// ([`TestApp::clock`]).
    pub fn driven(mut self) -> Self {
        let (clock, sim_clock) = crate::helpers::driven_clock();
        self.sim.get_or_insert_with(sim_config).clock = sim_clock;
        self.clock = clock;
        self
    }

    /// Starts the simulator on a loopback port.
    pub async fn spawn(self) -> TestApp {
        let sim = start_sim(self.sim.unwrap_or_else(sim_config)).await;
        TestApp::assemble(Some(sim), self.extra, self.clock)
    }
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder {
            sim: None,
            extra: String::new(),
            clock: Clock::system(),
        }
    }

    /// The default house: [`sim_config`]'s simulator, no extra settings, the system clock.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    /// A simulator with no seeded users, for scripted cases.
    pub async fn empty() -> Self {
        Self::builder().users(0).spawn().await
    }

    /// A simulator with no seeded users whose jobs end in a millisecond.
    pub async fn quick() -> Self {
        Self::builder().quick().spawn().await
    }

    /// A house around a simulator already started (one configured or warmed up by the test).
    pub fn on(sim: RunningSim) -> Self {
        Self::assemble(Some(sim), String::new(), Clock::system())
    }

    /// A house with no simulator: a directory for configuration files, secrets, databases.
    pub fn offline() -> Self {
        Self::assemble(None, String::new(), Clock::system())
    }

    fn assemble(sim: Option<RunningSim>, extra: String, clock: Clock) -> Self {
        Self {
            sim,
            dir: scratch(),
            extra,
            clock,
            sweeper: tokio::sync::OnceCell::new(),
        }
    }

    pub fn sim(&self) -> &RunningSim {
        self.sim.as_ref().expect("this house has a simulator")
    }

    /// The temporary directory (gone when the house drops).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// A path in the house's directory.
    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The house's database.
    pub fn db(&self) -> PathBuf {
        self.path("bh.db")
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The simulator's API key, handed over in-process.
    pub fn key(&self) -> SecretString {
        SecretString::from(self.sim().sim.api_key())
    }

    /// The settings of a daemon on the house's database, with the builder's extra TOML.
    pub fn settings(&self) -> Settings {
        self.settings_with(&self.extra)
    }

    /// As [`Self::settings`] with `extra` instead of the builder's.
    pub fn settings_with(&self, extra: &str) -> Settings {
        self.settings_at(&self.db(), extra)
    }

    /// Settings for a database at `db`.
    pub fn settings_at(&self, db: &Path, extra: &str) -> Settings {
        settings_for(self.sim(), db, extra)
    }

    /// The house's sweeper (built once, on the house's database, settings and clock).
    pub async fn context(&self) -> &Context {
        self.sweeper
            .get_or_init(|| async { self.sweeper_from(&self.settings()).await })
            .await
    }

    /// A new sweeper on the house's database with `extra` settings.
    pub async fn sweeper_with(&self, extra: &str) -> Context {
        self.sweeper_from(&self.settings_with(extra)).await
    }

    /// A new sweeper on the database at `db`.
    pub async fn sweeper_at(&self, db: &Path, extra: &str) -> Context {
        self.sweeper_from(&self.settings_at(db, extra)).await
    }

    /// A new sweeper from `settings`, on the house's key and clock.
    pub async fn sweeper_from(&self, settings: &Settings) -> Context {
        basiq_health::app::build_sweeper_with_clock(settings, self.key(), self.clock.clone())
            .await
            .expect("sweeper builds")
    }

    /// A new sweeper from `settings` on `clock`.
    pub async fn sweeper_on(&self, settings: &Settings, clock: Clock) -> Context {
        basiq_health::app::build_sweeper_with_clock(settings, self.key(), clock)
            .await
            .expect("sweeper builds")
    }

    /// A refresher over `sweeper` with the refresh settings of `settings`.
    pub async fn refresher(&self, sweeper: &Context, settings: &Settings) -> Refresher {
        Refresher::new(sweeper.clone(), settings.refresh.clone())
            .await
            .expect("refresher builds")
    }

    /// The daemon, built on the house's database with `extra` settings (not yet running).
    pub async fn app_with(&self, extra: &str) -> App {
        self.app_from(self.settings_with(extra)).await
    }

    /// The daemon built from `settings`, on the house's key and clock.
    pub async fn app_from(&self, settings: Settings) -> App {
        App::build_with_clock(settings, self.key(), self.clock.clone())
            .await
            .expect("the daemon builds")
    }

    /// Every user the simulator holds, as the daemon's ids.
    pub fn users(&self) -> Vec<UserId> {
        crate::helpers::sim_users(self.sim())
    }

    /// The house's store (its sweeper's).
    pub async fn store(&self) -> &Store {
        self.context().await.store()
    }

    /// Registers `users` with the house's sweeper.
    pub async fn register(&self, users: &[UserId]) {
        register(self.context().await, users).await;
    }

    /// One pass of the house's sweeper over `users`.
    pub async fn sweep(&self, users: &[UserId]) -> SweepCounts {
        sweep_users(self.context().await, users).await
    }

    /// Registers `user` with the house's sweeper and sweeps it once.
    pub async fn sweep_now(&self, user: &UserId) -> SweepCounts {
        sweep_now(self.context().await, user).await
    }

    /// A connection's health and reason in the house's store.
    pub async fn health_of(&self, conn: &ConnectionId) -> (Option<Health>, Option<String>) {
        health_of(self.store().await, conn).await
    }

    /// Waits until the house's background reclassification has worked through the queue.
    pub async fn reclassified(&self) {
        reclassified(self.store().await).await;
    }
}

/// Connectors whose reclassification is queued (or under way).
pub async fn queued_reclassifications(store: &Store) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM reclassify_queue")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Waits until the background reclassification has worked through the queue (every batch
/// committed).
pub async fn reclassified(store: &Store) {
    crate::helpers::eventually(
        "the reclassification queue to be worked through",
        Duration::from_secs(60),
        || async { queued_reclassifications(store).await == 0 },
    )
    .await;
}

/// Registers `users` with `sweeper`.
pub async fn register(sweeper: &Context, users: &[UserId]) {
    sweeper.add_users(users).await.expect("users registered");
}

/// One pass over `users`.
pub async fn sweep_users(sweeper: &Context, users: &[UserId]) -> SweepCounts {
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.to_vec()),
            &CancellationToken::new(),
        )
        .await
        .expect("a pass")
}

/// Registers `user` and sweeps it once.
pub async fn sweep_now(sweeper: &Context, user: &UserId) -> SweepCounts {
    register(sweeper, std::slice::from_ref(user)).await;
    sweep_users(sweeper, std::slice::from_ref(user)).await
}

/// A stored connection's health and reason.
pub async fn health_of(store: &Store, conn: &ConnectionId) -> (Option<Health>, Option<String>) {
    let row = store
        .connection(conn)
        .await
        .unwrap()
        .expect("connection stored");
    (row.health, row.reason)
}

/// `/metrics` as the daemon renders it over `sweeper` and `refresher`.
pub async fn metrics_text(sweeper: &Context, refresher: &Refresher) -> String {
    basiq_health::metrics::render(sweeper, refresher, &Default::default())
        .await
        .expect("metrics render")
}
