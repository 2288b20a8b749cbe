//! Connector statuses with their history, and outages (from `/connectors` or inferred).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::method_spellings;
use super::{Result, Store, from_opt_ts, from_ts, ts};
use crate::domain::{ConnectorKey, ConnectorStatus, Method};
use crate::plan::connectors::{ConnectorsPlan, KnownConnector, StatusChange};
use crate::plan::{CdrWitness, ConnectorStatuses, OutageRow, OutageSource, Window};

#[derive(sqlx::FromRow)]
struct RawOutage {
    id: i64,
    institution_id: String,
    method: String,
    source: String,
    status: Option<String>,
    started_at: i64,
    ended_at: Option<i64>,
    affected_users: Option<i64>,
    explanation: Option<String>,
}

impl From<RawOutage> for OutageRow {
    fn from(r: RawOutage) -> Self {
        Self {
            id: r.id,
            institution_id: r.institution_id,
            method: r.method,
            // Only the three are ever written (a CHECK says so).
            source: OutageSource::parse(&r.source).unwrap_or(OutageSource::Connectors),
            status: r.status,
            started_at: from_ts(r.started_at),
            ended_at: from_opt_ts(r.ended_at),
            affected_users: r.affected_users,
            explanation: r.explanation,
        }
    }
}

impl Store {
    /// Whether a reclassification that is (`recovery`) or is not an outage's recovery is
    /// pending.
    pub async fn reclassify_pending(&self, recovery: bool) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM reclassify_queue WHERE recovery = ?)")
            .bind(recovery)
            .fetch_one(self.pool())
            .await
    }

    /// Every connector's last known status; `known` once `/connectors` has ever answered;
    /// what the data holders say at `now` (the CDR witness).
    pub async fn connector_statuses(&self, now: DateTime<Utc>) -> Result<ConnectorStatuses> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT institution_id, method, status FROM connectors")
                .fetch_all(self.pool())
                .await?;
        let answered: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'connectors_answered')",
        )
        .fetch_one(self.pool())
        .await?;
        let cdr = self.cdr_witnesses(now).await?;
        Ok(ConnectorStatuses {
            cdr,
            known: answered || !rows.is_empty(),
            statuses: rows
                .into_iter()
                .map(|(i, m, s)| {
                    (
                        ConnectorKey {
                            institution_id: i,
                            method: m,
                        },
                        ConnectorStatus::parse(&s),
                    )
                })
                .collect(),
        })
    }

    /// The outages open now; a `cdr` one whose witness cannot be read says nothing and is
    /// left out.
    pub async fn open_outages(&self) -> Result<Vec<OutageRow>> {
        let sql = format!(
            "SELECT id, institution_id, method, source, status, started_at, ended_at, affected_users, explanation
             FROM outages WHERE ended_at IS NULL AND NOT {} ORDER BY started_at, id",
            CDR_UNREAD
        );
        sqlx::query_as::<_, RawOutage>(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.pool())
            .await
            .map(|rows| rows.into_iter().map(OutageRow::from).collect())
    }

    /// Outages that started or ended since `since`, and those still open.
    pub async fn outages_since(&self, since: DateTime<Utc>) -> Result<Vec<OutageRow>> {
        sqlx::query_as::<_, RawOutage>(
            "SELECT id, institution_id, method, source, status, started_at, ended_at, affected_users, explanation
             FROM outages WHERE ended_at IS NULL OR ended_at >= ? OR started_at >= ?
             ORDER BY started_at, id",
        )
        .bind(ts(since))
        .bind(ts(since))
        .fetch_all(self.pool())
        .await
        .map(|rows| rows.into_iter().map(OutageRow::from).collect())
    }
}

