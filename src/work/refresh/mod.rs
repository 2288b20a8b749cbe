//! Refreshing without hurting banks, as units of work: every refresh, whatever asked for it,
//! passes the pure gates ([`crate::plan::policy::decide`]), the pacer, and an atomic
//! reservation in SQLite committed before the request is sent; then its job is followed to
//! the end. What an attempt came to is the planner's [`RefreshDecision`]; what follows from
//! a failed request (Basiq's cap, a rejection, how long a denied refresh stays owed) is
//! decided there too ([`crate::plan::policy::attempt`]).
//!
//! - [`request`]: one refresh request (a command, the API, a login) through every gate;
//! - [`gate`]: the facts the gates read, on the newest reads;
//! - [`due`]: the refreshes the daemon owes (recoveries, retries, daily slots);
//! - [`dry_run`]: the next 24 hours, as `plan` prints them;
//! - [`purge`]: `POST .../purge`, audited;
//! - [`follow`]: a sent refresh's job, polled to its end;
//! - [`pace`]: the per-bank and global pace.
//!
//! Never calls the bulk endpoint. Time is the context's clock: one `now` per attempt, one
//! per owed connection, and the pacer and the followers wait on it.

pub mod dry_run;
pub mod due;
mod follow;
pub mod gate;
pub mod pace;
pub mod purge;
pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::basiq;
use crate::domain::{ConnectionId, JobId, UserId};
use crate::plan::policy::{RefreshDecision, Trigger};
use crate::settings::RefreshSettings;
use crate::work::{Context, SweepError};
use pace::Pacer;

pub use dry_run::PlanLine;
pub use gate::GateFacts;
pub use purge::PurgeOutcome;

/// The answer to one refresh request, as `refresh` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = RefreshDecision)]
pub struct Decision {
    pub decision: Answer,
    /// The denial's reason code, or `deferred`.
    pub reason: Option<String>,
    pub job_id: Option<String>,
    pub trigger: Trigger,
    pub dry_run: bool,
    pub connection_id: String,
    pub user_id: String,
}

/// A request's answer as printed: a deferred request is denied with reason `deferred`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
#[schema(as = RefreshAnswer)]
pub enum Answer {
    Refreshed,
    Denied,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refreshed => "refreshed",
            Self::Denied => "denied",
        }
    }
}

impl Decision {
    /// The printed answer to `decision`.
    fn of(
        user: &UserId,
        connection: &ConnectionId,
        trigger: Trigger,
        dry_run: bool,
        decision: &RefreshDecision,
    ) -> Self {
        Self {
            decision: match decision {
                RefreshDecision::Refreshed(_) => Answer::Refreshed,
                _ => Answer::Denied,
            },
            reason: decision.reason().map(str::to_owned),
            job_id: decision.job().map(|j| j.as_str().to_owned()),
            trigger,
            dry_run,
            connection_id: connection.to_string(),
            user_id: user.to_string(),
        }
    }

    pub fn refreshed(&self) -> bool {
        self.decision == Answer::Refreshed
    }
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
}
