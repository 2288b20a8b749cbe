//! The operator's console's rows: sign-in codes and sessions (their SHA-256 only), and the
//! reads its pages make: the kept counts per bank and per reason, the oldest wait, one
//! bank's connections, one connection's history, the refreshes and deliveries of a day,
//! and the hourly rollups. Every read goes through an index or a kept count: a page costs
//! the same at a million users.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Result, Store, from_opt_ts, from_ts, ts};
use crate::domain::ConnectionId;

/// How a sign-in code was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeUse {
    /// Good, and now used.
    Taken,
    Unknown,
    Used,
    Expired,
}

/// A connector's watched connections per health, from the kept counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectorCounts {
    pub institution_id: String,
    pub method: String,
    pub by_health: BTreeMap<String, i64>,
}

impl ConnectorCounts {
    pub fn total(&self) -> i64 {
        self.by_health.values().sum()
    }
}

/// One hour of a connector (a rollup row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    pub hour: i64,
    pub healthy: i64,
    pub action: i64,
    pub outage: i64,
    pub other: i64,
    pub failures: i64,
    pub refreshes: i64,
}

/// A health change as the connection page lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEntry {
    pub at: DateTime<Utc>,
    pub from: Option<String>,
    pub to: String,
    pub reason: Option<String>,
    pub job_id: Option<String>,
}

/// A refresh decision as the connection page lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionEntry {
    pub at: DateTime<Utc>,
    pub trigger: String,
    pub decision: String,
    pub reason: Option<String>,
    pub job_id: Option<String>,
}

/// A notification about a user, as the connection page lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticeEntry {
    pub at: DateTime<Utc>,
    pub event_type: String,
    pub payload: String,
}

/// The refreshes of the last 24 hours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DayOfRefreshes {
    /// Connections per attempts made in the rolling 24 hours.
    pub attempts_per_connection: Vec<i64>,
    /// (hours ago, trigger) → attempts.
    pub per_hour: BTreeMap<(i64, String), i64>,
    /// Denials by reason.
    pub denials: BTreeMap<String, i64>,
}

