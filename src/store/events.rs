//! Events heard (the inbox), notifications to send (the outbox) and their deliveries.
//!
//! The inbox is written before a webhook is answered (`synchronous = FULL`); its unique
//! keys make a retried or duplicated delivery, or an event heard by webhook and by the
//! poll, a no-op. The outbox is written inside the plan's transaction
//! ([`write_plan_notices`]): a notification exists exactly when the change that causes it
//! was committed. Deliveries are made per endpoint from the outbox after the endpoint's
//! cursor.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::SqliteConnection;

use super::{Result, Store, from_ts, ts, ts_ceil};
use crate::domain::{ConnectionId, ConnectorKey, UserId};
use crate::plan::classify::Health;
use crate::plan::notices::{self as notify, Notice};

/// One event to store in the inbox.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    pub delivery_id: &'a str,
    pub event_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub source: &'static str,
    pub user_id: Option<&'a str>,
    pub entity_link: Option<&'a str>,
    pub body: &'a str,
}

/// An inbox row waiting to be processed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct InboxRow {
    pub seq: i64,
    pub delivery_id: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub source: String,
    pub user_id: Option<String>,
    pub entity_link: Option<String>,
    pub attempts: i64,
}

/// An inbox row as `events list` shows it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct InboxEntry {
    pub seq: i64,
    pub delivery_id: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub source: String,
    pub user_id: Option<String>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub outcome: Option<String>,
}

/// A delivery due to be attempted, with its notification.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: i64,
    pub outbox_id: i64,
    pub order_key: String,
    pub webhook_id: String,
    pub payload: String,
    pub created_at: i64,
    pub attempts: i64,
    pub deadline: i64,
}

/// A delivery as `notify list` shows it.
#[derive(Clone, Debug, sqlx::FromRow, serde::Serialize)]
pub struct DeliveryEntry {
    pub id: i64,
    pub endpoint: String,
    pub webhook_id: String,
    pub event_type: String,
    pub user_id: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub failures: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub next_at: i64,
    pub done_at: Option<i64>,
}

/// Whether an endpoint is held after failing (see [`Store::endpoint_hold`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointHold {
    /// Rounds in a row whose every attempt failed; 0 when the last got through.
    pub failing: i64,
    /// Nothing is sent there before this.
    pub until: Option<DateTime<Utc>>,
}

/// Deliveries per endpoint and state, and failed attempts, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct DeliveryCounts {
    /// (endpoint, state) → deliveries.
    pub by_state: Vec<(String, String, i64)>,
    /// endpoint → attempts that failed.
    pub failures: Vec<(String, i64)>,
}

/// A fresh Standard Webhooks message id (the shape `DeliveryRef` takes:
/// `msg_` and 32 lowercase hex digits).
fn new_webhook_id() -> String {
    let bytes: [u8; crate::domain::WEBHOOK_ID_HEX / 2] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{hex}", crate::domain::WEBHOOK_ID_PREFIX)
}

