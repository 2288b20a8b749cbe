//! Connections, their current health, and the history of health changes.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::{Result, Store, from_opt_ts, from_ts, opt_ts, ts};
use crate::classify::{Health, NewestJob, Side, Verdict};
use crate::domain::{
    Connection, ConnectionId, ConnectionStatus, InstitutionId, Job, JobState, Method, UserId,
};

const COLUMNS: &str = "connection_id, user_id, institution_id, method, status, created_date,
    last_used, expiry_date, newest_job_id, newest_job_state, newest_job_code, newest_job_created,
    newest_job_updated, health, reason, checked_at, health_since, consent_warned_days, gone_at,
    basiq_capped_until, refresh_due_at, refresh_due_trigger, transient_retries, daily_due_at";

#[derive(Clone, Debug, sqlx::FromRow)]
struct RawConnection {
    connection_id: String,
    user_id: String,
    institution_id: String,
    method: String,
    status: String,
    created_date: Option<i64>,
    last_used: Option<i64>,
    expiry_date: Option<i64>,
    newest_job_id: Option<String>,
    newest_job_state: Option<String>,
    newest_job_code: Option<String>,
    newest_job_created: Option<i64>,
    newest_job_updated: Option<i64>,
    health: Option<String>,
    reason: Option<String>,
    checked_at: Option<i64>,
    health_since: Option<i64>,
    consent_warned_days: Option<i64>,
    gone_at: Option<i64>,
    basiq_capped_until: Option<i64>,
    refresh_due_at: Option<i64>,
    refresh_due_trigger: Option<String>,
    transient_retries: i64,
    daily_due_at: Option<i64>,
}

/// A connection as stored: what Basiq said, its newest job, and its current health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRow {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub institution_id: InstitutionId,
    pub method: Method,
    pub status: ConnectionStatus,
    pub created_date: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub newest_job_id: Option<String>,
    pub newest_job: Option<NewestJob>,
    pub newest_job_updated: Option<DateTime<Utc>>,
    pub health: Option<Health>,
    pub reason: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub health_since: Option<DateTime<Utc>>,
    pub consent_warned_days: Option<i64>,
    pub gone_at: Option<DateTime<Utc>>,
    pub basiq_capped_until: Option<DateTime<Utc>>,
    pub refresh_due_at: Option<DateTime<Utc>>,
    pub refresh_due_trigger: Option<String>,
    pub transient_retries: i64,
    pub daily_due_at: Option<DateTime<Utc>>,
}

impl From<RawConnection> for ConnectionRow {
    fn from(r: RawConnection) -> Self {
        let newest_job = r.newest_job_state.as_deref().map(|state| NewestJob {
            state: match state {
                "success" => JobState::Success,
                "failed" => JobState::Failed,
                _ => JobState::InProgress,
            },
            failure_code: r.newest_job_code.clone(),
            created: from_opt_ts(r.newest_job_created),
        });
        Self {
            connection_id: ConnectionId(r.connection_id),
            user_id: UserId(r.user_id),
            institution_id: InstitutionId(r.institution_id),
            method: Method::parse(&r.method),
            status: ConnectionStatus::parse(&r.status),
            created_date: from_opt_ts(r.created_date),
            last_used: from_opt_ts(r.last_used),
            expiry_date: from_opt_ts(r.expiry_date),
            newest_job_id: r.newest_job_id,
            newest_job,
            newest_job_updated: from_opt_ts(r.newest_job_updated),
            health: r.health.as_deref().and_then(Health::parse),
            reason: r.reason,
            checked_at: from_opt_ts(r.checked_at),
            health_since: from_opt_ts(r.health_since),
            consent_warned_days: r.consent_warned_days,
            gone_at: from_opt_ts(r.gone_at),
            basiq_capped_until: from_opt_ts(r.basiq_capped_until),
            refresh_due_at: from_opt_ts(r.refresh_due_at),
            refresh_due_trigger: r.refresh_due_trigger,
            transient_retries: r.transient_retries,
            daily_due_at: from_opt_ts(r.daily_due_at),
        }
    }
}

