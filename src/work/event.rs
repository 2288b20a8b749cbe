//! An event as a unit of work: the inbox is taken in order and each event does what
//! [`crate::events::action`] says, through the planner and the sweep: fetch (when the event
//! needs Basiq) → plan → commit → emit, like a sweep. How it ended is an
//! [`EventOutcome`], stored on its inbox row.
//!
//! An event is marked processed after its effect is committed. A crash in between does the
//! effect again on restart, which is harmless: a sweep is a sweep, and a plan that finds
//! the state already changed changes nothing. A failure Basiq or the disk may recover from
//! leaves the event for a later round; after [`MAX_ATTEMPTS`] it is marked `failed`.
//!
//! Time is the context's clock: one `now` per event processed, and the idle wait sleeps on
//! it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::context::{Context, SweepError};
use super::emit::emit_notes;
use crate::domain::{EventId, UserId};
use crate::events::{Action, EntityIds, action};
use crate::plan;
use crate::store::events::InboxRow;

/// How an event ended, as stored on its inbox row (`outcome`) and logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// No event type could be read.
    Unreadable,
    /// No user could be found for it, even by `GET /events/{id}`.
    NoUser,
    /// Basiq no longer has the event (it keeps them 7 days).
    EventNotFound,
    /// About a user (or a connection) not watched here.
    NotWatched,
    /// Its user was swept for an earlier event of the same batch.
    SweptAlready,
    Swept,
    ConnectionRemoved,
    ConsentEnded,
    ConsentWarned,
    UserGone,
    UserRegistered,
    /// Stored and counted, nothing done (with why: `not-handled`, ...).
    Ignored(&'static str),
    /// Given up after [`MAX_ATTEMPTS`] tries.
    Failed,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::NoUser => "no-user",
            Self::EventNotFound => "event-not-found",
            Self::NotWatched => "not-watched",
            Self::SweptAlready => "swept-already",
            Self::Swept => "swept",
            Self::ConnectionRemoved => "connection-removed",
            Self::ConsentEnded => "consent-ended",
            Self::ConsentWarned => "consent-warned",
            Self::UserGone => "user-gone",
            Self::UserRegistered => "user-registered",
            Self::Ignored(why) => why,
            Self::Failed => "failed",
        }
    }
}

/// Tries of one event before it is given up (`outcome = failed`): with [`RETRY_BASE`]
/// doubling, the last is about 20 minutes after the first.
pub const MAX_ATTEMPTS: i64 = 8;
/// The wait before the first retry of an event that failed.
pub const RETRY_BASE: Duration = Duration::from_secs(10);
/// How often an idle processor looks at the inbox (a stored webhook wakes it at once).
const IDLE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Processor {
    pub context: Context,
    pub register_new_users: bool,
    pub wake: Arc<tokio::sync::Notify>,
}

