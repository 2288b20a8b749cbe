//! One pass over due users (callable from tests, the CLI and the daemon), one user's sweep,
//! and the scheduler wiring that only ticks.
//!
//! A user's sweep reads **fetch → plan → commit → emit**: two requests
//! (`/users/{id}/connections`, `/users/{id}/jobs`) plus the process-wide `/connectors`
//! cache; then the pure planner ([`crate::plan::plan_user`]) over what was fetched and what
//! is stored; then one `BEGIN IMMEDIATE` transaction writes the whole plan; then its log
//! lines are emitted. Nothing is written after the commit: a crash leaves either the old
//! state or the whole new one. Reclassifying the connections at a connector (its status
//! moved, an inferred outage opened or closed) is durable work in `reclassify_queue`,
//! done in small batches, each its own plan and transaction.

mod commit;
mod reads;
pub mod schedule;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::basiq::{self, Client};
use crate::clock::{self, Clock};
use crate::domain::{ConnectionId, ConnectorKey, Job, UserId};
use crate::plan::ConnectionRow;
use crate::plan::classify::{ConnectorView, Health};
pub use crate::plan::policy::schedule::AutoRefresh;
use crate::plan::{self, ConnectorStatuses, Fetched, Note, PlanSettings, UserPlan};
use crate::store::{self, Store, SweepCounts};

pub use worker::{TickState, run_scheduler};

/// Connections reclassified per transaction: short enough that no write holds the lock for
/// long, even at a bank with a third of a million connections.
const RECLASSIFY_BATCH: u32 = 500;

/// The first retry of a failed `/connectors` waits this long, doubling up to the TTL.
const CONNECTORS_RETRY_BASE: Duration = Duration::from_secs(5);

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

/// How one user's sweep ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserOutcome {
    Swept(Vec<Health>),
    /// Basiq answered 404: marked gone.
    Gone,
    /// Skipped (shutdown began before it started).
    Skipped,
}

/// Why a user's sweep failed.
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

/// The cached `/connectors` answer, shared by every task. Its times are the clock's; an
/// age below zero (the wall clock went back) counts as expired, never as fresh.
struct ConnectorCache {
    /// The last successful fetch.
    fetched_at: Option<DateTime<Utc>>,
    /// Failed fetches since the last success, and when the last one failed: no fetch for
    /// [`ConnectorCache::retry_delay`] after it.
    failures: u32,
    failed_at: Option<DateTime<Utc>>,
    statuses: ConnectorStatuses,
    /// The newest outbox row when the last successful fetch began: every notification up
    /// to it was made before the statuses were read.
    outbox_mark: i64,
    /// The last fetch forced to confirm a notice ([`Sweeper::connectors_confirm`]).
    forced_at: Option<DateTime<Utc>>,
}

impl ConnectorCache {
    /// The wait after the last failed fetch: 5 s doubling per failure in a row, at most the
    /// TTL.
    fn retry_delay(&self, ttl: Duration) -> Duration {
        CONNECTORS_RETRY_BASE
            .checked_mul(2u32.saturating_pow(self.failures.saturating_sub(1).min(20)))
            .unwrap_or(ttl)
            .min(ttl)
    }

    /// A failed fetch is being backed off at `now`.
    fn backing_off(&self, now: DateTime<Utc>, ttl: Duration) -> bool {
        self.failed_at
            .is_some_and(|t| clock::within(now, t, self.retry_delay(ttl)))
    }
}

/// Fetches forced to confirm notices are this far apart at least.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);

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
    /// Where every `now` of the sweep, the connector cache and the group commit comes from.
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
    reads: reads::FreshReads,
}

/// Sweeps users; cheap to clone.
#[derive(Clone)]
pub struct Sweeper {
    inner: Arc<Inner>,
}

