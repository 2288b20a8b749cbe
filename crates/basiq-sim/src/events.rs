//! Basiq's events: what the simulator records when its state changes (a connection
//! invalidated, a consent revoked, a user deleted, ...), serves on `GET /events` and
//! `GET /events/{id}`, and pushes as signed webhooks to a configured URL, the Standard
//! Webhooks way Basiq does (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! On request it sends what a receiver must survive: the same delivery twice, a bad
//! signature, a stale timestamp, a payload without the entity link, or nothing at all
//! (a delivery lost, for the `/events` poll to find).

use std::time::Duration;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One event as Basiq keeps it (7 days).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimEvent {
    pub id: String,
    pub created: DateTime<Utc>,
    /// `connection`, `consent`, `user`.
    pub entity: String,
    /// `invalidated`, `revoked`, ...
    pub event_type: String,
    pub user_id: String,
    /// The resource's path: `/users/{u}` or `/users/{u}/connections/{c}`.
    pub path: String,
}

impl SimEvent {
    /// `entity.eventType`, e.g. `connection.invalidated`.
    pub fn type_id(&self) -> String {
        format!("{}.{}", self.entity, self.event_type)
    }

    /// The `/events` item.
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "type": "event",
            "id": self.id,
            "createdDate": self.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "entity": self.entity,
            "eventType": self.event_type,
            "userId": self.user_id,
            "dataRef": format!("{base}{}", self.path),
            "data": {"id": self.path.rsplit('/').next().unwrap_or_default()},
            "links": {"self": format!("{base}/events/{}", self.id)},
        })
    }

    /// The webhook payload (it names only the event).
    pub fn payload(&self, base: &str, with_entity: bool) -> Value {
        let mut links = json!({"event": format!("{base}/events/{}", self.id)});
        if with_entity {
            links["eventEntity"] = json!(format!("{base}{}", self.path));
        }
        json!({"eventTypeId": self.type_id(), "eventId": self.id, "links": links})
    }
}

/// What to do to the next webhook deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookFault {
    /// Send the delivery twice (same `webhook-id`).
    Duplicate,
    /// Sign with another secret.
    BadSignature,
    /// Stamp it 10 minutes ago (and sign that).
    StaleTimestamp,
    /// Leave `links.eventEntity` out: the receiver must ask `GET /events/{id}`.
    NoEntityLink,
    /// Do not send it (the poll must find it).
    Lost,
}

/// Where webhooks go, and how they are signed.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    /// `whsec_<base64>`.
    pub secret: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// One delivery attempt's answer, as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sent {
    pub webhook_id: String,
    pub event_type: String,
    /// The HTTP status, or 0 when no answer came.
    pub status: u16,
    pub fault: Option<WebhookFault>,
}

/// Basiq's retry delays after a failed delivery, shortened (Basiq: 5 s, 5 min, 30 min, ...).
const RETRIES: [Duration; 3] = [
    Duration::from_millis(0),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// Sends one event to the target, retrying a failure like Basiq (shortened); returns the
/// answers seen.
pub(crate) async fn deliver(
    target: WebhookTarget,
    event: SimEvent,
    base: String,
    fault: Option<WebhookFault>,
    clock: super::SimClock,
) -> Vec<Sent> {
    let mut seen = Vec::new();
    if fault == Some(WebhookFault::Lost) {
        seen.push(Sent {
            webhook_id: String::new(),
            event_type: event.type_id(),
            status: 0,
            fault,
        });
        return seen;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(_) => return seen,
    };
    let webhook_id = format!("msg_{}", event.id.chars().take(27).collect::<String>());
    let body = event
        .payload(&base, fault != Some(WebhookFault::NoEntityLink))
        .to_string();
    let copies = if fault == Some(WebhookFault::Duplicate) {
        2
    } else {
        1
    };
    for _ in 0..copies {
        for delay in RETRIES {
            tokio::time::sleep(delay).await;
            let mut ts = clock().timestamp();
            if fault == Some(WebhookFault::StaleTimestamp) {
                ts -= 600;
            }
            let secret = if fault == Some(WebhookFault::BadSignature) {
                "whsec_YmFkLXNlY3JldC1iYWQtc2VjcmV0LWJhZC1zZWNyZXQ="
            } else {
                target.secret.as_str()
            };
            let Ok(signer) = standardwebhooks::Webhook::new(secret) else {
                return seen;
            };
            let Ok(signature) = signer.sign(&webhook_id, ts, body.as_bytes()) else {
                return seen;
            };
            let answer = client
                .post(&target.url)
                .header("content-type", "application/json")
                .header("webhook-id", &webhook_id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", signature)
                .body(body.clone())
                .send()
                .await;
            let status = answer.map(|r| r.status().as_u16()).unwrap_or(0);
            seen.push(Sent {
                webhook_id: webhook_id.clone(),
                event_type: event.type_id(),
                status,
                fault,
            });
            // A refused signature or timestamp is refused again: Basiq retries, but the
            // test wants to see one answer.
            if (200..300).contains(&status) || fault.is_some() {
                break;
            }
        }
    }
    seen
}
