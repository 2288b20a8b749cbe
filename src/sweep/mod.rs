//! One pass over due users (callable from tests, the CLI and the daemon), one user's sweep,
//! and the scheduler wiring that only ticks.
//!
//! A user's sweep is two requests (`/users/{id}/connections`, `/users/{id}/jobs`) plus the
//! process-wide `/connectors` cache. Everything it learns is written in one `BEGIN IMMEDIATE`
//! transaction; logs about it are emitted after the commit, so they never claim what the
//! database does not hold.

pub mod schedule;
mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::basiq::{self, Client};
use crate::classify::{self, Facts, Health, Verdict};
use crate::domain::{Connection, ConnectionId, ConnectorStatus, Job, UserId};
use crate::store::{self, ConnectionRow, Store, SweepCounts};

pub use worker::{TickState, run_scheduler};

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

/// What the sweep schedules for the refresh worker: recovery after an outage, spread over
/// `recovery_window`, and transient-failure retries with full-jitter backoff.
#[derive(Clone, Debug)]
pub struct AutoRefresh {
    pub recovery_window: Duration,
    pub transient_retry_base: Duration,
    pub transient_max_retries: u32,
    /// The policy's floor: a retry scheduled earlier would only be denied.
    pub min_interval: Duration,
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

/// The cached `/connectors` answer, shared by every task.
struct ConnectorCache {
    fetched_at: Option<Instant>,
    statuses: HashMap<(String, String), ConnectorStatus>,
}

/// What the sweep reports about itself: for the watchdog, `/metrics` and the status line.
pub struct Progress {
    /// A pass is running.
    pub in_pass: std::sync::atomic::AtomicBool,
    /// Unix seconds of the last user finished or pass boundary.
    pub last_progress: std::sync::atomic::AtomicI64,
    pub users_swept: prometheus_client::metrics::counter::Counter,
    pub users_failed: prometheus_client::metrics::counter::Counter,
    pub users_gone: prometheus_client::metrics::counter::Counter,
    pub passes: prometheus_client::metrics::counter::Counter,
    pub pass_duration: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            in_pass: Default::default(),
            last_progress: std::sync::atomic::AtomicI64::new(Utc::now().timestamp()),
            users_swept: Default::default(),
            users_failed: Default::default(),
            users_gone: Default::default(),
            passes: Default::default(),
            pass_duration: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 16),
            ),
        }
    }
}

impl Progress {
    fn touch(&self) {
        self.last_progress
            .store(Utc::now().timestamp(), std::sync::atomic::Ordering::Relaxed);
    }
}

struct Inner {
    store: Store,
    client: Client,
    options: SweepOptions,
    seed: u64,
    connectors: Mutex<ConnectorCache>,
    progress: Progress,
}

/// Sweeps users; cheap to clone.
#[derive(Clone)]
pub struct Sweeper {
    inner: Arc<Inner>,
}

/// Log events gathered inside a transaction and emitted after its commit.
enum Note {
    HealthChanged {
        row: ConnectionRow,
        from: Option<Health>,
        verdict: Verdict,
    },
    ConsentExpiring {
        row: ConnectionRow,
        days: i64,
    },
    OutageInferred {
        institution_id: String,
        method: String,
        users: i64,
    },
    OutageCleared {
        institution_id: String,
        method: String,
    },
}

