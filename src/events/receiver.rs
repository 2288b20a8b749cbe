//! The webhook receiver: `POST /v1/basiq/webhook` on `webhooks.listen`, its own address.
//!
//! A delivery is verified ([`verify`]: Standard Webhooks, against every configured secret:
//! several during a rotation; timestamps within ±5 minutes of the injected clock), stored
//! in the inbox durably, and only then answered 2xx. A retry or duplicate is answered 2xx
//! and not stored again. Processing happens after, from the inbox ([`super::process`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use standardwebhooks::{Webhook, WebhookError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::WebhookPayload;
use crate::clock::Clock;
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
    /// A body that is not UTF-8 text (a Standard Webhooks payload is JSON).
    pub unreadable: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Clone)]
pub struct ReceiverState {
    pub store: Store,
    pub verifiers: Arc<Vec<Webhook>>,
    /// Wakes the processor when an event is stored.
    pub wake: Arc<tokio::sync::Notify>,
    pub stats: Arc<ReceiverStats>,
    /// What a delivery's timestamp is checked against, and when it is stored.
    pub clock: Clock,
}

pub fn router(state: ReceiverState, max_body: usize) -> Router {
    routed(max_body).with_state(state)
}

/// The receiver's router before its state is given: what [`router`] serves (listed by the
/// test that every route is described).
pub fn routed(max_body: usize) -> Router<ReceiverState> {
    routes()
        .split_for_parts()
        .0
        .layer(DefaultBodyLimit::max(max_body))
}

/// The receiver's route with its description: mounted only with its documentation.
fn routes() -> OpenApiRouter<ReceiverState> {
    OpenApiRouter::new().routes(routes!(receive))
}

/// The receiver's part of the daemon's OpenAPI description (merged into the local API's).
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// A delivery's answer once verified.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Stored {
    /// Stored now; `false`: heard before.
    pub stored: bool,
    /// Heard before (same `webhook-id` or Basiq event id): acknowledged, not processed again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

fn answer(status: StatusCode, message: &str) -> Response {
    let body = crate::serve::ErrorBody {
        error: message.to_owned(),
    };
    (status, axum::Json(body)).into_response()
}

/// The most a `webhook-id` may be (Standard Webhooks ids are short).
const MAX_ID: usize = 256;

/// How far a delivery's `webhook-timestamp` may be from now, either way.
const TOLERANCE_S: i64 = 5 * 60;

/// Verifies a delivery the Standard Webhooks way, as `Webhook::verify` does but against
/// `now` rather than the system's wall clock: the three headers, a timestamp within ±5
/// minutes of `now`, then a `v1,` signature in `webhook-signature` (space-separated, any
/// one may match) equal, compared in constant time, to one of the `verifiers`' signature of
/// `{id}.{timestamp}.{body}`. The errors are the crate's, so the answers stay the same; a
/// body that is not UTF-8 is `InvalidPayload`, whatever its signature.
/// With no verifier, nothing verifies (the settings require a secret for the receiver).
pub fn verify(
    verifiers: &[Webhook],
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    let header = move |name: &'static str, short: &'static str| {
        headers
            .get(name)
            .ok_or(WebhookError::MissingHeader(short))?
            .to_str()
            .map_err(|_| WebhookError::InvalidHeader(short))
    };
    let id = header("webhook-id", "id")?;
    let signatures = header("webhook-signature", "signature")?;
    let ts: i64 = header("webhook-timestamp", "timestamp")?
        .parse()
        .map_err(|_| WebhookError::InvalidTimestamp)?;
    // The crate signs text only: a body that is not UTF-8 cannot be checked, and is no
    // payload anyway. Said as such, not as a signature that does not match.
    if std::str::from_utf8(body).is_err() {
        return Err(WebhookError::InvalidPayload);
    }
    let now = now.timestamp();
    if now.saturating_sub(ts) > TOLERANCE_S {
        return Err(WebhookError::TimestampTooOldError);
    }
    if ts > now.saturating_add(TOLERANCE_S) {
        return Err(WebhookError::FutureTimestampError);
    }
    for verifier in verifiers {
        let signed = verifier.sign(id, ts, body)?;
        let expected = signed
            .split_once(',')
            .map(|(_, sig)| sig)
            .ok_or(WebhookError::InvalidSignature)?;
        let matches = signatures
            .split(' ')
            .filter_map(|s| s.split_once(','))
            .any(|(version, sig)| version == "v1" && same(sig.as_bytes(), expected.as_bytes()));
        if matches {
            return Ok(());
        }
    }
    Err(WebhookError::InvalidSignature)
}

