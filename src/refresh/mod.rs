//! Refreshing without hurting banks: every refresh, whatever asked for it, passes the pure
//! gates (`policy::decide`), the pacer, and an atomic reservation in SQLite committed before
//! the request is sent; then its job is followed to the end.
//!
//! Never calls the bulk endpoint. Knows the store, the client and the context; the decisions
//! themselves live in `policy`.
//!
//! Time is the context's clock: one `now` per attempt (see [`Refresher::request`]), one per
//! owed connection, and the pacer and the followers wait on it.

mod follow;
pub mod pace;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::basiq::{self, RefreshOutcome};
use crate::domain::{ConnectionId, JobId, JobState, UserId};
use crate::plan::ConnectionRow;
use crate::plan::ConnectorStatuses;
use crate::plan::policy::schedule::Owed;
use crate::plan::policy::{self, DecisionKind, Denial, RefreshFacts, RefreshMode, Trigger};
use crate::settings::RefreshSettings;
use crate::work::{Context, SweepError};
use pace::{Paced, Pacer};

/// The answer to one refresh request, as `refresh` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// `refreshed` or `denied`.
    pub decision: &'static str,
    pub reason: Option<String>,
    pub job_id: Option<String>,
    pub trigger: &'static str,
    pub dry_run: bool,
    pub connection_id: String,
    pub user_id: String,
}

impl Decision {
    pub fn refreshed(&self) -> bool {
        self.decision == "refreshed"
    }
}

/// How a request ended before it became a decision.
enum Gate {
    /// With when it could go, if the gate knows (the recency floor, the cap).
    Denied(Denial, Option<DateTime<Utc>>),
    /// The pace did not allow it within `max_wait`: the caller keeps it due for a later tick.
    Deferred,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Sweep(#[from] SweepError),
    #[error(transparent)]
    Basiq(#[from] basiq::Error),
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    #[error("connection {connection_id} of user {user_id} is not known (Basiq does not list it)")]
    UnknownConnection {
        user_id: UserId,
        connection_id: ConnectionId,
    },
}

impl RefreshError {
    /// Basiq refused the API key.
    pub fn is_auth(&self) -> bool {
        match self {
            Self::Sweep(e) => e.is_auth(),
            Self::Basiq(e) => e.is_auth(),
            _ => false,
        }
    }
}

struct Inner {
    context: Context,
    settings: RefreshSettings,
    pacer: Pacer,
    seed: u64,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Decisions by (decision, reason), for metrics.
    decisions: Mutex<BTreeMap<(String, String), u64>>,
    deferred: AtomicU64,
    /// Followed jobs whose end could not be read (unreadable, still running at the follow
    /// timeout, or stopped by shutdown).
    unfinished_follows: AtomicU64,
}

/// Cheap to clone; every clone shares the pacer and the followers.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

impl Refresher {
    pub async fn new(context: Context, settings: RefreshSettings) -> Result<Self, RefreshError> {
        let seed = context.store().installation_seed().await?;
        // Jitter well under the pace interval, so it spreads waiters without slowing the pace.
        let interval_ms = 60_000 / u64::from(settings.global_per_minute.get());
        let pacer = Pacer::new(
            settings.global_per_minute,
            settings.per_institution_per_minute,
            context.clock().clone(),
        )
        .with_max_jitter(std::time::Duration::from_millis(
            (interval_ms / 4).min(1000),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                context,
                settings,
                pacer,
                seed,
                tracker: TaskTracker::new(),
                cancel: CancellationToken::new(),
                decisions: Mutex::new(BTreeMap::new()),
                deferred: AtomicU64::new(0),
                unfinished_follows: AtomicU64::new(0),
            }),
        })
    }

    pub fn context(&self) -> &Context {
        &self.inner.context
    }

    pub fn settings(&self) -> &RefreshSettings {
        &self.inner.settings
    }

