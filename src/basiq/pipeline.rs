//! The one pipeline every Basiq request goes through: pace, authenticate (fetching and
//! replacing the token), send, classify the answer, retry transient failures with full
//! jitter. Also how an answer is decoded.
//!
//! Every URL is built by [`endpoint_url`], segment by segment, never by formatting a string:
//! an id is always exactly one percent-encoded path segment.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use reqwest::{Method as HttpMethod, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use super::client::{Client, Ids};
use super::error::{ApiError, Error};
use super::token::Token;
use super::wire;
use crate::clock::Clock;
use crate::domain::{ConnectionId, JobId, UserId};

/// One request through the pipeline.
pub(super) struct Call<'a> {
    pub(super) method: HttpMethod,
    pub(super) url: Url,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) endpoint: &'static str,
    pub(super) ids: Ids<'a>,
    /// False for requests that must not be sent twice blindly (refresh, purge).
    pub(super) retry_transient: bool,
}

impl Client {
    /// A `GET` through the pipeline, retried when transient: the answer's body.
    pub(super) async fn get_body(
        &self,
        endpoint: &'static str,
        url: Url,
        query: Vec<(&'static str, String)>,
        ids: Ids<'_>,
    ) -> Result<bytes::Bytes, Error> {
        let (_, body) = self
            .execute(Call {
                method: HttpMethod::GET,
                url,
                query,
                endpoint,
                ids,
                retry_transient: true,
            })
            .await?;
        Ok(body)
    }

    /// The URL of `segments` under the configured base ([`endpoint_url`]).
    pub(super) fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        endpoint_url(&self.inner.options.base_url, segments)
    }