/// Equal, in a time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(
    post,
    path = PATH,
    tag = "webhooks",
    summary = "Basiq's event deliveries (on `webhooks.listen`, not the API's address)",
    description = "Served on `webhooks.listen` only. A delivery is verified the Standard \
        Webhooks way against every configured secret, stored in the inbox, then answered. \
        The body is any UTF-8 text; Basiq sends the JSON below.",
    params(
        ("webhook-id" = String, Header, description = "The delivery's id (at most 256 bytes)"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; within 5 minutes of now"),
        ("webhook-signature" = String, Header, description = "`v1,<base64>` signatures, space-separated"),
    ),
    request_body(content = super::WebhookPayload, content_type = "application/json"),
    responses(
        (status = 200, description = "Stored, or heard before", body = Stored),
        (status = 400, description = "A header missing or wrong, or a body that is not UTF-8", body = crate::serve::ErrorBody),
        (status = 401, description = "No signature matches, or a timestamp more than 5 minutes from now", body = crate::serve::ErrorBody),
        (status = 413, description = "The body is over `webhooks.max_body`"),
        (status = 503, description = "The event cannot be stored now: Basiq retries", body = crate::serve::ErrorBody),
    )
)]
async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let now = s.clock.now();
    if let Err(e) = verify(&s.verifiers, &headers, &body, now) {
        return refuse(&s.stats, &e);
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
    let event = new_event(id, payload.as_ref(), &text);
    let stored = s.store.insert_event(&event, now).await;
    answer_stored(&s, &event, stored)
}

/// A delivery that did not verify: counted by cause, logged, answered 400 or 401.
fn refuse(stats: &ReceiverStats, e: &WebhookError) -> Response {
    let (status, message, counter) = match e {
        WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError => (
            StatusCode::UNAUTHORIZED,
            "webhook-timestamp is more than 5 minutes from now (a replay?)",
            &stats.stale,
        ),
        WebhookError::InvalidPayload => (
            StatusCode::BAD_REQUEST,
            "the body is not UTF-8 text (a webhook's payload is JSON)",
            &stats.unreadable,
        ),
        WebhookError::MissingHeader(_)
        | WebhookError::InvalidHeader(_)
        | WebhookError::InvalidTimestamp => (
            StatusCode::BAD_REQUEST,
            "webhook-id, webhook-timestamp and webhook-signature are required",
            &stats.malformed,
        ),
        _ => (
            StatusCode::UNAUTHORIZED,
            "the signature does not match any configured secret",
            &stats.bad_signature,
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        event = "webhook_refused",
        status = status.as_u16(),
        reason = message,
        "refused a webhook delivery"
    );
    answer(status, message)
}

/// The inbox row of a verified delivery: what could be read of its payload (an event id
/// outside the rule is left out), and the body as received.
fn new_event<'a>(id: &'a str, payload: Option<&'a WebhookPayload>, text: &'a str) -> NewEvent<'a> {
    NewEvent {
        delivery_id: id,
        event_id: payload
            .and_then(|p| p.event_id.as_deref())
            .filter(|e| crate::domain::EventId::parse(*e).is_ok()),
        event_type: payload.and_then(|p| p.event_type_id.as_deref()),
        source: "webhook",
        user_id: None,
        entity_link: payload
            .and_then(|p| p.links.as_ref())
            .and_then(|l| l.event_entity.as_deref()),
        body: text,
    }
}