impl Processor {
    /// Processes the inbox until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let worked = match self.process_pending(&cancel).await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(event = "inbox_read_failed", error = %e, "cannot read the inbox; trying again");
                    false
                }
            };
            if worked {
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.wake.notified() => {}
                () = self.context.clock().sleep(IDLE) => {}
            }
        }
    }

    /// Processes what the inbox holds now; returns how many events were finished.
    pub async fn process_pending(&self, cancel: &CancellationToken) -> crate::store::Result<usize> {
        let store = self.context.store();
        let clock = self.context.clock();
        let rows = store.unprocessed_events(clock.now(), 32).await?;
        let mut finished = 0;
        let mut swept = HashSet::new();
        for row in rows {
            if cancel.is_cancelled() {
                break;
            }
            // One event, one unit of work: what it does and how it ended are dated alike.
            let now = clock.now();
            match self.process(&row, &mut swept, now).await {
                Ok(outcome) => {
                    store
                        .event_processed(row.seq, outcome.as_str(), now)
                        .await?;
                    // An event handled is progress, for the watchdog and `/healthz`.
                    self.context.progress().touch(self.context.clock().now());
                    tracing::info!(
                        event = "event_processed",
                        delivery_id = %row.delivery_id,
                        event_id = row.event_id.as_deref(),
                        event_type = row.event_type.as_deref(),
                        source = %row.source,
                        outcome = outcome.as_str(),
                        "event processed"
                    );
                    finished += 1;
                }
                Err(e) if row.attempts + 1 >= MAX_ATTEMPTS => {
                    store
                        .event_processed(row.seq, EventOutcome::Failed.as_str(), now)
                        .await?;
                    tracing::error!(event = "event_failed", delivery_id = %row.delivery_id, event_type = row.event_type.as_deref(), error = %e, "gave up on an event after {MAX_ATTEMPTS} tries; the user's daily sweep still covers it");
                    finished += 1;
                }
                Err(e) => {
                    let wait = RETRY_BASE.saturating_mul(1u32 << row.attempts.clamp(0, 16));
                    let retry_at = now + chrono::Duration::from_std(wait).unwrap_or_default();
                    store.event_attempt_failed(row.seq, retry_at).await?;
                    tracing::warn!(event = "event_retry", delivery_id = %row.delivery_id, event_type = row.event_type.as_deref(), error = %e, retry_at = %retry_at.to_rfc3339(), "could not process an event now; tried again later");
                    if matches!(e, SweepError::Store(_)) || e.is_auth() {
                        // The disk or the key: the others would fail the same way.
                        break;
                    }
                }
            }
        }
        Ok(finished)
    }

    /// Does what one event says, at `now`; the outcome to store.
    async fn process(
        &self,
        row: &InboxRow,
        swept: &mut HashSet<UserId>,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, SweepError> {
        match self.resolve(row).await? {
            Ok(act) => self.act(act, swept, now).await,
            Err(outcome) => Ok(outcome),
        }
    }

    /// What the event does, from its type and ids, asking Basiq for the event when its
    /// user is not named; or how it ends without doing anything.
    async fn resolve(&self, row: &InboxRow) -> Result<Result<Action, EventOutcome>, SweepError> {
        let Some(event_type) = row.event_type.as_deref() else {
            return Ok(Err(EventOutcome::Unreadable));
        };
        let mut ids = EntityIds::from_link(row.entity_link.as_deref());
        if let Some(u) = row.user_id.as_deref().and_then(|u| UserId::parse(u).ok()) {
            ids.user_id = Some(u);
        }
        let act = action(event_type, &ids, self.register_new_users);
        if act != Action::NeedsLookup {
            return Ok(Ok(act));
        }
        let Some(id) = row.event_id.as_deref().and_then(|e| EventId::parse(e).ok()) else {
            return Ok(Err(EventOutcome::NoUser));
        };
        let event = match self.context.client().get_event(&id).await {
            Ok(event) => event,
            // Basiq's own `resource-not-found` (it keeps events 7 days): no try will find
            // it. A gateway's 404 is not this error: it is retried like a 5xx.
            Err(crate::basiq::Error::NotFound { .. }) => {
                return Ok(Err(EventOutcome::EventNotFound));
            }
            Err(e) => return Err(e.into()),
        };
        let mut looked = EntityIds::from_link(event.data_ref.as_deref());
        if event.user_id.is_some() {
            looked.user_id = event.user_id;
        }
        Ok(match action(event_type, &looked, self.register_new_users) {
            Action::NeedsLookup => Err(EventOutcome::NoUser),
            act => Ok(act),
        })
    }

    /// Does `act` at `now`. Several events about one user at once (five connections made
    /// together) cost one sweep: every event of a batch was stored before the batch began,
    /// so a sweep made for one of them has seen them all.
    async fn act(
        &self,
        act: Action,
        swept: &mut HashSet<UserId>,
        now: DateTime<Utc>,
    ) -> Result<EventOutcome, SweepError> {
        let store = self.context.store();
        let watched = |user: &UserId| {
            let user = user.clone();
            async move { store.get_user(&user).await.map(|u| u.is_some()) }
        };
        if let Action::Sweep(user)
        | Action::ConsentEnded(user, _)
        | Action::ConsentWarning(user)
        | Action::UserDeleted(user) = &act
            && !watched(user).await?
        {
            return Ok(EventOutcome::NotWatched);
        }
        Ok(match act {
            Action::Sweep(user) => {
                if !self.sweep_once(user, swept).await? {
                    return Ok(EventOutcome::SweptAlready);
                }
                EventOutcome::Swept
            }
            Action::ConnectionDeleted(user, connection) => {
                if store.connection_deleted(&user, &connection, now).await? {
                    EventOutcome::ConnectionRemoved
                } else {
                    EventOutcome::NotWatched
                }
            }
            Action::ConsentEnded(user, reason) => {
                let rows = store.all_connections(Some(&user)).await?;
                let plan = plan::plan_consent_ended(&user, rows, reason, now);
                super::write::commit_plan(store, &plan, now).await?;
                emit_notes(plan.notes);
                // What Basiq now says of the user's other connections (those it did not
                // name a method for included); the consent's end is kept.
                self.sweep_once(user, swept).await?;
                EventOutcome::ConsentEnded
            }
            Action::ConsentWarning(user) => {
                let rows = store.all_connections(Some(&user)).await?;
                let plan = plan::plan_consent_warning(&user, rows, now);
                super::write::commit_plan(store, &plan, now).await?;
                emit_notes(plan.notes);
                EventOutcome::ConsentWarned
            }
            Action::UserDeleted(user) => {
                store.mark_gone(&user, now).await?;
                EventOutcome::UserGone
            }
            Action::UserCreated(user) => {
                self.context.add_users_at(&[user], now).await?;
                EventOutcome::UserRegistered
            }
            Action::NeedsLookup => EventOutcome::NoUser,
            Action::Ignore(why) => EventOutcome::Ignored(why),
        })
    }

    /// Sweeps `user` unless this batch swept it already; whether it swept.
    async fn sweep_once(
        &self,
        user: UserId,
        swept: &mut HashSet<UserId>,
    ) -> Result<bool, SweepError> {
        if swept.contains(&user) {
            return Ok(false);
        }
        self.context.sweep_user(&user).await?;
        swept.insert(user);
        Ok(true)
    }
}