/// A recorded change of health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChange {
    pub from: Option<Health>,
    pub to: Health,
    pub reason: Option<String>,
}

/// Stores what Basiq said about a connection and which job is its newest.
pub async fn upsert_connection(
    conn: &mut SqliteConnection,
    user_id: &UserId,
    c: &Connection,
    newest: Option<&Job>,
    now: DateTime<Utc>,
) -> Result<()> {
    let code = newest.and_then(|j| j.failure_code().map(str::to_owned));
    let side = code.as_deref().map(|c| Side::of(c).as_str());
    sqlx::query(
        "INSERT INTO connections (connection_id, user_id, institution_id, method, status,
             created_date, last_used, expiry_date, newest_job_id, newest_job_state, newest_job_code,
             newest_job_side, newest_job_created, newest_job_updated, first_seen_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (connection_id) DO UPDATE SET
             user_id = excluded.user_id, institution_id = excluded.institution_id,
             method = excluded.method, status = excluded.status,
             created_date = excluded.created_date, last_used = excluded.last_used,
             expiry_date = excluded.expiry_date,
             newest_job_id = excluded.newest_job_id, newest_job_state = excluded.newest_job_state,
             newest_job_code = excluded.newest_job_code, newest_job_side = excluded.newest_job_side,
             newest_job_created = excluded.newest_job_created,
             newest_job_updated = excluded.newest_job_updated,
             gone_at = NULL",
    )
    .bind(c.id.as_str())
    .bind(user_id.as_str())
    .bind(c.institution_id.as_str())
    .bind(c.method.as_str().to_owned())
    .bind(c.status.as_str().to_owned())
    .bind(opt_ts(c.created_date))
    .bind(opt_ts(c.last_used))
    .bind(opt_ts(c.expiry_date))
    .bind(newest.map(|j| j.id.as_str().to_owned()))
    .bind(newest.map(|j| j.state().as_str()))
    .bind(code)
    .bind(side)
    .bind(newest.and_then(|j| opt_ts(j.created)))
    .bind(newest.and_then(|j| opt_ts(j.updated)))
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks the user's connections Basiq no longer lists as gone.
pub async fn mark_missing(
    conn: &mut SqliteConnection,
    user_id: &UserId,
    present: &[ConnectionId],
    now: DateTime<Utc>,
) -> Result<u64> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT connection_id FROM connections WHERE user_id = ? AND gone_at IS NULL",
    )
    .bind(user_id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut gone = 0;
    for id in ids
        .iter()
        .filter(|id| !present.iter().any(|p| p.as_str() == id.as_str()))
    {
        gone += sqlx::query("UPDATE connections SET gone_at = ? WHERE connection_id = ?")
            .bind(ts(now))
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(gone)
}

/// Writes the verdict; records and returns the change when the health or reason moved.
pub async fn set_health(
    conn: &mut SqliteConnection,
    row: &ConnectionRow,
    verdict: &Verdict,
    now: DateTime<Utc>,
) -> Result<Option<HealthChange>> {
    let changed = row.health != Some(verdict.health) || row.reason != verdict.reason;
    if changed {
        sqlx::query(
            "UPDATE connections SET health = ?, reason = ?, checked_at = ?, health_since = ?
             WHERE connection_id = ?",
        )
        .bind(verdict.health.as_str())
        .bind(verdict.reason.clone())
        .bind(ts(now))
        .bind(ts(now))
        .bind(row.connection_id.as_str())
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO health_changes (connection_id, user_id, from_health, to_health, reason, job_id, changed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.connection_id.as_str())
        .bind(row.user_id.as_str())
        .bind(row.health.map(Health::as_str))
        .bind(verdict.health.as_str())
        .bind(verdict.reason.clone())
        .bind(row.newest_job_id.clone())
        .bind(ts(now))
        .execute(&mut *conn)
        .await?;
        Ok(Some(HealthChange {
            from: row.health,
            to: verdict.health,
            reason: verdict.reason.clone(),
        }))
    } else {
        sqlx::query("UPDATE connections SET checked_at = ? WHERE connection_id = ?")
            .bind(ts(now))
            .bind(row.connection_id.as_str())
            .execute(&mut *conn)
            .await?;
        Ok(None)
    }
}

pub async fn set_consent_warned(
    conn: &mut SqliteConnection,
    id: &ConnectionId,
    days: Option<i64>,
) -> Result<()> {
    sqlx::query("UPDATE connections SET consent_warned_days = ? WHERE connection_id = ?")
        .bind(days)
        .bind(id.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn rows_for_user(
    conn: &mut SqliteConnection,
    user_id: &UserId,
) -> Result<Vec<ConnectionRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM connections WHERE user_id = ? AND gone_at IS NULL ORDER BY connection_id"
    );
    let rows: Vec<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id.as_str())
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(ConnectionRow::from).collect())
}