/// One endpoint's deliveries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointView {
    pub endpoint: String,
    pub pending: i64,
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub failures: i64,
    pub dead: i64,
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// Stores a sign-in code (its hash), valid until `expires_at`.
    pub async fn add_console_code(
        &self,
        code: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM console_codes WHERE expires_at < ?")
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_codes (code_hash, created_at, expires_at) VALUES (?, ?, ?)",
        )
        .bind(sha256_hex(code))
        .bind(ts(now))
        .bind(ts(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Takes a sign-in code: once, before it expires.
    pub async fn take_console_code(&self, code: &str, now: DateTime<Utc>) -> Result<CodeUse> {
        let mut tx = self.write().await?;
        let row: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT expires_at, used_at FROM console_codes WHERE code_hash = ?")
                .bind(sha256_hex(code))
                .fetch_optional(&mut *tx)
                .await?;
        let found = match row {
            None => CodeUse::Unknown,
            Some((_, Some(_))) => CodeUse::Used,
            Some((expires, None)) if expires <= ts(now) => CodeUse::Expired,
            Some(_) => CodeUse::Taken,
        };
        if found == CodeUse::Taken {
            sqlx::query("UPDATE console_codes SET used_at = ? WHERE code_hash = ?")
                .bind(ts(now))
                .bind(sha256_hex(code))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(found)
    }

    /// Stores a session (its cookie's hash) until `expires_at`.
    pub async fn add_console_session(
        &self,
        cookie: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < ?")
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (session_hash, created_at, expires_at) VALUES (?, ?, ?)",
        )
        .bind(sha256_hex(cookie))
        .bind(ts(now))
        .bind(ts(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Whether a session cookie is good at `now`.
    pub async fn console_session(&self, cookie: &str, now: DateTime<Utc>) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM console_sessions WHERE session_hash = ? AND expires_at > ?)",
        )
        .bind(sha256_hex(cookie))
        .bind(ts(now))
        .fetch_one(self.pool())
        .await
    }

    pub async fn end_console_session(&self, cookie: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM console_sessions WHERE session_hash = ?")
            .bind(sha256_hex(cookie))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Every connector's watched connections per health (the kept counts).
    pub async fn connector_counts(&self) -> Result<Vec<ConnectorCounts>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key, n FROM tallies WHERE name = 'connector' AND n != 0 ORDER BY key",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out: Vec<ConnectorCounts> = Vec::new();
        for (key, n) in rows {
            let mut parts = key.splitn(3, '|');
            let (Some(i), Some(m), Some(h)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            match out.last_mut() {
                Some(c) if c.institution_id == i && c.method == m => {
                    c.by_health.insert(h.to_owned(), n);
                }
                _ => out.push(ConnectorCounts {
                    institution_id: i.to_owned(),
                    method: m.to_owned(),
                    by_health: [(h.to_owned(), n)].into(),
                }),
            }
        }
        Ok(out)
    }

    /// Each connector's name and Basiq status, as `/connectors` last said.
    pub async fn connector_names(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), (Option<String>, Option<String>)>> {
        let rows: Vec<(String, String, Option<String>, String)> =
            sqlx::query_as("SELECT institution_id, method, name, status FROM connectors")
                .fetch_all(self.pool())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(i, m, name, status)| ((i, m), (name, Some(status))))
            .collect())
    }

    /// Action-required connections per reason, and the oldest's wait (its index's first).
    pub async fn action_queue(&self) -> Result<Vec<(String, i64, Option<DateTime<Utc>>)>> {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT key, n FROM tallies WHERE name = 'action' AND n > 0 ORDER BY key",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for (reason, n) in counts {
            let oldest: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(health_since) FROM connections INDEXED BY connections_action_since
                 WHERE health = 'action-required' AND gone_at IS NULL AND reason IS ?",
            )
            .bind((!reason.is_empty()).then(|| reason.clone()))
            .fetch_one(self.pool())
            .await?;
            out.push((reason, n, from_opt_ts(oldest)));
        }
        Ok(out)
    }

    /// At most `limit` watched connections at a connector, in storage order: the index's
    /// first entries, whatever the bank's size.
    pub async fn connections_at(
        &self,
        institution_id: &str,
        method: &str,
        limit: i64,
    ) -> Result<Vec<(String, String, Option<String>, Option<String>)>> {
        sqlx::query_as(
            "SELECT connection_id, user_id, health, reason FROM connections
             INDEXED BY connections_institution
             WHERE institution_id = ? AND method = ? AND gone_at IS NULL
             ORDER BY rowid LIMIT ? + 0",
        )
        .bind(institution_id.to_owned())
        .bind(method.to_owned())
        .bind(limit)
        .fetch_all(self.pool())
        .await
    }

    /// A connection's health changes, newest first.
    pub async fn health_entries(&self, id: &ConnectionId, limit: i64) -> Result<Vec<HealthEntry>> {
        type Row = (i64, Option<String>, String, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT changed_at, from_health, to_health, reason, job_id FROM health_changes
                 WHERE connection_id = ? ORDER BY changed_at DESC, id DESC LIMIT ? + 0",
        )
        .bind(id.as_str().to_owned())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, from, to, reason, job_id)| HealthEntry {
                at: from_ts(at),
                from,
                to,
                reason,
                job_id,
            })
            .collect())
    }

    /// A connection's refresh decisions, newest first.
    pub async fn decision_history(
        &self,
        id: &ConnectionId,
        limit: i64,
    ) -> Result<Vec<DecisionEntry>> {
        type Row = (i64, String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT decided_at, trigger, decision, reason, job_id FROM refresh_decisions
             WHERE connection_id = ? ORDER BY decided_at DESC, id DESC LIMIT ? + 0",
        )
        .bind(id.as_str().to_owned())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, trigger, decision, reason, job_id)| DecisionEntry {
                at: from_ts(at),
                trigger,
                decision,
                reason,
                job_id,
            })
            .collect())
    }

    /// The notifications made about a user (newest first): the connection page picks its
    /// connection's.
    pub async fn notices_about(&self, user_id: &str, limit: i64) -> Result<Vec<NoticeEntry>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT created_at, event_type, payload FROM outbox INDEXED BY outbox_user
             WHERE user_id = ? ORDER BY id DESC LIMIT ? + 0",
        )
        .bind(user_id.to_owned())
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, event_type, payload)| NoticeEntry {
                at: from_ts(at),
                event_type,
                payload,
            })
            .collect())
    }

    /// The refreshes and decisions of the 24 hours before `now`.
    pub async fn day_of_refreshes(&self, now: DateTime<Utc>) -> Result<DayOfRefreshes> {
        let since = ts(now - chrono::Duration::hours(24));
        let per_connection: Vec<i64> = sqlx::query_scalar(
            "SELECT COUNT(*) FROM refresh_attempts INDEXED BY refresh_attempts_at
             WHERE reserved_at > ? GROUP BY connection_id",
        )
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        let hours: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT (? - reserved_at) / 3600, trigger, COUNT(*) FROM refresh_attempts
             INDEXED BY refresh_attempts_at WHERE reserved_at > ?
             GROUP BY 1, trigger",
        )
        .bind(ts(now))
        .bind(since)
        .fetch_all(self.pool())
        .await?;
        Ok(DayOfRefreshes {
            attempts_per_connection: per_connection,
            per_hour: hours.into_iter().map(|(h, t, n)| ((h, t), n)).collect(),
            denials: self.denials_since(from_ts(since)).await?,
        })
    }

    /// Refresh denials since `since`, by reason (through the decisions' time index).
    pub async fn denials_since(&self, since: DateTime<Utc>) -> Result<BTreeMap<String, i64>> {
        let denials: Vec<(String, i64)> = sqlx::query_as(
            "SELECT COALESCE(reason, ''), COUNT(*) FROM refresh_decisions INDEXED BY refresh_decisions_time
             WHERE decided_at > ? AND decision = 'denied' GROUP BY 1",
        )
        .bind(ts(since))
        .fetch_all(self.pool())
        .await?;
        Ok(denials.into_iter().collect())
    }

    /// Each endpoint's deliveries: pending, the oldest pending, the last success, failed
    /// attempts, dead letters.
    pub async fn endpoint_views(&self) -> Result<Vec<EndpointView>> {
        type Row = (String, i64, Option<i64>, Option<i64>, i64, i64);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT endpoint,
                    SUM(state = 'pending'),
                    MIN(CASE WHEN state = 'pending' THEN created_at END),
                    MAX(CASE WHEN state = 'succeeded' THEN done_at END),
                    SUM(failures),
                    SUM(state = 'dead')
             FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
             GROUP BY endpoint ORDER BY endpoint",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(endpoint, pending, oldest, last, failures, dead)| EndpointView {
                    endpoint,
                    pending,
                    oldest_pending: from_opt_ts(oldest),
                    last_success: from_opt_ts(last),
                    failures,
                    dead,
                },
            )
            .collect())
    }

    /// A connector's rollups since `since`, oldest first.
    pub async fn rollups(
        &self,
        institution_id: &str,
        method: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Rollup>> {
        let rows: Vec<(i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT hour, healthy, action, outage, other, failures, refreshes FROM rollups
             WHERE institution_id = ? AND method = ? AND hour >= ? ORDER BY hour",
        )
        .bind(institution_id.to_owned())
        .bind(method.to_owned())
        .bind(ts(since))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(hour, healthy, action, outage, other, failures, refreshes)| Rollup {
                    hour,
                    healthy,
                    action,
                    outage,
                    other,
                    failures,
                    refreshes,
                },
            )
            .collect())
    }

    /// Writes the rollups of the hour that ended at `hour_end` (once: a second call for
    /// the same hour changes nothing) from the kept counts, the bank-side failures seen in
    /// the hour and our refreshes in it. Returns the rows written.
    pub async fn write_rollups(&self, hour_end: DateTime<Utc>) -> Result<u64> {
        let end = ts(hour_end);
        let start = end - 3600;
        // Read first: a tick that finds the hour done opens no write (a COMMIT of nothing
        // would tell the write health the database is writable when it may not be).
        let done: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM rollups WHERE hour = ?)")
            .bind(start)
            .fetch_one(self.pool())
            .await?;
        if done {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        let written = sqlx::query(
            "INSERT OR IGNORE INTO rollups (hour, institution_id, method, healthy, action, outage, other, failures, refreshes)
             SELECT ?1, k.institution_id, k.method,
                 COALESCE(SUM(CASE WHEN k.health = 'healthy' THEN k.n END), 0),
                 COALESCE(SUM(CASE WHEN k.health = 'action-required' THEN k.n END), 0),
                 COALESCE(SUM(CASE WHEN k.health = 'institution-outage' THEN k.n END), 0),
                 COALESCE(SUM(CASE WHEN k.health NOT IN ('healthy', 'action-required', 'institution-outage') THEN k.n END), 0),
                 (SELECT COUNT(*) FROM connections c INDEXED BY connections_bank_failures
                   WHERE c.institution_id = k.institution_id AND c.method = k.method
                     AND c.bank_failure_at >= ?1 AND c.bank_failure_at < ?2 AND c.gone_at IS NULL),
                 (SELECT COUNT(*) FROM refresh_attempts a INDEXED BY refresh_attempts_at
                   WHERE a.reserved_at >= ?1 AND a.reserved_at < ?2
                     AND a.institution_id = k.institution_id AND a.method = k.method)
             FROM (SELECT substr(key, 1, instr(key, '|') - 1) AS institution_id,
                          substr(substr(key, instr(key, '|') + 1), 1,
                                 instr(substr(key, instr(key, '|') + 1), '|') - 1) AS method,
                          substr(substr(key, instr(key, '|') + 1),
                                 instr(substr(key, instr(key, '|') + 1), '|') + 1) AS health,
                          n
                     FROM tallies WHERE name = 'connector') k
             WHERE true
             GROUP BY k.institution_id, k.method",
        )
        .bind(start)
        .bind(end)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(written)
    }
}