    /// Pace, authenticate, send, classify; retry transient failures with full jitter and
    /// replace a refused token once.
    pub(super) async fn execute(
        &self,
        call: Call<'_>,
    ) -> Result<(StatusCode, bytes::Bytes), Error> {
        let opts = &self.inner.options;
        let url = &call.url;
        let mut attempt: u32 = 0;
        let mut token_replaced = false;
        loop {
            attempt += 1;
            self.inner.limiter.until_ready().await;
            let token = self.token().await?;
            let result = self.send_once(&call, url, &token).await;
            let err = match result {
                Ok(ok) => return Ok(ok),
                Err(err) => err,
            };
            if err.is_stale_token() {
                // Replaced once per request; a burst of refusals costs one `/token` call, and
                // fresh tokens refused again and again back off in the cache.
                self.inner.token.invalidate(token.generation, &err).await;
                if !token_replaced {
                    token_replaced = true;
                    attempt -= 1;
                    tracing::info!(
                        endpoint = call.endpoint,
                        status = err.status(),
                        code = err.code(),
                        correlation_id = err.correlation_id(),
                        "Basiq refused the token; fetching a new one and retrying once"
                    );
                    continue;
                }
            }
            let retry = call.retry_transient && err.is_transient() && attempt < opts.max_attempts;
            let delay = retry.then(|| self.backoff(attempt, err.retry_after()));
            log_failed_attempt(&call, &err, attempt, opts.max_attempts, delay);
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(err),
            }
        }
    }

    async fn send_once(
        &self,
        call: &Call<'_>,
        url: &Url,
        token: &Token,
    ) -> Result<(StatusCode, bytes::Bytes), Error> {
        let response = self
            .inner
            .http
            .request(call.method.clone(), url.clone())
            .query(&call.query)
            .bearer_auth(token.secret.expose_secret())
            .header(header::ACCEPT, "application/json")
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                self.inner.stats.count(call.endpoint, "error".into());
                return Err(transport(&e));
            }
        };
        let status = response.status();
        self.inner
            .stats
            .count(call.endpoint, status.as_u16().to_string());
        let retry_after = retry_after(response.headers(), &self.inner.clock);
        let body = response.bytes().await.map_err(|e| transport(&e))?;
        if status.is_success() {
            Ok((status, body))
        } else {
            Err(Error::from_status(
                status.as_u16(),
                api_error(status, &body),
                retry_after,
            ))
        }
    }

    /// Full jitter: uniform in [0, min(max, base * 2^(attempt-1))]; `Retry-After` wins.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let opts = &self.inner.options;
        if let Some(wait) = retry_after {
            return wait.min(opts.max_retry_delay);
        }
        let ceiling = opts
            .retry_base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(opts.max_retry_delay);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    async fn token(&self) -> Result<Token, Error> {
        self.inner.token.get(|| self.fetch_token()).await
    }

    /// `POST /token` with the API key, retried like any transient failure.
    async fn fetch_token(&self) -> Result<(SecretString, Duration), Error> {
        let opts = &self.inner.options;
        let url = self.url(&["token"])?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.inner.limiter.until_ready().await;
            self.inner
                .stats
                .token_fetches
                .fetch_add(1, Ordering::Relaxed);
            let result = self.post_token(&url).await;
            let err = match result {
                Ok(token) => return Ok(token),
                Err(err) => err,
            };
            // A refused key (`Error::Auth`) is not transient: never retried here, and the
            // token cache backs off before the next try.
            let retry = err.is_transient() && attempt < opts.max_attempts;
            let delay = retry.then(|| self.backoff(attempt, err.retry_after()));
            let call = Call {
                method: HttpMethod::POST,
                url: url.clone(),
                query: vec![],
                endpoint: "token",
                ids: Ids::default(),
                retry_transient: true,
            };
            log_failed_attempt(&call, &err, attempt, opts.max_attempts, delay);
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(err),
            }
        }
    }

    async fn post_token(&self, url: &Url) -> Result<(SecretString, Duration), Error> {
        let response = self
            .inner
            .http
            .post(url.clone())
            // The key is issued already base64-encoded: it goes as is.
            .header(
                header::AUTHORIZATION,
                format!("Basic {}", self.inner.options.api_key.expose_secret()),
            )
            .header("basiq-version", "3.0")
            .header(header::ACCEPT, "application/json")
            .form(&[("scope", "SERVER_ACCESS")])
            .send()
            .await
            .map_err(|e| {
                self.inner.stats.count("token", "error".into());
                transport(&e)
            })?;
        let status = response.status();
        self.inner.stats.count("token", status.as_u16().to_string());
        let retry_after = retry_after(response.headers(), &self.inner.clock);
        let body = response.bytes().await.map_err(|e| transport(&e))?;
        if !status.is_success() {
            let api = api_error(status, &body);
            // A wrong key answers 404 "Unable to authenticate"; a revoked one is undocumented
            // (401 or 403): all three mean the key, not this request, is the trouble.
            return Err(match status.as_u16() {
                401 | 403 | 404 => Error::Auth { api },
                other => Error::from_status(other, api, retry_after),
            });
        }
        let token: wire::TokenResponse = parse("token", &body)?;
        let lifetime = wire::token_lifetime(token.expires_in);
        Ok((token.access_token, lifetime))
    }
}

