//! The refreshes the daemon owes, as units of work: recoveries after an outage, transient
//! retries and (daily mode) each connection's slot in the unattended window. One owed
//! connection is one unit (one `now`); deferred ones stay due for a later tick.

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{RefreshError, Refresher};
use crate::domain::ConnectionId;
use crate::plan::ConnectionRow;
use crate::plan::policy::schedule::Owed;
use crate::plan::policy::{self, Denial, RefreshDecision, RefreshMode, Trigger};

impl Refresher {
    /// The refreshes the daemon owes, until none is due or the pace is spent. Returns how
    /// many were sent.
    pub async fn run_due(&self, cancel: &CancellationToken) -> Result<u64, RefreshError> {
        let limits = &self.inner.settings.limits;
        if limits.mode == RefreshMode::Off {
            return Ok(0);
        }
        let daily = limits.mode == RefreshMode::Daily;
        if daily {
            self.place_daily_slots().await?;
        }
        let store = self.inner.context.store().clone();
        let clock = self.inner.context.clock();
        let mut sent = 0;
        while !cancel.is_cancelled() {
            let due = store.due_refreshes(clock.now(), daily, 50).await?;
            if due.is_empty() {
                break;
            }
            // A few at once, so the pacer (not request latency) sets the speed.
            let outcomes: Vec<Result<Option<bool>, RefreshError>> = futures_util::stream::iter(due)
                .map(|id| self.run_one_due(id, cancel))
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

    /// Gives connections without one their slot in the unattended window (a thousand per
    /// tick).
    async fn place_daily_slots(&self) -> Result<(), RefreshError> {
        let store = self.inner.context.store();
        let window = self.inner.settings.unattended_window;
        for id in store.connections_without_daily_slot(1000).await? {
            let now = self.inner.context.clock().now();
            let slot = window.slot(self.inner.seed, id.as_str(), now);
            store.set_daily_due(&id, Some(slot)).await?;
        }
        Ok(())
    }

    /// One owed refresh. `Some(sent)` when it was decided, `None` when deferred by the pace.
    async fn run_one_due(
        &self,
        id: ConnectionId,
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
        let window = self.inner.settings.unattended_window;
        let owed = row.refresh_due.filter(|o| o.at <= now);
        let trigger = owed.map_or(Trigger::Scheduled, |o| o.trigger);
        // Unattended slots outside the window wait for the next one.
        if trigger == Trigger::Scheduled && !window.contains(now) {
            store
                .set_daily_due(&id, Some(window.slot(self.inner.seed, id.as_str(), now)))
                .await?;
            return Ok(Some(false));
        }
        let decision = match self
            .attempt(&row.user_id, &id, trigger, false, true, now)
            .await
        {
            Ok(decision) => decision,
            Err(e) => {
                tracing::warn!(user_id = %row.user_id, connection_id = %id, error = %e, "owed refresh failed");
                RefreshDecision::denied(Denial::RequestFailed)
            }
        };
        self.record(&row.user_id, &id, trigger, false, &decision);
        let retry_at = match decision {
            RefreshDecision::Refreshed(_) => None,
            RefreshDecision::Deferred => return Ok(None),
            RefreshDecision::Denied { denial, reopens } => policy::owed_after(denial, reopens, now),
        };
        self.next_owed(&row, trigger, retry_at, now).await?;
        Ok(Some(matches!(decision, RefreshDecision::Refreshed(_))))
    }

    /// What the connection owes after an attempt at `now`: a daily slot moves to the next
    /// window; another trigger stays owed until `retry_at` (or ends), unless something
    /// replaced it meanwhile (a followed job's end plans anew).
    async fn next_owed(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(), RefreshError> {
        let store = self.inner.context.store();
        let id = &row.connection_id;
        if trigger == Trigger::Scheduled {
            let window = self.inner.settings.unattended_window;
            let (_, end) = window.occurrence(now);
            let next = window.slot(
                self.inner.seed,
                id.as_str(),
                end + chrono::Duration::seconds(1),
            );
            store.set_daily_due(id, Some(next)).await?;
        } else {
            let since = row.refresh_due.and_then(|o| o.since);
            let owed = retry_at.map(|at| Owed { at, trigger, since });
            store.replace_refresh_due(id, row.refresh_due, owed).await?;
        }
        Ok(())
    }
}
