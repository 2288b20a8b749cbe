//! The context every unit of work shares: the store, the Basiq client, the one clock, the
//! `/connectors` cache, the handle to the group committer, the reads not committed yet, the
//! background reclassification and the progress the watchdog reads. Cheap to clone. The
//! units of work themselves are the sibling modules: a user's sweep ([`super::sweep`]), a
//! pass ([`super::pass`]), the `/connectors` read ([`super::connectors`]), a
//! reclassification batch ([`super::reclassify`]), a refresh ([`super::refresh`]), an event
//! ([`super::event`]), a delivery round ([`super::delivery`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use super::background::Background;
use super::cache::ConnectorCache;
use super::commit;
use super::reads::FreshReads;
use crate::basiq::{self, Client};
use crate::clock::Clock;
use crate::domain::UserId;
use crate::plan::policy::schedule::AutoRefresh;
use crate::plan::{self, ConnectionRow, ConnectorStatuses, Fetched, PlanSettings, UserPlan};
use crate::store::{self, Store};

/// Why a unit of work failed: Basiq, or the database.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Basiq(#[from] basiq::Error),
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
}

impl SweepError {
    /// Basiq refused the API key: no other user can be swept either.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Basiq(e) if e.is_auth())
    }
}

/// What the sweep needs from the settings.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub period: Duration,
    pub concurrency: usize,
    pub connectors_ttl: Duration,
    pub stale_after: Duration,
    pub login_min_interval: Duration,
    /// How long a user whose sweep failed waits before it is tried again.
    pub retry_after: Duration,
    pub batch_size: u32,
    pub outage_min_users: i64,
    pub outage_window: Duration,
    /// Refreshes the sweep schedules by itself (none when `refresh.mode = "off"`).
    pub auto_refresh: Option<AutoRefresh>,
}

/// What the sweep reports about itself: for the watchdog, `/metrics` and the status line.
pub struct Progress {
    /// A pass is running.
    pub in_pass: std::sync::atomic::AtomicBool,
    /// Unix seconds (the sweeper's clock) of the last progress: a user's sweep finished
    /// (swept, gone, or a failure handled), a refresh attempt decided, a batch
    /// reclassified, a pass begun or ended.
    pub last_progress: std::sync::atomic::AtomicI64,
    pub users_swept: prometheus_client::metrics::counter::Counter,
    pub users_failed: prometheus_client::metrics::counter::Counter,
    pub users_gone: prometheus_client::metrics::counter::Counter,
    pub passes: prometheus_client::metrics::counter::Counter,
    pub pass_duration: prometheus_client::metrics::histogram::Histogram,
}

impl Progress {
    /// Progress as of `now` (the sweeper's start).
    fn new(now: DateTime<Utc>) -> Self {
        Self {
            in_pass: Default::default(),
            last_progress: std::sync::atomic::AtomicI64::new(now.timestamp()),
            users_swept: Default::default(),
            users_failed: Default::default(),
            users_gone: Default::default(),
            passes: Default::default(),
            pass_duration: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 16),
            ),
        }
    }

    /// Something finished at `now`: the daemon is working, however long its pass.
    pub fn touch(&self, now: DateTime<Utc>) {
        self.last_progress
            .store(now.timestamp(), std::sync::atomic::Ordering::Relaxed);
    }
}

struct Inner {
    store: Store,
    client: Client,
    /// Where every `now` of the work, the connector cache and the group commit comes from.
    clock: Clock,
    options: SweepOptions,
    seed: u64,
    connectors: Mutex<ConnectorCache>,
    progress: Progress,
    /// `sweep.concurrency` permits to fetch a user's two lists.
    fetching: tokio::sync::Semaphore,
    /// To the group committer.
    commits: tokio::sync::mpsc::Sender<commit::PlanRequest>,
    /// Reads not committed yet, for the refreshes decided meanwhile.
    reads: FreshReads,
    /// The background reclassification (every queued entry but outages' ends).
    reclassifier: Background,
}

/// What every unit of work shares; cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