/// The answer once the inbox was written to: 200 for a new event and for a duplicate (logged
/// apart), 503 when it could not be stored, so that Basiq retries.
fn answer_stored(
    s: &ReceiverState,
    event: &NewEvent<'_>,
    stored: crate::store::Result<bool>,
) -> Response {
    let (id, event_type, event_id) = (event.delivery_id, event.event_type, event.event_id);
    match stored {
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
            let body = Stored {
                stored: true,
                duplicate: None,
            };
            (StatusCode::OK, axum::Json(body)).into_response()
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
            let body = Stored {
                stored: false,
                duplicate: Some(true),
            };
            (StatusCode::OK, axum::Json(body)).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const OTHER: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const BODY: &[u8] = br#"{"eventTypeId":"connection.invalidated"}"#;

    /// Far from the wall clock whenever the tests run.
    fn now() -> DateTime<Utc> {
        "2001-09-09T01:46:40Z".parse().unwrap()
    }

    fn headers(ts: i64, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", "msg_1".parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", signature.parse().unwrap());
        h
    }

    fn signed(secret: &str, ts: i64) -> String {
        Webhook::new(secret)
            .unwrap()
            .sign("msg_1", ts, BODY)
            .unwrap()
    }

    #[test]
    fn a_delivery_verifies_against_the_given_time_and_any_configured_secret() {
        let ts = now().timestamp();
        let verifiers = [Webhook::new(OTHER).unwrap(), Webhook::new(SECRET).unwrap()];
        let good = signed(SECRET, ts);
        assert!(verify(&verifiers, &headers(ts, &good), BODY, now()).is_ok());
        // Several signatures, space-separated (a sender rotating its secret): any may match;
        // other versions are ignored.
        let several = format!("v1a,{} v1,bm90LWl0 {good}", &good[3..]);
        assert!(verify(&verifiers, &headers(ts, &several), BODY, now()).is_ok());
        for bad in [
            "v1,".to_owned(),
            "v2,".to_owned() + &good[3..],
            good[..8].to_owned(),
            "junk".to_owned(),
        ] {
            assert!(
                matches!(
                    verify(&verifiers, &headers(ts, &bad), BODY, now()),
                    Err(WebhookError::InvalidSignature)
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            verify(&verifiers, &headers(ts, &good), b"{}", now()),
            Err(WebhookError::InvalidSignature)
        ));
        assert!(matches!(
            verify(&[], &headers(ts, &good), BODY, now()),
            Err(WebhookError::InvalidSignature)
        ));
    }

    #[test]
    fn a_timestamp_more_than_five_minutes_from_the_given_time_is_refused() {
        let verifiers = [Webhook::new(SECRET).unwrap()];
        let at = |offset: i64| {
            let ts = now().timestamp() + offset;
            verify(&verifiers, &headers(ts, &signed(SECRET, ts)), BODY, now())
        };
        assert!(at(-300).is_ok());
        assert!(at(300).is_ok());
        assert!(matches!(at(-301), Err(WebhookError::TimestampTooOldError)));
        assert!(matches!(at(301), Err(WebhookError::FutureTimestampError)));
        // The crate's own check, against the wall clock, refuses what ours accepts.
        let ts = now().timestamp();
        assert!(
            verifiers[0]
                .verify(BODY, &headers(ts, &signed(SECRET, ts)))
                .is_err()
        );
    }

    #[test]
    fn missing_or_unreadable_headers_are_told_apart() {
        let verifiers = [Webhook::new(SECRET).unwrap()];
        let ts = now().timestamp();
        let good = signed(SECRET, ts);
        for (name, short) in [
            ("webhook-id", "id"),
            ("webhook-signature", "signature"),
            ("webhook-timestamp", "timestamp"),
        ] {
            let mut h = headers(ts, &good);
            h.remove(name);
            assert!(matches!(
                verify(&verifiers, &h, BODY, now()),
                Err(WebhookError::MissingHeader(s)) if s == short
            ));
            h.insert(name, axum::http::HeaderValue::from_bytes(b"\xff").unwrap());
            assert!(matches!(
                verify(&verifiers, &h, BODY, now()),
                Err(WebhookError::InvalidHeader(s)) if s == short
            ));
        }
        let mut h = headers(ts, &good);
        h.insert("webhook-timestamp", "soon".parse().unwrap());
        assert!(matches!(
            verify(&verifiers, &h, BODY, now()),
            Err(WebhookError::InvalidTimestamp)
        ));
    }
}
