//! Takes the inbox in order and does what each event says, through the planner and the
//! sweep: fetch (when the event needs Basiq) → plan → commit → emit, like a sweep.
//!
//! An event is marked processed after its effect is committed. A crash in between does the
//! effect again on restart, which is harmless: a sweep is a sweep, and a plan that finds
//! the state already changed changes nothing. A failure Basiq or the disk may recover from
//! leaves the event for a later round; after [`MAX_ATTEMPTS`] it is marked `failed`.
//!
//! Time is the context's clock: one `now` per event processed, and the idle wait sleeps on
//! it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Action, EntityIds, action};
use crate::domain::{EventId, UserId};
use crate::plan;
use crate::store::events::InboxRow;
use crate::work::{Context, SweepError, emit_notes};

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
        let mut swept = std::collections::HashSet::new();
        for row in rows {
            if cancel.is_cancelled() {
                break;
            }
            // One event, one unit of work: what it does and how it ended are dated alike.
            let now = clock.now();
            match self.process(&row, &mut swept, now).await {
                Ok(outcome) => {
                    store.event_processed(row.seq, outcome, now).await?;
                    // An event handled is progress, for the watchdog and `/healthz`.
                    self.context.progress().touch(self.context.clock().now());
                    tracing::info!(
                        event = "event_processed",
                        delivery_id = %row.delivery_id,
                        event_id = row.event_id.as_deref(),
                        event_type = row.event_type.as_deref(),
                        source = %row.source,
                        outcome,
                        "event processed"
                    );
                    finished += 1;
                }
                Err(e) if row.attempts + 1 >= MAX_ATTEMPTS => {
                    store.event_processed(row.seq, "failed", now).await?;
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
        swept: &mut std::collections::HashSet<UserId>,
        now: DateTime<Utc>,
    ) -> Result<&'static str, SweepError> {
        let Some(event_type) = row.event_type.as_deref() else {
            return Ok("unreadable");
        };
        let mut ids = EntityIds::from_link(row.entity_link.as_deref());
        if let Some(u) = row.user_id.as_deref().and_then(|u| UserId::parse(u).ok()) {
            ids.user_id = Some(u);
        }
        let mut act = action(event_type, &ids, self.register_new_users);
        if act == Action::NeedsLookup {
            let Some(id) = row.event_id.as_deref().and_then(|e| EventId::parse(e).ok()) else {
                return Ok("no-user");
            };
            let event = match self.context.client().get_event(&id).await {
                Ok(event) => event,
                // Basiq's own `resource-not-found` (it keeps events 7 days): no try will find
                // it. A gateway's 404 is not this error: it is retried like a 5xx.
                Err(crate::basiq::Error::NotFound { .. }) => return Ok("event-not-found"),
                Err(e) => return Err(e.into()),
            };
            let mut looked = EntityIds::from_link(event.data_ref.as_deref());
            if event.user_id.is_some() {
                looked.user_id = event.user_id;
            }
            act = action(event_type, &looked, self.register_new_users);
            if act == Action::NeedsLookup {
                return Ok("no-user");
            }
        }
        let store = self.context.store();
        let watched = |user: &UserId| {
            let user = user.clone();
            async move { store.get_user(&user).await.map(|u| u.is_some()) }
        };
        Ok(match act {
            Action::Sweep(user) => {
                if !watched(&user).await? {
                    return Ok("not-watched");
                }
                // Several events about one user at once (five connections made together)
                // cost one sweep: every event of this batch was stored before the batch
                // began, so a sweep made for one of them has seen them all.
                if swept.contains(&user) {
                    return Ok("swept-already");
                }
                self.context.sweep_user(&user).await?;
                swept.insert(user);
                "swept"
            }
            Action::ConnectionDeleted(user, connection) => {
                if store.connection_deleted(&user, &connection, now).await? {
                    "connection-removed"
                } else {
                    "not-watched"
                }
            }
            Action::ConsentEnded(user, reason) => {
                if !watched(&user).await? {
                    return Ok("not-watched");
                }
                let rows = store.all_connections(Some(&user)).await?;
                let plan = plan::plan_consent_ended(&user, rows, reason, now);
                crate::work::write::commit_plan(store, &plan, now).await?;
                emit_notes(plan.notes);
                // What Basiq now says of the user's other connections (those it did not
                // name a method for included); the consent's end is kept.
                if !swept.contains(&user) {
                    self.context.sweep_user(&user).await?;
                    swept.insert(user);
                }
                "consent-ended"
            }
            Action::ConsentWarning(user) => {
                if !watched(&user).await? {
                    return Ok("not-watched");
                }
                let rows = store.all_connections(Some(&user)).await?;
                let plan = plan::plan_consent_warning(&user, rows, now);
                crate::work::write::commit_plan(store, &plan, now).await?;
                emit_notes(plan.notes);
                "consent-warned"
            }
            Action::UserDeleted(user) => {
                if !watched(&user).await? {
                    return Ok("not-watched");
                }
                store.mark_gone(&user, now).await?;
                "user-gone"
            }
            Action::UserCreated(user) => {
                self.context.add_users_at(&[user], now).await?;
                "user-registered"
            }
            Action::NeedsLookup => "no-user",
            Action::Ignore(why) => why,
        })
    }
}