    /// Decisions so far by (decision, reason).
    pub fn decision_counts(&self) -> BTreeMap<(String, String), u64> {
        self.inner
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn deferred_count(&self) -> u64 {
        self.inner.deferred.load(Ordering::Relaxed)
    }

    /// Jobs being followed now.
    pub fn followers_in_flight(&self) -> usize {
        self.inner.tracker.len()
    }

    /// How many followed jobs were not read to their end (`refresh --follow` exits 1).
    pub fn unfinished_follows(&self) -> u64 {
        self.inner.unfinished_follows.load(Ordering::Relaxed)
    }

    /// Stops following jobs and waits for the followers (they stop at their next poll).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Waits until every job being followed has ended (tests, one-shot commands).
    pub async fn wait_for_followers(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner.tracker.reopen();
    }

    /// One refresh request through every gate. `follow`: poll its job to the end in the
    /// background. A paced-out request is reported as denied with reason `deferred`.
    pub async fn request(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        trigger: Trigger,
        dry_run: bool,
        follow: bool,
    ) -> Result<Decision, RefreshError> {
        let now = self.inner.context.clock().now();
        let decision = match self
            .attempt(user, connection, trigger, dry_run, follow, now)
            .await?
        {
            Ok(job_id) => self.decision(user, connection, trigger, dry_run, None, job_id),
            Err(Gate::Denied(denial, _)) => self.decision(
                user,
                connection,
                trigger,
                dry_run,
                Some(denial.as_str().to_owned()),
                None,
            ),
            Err(Gate::Deferred) => {
                self.inner.deferred.fetch_add(1, Ordering::Relaxed);
                self.decision(
                    user,
                    connection,
                    trigger,
                    dry_run,
                    Some("deferred".into()),
                    None,
                )
            }
        };
        Ok(decision)
    }

    fn decision(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        trigger: Trigger,
        dry_run: bool,
        reason: Option<String>,
        job_id: Option<JobId>,
    ) -> Decision {
        let decision = if reason.is_none() {
            "refreshed"
        } else {
            "denied"
        };
        *self
            .inner
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((decision.to_owned(), reason.clone().unwrap_or_default()))
            .or_default() += 1;
        if let Some(reason) = &reason {
            tracing::info!(
                event = "refresh_denied",
                user_id = %user,
                connection_id = %connection,
                trigger = trigger.as_str(),
                reason = reason.as_str(),
                dry_run,
                "refresh denied"
            );
        }
        Decision {
            decision,
            reason,
            job_id: job_id.map(|j| j.as_str().to_owned()),
            trigger: trigger.as_str(),
            dry_run,
            connection_id: connection.to_string(),
            user_id: user.to_string(),
        }
    }

    /// One attempt, at `now`: the gates decide on it, and the decision, the reservation and
    /// the request's outcome are recorded at it. A pacer that made the attempt wait moves
    /// its `now` to when it let the attempt go (see [`Refresher::attempt_row`]).
    async fn attempt(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        trigger: Trigger,
        dry_run: bool,
        follow: bool,
        now: DateTime<Utc>,
    ) -> Result<Result<Option<JobId>, Gate>, RefreshError> {
        let store = self.inner.context.store();
        let Some(row) = store.connection(connection).await? else {
            return Err(RefreshError::UnknownConnection {
                user_id: user.clone(),
                connection_id: connection.clone(),
            });
        };
        if row.user_id != *user || row.gone_at.is_some() {
            return Err(RefreshError::UnknownConnection {
                user_id: user.clone(),
                connection_id: connection.clone(),
            });
        }
        let mut now = now;
        let result = self
            .attempt_row(&row, trigger, dry_run, follow, &mut now)
            .await;
        if !dry_run {
            let (kind, reason, job) = match &result {
                Ok(Ok(job)) => (
                    DecisionKind::Refreshed,
                    None,
                    job.as_ref().map(|j| j.as_str().to_owned()),
                ),
                Ok(Err(Gate::Denied(d, _))) => (DecisionKind::Denied, Some(d.as_str()), None),
                Ok(Err(Gate::Deferred)) => (DecisionKind::Deferred, Some("deferred"), None),
                Err(_) => (
                    DecisionKind::Denied,
                    Some(Denial::RequestFailed.as_str()),
                    None,
                ),
            };
            if let Err(e) = store
                .record_decision(&row, trigger, kind, reason, job.as_deref(), now)
                .await
            {
                tracing::error!(connection_id = %row.connection_id, error = %e, "could not store the refresh decision");
            }
            // An attempt decided is progress, for the watchdog and /healthz.
            let context = &self.inner.context;
            context.progress().touch(context.clock().now());
        }
        result
    }

    /// The gates, the pace, the reservation and the request, all at `now`. The unit of time
    /// of an attempt starts when it may go: a pacer that made it wait (up to
    /// `refresh.max_wait`) sets `now` afresh, and the rest of the attempt (the reservation,
    /// the outcome, the decision recorded by the caller) is dated by that.
    async fn attempt_row(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        dry_run: bool,
        follow: bool,
        now: &mut DateTime<Utc>,
    ) -> Result<Result<Option<JobId>, Gate>, RefreshError> {
        let store = self.inner.context.store();
        let user = &row.user_id;
        let connection = &row.connection_id;
        if let Err(gate) = self.gate(row, trigger, *now).await? {
            return Ok(Err(gate));
        }
        if dry_run {
            return Ok(Ok(None));
        }
        match self
            .inner
            .pacer
            .acquire(row.institution_id.as_str(), self.inner.settings.max_wait)
            .await
        {
            Err(_) => return Ok(Err(Gate::Deferred)),
            Ok(Paced::AfterWaiting) => {
                // Decided when acting, not only when planning: what a sweep read while the
                // pace held this refresh back (a success, `lastUsed`) is decided on again.
                *now = self.inner.context.clock().now();
                let row = store
                    .connection(connection)
                    .await?
                    .unwrap_or_else(|| row.clone());
                if let Err(gate) = self.gate(&row, trigger, *now).await? {
                    return Ok(Err(gate));
                }
            }
            Ok(Paced::AtOnce) => {}
        }
        let now = *now;
        // The cap and the floor, atomically and durably, before the request leaves.
        let cap = policy::cap_for(&row.method, trigger, &self.inner.settings.limits);
        let attempt = match store
            .reserve_refresh(
                row,
                trigger,
                cap,
                self.inner.settings.limits.min_interval,
                now,
            )
            .await?
        {
            Ok(id) => id,
            Err(denial) => return Ok(Err(Gate::Denied(denial, None))),
        };
        let client = self.inner.context.client();
        match client.refresh_connection(user, connection).await {
            Ok(outcome) => {
                let (label, job_id) = match &outcome {
                    RefreshOutcome::Created(j) => ("created", j.clone()),
                    RefreshOutcome::Existing(j) => ("existing", j.clone()),
                    RefreshOutcome::FoundAfterTimeout(j) => ("found-after-timeout", j.clone()),
                };
                store
                    .finish_refresh(attempt, label, Some(job_id.as_str()), None, now)
                    .await?;
                tracing::info!(
                    event = "refresh_sent",
                    user_id = %user,
                    connection_id = %connection,
                    job_id = %job_id,
                    trigger = trigger.as_str(),
                    outcome = label,
                    "refresh requested"
                );
                if follow {
                    self.follow(user.clone(), connection.clone(), job_id.clone());
                }
                Ok(Ok(Some(job_id)))
            }
            Err(e) => {
                let status = e.status();
                let capped = matches!(status, Some(429 | 403));
                let label = if capped {
                    "capped-by-basiq"
                } else if matches!(e, basiq::Error::Rejected { .. }) {
                    "rejected"
                } else {
                    "failed"
                };
                store
                    .finish_refresh(attempt, label, None, status, now)
                    .await?;
                tracing::warn!(
                    event = "refresh_failed",
                    user_id = %user,
                    connection_id = %connection,
                    trigger = trigger.as_str(),
                    status,
                    correlation_id = e.correlation_id(),
                    outcome = label,
                    error = %e,
                    "refresh request failed"
                );
                if capped {
                    // Basiq's own count includes the partner app's refreshes: no more
                    // attempts until our window has room again (at least an hour).
                    let (_, _, oldest) = store.refresh_window(connection, now).await?;
                    let until = oldest
                        .map(|o| o + crate::plan::policy::CAP_WINDOW)
                        .unwrap_or(now)
                        .max(now + chrono::Duration::hours(1));
                    store.set_basiq_capped(connection, until).await?;
                    return Ok(Err(Gate::Denied(Denial::DailyCap, Some(until))));
                }
                if let basiq::Error::Rejected { api } = &e {
                    // Refused for the user's reason (a 400 `invalid-credentials`): the user
                    // must act now, and nothing is retried automatically.
                    let code = api.code.as_deref().unwrap_or_default();
                    if let Some(plan) = crate::plan::plan_refresh_rejected(row, code, now) {
                        crate::work::write::commit_plan(store, &plan, now).await?;
                        crate::work::emit_notes(plan.notes);
                        return Ok(Err(Gate::Denied(Denial::NeedsUserAction, None)));
                    }
                    if row.status != crate::domain::ConnectionStatus::Active
                        || code.contains("not-active")
                    {
                        return Ok(Err(Gate::Denied(Denial::ConnectionNotActive, None)));
                    }
                    return Ok(Err(Gate::Denied(Denial::RejectedByBasiq, None)));
                }
                Err(e.into())
            }
        }
    }

    /// The gates on the newest facts: the stored row with what this process read and has
    /// not committed yet, the connector statuses, the cap's window.
    async fn gate(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        now: DateTime<Utc>,
    ) -> Result<Result<(), Gate>, RefreshError> {
        let row = self.inner.context.freshest(row);
        let statuses = self.inner.context.connectors().await;
        let facts = self.facts(&row, &statuses, now).await?;
        let limits = &self.inner.settings.limits;
        Ok(
            policy::decide(trigger, &facts.facts(), limits).map_err(|denial| {
                Gate::Denied(denial, policy::not_before(trigger, &facts.facts(), limits))
            }),
        )
    }

    /// Everything the gates look at for one stored connection, from the store and the
    /// given connector statuses (the `plan` dry run passes the cached ones).
    pub async fn facts(
        &self,
        row: &ConnectionRow,
        statuses: &ConnectorStatuses,
        now: DateTime<Utc>,
    ) -> Result<GateFacts, RefreshError> {
        let store = self.inner.context.store();
        let view = statuses.view(row.institution_id.as_str(), &row.method);
        let inferred = {
            let mut conn = store.pool().acquire().await?;
            crate::store::connectors::inferred_open(
                &mut conn,
                row.institution_id.as_str(),
                row.method.as_str(),
            )
            .await?
        };
        let (attempts, last_attempt, oldest_attempt) =
            store.refresh_window(&row.connection_id, now).await?;
        let job_running = row.newest_job.as_ref().is_some_and(|j| {
            j.state == JobState::InProgress
                && j.created
                    .is_none_or(|c| now - c <= crate::plan::classify::JOB_RETENTION)
        });
        Ok(GateFacts {
            row: row.clone(),
            view,
            inferred,
            job_running,
            last_attempt,
            oldest_attempt,
            attempts,
            now,
        })
    }

    fn follow(&self, user: UserId, connection: ConnectionId, job: JobId) {
        let this = self.clone();
        self.inner.tracker.spawn(async move {
            if follow::follow_job(&this, &user, &connection, &job).await
                != follow::Followed::ToTheEnd
            {
                this.inner
                    .unfinished_follows
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// The login-time check: sweep the user (unless swept very recently), then ask for a
    /// login-triggered refresh of each connection; the gates decide which go.
    pub async fn login(&self, user: &UserId) -> Result<(bool, Vec<Decision>), RefreshError> {
        let swept = self.inner.context.login_check(user).await?;
        let mut decisions = Vec::new();
        if self.inner.settings.limits.mode == RefreshMode::Off {
            return Ok((swept, decisions));
        }
        let rows = self
            .inner
            .context
            .store()
            .all_connections(Some(user))
            .await?;
        for row in rows {
            decisions.push(
                self.request(user, &row.connection_id, Trigger::Login, false, true)
                    .await?,
            );
        }
        Ok((swept, decisions))
    }

    /// The dry run of the next 24 hours: for every registered connection (of `users`, or
    /// all), when the daemon would refresh it and why, or why not. Reads the store and the
    /// last known connector statuses only: sends nothing and reserves nothing.
    pub async fn dry_run(
        &self,
        users: Option<&[UserId]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<PlanLine>, RefreshError> {
        let store = self.inner.context.store();
        let statuses = store.connector_statuses().await?;
        let mut rows = Vec::new();
        match users {
            Some(users) => {
                for u in users {
                    rows.extend(store.all_connections(Some(u)).await?);
                }
            }
            None => rows = store.all_connections(None).await?,
        }
        let limits = &self.inner.settings.limits;
        let window = self.inner.settings.unattended_window;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let facts = self.facts(&row, &statuses, now).await?;
            let daily = (limits.mode == RefreshMode::Daily).then(|| {
                row.daily_due_at.filter(|t| *t >= now).unwrap_or_else(|| {
                    window.slot(self.inner.seed, row.connection_id.as_str(), now)
                })
            });
            let upcoming = policy::schedule::upcoming(
                &facts.facts(),
                row.refresh_due,
                daily,
                facts.oldest_attempt,
                limits,
                chrono::Duration::hours(24),
            );
            let note = late_recovery(
                &upcoming,
                row.refresh_due,
                self.inner.settings.recovery_window,
            );
            out.push(PlanLine {
                user_id: row.user_id.to_string(),
                connection_id: row.connection_id.to_string(),
                institution_id: row.institution_id.to_string(),
                method: row.method.as_str().to_owned(),
                health: row.health.map(|h| h.as_str().to_owned()),
                upcoming,
                note,
            });
        }
        Ok(out)
    }

    /// The refreshes the daemon owes: recoveries, transient retries and (daily mode) each
    /// connection's slot in the unattended window. Deferred ones stay due.
    pub async fn run_due(&self, cancel: &CancellationToken) -> Result<u64, RefreshError> {
        let store = self.inner.context.store().clone();
        let limits = &self.inner.settings.limits;
        if limits.mode == RefreshMode::Off {
            return Ok(0);
        }
        let daily = limits.mode == RefreshMode::Daily;
        let window = self.inner.settings.unattended_window;
        let clock = self.inner.context.clock();
        if daily {
            for id in store.connections_without_daily_slot(1000).await? {
                let slot = window.slot(self.inner.seed, id.as_str(), clock.now());
                store.set_daily_due(&id, Some(slot)).await?;
            }
        }
        let mut sent = 0;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let due = store.due_refreshes(clock.now(), daily, 50).await?;
            if due.is_empty() {
                break;
            }
            // A few at once, so the pacer (not request latency) sets the speed.
            let outcomes: Vec<Result<Option<bool>, RefreshError>> = futures_util::stream::iter(due)
                .map(|id| self.run_one_due(id, window, cancel))
                .buffer_unordered(4)
                .collect()
                .await;
            let mut deferred_any = false;
            for outcome in outcomes {
                match outcome? {
                    Some(true) => sent += 1,
                    Some(false) => {}
                    None => deferred_any = true,
                }
            }
            if deferred_any {
                // The pace is spent: the rest waits for a later tick.
                break;
            }
        }
        Ok(sent)
    }
}

/// What the gates look at for one connection, owned; [`GateFacts::facts`] borrows it as
/// the pure [`RefreshFacts`].
#[derive(Clone, Debug)]
pub struct GateFacts {
    pub row: ConnectionRow,
    pub view: crate::plan::classify::ConnectorView,
    pub inferred: bool,
    pub job_running: bool,
    pub last_attempt: Option<DateTime<Utc>>,
    pub oldest_attempt: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub now: DateTime<Utc>,
}

impl GateFacts {
    pub fn facts(&self) -> RefreshFacts<'_> {
        RefreshFacts {
            status: &self.row.status,
            method: &self.row.method,
            health: self.row.health,
            job_running: self.job_running,
            needs_user_present: self.row.needs_user_present,
            last_used: self.row.last_used,
            newest_job_at: self.row.newest_job_at(),
            newest_success_at: self
                .row
                .newest_job
                .as_ref()
                .filter(|j| j.state == JobState::Success)
                .and_then(|j| j.created.or(j.updated)),
            incident_since: self.row.refresh_due.and_then(|o| o.since),
            last_attempt: self.last_attempt,
            connector: &self.view,
            outage_inferred: self.inferred,
            attempts_last_24h: self.attempts,
            basiq_capped_until: self.row.basiq_capped_until,
            now: self.now,
        }
    }
}

/// One connection's next 24 hours, as `plan` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanLine {
    pub user_id: String,
    pub connection_id: String,
    pub institution_id: String,
    pub method: String,
    pub health: Option<String>,
    /// `{"refresh_at", "trigger"}` or `{"denied": reason}`.
    #[serde(flatten)]
    pub upcoming: policy::schedule::Upcoming,
    /// Why a recovery comes later than `refresh.recovery_window` after its outage's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// A recovery planned later than `recovery_window` after its outage ended.
fn late_recovery(
    upcoming: &policy::schedule::Upcoming,
    owed: Option<policy::schedule::Owed>,
    window: std::time::Duration,
) -> Option<&'static str> {
    let policy::schedule::Upcoming::Refresh {
        refresh_at,
        trigger: Trigger::Recovery,
    } = upcoming
    else {
        return None;
    };
    let ended = owed?.since?;
    let window = chrono::Duration::from_std(window).ok()?;
    (*refresh_at > ended + window).then_some(
        "after refresh.recovery_window: the per-bank pace cannot send this outage's \
         recoveries within it (spread over the shortest window it allows), or the recency \
         floor comes later",
    )
}

/// What `purge` found or did.
#[derive(Clone, Debug)]
pub enum PurgeOutcome {
    /// Not confirmed: what would be removed.
    WouldPurge(crate::domain::Connection),
    /// Basiq can only purge active connections.
    NotActive(crate::domain::Connection),
    Purged(crate::domain::Connection),
}

impl Refresher {
    /// `POST .../purge` after checking the connection is active; every request is audited.
    /// Purge deletes the connection's accounts and transactions and keeps its id.
    pub async fn purge(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
        confirmed: bool,
    ) -> Result<PurgeOutcome, RefreshError> {
        let client = self.inner.context.client();
        let store = self.inner.context.store();
        let connection = client.get_connection(user, connection_id).await?;
        // One command, one `now`: when the connection was read and the purge decided.
        let now = self.inner.context.clock().now();
        let institution = Some(connection.institution_id.as_str());
        if connection.status != crate::domain::ConnectionStatus::Active {
            store
                .record_purge(
                    user,
                    connection_id,
                    institution,
                    "refused-not-active",
                    None,
                    None,
                    Some(connection.status.as_str()),
                    now,
                )
                .await?;
            return Ok(PurgeOutcome::NotActive(connection));
        }
        if !confirmed {
            return Ok(PurgeOutcome::WouldPurge(connection));
        }
        match client.purge_connection(user, connection_id).await {
            Ok(()) => {
                store
                    .record_purge(
                        user,
                        connection_id,
                        institution,
                        "purged",
                        Some(204),
                        None,
                        None,
                        now,
                    )
                    .await?;
                tracing::warn!(
                    event = "connection_purged",
                    user_id = %user,
                    connection_id = %connection_id,
                    institution_id = %connection.institution_id,
                    "connection purged: accounts and transactions deleted, id kept"
                );
                Ok(PurgeOutcome::Purged(connection))
            }
            Err(e) => {
                store
                    .record_purge(
                        user,
                        connection_id,
                        institution,
                        "failed",
                        e.status(),
                        e.correlation_id(),
                        Some(&e.to_string()),
                        now,
                    )
                    .await?;
                Err(e.into())
            }
        }
    }
}

impl Refresher {
    /// One owed refresh. `Some(sent)` when it was decided, `None` when deferred by the pace.
    async fn run_one_due(
        &self,
        id: ConnectionId,
        window: policy::DailyWindow,
        cancel: &CancellationToken,
    ) -> Result<Option<bool>, RefreshError> {
        let store = self.inner.context.store();
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let Some(row) = store.connection(&id).await? else {
            return Ok(Some(false));
        };
        let now = self.inner.context.clock().now();
        let owed = row.refresh_due.filter(|o| o.at <= now);
        let trigger = owed.map_or(Trigger::Scheduled, |o| o.trigger);
        // Unattended slots outside the window wait for the next one.
        if trigger == Trigger::Scheduled && !window.contains(now) {
            store
                .set_daily_due(&id, Some(window.slot(self.inner.seed, id.as_str(), now)))
                .await?;
            return Ok(Some(false));
        }
        let outcome = self
            .attempt(&row.user_id, &id, trigger, false, true, now)
            .await;
        let (sent, retry_at) = match outcome {
            Ok(Ok(job)) => {
                self.decision(&row.user_id, &id, trigger, false, None, job);
                (true, None)
            }
            Ok(Err(Gate::Deferred)) => {
                self.inner.deferred.fetch_add(1, Ordering::Relaxed);
                self.decision(
                    &row.user_id,
                    &id,
                    trigger,
                    false,
                    Some("deferred".into()),
                    None,
                );
                return Ok(None);
            }
            Ok(Err(Gate::Denied(denial, when))) => {
                self.decision(
                    &row.user_id,
                    &id,
                    trigger,
                    false,
                    Some(denial.as_str().to_owned()),
                    None,
                );
                // A refresh owed but held by a gate that opens by itself (the recency floor,
                // the cap, a status not known yet) stays owed until then; the other gates
                // end it (the next verdict decides again).
                let when = match denial {
                    Denial::RecentlyRefreshed | Denial::DailyCap => {
                        when.or(Some(now + chrono::Duration::hours(1)))
                    }
                    Denial::ConnectorStatusUnknown => Some(now + chrono::Duration::minutes(5)),
                    _ => None,
                };
                (false, when)
            }
            Err(e) => {
                tracing::warn!(user_id = %row.user_id, connection_id = %id, error = %e, "owed refresh failed");
                self.decision(
                    &row.user_id,
                    &id,
                    trigger,
                    false,
                    Some(Denial::RequestFailed.as_str().to_owned()),
                    None,
                );
                (false, None)
            }
        };
        match trigger {
            Trigger::Scheduled => {
                let (_, end) = window.occurrence(now);
                let next = window.slot(
                    self.inner.seed,
                    id.as_str(),
                    end + chrono::Duration::seconds(1),
                );
                store.set_daily_due(&id, Some(next)).await?;
            }
            _ => {
                let since = row.refresh_due.and_then(|o| o.since);
                let owed = retry_at.map(|at| Owed { at, trigger, since });
                // Only if nothing replaced it meanwhile (a followed job's end plans anew).
                store
                    .replace_refresh_due(&id, row.refresh_due, owed)
                    .await?;
            }
        }
        Ok(Some(sent))
    }
}
