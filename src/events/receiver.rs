//! The webhook receiver: `POST /v1/basiq/webhook` on `webhooks.listen`, its own address.
//!
//! A delivery is verified (Standard Webhooks, the `standardwebhooks` crate, against every
//! configured secret: several during a rotation; timestamps within ±5 minutes), stored in
//! the inbox durably, and only then answered 2xx. A retry or duplicate is answered 2xx and
//! not stored again. Processing happens after, from the inbox ([`super::process`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde_json::json;
use standardwebhooks::{Webhook, WebhookError};

use super::WebhookPayload;
use crate::store::Store;
use crate::store::events::NewEvent;

pub const PATH: &str = "/v1/basiq/webhook";

/// Deliveries answered, by outcome, since start (for `/metrics`).
#[derive(Debug, Default)]
pub struct ReceiverStats {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub bad_signature: AtomicU64,
    pub stale: AtomicU64,
    pub malformed: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Clone)]
pub struct ReceiverState {
    pub store: Store,
    pub verifiers: Arc<Vec<Webhook>>,
    /// Wakes the processor when an event is stored.
    pub wake: Arc<tokio::sync::Notify>,
    pub stats: Arc<ReceiverStats>,
}

pub fn router(state: ReceiverState, max_body: usize) -> Router {
    Router::new()
        .route(PATH, post(receive))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn answer(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// The most a `webhook-id` may be (Standard Webhooks ids are short).
const MAX_ID: usize = 256;

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let mut refused = None;
    for v in s.verifiers.iter() {
        match v.verify(&body, &headers) {
            Ok(()) => {
                refused = None;
                break;
            }
            Err(e) => refused = Some(e),
        }
    }
    if let Some(e) = refused {
        let (status, message, counter) = match e {
            WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError => (
                StatusCode::UNAUTHORIZED,
                "webhook-timestamp is more than 5 minutes from now (a replay?)",
                &s.stats.stale,
            ),
            WebhookError::MissingHeader(_)
            | WebhookError::InvalidHeader(_)
            | WebhookError::InvalidTimestamp => (
                StatusCode::BAD_REQUEST,
                "webhook-id, webhook-timestamp and webhook-signature are required",
                &s.stats.malformed,
            ),
            _ => (
                StatusCode::UNAUTHORIZED,
                "the signature does not match any configured secret",
                &s.stats.bad_signature,
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            event = "webhook_refused",
            status = status.as_u16(),
            reason = message,
            "refused a webhook delivery"
        );
        return answer(status, message);
    }
    // Verified: the headers are there and the body is UTF-8.
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if id.is_empty() || id.len() > MAX_ID {
        s.stats.malformed.fetch_add(1, Ordering::Relaxed);
        return answer(StatusCode::BAD_REQUEST, "webhook-id is empty or too long");
    }
    let text = String::from_utf8_lossy(&body);
    let payload: Option<WebhookPayload> = serde_json::from_str(&text).ok();
    let event_type = payload.as_ref().and_then(|p| p.event_type_id.as_deref());
    let event_id = payload
        .as_ref()
        .and_then(|p| p.event_id.as_deref())
        .filter(|e| crate::domain::EventId::parse(*e).is_ok());
    let entity = payload
        .as_ref()
        .and_then(|p| p.links.as_ref())
        .and_then(|l| l.event_entity.as_deref());
    let event = NewEvent {
        delivery_id: id,
        event_id,
        event_type,
        source: "webhook",
        user_id: None,
        entity_link: entity,
        body: &text,
    };
    match s.store.insert_event(&event, Utc::now()).await {
        Ok(true) => {
            s.stats.stored.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                event = "webhook_received",
                webhook_id = id,
                event_type,
                event_id,
                "webhook stored"
            );
            s.wake.notify_one();
            (StatusCode::OK, axum::Json(json!({"stored": true}))).into_response()
        }
        Ok(false) => {
            s.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                event = "webhook_duplicate",
                webhook_id = id,
                event_type,
                event_id,
                "webhook heard before: acknowledged, not processed again"
            );
            (
                StatusCode::OK,
                axum::Json(json!({"stored": false, "duplicate": true})),
            )
                .into_response()
        }
        Err(e) => {
            s.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(event = "webhook_store_failed", webhook_id = id, error = %e, "cannot store a webhook: answered 503 so Basiq retries");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the event now; retry",
            )
        }
    }
}
