//! One row per sweep pass: when, why, and what it found.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Result, Store, ts};

/// Counts a pass accumulates.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepCounts {
    pub users_swept: u64,
    pub users_failed: u64,
    pub users_gone: u64,
    pub by_health: BTreeMap<String, u64>,
    /// Why the pass stopped before its end; `None` when it ran to its end or was
    /// interrupted by shutdown.
    pub aborted: Option<Abort>,
}

/// A pass that stopped early, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Abort {
    pub cause: AbortCause,
    /// The error, as logged (Basiq's answer and correlation id; never a secret).
    pub error: String,
}

/// What stopped a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, sqlx::Type)]
#[serde(rename_all = "kebab-case")]
#[sqlx(rename_all = "kebab-case")]
pub enum AbortCause {
    /// Basiq refused the API key: no user can be swept until it is fixed.
    Auth,
    /// The database failed (locked, full disk): the next pass tries again.
    Database,
}

impl Store {
    pub async fn start_sweep(&self, trigger: &str, now: DateTime<Utc>) -> Result<i64> {
        sqlx::query_scalar("INSERT INTO sweeps (trigger, started_at) VALUES (?, ?) RETURNING id")
            .bind(trigger.to_owned())
            .bind(ts(now))
            .fetch_one(self.write_pool())
            .await
    }

    pub async fn finish_sweep(
        &self,
        id: i64,
        counts: &SweepCounts,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let by_health = serde_json::to_string(&counts.by_health).unwrap_or_default();
        sqlx::query(
            "UPDATE sweeps SET ended_at = ?, users_swept = ?, users_failed = ?, users_gone = ?, counts = ?,
             aborted = ?, abort_error = ? WHERE id = ?",
        )
        .bind(ts(now))
        .bind(i64::try_from(counts.users_swept).unwrap_or(i64::MAX))
        .bind(i64::try_from(counts.users_failed).unwrap_or(i64::MAX))
        .bind(i64::try_from(counts.users_gone).unwrap_or(i64::MAX))
        .bind(by_health)
        .bind(counts.aborted.as_ref().map(|a| a.cause))
        .bind(counts.aborted.as_ref().map(|a| a.error.clone()))
        .bind(id)
        .execute(self.write_pool())
        .await?;
        Ok(())
    }

    /// Users swept since `since` (for the systemd status line and reports).
    pub async fn users_swept_since(&self, since: DateTime<Utc>) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE removed_at IS NULL AND last_swept_at >= ?",
        )
        .bind(ts(since))
        .fetch_one(self.pool())
        .await
    }
}
