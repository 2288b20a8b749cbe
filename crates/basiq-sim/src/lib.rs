//! A Basiq API stand-in on a loopback port, used by `demo`, `simulate` and the integration tests.
//!
//! It serves the Basiq 3.0 routes the daemon calls (`/token`, users, connections, jobs,
//! refresh, purge, `/connectors`) with Basiq's shapes and quirks: list envelopes with `size` or
//! `totalCount`, the error envelope with a `correlationId` on every 4xx/5xx, `expiryDate: ""`
//! for web connections, `openbanking` spelled without a dash now and then, jobs that lose
//! `links.source` while running, failure results without a `type` or wrapped in an array.
//!
//! The population is seeded: the same [`SimConfig::seed`] gives the same users, connections and
//! scripted outcomes, so a test can pick a case with [`Simulator::scripted`] or
//! [`Simulator::case_of`]. Jobs started by a refresh progress lazily, step by step, each time
//! something reads them; when one finishes it changes its connection the way Basiq would.
//!
//! It can also send what Basiq really sends at its worst ([`ItemFault`] for one unreadable item
//! of a list, `/connectors` without logos, a gateway's HTML 404: see `shapes`).
//!
//! It also stands in for the Consumer Data Right's public side (see `cdr`): the CDR Register's
//! brand summary and each bank brand's discovery status and outages, matched by ABN to the
//! `/connectors` institutions.
//!
//! Tests steer it in process (faults, delays, outages, expired tokens, a revoked key, faults
//! aimed at one user, counters); a person with curl or the daemon's `demo` steers it through
//! the unauthenticated `/_sim/` control routes.
//!
//! It knows nothing about SQLite or the daemon's modules: it only speaks HTTP, and never uses
//! anything else from this crate, so it compiles on its own.

mod cdr;
mod events;
mod population;
mod routes;
mod shapes;
mod state;
pub mod world;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use cdr::{
    CDR_BRANDS, CDR_REGISTER_TARGET, CDR_SLOW_DEFAULT, CdrBrand, CdrBrandSeed, CdrCounters,
    CdrFault, CdrOutage, CdrStatus, UnknownCdrFault, cdr_brand_id, cdr_brand_id_named,
    sydney_offset, sydney_time,
};
pub use events::{Sent, SimEvent, WebhookFault, WebhookTarget};
pub use shapes::ItemFault;
use state::State;

/// The connector (institution id, method) in `major-outage` when the simulator starts; most
/// `service-unavailable` connections sit on it, at three or more distinct users.
pub const OUTAGE_CONNECTOR: (&str, &str) = ("AU00003", "web");
/// The connector in `degraded-performance` when the simulator starts.
pub const DEGRADED_CONNECTOR: (&str, &str) = ("AU00001", "open-banking");

/// Where the simulator reads the time: the wall clock by default; the life simulation hands
/// it the daemon's driven clock, so both live in the same (virtual) time.
pub type SimClock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The wall clock.
pub fn wall_clock() -> SimClock {
    Arc::new(Utc::now)
}

/// How to build a [`Simulator`].
#[derive(Clone)]
pub struct SimConfig {
    /// Population size.
    pub users: usize,
    /// Seed of the population: the same seed gives the same users, ids and outcomes.
    pub seed: u64,
    /// The key `POST /token` accepts as `Authorization: Basic <api_key>`. Left empty, it is
    /// derived from the seed with [`default_api_key`].
    pub api_key: String,
    /// `expires_in` of the tokens it issues; a token older than this answers 403.
    pub token_ttl: Duration,
    /// How long each job step takes before the next one starts.
    pub step_duration: Duration,
    /// Where the time comes from (tokens' lives, jobs' progress, events, webhook stamps).
    pub clock: SimClock,
    /// Behave like Basiq over days (the life simulation): a job that fails for the user's
    /// reason sends `connection.invalidated` when it ends, and every read of a user's lists is
    /// logged ([`Simulator::reads_of`]).
    pub world: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        let seed = 7;
        Self {
            users: 50,
            seed,
            api_key: default_api_key(seed),
            token_ttl: Duration::from_secs(3600),
            step_duration: Duration::from_secs(2),
            clock: wall_clock(),
            world: false,
        }
    }
}

