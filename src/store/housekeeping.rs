//! Retention: history older than `database.retain_days` is pruned once a day in small
//! batches (short write locks), then `PRAGMA optimize`.

use chrono::{DateTime, Utc};

use super::{Result, Store, ts};

/// Rows deleted per statement: each batch holds the write lock only briefly.
const BATCH: i64 = 500;

/// What a pruning run removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub health_changes: u64,
    pub refresh_attempts: u64,
    pub refresh_decisions: u64,
    pub sweeps: u64,
    /// Processed inbox events.
    pub events: u64,
    /// Outbox notifications no longer being delivered (their deliveries with them).
    pub notifications: u64,
}

impl Store {
    /// Prunes if the last run is a day old (or never ran). Returns what it removed.
    pub async fn housekeep_if_due(
        &self,
        retain_days: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Pruned>> {
        let last: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'last_pruned_at'")
                .fetch_optional(self.pool())
                .await?;
        let last = last.and_then(|v| v.parse::<i64>().ok());
        if last.is_some_and(|t| ts(now) - t < 24 * 3600) {
            return Ok(None);
        }
        let pruned = self.prune(retain_days, now).await?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ('last_pruned_at', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(ts(now).to_string())
            .execute(self.write_pool())
            .await?;
        Ok(Some(pruned))
    }

    /// Deletes history older than `retain_days` in batches, then optimizes.
    pub async fn prune(&self, retain_days: u32, now: DateTime<Utc>) -> Result<Pruned> {
        let cutoff = ts(now - chrono::Duration::days(i64::from(retain_days)));
        // The cap needs the last 24 h of attempts whatever the retention says.
        let attempts_cutoff = cutoff.min(ts(now - chrono::Duration::days(2)));
        let jobs = self
            .delete_batches(
                "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs WHERE COALESCE(created, first_seen_at) < ? LIMIT ? + 0)",
                cutoff,
            )
            .await?;
        let health_changes = self
            .delete_batches(
                "DELETE FROM health_changes WHERE rowid IN (SELECT rowid FROM health_changes WHERE changed_at < ? LIMIT ? + 0)",
                cutoff,
            )
            .await?;
        let refresh_attempts = self
            .delete_batches(
                "DELETE FROM refresh_attempts WHERE rowid IN (SELECT rowid FROM refresh_attempts WHERE reserved_at < ? LIMIT ? + 0)",
                attempts_cutoff,
            )
            .await?;
        let refresh_decisions = self
            .delete_batches(
                "DELETE FROM refresh_decisions WHERE rowid IN (SELECT rowid FROM refresh_decisions WHERE decided_at < ? LIMIT ? + 0)",
                cutoff,
            )
            .await?;
        let sweeps = self
            .delete_batches(
                "DELETE FROM sweeps WHERE rowid IN (SELECT rowid FROM sweeps WHERE started_at < ? LIMIT ? + 0)",
                cutoff,
            )
            .await?;
        // Basiq retries a delivery for about 32 h and `/events` reaches back 7 days: an
        // event id is remembered for 8 days at least, so neither is taken as new.
        let events_cutoff = cutoff.min(ts(now - chrono::Duration::days(8)));
        let events = self
            .delete_batches(
                "DELETE FROM inbox WHERE seq IN (SELECT seq FROM inbox WHERE processed_at IS NOT NULL AND received_at < ? LIMIT ? + 0)",
                events_cutoff,
            )
            .await?;
        // A notification still being delivered is kept whatever its age.
        let notifications = self
            .delete_batches(
                "DELETE FROM outbox WHERE id IN (SELECT o.id FROM outbox o WHERE o.created_at < ?
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.outbox_id = o.id AND d.state = 'pending') LIMIT ? + 0)",
                cutoff,
            )
            .await?;
        // The console's hourly rollups, kept as long as the rest of the history.
        self.delete_batches(
            "DELETE FROM rollups WHERE (institution_id, method, hour) IN
                 (SELECT institution_id, method, hour FROM rollups WHERE hour < ? LIMIT ? + 0)",
            cutoff,
        )
        .await?;
        sqlx::query("PRAGMA optimize")
            .execute(self.write_pool())
            .await?;
        Ok(Pruned {
            jobs,
            health_changes,
            refresh_attempts,
            refresh_decisions,
            sweeps,
            events,
            notifications,
        })
    }

    async fn delete_batches(&self, sql: &'static str, cutoff: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let done = sqlx::query(sql)
                .bind(cutoff)
                .bind(BATCH)
                .execute(self.write_pool())
                .await?
                .rows_affected();
            total += done;
            if done < u64::try_from(BATCH).unwrap_or(u64::MAX) {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}
