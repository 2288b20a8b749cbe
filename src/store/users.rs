//! The register of watched users and their due times.

use chrono::{DateTime, Utc};

use super::{Result, Store, from_opt_ts, from_ts, ts, ts_ceil};
use crate::domain::UserId;

#[derive(Clone, Debug, sqlx::FromRow)]
struct RawUser {
    user_id: String,
    next_due_at: i64,
    last_swept_at: Option<i64>,
    gone_at: Option<i64>,
}

/// One registered user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    pub user_id: UserId,
    pub next_due_at: DateTime<Utc>,
    pub last_swept_at: Option<DateTime<Utc>>,
    /// Basiq answered 404: not swept until re-added.
    pub gone_at: Option<DateTime<Utc>>,
}

impl From<RawUser> for UserRow {
    fn from(r: RawUser) -> Self {
        Self {
            user_id: UserId::from_store(r.user_id),
            next_due_at: from_ts(r.next_due_at),
            last_swept_at: from_opt_ts(r.last_swept_at),
            gone_at: from_opt_ts(r.gone_at),
        }
    }
}

/// Rows of one multi-row `INSERT INTO users` (3 parameters each, well under SQLite's 32,766).
const USERS_PER_STATEMENT: usize = 500;

impl Store {
    /// Registers users (idempotent; re-adding a removed or gone user watches it again).
    /// `due` gives each new user's first due time. Returns how many were newly added.
    pub async fn add_users(
        &self,
        ids: &[UserId],
        now: DateTime<Utc>,
        due: impl Fn(&UserId) -> DateTime<Utc>,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let mut added = 0;
        // Many rows per statement: one hand-off to SQLite's thread per chunk, not per user.
        for chunk in ids.chunks(USERS_PER_STATEMENT) {
            let mut sql =
                String::from("INSERT INTO users (user_id, added_at, next_due_at) VALUES ");
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "(?, ?, ?)" } else { ", (?, ?, ?)" });
            }
            sql.push_str(
                " ON CONFLICT (user_id) DO UPDATE SET removed_at = NULL, gone_at = NULL
                 WHERE removed_at IS NOT NULL OR gone_at IS NOT NULL",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query
                    .bind(id.as_str().to_owned())
                    .bind(ts(now))
                    .bind(ts_ceil(due(id)));
            }
            added += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Stops watching users; their history stays. Returns how many were watched.
    pub async fn remove_users(&self, ids: &[UserId], now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.write().await?;
        let mut removed = 0;
        for id in ids {
            removed += sqlx::query(
                "UPDATE users SET removed_at = ? WHERE user_id = ? AND removed_at IS NULL",
            )
            .bind(ts(now))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Watched users (not removed), gone ones included, by id.
    pub async fn list_users(&self) -> Result<Vec<UserRow>> {
        let rows: Vec<RawUser> = sqlx::query_as(
            "SELECT user_id, next_due_at, last_swept_at, gone_at FROM users
             WHERE removed_at IS NULL ORDER BY user_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(UserRow::from).collect())
    }

    /// One page of the users a whole sweep takes (neither gone nor removed), in id order
    /// after `after`: a pass over every user holds one page in memory, not the register.
    pub async fn users_page(&self, after: Option<&UserId>, limit: u32) -> Result<Vec<UserId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM users
             WHERE user_id > ? AND gone_at IS NULL AND removed_at IS NULL
             ORDER BY user_id LIMIT ? + 0",
        )
        .bind(after.map_or("", UserId::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(UserId::from_store).collect())
    }

    pub async fn get_user(&self, id: &UserId) -> Result<Option<UserRow>> {
        let row: Option<RawUser> = sqlx::query_as(
            "SELECT user_id, next_due_at, last_swept_at, gone_at FROM users
             WHERE user_id = ? AND removed_at IS NULL",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(UserRow::from))
    }

    /// Users whose `next_due_at` has passed, most overdue first (uses `users_due`).
    pub async fn due_users(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<UserId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM users
             WHERE gone_at IS NULL AND removed_at IS NULL AND next_due_at <= ?
             ORDER BY next_due_at LIMIT ? + 0",
        )
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(UserId::from_store).collect())
    }

    /// Users counted as watched (not removed, not gone), from the kept tally.
    pub async fn count_active_users(&self) -> Result<i64> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT n FROM tallies WHERE name = 'users' AND key = 'active'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.unwrap_or(0))
    }

    pub async fn mark_swept(
        &self,
        id: &UserId,
        swept_at: DateTime<Utc>,
        next_due_at: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("UPDATE users SET last_swept_at = ?, next_due_at = ? WHERE user_id = ?")
            .bind(ts(swept_at))
            .bind(ts_ceil(next_due_at))
            .bind(id.as_str())
            .execute(self.write_pool())
            .await?;
        Ok(())
    }

    /// Postpones a user whose sweep failed for reasons of its own.
    pub async fn set_next_due(&self, id: &UserId, next_due_at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE users SET next_due_at = ? WHERE user_id = ?")
            .bind(ts_ceil(next_due_at))
            .bind(id.as_str())
            .execute(self.write_pool())
            .await?;
        Ok(())
    }

    pub async fn mark_gone(&self, id: &UserId, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE users SET gone_at = ? WHERE user_id = ?")
            .bind(ts(now))
            .bind(id.as_str())
            .execute(self.write_pool())
            .await?;
        Ok(())
    }
}