/// The URL of `segments` under `base`, pushed one by one with `path_segments_mut`: each is
/// percent-encoded as a single segment (`/`, `%`, `?`, `#` and spaces included), so an id
/// can never climb out of its place, whatever it holds. A path prefix in `base`
/// (`https://proxy.example/basiq/`) is kept. Segments the URL parser would drop or change
/// (empty, `.`, `..`, or holding a tab, CR or LF) are refused rather than sent altered.
pub(crate) fn endpoint_url(base: &Url, segments: &[&str]) -> Result<Url, Error> {
    let refuse = |why: String| Error::InvalidRequest {
        message: format!("cannot build a Basiq URL: {why}"),
    };
    if let Some(bad) = segments
        .iter()
        .find(|s| s.is_empty() || **s == "." || **s == ".." || s.contains(['\t', '\n', '\r']))
    {
        return Err(refuse(format!("path segment {bad:?} cannot be sent as is")));
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| {
            refuse(format!(
                "base_url {:?} cannot take a path",
                crate::settings::redacted_url(base)
            ))
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

fn log_failed_attempt(
    call: &Call<'_>,
    err: &Error,
    attempt: u32,
    max_attempts: u32,
    retry_in: Option<Duration>,
) {
    tracing::warn!(
        endpoint = call.endpoint,
        user_id = call.ids.user_id.map(UserId::as_str),
        connection_id = call.ids.connection_id.map(ConnectionId::as_str),
        job_id = call.ids.job_id.map(JobId::as_str),
        status = err.status(),
        code = err.code(),
        correlation_id = err.correlation_id(),
        attempt,
        max_attempts,
        retry_in_ms = retry_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        error = %err,
        "Basiq request failed"
    );
}

fn transport(e: &reqwest::Error) -> Error {
    // reqwest's Display names the URL (never a header), so no secret can leak through it.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    Error::Transport {
        message,
        timeout: e.is_timeout(),
    }
}

fn decode(endpoint: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Decode {
        endpoint,
        message: e.to_string(),
    }
}

pub(super) fn parse<T: DeserializeOwned>(endpoint: &'static str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| decode(endpoint, e))
}

/// A single resource: read like a list item, so the error names the field.
pub(super) fn one<W: DeserializeOwned, D>(
    endpoint: &'static str,
    body: &[u8],
    convert: impl Fn(W) -> Result<D, wire::BadField>,
) -> Result<D, Error> {
    let value: serde_json::Value = parse(endpoint, body)?;
    wire::decode_one(value, convert).map_err(|e| decode(endpoint, e))
}

/// The wait a `Retry-After` asks for: seconds, or an HTTP date counted from the clock's now.
fn retry_after(headers: &header::HeaderMap, clock: &Clock) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - clock.now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Reads Basiq's error envelope; a body that is not one still yields the status.
fn api_error(status: StatusCode, body: &[u8]) -> ApiError {
    let envelope = wire::ErrorEnvelope::read(body);
    ApiError {
        status: status.as_u16(),
        code: envelope.code,
        title: envelope.title,
        detail: envelope.detail,
        correlation_id: envelope.correlation_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(base: &str, segments: &[&str]) -> Result<String, Error> {
        endpoint_url(&Url::parse(base).unwrap(), segments).map(String::from)
    }

    #[test]
    fn basiq_urls_are_built_segment_by_segment() {
        assert_eq!(
            url("https://au-api.basiq.io", &["users", "u1", "connections"]).unwrap(),
            "https://au-api.basiq.io/users/u1/connections"
        );
        // Even an id that skipped validation stays one segment: it cannot climb the path.
        assert_eq!(
            url(
                "https://au-api.basiq.io/",
                &["users", "../../etc", "connections"]
            )
            .unwrap(),
            "https://au-api.basiq.io/users/..%2F..%2Fetc/connections"
        );
        assert_eq!(
            url(
                "https://au-api.basiq.io",
                &["users", "real/connections/x/../..", "connections"]
            )
            .unwrap(),
            "https://au-api.basiq.io/users/real%2Fconnections%2Fx%2F..%2F../connections"
        );
        assert_eq!(
            url("http://127.0.0.1:9/", &["jobs", "a b?c#d%2e\\e"]).unwrap(),
            "http://127.0.0.1:9/jobs/a%20b%3Fc%23d%252e%5Ce"
        );
        // A path prefix in base_url is kept, with or without its trailing slash; a query or
        // fragment in it is not carried into requests.
        for base in [
            "http://proxy.local/basiq/v3/",
            "http://proxy.local/basiq/v3?x=1#f",
        ] {
            assert_eq!(
                url(base, &["users", "u1"]).unwrap(),
                "http://proxy.local/basiq/v3/users/u1"
            );
        }
        // Segments the URL parser would drop or alter are refused, not sent changed.
        for bad in ["", ".", "..", "a\tb", "u1\n", "\r"] {
            let err = url("https://au-api.basiq.io", &["users", bad]).unwrap_err();
            assert!(
                matches!(err, Error::InvalidRequest { .. }),
                "{bad:?}: {err}"
            );
            assert!(!err.is_transient());
        }
    }
}
