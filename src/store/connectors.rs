//! Connector statuses with their history, and outages (from `/connectors` or inferred).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::connections::method_spellings;
use super::{Result, Store, from_opt_ts, from_ts, ts};
use crate::domain::{Connector, ConnectorKey, ConnectorStatus, Method};
use crate::plan::ConnectorStatuses;

/// A connector whose status moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectorChange {
    pub institution_id: String,
    pub method: String,
    pub from: Option<ConnectorStatus>,
    pub to: ConnectorStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OutageRow {
    pub id: i64,
    pub institution_id: String,
    pub method: String,
    /// `connectors` (Basiq said so) or `inferred` (several users failed bank-side).
    pub source: String,
    pub status: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub affected_users: Option<i64>,
}

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
}

impl From<RawOutage> for OutageRow {
    fn from(r: RawOutage) -> Self {
        Self {
            id: r.id,
            institution_id: r.institution_id,
            method: r.method,
            source: r.source,
            status: r.status,
            started_at: from_ts(r.started_at),
            ended_at: from_opt_ts(r.ended_at),
            affected_users: r.affected_users,
        }
    }
}

/// The key of a connector: institution id and the canonical spelling of its method.
pub fn connector_key(institution_id: &str, method: &Method) -> (String, String) {
    (institution_id.to_owned(), method.as_str().to_owned())
}

impl Store {
    /// Stores a fresh `/connectors` answer; records status changes and opens or closes
    /// outages. Returns the connectors whose status moved.
    pub async fn record_connectors(
        &self,
        connectors: &[Connector],
        now: DateTime<Utc>,
    ) -> Result<Vec<ConnectorChange>> {
        let mut tx = self.write().await?;
        let stored: Vec<(String, String, String, i64)> =
            sqlx::query_as("SELECT institution_id, method, status, checked_at FROM connectors")
                .fetch_all(&mut *tx)
                .await?;
        // The status of each connector at the last read, and when that read was.
        let seen: HashMap<(String, String), i64> = stored
            .iter()
            .map(|(i, m, _, at)| ((i.clone(), m.clone()), *at))
            .collect();
        let stored: HashMap<(String, String), String> =
            stored.into_iter().map(|(i, m, s, _)| ((i, m), s)).collect();
        let mut changes = Vec::new();
        let mut notices = Vec::new();
        for c in connectors {
            let key = connector_key(c.institution_id.as_str(), &c.method);
            let before = stored.get(&key);
            if before.map(String::as_str) == Some(c.status.as_str()) {
                sqlx::query("UPDATE connectors SET checked_at = ?, name = COALESCE(?, name) WHERE institution_id = ? AND method = ?")
                    .bind(ts(now))
                    .bind(c.name.clone())
                    .bind(key.0.clone())
                    .bind(key.1.clone())
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO connectors (institution_id, method, status, name, since, checked_at)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (institution_id, method) DO UPDATE SET status = excluded.status,
                     name = COALESCE(excluded.name, connectors.name), since = excluded.since,
                     checked_at = excluded.checked_at",
            )
            .bind(key.0.clone())
            .bind(key.1.clone())
            .bind(c.status.as_str().to_owned())
            .bind(c.name.clone())
            .bind(ts(now))
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO connector_status_changes (institution_id, method, from_status, to_status, changed_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(key.0.clone())
            .bind(key.1.clone())
            .bind(before.cloned())
            .bind(c.status.as_str().to_owned())
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            let was_down = before.is_some_and(|b| ConnectorStatus::parse(b).is_down());
            let recovered = was_down && !c.status.is_down();
            if was_down != c.status.is_down() && tx.notices() {
                let key = ConnectorKey {
                    institution_id: key.0.clone(),
                    method: key.1.clone(),
                };
                let affected = super::events::connections_at(&mut tx, &key).await?;
                notices.push(crate::plan::notices::outage_notice(
                    &key,
                    c.status.is_down(),
                    crate::plan::notices::OutageSource::Connectors,
                    affected,
                ));
            }
            if recovered {
                // Basiq says the bank is back: an inference drawn from failures during the
                // outage is over too.
                close_inferred(&mut tx, &key.0, &key.1, now).await?;
            }
            // Recovered since the last read, which still saw it down.
            let ended_after = recovered.then(|| seen.get(&key).map_or(now, |at| from_ts(*at)));
            queue_reclassify(
                &mut tx,
                &ConnectorKey {
                    institution_id: key.0.clone(),
                    method: key.1.clone(),
                },
                ended_after,
                now,
            )
            .await?;
            if c.status.is_down() {
                // The earliest it may have begun: the last read that saw it up. Down at the
                // first sight: not known.
                let since = before
                    .filter(|b| !ConnectorStatus::parse(b).is_down())
                    .and(seen.get(&key).copied());
                sqlx::query(
                    "INSERT INTO outages (institution_id, method, source, status, started_at, since)
                     VALUES (?, ?, 'connectors', ?, ?, ?)
                     ON CONFLICT (institution_id, method, source) WHERE ended_at IS NULL
                     DO UPDATE SET status = excluded.status",
                )
                .bind(key.0.clone())
                .bind(key.1.clone())
                .bind(c.status.as_str().to_owned())
                .bind(ts(now))
                .bind(since)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE outages SET ended_at = ? WHERE institution_id = ? AND method = ?
                     AND source = 'connectors' AND ended_at IS NULL",
                )
                .bind(ts(now))
                .bind(key.0.clone())
                .bind(key.1.clone())
                .execute(&mut *tx)
                .await?;
            }
            changes.push(ConnectorChange {
                institution_id: key.0,
                method: key.1,
                from: before.map(|s| ConnectorStatus::parse(s)),
                to: c.status.clone(),
            });
        }
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('connectors_answered', '1')")
            .execute(&mut *tx)
            .await?;
        if !notices.is_empty() {
            super::events::write_notices(&mut tx, &notices, now).await?;
            tx.wrote_notices();
        }
        tx.commit().await?;
        Ok(changes)
    }

