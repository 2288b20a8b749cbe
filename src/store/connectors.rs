//! Connector statuses with their history, and outages (from `/connectors` or inferred).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::connections::method_spellings;
use super::{Result, Store, from_opt_ts, from_ts, ts};
use crate::domain::{Connector, ConnectorStatus, Method};

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
        let stored: Vec<(String, String, String)> =
            sqlx::query_as("SELECT institution_id, method, status FROM connectors")
                .fetch_all(&mut *tx)
                .await?;
        let stored: HashMap<(String, String), String> =
            stored.into_iter().map(|(i, m, s)| ((i, m), s)).collect();
        let mut changes = Vec::new();
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
            if c.status.is_outage() {
                sqlx::query(
                    "INSERT INTO outages (institution_id, method, source, status, started_at)
                     VALUES (?, ?, 'connectors', ?, ?)
                     ON CONFLICT (institution_id, method, source) WHERE ended_at IS NULL
                     DO UPDATE SET status = excluded.status",
                )
                .bind(key.0.clone())
                .bind(key.1.clone())
                .bind(c.status.as_str().to_owned())
                .bind(ts(now))
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
        tx.commit().await?;
        Ok(changes)
    }

    /// Every connector's last known status.
    pub async fn connector_statuses(&self) -> Result<HashMap<(String, String), ConnectorStatus>> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT institution_id, method, status FROM connectors")
                .fetch_all(self.pool())
                .await?;
        Ok(rows
            .into_iter()
            .map(|(i, m, s)| ((i, m), ConnectorStatus::parse(&s)))
            .collect())
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

/// Opens an inferred outage unless one is open; true when it opened one.
pub async fn open_inferred(
    conn: &mut SqliteConnection,
    institution_id: &str,
    method: &str,
    users: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    if inferred_open(conn, institution_id, method).await? {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO outages (institution_id, method, source, started_at, affected_users)
         VALUES (?, ?, 'inferred', ?, ?)",
    )
    .bind(institution_id.to_owned())
    .bind(Method::parse(method).as_str().to_owned())
    .bind(ts(now))
    .bind(users)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Ends an open inferred outage; true when one was open.
pub async fn close_inferred(
    conn: &mut SqliteConnection,
    institution_id: &str,
    method: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let (a, b) = method_spellings(method);
    let done = sqlx::query(
        "UPDATE outages SET ended_at = ? WHERE institution_id = ? AND method IN (?, ?)
         AND source = 'inferred' AND ended_at IS NULL",
    )
    .bind(ts(now))
    .bind(institution_id.to_owned())
    .bind(a)
    .bind(b)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}
