//! Connections, their current health, and the history of health changes; the one write of
//! plans ([`write_plans`]) and the reads the planner needs ([`load_users`], [`key_facts`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::{Result, Store, from_opt_ts, from_ts, method_spellings, opt_ts, ts, ts_ceil};
use crate::domain::{
    ConnectionId, ConnectionStatus, ConnectorKey, DownPeriod, InstitutionId, JobId, JobState,
    Method, UserId,
};
use crate::plan::classify::{Health, NewestJob, Side};
use crate::plan::policy::CAP_WINDOW;
use crate::plan::policy::schedule::Owed;
use crate::plan::policy::{DecisionKind, Trigger};
use crate::plan::{
    Attempts, ConnectionRow, Inference, KeyFacts, KeyPeriods, LastDecision, Stored, StoredJob,
};

const COLUMNS: &str = "connection_id, user_id, institution_id, method, status, created_date,
    last_used, expiry_date, newest_job_id, newest_job_state, newest_job_code, newest_job_side, newest_job_created,
    newest_job_updated, health, reason, checked_at, health_since, consent_warned_days, gone_at,
    basiq_capped_until, refresh_due_at, refresh_due_trigger, transient_retries, daily_due_at,
    mfa_enabled, needs_user_present, transient_job_id, bank_failure_at, last_decision,
    last_decision_reason, last_decision_trigger, last_decision_at, invalid_from, invalid_seen,
    refresh_due_since";

/// A stored connection with our refresh attempts of it.
#[derive(Debug, sqlx::FromRow)]
struct RawWithAttempts {
    #[sqlx(flatten)]
    row: RawConnection,
    attempt_last: Option<i64>,
    attempt_oldest: Option<i64>,
}

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
    newest_job_side: Option<String>,
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
    mfa_enabled: Option<bool>,
    needs_user_present: bool,
    transient_job_id: Option<String>,
    bank_failure_at: Option<i64>,
    last_decision: Option<String>,
    last_decision_reason: Option<String>,
    last_decision_trigger: Option<String>,
    last_decision_at: Option<i64>,
    invalid_from: Option<i64>,
    invalid_seen: Option<i64>,
    refresh_due_since: Option<i64>,
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
            side: r.newest_job_side.as_deref().and_then(Side::parse),
            created: from_opt_ts(r.newest_job_created),
            updated: from_opt_ts(r.newest_job_updated),
        });
        let refresh_due = r
            .refresh_due_at
            .zip(r.refresh_due_trigger.as_deref().and_then(Trigger::parse))
            .map(|(at, trigger)| Owed {
                at: from_ts(at),
                trigger,
                since: from_opt_ts(r.refresh_due_since),
            });
        let last_decision = r
            .last_decision
            .as_deref()
            .and_then(DecisionKind::parse)
            .zip(r.last_decision_at)
            .map(|(decision, at)| LastDecision {
                decision,
                reason: r.last_decision_reason.clone(),
                trigger: r.last_decision_trigger.as_deref().and_then(Trigger::parse),
                at: from_ts(at),
            });
        Self {
            connection_id: ConnectionId::from_store(r.connection_id),
            user_id: UserId::from_store(r.user_id),
            institution_id: InstitutionId(r.institution_id),
            method: Method::parse(&r.method),
            status: ConnectionStatus::parse(&r.status),
            created_date: from_opt_ts(r.created_date),
            last_used: from_opt_ts(r.last_used),
            expiry_date: from_opt_ts(r.expiry_date),
            newest_job_id: r.newest_job_id,
            newest_job,
            health: r.health.as_deref().and_then(Health::parse),
            reason: r.reason,
            checked_at: from_opt_ts(r.checked_at),
            health_since: from_opt_ts(r.health_since),
            consent_warned_days: r.consent_warned_days,
            gone_at: from_opt_ts(r.gone_at),
            basiq_capped_until: from_opt_ts(r.basiq_capped_until),
            refresh_due,
            transient_retries: u32::try_from(r.transient_retries).unwrap_or(0),
            transient_job_id: r.transient_job_id,
            daily_due_at: from_opt_ts(r.daily_due_at),
            mfa_enabled: r.mfa_enabled,
            needs_user_present: r.needs_user_present,
            bank_failure_at: from_opt_ts(r.bank_failure_at),
            last_decision,
            invalid_from: from_opt_ts(r.invalid_from),
            invalid_seen: from_opt_ts(r.invalid_seen),
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

/// When the connector ?1/?2|?3 last recovered from an outage, reported (a change from a
/// status that was down, as `ConnectorStatus::is_down` said when it was written) or
/// inferred: failures before it belong to an outage that is over.
const RECOVERED: &str = "recovered AS (
             SELECT MAX(at) AS at FROM (
                 SELECT MAX(changed_at) AS at FROM connector_status_changes
                 WHERE institution_id = ?1 AND method IN (?2, ?3)
                   AND from_down = 1
                 UNION ALL
                 SELECT MAX(ended_at) FROM outages
                 WHERE institution_id = ?1 AND method IN (?2, ?3) AND source IN ('inferred', 'cdr')))";