impl Sweeper {
    pub async fn new(store: Store, client: Client, options: SweepOptions) -> store::Result<Self> {
        let seed = store.installation_seed().await?;
        let statuses = store.connector_statuses().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                client,
                options,
                seed,
                connectors: Mutex::new(ConnectorCache {
                    fetched_at: None,
                    statuses,
                }),
                progress: Progress::default(),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn options(&self) -> &SweepOptions {
        &self.inner.options
    }

    pub fn progress(&self) -> &Progress {
        &self.inner.progress
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
        let now = Utc::now();
        self.inner
            .store
            .add_users(ids, now, |u| self.next_due(u, now))
            .await
    }

    /// Connector statuses, from cache or (at most once per TTL, single-flight) `/connectors`.
    /// A status change is recorded and the connections at that connector are reclassified.
    pub async fn connectors(&self) -> HashMap<(String, String), ConnectorStatus> {
        let mut cache = self.inner.connectors.lock().await;
        let fresh = cache
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.inner.options.connectors_ttl);
        if fresh {
            return cache.statuses.clone();
        }
        // Whatever happens, do not ask again before the TTL: a failing /connectors must not
        // turn into one request per user.
        cache.fetched_at = Some(Instant::now());
        match self.inner.client.list_connectors().await {
            Ok(list) => {
                let now = Utc::now();
                match self.inner.store.record_connectors(&list, now).await {
                    Ok(changes) => {
                        for c in &list {
                            cache.statuses.insert(
                                (
                                    c.institution_id.as_str().to_owned(),
                                    c.method.as_str().to_owned(),
                                ),
                                c.status.clone(),
                            );
                        }
                        let statuses = cache.statuses.clone();
                        drop(cache);
                        for change in changes {
                            let recovered =
                                change.from.as_ref().is_some_and(ConnectorStatus::is_outage)
                                    && !change.to.is_outage();
                            if recovered
                                && let Err(e) = self
                                    .schedule_recovery(&change.institution_id, &change.method)
                                    .await
                            {
                                tracing::error!(error = %e, institution_id = %change.institution_id, "could not schedule recovery refreshes");
                            }
                            tracing::info!(
                                event = "connector_status_changed",
                                institution_id = %change.institution_id,
                                method = %change.method,
                                from = change.from.as_ref().map(|s| s.as_str().to_owned()),
                                to = %change.to,
                                "connector status changed"
                            );
                            if let Err(e) = self
                                .reclassify_connector(
                                    &change.institution_id,
                                    &change.method,
                                    &statuses,
                                )
                                .await
                            {
                                tracing::error!(error = %e, institution_id = %change.institution_id, "reclassification failed");
                            }
                        }
                        return statuses;
                    }
                    Err(e) => tracing::error!(error = %e, "could not store connector statuses"),
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                correlation_id = e.correlation_id(),
                "could not fetch /connectors; using the last known statuses"
            ),
        }
        cache.statuses.clone()
    }

    /// Schedules refreshes for the connections an outage held, spread uniformly with jitter
    /// over the recovery window (never at once), each to pass every gate when due.
    async fn schedule_recovery(
        &self,
        institution_id: &str,
        method: &str,
    ) -> Result<(), SweepError> {
        let rows = {
            let mut tx = self.inner.store.write().await?;
            // Basiq says the bank is back: an inference drawn from failures during the outage
            // is over too.
            store::connectors::close_inferred(&mut tx, institution_id, method, Utc::now()).await?;
            let rows =
                store::connections::rows_at_connector(&mut tx, institution_id, method).await?;
            tx.commit().await?;
            rows
        };
        let Some(auto) = &self.inner.options.auto_refresh else {
            return Ok(());
        };
        let held: Vec<&ConnectionRow> = rows
            .iter()
            .filter(|r| r.health == Some(Health::InstitutionOutage))
            .collect();
        let delays =
            crate::policy::recovery_delays(held.len(), auto.recovery_window, &mut rand::rng());
        let now = Utc::now();
        for (row, delay) in held.iter().zip(delays) {
            let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            self.inner
                .store
                .schedule_refresh(&row.connection_id, at, "recovery")
                .await?;
        }
        if !held.is_empty() {
            tracing::info!(
                event = "recovery_scheduled",
                institution_id,
                method,
                connections = held.len(),
                window_s = auto.recovery_window.as_secs(),
                "outage over: recovery refreshes spread over the window"
            );
        }
        Ok(())
    }

    /// After a health change: a transient failure earns a retry (backoff, full jitter, at
    /// most `transient_max_retries` per incident); leaving it ends the incident.
    async fn after_health_change(&self, row: &ConnectionRow, to: Health) -> Result<(), SweepError> {
        let Some(auto) = &self.inner.options.auto_refresh else {
            return Ok(());
        };
        let store = &self.inner.store;
        if to != Health::TransientFailure {
            if row.transient_retries > 0
                || row.refresh_due_trigger.as_deref() == Some("transient-retry")
            {
                store.set_transient_retries(&row.connection_id, 0).await?;
                if row.refresh_due_trigger.as_deref() == Some("transient-retry") {
                    store.clear_scheduled_refresh(&row.connection_id).await?;
                }
            }
            return Ok(());
        }
        let attempt = u32::try_from(row.transient_retries)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let Some(delay) = crate::policy::transient_retry_delay(
            attempt,
            auto.transient_retry_base,
            auto.transient_max_retries,
            &mut rand::rng(),
        ) else {
            return Ok(());
        };
        let now = Utc::now();
        let floor = chrono::Duration::from_std(auto.min_interval).unwrap_or_default();
        let (_, last_attempt, _) = store.refresh_window(&row.connection_id, now).await?;
        let mut at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        for t in [row.last_used, last_attempt].into_iter().flatten() {
            at = at.max(t + floor);
        }
        store
            .schedule_refresh(&row.connection_id, at, "transient-retry")
            .await?;
        store
            .set_transient_retries(&row.connection_id, i64::from(attempt))
            .await?;
        tracing::info!(
            event = "retry_scheduled",
            user_id = %row.user_id,
            connection_id = %row.connection_id,
            attempt,
            at = %at.to_rfc3339(),
            "transient failure: refresh retry scheduled"
        );
        Ok(())
    }

    /// Reclassifies every connection at a connector (after its status or inference moved).
    async fn reclassify_connector(
        &self,
        institution_id: &str,
        method: &str,
        statuses: &HashMap<(String, String), ConnectorStatus>,
    ) -> Result<(), SweepError> {
        let now = Utc::now();
        let mut notes = Vec::new();
        let mut tx = self.inner.store.write().await?;
        let rows = store::connections::rows_at_connector(&mut tx, institution_id, method).await?;
        let inferred = store::connectors::inferred_open(&mut tx, institution_id, method).await?;
        for row in rows {
            self.apply_verdict(&mut tx, row, statuses, inferred, now, &mut notes)
                .await?;
        }
        tx.commit().await?;
        self.after_commit(&notes).await?;
        emit(notes);
        Ok(())
    }

    /// Classifies one stored connection and writes the verdict; a change becomes a note to
    /// log after the commit. Returns the health.
    async fn apply_verdict(
        &self,
        tx: &mut sqlx::SqliteConnection,
        row: ConnectionRow,
        statuses: &HashMap<(String, String), ConnectorStatus>,
        inferred: bool,
        now: DateTime<Utc>,
        notes: &mut Vec<Note>,
    ) -> Result<Health, SweepError> {
        let verdict = self.verdict(&row, statuses, inferred, now);
        let health = verdict.health;
        if let Some(change) = store::connections::set_health(tx, &row, &verdict, now).await? {
            notes.push(Note::HealthChanged {
                row,
                from: change.from,
                verdict,
            });
        }
        Ok(health)
    }

    /// Follow-ups of committed changes: refresh scheduling.
    async fn after_commit(&self, notes: &[Note]) -> Result<(), SweepError> {
        for note in notes {
            match note {
                Note::HealthChanged { row, verdict, .. } => {
                    self.after_health_change(row, verdict.health).await?;
                }
                Note::OutageCleared {
                    institution_id,
                    method,
                } => {
                    self.schedule_recovery(institution_id, method).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn verdict(
        &self,
        row: &ConnectionRow,
        statuses: &HashMap<(String, String), ConnectorStatus>,
        inferred: bool,
        now: DateTime<Utc>,
    ) -> Verdict {
        let key = (
            row.institution_id.as_str().to_owned(),
            row.method.as_str().to_owned(),
        );
        classify::classify(&Facts {
            status: &row.status,
            method: &row.method,
            last_used: row.last_used,
            expiry_date: row.expiry_date,
            newest_job: row.newest_job.as_ref(),
            connector: statuses.get(&key),
            outage_inferred: inferred,
            stale_after: self.inner.options.stale_after,
            now,
        })
    }

    /// Sweeps one user: fetch, store, infer, classify. Every log line names `user_id` on
    /// the event itself (a span field would be repeated as a duplicate JSON key).
    pub async fn sweep_user(&self, user: &UserId) -> Result<UserOutcome, SweepError> {
        let store = &self.inner.store;
        let connections = match self.inner.client.list_connections(user).await {
            Ok(c) => c,
            Err(basiq::Error::NotFound { api }) => {
                store.mark_gone(user, Utc::now()).await?;
                tracing::warn!(
                    event = "user_gone",
                    user_id = %user,
                    correlation_id = api.correlation_id.as_deref(),
                    "Basiq does not know this user (404): it will not be swept until re-added"
                );
                return Ok(UserOutcome::Gone);
            }
            Err(e) => return Err(e.into()),
        };
        let jobs = self.inner.client.list_jobs(user, None).await?;
        let statuses = self.connectors().await;
        let now = Utc::now();
        let newest = newest_jobs(&connections, &jobs);
        let matched = match_jobs(&connections, &jobs);

        let mut notes = Vec::new();
        let mut tx = store.write().await?;
        for (job, connection_id) in jobs.iter().zip(&matched) {
            store::jobs::upsert_job(&mut tx, user, job, connection_id.as_ref(), now).await?;
        }
        for c in &connections {
            store::connections::upsert_connection(
                &mut tx,
                user,
                c,
                newest.get(&c.id).copied(),
                now,
            )
            .await?;
        }
        let present: Vec<ConnectionId> = connections.iter().map(|c| c.id.clone()).collect();
        store::connections::mark_missing(&mut tx, user, &present, now).await?;

        // Outage inference at each connector this user uses: the count is over every
        // user's stored newest job, so the order users are swept in does not matter.
        let window_start =
            now - chrono::Duration::from_std(self.inner.options.outage_window).unwrap_or_default();
        let mut moved: BTreeSet<(String, String)> = BTreeSet::new();
        let connectors: BTreeSet<(String, String)> = connections
            .iter()
            .map(|c| {
                (
                    c.institution_id.as_str().to_owned(),
                    c.method.as_str().to_owned(),
                )
            })
            .collect();
        for (institution_id, method) in &connectors {
            let users = store::connections::bank_failure_users(
                &mut tx,
                institution_id,
                method,
                window_start,
            )
            .await?;
            if users >= self.inner.options.outage_min_users {
                if store::connectors::open_inferred(&mut tx, institution_id, method, users, now)
                    .await?
                {
                    moved.insert((institution_id.clone(), method.clone()));
                    notes.push(Note::OutageInferred {
                        institution_id: institution_id.clone(),
                        method: method.clone(),
                        users,
                    });
                }
            } else if store::connectors::close_inferred(&mut tx, institution_id, method, now)
                .await?
            {
                moved.insert((institution_id.clone(), method.clone()));
                notes.push(Note::OutageCleared {
                    institution_id: institution_id.clone(),
                    method: method.clone(),
                });
            }
        }

        // Classify this user's connections, then everyone's at a connector whose inferred
        // outage opened or closed.
        let mut rows = store::connections::rows_for_user(&mut tx, user).await?;
        for (institution_id, method) in &moved {
            for row in
                store::connections::rows_at_connector(&mut tx, institution_id, method).await?
            {
                if row.user_id != *user {
                    rows.push(row);
                }
            }
        }
        let mut inferred_cache: HashMap<(String, String), bool> = HashMap::new();
        let mut healths = Vec::new();
        for row in rows {
            let key = (
                row.institution_id.as_str().to_owned(),
                row.method.as_str().to_owned(),
            );
            let inferred = match inferred_cache.get(&key) {
                Some(v) => *v,
                None => {
                    let v = store::connectors::inferred_open(&mut tx, &key.0, &key.1).await?;
                    inferred_cache.insert(key, v);
                    v
                }
            };
            if row.user_id == *user {
                let threshold = classify::consent_threshold(&row.method, row.expiry_date, now);
                match threshold {
                    // One warning per threshold crossed (30, 7, 1 days), not one per sweep.
                    Some(days) if row.consent_warned_days.is_none_or(|w| days < w) => {
                        store::connections::set_consent_warned(
                            &mut tx,
                            &row.connection_id,
                            Some(days),
                        )
                        .await?;
                        notes.push(Note::ConsentExpiring {
                            row: row.clone(),
                            days,
                        });
                    }
                    // Consent renewed: warn again when the new one nears its end.
                    None if row.consent_warned_days.is_some()
                        && row
                            .expiry_date
                            .is_some_and(|e| e - now > chrono::Duration::days(30)) =>
                    {
                        store::connections::set_consent_warned(&mut tx, &row.connection_id, None)
                            .await?;
                    }
                    _ => {}
                }
            }
            let mine = row.user_id == *user;
            let health = self
                .apply_verdict(&mut tx, row, &statuses, inferred, now, &mut notes)
                .await?;
            if mine {
                healths.push(health);
            }
        }
        tx.commit().await?;
        store
            .mark_swept(user, now, self.next_due(user, now))
            .await?;
        self.after_commit(&notes).await?;
        emit(notes);
        Ok(UserOutcome::Swept(healths))
    }

    /// A followed job ended: store it, re-read the connection (one request) and classify it
    /// again.
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
        let now = Utc::now();
        let mut notes = Vec::new();
        let mut tx = self.inner.store.write().await?;
        store::jobs::upsert_job(&mut tx, user, job, Some(connection_id), now).await?;
        store::connections::upsert_connection(&mut tx, user, &connection, Some(job), now).await?;
        let key = (
            connection.institution_id.as_str().to_owned(),
            connection.method.as_str().to_owned(),
        );
        let inferred = store::connectors::inferred_open(&mut tx, &key.0, &key.1).await?;
        let rows = store::connections::rows_for_user(&mut tx, user).await?;
        if let Some(row) = rows.into_iter().find(|r| &r.connection_id == connection_id) {
            self.apply_verdict(&mut tx, row, &statuses, inferred, now, &mut notes)
                .await?;
        }
        tx.commit().await?;
        self.after_commit(&notes).await?;
        emit(notes);
        Ok(())
    }

    /// One pass: `only` names users (swept whether due or not); otherwise every due user,
    /// in batches, until none is due. Stops taking new users when `cancel` fires.
    pub async fn run_pass(
        &self,
        trigger: &str,
        only: Option<Vec<UserId>>,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let progress = &self.inner.progress;
        progress
            .in_pass
            .store(true, std::sync::atomic::Ordering::Relaxed);
        progress.touch();
        let result = self.run_pass_inner(trigger, only, cancel).await;
        progress
            .in_pass
            .store(false, std::sync::atomic::Ordering::Relaxed);
        progress.touch();
        result
    }

    async fn run_pass_inner(
        &self,
        trigger: &str,
        only: Option<Vec<UserId>>,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let store = &self.inner.store;
        let progress = &self.inner.progress;
        let started = Instant::now();
        let sweep_id = store.start_sweep(trigger, Utc::now()).await?;
        let mut counts = SweepCounts::default();
        if !trigger_is_named(trigger) {
            // Connector statuses move without any user being due (an outage ends): read them
            // on every tick, at most once per TTL.
            self.connectors().await;
        }
        let mut named = only;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let batch = match named.take() {
                Some(users) => users,
                None if trigger_is_named(trigger) => break,
                None => {
                    store
                        .due_users(Utc::now(), self.inner.options.batch_size)
                        .await?
                }
            };
            if batch.is_empty() {
                break;
            }
            let results: Vec<(UserId, Result<UserOutcome, SweepError>)> =
                futures_util::stream::iter(batch)
                    .map(|user| async move {
                        if cancel.is_cancelled() {
                            return (user, Ok(UserOutcome::Skipped));
                        }
                        let result = self.sweep_user(&user).await;
                        (user, result)
                    })
                    .buffer_unordered(self.inner.options.concurrency.max(1))
                    .collect()
                    .await;
            for (user, result) in results {
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
                        let retry = Utc::now()
                            + chrono::Duration::from_std(self.inner.options.retry_after)
                                .unwrap_or_default();
                        if let Err(e) = store.set_next_due(&user, retry).await {
                            tracing::error!(user_id = %user, error = %e, "could not postpone the user");
                        }
                        if let SweepError::Store(e) = e {
                            // Infrastructure trouble (full disk, locked database): stop this
                            // pass; the next tick tries again.
                            store.finish_sweep(sweep_id, &counts, Utc::now()).await.ok();
                            return Err(e);
                        }
                    }
                }
            }
        }
        store.finish_sweep(sweep_id, &counts, Utc::now()).await?;
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
            "sweep finished"
        );
        Ok(counts)
    }