/// Inserts notices into the outbox (multi-row).
pub async fn write_notices(
    conn: &mut SqliteConnection,
    notices: &[Notice],
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in super::shapes::chunks(notices) {
        let values = super::shapes::repeat("(?, ?, ?, ?, ?, ?)", chunk.len());
        let sql = format!(
            "INSERT INTO outbox (webhook_id, event_type, user_id, order_key, payload, created_at) VALUES {values}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for n in chunk {
            query = query
                .bind(new_webhook_id())
                .bind(n.event_type)
                .bind(n.user_id.as_ref().map(|u| u.as_str().to_owned()))
                .bind(n.order_key())
                .bind(n.payload(now).to_string())
                .bind(ts(now));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Watched connections at a connector (an outage notice's count).
pub async fn connections_at(conn: &mut SqliteConnection, key: &ConnectorKey) -> Result<i64> {
    let (a, b) = super::method_spellings(&key.method);
    let unknown = crate::domain::Method::Unknown.as_str().to_owned();
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM connections WHERE institution_id = ? AND method IN (?, ?, ?)
         AND gone_at IS NULL",
    )
    .bind(key.institution_id.clone())
    .bind(a)
    .bind(b)
    .bind(unknown)
    .fetch_one(&mut *conn)
    .await
}

/// What was last told of each of `ids` (health and reason).
pub async fn told(
    conn: &mut SqliteConnection,
    ids: &[&ConnectionId],
) -> Result<HashMap<String, notify::Told>> {
    let mut told = HashMap::new();
    for chunk in super::shapes::padded(ids) {
        let marks = super::shapes::repeat("?", chunk.len());
        let sql = format!(
            "SELECT connection_id, health, reason FROM notified WHERE connection_id IN ({marks})"
        );
        let mut query =
            sqlx::query_as::<_, (String, String, Option<String>)>(sqlx::AssertSqlSafe(sql));
        for id in &chunk {
            query = query.bind(id.as_str().to_owned());
        }
        for (id, health, reason) in query.fetch_all(&mut *conn).await? {
            if let Some(h) = Health::parse(&health) {
                told.insert(id, (h, reason));
            }
        }
    }
    Ok(told)
}

/// Writes planned notifications: the outbox rows and what is now told of each connection.
pub async fn write_planned(
    tx: &mut super::WriteTx,
    planned: &notify::Planned,
    now: DateTime<Utc>,
) -> Result<()> {
    if planned.notices.is_empty() && planned.told.is_empty() {
        return Ok(());
    }
    tx.wrote_notices();
    let conn: &mut SqliteConnection = tx;
    for chunk in super::shapes::chunks(&planned.told) {
        let values = super::shapes::repeat("(?, ?, ?)", chunk.len());
        let sql = format!(
            "INSERT INTO notified (connection_id, health, reason) VALUES {values}
             ON CONFLICT (connection_id) DO UPDATE SET health = excluded.health, reason = excluded.reason"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, (h, r)) in chunk {
            query = query
                .bind(id.as_str().to_owned())
                .bind(h.as_str())
                .bind(r.clone());
        }
        query.execute(&mut *conn).await?;
    }
    write_notices(conn, &planned.notices, now).await
}

impl Store {
    /// Stores an event heard, durably (`synchronous = FULL`) before the caller answers.
    /// False when it was heard before (same delivery id or event id).
    pub async fn insert_event(&self, e: &NewEvent<'_>, now: DateTime<Utc>) -> Result<bool> {
        let mut conn = self.write_pool().acquire().await?;
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        let done = sqlx::query(
            "INSERT OR IGNORE INTO inbox (delivery_id, event_id, event_type, source, user_id,
                 entity_link, body, received_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.delivery_id)
        .bind(e.event_id)
        .bind(e.event_type)
        .bind(e.source)
        .bind(e.user_id)
        .bind(e.entity_link)
        .bind(e.body)
        .bind(ts(now))
        .execute(&mut *conn)
        .await;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await
            .ok();
        Ok(self.note(done)?.rows_affected() > 0)
    }

    /// A newer `connection.health_changed` notice about the same connection exists: the
    /// older one is history the app need not be told.
    pub async fn newer_health_notice(
        &self,
        outbox_id: i64,
        order_key: &str,
        connection_id: &str,
    ) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE order_key = ? AND id > ?
                AND event_type = 'connection.health_changed'
                AND json_extract(payload, '$.data.connection_id') = ?)",
        )
        .bind(order_key)
        .bind(outbox_id)
        .bind(connection_id)
        .fetch_one(self.pool())
        .await
    }

    /// The payload of the last health notice about the connection that reached `endpoint`
    /// before outbox row `before`.
    pub async fn last_delivered_health(
        &self,
        endpoint: &str,
        order_key: &str,
        connection_id: &str,
        before: i64,
    ) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT o.payload FROM outbox o JOIN deliveries d ON d.outbox_id = o.id
             WHERE o.order_key = ? AND o.id < ? AND o.event_type = 'connection.health_changed'
               AND json_extract(o.payload, '$.data.connection_id') = ?
               AND d.endpoint = ? AND d.state = 'succeeded'
             ORDER BY o.id DESC LIMIT 1",
        )
        .bind(order_key)
        .bind(before)
        .bind(connection_id)
        .bind(endpoint)
        .fetch_optional(self.pool())
        .await
    }

    /// The newest outbox row's id (0 when empty).
    pub async fn newest_outbox_id(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM outbox")
            .fetch_one(self.pool())
            .await
    }

    /// The oldest unprocessed events due (not waiting for a retry).
    pub async fn unprocessed_events(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InboxRow>> {
        sqlx::query_as(
            "SELECT seq, delivery_id, event_id, event_type, source, user_id, entity_link, attempts
             FROM inbox WHERE processed_at IS NULL AND COALESCE(next_attempt_at, 0) <= ?
             ORDER BY seq LIMIT ? + 0",
        )
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
    }

    /// Marks an event processed with its outcome.
    pub async fn event_processed(&self, seq: i64, outcome: &str, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query("UPDATE inbox SET processed_at = ?, outcome = ? WHERE seq = ?")
            .bind(ts(now))
            .bind(outcome)
            .bind(seq)
            .execute(self.write_pool())
            .await;
        self.note(done).map(|_| ())
    }

    /// Counts a failed processing attempt; the event is taken again at `retry_at`.
    pub async fn event_attempt_failed(&self, seq: i64, retry_at: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE inbox SET attempts = attempts + 1, next_attempt_at = ? WHERE seq = ?",
        )
        .bind(ts(retry_at))
        .bind(seq)
        .execute(self.write_pool())
        .await;
        self.note(done).map(|_| ())
    }

    /// The newest inbox rows, for `events list`.
    pub async fn recent_events(&self, limit: u32) -> Result<Vec<InboxEntry>> {
        sqlx::query_as(
            "SELECT seq, delivery_id, event_id, event_type, source, user_id, received_at,
                 processed_at, outcome
             FROM inbox ORDER BY seq DESC LIMIT ? + 0",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
    }

    /// Events per type and source, for `/metrics`.
    pub async fn event_counts(&self) -> Result<Vec<(String, String, bool, i64)>> {
        sqlx::query_as(
            "SELECT COALESCE(event_type, ''), source, processed_at IS NOT NULL, COUNT(*)
             FROM inbox GROUP BY 1, 2, 3",
        )
        .fetch_all(self.pool())
        .await
    }

    /// The `/events` poll's cursor: the newest event creation time seen.
    pub async fn events_cursor(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'events_cursor'")
                .fetch_optional(self.pool())
                .await?;
        Ok(v.and_then(|v| v.parse::<i64>().ok()).map(from_ts))
    }

    pub async fn set_events_cursor(&self, at: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('events_cursor', ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(ts(at).to_string())
        .execute(self.write_pool())
        .await;
        self.note(done).map(|_| ())
    }

    /// Marks a connection removed from the watched state (`connection.deleted`); its
    /// history stays. False when it was not watched.
    pub async fn connection_deleted(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE connections SET gone_at = ? WHERE connection_id = ? AND user_id = ?
             AND gone_at IS NULL",
        )
        .bind(ts(now))
        .bind(connection.as_str())
        .bind(user.as_str())
        .execute(self.write_pool())
        .await;
        Ok(self.note(done)?.rows_affected() > 0)
    }
}