/// The stored state of several users (their rows, our refresh attempts of them, their
/// recent jobs), read in two statements for the whole group; `inference` is left empty
/// (see [`key_facts`]). Read inside the transaction that writes their plans.
pub async fn load_users(
    conn: &mut SqliteConnection,
    users: &[UserId],
    now: DateTime<Utc>,
) -> Result<HashMap<UserId, Stored>> {
    let mut out: HashMap<UserId, Stored> = users
        .iter()
        .map(|u| (u.clone(), Stored::default()))
        .collect();
    for chunk in super::shapes::padded(users) {
        let marks = super::shapes::repeat("?", chunk.len());
        let sql = format!(
            "SELECT {COLUMNS},
                 (SELECT MAX(reserved_at) FROM refresh_attempts a
                   WHERE a.connection_id = connections.connection_id) AS attempt_last,
                 (SELECT MIN(CASE WHEN reserved_at > ? THEN reserved_at END) FROM refresh_attempts a
                   WHERE a.connection_id = connections.connection_id) AS attempt_oldest
             FROM connections WHERE user_id IN ({marks}) ORDER BY user_id, connection_id"
        );
        let mut query = sqlx::query_as::<_, RawWithAttempts>(sqlx::AssertSqlSafe(sql))
            .bind(ts(now - CAP_WINDOW));
        for u in &chunk {
            query = query.bind(u.as_str().to_owned());
        }
        for r in query.fetch_all(&mut *conn).await? {
            let row = ConnectionRow::from(r.row);
            let Some(stored) = out.get_mut(&row.user_id) else {
                continue;
            };
            if r.attempt_last.is_some() {
                stored.attempts.insert(
                    row.connection_id.clone(),
                    Attempts {
                        last: from_opt_ts(r.attempt_last),
                        oldest_in_window: from_opt_ts(r.attempt_oldest),
                    },
                );
            }
            stored.connections.push(row);
        }
        let sql = format!(
            "SELECT user_id, job_id, state, updated, connection_id IS NOT NULL FROM jobs
             WHERE user_id IN ({marks}) AND (created IS NULL OR created >= ?)"
        );
        let mut query = sqlx::query_as::<_, (String, String, String, Option<i64>, bool)>(
            sqlx::AssertSqlSafe(sql),
        );
        for u in &chunk {
            query = query.bind(u.as_str().to_owned());
        }
        let jobs = query
            .bind(ts(now - chrono::Duration::days(8)))
            .fetch_all(&mut *conn)
            .await?;
        for (user, id, state, updated, matched) in jobs {
            if let Some(stored) = out.get_mut(&UserId::from_store(user)) {
                stored.jobs.insert(
                    JobId::from_store(id),
                    StoredJob {
                        state: job_state(&state),
                        updated: from_opt_ts(updated),
                        matched,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// [`KeyFacts`] of each connector, two statements each; `limit` users listed at most.
/// `since`: the start of the inference window (`window` long) before now.
pub async fn key_facts(
    conn: &mut SqliteConnection,
    keys: &[ConnectorKey],
    since: DateTime<Utc>,
    window: chrono::Duration,
    limit: i64,
) -> Result<HashMap<ConnectorKey, KeyFacts>> {
    let mut out = HashMap::new();
    for key in keys {
        let (open, recovered, failing) = inference(conn, key, None, since, limit).await?;
        let periods = down_periods(conn, key, since, window).await?;
        out.insert(
            key.clone(),
            KeyFacts {
                open,
                counts_since: recovered.map(from_ts),
                from: from_ts(ts(since).max(recovered.unwrap_or(0))),
                failing: failing.into_iter().map(UserId::from_store).collect(),
                periods,
            },
        );
    }
    Ok(out)
}

/// The inferred-outage rule's one statement, made once ([`inference`]).
static INFERENCE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {RECOVERED}
         SELECT
             EXISTS (SELECT 1 FROM outages WHERE institution_id = ?1 AND method IN (?2, ?3)
                     AND source = 'inferred' AND ended_at IS NULL),
             (SELECT at FROM recovered),
             (SELECT json_group_array(user_id) FROM (
                 SELECT DISTINCT c.user_id FROM connections c INDEXED BY connections_bank_failures
                 WHERE c.institution_id = ?1 AND c.method IN (?2, ?3) AND c.bank_failure_at IS NOT NULL
                   AND c.gone_at IS NULL
                   AND c.bank_failure_at >= MAX(?4, COALESCE((SELECT at FROM recovered), 0))
                   AND c.user_id != ?5
                   AND NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = c.user_id AND u.removed_at IS NOT NULL)
                 LIMIT ?6 + 0))"
    )
});

/// The inferred-outage facts at one connector, in one statement (one hand-off to SQLite's
/// thread): whether one is open, when the connector last recovered, and the distinct users
/// other than `except` who failed bank-side there since `since` and since that recovery
/// (failures seen late from an outage that is over infer no new one), `limit` at most.
/// Reads only the partial index of bank-side failures: its cost does not grow with the bank.
async fn inference(
    conn: &mut SqliteConnection,
    key: &ConnectorKey,
    except: Option<&UserId>,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<(bool, Option<i64>, Vec<String>)> {
    let (a, b) = method_spellings(&key.method);
    let (open, recovered, failing): (bool, Option<i64>, String) =
        sqlx::query_as(sqlx::AssertSqlSafe(INFERENCE_SQL.as_str()))
            .bind(key.institution_id.clone())
            .bind(a)
            .bind(b)
            .bind(ts(since))
            .bind(except.map_or(String::new(), |u| u.as_str().to_owned()))
            .bind(limit.max(1))
            .fetch_one(&mut *conn)
            .await?;
    let failing: Vec<String> = serde_json::from_str(&failing)
        .map_err(|e| sqlx::Error::Decode(format!("failing users at {key}: {e}").into()))?;
    Ok((open, recovered, failing))
}

/// [`down_periods`]'s one statement: the outages (but a `cdr` one whose witness cannot be
/// read) and the maintenance windows a data holder announced, periods known ahead.
static DOWN_PERIODS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT source, started_at, since, ended_at FROM (
             SELECT source, started_at, since, ended_at, id FROM outages
             WHERE institution_id = ?1 AND (?4 OR method IN (?2, ?3))
               AND (ended_at IS NULL OR ended_at >= ?5)
               AND NOT (ended_at IS NULL AND {unread})
             UNION ALL
             SELECT 'maintenance', starts_at, starts_at, ends_at, id FROM cdr_windows
             WHERE institution_id = ?1 AND (?4 OR method IN (?2, ?3))
               AND ends_at >= ?5 AND withdrawn_at IS NULL)
         ORDER BY started_at, id",
        unread = super::connectors::CDR_UNREAD
    )
});