/// The last known statuses of the connectors at one institution, as committed (what the
/// cache hands out once the transaction that wrote them has committed); `known` once
/// `/connectors` has ever answered.
pub async fn statuses_at(
    conn: &mut SqliteConnection,
    institution_id: &str,
    now: DateTime<Utc>,
) -> Result<ConnectorStatuses> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT method, status FROM connectors WHERE institution_id = ?")
            .bind(institution_id.to_owned())
            .fetch_all(&mut *conn)
            .await?;
    let known: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'connectors_answered')
             OR EXISTS (SELECT 1 FROM connectors)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let cdr = witnesses(conn, Some(institution_id), now).await?;
    Ok(ConnectorStatuses {
        cdr,
        known,
        statuses: rows
            .into_iter()
            .map(|(method, status)| {
                (
                    ConnectorKey {
                        institution_id: institution_id.to_owned(),
                        method,
                    },
                    ConnectorStatus::parse(&status),
                )
            })
            .collect(),
    })
}

/// What is known of every connector: its last status and when it was last read.
pub async fn known_connectors(
    conn: &mut SqliteConnection,
) -> Result<HashMap<ConnectorKey, KnownConnector>> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT institution_id, method, status, checked_at FROM connectors")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(i, m, status, at)| {
            let known = KnownConnector {
                status: ConnectorStatus::parse(&status),
                checked_at: from_ts(at),
            };
            (ConnectorKey::new(&i, &Method::parse(&m)), known)
        })
        .collect())
}