impl Sweeper {
    /// `clock` is the time of everything the sweeper does, and of the refresher, followers,
    /// event processor and deliverers built on it.
    pub async fn new(
        store: Store,
        client: Client,
        options: SweepOptions,
        clock: Clock,
    ) -> store::Result<Self> {
        let seed = store.installation_seed().await?;
        let statuses = store.connector_statuses().await?;
        let fetching = tokio::sync::Semaphore::new(options.concurrency.max(1));
        let (commits, queue) = tokio::sync::mpsc::channel(store::GROUP_MAX * 4);
        let commit_settings = commit::CommitSettings {
            plan: PlanSettings {
                stale_after: options.stale_after,
                outage_min_users: options.outage_min_users,
                outage_window: options.outage_window,
                auto_refresh: options.auto_refresh.clone(),
            },
            outage_window: chrono::Duration::from_std(options.outage_window)
                .unwrap_or(chrono::Duration::MAX),
        };
        tokio::spawn(commit::run_committer(
            store.clone(),
            commit_settings,
            queue,
            clock.clone(),
        ));
        let progress = Progress::new(clock.now());
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                client,
                clock,
                options,
                seed,
                connectors: Mutex::new(ConnectorCache {
                    outbox_mark: 0,
                    forced_at: None,
                    fetched_at: None,
                    failures: 0,
                    failed_at: None,
                    statuses,
                }),
                progress,
                fetching,
                commits,
                reads: reads::FreshReads::default(),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The one clock: every `now` of the daemon built on this sweeper comes from it.
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
        PlanSettings {
            stale_after: self.inner.options.stale_after,
            outage_min_users: self.inner.options.outage_min_users,
            outage_window: self.inner.options.outage_window,
            auto_refresh: self.inner.options.auto_refresh.clone(),
        }
    }