/// The periods a connector's bank was down, open or ended within Basiq's job retention
/// (older ones explain no job Basiq still lists), oldest first. An inferred outage's period
/// begins `window` before it was inferred (the failures that showed it). A connector keyed
/// by an unknown method is its institution: every method's periods.
pub async fn down_periods(
    conn: &mut SqliteConnection,
    key: &ConnectorKey,
    now: DateTime<Utc>,
    window: chrono::Duration,
) -> Result<KeyPeriods> {
    let (a, b) = method_spellings(&key.method);
    let any_method = Method::parse(&key.method) == Method::Unknown;
    let rows: Vec<(String, i64, Option<i64>, Option<i64>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(DOWN_PERIODS_SQL.as_str()))
            .bind(key.institution_id.clone())
            .bind(a)
            .bind(b)
            .bind(any_method)
            // Basiq lists jobs 7 days: a day more covers a job that ran across the edge.
            .bind(ts(now - chrono::Duration::days(8)))
            .fetch_all(&mut *conn)
            .await?;
    let mut periods = KeyPeriods::default();
    for (source, started, since, ended) in rows {
        let until = from_opt_ts(ended);
        if source == "inferred" {
            periods.inferred.push(DownPeriod {
                from: from_ts(started).checked_sub_signed(window),
                until,
            });
        } else if source == "maintenance" {
            periods.maintenance.push(DownPeriod {
                from: Some(from_ts(started)),
                until,
            });
        } else {
            periods.connectors.push(DownPeriod {
                from: from_opt_ts(since),
                until,
            });
        }
    }
    Ok(periods)
}