impl Context {
    /// `clock` is the time of everything done in this context: sweeps, refreshes,
    /// followers, the event processor and the deliverers.
    pub async fn new(
        store: Store,
        client: Client,
        options: SweepOptions,
        clock: Clock,
    ) -> store::Result<Self> {
        let seed = store.installation_seed().await?;
        let statuses = store.connector_statuses(clock.now()).await?;
        let fetching = tokio::sync::Semaphore::new(options.concurrency.max(1));
        let (commits, queue) = tokio::sync::mpsc::channel(store::GROUP_MAX * 4);
        tokio::spawn(commit::run_committer(
            store.clone(),
            plan_settings(&options),
            queue,
            clock.clone(),
        ));
        let progress = Progress::new(clock.now());
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| {
            let me = me.clone();
            Inner {
                store,
                client,
                clock,
                options,
                seed,
                connectors: Mutex::new(ConnectorCache::new(statuses)),
                progress,
                fetching,
                commits,
                reads: FreshReads::default(),
                // Holds no context between batches: it ends when the last one goes.
                reclassifier: Background::start(move || {
                    let context = Context {
                        inner: me.upgrade()?,
                    };
                    Some(async move { context.reclassify_in_background().await })
                }),
            }
        });
        let context = Self { inner };
        // What a crash left queued resumes now, whether or not `/connectors` is read again.
        context.wake_reclassify();
        Ok(context)
    }

    /// Wakes the background reclassification (a no-op once stopped).
    pub(super) fn wake_reclassify(&self) {
        self.inner.reclassifier.wake();
    }

    /// Stops the background reclassification between two batches and waits for it: what is
    /// left stays queued for the next start.
    pub async fn stop_background(&self) {
        self.inner.reclassifier.stop().await;
    }

    /// Stops the background work, then closes the store: the end of a one-shot command.
    pub async fn close(&self) {
        self.stop_background().await;
        self.inner.store.close().await;
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The one clock: every `now` of the daemon built on this context comes from it.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn options(&self) -> &SweepOptions {
        &self.inner.options
    }

    pub fn progress(&self) -> &Progress {
        &self.inner.progress
    }

    /// What the planner needs from the settings.
    pub fn plan_settings(&self) -> PlanSettings {
        plan_settings(&self.inner.options)
    }

    /// The user's next slot strictly after `after`.
    pub fn next_due(&self, user: &UserId, after: DateTime<Utc>) -> DateTime<Utc> {
        plan::slots::next_slot(
            self.inner.seed,
            user.as_str(),
            self.inner.options.period,
            after,
        )
    }

    /// Registers users at their stable slots.
    pub async fn add_users(&self, ids: &[UserId]) -> store::Result<u64> {
        self.add_users_at(ids, self.inner.clock.now()).await
    }

    /// As [`Context::add_users`], within a unit of work that took its `now`.
    pub async fn add_users_at(&self, ids: &[UserId], now: DateTime<Utc>) -> store::Result<u64> {
        self.inner
            .store
            .add_users(ids, now, |u| self.next_due(u, now))
            .await
    }

    /// The connection as the gates should see it: the stored row with what a read of this
    /// process not yet committed says (its status, `lastUsed`, its newest job).
    pub fn freshest(&self, row: &ConnectionRow) -> ConnectionRow {
        self.inner.reads.overlay(row)
    }

    /// The `/connectors` cache, held while it is read or refreshed.
    pub(super) async fn connector_cache(&self) -> tokio::sync::MutexGuard<'_, ConnectorCache> {
        self.inner.connectors.lock().await
    }

    /// One of `sweep.concurrency` permits to fetch a user's lists: the requests in flight
    /// at Basiq follow the setting, while users whose plans wait for the group commit hold
    /// none.
    pub(super) async fn fetch_permit(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, SweepError> {
        self.inner
            .fetching
            .acquire()
            .await
            .map_err(|_| SweepError::Store(sqlx::Error::PoolClosed))
    }

    /// Reads the stored state, plans and writes the plan, in one transaction: nothing can
    /// move between the read and the write. The transaction is shared with the other users'
    /// plans queued at the same moment (group commit, see [`commit`]); this plan is applied
    /// whole or not at all.
    pub(super) async fn plan_and_commit(
        &self,
        user: &UserId,
        fetched: Fetched,
        statuses: ConnectorStatuses,
        next_due_at: Option<DateTime<Utc>>,
    ) -> Result<UserPlan, SweepError> {
        // Until the commit, a refresh decided meanwhile sees what this read said.
        let _held = self.inner.reads.hold(plan::freshest(&fetched));
        let (reply, replied) = tokio::sync::oneshot::channel();
        let request = commit::PlanRequest {
            user: user.clone(),
            fetched,
            connectors: statuses,
            next_due_at,
            reply,
        };
        let closed = || SweepError::Store(sqlx::Error::PoolClosed);
        self.inner
            .commits
            .send(request)
            .await
            .map_err(|_| closed())?;
        Ok(replied.await.map_err(|_| closed())??)
    }
}

/// What the planner needs from the sweep's settings.
fn plan_settings(options: &SweepOptions) -> PlanSettings {
    PlanSettings {
        stale_after: options.stale_after,
        outage_min_users: options.outage_min_users,
        outage_window: options.outage_window,
        auto_refresh: options.auto_refresh.clone(),
    }
}
