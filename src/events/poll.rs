//! The `/events` poll: one `GET /events` per `webhooks.poll_interval` for the whole
//! application, each event stored in the inbox like a webhook (the same idempotency by
//! event id), so an event heard both ways is processed once.

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::basiq::Client;
use crate::store::Store;
use crate::store::events::NewEvent;

/// Events older than the cursor by more than this are not looked at again (Basiq's clock
/// and order are not ours).
const SKEW: chrono::Duration = chrono::Duration::minutes(10);

/// What one poll found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    pub listed: usize,
    pub stored: usize,
    /// Events of types that do nothing here (`transactions.updated`, ...): not stored, so
    /// a busy application's `/events` does not fill the inbox.
    pub skipped: usize,
}

/// Reads `/events` once and stores the events not heard yet.
pub async fn poll_once(
    client: &Client,
    store: &Store,
    now: DateTime<Utc>,
) -> anyhow::Result<Polled> {
    let cursor = store.events_cursor().await?;
    let events = client.list_events().await?;
    let mut polled = Polled {
        listed: events.items.len(),
        ..Polled::default()
    };
    let mut newest = cursor;
    for e in &events.items {
        newest = newest.max(e.created);
        if !super::HANDLED.contains(&e.event_type.as_str()) {
            polled.skipped += 1;
            continue;
        }
        if let (Some(c), Some(created)) = (cursor, e.created)
            && created < c - SKEW
        {
            continue;
        }
        let body = json!({
            "id": e.id,
            "type": e.event_type,
            "userId": e.user_id,
            "dataRef": e.data_ref,
            "createdDate": e.created.map(|c| c.to_rfc3339()),
        })
        .to_string();
        let delivery = format!("poll:{}", e.id);
        let stored = store
            .insert_event(
                &NewEvent {
                    delivery_id: &delivery,
                    event_id: Some(e.id.as_str()),
                    event_type: Some(&e.event_type),
                    source: "poll",
                    user_id: e.user_id.as_ref().map(|u| u.as_str()),
                    entity_link: e.data_ref.as_deref(),
                    body: &body,
                },
                now,
            )
            .await?;
        if stored {
            polled.stored += 1;
        }
    }
    if let Some(n) = newest.filter(|n| Some(*n) != cursor) {
        store.set_events_cursor(n).await?;
    }
    Ok(polled)
}