fn job_state(state: &str) -> JobState {
    match state {
        "success" => JobState::Success,
        "failed" => JobState::Failed,
        _ => JobState::InProgress,
    }
}

/// The inferred-outage facts at one connector: whether one is open, and how many distinct
/// users other than `except` failed bank-side there since `since` (and since the connector
/// last recovered from an outage, reported or inferred: failures seen late from an outage
/// that is over do not infer a new one), counted up to `limit` only. Reads only
/// the partial index of bank-side failures, so its cost does not grow with the bank.
pub async fn inference_at(
    conn: &mut SqliteConnection,
    key: &ConnectorKey,
    except: Option<&UserId>,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Inference> {
    let (open, recovered, failing) = inference(conn, key, except, since, limit).await?;
    Ok(Inference {
        open,
        other_users_failing: i64::try_from(failing.len()).unwrap_or(i64::MAX),
        counts_since: recovered.map(from_ts),
    })
}

/// Writes connections' whole state, in one statement. Basiq's "capped until" only grows here: a refresh
/// answered 429 while the row was being planned is not forgotten.
pub(super) async fn write_rows(
    conn: &mut SqliteConnection,
    rows: &[&ConnectionRow],
    now: DateTime<Utc>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = upsert_rows_sql(rows.len());
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for r in rows {
        query = bind_row(query, r, now);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

/// The multi-row upsert of `n` connection rows: a stored row takes the new values but keeps
/// its `first_seen_at`, and its `basiq_capped_until` only grows.
fn upsert_rows_sql(n: usize) -> String {
    let one =
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
               ?, ?, ?)";
    let values = super::shapes::repeat(one, n);
    format!(
        "INSERT INTO connections (connection_id, user_id, institution_id, method, status,
             created_date, last_used, expiry_date, newest_job_id, newest_job_state, newest_job_code,
             newest_job_side, newest_job_created, newest_job_updated, health, reason, checked_at,
             health_since, consent_warned_days, gone_at, basiq_capped_until, refresh_due_at,
             refresh_due_trigger, transient_retries, transient_job_id, mfa_enabled,
             needs_user_present, bank_failure_at, first_seen_at, invalid_from, invalid_seen,
             refresh_due_since)
         VALUES {values}
         ON CONFLICT (connection_id) DO UPDATE SET
             user_id = excluded.user_id, institution_id = excluded.institution_id,
             method = excluded.method, status = excluded.status,
             created_date = excluded.created_date, last_used = excluded.last_used,
             expiry_date = excluded.expiry_date, newest_job_id = excluded.newest_job_id,
             newest_job_state = excluded.newest_job_state, newest_job_code = excluded.newest_job_code,
             newest_job_side = excluded.newest_job_side,
             newest_job_created = excluded.newest_job_created,
             newest_job_updated = excluded.newest_job_updated, health = excluded.health,
             reason = excluded.reason, checked_at = excluded.checked_at,
             health_since = excluded.health_since,
             consent_warned_days = excluded.consent_warned_days, gone_at = excluded.gone_at,
             basiq_capped_until = CASE
                 WHEN connections.basiq_capped_until IS NULL THEN excluded.basiq_capped_until
                 WHEN excluded.basiq_capped_until IS NULL THEN connections.basiq_capped_until
                 ELSE MAX(connections.basiq_capped_until, excluded.basiq_capped_until) END,
             refresh_due_at = excluded.refresh_due_at,
             refresh_due_trigger = excluded.refresh_due_trigger,
             transient_retries = excluded.transient_retries,
             transient_job_id = excluded.transient_job_id, mfa_enabled = excluded.mfa_enabled,
             needs_user_present = excluded.needs_user_present,
             bank_failure_at = excluded.bank_failure_at,
             invalid_from = excluded.invalid_from, invalid_seen = excluded.invalid_seen,
             refresh_due_since = excluded.refresh_due_since"
    )
}

/// Binds one row's 32 values to the upsert, in its column order (`first_seen_at` is `now`).
fn bind_row<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    r: &ConnectionRow,
    now: DateTime<Utc>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    let job = r.newest_job.as_ref();
    let side = job.and_then(|j| j.side).map(Side::as_str);
    query
        .bind(r.connection_id.as_str().to_owned())
        .bind(r.user_id.as_str())
        .bind(r.institution_id.as_str())
        .bind(r.method.as_str().to_owned())
        .bind(r.status.as_str().to_owned())
        .bind(opt_ts(r.created_date))
        .bind(opt_ts(r.last_used))
        .bind(opt_ts(r.expiry_date))
        .bind(r.newest_job_id.clone())
        .bind(job.map(|j| j.state.as_str()))
        .bind(job.and_then(|j| j.failure_code.clone()))
        .bind(side)
        .bind(job.and_then(|j| opt_ts(j.created)))
        .bind(job.and_then(|j| opt_ts(j.updated)))
        .bind(r.health.map(Health::as_str))
        .bind(r.reason.clone())
        .bind(opt_ts(r.checked_at))
        .bind(opt_ts(r.health_since))
        .bind(r.consent_warned_days)
        .bind(opt_ts(r.gone_at))
        .bind(r.basiq_capped_until.map(ts_ceil))
        .bind(r.refresh_due.map(|o| ts_ceil(o.at)))
        .bind(r.refresh_due.map(|o| o.trigger.as_str()))
        .bind(i64::from(r.transient_retries))
        .bind(r.transient_job_id.clone())
        .bind(r.mfa_enabled)
        .bind(r.needs_user_present)
        .bind(opt_ts(r.bank_failure_at))
        .bind(ts(now))
        .bind(opt_ts(r.invalid_from))
        .bind(opt_ts(r.invalid_seen))
        .bind(r.refresh_due.and_then(|o| opt_ts(o.since)))
}

