//! The CDR client: its options, the cheap-to-clone handle, and its three requests (the
//! Register's brands, a brand's status, a brand's planned outages).
//!
//! One request is one attempt: no retry here, the poller retries on its own schedule. Every
//! request of every clone waits for a permit of one shared pace; build one client per
//! process (there is no global state to do it for you). Nothing goes out over plain HTTP
//! except to a loopback host ([`pollable`]), redirects included, and no body is read past
//! its cap ([`REGISTER_BODY_LIMIT`], [`DISCOVERY_BODY_LIMIT`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{self, HeaderValue};
use reqwest::{StatusCode, redirect};
use url::{Host, Url};

use super::error::CdrError;
use super::wire;
use crate::domain::cdr::{Brand, BrandStatus, Maintenance, clean_text};

/// The Register's brands: 8 MiB (about 150 brands answer in well under 1 MiB today).
pub const REGISTER_BODY_LIMIT: usize = 8 << 20;

/// A status or outages answer: 256 KiB.
pub const DISCOVERY_BODY_LIMIT: usize = 256 << 10;

/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 3;

/// The longest connect timeout, whatever the total timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest `ETag` kept; a longer one is not a cache key we want to send back.
const MAX_ETAG_CHARS: usize = 1024;

/// The longest transport error message kept.
const MAX_MESSAGE_CHARS: usize = 300;

const USER_AGENT: &str = concat!(
    "basiq-health/",
    env!("CARGO_PKG_VERSION"),
    " (+cdr status monitor)"
);

/// Where the Register's brands are, under `register_url`.
const REGISTER_PATH: [&str; 4] = ["banking", "data-holders", "brands", "summary"];
/// Where a brand's discovery endpoints are, under its `publicBaseUri`.
const DISCOVERY_PATH: [&str; 3] = ["cds-au", "v1", "discovery"];

/// Everything the client needs; built from settings by the caller.
#[derive(Clone)]
pub struct CdrOptions {
    /// The Register's base (`https://api.cdr.gov.au/cdr-register/v1`); its path is kept.
    pub register_url: Url,
    /// Total time for one HTTP exchange, body included.
    pub timeout: Duration,
    /// Shared pace for every CDR request this process sends, Register and data holders alike.
    pub max_requests_per_second: NonZeroU32,
}

impl std::fmt::Debug for CdrOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdrOptions")
            .field(
                "register_url",
                &crate::settings::redacted_url(&self.register_url),
            )
            .field("timeout", &self.timeout)
            .field("max_requests_per_second", &self.max_requests_per_second)
            .finish()
    }
}

/// What the Register answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterRead {
    /// 304 to the `If-None-Match` sent: the brands are as they were.
    NotModified,
    Fresh {
        brands: Vec<Brand>,
        /// The answer's `ETag`, to send back next time.
        etag: Option<String>,
        /// Items skipped: without a usable `dataHolderBrandId`, or not an object.
        skipped: usize,
    },
}

struct Inner {
    http: reqwest::Client,
    options: CdrOptions,
    limiter: DefaultDirectRateLimiter,
    unreadable_outages: AtomicU64,
}