    /// The login-time check: sweep the user now unless swept within `login_min_interval`.
    /// Returns whether a sweep ran.
    pub async fn login_check(&self, user: &UserId) -> Result<bool, SweepError> {
        let store = &self.inner.store;
        if store.get_user(user).await?.is_none() {
            self.add_users(std::slice::from_ref(user)).await?;
        }
        let row = store.get_user(user).await?;
        let min =
            chrono::Duration::from_std(self.inner.options.login_min_interval).unwrap_or_default();
        let recent = row
            .and_then(|r| r.last_swept_at)
            .is_some_and(|t| Utc::now() - t < min);
        if recent {
            return Ok(false);
        }
        self.sweep_user(user).await?;
        Ok(true)
    }
}

fn trigger_is_named(trigger: &str) -> bool {
    trigger != "tick"
}

/// The newest job (by `created`) of each connection.
fn newest_jobs<'a>(connections: &[Connection], jobs: &'a [Job]) -> HashMap<ConnectionId, &'a Job> {
    let matched = match_jobs(connections, jobs);
    let mut newest: HashMap<ConnectionId, &Job> = HashMap::new();
    for (job, connection) in jobs.iter().zip(matched) {
        let Some(connection) = connection else {
            continue;
        };
        let entry = newest.entry(connection).or_insert(job);
        if job.created > entry.created {
            *entry = job;
        }
    }
    newest
}