/// The reclassification's one statement, made once ([`rows_at_connector`]): the walk of the
/// institution's connections in rowid order from the cursor, through the index that holds
/// them in that order: no sort, each row read once, and the rows read in the order they are
/// stored (a page read serves every row on it). The method is checked on the row.
static ROWS_AT_CONNECTOR_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT rowid AS walk_rowid, {COLUMNS},
             (SELECT MAX(reserved_at) FROM refresh_attempts a
               WHERE a.connection_id = connections.connection_id) AS attempt_last,
             (SELECT MIN(CASE WHEN reserved_at > ?6 THEN reserved_at END) FROM refresh_attempts a
               WHERE a.connection_id = connections.connection_id) AS attempt_oldest
         FROM connections INDEXED BY connections_institution
         WHERE institution_id = ?1 AND rowid > ?4
           AND (method IN (?2, ?3) OR method = 'unknown') AND gone_at IS NULL
         ORDER BY rowid LIMIT ?5 + 0"
    )
});

/// One batch of the connections at a connector, in rowid order after `after_rowid` (0: from
/// the start). A connector
/// keyed by an unknown method is its institution: every connection there. Its cost is the
/// batch (and the institution's connections at other methods it steps over), not the bank.
pub async fn rows_at_connector(
    conn: &mut SqliteConnection,
    key: &ConnectorKey,
    after_rowid: i64,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<AtConnector> {
    let (a, b) = method_spellings(&key.method);
    let raw: Vec<RawWalked> = sqlx::query_as(sqlx::AssertSqlSafe(ROWS_AT_CONNECTOR_SQL.as_str()))
        .bind(key.institution_id.clone())
        .bind(a)
        .bind(b)
        .bind(after_rowid)
        .bind(i64::from(limit))
        .bind(ts(now - CAP_WINDOW))
        .fetch_all(&mut *conn)
        .await?;
    let mut batch = AtConnector {
        last_rowid: raw.last().map(|r| r.walk_rowid),
        ..AtConnector::default()
    };
    for r in raw {
        let row = ConnectionRow::from(r.inner.row);
        if r.inner.attempt_last.is_some() {
            batch.attempts.insert(
                row.connection_id.clone(),
                Attempts {
                    last: from_opt_ts(r.inner.attempt_last),
                    oldest_in_window: from_opt_ts(r.inner.attempt_oldest),
                },
            );
        }
        batch.rows.push(row);
    }
    Ok(batch)
}

/// One batch of a reclassification's walk ([`rows_at_connector`]).
#[derive(Debug, Default)]
pub struct AtConnector {
    pub rows: Vec<ConnectionRow>,
    /// Our refresh attempts of the rows.
    pub attempts: HashMap<ConnectionId, Attempts>,
    /// Where the walk stands after this batch (the last row's rowid).
    pub last_rowid: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
struct RawWalked {
    walk_rowid: i64,
    #[sqlx(flatten)]
    inner: RawWithAttempts,
}

/// Stores a refresh decision: the connection's last decision and one history row.
pub async fn record_decision(
    conn: &mut SqliteConnection,
    row: &ConnectionRow,
    trigger: Trigger,
    decision: DecisionKind,
    reason: Option<&str>,
    job_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE connections SET last_decision = ?, last_decision_reason = ?,
             last_decision_trigger = ?, last_decision_at = ? WHERE connection_id = ?",
    )
    .bind(decision.as_str())
    .bind(reason.map(str::to_owned))
    .bind(trigger.as_str())
    .bind(ts(now))
    .bind(row.connection_id.as_str())
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_decisions (connection_id, user_id, trigger, decision, reason, job_id, decided_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.connection_id.as_str())
    .bind(row.user_id.as_str())
    .bind(trigger.as_str())
    .bind(decision.as_str())
    .bind(reason.map(str::to_owned))
    .bind(job_id.map(str::to_owned))
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// How many users other than `except` failed bank-side at the connector since `since`
    /// (and since it last recovered from a reported outage), counted up to `limit`.
    pub async fn others_failing(
        &self,
        key: &ConnectorKey,
        except: Option<&UserId>,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<i64> {
        let mut conn = self.pool().acquire().await?;
        Ok(inference_at(&mut conn, key, except, since, limit)
            .await?
            .other_users_failing)
    }

    /// Every watched connection (of users not removed), for reports.
    pub async fn all_connections(&self, user: Option<&UserId>) -> Result<Vec<ConnectionRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM connections
             WHERE gone_at IS NULL AND (?1 IS NULL OR user_id = ?1)
               AND NOT EXISTS (SELECT 1 FROM users u
                               WHERE u.user_id = connections.user_id AND u.removed_at IS NOT NULL)
             ORDER BY user_id, connection_id"
        );
        let rows: Vec<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user.map(|u| u.as_str().to_owned()))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(ConnectionRow::from).collect())
    }

    /// At most `limit` watched connections: those needing the user's action first (through
    /// their partial index), then the others in id order. Reads `limit` rows, not the table.
    pub async fn connections_listed(&self, limit: usize) -> Result<Vec<ConnectionRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let not_removed = "NOT EXISTS (SELECT 1 FROM users u
                           WHERE u.user_id = connections.user_id AND u.removed_at IS NOT NULL)";
        let sql = format!(
            "SELECT {COLUMNS} FROM connections INDEXED BY connections_action_required
             WHERE health = 'action-required' AND gone_at IS NULL AND {not_removed}
             ORDER BY connection_id LIMIT ? + 0"
        );
        let mut rows: Vec<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        let left = limit - i64::try_from(rows.len()).unwrap_or(i64::MAX);
        if left > 0 {
            let sql = format!(
                "SELECT {COLUMNS} FROM connections
                 WHERE health IS NOT 'action-required' AND gone_at IS NULL AND {not_removed}
                 ORDER BY connection_id LIMIT ? + 0"
            );
            let more: Vec<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(left)
                .fetch_all(self.pool())
                .await?;
            rows.extend(more);
        }
        Ok(rows.into_iter().map(ConnectionRow::from).collect())
    }

    pub async fn connection(&self, id: &ConnectionId) -> Result<Option<ConnectionRow>> {
        let mut conn = self.pool().acquire().await?;
        connection(&mut conn, id).await
    }

    pub async fn record_decision(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        decision: DecisionKind,
        reason: Option<&str>,
        job_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        record_decision(&mut tx, row, trigger, decision, reason, job_id, now).await?;
        tx.commit().await
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

pub async fn connection(
    conn: &mut SqliteConnection,
    id: &ConnectionId,
) -> Result<Option<ConnectionRow>> {
    let sql = format!("SELECT {COLUMNS} FROM connections WHERE connection_id = ?");
    let row: Option<RawConnection> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(ConnectionRow::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite runs `sql` with `binds`: one line per step of its plan.
    async fn query_plan(store: &Store, sql: &str, binds: &[&str]) -> Vec<String> {
        let sql = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(sql));
        for b in binds {
            query = query.bind(b.to_string());
        }
        let steps = query.fetch_all(store.pool()).await.unwrap();
        steps.into_iter().map(|(_, _, _, detail)| detail).collect()
    }

    /// A reclassification batch walks the institution's connections in storage order from
    /// its cursor: no sort of the bank's connections, however many there are.
    #[tokio::test]
    async fn a_reclassification_batch_walks_the_index_from_its_cursor_without_a_sort() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("plan.db")).await.unwrap();
        let binds = ["AU00000", "open-banking", "openbanking", "7", "500", "0"];
        let plan = query_plan(&store, &ROWS_AT_CONNECTOR_SQL, &binds).await;
        assert!(
            plan.iter().any(|step| step
                .contains("USING INDEX connections_institution (institution_id=? AND rowid>?)")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }
}