    /// Every connector's last known status; `known` once `/connectors` has ever answered.
    pub async fn connector_statuses(&self) -> Result<ConnectorStatuses> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT institution_id, method, status FROM connectors")
                .fetch_all(self.pool())
                .await?;
        let answered: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'connectors_answered')",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(ConnectorStatuses {
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

    pub async fn open_outages(&self) -> Result<Vec<OutageRow>> {
        sqlx::query_as::<_, RawOutage>(
            "SELECT id, institution_id, method, source, status, started_at, ended_at, affected_users
             FROM outages WHERE ended_at IS NULL ORDER BY started_at, id",
        )
        .fetch_all(self.pool())
        .await
        .map(|rows| rows.into_iter().map(OutageRow::from).collect())
    }

    /// Outages that started or ended since `since`, and those still open.
    pub async fn outages_since(&self, since: DateTime<Utc>) -> Result<Vec<OutageRow>> {
        sqlx::query_as::<_, RawOutage>(
            "SELECT id, institution_id, method, source, status, started_at, ended_at, affected_users
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

/// Ends an open inferred outage; when one was open, when it was inferred.
pub async fn close_inferred(
    conn: &mut SqliteConnection,
    institution_id: &str,
    method: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let (a, b) = method_spellings(method);
    let started: Option<i64> = sqlx::query_scalar(
        "UPDATE outages SET ended_at = ? WHERE institution_id = ? AND method IN (?, ?)
         AND source = 'inferred' AND ended_at IS NULL RETURNING started_at",
    )
    .bind(ts(now))
    .bind(institution_id.to_owned())
    .bind(a)
    .bind(b)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(started.map(from_ts))
}

/// One connector's pending reclassification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclassify {
    pub key: ConnectorKey,
    pub queued_at: DateTime<Utc>,
    /// The last connection id done.
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
             queued_at = excluded.queued_at, cursor = '',
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

/// The oldest pending reclassification.
pub async fn next_reclassify(conn: &mut SqliteConnection) -> Result<Option<Reclassify>> {
    let row: Option<QueuedRow> = sqlx::query_as(
        "SELECT institution_id, method, queued_at, cursor, recovery, recovery_total, recovery_done,
                ended_after
         FROM reclassify_queue ORDER BY queued_at, institution_id, method LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| Reclassify {
        key: ConnectorKey {
            institution_id: r.institution_id,
            method: r.method,
        },
        queued_at: from_ts(r.queued_at),
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
            "UPDATE reclassify_queue SET cursor = ?, recovery_done = ?
             WHERE institution_id = ? AND method = ?",
        )
        .bind(job.cursor.clone())
        .bind(i64::from(job.recovery_done))
        .bind(job.key.institution_id.clone())
        .bind(job.key.method.clone())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