// The key is a secret like any other: keep it out of `{:?}`.
impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("users", &self.users)
            .field("seed", &self.seed)
            .field("api_key", &"[redacted]")
            .field("token_ttl", &self.token_ttl)
            .field("step_duration", &self.step_duration)
            .field("world", &self.world)
            .finish_non_exhaustive()
    }
}

/// The API key a simulator built with `seed` accepts when [`SimConfig::api_key`] is left empty:
/// base64 text, like a real Basiq key (`c2ltLWtleS03...` for seed 7).
pub fn default_api_key(seed: u64) -> String {
    state::base64(
        format!("sim-key-{seed}:basiq-health-simulator").as_bytes(),
        state::STANDARD,
        true,
    )
}

/// The simulated Basiq API: cheap to clone, every clone shares one state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    api_key: String,
    token_ttl: Duration,
    step: Duration,
    state: Mutex<State>,
    in_flight: AtomicU64,
    peak: AtomicU64,
    /// Where [`Simulator::bind`] listens: the fallback for links when a request has no `Host`.
    bound: Mutex<Option<String>>,
    webhooks: Mutex<Webhooks>,
    clock: SimClock,
    world: bool,
}

/// Where webhooks go, the faults queued for them, and every delivery attempt's answer.
#[derive(Default)]
struct Webhooks {
    target: Option<WebhookTarget>,
    faults: std::collections::VecDeque<(WebhookFault, u32)>,
    sent: Arc<Mutex<Vec<Sent>>>,
    in_flight: Vec<JoinHandle<()>>,
    /// Every `lost_every`-th delivery is lost, every `duplicate_every`-th sent twice (0: never).
    chaos: Option<(u32, u32)>,
    deliveries: u64,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No locking here: `{:?}` must never wait on (or deadlock with) a handler.
        f.debug_struct("Simulator")
            .field("step", &self.inner.step)
            .field("token_ttl", &self.inner.token_ttl)
            .finish_non_exhaustive()
    }
}

/// A simulator serving on a socket. Dropping it stops the server too, without waiting.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub sim: Simulator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A connection as the simulator scripts it: what it serves and how its next refresh ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptedConnection {
    pub id: String,
    pub institution_id: String,
    /// `web` or `open-banking`. Some open-banking connections are served as `openbanking`.
    pub method: String,
    /// `active`, `pending`, `invalid`, `pre-init`, `init`, ...: served verbatim.
    pub status: String,
    /// How the next refresh job (and the seeded history job) ends.
    pub outcome: Outcome,
    pub last_used: Option<DateTime<Utc>>,
    pub created: DateTime<Utc>,
    /// The open-banking consent's end; `None` is served as `""`, as Basiq does for web.
    pub expiry: Option<DateTime<Utc>>,
    /// `mfaEnabled`; `None`: the institution's default.
    pub mfa: Option<bool>,
    /// Served in the shape of Basiq's recorded answers: no `method`, no `mfaEnabled`, and
    /// no `expiryDate` unless there is a consent.
    pub recorded_shape: bool,
}

impl ScriptedConnection {
    /// A healthy active connection with a fresh random id: created 90 days ago, used a day ago,
    /// and for open banking a consent that ends in 275 days.
    pub fn new(institution_id: &str, method: &str) -> Self {
        Self::new_at(institution_id, method, Utc::now())
    }

    /// As [`ScriptedConnection::new`], made at `now` (a simulator on a driven clock).
    pub fn new_at(institution_id: &str, method: &str, now: DateTime<Utc>) -> Self {
        let open_banking = method != "web";
        Self {
            id: state::uuid(&mut rand::rng()),
            institution_id: institution_id.to_owned(),
            method: method.to_owned(),
            status: "active".to_owned(),
            outcome: Outcome::Success,
            last_used: Some(now - TimeDelta::days(1)),
            created: now - TimeDelta::days(90),
            expiry: open_banking.then(|| now + TimeDelta::days(275)),
            mfa: None,
            recorded_shape: false,
        }
    }
}