pub async fn rows_at_connector(
    conn: &mut SqliteConnection,
    institution_id: &str,
    method: &str,
) -> Result<Vec<ConnectionRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM connections
         WHERE institution_id = ? AND method IN (?, ?) AND gone_at IS NULL ORDER BY connection_id"
    );
    let (a, b) = method_spellings(method);
    let rows: Vec<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(institution_id.to_owned())
        .bind(a)
        .bind(b)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(ConnectionRow::from).collect())
}

/// Basiq spells open banking two ways; both name the same connector.
pub(crate) fn method_spellings(method: &str) -> (String, String) {
    match Method::parse(method) {
        Method::OpenBanking => ("open-banking".into(), "openbanking".into()),
        other => (other.as_str().to_owned(), other.as_str().to_owned()),
    }
}

/// Distinct users whose newest job at a connector failed bank-side since `since`, counting
/// only failures after the connector last recovered from an outage (those before it belong
/// to the outage Basiq already reported).
pub async fn bank_failure_users(
    conn: &mut SqliteConnection,
    institution_id: &str,
    method: &str,
    since: DateTime<Utc>,
) -> Result<i64> {
    let (a, b) = method_spellings(method);
    sqlx::query_scalar(
        "SELECT COUNT(DISTINCT c.user_id) FROM connections c JOIN users u ON u.user_id = c.user_id
         WHERE c.institution_id = ? AND c.method IN (?, ?) AND c.gone_at IS NULL
           AND u.removed_at IS NULL AND c.newest_job_side = 'bank'
           AND COALESCE(c.newest_job_updated, c.newest_job_created) >= MAX(?, COALESCE(
               (SELECT MAX(changed_at) FROM connector_status_changes s
                WHERE s.institution_id = c.institution_id AND s.method IN (?, ?)
                  AND s.from_status IN ('partial-outage', 'major-outage')), 0))",
    )
    .bind(institution_id.to_owned())
    .bind(a.clone())
    .bind(b.clone())
    .bind(ts(since))
    .bind(a)
    .bind(b)
    .fetch_one(&mut *conn)
    .await
}

impl Store {
    /// Every watched connection (of users not removed), for reports.
    pub async fn all_connections(&self, user: Option<&UserId>) -> Result<Vec<ConnectionRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM connections
             WHERE gone_at IS NULL AND (?1 IS NULL OR user_id = ?1)
               AND user_id IN (SELECT user_id FROM users WHERE removed_at IS NULL)
             ORDER BY user_id, connection_id"
        );
        let rows: Vec<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.map(|u| u.as_str().to_owned()))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(ConnectionRow::from).collect())
    }

    pub async fn connection(&self, id: &ConnectionId) -> Result<Option<ConnectionRow>> {
        let sql = format!("SELECT {COLUMNS} FROM connections WHERE connection_id = ?");
        let row: Option<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(ConnectionRow::from))
    }

    /// Health changes of one connection, oldest first.
    pub async fn health_history(
        &self,
        id: &ConnectionId,
    ) -> Result<Vec<(Option<String>, String, Option<String>, DateTime<Utc>)>> {
        let rows: Vec<(Option<String>, String, Option<String>, i64)> = sqlx::query_as(
            "SELECT from_health, to_health, reason, changed_at FROM health_changes
             WHERE connection_id = ? ORDER BY id",
        )
        .bind(id.as_str())
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(f, t, r, at)| (f, t, r, from_ts(at)))
            .collect())
    }
}
