//! The readings `/metrics` adds for the alert rules: each one an index's first entry, a
//! range that is empty while all is well, or the kept tallies, so a scrape costs the same at
//! 10 users and at a million. Reads only; decides nothing.

use chrono::{DateTime, Utc};

use super::{Result, Store, from_ts, ts};

/// Watched connections per connector and health, from the `connector` tallies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorTally {
    pub institution_id: String,
    pub method: String,
    /// `""` for a connection not classified yet.
    pub health: String,
    pub connections: i64,
}

impl Store {
    /// Watched connections (not gone, user not removed) not checked since `since`, or
    /// never: a range of `connections_checked`.
    pub async fn connections_unchecked_since(&self, since: DateTime<Utc>) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM connections c INDEXED BY connections_checked
             WHERE c.gone_at IS NULL AND (c.checked_at IS NULL OR c.checked_at < ?)
               AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = c.user_id AND u.removed_at IS NOT NULL)",
        )
        .bind(ts(since))
        .fetch_one(self.pool())
        .await
    }

    /// When the most overdue watched user fell due (the first entry of `users_due`), or
    /// `None` without users.
    pub async fn earliest_due(&self) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_due_at) FROM users WHERE gone_at IS NULL AND removed_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(at.map(from_ts))
    }

    /// Per endpoint, when the oldest notification still pending there was made (a range
    /// of `deliveries_pending`, empty while deliveries keep up).
    pub async fn oldest_pending_deliveries(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT d.endpoint, MIN(o.created_at) FROM deliveries d INDEXED BY deliveries_pending
               JOIN outbox o ON o.id = d.outbox_id
             WHERE d.state = 'pending' GROUP BY d.endpoint",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|(e, at)| (e, from_ts(at))).collect())
    }

    /// The `connector` tallies (one short scan of the tallies table).
    pub async fn connector_tallies(&self) -> Result<Vec<ConnectorTally>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, n FROM tallies WHERE name = 'connector' ORDER BY key")
                .fetch_all(self.pool())
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, n)| {
                let mut parts = key.splitn(3, '|');
                Some(ConnectorTally {
                    institution_id: parts.next()?.to_owned(),
                    method: parts.next()?.to_owned(),
                    health: parts.next()?.to_owned(),
                    connections: n,
                })
            })
            .collect())
    }
}