/// How a job ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    /// Every step succeeds; the connection's `lastUsed` becomes the finish time.
    Success,
    /// The step titled `step` fails with `{code, title, detail}`; the later steps stay pending.
    Fail {
        step: String,
        code: String,
        title: String,
        detail: String,
    },
    /// `verify-credentials` waits on an `mfa-challenge` step that nobody answers.
    MfaPending,
    /// The job never leaves `in-progress`.
    Hang,
}

impl Outcome {
    /// A failure at `step` with the given code, title and detail.
    pub fn fail(step: &str, code: &str, title: &str, detail: &str) -> Self {
        Self::Fail {
            step: step.to_owned(),
            code: code.to_owned(),
            title: title.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// Who asked for a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobOrigin {
    /// The seeded history.
    Seed,
    /// Written by hand ([`Simulator::add_job`]).
    Scripted,
    /// `POST .../refresh`: the daemon (or anyone with the API key).
    Refresh,
    /// Basiq's own update of the connection (its daily refresh, smart cache).
    Basiq,
    /// The user connecting again (new credentials, a new consent): always succeeds.
    User,
}

/// One job as the world saw it, for checking a run against the truth.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    pub id: String,
    pub user_id: String,
    pub connection_id: String,
    pub origin: JobOrigin,
    pub created: DateTime<Utc>,
    /// When it ended; `None` while it runs.
    pub ended: Option<DateTime<Utc>>,
    pub success: bool,
    /// The failure code, if it failed.
    pub code: Option<String>,
    /// A failure for the user's reason that invalidated the connection; false for a bank's
    /// failure that only looks like the user's.
    pub users_fault: bool,
}

/// A job written into the history by hand, with explicit times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptedJob {
    /// `None` picks a fresh id.
    pub id: Option<String>,
    pub connection_id: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub outcome: Outcome,
    /// A running scripted job stays running for good: the step its outcome ends on is shown
    /// `in-progress`, and refreshing its connection answers 200 with it.
    pub running: bool,
    /// `false` leaves out `links.source`, as Basiq sometimes does.
    pub with_source: bool,
}

/// The routes the simulator counts and can inject faults into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// `POST /token`
    Token,
    /// `GET /users/{id}`
    User,
    /// `GET /users/{id}/connections`
    Connections,
    /// `GET /users/{id}/connections/{cid}`
    Connection,
    /// `GET /users/{id}/jobs`
    Jobs,
    /// `GET /jobs/{id}`
    Job,
    /// `POST /users/{id}/connections/{cid}/refresh`
    Refresh,
    /// `POST /users/{id}/connections/refresh`
    BulkRefresh,
    /// `POST /users/{id}/connections/{cid}/purge`
    Purge,
    /// `GET /connectors` and `GET /connectors/{id}/{method}`
    Connectors,
    /// `GET /events` and `GET /events/{id}`
    Events,
}

impl Route {
    /// Every route, in declaration order.
    pub const ALL: [Route; 11] = [
        Route::Token,
        Route::User,
        Route::Connections,
        Route::Connection,
        Route::Jobs,
        Route::Job,
        Route::Refresh,
        Route::BulkRefresh,
        Route::Purge,
        Route::Connectors,
        Route::Events,
    ];

