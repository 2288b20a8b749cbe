//! The partner's endpoint in the life simulation: verifies every notification's signature
//! (Standard Webhooks, the timestamp against the run's clock), records what it got, and
//! fails as a real receiver does: every tenth delivery answered 503, and down (503) for
//! three hours on the second day.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use basiq_health::clock::Clock;
use chrono::{DateTime, TimeDelta, Utc};

/// One notification received (the first or a retry).
#[derive(Clone, Debug)]
pub struct Receipt {
    pub webhook_id: String,
    pub body: serde_json::Value,
    /// By the run's clock.
    pub at: DateTime<Utc>,
}

#[derive(Default)]
struct Seen {
    accepted: Vec<Receipt>,
    refused_signatures: u64,
    answered_503: u64,
    requests: u64,
}

#[derive(Clone)]
struct Shared {
    signer: Arc<standardwebhooks::Webhook>,
    clock: Clock,
    down: (DateTime<Utc>, DateTime<Utc>),
    seen: Arc<Mutex<Seen>>,
}

pub struct Receiver {
    addr: std::net::SocketAddr,
    shared: Shared,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Serves on a loopback port; down on day 2 (of runs of two days or more) from 10:00 to
    /// 13:00.
    pub async fn start(
        secret: &str,
        clock: Clock,
        start: DateTime<Utc>,
        days: u32,
    ) -> anyhow::Result<Self> {
        let down_from = start + TimeDelta::days(i64::from(days.min(2)) - 1) + TimeDelta::hours(10);
        let shared = Shared {
            signer: Arc::new(standardwebhooks::Webhook::new(secret)?),
            clock,
            down: (down_from, down_from + TimeDelta::hours(3)),
            seen: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            shared,
            _task: task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.shared.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliveries accepted so far.
    pub fn count(&self) -> usize {
        self.seen().accepted.len()
    }

    /// Deliveries accepted after the first `n`.
    pub fn since(&self, n: usize) -> Vec<Receipt> {
        self.seen().accepted.get(n..).unwrap_or_default().to_vec()
    }

    pub fn accepted(&self) -> Vec<Receipt> {
        self.seen().accepted.clone()
    }

    /// When a notification first arrived.
    pub fn first_receipt(&self, webhook_id: &str) -> Option<DateTime<Utc>> {
        self.seen()
            .accepted
            .iter()
            .find(|r| r.webhook_id == webhook_id)
            .map(|r| r.at)
    }

    /// Deliveries whose signature or timestamp did not verify.
    pub fn refused_signatures(&self) -> u64 {
        self.seen().refused_signatures
    }

    pub fn answered_503(&self) -> u64 {
        self.seen().answered_503
    }
}

async fn receive(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = s.clock.now();
    let mut seen = s.seen.lock().unwrap_or_else(|e| e.into_inner());
    seen.requests += 1;
    let Some(webhook_id) = verified(&s, &headers, &body, now) else {
        seen.refused_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    };
    let down = now >= s.down.0 && now < s.down.1;
    if down || seen.requests.is_multiple_of(10) {
        seen.answered_503 += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Ok(body) = serde_json::from_slice(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    seen.accepted.push(Receipt {
        webhook_id,
        body,
        at: now,
    });
    StatusCode::NO_CONTENT
}

/// The `webhook-id` of a delivery signed with our secret within 5 minutes of the run's now.
fn verified(s: &Shared, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("webhook-id")?;
    let ts: i64 = header("webhook-timestamp")?.parse().ok()?;
    if (now.timestamp() - ts).abs() > 300 {
        return None;
    }
    let expected = s.signer.sign(id, ts, body).ok()?;
    let matches = header("webhook-signature")?
        .split(' ')
        .any(|candidate| candidate == expected);
    matches.then(|| id.to_owned())
}
