//! Counts kept, not counted: the `tallies` table, moved by triggers (migration 0005) in
//! the same transaction as the rows they count. Reading them costs one short scan of a
//! table of a few dozen rows, whatever the size of the register.

use std::collections::BTreeMap;

use super::{Result, Store};

/// Every tally, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tallies {
    /// Users neither gone nor removed.
    pub users_active: i64,
    /// Watched connections (not gone, user not removed) per health; `""` for a connection
    /// not classified yet. Zero counts are kept.
    pub connections: BTreeMap<String, i64>,
    /// Refresh attempts kept in history, per (trigger, outcome).
    pub reservations: BTreeMap<(String, String), i64>,
}

impl Tallies {
    /// Watched connections, classified or not.
    pub fn connections_total(&self) -> i64 {
        self.connections.values().sum()
    }
}

impl Store {
    /// Reads every tally (one statement).
    pub async fn tallies(&self) -> Result<Tallies> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as("SELECT name, key, n FROM tallies")
            .fetch_all(self.pool())
            .await?;
        let mut out = Tallies::default();
        for (name, key, n) in rows {
            match name.as_str() {
                "users" if key == "active" => out.users_active = n,
                "connections" => {
                    out.connections.insert(key, n);
                }
                "reservations" => {
                    let (trigger, outcome) = key.rsplit_once('/').unwrap_or((key.as_str(), ""));
                    out.reservations
                        .insert((trigger.to_owned(), outcome.to_owned()), n);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The same figures counted over the tables (a full scan): what the tallies must
    /// equal. For tests and `status --recount`.
    pub async fn recount(&self) -> Result<Tallies> {
        let users_active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE gone_at IS NULL AND removed_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        let connections: Vec<(String, i64)> = sqlx::query_as(
            "SELECT COALESCE(c.health, ''), COUNT(*) FROM connections c
             WHERE c.gone_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = c.user_id AND u.removed_at IS NOT NULL)
             GROUP BY 1",
        )
        .fetch_all(self.pool())
        .await?;
        let reservations: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT trigger, outcome, COUNT(*) FROM refresh_attempts GROUP BY trigger, outcome",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(Tallies {
            users_active,
            connections: connections.into_iter().collect(),
            reservations: reservations
                .into_iter()
                .map(|(t, o, n)| ((t, o), n))
                .collect(),
        })
    }
}