    /// The kebab-case name used in JSON and by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Token => "token",
            Route::User => "user",
            Route::Connections => "connections",
            Route::Connection => "connection",
            Route::Jobs => "jobs",
            Route::Job => "job",
            Route::Refresh => "refresh",
            Route::BulkRefresh => "bulk-refresh",
            Route::Purge => "purge",
            Route::Connectors => "connectors",
            Route::Events => "events",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A route name that is not one of [`Route::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown route {0:?}: expected one of token, user, connections, connection, jobs, job, refresh, bulk-refresh, purge, connectors, events"
)]
pub struct UnknownRoute(pub String);

impl FromStr for Route {
    type Err = UnknownRoute;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Route::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRoute(s.to_owned()))
    }
}

/// What an injected fault does to a request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Answer this status with Basiq's error envelope, and `Retry-After` when given.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Answer this status with Basiq's error envelope carrying this error code (e.g. 400
    /// `invalid-credentials` to a refresh).
    Error { status: u16, code: String },
    /// Wait, then answer normally.
    Delay { ms: u64 },
    /// Act on the request only after `ms`, whether the caller still waits or has given up
    /// (Basiq accepting a refresh seconds after the client's timeout).
    LateAccept { ms: u64 },
    /// Answer 200 `application/json` with a body that is not valid JSON.
    Malformed,
    /// Close the connection without an HTTP response.
    Drop,
    /// Answer this status with a gateway's HTML page instead of Basiq's envelope (a 404 from
    /// a load balancer says nothing about the resource).
    GatewayPage { status: u16 },
    /// Answer this status with an empty body.
    EmptyBody { status: u16 },
    /// Answer 401 or 403 `unauthorized-access`, as Basiq does when the token does not cover
    /// the user or resource (the token itself is fine). Aim it at one user with
    /// [`Simulator::inject_user_fault`].
    UnauthorizedAccess { status: u16 },
}

/// A snapshot of what the simulator has been asked.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Calls to `POST /token`, successful or not.
    pub token_calls: u64,
    /// Requests per route, faulted ones included.
    pub requests: BTreeMap<Route, u64>,
    /// When each connection was asked to refresh, whatever the answer.
    pub refresh_calls: BTreeMap<String, Vec<DateTime<Utc>>>,
    /// Calls to the bulk refresh the daemon must never make.
    pub bulk_refresh_calls: u64,
    /// Most requests in flight at once.
    pub peak_concurrent: u64,
    pub purge_calls: u64,
    /// Every token issued, so a test can check none of them reaches the logs.
    /// [`Simulator::reset_counters`] keeps this list.
    pub issued_tokens: Vec<String>,
    /// Connector status changes made through [`Simulator::set_connector_status`], in order:
    /// `(institution id, method, status)`.
    pub connector_changes: Vec<(String, String, String)>,
}

/// Which slice of the seeded mix a population connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// Active, last job succeeded within the week.
    Healthy,
    /// Invalid after `invalid-credentials` ("Account is locked").
    InvalidCredentials,
    /// Invalid after `account-not-accessible-requires-user-action` (a bank popup).
    BankPopup,
    /// Active, last job failed with `service-unavailable`; most sit on the connector in outage.
    ServiceUnavailable,
    /// Open banking, consent ends within 1 to 25 days, healthy.
    ConsentExpiringSoon,
    /// Open banking, consent ended, status `invalid`.
    ConsentExpired,
    /// Invalid after `invalid-connection`.
    ConnectionInvalid,
    /// `pending` or `pre-init`, never used, no job.
    NotYetActive,
    /// Active, used 5 days ago, no job within the 7 days Basiq keeps.
    Stale,
    /// Active, last job failed with `unknown-error` or `job-timed-out`.
    Transient,
}

/// A connector as served by `/connectors`: the pair (institution, method) and its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    pub institution_id: String,
    pub method: String,
    pub status: String,
}

impl Simulator {
    /// Builds the seeded population.
    pub fn new(cfg: SimConfig) -> Self {
        let api_key = if cfg.api_key.is_empty() {
            default_api_key(cfg.seed)
        } else {
            cfg.api_key.clone()
        };
        let state = population::build(&cfg, (cfg.clock)());
        Self {
            inner: Arc::new(Inner {
                api_key,
                token_ttl: cfg.token_ttl,
                step: cfg.step_duration,
                state: Mutex::new(state),
                in_flight: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                bound: Mutex::new(None),
                webhooks: Mutex::new(Webhooks::default()),
                clock: cfg.clock.clone(),
                world: cfg.world,
            }),
        }
    }

    /// Binds `addr` (port 0 picks a free port) and serves the simulator on a spawned task.
    ///
    /// Only a loopback address is accepted: the `/_sim/` control routes have no
    /// authentication. [`Simulator::bind_exposed`] binds any address when that is meant.
    pub async fn bind(self, addr: SocketAddr) -> std::io::Result<RunningSim> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to listen on {addr}: not a loopback address, and the simulator's \
                     /_sim/ control routes have no authentication"
                ),
            ));
        }
        self.bind_exposed(addr).await
    }

    /// Binds any address, loopback or not. Anyone who can reach it can steer the simulator.
    pub async fn bind_exposed(self, addr: SocketAddr) -> std::io::Result<RunningSim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        *self.inner.bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(base_url_of(addr));
        let (stop, stopped) = oneshot::channel::<()>();
        let app = self.router();
        let task = tokio::spawn(async move {
            let serving = axum::serve(listener, app).with_graceful_shutdown(async {
                // A dropped sender stops the server as well.
                let _ = stopped.await;
            });
            if let Err(e) = serving.await {
                tracing::warn!(error = %e, "the Basiq simulator stopped serving");
            }
        });
        tracing::info!(%addr, "Basiq simulator listening");
        Ok(RunningSim {
            addr,
            sim: self,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The routes, for callers that serve them themselves.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    /// Now, by the simulator's clock.
    pub fn now(&self) -> DateTime<Utc> {
        (self.inner.clock)()
    }

    /// The key `POST /token` accepts.
    pub fn api_key(&self) -> String {
        self.inner.api_key.clone()
    }

    /// User ids, in population order (added users last).
    pub fn user_ids(&self) -> Vec<String> {
        self.lock().users.iter().map(|u| u.id.clone()).collect()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        let mut counters = self.lock().counters.clone();
        counters.peak_concurrent = self.inner.peak.load(Ordering::SeqCst);
        counters
    }

    /// Zeroes the counters, the CDR ones ([`Simulator::cdr_counters`]) too; the list of
    /// issued tokens stays.
    pub fn reset_counters(&self) {
        let mut st = self.lock();
        st.cdr.reset_counters();
        let issued = std::mem::take(&mut st.counters.issued_tokens);
        st.counters = Counters {
            issued_tokens: issued,
            ..Counters::default()
        };
        self.inner.peak.store(
            self.inner.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }

    /// The next `times` requests to `route` get `fault`, after any faults queued before.
    pub fn inject_fault(&self, route: Route, fault: Fault, times: u32) {
        if times == 0 {
            return;
        }
        tracing::info!(%route, ?fault, times, "simulator fault injected");
        self.lock()
            .faults
            .entry(route)
            .or_default()
            .push_back((fault, times));
    }

    /// Chaos on `route`: from now on every `every`-th request to it gets the next fault of
    /// `faults`, in turn (deterministic, so a run repeats). Queued faults
    /// ([`Simulator::inject_fault`]) come first. An empty list or `every == 0` stops it.
    pub fn set_chaos(&self, route: Route, every: u32, faults: Vec<Fault>) {
        let mut st = self.lock();
        if every == 0 || faults.is_empty() {
            st.chaos.remove(&route);
            return;
        }
        tracing::info!(%route, every, faults = faults.len(), "simulator chaos set");
        st.chaos.insert(
            route,
            state::Chaos {
                every,
                faults,
                seen: 0,
                next: 0,
            },
        );
    }

    /// Adds `delay` to every request to `route` (`None`: to every route) until changed.
    /// A route's own delay adds to the all-routes one. [`Duration::ZERO`] clears that route's
    /// delay; with `None` it clears every delay.
    pub fn set_delay(&self, route: Option<Route>, delay: Duration) {
        let mut st = self.lock();
        match route {
            None if delay.is_zero() => {
                st.global_delay = Duration::ZERO;
                st.route_delays.clear();
            }
            None => st.global_delay = delay,
            Some(r) if delay.is_zero() => {
                st.route_delays.remove(&r);
            }
            Some(r) => {
                st.route_delays.insert(r, delay);
            }
        }
    }

    /// Sets a connector's status (`operational`, `major-outage`, ...), adding the connector
    /// when it is new, and records the change in [`Counters::connector_changes`].
    pub fn set_connector_status(&self, institution_id: &str, method: &str, status: &str) {
        tracing::info!(
            institution_id,
            method,
            status,
            "simulator connector status set"
        );
        let mut st = self.lock();
        st.set_connector_status(institution_id, method, status);
        st.counters.connector_changes.push((
            institution_id.to_owned(),
            method.to_owned(),
            status.to_owned(),
        ));
    }

    /// Serves an institution under another name from now on: how a test shows that
    /// outside text is data (`<img src=x onerror=alert(1)>` must show as text).
    pub fn set_institution_name(&self, institution_id: &str, name: &str) {
        self.lock().set_institution_name(institution_id, name);
    }

    /// Every connector with its current status.
    pub fn connectors(&self) -> Vec<ConnectorStatus> {
        self.lock()
            .connectors
            .iter()
            .map(|c| ConnectorStatus {
                institution_id: c.institution.id.to_owned(),
                method: c.method.clone(),
                status: c.status.clone(),
            })
            .collect()
    }

    /// Every token issued so far now answers 403 "Token has expired"; new ones work.
    pub fn expire_tokens(&self) {
        let now = self.now();
        self.lock().expire_tokens(now);
    }

    /// Revokes the API key: from now on `POST /token` answers `status` whatever key is sent
    /// (401 `unauthorized-access`, 403 `access-denied`, or 404 "Unable to authenticate" as
    /// for a wrong key; any other status is taken as 403). Basiq documents only the 404 of a
    /// wrong key. Tokens already issued keep working until they expire: add
    /// [`Simulator::expire_tokens`] for a key whose tokens die with it.
    pub fn revoke_api_key(&self, status: u16) {
        tracing::info!(status, "simulator API key revoked");
        self.lock().access.revoked_key = Some(status);
    }

    /// Undoes [`Simulator::revoke_api_key`]: `POST /token` accepts the key again.
    pub fn restore_api_key(&self) {
        tracing::info!("simulator API key restored");
        self.lock().access.revoked_key = None;
    }

    /// The next `times` requests to any route of `user_id` (`/users/{user_id}/...`) get
    /// `fault`, e.g. [`Fault::UnauthorizedAccess`]. Faults queued on the route itself with
    /// [`Simulator::inject_fault`] come first.
    pub fn inject_user_fault(&self, user_id: &str, fault: Fault, times: u32) {
        if times == 0 {
            return;
        }
        tracing::info!(user_id, ?fault, times, "simulator user fault injected");
        self.lock()
            .access
            .user_faults
            .entry(user_id.to_owned())
            .or_default()
            .push_back((fault, times));
    }

    /// Adds a user without connections (nothing happens when it exists).
    pub fn add_user(&self, user_id: &str) {
        self.lock().add_user(user_id);
    }

    /// Removes a user, its connections and its jobs: from then on its routes answer 404.
    pub fn remove_user(&self, user_id: &str) {
        self.lock().remove_user(user_id);
    }

    /// Adds (or replaces, by id) a connection; the user is created when missing. An empty id
    /// gets a fresh one. No history job is made: add one with [`Simulator::add_job`].
    pub fn add_connection(&self, user_id: &str, conn: ScriptedConnection) {
        self.lock().add_connection(user_id, conn);
    }

    /// Adds a job to the history of one of the user's connections (ignored, with a warning,
    /// when the user has no such connection).
    pub fn add_job(&self, user_id: &str, job: ScriptedJob) {
        self.lock().add_job(user_id, job);
    }

    /// Serves a job with another `jobType` (e.g. `statement`); false when no such job.
    pub fn set_job_type(&self, job_id: &str, job_type: &str) -> bool {
        let mut state = self.lock();
        match state.jobs.iter_mut().find(|j| j.id == job_id) {
            Some(job) => {
                job.job_type = Some(job_type.to_owned());
                true
            }
            None => false,
        }
    }

    /// The user's connection ids, in the order they are served.
    pub fn connection_ids(&self, user_id: &str) -> Vec<String> {
        self.scripted(user_id).into_iter().map(|c| c.id).collect()
    }

    /// The user's connections as they stand now (finished jobs applied).
    pub fn scripted(&self, user_id: &str) -> Vec<ScriptedConnection> {
        let now = self.now();
        let mut st = self.lock();
        st.settle(now);
        st.user(user_id)
            .map(|u| u.connections.iter().map(|c| c.s.clone()).collect())
            .unwrap_or_default()
    }

    /// Which slice of the seeded mix a connection was made for (`None` for added ones).
    pub fn case_of(&self, connection_id: &str) -> Option<Case> {
        self.lock().cases.get(connection_id).copied()
    }

    /// Changes what the connection's next refresh jobs end with. False when it is unknown.
    pub fn set_outcome(&self, connection_id: &str, outcome: Outcome) -> bool {
        let mut st = self.lock();
        match st.connection_mut(connection_id) {
            Some(c) => {
                c.s.outcome = outcome;
                true
            }
            None => false,
        }
    }

    /// Changes a connection's status (`active`, `invalid`, ...). False when it is unknown.
    pub fn set_connection_status(&self, connection_id: &str, status: &str) -> bool {
        let mut st = self.lock();
        match st.connection_mut(connection_id) {
            Some(c) => {
                c.s.status = status.to_owned();
                true
            }
            None => false,
        }
    }

    /// Ids of every job of the user Basiq would still list or serve, oldest first.
    pub fn job_ids(&self, user_id: &str) -> Vec<String> {
        self.lock()
            .jobs
            .iter()
            .filter(|j| j.user_id == user_id)
            .map(|j| j.id.clone())
            .collect()
    }

    /// Sends webhooks for every event from now on to `url`, signed with `secret`
    /// (`whsec_<base64>`).
    pub fn set_webhook_target(&self, url: &str, secret: &str) {
        self.webhooks().target = Some(WebhookTarget {
            url: url.to_owned(),
            secret: secret.to_owned(),
        });
    }

    /// Stops sending webhooks (events are still recorded for `/events`).
    pub fn clear_webhook_target(&self) {
        self.webhooks().target = None;
    }

    /// The next `times` webhook deliveries get `fault`.
    pub fn inject_webhook_fault(&self, fault: WebhookFault, times: u32) {
        if times > 0 {
            self.webhooks().faults.push_back((fault, times));
        }
    }

    /// Every webhook delivery attempt so far, with the receiver's answer.
    pub fn webhooks_sent(&self) -> Vec<Sent> {
        let sent = self.webhooks().sent.clone();
        sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the webhooks being sent are done (their retries included).
    pub async fn webhooks_settled(&self) {
        loop {
            let task = self.webhooks().in_flight.pop();
            match task {
                Some(t) => {
                    let _ = t.await;
                }
                None => return,
            }
        }
    }

    /// Every event recorded, oldest first.
    pub fn events(&self) -> Vec<SimEvent> {
        self.lock().events.clone()
    }

    /// Records an event about `user_id` (and `connection_id`), served by `/events` from
    /// now on, and sends its webhook when a target is set. `event_type` is Basiq's id, e.g.
    /// `connection.invalidated`.
    pub fn emit_event(
        &self,
        event_type: &str,
        user_id: &str,
        connection_id: Option<&str>,
    ) -> SimEvent {
        let now = self.now();
        let event = self
            .lock()
            .record_event(event_type, user_id, connection_id, now);
        tracing::info!(event_type, user_id, id = %event.id, "simulator event");
        self.send_webhook(&event);
        event
    }

    /// Sends the webhooks of the events recorded while the state changed by itself (a job
    /// that ended and invalidated its connection, in world mode).
    pub fn send_pending_events(&self) {
        let pending = std::mem::take(&mut self.lock().pending_events);
        for event in pending {
            self.send_webhook(&event);
        }
    }

    /// Every `lost_every`-th webhook delivery from now on is lost and every
    /// `duplicate_every`-th is sent twice (0: never), counted over all deliveries; on top of
    /// the faults queued with [`Simulator::inject_webhook_fault`].
    pub fn set_webhook_chaos(&self, lost_every: u32, duplicate_every: u32) {
        self.webhooks().chaos = Some((lost_every, duplicate_every));
    }

    fn send_webhook(&self, event: &SimEvent) {
        let base = self
            .inner
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1".to_owned());
        let mut hooks = self.webhooks();
        let Some(target) = hooks.target.clone() else {
            return;
        };
        hooks.deliveries += 1;
        let n = hooks.deliveries;
        let queued = match hooks.faults.front_mut() {
            Some((f, left)) => {
                let f = *f;
                *left -= 1;
                if *left == 0 {
                    hooks.faults.pop_front();
                }
                Some(f)
            }
            None => None,
        };
        let every = |k: u32| k > 0 && n.is_multiple_of(u64::from(k));
        let chaos = hooks.chaos.and_then(|(lost, duplicate)| {
            if every(lost) {
                Some(WebhookFault::Lost)
            } else if every(duplicate) {
                Some(WebhookFault::Duplicate)
            } else {
                None
            }
        });
        let fault = queued.or(chaos);
        let sent = hooks.sent.clone();
        let e = event.clone();
        let clock = self.inner.clock.clone();
        hooks.in_flight.push(tokio::spawn(async move {
            let seen = events::deliver(target, e, base, fault, clock).await;
            sent.lock().unwrap_or_else(|e| e.into_inner()).extend(seen);
        }));
    }

    /// The connection becomes `invalid` (the user changed their password) and Basiq's
    /// `connection.invalidated` event is sent. False when the connection is unknown.
    pub fn invalidate_connection(&self, connection_id: &str) -> Option<SimEvent> {
        let now = self.now();
        let user = {
            let mut st = self.lock();
            st.settle(now);
            let user = st
                .users
                .iter()
                .find(|u| u.connections.iter().any(|c| c.s.id == connection_id))
                .map(|u| u.id.clone())?;
            if let Some(c) = st.connection_mut(connection_id) {
                c.s.status = "invalid".into();
                c.s.outcome = Outcome::fail(
                    "verify-credentials",
                    "invalid-credentials",
                    "Cannot login to target institution using supplied credentials.",
                    "Cannot login to target institution, check credentials and try again.",
                );
            }
            user
        };
        Some(self.emit_event("connection.invalidated", &user, Some(connection_id)))
    }

    /// Removes a connection and sends `connection.deleted`. `None` when unknown.
    pub fn delete_connection(&self, user_id: &str, connection_id: &str) -> Option<SimEvent> {
        {
            let mut st = self.lock();
            let user = st.user_mut(user_id)?;
            let before = user.connections.len();
            user.connections.retain(|c| c.s.id != connection_id);
            if user.connections.len() == before {
                return None;
            }
        }
        Some(self.emit_event("connection.deleted", user_id, Some(connection_id)))
    }

    fn webhooks(&self) -> MutexGuard<'_, Webhooks> {
        self.inner
            .webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RunningSim {
    /// `http://127.0.0.1:PORT`: what the daemon uses as Basiq's base URL.
    pub fn base_url(&self) -> String {
        base_url_of(self.addr)
    }

    /// Stops accepting, lets requests in flight finish (5 s at most), then returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn base_url_of(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}