/// A cheap-to-clone handle; every clone shares the pace and the counter.
#[derive(Clone)]
pub struct CdrClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CdrClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdrClient")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl CdrClient {
    pub fn new(options: CdrOptions) -> Result<Self, CdrError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(MAX_CONNECT_TIMEOUT))
            .user_agent(USER_AGENT)
            .redirect(redirect::Policy::custom(follow_redirect))
            .build()
            .map_err(|e| {
                CdrError::Transport(format!("cannot build the HTTP client: {}", message(&e)))
            })?;
        let limiter = RateLimiter::direct(Quota::per_second(options.max_requests_per_second));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                options,
                limiter,
                unreadable_outages: AtomicU64::new(0),
            }),
        })
    }

    /// May `base` be polled? See [`pollable`].
    pub fn pollable(base: &Url) -> bool {
        pollable(base)
    }

    /// Outages skipped so far because their start or duration could not be read.
    pub fn unreadable_outages(&self) -> u64 {
        self.inner.unreadable_outages.load(Ordering::Relaxed)
    }

    /// `GET {register_url}/banking/data-holders/brands/summary` (`x-v: 2`), with
    /// `If-None-Match: etag` when given (an etag that cannot be a header value is not sent:
    /// the brands are then fetched in full).
    pub async fn register(&self, etag: Option<&str>) -> Result<RegisterRead, CdrError> {
        let url = under(&self.inner.options.register_url, &REGISTER_PATH)?;
        let if_none_match = etag.and_then(|tag| HeaderValue::from_str(tag).ok());
        let mut request = self.get(url, "2");
        if let Some(tag) = &if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag.clone());
        }
        let response = self.send(request).await?;
        if response.status() == StatusCode::NOT_MODIFIED && if_none_match.is_some() {
            return Ok(RegisterRead::NotModified);
        }
        let response = success(response)?;
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|tag| tag.to_str().ok())
            .filter(|tag| !tag.is_empty() && tag.len() <= MAX_ETAG_CHARS)
            .map(str::to_owned);
        let body = read_capped(response, REGISTER_BODY_LIMIT).await?;
        let read = wire::brands(&body).map_err(CdrError::Decode)?;
        Ok(RegisterRead::Fresh {
            brands: read.items,
            etag,
            skipped: read.skipped,
        })
    }

    /// `GET {base}/cds-au/v1/discovery/status` (`x-v: 1`).
    pub async fn status(&self, base: &Url) -> Result<BrandStatus, CdrError> {
        let body = self.discovery(base, "status").await?;
        wire::status(&body).map_err(CdrError::Decode)
    }

    /// `GET {base}/cds-au/v1/discovery/outages` (`x-v: 1`). An outage whose start or duration
    /// cannot be read is skipped, logged and counted ([`CdrClient::unreadable_outages`]);
    /// the others are kept, in the order sent.
    pub async fn outages(&self, base: &Url) -> Result<Vec<Maintenance>, CdrError> {
        let body = self.discovery(base, "outages").await?;
        let read = wire::outages(&body).map_err(CdrError::Decode)?;
        if read.skipped > 0 {
            self.inner
                .unreadable_outages
                .fetch_add(read.skipped as u64, Ordering::Relaxed);
            tracing::warn!(
                host = base.host_str(),
                skipped = read.skipped,
                kept = read.items.len(),
                "a data holder's planned outages include some that cannot be read; skipped"
            );
        }
        Ok(read.items)
    }

    async fn discovery(&self, base: &Url, endpoint: &str) -> Result<Vec<u8>, CdrError> {
        let mut path = DISCOVERY_PATH.to_vec();
        path.push(endpoint);
        let url = under(base, &path)?;
        let response = success(self.send(self.get(url, "1")).await?)?;
        read_capped(response, DISCOVERY_BODY_LIMIT).await
    }

    fn get(&self, url: Url, version: &'static str) -> reqwest::RequestBuilder {
        self.inner
            .http
            .get(url)
            .header("x-v", version)
            .header(header::ACCEPT, "application/json")
    }

    /// Waits for a permit of the shared pace (never fails for want of one), then sends.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CdrError> {
        self.inner.limiter.until_ready().await;
        request.send().await.map_err(transport)
    }
}

/// May `base` be polled: `https` to any host, or `http` to a loopback host (`127.0.0.0/8`,
/// `::1`, `localhost`: the simulator, a local proxy). Nothing else is ever sent.
pub fn pollable(base: &Url) -> bool {
    match base.scheme() {
        "https" => base.host().is_some(),
        "http" => is_loopback(base),
        _ => false,
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A redirect is followed at most [`MAX_REDIRECTS`] times, only to a pollable URL, and to a
/// loopback host only from one: a data holder on the internet cannot send the daemon to a
/// local service. A redirect not followed is answered as its 3xx ([`CdrError::Status`]).
fn follow_redirect(attempt: redirect::Attempt<'_>) -> redirect::Action {
    let from_loopback = attempt.previous().first().is_some_and(is_loopback);
    if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error("too many redirects")
    } else if !pollable(attempt.url()) || (is_loopback(attempt.url()) && !from_loopback) {
        attempt.stop()
    } else {
        attempt.follow()
    }
}

/// `segments` under `base`, each one path segment, the base's path kept (with or without
/// its trailing slash: `http://h/cdr/abc` gives `http://h/cdr/abc/cds-au/...`); the base's
/// query and fragment are not carried. Refused when `base` may not be polled.
fn under(base: &Url, segments: &[&str]) -> Result<Url, CdrError> {
    if !pollable(base) {
        return Err(CdrError::NotPollable);
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| CdrError::NotPollable)?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

fn success(response: reqwest::Response) -> Result<reqwest::Response, CdrError> {
    let status = response.status();
    if status.is_success() {
        Ok(response)
    } else {
        Err(CdrError::Status(status.as_u16()))
    }
}

/// The body, read chunk by chunk and refused as soon as it passes `limit` (or announces it
/// will): never buffered unbounded.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, CdrError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(CdrError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(CdrError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn transport(e: reqwest::Error) -> CdrError {
    let timeout = e.is_timeout();
    // Without the URL: a base's query may carry something that is not ours to log.
    let text = message(&e.without_url());
    if timeout {
        CdrError::timeout(&text)
    } else {
        CdrError::Transport(text)
    }
}

/// The error and its causes on one bounded line.
fn message(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    clean_text(&text, MAX_MESSAGE_CHARS)
}

#[cfg(test)]
mod tests;