/// Which connection each job belongs to: `links.source`, else the one connection at the
/// job's institution (Basiq allows one active connection per institution and user).
fn match_jobs(connections: &[Connection], jobs: &[Job]) -> Vec<Option<ConnectionId>> {
    jobs.iter()
        .map(|job| {
            if let Some(id) = &job.connection_id {
                return Some(id.clone());
            }
            let institution = job.institution_id.as_ref()?;
            let mut at: Vec<&Connection> = connections
                .iter()
                .filter(|c| &c.institution_id == institution)
                .collect();
            if at.len() > 1 {
                at.retain(|c| c.status == crate::domain::ConnectionStatus::Active);
            }
            (at.len() == 1).then(|| at[0].id.clone())
        })
        .collect()
}

fn emit(notes: Vec<Note>) {
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
            Note::OutageInferred {
                institution_id,
                method,
                users,
            } => tracing::warn!(
                event = "outage_inferred",
                institution_id = %institution_id,
                method = %method,
                users,
                "several users fail bank-side at this connector: treating it as an outage"
            ),
            Note::OutageCleared {
                institution_id,
                method,
            } => tracing::info!(
                event = "outage_cleared",
                institution_id = %institution_id,
                method = %method,
                "inferred outage is over"
            ),
        }
    }
}
