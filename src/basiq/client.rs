//! The Basiq client: its options, the values its endpoints answer with, its counters, and
//! the cheap-to-clone handle itself.
//!
//! The endpoints are split by concern, each an `impl Client` of its own: the reads
//! ([`super::reads`]: users, connections, jobs, connectors, events), the changes
//! ([`super::actions`]: refresh and purge, never retried blindly), and the one pipeline every
//! request goes through ([`super::pipeline`]: pace, token, send, classify, retry).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::SecretString;
use url::Url;

use super::error::Error;
use super::token::TokenCache;
use crate::clock::Clock;
use crate::domain::{ConnectionId, JobId, UserId};

/// Everything the client needs; built from settings by the caller.
#[derive(Clone)]
pub struct ClientOptions {
    pub base_url: Url,
    pub api_key: SecretString,
    /// Total time for one HTTP exchange.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Shared pace for every request this process sends to Basiq.
    pub max_requests_per_second: NonZeroU32,
    /// Attempts per request for transient failures (1 = no retry).
    pub max_attempts: u32,
    /// First backoff step; doubled per attempt, full jitter.
    pub retry_base_delay: Duration,
    /// Upper bound for one backoff, and for a `Retry-After` Basiq sends.
    pub max_retry_delay: Duration,
    /// After a refresh request timed out, when to look for its job: each delay is waited in
    /// turn (Basiq may accept the request seconds after the answer was lost), and the
    /// refresh is given up only after the last look.
    pub refresh_lookups: [Duration; 2],
}

/// The default looks for a refresh job whose answer was lost: soon, then once more later.
pub const REFRESH_LOOKUPS: [Duration; 2] = [Duration::from_secs(3), Duration::from_secs(10)];

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("base_url", &crate::settings::redacted_url(&self.base_url))
            .field("api_key", &"[redacted]")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_requests_per_second", &self.max_requests_per_second)
            .field("max_attempts", &self.max_attempts)
            .field("refresh_lookups", &self.refresh_lookups)
            .finish()
    }
}

/// The ids a request concerns, for the log lines about it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ids<'a> {
    pub user_id: Option<&'a UserId>,
    pub connection_id: Option<&'a ConnectionId>,
    pub job_id: Option<&'a JobId>,
}

impl<'a> Ids<'a> {
    pub fn user(user_id: &'a UserId) -> Self {
        Self {
            user_id: Some(user_id),
            ..Self::default()
        }
    }
    pub fn connection(user_id: &'a UserId, connection_id: &'a ConnectionId) -> Self {
        Self {
            user_id: Some(user_id),
            connection_id: Some(connection_id),
            job_id: None,
        }
    }
    pub fn job(job_id: &'a JobId) -> Self {
        Self {
            job_id: Some(job_id),
            ..Self::default()
        }
    }
}

/// What a refresh request produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// 202: Basiq queued a new job.
    Created(JobId),
    /// 200: a job for this connection was already queued or running; this is it.
    Existing(JobId),
    /// The request timed out, and a job started since was found for the connection.
    FoundAfterTimeout(JobId),
}

impl RefreshOutcome {
    pub fn job_id(&self) -> &JobId {
        match self {
            Self::Created(id) | Self::Existing(id) | Self::FoundAfterTimeout(id) => id,
        }
    }
}

/// A user as `GET /users/{id}` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub id: UserId,
    pub connection_ids: Vec<ConnectionId>,
}

/// The readable items of a list Basiq answered, and how many it could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed<T> {
    pub items: Vec<T>,
    /// Items skipped because they could not be read (each logged and counted).
    pub unreadable: usize,
}

impl<T> Listed<T> {
    /// Every item was read: an id missing from `items` is missing at Basiq.
    pub fn is_complete(&self) -> bool {
        self.unreadable == 0
    }
}

/// Counters the daemon exports (token fetches, requests by endpoint and status, list items
/// that could not be read).
#[derive(Default)]
pub struct Stats {
    pub(super) token_fetches: AtomicU64,
    requests: Mutex<BTreeMap<(&'static str, String), u64>>,
    undecodable: Mutex<BTreeMap<&'static str, u64>>,
}

impl Stats {
    pub fn token_fetches(&self) -> u64 {
        self.token_fetches.load(Ordering::Relaxed)
    }
    /// Requests by (endpoint, status), status being the HTTP code or `error`.
    pub fn requests(&self) -> BTreeMap<(&'static str, String), u64> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// List items skipped because they could not be read, by endpoint.
    pub fn undecodable_items(&self) -> BTreeMap<&'static str, u64> {
        self.undecodable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(super) fn count_undecodable(&self, endpoint: &'static str, n: u64) {
        *self
            .undecodable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint)
            .or_default() += n;
    }
    pub(super) fn count(&self, endpoint: &'static str, status: String) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, status))
            .or_default() += 1;
    }
}

/// What every clone of a [`Client`] shares; the other `impl Client` blocks of `basiq` use it.
pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) options: ClientOptions,
    pub(super) token: TokenCache,
    pub(super) limiter: DefaultDirectRateLimiter,
    pub(super) stats: Stats,
    pub(super) clock: Clock,
}

/// A cheap-to-clone handle; every clone shares the token, the pace and the counters.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client on the system clock.
    pub fn new(options: ClientOptions) -> Result<Self, Error> {
        Self::with_clock(options, Clock::system())
    }

    /// A client whose token cache (its age, its refresh, its backoff), the time a refresh
    /// was asked at (a lost answer's job is looked for from it) and `Retry-After` dates go
    /// by `clock`. The transport keeps tokio's time: the request pace, the retry backoffs
    /// and sleeps, the looks for a lost refresh's job, the timeouts.
    pub fn with_clock(options: ClientOptions, clock: Clock) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("basiq-health/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Transport {
                message: format!("cannot build the HTTP client: {e}"),
                timeout: false,
            })?;
        let limiter = RateLimiter::direct(Quota::per_second(options.max_requests_per_second));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                options,
                token: TokenCache::new(clock.clone()),
                limiter,
                stats: Stats::default(),
                clock,
            }),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.options.base_url
    }
}
