//! The Basiq client: typed endpoints over one pipeline (pace, token, send, classify, retry).
//!
//! Every URL is built by [`endpoint_url`], segment by segment, never by formatting a string:
//! an id is always exactly one percent-encoded path segment.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::{Method as HttpMethod, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use url::Url;

use super::error::{ApiError, Error};
use super::token::{Token, TokenCache};
use super::wire;
use crate::clock::Clock;
use crate::domain::{Connection, ConnectionId, Connector, Job, JobId, UserId};

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
    token_fetches: AtomicU64,
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
    fn count_undecodable(&self, endpoint: &'static str, n: u64) {
        *self
            .undecodable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint)
            .or_default() += n;
    }
    fn count(&self, endpoint: &'static str, status: String) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, status))
            .or_default() += 1;
    }
}

struct Inner {
    http: reqwest::Client,
    options: ClientOptions,
    token: TokenCache,
    limiter: DefaultDirectRateLimiter,
    stats: Stats,
    clock: Clock,
}

/// A cheap-to-clone handle; every clone shares the token, the pace and the counters.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// One request through the pipeline.
struct Call<'a> {
    method: HttpMethod,
    url: Url,
    query: Vec<(&'static str, String)>,
    endpoint: &'static str,
    ids: Ids<'a>,
    /// False for requests that must not be sent twice blindly (refresh, purge).
    retry_transient: bool,
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

    /// `GET /users/{id}`.
    pub async fn get_user(&self, user_id: &UserId) -> Result<UserSummary, Error> {
        let url = self.url(&["users", user_id.as_str()])?;
        let body = self
            .get_body("user", url, vec![], Ids::user(user_id))
            .await?;
        let user: wire::UserWire = parse("user", &body)?;
        let refs = user.connections.map(|l| l.data).unwrap_or_default();
        let refs = self.items("user", Ids::user(user_id), refs, |r: wire::Reference| {
            r.into_connection_id()
        });
        Ok(UserSummary {
            id: user.id,
            connection_ids: refs.items,
        })
    }

    /// `GET /users/{id}/connections`. An item that cannot be read is skipped, logged and
    /// counted: the list is then not complete ([`Listed::is_complete`]).
    pub async fn list_connections(&self, user_id: &UserId) -> Result<Listed<Connection>, Error> {
        let ids = Ids::user(user_id);
        let url = self.url(&["users", user_id.as_str(), "connections"])?;
        let body = self.get_body("connections", url, vec![], ids).await?;
        let list: wire::RawList = parse("connections", &body)?;
        Ok(self.items(
            "connections",
            ids,
            list.data,
            wire::ConnectionWire::into_domain,
        ))
    }

    /// `GET /users/{id}/connections/{cid}`.
    pub async fn get_connection(
        &self,
        user_id: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<Connection, Error> {
        let url = self.url(&[
            "users",
            user_id.as_str(),
            "connections",
            connection_id.as_str(),
        ])?;
        let body = self
            .get_body(
                "connection",
                url,
                vec![],
                Ids::connection(user_id, connection_id),
            )
            .await?;
        one("connection", &body, wire::ConnectionWire::into_domain)
    }

    /// `GET /users/{id}/jobs`, optionally for one connection only (Basiq keeps 7 days). An
    /// item that cannot be read is skipped, logged and counted: that job is just not seen.
    pub async fn list_jobs(
        &self,
        user_id: &UserId,
        connection_id: Option<&ConnectionId>,
    ) -> Result<Vec<Job>, Error> {
        let query = connection_id
            .map(|c| vec![("filter", format!("connection.id.eq('{c}')"))])
            .unwrap_or_default();
        let ids = Ids {
            user_id: Some(user_id),
            connection_id,
            job_id: None,
        };
        let url = self.url(&["users", user_id.as_str(), "jobs"])?;
        let body = self.get_body("jobs", url, query, ids).await?;
        let list: wire::RawList = parse("jobs", &body)?;
        Ok(self
            .items("jobs", ids, list.data, wire::JobWire::into_domain)
            .items)
    }

    /// `GET /jobs/{id}`.
    pub async fn get_job(&self, job_id: &JobId) -> Result<Job, Error> {
        let url = self.url(&["jobs", job_id.as_str()])?;
        let body = self.get_body("job", url, vec![], Ids::job(job_id)).await?;
        one("job", &body, wire::JobWire::into_domain)
    }

    /// `GET /connectors`: every connector's status, a few hundred of them. An entry that
    /// cannot be read is skipped, logged and counted; its last known status stays.
    pub async fn list_connectors(&self) -> Result<Vec<Connector>, Error> {
        let body = self
            .get_body(
                "connectors",
                self.url(&["connectors"])?,
                vec![],
                Ids::default(),
            )
            .await?;
        let list: wire::RawList = parse("connectors", &body)?;
        Ok(self
            .items(
                "connectors",
                Ids::default(),
                list.data,
                wire::ConnectorWire::into_domain,
            )
            .items)
    }

    /// `GET /events/{id}`: the event with its user and resource.
    pub async fn get_event(
        &self,
        event_id: &crate::domain::EventId,
    ) -> Result<crate::domain::Event, Error> {
        let url = self.url(&["events", event_id.as_str()])?;
        let body = self.get_body("event", url, vec![], Ids::default()).await?;
        one("event", &body, wire::EventWire::into_domain)
    }

    /// `GET /events`: the application's events of the last 7 days, one request (Basiq's
    /// `links.next` pages are not followed: the next poll continues from the cursor). An
    /// unreadable event is skipped, logged and counted.
    pub async fn list_events(&self) -> Result<Listed<crate::domain::Event>, Error> {
        let body = self
            .get_body("events", self.url(&["events"])?, vec![], Ids::default())
            .await?;
        let list: wire::RawList = parse("events", &body)?;
        Ok(self.items(
            "events",
            Ids::default(),
            list.data,
            wire::EventWire::into_domain,
        ))
    }

    /// Decodes a list's items one by one; each unreadable one is logged once and counted.
    fn items<W: DeserializeOwned, D>(
        &self,
        endpoint: &'static str,
        ids: Ids<'_>,
        data: Vec<serde_json::Value>,
        convert: impl Fn(W) -> Result<D, wire::BadField>,
    ) -> Listed<D> {
        let decoded = wire::decode_items(data, convert);
        for item in &decoded.unreadable {
            tracing::warn!(
                event = "unreadable_item",
                endpoint,
                user_id = ids.user_id.map(UserId::as_str),
                item_id = %item.shown_id(),
                field = %item.field,
                error = %item.message,
                "skipped an item of a Basiq list that could not be read; the others are kept"
            );
        }
        let unreadable = decoded.unreadable.len();
        if unreadable > 0 {
            self.inner
                .stats
                .count_undecodable(endpoint, u64::try_from(unreadable).unwrap_or(u64::MAX));
        }
        Listed {
            items: decoded.items,
            unreadable,
        }
    }

    /// `POST /users/{id}/connections/{cid}/refresh`: 202 is a new job, 200 the running one.
    ///
    /// Never retried blindly: Basiq may have accepted a request whose answer was lost. After
    /// a timeout or a dropped connection, the jobs of this connection are looked up instead.
    pub async fn refresh_connection(
        &self,
        user_id: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<RefreshOutcome, Error> {
        let asked_at = self.inner.clock.now();
        let call = Call {
            method: HttpMethod::POST,
            url: self.url(&[
                "users",
                user_id.as_str(),
                "connections",
                connection_id.as_str(),
                "refresh",
            ])?,
            query: vec![],
            endpoint: "refresh",
            ids: Ids::connection(user_id, connection_id),
            retry_transient: false,
        };
        match self.execute(call).await {
            Ok((status, body)) => {
                let id = one("refresh", &body, wire::JobStub::into_domain)?;
                Ok(if status == StatusCode::OK {
                    RefreshOutcome::Existing(id)
                } else {
                    RefreshOutcome::Created(id)
                })
            }
            Err(err @ Error::Transport { .. }) => {
                tracing::warn!(
                    user_id = %user_id,
                    connection_id = %connection_id,
                    error = %err,
                    "refresh answer lost; looking for the job instead of sending it again"
                );
                let since = asked_at - chrono::Duration::seconds(5);
                let looks = self.inner.options.refresh_lookups;
                for (look, delay) in looks.iter().enumerate() {
                    tokio::time::sleep(*delay).await;
                    match self.list_jobs(user_id, Some(connection_id)).await {
                        Ok(jobs) => {
                            let found = jobs
                                .into_iter()
                                .filter(|j| j.created.is_some_and(|c| c >= since))
                                .max_by_key(|j| j.created);
                            if let Some(job) = found {
                                return Ok(RefreshOutcome::FoundAfterTimeout(job.id));
                            }
                        }
                        Err(e) => tracing::warn!(
                            user_id = %user_id,
                            connection_id = %connection_id,
                            correlation_id = e.correlation_id(),
                            error = %e,
                            look = look + 1,
                            "could not list the jobs while looking for a lost refresh"
                        ),
                    }
                }
                tracing::warn!(
                    user_id = %user_id,
                    connection_id = %connection_id,
                    looks = looks.len(),
                    "no job found for the lost refresh; it counts as attempted and is not resent"
                );
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// `POST /users/{id}/connections/{cid}/purge` (204): deletes the connection's data,
    /// keeps its id. Irreversible, so never retried.
    pub async fn purge_connection(
        &self,
        user_id: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<(), Error> {
        self.execute(Call {
            method: HttpMethod::POST,
            url: self.url(&[
                "users",
                user_id.as_str(),
                "connections",
                connection_id.as_str(),
                "purge",
            ])?,
            query: vec![],
            endpoint: "purge",
            ids: Ids::connection(user_id, connection_id),
            retry_transient: false,
        })
        .await
        .map(|_| ())
    }

    async fn get_body(
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

    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        endpoint_url(&self.inner.options.base_url, segments)
    }

    /// Pace, authenticate, send, classify; retry transient failures with full jitter and
    /// replace a refused token once.
    async fn execute(&self, call: Call<'_>) -> Result<(StatusCode, bytes::Bytes), Error> {
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

fn parse<T: DeserializeOwned>(endpoint: &'static str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| decode(endpoint, e))
}

/// A single resource: read like a list item, so the error names the field.
fn one<W: DeserializeOwned, D>(
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
