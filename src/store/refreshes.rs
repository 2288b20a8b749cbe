//! Refresh attempts (the durable daily cap), scheduled refreshes, and the purge audit.

use chrono::{DateTime, Utc};
use sqlx::Connection as _;

use super::{Result, Store, from_opt_ts, ts, ts_ceil};
use crate::domain::ConnectionId;
use crate::plan::ConnectionRow;
use crate::plan::policy::schedule::Owed;
use crate::plan::policy::{Denial, Trigger};

use crate::plan::policy::CAP_WINDOW;

impl Store {
    /// Reserves one refresh attempt if `rule` allows it on the connection's attempts (how
    /// many in the cap's window, the newest): the planner's
    /// [`crate::plan::policy::reservation`]. One `BEGIN IMMEDIATE` transaction reads, asks
    /// the rule and inserts, committed with `synchronous = FULL`, before any request is
    /// sent: concurrent processes serialise on the write lock, and a crash after the commit
    /// costs a slot but never allows one more.
    pub async fn reserve_refresh(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        rule: impl FnOnce(u32, Option<DateTime<Utc>>) -> std::result::Result<(), Denial>,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<i64, Denial>> {
        let mut conn = self.write_pool().acquire().await?;
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        let reserved = async {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let (used, last): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(CASE WHEN reserved_at > ? THEN 1 END), MAX(reserved_at)
                 FROM refresh_attempts WHERE connection_id = ?",
            )
            .bind(ts(now - CAP_WINDOW))
            .bind(row.connection_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let used = u32::try_from(used).unwrap_or(u32::MAX);
            if let Err(denial) = rule(used, from_opt_ts(last)) {
                tx.rollback().await?;
                return Ok(Err(denial));
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO refresh_attempts (connection_id, user_id, institution_id, method, trigger, reserved_at)
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(row.connection_id.as_str())
            .bind(row.user_id.as_str())
            .bind(row.institution_id.as_str())
            .bind(row.method.as_str().to_owned())
            .bind(trigger.as_str())
            .bind(ts(now))
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(id))
        }
        .await;
        // Back to the pool's normal durability whatever happened.
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await
            .ok();
        if reserved.is_err() {
            // A failed statement may leave the connection inside a transaction: never hand it
            // back to the pool.
            drop(conn.detach());
        }
        reserved
    }

    pub async fn finish_refresh(
        &self,
        id: i64,
        outcome: crate::plan::policy::Sent,
        job_id: Option<&str>,
        http_status: Option<u16>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE refresh_attempts SET outcome = ?, job_id = ?, http_status = ?, finished_at = ? WHERE id = ?",
        )
        .bind(outcome.as_str())
        .bind(job_id.map(str::to_owned))
        .bind(http_status.map(i64::from))
        .bind(ts(now))
        .bind(id)
        .execute(self.write_pool())
        .await?;
        Ok(())
    }

    /// (attempts in the last 24 h, the newest attempt, the oldest attempt in the window).
    pub async fn refresh_window(
        &self,
        id: &ConnectionId,
        now: DateTime<Utc>,
    ) -> Result<(u32, Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
        let (count, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(reserved_at) FROM refresh_attempts
             WHERE connection_id = ? AND reserved_at > ?",
        )
        .bind(id.as_str())
        .bind(ts(now - CAP_WINDOW))
        .fetch_one(self.pool())
        .await?;
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(reserved_at) FROM refresh_attempts WHERE connection_id = ?",
        )
        .bind(id.as_str())
        .fetch_one(self.pool())
        .await?;
        Ok((
            u32::try_from(count).unwrap_or(u32::MAX),
            from_opt_ts(last),
            from_opt_ts(oldest),
        ))
    }

    /// Attempts per (trigger, outcome), for metrics and reports, from the kept tallies.
    pub async fn refresh_attempt_counts(&self) -> Result<Vec<(String, String, i64)>> {
        Ok(self
            .tallies()
            .await?
            .reservations
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((t, o), n)| (t, o, n))
            .collect())
    }

    pub async fn set_basiq_capped(&self, id: &ConnectionId, until: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE connections SET basiq_capped_until = ? WHERE connection_id = ?")
            .bind(ts_ceil(until))
            .bind(id.as_str())
            .execute(self.write_pool())
            .await?;
        Ok(())
    }

    /// Replaces the refresh the daemon owes a connection, if it is still `expected`.
    pub async fn replace_refresh_due(
        &self,
        id: &ConnectionId,
        expected: Option<Owed>,
        owed: Option<Owed>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE connections SET refresh_due_at = ?, refresh_due_trigger = ?
             WHERE connection_id = ? AND refresh_due_at IS ? AND refresh_due_trigger IS ?",
        )
        .bind(owed.map(|o| ts_ceil(o.at)))
        .bind(owed.map(|o| o.trigger.as_str()))
        .bind(id.as_str())
        .bind(expected.map(|o| ts_ceil(o.at)))
        .bind(expected.map(|o| o.trigger.as_str()))
        .execute(self.write_pool())
        .await?;
        Ok(())
    }

    pub async fn set_daily_due(&self, id: &ConnectionId, at: Option<DateTime<Utc>>) -> Result<()> {
        sqlx::query("UPDATE connections SET daily_due_at = ? WHERE connection_id = ?")
            .bind(at.map(ts_ceil))
            .bind(id.as_str())
            .execute(self.write_pool())
            .await?;
        Ok(())
    }

    /// Watched connections with no daily slot yet.
    pub async fn connections_without_daily_slot(&self, limit: u32) -> Result<Vec<ConnectionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT c.connection_id FROM connections c JOIN users u ON u.user_id = c.user_id
             WHERE c.daily_due_at IS NULL AND c.gone_at IS NULL AND u.removed_at IS NULL AND u.gone_at IS NULL
             LIMIT ? + 0",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(ids.into_iter().map(ConnectionId::from_store).collect())
    }

    /// Connections whose scheduled or daily refresh is due, oldest first.
    pub async fn due_refreshes(
        &self,
        now: DateTime<Utc>,
        include_daily: bool,
        limit: u32,
    ) -> Result<Vec<ConnectionId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT c.connection_id FROM connections c JOIN users u ON u.user_id = c.user_id
             WHERE c.gone_at IS NULL AND u.removed_at IS NULL AND u.gone_at IS NULL
               AND (c.refresh_due_at <= ?1 OR (?2 AND c.daily_due_at <= ?1))
             ORDER BY MIN(COALESCE(c.refresh_due_at, ?1), COALESCE(c.daily_due_at, ?1)) LIMIT ?3 + 0",
        )
        .bind(ts(now))
        .bind(include_daily)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(ids.into_iter().map(ConnectionId::from_store).collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn record_purge(
        &self,
        user_id: &crate::domain::UserId,
        connection_id: &ConnectionId,
        institution_id: Option<&str>,
        outcome: &str,
        http_status: Option<u16>,
        correlation_id: Option<&str>,
        detail: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO purges (user_id, connection_id, institution_id, requested_at, outcome, http_status, correlation_id, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(user_id.as_str())
        .bind(connection_id.as_str())
        .bind(institution_id.map(str::to_owned))
        .bind(ts(now))
        .bind(outcome.to_owned())
        .bind(http_status.map(i64::from))
        .bind(correlation_id.map(str::to_owned))
        .bind(detail.map(str::to_owned))
        .execute(self.write_pool())
        .await?;
        Ok(())
    }

    pub async fn count_purges(&self, id: &ConnectionId) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM purges WHERE connection_id = ?")
            .bind(id.as_str())
            .fetch_one(self.pool())
            .await
    }
}