/// Deliveries: each endpoint's share of the outbox, its attempts, and whether the
/// endpoint is held after failing.
impl Store {
    /// Makes the endpoint's deliveries from the outbox rows after its cursor that it wants
    /// and that are younger than `max_age`; returns how many were made. A new endpoint
    /// starts with the notifications of the last `max_age`.
    pub async fn enqueue_deliveries(
        &self,
        endpoint: &str,
        wants: &[String],
        max_age: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let cursor: Option<i64> =
            sqlx::query_scalar("SELECT last_outbox_id FROM delivery_cursors WHERE endpoint = ?")
                .bind(endpoint)
                .fetch_optional(&mut *tx)
                .await?;
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM outbox")
            .fetch_one(&mut *tx)
            .await?;
        let Some(newest) = newest.filter(|n| *n > cursor.unwrap_or(0)) else {
            tx.rollback().await?;
            return Ok(0);
        };
        let age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let oldest = now.checked_sub_signed(age).map_or(0, ts);
        let deadline = now.checked_add_signed(age).map_or(i64::MAX, ts);
        let types = vec!["?"; wants.len().max(1)].join(", ");
        let sql = format!(
            "INSERT OR IGNORE INTO deliveries (endpoint, outbox_id, order_key, state, next_at, deadline)
             SELECT ?, id, order_key, 'pending', ?, MIN(created_at + ?, ?) FROM outbox
             WHERE id > ? AND id <= ? AND created_at >= ? AND event_type IN ({types})
             ORDER BY id"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(endpoint)
            .bind(ts(now))
            .bind(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX / 2))
            .bind(deadline)
            .bind(cursor.unwrap_or(0))
            .bind(newest)
            .bind(oldest);
        for w in wants {
            query = query.bind(w.clone());
        }
        if wants.is_empty() {
            query = query.bind("");
        }
        let made = query.execute(&mut *tx).await?.rows_affected();
        sqlx::query(
            "INSERT INTO delivery_cursors (endpoint, last_outbox_id) VALUES (?, ?)
             ON CONFLICT (endpoint) DO UPDATE SET last_outbox_id = excluded.last_outbox_id",
        )
        .bind(endpoint)
        .bind(newest)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(made)
    }