/// Writes a planned `/connectors` answer: read times, status changes with their history,
/// outages Basiq reported opening or closing, inferred outages a recovery ends, and the
/// reclassifications queued. The outage notices are the caller's.
pub async fn write_connectors(
    conn: &mut SqliteConnection,
    plan: &ConnectorsPlan,
    now: DateTime<Utc>,
) -> Result<()> {
    for (key, name) in &plan.unchanged {
        sqlx::query(
            "UPDATE connectors SET checked_at = ?, name = COALESCE(?, name)
             WHERE institution_id = ? AND method = ?",
        )
        .bind(ts(now))
        .bind(name.clone())
        .bind(key.institution_id.clone())
        .bind(key.method.clone())
        .execute(&mut *conn)
        .await?;
    }
    for change in &plan.changes {
        write_change(conn, change, now).await?;
    }
    for (key, short_name, abn) in &plan.institutions {
        sqlx::query(
            "UPDATE connectors SET short_name = COALESCE(?, short_name), abn = COALESCE(?, abn)
             WHERE institution_id = ? AND method = ?",
        )
        .bind(short_name.clone())
        .bind(abn.clone())
        .bind(key.institution_id.clone())
        .bind(key.method.clone())
        .execute(&mut *conn)
        .await?;
    }
    for requeue in &plan.requeue {
        queue_reclassify(conn, &requeue.key, requeue.ended_after, now).await?;
    }
    sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('connectors_answered', '1')")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One connector's status change: the connector, its history, and the outage Basiq reports.
async fn write_change(
    conn: &mut SqliteConnection,
    change: &StatusChange,
    now: DateTime<Utc>,
) -> Result<()> {
    let key = &change.key;
    sqlx::query(
        "INSERT INTO connectors (institution_id, method, status, name, since, checked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (institution_id, method) DO UPDATE SET status = excluded.status,
             name = COALESCE(excluded.name, connectors.name), since = excluded.since,
             checked_at = excluded.checked_at",
    )
    .bind(key.institution_id.clone())
    .bind(key.method.clone())
    .bind(change.to.as_str().to_owned())
    .bind(change.name.clone())
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO connector_status_changes (institution_id, method, from_status, to_status, from_down, changed_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(key.institution_id.clone())
    .bind(key.method.clone())
    .bind(change.from.as_ref().map(|s| s.as_str().to_owned()))
    .bind(change.to.as_str().to_owned())
    .bind(change.was_down)
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    if change.recovered() {
        // Basiq says the bank is back: an inference drawn from failures during the outage
        // is over too.
        close_inferred(conn, key, now).await?;
    }
    if change.is_down() {
        sqlx::query(
            "INSERT INTO outages (institution_id, method, source, status, started_at, since)
             VALUES (?, ?, 'connectors', ?, ?, ?)
             ON CONFLICT (institution_id, method, source) WHERE ended_at IS NULL
             DO UPDATE SET status = excluded.status",
        )
        .bind(key.institution_id.clone())
        .bind(key.method.clone())
        .bind(change.to.as_str().to_owned())
        .bind(ts(now))
        .bind(change.down_since.map(ts))
        .execute(&mut *conn)
        .await?;
    } else {
        sqlx::query(
            "UPDATE outages SET ended_at = ? WHERE institution_id = ? AND method = ?
             AND source = 'connectors' AND ended_at IS NULL",
        )
        .bind(ts(now))
        .bind(key.institution_id.clone())
        .bind(key.method.clone())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Whether an inferred outage is open at the connector.
pub async fn inferred_open(
    conn: &mut SqliteConnection,
    institution_id: &str,
    method: &str,
) -> Result<bool> {
    let (a, b) = method_spellings(method);
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outages WHERE institution_id = ? AND method IN (?, ?)
         AND source = 'inferred' AND ended_at IS NULL",
    )
    .bind(institution_id.to_owned())
    .bind(a)
    .bind(b)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// Ends an open inferred outage, if one is; whether one was.
pub async fn close_inferred(
    conn: &mut SqliteConnection,
    key: &ConnectorKey,
    now: DateTime<Utc>,
) -> Result<bool> {
    let (a, b) = method_spellings(&key.method);
    let done = sqlx::query(
        "UPDATE outages SET ended_at = ? WHERE institution_id = ? AND method IN (?, ?)
         AND source = 'inferred' AND ended_at IS NULL",
    )
    .bind(ts(now))
    .bind(key.institution_id.clone())
    .bind(a)
    .bind(b)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// One connector's pending reclassification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclassify {
    pub key: ConnectorKey,
    pub queued_at: DateTime<Utc>,
    /// The last connection done: its rowid (where the walk stands) and its id.
    pub cursor_rowid: i64,
    pub cursor: String,
    pub recovery: bool,
    pub recovery_total: u32,
    pub recovery_done: u32,
    /// A recovery: the earliest the outage may have ended.
    pub ended_after: Option<DateTime<Utc>>,
}

/// Queues the reclassification of every connection at a connector; `ended_after` (a
/// recovery): an outage there ended, no earlier than then, so the connections it held get
/// recovery slots. A queued one starts over.
pub async fn queue_reclassify(
    conn: &mut SqliteConnection,
    key: &ConnectorKey,
    ended_after: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<()> {
    let (a, b) = method_spellings(&key.method);
    sqlx::query(
        "INSERT INTO reclassify_queue (institution_id, method, queued_at, cursor, recovery, recovery_total, recovery_done, ended_after)
         VALUES (?1, ?2, ?3, '', ?4, CASE WHEN ?4 THEN (
             SELECT COUNT(*) FROM connections WHERE institution_id = ?1
               AND (method IN (?5, ?6) OR method = 'unknown') AND gone_at IS NULL
               AND health = 'institution-outage') ELSE 0 END, 0, ?7)
         ON CONFLICT (institution_id, method) DO UPDATE SET
             queued_at = excluded.queued_at, cursor = '', cursor_rowid = 0,
             recovery = MAX(reclassify_queue.recovery, excluded.recovery),
             recovery_total = CASE WHEN excluded.recovery THEN excluded.recovery_total
                                   ELSE reclassify_queue.recovery_total END,
             recovery_done = CASE WHEN excluded.recovery THEN 0
                                  ELSE reclassify_queue.recovery_done END,
             ended_after = CASE WHEN excluded.recovery THEN excluded.ended_after
                                ELSE reclassify_queue.ended_after END",
    )
    .bind(key.institution_id.clone())
    .bind(Method::parse(&key.method).as_str().to_owned())
    .bind(ts(now))
    .bind(ended_after.is_some())
    .bind(a)
    .bind(b)
    .bind(ended_after.map(ts))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The oldest pending reclassification that is (`recovery`) or is not an outage's recovery.
pub async fn next_reclassify(
    conn: &mut SqliteConnection,
    recovery: bool,
) -> Result<Option<Reclassify>> {
    let row: Option<QueuedRow> = sqlx::query_as(
        "SELECT institution_id, method, queued_at, cursor_rowid, cursor, recovery, recovery_total,
                recovery_done, ended_after
         FROM reclassify_queue WHERE recovery = ? ORDER BY queued_at, institution_id, method LIMIT 1",
    )
    .bind(recovery)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| Reclassify {
        key: ConnectorKey {
            institution_id: r.institution_id,
            method: r.method,
        },
        queued_at: from_ts(r.queued_at),
        cursor_rowid: r.cursor_rowid,
        cursor: r.cursor,
        recovery: r.recovery,
        recovery_total: u32::try_from(r.recovery_total).unwrap_or(0),
        recovery_done: u32::try_from(r.recovery_done).unwrap_or(0),
        ended_after: from_opt_ts(r.ended_after),
    }))
}

#[derive(sqlx::FromRow)]
struct QueuedRow {
    institution_id: String,
    method: String,
    queued_at: i64,
    cursor_rowid: i64,
    cursor: String,
    recovery: bool,
    recovery_total: i64,
    recovery_done: i64,
    ended_after: Option<i64>,
}

/// Records a batch done; `finished` removes the entry.
pub async fn advance_reclassify(
    conn: &mut SqliteConnection,
    job: &Reclassify,
    finished: bool,
) -> Result<()> {
    if finished {
        sqlx::query("DELETE FROM reclassify_queue WHERE institution_id = ? AND method = ?")
            .bind(job.key.institution_id.clone())
            .bind(job.key.method.clone())
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query(
            "UPDATE reclassify_queue SET cursor_rowid = ?, cursor = ?, recovery_done = ?
             WHERE institution_id = ? AND method = ?",
        )
        .bind(job.cursor_rowid)
        .bind(job.cursor.clone())
        .bind(i64::from(job.recovery_done))
        .bind(job.key.institution_id.clone())
        .bind(job.key.method.clone())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A `cdr` outage whose witness cannot be read now (its brand's last read failed): it says
/// nothing, so it is neither "down" (not a period, not held against an ask) nor closed. For
/// a row of `outages`.
pub(super) const CDR_UNREAD: &str = "(outages.source = 'cdr' AND EXISTS (
    SELECT 1 FROM cdr_mappings m JOIN cdr_polls p ON p.brand_id = m.brand_id
    WHERE m.institution_id = outages.institution_id AND p.failures > 0))";

/// What the data holders say of the open-banking connectors (of one institution, or all).
/// An open outage whose brand's last read failed says nothing: the witness is unknown.
pub async fn witnesses(
    conn: &mut SqliteConnection,
    institution: Option<&str>,
    now: DateTime<Utc>,
) -> Result<HashMap<ConnectorKey, CdrWitness>> {
    let mut out: HashMap<ConnectorKey, CdrWitness> = HashMap::new();
    let sql = format!(
        "SELECT institution_id FROM outages
         WHERE source = 'cdr' AND ended_at IS NULL AND (?1 IS NULL OR institution_id = ?1)
           AND NOT {CDR_UNREAD}"
    );
    let down: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(institution.map(str::to_owned))
        .fetch_all(&mut *conn)
        .await?;
    for i in down {
        out.entry(crate::plan::witness::cdr_key(&i))
            .or_default()
            .down = true;
    }
    let windows: Vec<(String, i64, i64, bool)> = sqlx::query_as(
        "SELECT institution_id, starts_at, ends_at, partial FROM cdr_windows
         WHERE ends_at > ?1 AND withdrawn_at IS NULL AND (?2 IS NULL OR institution_id = ?2)
         ORDER BY starts_at, id",
    )
    .bind(ts(now))
    .bind(institution.map(str::to_owned))
    .fetch_all(&mut *conn)
    .await?;
    for (i, s, e, partial) in windows {
        out.entry(crate::plan::witness::cdr_key(&i))
            .or_default()
            .windows
            .push(Window {
                starts_at: from_ts(s),
                ends_at: from_ts(e),
                partial,
            });
    }
    Ok(out)
}