    /// The user's next slot strictly after `after`.
    pub fn next_due(&self, user: &UserId, after: DateTime<Utc>) -> DateTime<Utc> {
        schedule::next_slot(
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

    /// As [`Sweeper::add_users`], within a unit of work that took its `now`.
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

    /// The last known connector statuses, without asking Basiq.
    pub async fn cached_connectors(&self) -> ConnectorStatuses {
        self.inner.connectors.lock().await.statuses.clone()
    }

    /// Connector statuses, from cache or (at most once per TTL, single-flight) `/connectors`.
    /// A failed fetch keeps the last known statuses and is retried with backoff (5 s
    /// doubling, at most the TTL), not after the full TTL: until `/connectors` has answered
    /// once, no user is blamed. Status changes are recorded, and the connections at those
    /// connectors reclassified, before the new statuses are handed out.
    pub async fn connectors(&self) -> ConnectorStatuses {
        let mut cache = self.inner.connectors.lock().await;
        let ttl = self.inner.options.connectors_ttl;
        let now = self.inner.clock.now();
        let fresh = cache.fetched_at.is_some_and(|t| clock::within(now, t, ttl));
        if fresh || cache.backing_off(now, ttl) {
            return cache.statuses.clone();
        }
        self.fetch_connectors(&mut cache).await
    }

    /// Whether the bank statuses were read after the notification `outbox_id` was made,
    /// reading them now if not (at most once per [`CONFIRM_EVERY`], and not while the
    /// fetch backs off after failures). The read reclassifies what an outage explains.
    pub async fn connectors_confirm(&self, outbox_id: i64) -> bool {
        let mut cache = self.inner.connectors.lock().await;
        if cache.outbox_mark >= outbox_id {
            return true;
        }
        let now = self.inner.clock.now();
        let backing_off = cache.backing_off(now, self.inner.options.connectors_ttl);
        let recent = cache
            .forced_at
            .is_some_and(|t| clock::within(now, t, CONFIRM_EVERY));
        if backing_off || recent {
            return false;
        }
        cache.forced_at = Some(now);
        self.fetch_connectors(&mut cache).await;
        cache.outbox_mark >= outbox_id
    }

    async fn fetch_connectors(&self, cache: &mut ConnectorCache) -> ConnectorStatuses {
        let mark = self.inner.store.newest_outbox_id().await.unwrap_or(0);
        let listed = self.inner.client.list_connectors().await;
        // The read's time is when Basiq answered: a failed read may have taken its retries'
        // time, and its backoff starts from its end.
        let now = self.inner.clock.now();
        match listed {
            Ok(list) => {
                match crate::work::write::commit_connectors(&self.inner.store, &list, now).await {
                    Ok(plan) => {
                        cache.fetched_at = Some(now);
                        cache.outbox_mark = cache.outbox_mark.max(mark);
                        cache.failures = 0;
                        cache.failed_at = None;
                        cache.statuses.known = true;
                        for c in &list {
                            cache.statuses.statuses.insert(
                                ConnectorKey::new(c.institution_id.as_str(), &c.method),
                                c.status.clone(),
                            );
                        }
                        for change in &plan.changes {
                            tracing::info!(
                                event = "connector_status_changed",
                                institution_id = %change.key.institution_id,
                                method = %change.key.method,
                                from = change.from.as_ref().map(|s| s.as_str().to_owned()),
                                to = %change.to,
                                "connector status changed"
                            );
                        }
                        let statuses = cache.statuses.clone();
                        // Held under the lock: no sweep classifies against the new statuses
                        // before the connections an outage held got their recovery slots.
                        if let Err(e) = self.drain_reclassify(&statuses).await {
                            tracing::error!(error = %e, "reclassification failed; it resumes on the next tick");
                        }
                        return statuses;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not store connector statuses");
                        connectors_failed(cache, now);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    correlation_id = e.correlation_id(),
                    known = cache.statuses.known,
                    "could not fetch /connectors; using the last known statuses"
                );
                connectors_failed(cache, now);
            }
        }
        cache.statuses.clone()
    }

    /// The connector view and inferred-outage flag of one stored connection, for the gates.
    pub async fn connector_facts(
        &self,
        row: &ConnectionRow,
    ) -> Result<(ConnectorView, bool), SweepError> {
        let statuses = self.connectors().await;
        let view = statuses.view(row.institution_id.as_str(), &row.method);
        let mut conn = self.inner.store.pool().acquire().await?;
        let inferred = store::connectors::inferred_open(
            &mut conn,
            row.institution_id.as_str(),
            row.method.as_str(),
        )
        .await?;
        Ok((view, inferred))
    }

    /// Works through the reclassification queue, one batch per transaction: each batch is
    /// planned ([`plan::plan_reclassify`]), written, then logged. The connections an ended
    /// outage held get recovery slots spread over `recovery_window` by their index in it.
    pub async fn drain_reclassify(&self, statuses: &ConnectorStatuses) -> Result<(), SweepError> {
        let settings = self.plan_settings();
        let window = chrono::Duration::from_std(self.inner.options.outage_window)
            .unwrap_or(chrono::Duration::MAX);
        loop {
            // One batch, one unit of work: one `now`.
            let now = self.inner.clock.now();
            let mut tx = self.inner.store.write().await?;
            let Some(mut job) = store::connectors::next_reclassify(&mut tx).await? else {
                tx.rollback().await?;
                return Ok(());
            };
            let rows = store::connections::rows_at_connector(
                &mut tx,
                &job.key,
                &job.cursor,
                RECLASSIFY_BATCH,
            )
            .await?;
            let finished = rows.len() < RECLASSIFY_BATCH as usize;
            let inferred = store::connections::inference_at(
                &mut tx,
                &job.key,
                None,
                now.checked_sub_signed(window)
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
                settings.outage_min_users,
            )
            .await?
            .open;
            let ids: Vec<ConnectionId> = rows.iter().map(|r| r.connection_id.clone()).collect();
            let attempts = store::connections::attempts_for(&mut tx, &ids, now).await?;
            if let Some(last) = rows.last() {
                job.cursor = last.connection_id.as_str().to_owned();
            }
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
            let held = rows
                .iter()
                .filter(|r| r.health == Some(Health::InstitutionOutage))
                .count();
            let slots = recovery_slots(&mut job, held, &settings, &mut rng);
            let periods = store::connections::down_periods(&mut tx, &job.key, now, window)
                .await?
                .all();
            let plan = plan::plan_reclassify(
                now,
                rows,
                statuses,
                inferred,
                &periods,
                &attempts,
                &settings,
                slots.into_iter(),
                &mut rng,
            );
            crate::work::write::write_plans(&mut tx, &[&plan], now).await?;
            store::connectors::advance_reclassify(&mut tx, &job, finished).await?;
            tx.commit().await?;
            self.inner.progress.touch(self.inner.clock.now());
            if job.recovery
                && finished
                && job.recovery_total > 0
                && let Some(auto) = &settings.auto_refresh
            {
                log_recovery(&job, auto);
            }
            emit_notes(plan.notes);
        }
    }

    /// Sweeps one user: fetch, plan, commit, emit. Every log line names `user_id` on the
    /// event itself (a span field would be repeated as a duplicate JSON key).
    pub async fn sweep_user(&self, user: &UserId) -> Result<UserOutcome, SweepError> {
        let permit = self.fetch_permit().await?;
        let outcome = self.sweep_user_with(user, permit).await;
        self.inner.progress.touch(self.inner.clock.now());
        outcome
    }

    /// One of `sweep.concurrency` permits to fetch a user's lists: the requests in flight
    /// at Basiq follow the setting, while users whose plans wait for the group commit hold
    /// none.
    async fn fetch_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SweepError> {
        self.inner
            .fetching
            .acquire()
            .await
            .map_err(|_| SweepError::Store(sqlx::Error::PoolClosed))
    }

    async fn sweep_user_with(
        &self,
        user: &UserId,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<UserOutcome, SweepError> {
        let store = &self.inner.store;
        let connections = match self.inner.client.list_connections(user).await {
            Ok(c) => c,
            // Only Basiq's own `resource-not-found`: a gateway's 404 is retried, never gone.
            Err(basiq::Error::NotFound { api }) => {
                store.mark_gone(user, self.inner.clock.now()).await?;
                tracing::warn!(
                    event = "user_gone",
                    user_id = %user,
                    correlation_id = api.correlation_id.as_deref(),
                    "Basiq does not know this user (404 resource-not-found): it is not swept \
                     until re-added or checked at login"
                );
                return Ok(UserOutcome::Gone);
            }
            Err(e) => return Err(e.into()),
        };
        let jobs = self.inner.client.list_jobs(user, None).await?;
        drop(permit);
        let statuses = self.connectors().await;
        // A connection Basiq sent that could not be read is absent from the list but not
        // gone: with one skipped, no connection is marked gone this time.
        let fetched = Fetched {
            complete: connections.is_complete(),
            connections: connections.items,
            jobs,
        };
        // The user's next slot counts from the end of its fetches (the group commit takes
        // its own `now` for the plan).
        let now = self.inner.clock.now();
        let next = self.next_due(user, now);
        // Plan and commit.
        let plan = self
            .plan_and_commit(user, fetched, statuses.clone(), Some(next))
            .await?;
        let healths = plan.healths();
        // Emit.
        let reclassify = !plan.reclassify.is_empty();
        emit_notes(plan.notes);
        if reclassify {
            self.drain_reclassify(&statuses).await?;
        }
        Ok(UserOutcome::Swept(healths))
    }

    /// Reads the stored state, plans and writes the plan, in one transaction: nothing can
    /// move between the read and the write. The transaction is shared with the other users'
    /// plans queued at the same moment (group commit, see `commit`); this plan is applied
    /// whole or not at all.
    async fn plan_and_commit(
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

    /// A followed job ended: re-read the connection (one request), plan and commit it with
    /// the job, emit.
    pub async fn job_ended(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
        job: &Job,
    ) -> Result<(), SweepError> {
        let connection = self
            .inner
            .client
            .get_connection(user, connection_id)
            .await?;
        let statuses = self.connectors().await;
        let mut job = job.clone();
        // We asked for this job for this connection.
        job.connection_id = Some(connection_id.clone());
        job.has_source = true;
        let fetched = Fetched {
            connections: vec![connection],
            jobs: vec![job],
            complete: false,
        };
        let plan = self
            .plan_and_commit(user, fetched, statuses.clone(), None)
            .await?;
        let reclassify = !plan.reclassify.is_empty();
        emit_notes(plan.notes);
        if reclassify {
            self.drain_reclassify(&statuses).await?;
        }
        Ok(())
    }

    /// One pass: `only` names users (swept whether due or not); otherwise every due user,
    /// in batches, until none is due. Stops taking new users when `cancel` fires.
    ///
    /// An authentication failure (Basiq refused the API key) stops the pass: no user is
    /// started after it, one error line says so, and the counts come back with `aborted`
    /// set (also stored on the pass's row). The users it stopped are not postponed: the next
    /// pass takes them again, and the token cache's backoff paces the `/token` calls.
    pub async fn run_pass(
        &self,
        trigger: &str,
        only: Option<Vec<UserId>>,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let source = match only {
            Some(users) => Source::Named(Some(users)),
            None if trigger_is_named(trigger) => Source::Named(None),
            None => Source::Due,
        };
        self.run_pass_from(trigger, source, cancel).await
    }

    /// A pass over every registered user (neither gone nor removed), due or not, read page
    /// by page (`sweep.batch_size` ids at a time): `basiq-health sweep`.
    pub async fn run_pass_all(
        &self,
        trigger: &str,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        self.run_pass_from(trigger, Source::All { after: None }, cancel)
            .await
    }

    async fn run_pass_from(
        &self,
        trigger: &str,
        source: Source,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let progress = &self.inner.progress;
        progress
            .in_pass
            .store(true, std::sync::atomic::Ordering::Relaxed);
        progress.touch(self.inner.clock.now());
        let result = self.run_pass_inner(trigger, source, cancel).await;
        progress
            .in_pass
            .store(false, std::sync::atomic::Ordering::Relaxed);
        progress.touch(self.inner.clock.now());
        result
    }

    async fn run_pass_inner(
        &self,
        trigger: &str,
        mut source: Source,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let store = &self.inner.store;
        let progress = &self.inner.progress;
        let clock = &self.inner.clock;
        // Measured, not decided: the pass's duration for the histogram and the log line.
        let started = std::time::Instant::now();
        let sweep_id = store.start_sweep(trigger, clock.now()).await?;
        let mut counts = SweepCounts::default();
        if !trigger_is_named(trigger) {
            // Connector statuses move without any user being due (an outage ends): read them
            // on every tick, at most once per TTL.
            self.connectors().await;
            // Work a crash left in the reclassification queue.
            let statuses = self.cached_connectors().await;
            if let Err(e) = self.drain_reclassify(&statuses).await {
                tracing::error!(error = %e, "reclassification failed; it resumes on the next tick");
            }
        }
        // Fired by `cancel`, an authentication failure or a database failure: users not yet
        // started are skipped, the ones in flight finish (never dropped inside a write).
        let stop = cancel.child_token();
        let mut auth_failure: Option<basiq::Error> = None;
        let mut store_failure: Option<sqlx::Error> = None;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let batch = match &mut source {
                Source::Named(users) => match users.take() {
                    Some(users) => users,
                    None => break,
                },
                Source::Due => {
                    store
                        .due_users(clock.now(), self.inner.options.batch_size)
                        .await?
                }
                Source::All { after } => {
                    let page = store
                        .users_page(after.as_ref(), self.inner.options.batch_size)
                        .await?;
                    *after = page.last().cloned();
                    page
                }
            };
            if batch.is_empty() {
                break;
            }
            let stop = &stop;
            let mut results = futures_util::stream::iter(batch)
                .map(|user| async move {
                    if stop.is_cancelled() {
                        return (user, Ok(UserOutcome::Skipped));
                    }
                    let permit = match self.fetch_permit().await {
                        Ok(permit) => permit,
                        Err(e) => return (user, Err(e)),
                    };
                    // Checked again once a permit is ours: a stop while this user waited
                    // (an auth failure, SIGTERM) starts no request for it.
                    if stop.is_cancelled() {
                        return (user, Ok(UserOutcome::Skipped));
                    }
                    let result = self.sweep_user_with(&user, permit).await;
                    if let Err(e) = &result
                        && !matches!(e, SweepError::Basiq(b) if b.is_auth())
                    {
                        // Postponed here, inside the user's own future: awaiting a write in
                        // the loop below would stop polling the users in flight, and one of
                        // them may hold the write lock this write waits for.
                        let retry = clock.now()
                            + chrono::Duration::from_std(self.inner.options.retry_after)
                                .unwrap_or_default();
                        if let Err(e) = self.inner.store.set_next_due(&user, retry).await {
                            tracing::error!(user_id = %user, error = %e, "could not postpone the user");
                        }
                    }
                    (user, result)
                })
                // Up to `concurrency` users fetching (the permits) and two groups' worth more
                // waiting for their commit (one group committing, the next forming), so a
                // group commit can take many plans while fetching goes on.
                .buffer_unordered(self.inner.options.concurrency.max(1) + 2 * store::GROUP_MAX);
            while let Some((user, result)) = results.next().await {
                // Swept, gone or failed and postponed: a user finished, however long the pass.
                progress.touch(clock.now());
                match result {
                    Ok(UserOutcome::Swept(healths)) => {
                        counts.users_swept += 1;
                        progress.users_swept.inc();
                        for h in healths {
                            *counts.by_health.entry(h.as_str().to_owned()).or_default() += 1;
                        }
                    }
                    Ok(UserOutcome::Gone) => {
                        counts.users_gone += 1;
                        progress.users_gone.inc();
                    }
                    Ok(UserOutcome::Skipped) => {}
                    Err(SweepError::Basiq(e)) if e.is_auth() => {
                        // Not this user's fault: counted, not postponed, logged once below.
                        counts.users_failed += 1;
                        progress.users_failed.inc();
                        if auth_failure.is_none() {
                            stop.cancel();
                            auth_failure = Some(e);
                        }
                    }
                    Err(e) => {
                        counts.users_failed += 1;
                        progress.users_failed.inc();
                        let (status, correlation_id) = match &e {
                            SweepError::Basiq(b) => {
                                (b.status(), b.correlation_id().map(str::to_owned))
                            }
                            SweepError::Store(_) => (None, None),
                        };
                        tracing::error!(
                            event = "user_sweep_failed",
                            user_id = %user,
                            status,
                            correlation_id,
                            error = %e,
                            "sweep of this user failed; it is retried later"
                        );
                        if let SweepError::Store(e) = e
                            && store_failure.is_none()
                            && store::health::is_storage_failure(&e)
                        {
                            // Infrastructure trouble (full disk, locked database): stop this
                            // pass once the users in flight are done; the next tick tries again.
                            // A failure of one user's plan (a constraint) fails that user only.
                            stop.cancel();
                            store_failure = Some(e);
                        }
                    }
                }
            }
        }
        if let Some(e) = store_failure {
            counts.aborted = Some(store::Abort {
                cause: store::AbortCause::Database,
                error: e.to_string(),
            });
            store
                .finish_sweep(sweep_id, &counts, clock.now())
                .await
                .ok();
            return Err(e);
        }
        if let Some(e) = &auth_failure {
            counts.aborted = Some(store::Abort {
                cause: store::AbortCause::Auth,
                error: e.to_string(),
            });
            tracing::error!(
                event = "sweep_aborted",
                trigger,
                status = e.status(),
                code = e.code(),
                correlation_id = e.correlation_id(),
                users_swept = counts.users_swept,
                error = %e,
                "Basiq refused the API key: the sweep pass stops; the next pass tries again"
            );
        }
        store.finish_sweep(sweep_id, &counts, clock.now()).await?;
        progress.passes.inc();
        progress
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        let by_health: BTreeMap<&str, u64> = counts
            .by_health
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        tracing::info!(
            event = "sweep_finished",
            trigger,
            users_swept = counts.users_swept,
            users_failed = counts.users_failed,
            users_gone = counts.users_gone,
            by_health = %serde_json::to_string(&by_health).unwrap_or_default(),
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            interrupted = cancel.is_cancelled(),
            aborted = auth_failure.is_some(),
            "sweep finished"
        );
        Ok(counts)
    }

    /// The login-time check: sweep the user now unless swept within `login_min_interval`.
    /// Returns whether a sweep ran.
    pub async fn login_check(&self, user: &UserId) -> Result<bool, SweepError> {
        let store = &self.inner.store;
        let now = self.inner.clock.now();
        if store.get_user(user).await?.is_none() {
            self.add_users_at(std::slice::from_ref(user), now).await?;
        }
        let row = store.get_user(user).await?;
        let min =
            chrono::Duration::from_std(self.inner.options.login_min_interval).unwrap_or_default();
        // A gone user logging in is the news that it may exist again: always asked, and a
        // successful sweep clears `gone`.
        let recent = row
            .filter(|r| r.gone_at.is_none())
            .and_then(|r| r.last_swept_at)
            .is_some_and(|t| now - t < min);
        if recent {
            return Ok(false);
        }
        self.sweep_user(user).await?;
        Ok(true)
    }
}

/// A fetch of `/connectors` failed at `now`: the next waits [`ConnectorCache::retry_delay`].
fn connectors_failed(cache: &mut ConnectorCache, now: DateTime<Utc>) {
    cache.failures = cache.failures.saturating_add(1);
    cache.failed_at = Some(now);
}

/// Where a pass takes its users from.
enum Source {
    /// The users named, once.
    Named(Option<Vec<UserId>>),
    /// Due users, batch after batch, until none is due.
    Due,
    /// Every user, page after page in id order.
    All { after: Option<UserId> },
}

fn trigger_is_named(trigger: &str) -> bool {
    trigger != "tick"
}

/// The recovery slots of one reclassification batch holding `held` connections an outage
/// held: the k-th of n refreshes in the k-th n-th of the window after the outage ended,
/// with jitter, so the whole window is used whatever the batch size. The window is
/// `recovery_window`, or the shortest the per-bank pace can keep
/// ([`crate::plan::policy::schedule::recovery_window`]).
fn recovery_slots(
    job: &mut store::connectors::Reclassify,
    held: usize,
    settings: &PlanSettings,
    rng: &mut impl rand::Rng,
) -> Vec<crate::plan::policy::schedule::Owed> {
    let Some(auto) = settings.auto_refresh.as_ref().filter(|_| job.recovery) else {
        return Vec::new();
    };
    let held = u32::try_from(held).unwrap_or(u32::MAX);
    let total = job
        .recovery_total
        .max(job.recovery_done.saturating_add(held));
    let (window, _) = crate::plan::policy::schedule::recovery_window(total, auto);
    let slots = (job.recovery_done..job.recovery_done.saturating_add(held))
        .map(|k| crate::plan::policy::schedule::Owed {
            at: crate::plan::policy::schedule::recovery_slot(k, total, window, job.queued_at, rng),
            trigger: crate::plan::policy::Trigger::Recovery,
            since: Some(job.ended_after.unwrap_or(job.queued_at)),
        })
        .collect();
    job.recovery_done = job.recovery_done.saturating_add(held);
    slots
}

/// One line when an outage's recoveries are planned: over `recovery_window`, or over a
/// longer one when the per-bank pace cannot send them all within it.
fn log_recovery(job: &store::connectors::Reclassify, auto: &AutoRefresh) {
    let (window, stretched) =
        crate::plan::policy::schedule::recovery_window(job.recovery_total, auto);
    if stretched {
        tracing::warn!(
            event = "recovery_scheduled",
            institution_id = %job.key.institution_id,
            method = %job.key.method,
            connections = job.recovery_total,
            window_s = window.as_secs(),
            recovery_window_s = auto.recovery_window.as_secs(),
            per_institution_per_minute = auto.per_institution_per_minute.get(),
            stretched = true,
            "outage over: the per-bank pace cannot send every recovery within refresh.recovery_window; spread over the shortest window it allows"
        );
    } else {
        tracing::info!(
            event = "recovery_scheduled",
            institution_id = %job.key.institution_id,
            method = %job.key.method,
            connections = job.recovery_total,
            window_s = window.as_secs(),
            stretched = false,
            "outage over: recovery refreshes spread over the window"
        );
    }
}

/// Logs a plan's notes, after its commit.
pub fn emit_notes(notes: Vec<Note>) {
    for note in notes {
        match note {
            Note::HealthChanged { row, from, verdict } => {
                let level_warn = matches!(
                    verdict.health,
                    Health::ActionRequired | Health::InstitutionOutage | Health::Unknown
                );
                macro_rules! changed {
                    ($level:ident) => {
                        tracing::$level!(
                            event = "health_changed",
                            user_id = %row.user_id,
                            connection_id = %row.connection_id,
                            job_id = row.newest_job_id.as_deref(),
                            institution_id = %row.institution_id,
                            method = %row.method,
                            from = from.map(Health::as_str),
                            to = verdict.health.as_str(),
                            reason = verdict.reason.as_deref(),
                            "connection health changed"
                        )
                    };
                }
                if level_warn {
                    changed!(warn);
                } else {
                    changed!(info);
                }
            }
            Note::ConsentExpiring { row, days } => tracing::warn!(
                event = "consent_expiring",
                user_id = %row.user_id,
                connection_id = %row.connection_id,
                institution_id = %row.institution_id,
                days,
                expires_at = row.expiry_date.map(|e| e.to_rfc3339()),
                "open-banking consent expires within {days} day(s): the user must re-consent"
            ),
            Note::OutageInferred { key, users } => tracing::warn!(
                event = "outage_inferred",
                institution_id = %key.institution_id,
                method = %key.method,
                users,
                "several users fail bank-side at this connector: treating it as an outage"
            ),
            Note::OutageCleared { key } => tracing::info!(
                event = "outage_cleared",
                institution_id = %key.institution_id,
                method = %key.method,
                "inferred outage is over"
            ),
            Note::RetryScheduled { row, attempt, at } => tracing::info!(
                event = "retry_scheduled",
                user_id = %row.user_id,
                connection_id = %row.connection_id,
                attempt,
                at = %at.to_rfc3339(),
                "transient failure: refresh retry scheduled"
            ),
            Note::CappedByBasiq { row, until } => tracing::warn!(
                event = "capped_by_basiq",
                user_id = %row.user_id,
                connection_id = %row.connection_id,
                job_id = row.newest_job_id.as_deref(),
                until = %until.to_rfc3339(),
                "Basiq's refresh cap is reached for this connection: no attempt until the window has room"
            ),
        }
    }
}