    /// Deliveries due at an endpoint, oldest first; a delivery waits while an older one with
    /// the same order key (the user, or the outage's connector) is pending there.
    pub async fn due_deliveries(
        &self,
        endpoint: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueDelivery>> {
        sqlx::query_as(
            "SELECT d.id, d.outbox_id, d.order_key, o.webhook_id, o.payload, o.created_at, d.attempts, d.deadline
             FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
             WHERE d.endpoint = ? AND d.state = 'pending' AND d.next_at <= ?
               AND NOT EXISTS (
                   SELECT 1 FROM deliveries e WHERE e.endpoint = d.endpoint AND e.state = 'pending'
                      AND e.order_key = d.order_key AND e.outbox_id < d.outbox_id)
             ORDER BY d.outbox_id LIMIT ? + 0",
        )
        .bind(endpoint)
        .bind(ts(now))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
    }

    /// The soonest time a pending delivery of the endpoint is due, and the endpoint not
    /// held.
    pub async fn next_delivery_at(&self, endpoint: &str) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(MIN(next_at), COALESCE(
                 (SELECT hold_until FROM delivery_cursors WHERE endpoint = ?1), 0))
             FROM deliveries WHERE endpoint = ?1 AND state = 'pending'",
        )
        .bind(endpoint)
        .fetch_one(self.pool())
        .await?;
        Ok(at.map(from_ts))
    }

    /// Whether the endpoint is held after failing.
    pub async fn endpoint_hold(&self, endpoint: &str) -> Result<EndpointHold> {
        let row: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT failing, hold_until FROM delivery_cursors WHERE endpoint = ?")
                .bind(endpoint)
                .fetch_optional(self.pool())
                .await?;
        Ok(
            row.map_or_else(EndpointHold::default, |(failing, until)| EndpointHold {
                failing,
                until: until.map(from_ts),
            }),
        )
    }

    /// Records the endpoint's state after a round (held until a whole second, rounded up).
    pub async fn set_endpoint_hold(&self, endpoint: &str, hold: EndpointHold) -> Result<()> {
        let done = sqlx::query(
            "UPDATE delivery_cursors SET failing = ?, hold_until = ? WHERE endpoint = ?",
        )
        .bind(hold.failing)
        .bind(hold.until.map(ts_ceil))
        .bind(endpoint)
        .execute(self.write_pool())
        .await;
        self.note(done).map(|_| ())
    }

    /// Dead-letters the endpoint's pending deliveries past their deadline, unsent: what a
    /// failing endpoint kept waiting for longer than `notify.max_age`. Returns how many.
    pub async fn expire_deliveries(&self, endpoint: &str, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE deliveries SET state = 'dead', done_at = ?1,
                 last_error = COALESCE(last_error, 'not sent within notify.max_age: the endpoint was failing')
             WHERE endpoint = ?2 AND state = 'pending' AND deadline < ?1",
        )
        .bind(ts(now))
        .bind(endpoint)
        .execute(self.write_pool())
        .await;
        Ok(self.note(done)?.rows_affected())
    }

    /// A delivery answered 2xx.
    pub async fn delivery_succeeded(&self, id: i64, status: u16, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE deliveries SET state = 'succeeded', attempts = attempts + 1, last_status = ?,
                 last_error = NULL, done_at = ? WHERE id = ?",
        )
        .bind(i64::from(status))
        .bind(ts(now))
        .bind(id)
        .execute(self.write_pool())
        .await;
        self.note(done).map(|_| ())
    }

    /// A delivery not sent because what it says no longer holds.
    pub async fn delivery_superseded(&self, id: i64, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE deliveries SET state = 'superseded', done_at = ? WHERE id = ? AND state = 'pending'",
        )
        .bind(ts(now))
        .bind(id)
        .execute(self.write_pool())
        .await;
        self.note(done).map(|_| ())
    }

    /// A delivery failed: tried again at `retry_at` (rounded up to a whole second: never
    /// before its backoff), or dead-lettered when `None`.
    pub async fn delivery_failed(
        &self,
        id: i64,
        status: Option<u16>,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, failures = failures + 1,
                 last_status = ?, last_error = ?,
                 state = CASE WHEN ? IS NULL THEN 'dead' ELSE 'pending' END,
                 next_at = COALESCE(?, next_at),
                 done_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END
             WHERE id = ?",
        )
        .bind(status.map(i64::from))
        .bind(error)
        .bind(retry_at.map(ts_ceil))
        .bind(retry_at.map(ts_ceil))
        .bind(retry_at.map(ts_ceil))
        .bind(ts(now))
        .bind(id)
        .execute(self.write_pool())
        .await;
        self.note(done).map(|_| ())
    }

    /// Deliveries, newest first; only dead-lettered and failing ones with `failed`.
    pub async fn list_deliveries(&self, failed: bool, limit: u32) -> Result<Vec<DeliveryEntry>> {
        let filter = if failed {
            "WHERE d.state = 'dead' OR (d.state = 'pending' AND d.failures > 0)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT d.id, d.endpoint, o.webhook_id, o.event_type, o.user_id, d.state, d.attempts,
                 d.failures, d.last_status, d.last_error, o.created_at, d.next_at, d.done_at
             FROM deliveries d JOIN outbox o ON o.id = d.outbox_id {filter}
             ORDER BY d.id DESC LIMIT ? + 0"
        );
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await
    }

    /// Sends a delivery again now, with a fresh `max_age`: by delivery id, or every
    /// delivery of a webhook id; its endpoint's hold is lifted (still failing, it is probed
    /// with one delivery). Returns how many were queued again (0: no such delivery, or it
    /// succeeded already).
    pub async fn retry_delivery(
        &self,
        id: &str,
        max_age: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let deadline = now.checked_add_signed(age).map_or(i64::MAX, ts);
        let done = sqlx::query(
            "UPDATE deliveries SET state = 'pending', next_at = ?1, deadline = ?2, done_at = NULL
             WHERE state != 'succeeded' AND (CAST(id AS TEXT) = ?3
                OR outbox_id IN (SELECT id FROM outbox WHERE webhook_id = ?3))",
        )
        .bind(ts(now))
        .bind(deadline)
        .bind(id)
        .execute(self.write_pool())
        .await;
        let queued = self.note(done)?.rows_affected();
        let done = sqlx::query(
            "UPDATE delivery_cursors SET hold_until = NULL
             WHERE endpoint IN (SELECT endpoint FROM deliveries WHERE CAST(id AS TEXT) = ?1
                OR outbox_id IN (SELECT id FROM outbox WHERE webhook_id = ?1))",
        )
        .bind(id)
        .execute(self.write_pool())
        .await;
        self.note(done)?;
        Ok(queued)
    }

    /// Every endpoint key that has a cursor (every endpoint that ever had deliveries).
    pub async fn endpoint_keys(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT endpoint FROM delivery_cursors ORDER BY endpoint")
            .fetch_all(self.pool())
            .await
    }

    /// Re-keys endpoints' deliveries and cursors, `(from, to)`, in one transaction. A
    /// delivery `to` has already is dropped from `from`; the cursors merge to the further.
    pub async fn rename_endpoints(&self, renames: &[(String, String)]) -> Result<()> {
        let mut tx = self.write().await?;
        for (from, to) in renames {
            sqlx::query("UPDATE OR IGNORE deliveries SET endpoint = ? WHERE endpoint = ?")
                .bind(to)
                .bind(from)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM deliveries WHERE endpoint = ?")
                .bind(from)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO delivery_cursors (endpoint, last_outbox_id)
                 SELECT ?, last_outbox_id FROM delivery_cursors WHERE endpoint = ?
                 ON CONFLICT (endpoint) DO UPDATE
                    SET last_outbox_id = MAX(last_outbox_id, excluded.last_outbox_id)",
            )
            .bind(to)
            .bind(from)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM delivery_cursors WHERE endpoint = ?")
                .bind(from)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Deliveries per endpoint and state, and failed attempts.
    pub async fn delivery_counts(&self) -> Result<DeliveryCounts> {
        let by_state = sqlx::query_as(
            "SELECT endpoint, state, COUNT(*) FROM deliveries GROUP BY endpoint, state",
        )
        .fetch_all(self.pool())
        .await?;
        let failures =
            sqlx::query_as("SELECT endpoint, SUM(failures) FROM deliveries GROUP BY endpoint")
                .fetch_all(self.pool())
                .await?;
        Ok(DeliveryCounts { by_state, failures })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_webhook_id_is_one_notify_retry_takes() {
        let id = super::new_webhook_id();
        assert_eq!(
            id.parse::<crate::domain::DeliveryRef>(),
            Ok(crate::domain::DeliveryRef::Webhook(id.clone()))
        );
    }
}
