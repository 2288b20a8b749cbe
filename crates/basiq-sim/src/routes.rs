//! The HTTP face of the simulator: Basiq's routes, the bookkeeping middleware that counts
//! requests and injects faults, and the unauthenticated `/_sim/` control routes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER, TRANSFER_ENCODING,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::state::{JOB_RETENTION, OPEN_BANKING_DAILY_CAP, is_open_banking, job_stub, uuid};
use super::{Fault, Inner, JobOrigin, Route, Simulator};

pub(super) fn router(sim: Simulator) -> Router {
    let counted = |route: Route, handler: MethodRouter<Simulator>| {
        handler.layer(middleware::from_fn_with_state((sim.clone(), route), track))
    };
    let api = Router::new()
        .route("/token", counted(Route::Token, post(token)))
        .route("/users/{user_id}", counted(Route::User, get(user)))
        .route(
            "/users/{user_id}/connections",
            counted(Route::Connections, get(connections)),
        )
        .route(
            "/users/{user_id}/connections/refresh",
            counted(Route::BulkRefresh, post(bulk_refresh)),
        )
        .route(
            "/users/{user_id}/connections/{connection_id}",
            counted(Route::Connection, get(connection)),
        )
        .route(
            "/users/{user_id}/connections/{connection_id}/refresh",
            counted(Route::Refresh, post(refresh)),
        )
        .route(
            "/users/{user_id}/connections/{connection_id}/purge",
            counted(Route::Purge, post(purge)),
        )
        .route("/users/{user_id}/jobs", counted(Route::Jobs, get(jobs)))
        .route("/jobs/{job_id}", counted(Route::Job, get(job)))
        .route("/connectors", counted(Route::Connectors, get(connectors)))
        .route(
            "/connectors/{connector_id}/{method}",
            counted(Route::Connectors, get(connector)),
        )
        .route("/events", counted(Route::Events, get(events)))
        .route("/events/{event_id}", counted(Route::Events, get(event)));
    let control = Router::new()
        .route("/_sim/counters", get(ctl_counters))
        .route("/_sim/reset-counters", post(ctl_reset_counters))
        .route("/_sim/faults", post(ctl_fault))
        .route("/_sim/delay", post(ctl_delay))
        .route("/_sim/connectors", get(ctl_connectors))
        .route(
            "/_sim/connectors/{institution_id}/{method}",
            post(ctl_connector),
        )
        .route("/_sim/expire-tokens", post(ctl_expire_tokens))
        .route("/_sim/items", delete(ctl_clear_item_faults))
        .route("/_sim/items/{item_id}", post(ctl_mangle_item))
        .route("/_sim/connectors-logo", post(ctl_connectors_logo))
        .route("/_sim/revoke-key", post(ctl_revoke_key))
        .route("/_sim/restore-key", post(ctl_restore_key))
        .route("/_sim/user-faults", post(ctl_user_fault))
        .route("/_sim/users", get(ctl_users))
        .route("/_sim/webhooks", post(ctl_webhooks).get(ctl_webhooks_sent))
        .route("/_sim/webhook-faults", post(ctl_webhook_fault))
        .route("/_sim/events", post(ctl_event))
        .route(
            "/_sim/connections/{connection_id}/invalidate",
            post(ctl_invalidate),
        )
        .route(
            "/_sim/users/{user_id}",
            get(ctl_user).put(ctl_add_user).delete(ctl_remove_user),
        );
    api.merge(control)
        .merge(super::cdr::router())
        .fallback(no_route)
        .with_state(sim)
}

/// Counts the request, keeps the in-flight gauge, adds the configured delay and applies the
/// next injected fault, all before the handler runs.
async fn track(
    State((sim, route)): State<(Simulator, Route)>,
    req: Request,
    next: Next,
) -> Response {
    let _in_flight = InFlight::enter(&sim.inner);
    let (delay, fault) = sim.on_request(route, req.uri().path());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = answer(fault, req, next).await;
    // A job that ended while this request read it may have sent an event.
    if sim.inner.world {
        sim.send_pending_events();
    }
    response
}

async fn answer(fault: Option<Fault>, req: Request, next: Next) -> Response {
    match fault {
        None => next.run(req).await,
        Some(Fault::Delay { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(req).await
        }
        Some(Fault::LateAccept { ms }) => {
            // Spawned, so the request is handled even after the caller hung up.
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                next.run(req).await
            });
            late.await
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Some(Fault::Status {
            status,
            retry_after,
        }) => fault_status(status, retry_after),
        Some(Fault::Error { status, code }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            ApiError::new(status, code, "Simulated error")
                .detail("Simulated error with a chosen code")
                .into_response()
        }
        Some(Fault::Malformed) => malformed(),
        Some(Fault::Drop) => dropped(),
        Some(Fault::GatewayPage { status }) => super::shapes::gateway_page(status),
        Some(Fault::EmptyBody { status }) => super::shapes::empty_body(status),
        Some(Fault::UnauthorizedAccess { status }) => {
            ApiError::unauthorized_access(status).into_response()
        }
    }
}

/// One request in flight; leaving (even by cancellation) lowers the gauge.
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn enter(inner: &'a Inner) -> Self {
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak.fetch_max(now, Ordering::SeqCst);
        Self(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Simulator {
    /// Bookkeeping for one request: counters, the delay to add and the fault to apply.
    fn on_request(&self, route: Route, path: &str) -> (Duration, Option<Fault>) {
        let mut st = self.lock();
        let c = &mut st.counters;
        *c.requests.entry(route).or_default() += 1;
        match route {
            Route::Token => c.token_calls += 1,
            Route::BulkRefresh => c.bulk_refresh_calls += 1,
            Route::Purge => c.purge_calls += 1,
            Route::Refresh => {
                // /users/{user_id}/connections/{connection_id}/refresh
                if let Some(connection_id) = path.rsplit('/').nth(1) {
                    c.refresh_calls
                        .entry(connection_id.to_owned())
                        .or_default()
                        .push(self.now());
                }
            }
            Route::Connections | Route::Jobs | Route::Connection if st.world => {
                // A list tells of every connection of the user; one connection of itself.
                let mut parts = path.trim_start_matches("/users/").split('/');
                let user = parts.next().unwrap_or_default();
                let key = match (route, parts.nth(1)) {
                    (Route::Connection, Some(connection)) => connection.to_owned(),
                    _ => user.to_owned(),
                };
                let now = self.now();
                st.reads.entry(key).or_default().push(now);
            }
            _ => {}
        }
        let delay = st.global_delay + st.route_delays.get(&route).copied().unwrap_or_default();
        let queued = st.faults.get_mut(&route).and_then(|queue| {
            let (fault, left) = queue.front_mut()?;
            let fault = fault.clone();
            *left -= 1;
            if *left == 0 {
                queue.pop_front();
            }
            Some(fault)
        });
        let chaos = st
            .chaos
            .get_mut(&route)
            .and_then(super::state::Chaos::on_request);
        let fault = queued.or(chaos);
        let fault = fault.or_else(|| st.access.next_user_fault(path));
        if let Some(fault) = &fault {
            tracing::debug!(%route, ?fault, "simulator applying an injected fault");
        }
        (delay, fault)
    }

    /// Checks `Authorization: Bearer <token>` the way Basiq does.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::invalid_token)?;
        let now = self.now();
        match self.lock().tokens.get(token) {
            None => Err(ApiError::invalid_token()),
            Some(expires) if now >= *expires => Err(ApiError::token_expired()),
            Some(_) => Ok(()),
        }
    }

    /// The absolute base of links: the address the client used, or the bound one.
    pub(super) fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) {
            return format!("http://{host}");
        }
        self.inner
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1".to_owned())
    }
}

/// A Basiq error, answered in the list envelope with a fresh `correlationId`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: std::borrow::Cow<'static, str>,
    title: &'static str,
    detail: Option<String>,
    source: ErrorSource,
}

#[derive(Debug)]
enum ErrorSource {
    Absent,
    Null,
    Value(Value),
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: impl Into<std::borrow::Cow<'static, str>>,
        title: &'static str,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            title,
            detail: None,
            source: ErrorSource::Absent,
        }
    }

    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    fn source(mut self, source: Value) -> Self {
        self.source = ErrorSource::Value(source);
        self
    }

    fn null_source(mut self) -> Self {
        self.source = ErrorSource::Null;
        self
    }

    fn invalid_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid-authorization-token",
            "Invalid authorization token.",
        )
    }

    fn token_expired() -> Self {
        Self::new(StatusCode::FORBIDDEN, "access-denied", "Access denied.")
            .detail("Token has expired")
            .null_source()
    }

    /// The token is fine but does not cover this user or resource.
    fn unauthorized_access(status: u16) -> Self {
        let status = if status == 403 {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        Self::new(status, "unauthorized-access", "Unauthorized Access")
            .detail("The token does not cover this user")
    }

    /// `POST /token` with a revoked key.
    fn key_refused(status: u16) -> Self {
        match status {
            401 => Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized-access",
                "Unauthorized Access",
            )
            .detail("Invalid API key"),
            404 => Self::wrong_key(),
            _ => Self::new(StatusCode::FORBIDDEN, "access-denied", "Access denied.")
                .detail("The API key has been revoked"),
        }
    }

    /// What Basiq answers `POST /token` with a key it does not know.
    fn wrong_key() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "parameter-not-valid",
            "We have encountered an error",
        )
        .detail("Unable to authenticate. Please, check your API key")
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "resource-not-found",
            "Requested resource is not found",
        )
        .detail(format!("Requested {what} does not exist."))
    }

    fn not_valid(parameter: &str, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "parameter-not-valid",
            "Required parameter not valid",
        )
        .detail(detail)
        .source(json!({"parameter": parameter}))
    }

    fn cap_reached() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-requests",
            "Too many requests",
        )
        .detail("Query limit reached.")
        .null_source()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let correlation_id = uuid(&mut rand::rng());
        let mut error = json!({"type": "error", "code": self.code, "title": self.title});
        if let Some(detail) = self.detail {
            error["detail"] = json!(detail);
        }
        match self.source {
            ErrorSource::Absent => {}
            ErrorSource::Null => error["source"] = Value::Null,
            ErrorSource::Value(v) => error["source"] = v,
        }
        tracing::debug!(
            status = self.status.as_u16(),
            code = %self.code,
            %correlation_id,
            "simulator answering an error"
        );
        let body = json!({"type": "list", "correlationId": correlation_id, "data": [error]});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn fault_status(status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, title, detail) = match status.as_u16() {
        400 => (
            "parameter-not-valid",
            "Required parameter not valid",
            "Simulated bad request",
        ),
        401 => (
            "invalid-authorization-token",
            "Invalid authorization token.",
            "Simulated unauthorised request",
        ),
        403 => ("access-denied", "Access denied.", "Invalid request"),
        404 => (
            "resource-not-found",
            "Requested resource is not found",
            "Simulated missing resource",
        ),
        429 => (
            "too-many-requests",
            "Too many requests",
            "Query limit reached.",
        ),
        503 => (
            "service-unavailable",
            "Service Unavailable",
            "The service is temporarily unavailable",
        ),
        _ => (
            "internal-server-error",
            "Internal Server Error",
            "An unexpected error occurred",
        ),
    };
    let mut response = ApiError::new(status, code, title)
        .detail(detail)
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// 200 with a JSON content type and a body cut short.
fn malformed() -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/json")],
        r#"{"type":"list","data":[{"type":"job","id":"5c50a2d1-"#,
    )
        .into_response()
}

/// A response hyper refuses to encode: it closes the connection without writing a byte.
///
/// hyper cancels a response head whose `content-length` is followed by `transfer-encoding`,
/// and then shuts the connection, which is exactly a dropped connection for the client.
pub(super) fn dropped() -> Response {
    let mut response = Response::new(Body::from("{}"));
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(2u64));
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    response
}

/// Basiq keeps events 7 days.
const EVENT_RETENTION: chrono::Duration = chrono::Duration::days(7);

async fn events(State(sim): State<Simulator>, headers: HeaderMap) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let now = sim.now();
    let st = sim.lock();
    let data: Vec<Value> = st
        .events
        .iter()
        .filter(|e| now - e.created <= EVENT_RETENTION)
        .map(|e| st.shapes.item(&e.id, e.to_json(&base)))
        .collect();
    Ok(Json(json!({
        "type": "list",
        "data": data,
        "links": {"self": format!("{base}/events")},
    }))
    .into_response())
}

async fn event(
    State(sim): State<Simulator>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let st = sim.lock();
    let e = st
        .events
        .iter()
        .find(|e| e.id == event_id)
        .ok_or_else(|| ApiError::not_found("event"))?;
    Ok(Json(e.to_json(&base)).into_response())
}

#[derive(Deserialize)]
struct WebhookTargetBody {
    url: String,
    secret: String,
}

async fn ctl_webhooks(State(sim): State<Simulator>, Json(b): Json<WebhookTargetBody>) -> Response {
    sim.set_webhook_target(&b.url, &b.secret);
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_webhooks_sent(State(sim): State<Simulator>) -> Response {
    Json(json!({"sent": sim.webhooks_sent()})).into_response()
}

#[derive(Deserialize)]
struct WebhookFaultBody {
    fault: super::WebhookFault,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

async fn ctl_webhook_fault(
    State(sim): State<Simulator>,
    Json(b): Json<WebhookFaultBody>,
) -> Response {
    sim.inject_webhook_fault(b.fault, b.times);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct EventBody {
    #[serde(rename = "type")]
    event_type: String,
    user_id: String,
    #[serde(default)]
    connection_id: Option<String>,
}

async fn ctl_event(State(sim): State<Simulator>, Json(b): Json<EventBody>) -> Response {
    let e = sim.emit_event(&b.event_type, &b.user_id, b.connection_id.as_deref());
    Json(e).into_response()
}

async fn ctl_invalidate(
    State(sim): State<Simulator>,
    Path(connection_id): Path<String>,
) -> Response {
    match sim.invalidate_connection(&connection_id) {
        Some(e) => Json(e).into_response(),
        None => ApiError::not_found("connection").into_response(),
    }
}

async fn no_route() -> ApiError {
    ApiError::not_found("resource")
}

// ---- Basiq routes ----------------------------------------------------------------------

async fn token(State(sim): State<Simulator>, headers: HeaderMap, body: String) -> ApiResult {
    let version = headers.get("basiq-version").and_then(|v| v.to_str().ok());
    if version != Some("3.0") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "parameter-not-valid",
            "Required parameter not valid",
        )
        .detail("Basiq-version must be specified in HTTP request header")
        .source(json!({"parameter": "basiq-version", "pointer": "header/basiq-version"})));
    }
    if let Some(status) = sim.lock().access.revoked_key {
        return Err(ApiError::key_refused(status));
    }
    let expected = format!("Basic {}", sim.inner.api_key);
    if headers.get(AUTHORIZATION).map(HeaderValue::as_bytes) != Some(expected.as_bytes()) {
        return Err(ApiError::wrong_key());
    }
    let scope = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned());
    match scope.as_deref() {
        Some("SERVER_ACCESS") => {}
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter-not-supplied",
                "Required parameter not supplied",
            )
            .detail("scope is required")
            .source(json!({"parameter": "scope"})));
        }
        Some(_) => return Err(ApiError::not_valid("scope", "scope must be SERVER_ACCESS")),
    }
    let ttl = sim.inner.token_ttl;
    let now = sim.now();
    let token = sim.lock().new_token(ttl, now);
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
    }))
    .into_response())
}

async fn user(
    State(sim): State<Simulator>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let mut st = sim.lock();
    st.settle(sim.now());
    let user = user_of(&st, &user_id)?;
    Ok(Json(user.to_json(&base)).into_response())
}

async fn connections(
    State(sim): State<Simulator>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let mut st = sim.lock();
    st.settle(sim.now());
    let user = user_of(&st, &user_id)?;
    let data: Vec<Value> = user
        .connections
        .iter()
        .map(|c| st.shapes.item(&c.s.id, c.to_json(&base, &user_id)))
        .collect();
    Ok(Json(json!({
        "type": "list",
        "data": data,
        "links": {"self": format!("{base}/users/{user_id}/connections")},
    }))
    .into_response())
}

async fn connection(
    State(sim): State<Simulator>,
    Path((user_id, connection_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let mut st = sim.lock();
    st.settle(sim.now());
    let conn = connection_of(&st, &user_id, &connection_id)?;
    Ok(Json(st.shapes.item(&conn.s.id, conn.to_json(&base, &user_id))).into_response())
}

/// The user, or Basiq's 404.
fn user_of<'a>(
    st: &'a super::state::State,
    user_id: &str,
) -> Result<&'a super::state::User, ApiError> {
    st.user(user_id).ok_or_else(|| ApiError::not_found("user"))
}

/// The user's connection, or Basiq's 404 for the user or the connection, whichever is
/// missing.
fn connection_of<'a>(
    st: &'a super::state::State,
    user_id: &str,
    connection_id: &str,
) -> Result<&'a super::state::Conn, ApiError> {
    user_of(st, user_id)?
        .connections
        .iter()
        .find(|c| c.s.id == connection_id)
        .ok_or_else(|| ApiError::not_found("connection"))
}

/// Basiq refreshes and purges active connections only: anything else is refused, `done`
/// saying what could not be (`refreshed`, `purged`).
fn must_be_active(conn: &super::state::Conn, done: &str) -> Result<(), ApiError> {
    if conn.s.status != "active" {
        return Err(ApiError::not_valid(
            "connectionId",
            format!(
                "Connection is not active (status '{}') and cannot be {done}",
                conn.s.status
            ),
        ));
    }
    Ok(())
}

/// `connection.id.eq('CID')`, with single, double or no quotes.
fn parse_filter(filter: &str) -> Result<String, ApiError> {
    filter
        .trim()
        .strip_prefix("connection.id.eq(")
        .and_then(|rest| rest.strip_suffix(')'))
        .map(|id| id.trim().trim_matches(['\'', '"']).to_owned())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            ApiError::not_valid(
                "filter",
                format!("Unsupported filter {filter:?}: expected connection.id.eq('...')"),
            )
        })
}

async fn jobs(
    State(sim): State<Simulator>,
    Path(user_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let connection_id = query.get("filter").map(|f| parse_filter(f)).transpose()?;
    let now = sim.now();
    let mut st = sim.lock();
    st.settle(now);
    user_of(&st, &user_id)?;
    // Oldest first: Basiq documents no order, so the daemon has to sort by `created` itself.
    st.index_jobs();
    let data: Vec<Value> = st
        .user_jobs(&user_id)
        .filter(|j| now - j.created < JOB_RETENTION)
        .filter(|j| connection_id.as_ref().is_none_or(|c| *c == j.connection_id))
        .map(|j| st.shapes.item(&j.id, j.to_json(&base, now)))
        .collect();
    Ok(Json(json!({
        "type": "list",
        "size": data.len(),
        "data": data,
        "links": {"self": format!("{base}/users/{user_id}/jobs")},
    }))
    .into_response())
}

async fn job(
    State(sim): State<Simulator>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let now = sim.now();
    let mut st = sim.lock();
    st.settle(now);
    let job = st
        .jobs
        .iter()
        .find(|j| j.id == job_id)
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(st.shapes.item(&job.id, job.to_json(&base, now))).into_response())
}

/// What a refresh of one connection does; the caller holds the lock.
enum Refreshed {
    Running(String),
    Started(String),
}

fn refresh_one(
    sim: &Simulator,
    st: &mut super::state::State,
    user_id: &str,
    connection_id: &str,
    now: DateTime<Utc>,
) -> Result<Refreshed, ApiError> {
    let conn = connection_of(st, user_id, connection_id)?;
    must_be_active(conn, "refreshed")?;
    let open_banking = is_open_banking(&conn.s.method);
    if let Some(running) = st.running_job(connection_id, now) {
        return Ok(Refreshed::Running(running.id.clone()));
    }
    let day_ago = now - TimeDelta::hours(24);
    let Some(conn) = st.connection_mut(connection_id) else {
        return Err(ApiError::not_found("connection"));
    };
    conn.accepted.retain(|t| *t > day_ago);
    if open_banking && conn.accepted.len() >= OPEN_BANKING_DAILY_CAP {
        return Err(ApiError::cap_reached());
    }
    conn.accepted.push(now);
    let id = st
        .start_job(
            user_id,
            connection_id,
            JobOrigin::Refresh,
            sim.inner.step,
            now,
        )
        .ok_or_else(|| ApiError::not_found("connection"))?;
    Ok(Refreshed::Started(id))
}

async fn refresh(
    State(sim): State<Simulator>,
    Path((user_id, connection_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let now = sim.now();
    let mut st = sim.lock();
    st.settle(now);
    match refresh_one(&sim, &mut st, &user_id, &connection_id, now)? {
        Refreshed::Running(id) => Ok((StatusCode::OK, Json(job_stub(&base, &id))).into_response()),
        Refreshed::Started(id) => {
            Ok((StatusCode::ACCEPTED, Json(job_stub(&base, &id))).into_response())
        }
    }
}

async fn bulk_refresh(
    State(sim): State<Simulator>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let now = sim.now();
    let mut st = sim.lock();
    st.settle(now);
    let ids: Vec<String> = user_of(&st, &user_id)?
        .connections
        .iter()
        .filter(|c| c.s.status == "active")
        .map(|c| c.s.id.clone())
        .collect();
    let mut data = Vec::new();
    for connection_id in ids {
        // Capped connections are skipped silently, as the bulk call gives no per-item errors.
        if let Ok(Refreshed::Running(id) | Refreshed::Started(id)) =
            refresh_one(&sim, &mut st, &user_id, &connection_id, now)
        {
            data.push(job_stub(&base, &id));
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"type": "list", "data": data})),
    )
        .into_response())
}

async fn purge(
    State(sim): State<Simulator>,
    Path((user_id, connection_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let mut st = sim.lock();
    st.settle(sim.now());
    let conn = connection_of(&st, &user_id, &connection_id)?;
    must_be_active(conn, "purged")?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn connectors(State(sim): State<Simulator>, headers: HeaderMap) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let st = sim.lock();
    let data: Vec<Value> = st
        .connectors
        .iter()
        .map(|c| st.shapes.connector(c.to_json(&base)))
        .collect();
    Ok(Json(json!({
        "type": "list",
        "totalCount": data.len(),
        "data": data,
        "links": {"self": format!("{base}/connectors")},
    }))
    .into_response())
}

async fn connector(
    State(sim): State<Simulator>,
    Path((connector_id, method)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    sim.authorize(&headers)?;
    let base = sim.base_url(&headers);
    let method = if method == "openbanking" {
        "open-banking".to_owned()
    } else {
        method
    };
    let st = sim.lock();
    let found = st
        .connectors
        .iter()
        .find(|c| c.institution.id == connector_id && c.method == method)
        .ok_or_else(|| ApiError::not_found("connector"))?;
    Ok(Json(st.shapes.connector(found.to_json(&base))).into_response())
}

// ---- control routes --------------------------------------------------------------------

async fn ctl_counters(State(sim): State<Simulator>) -> Response {
    Json(sim.counters()).into_response()
}

async fn ctl_reset_counters(State(sim): State<Simulator>) -> StatusCode {
    sim.reset_counters();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct FaultRequest {
    route: Route,
    fault: Fault,
    #[serde(default = "one")]
    times: u32,
}

async fn ctl_fault(State(sim): State<Simulator>, Json(req): Json<FaultRequest>) -> StatusCode {
    sim.inject_fault(req.route, req.fault, req.times);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct DelayRequest {
    #[serde(default)]
    route: Option<Route>,
    ms: u64,
}

async fn ctl_delay(State(sim): State<Simulator>, Json(req): Json<DelayRequest>) -> StatusCode {
    sim.set_delay(req.route, Duration::from_millis(req.ms));
    StatusCode::NO_CONTENT
}

async fn ctl_connectors(State(sim): State<Simulator>) -> Response {
    Json(sim.connectors()).into_response()
}

#[derive(Deserialize)]
struct StatusRequest {
    status: String,
}

async fn ctl_connector(
    State(sim): State<Simulator>,
    Path((institution_id, method)): Path<(String, String)>,
    Json(req): Json<StatusRequest>,
) -> StatusCode {
    sim.set_connector_status(&institution_id, &method, &req.status);
    StatusCode::NO_CONTENT
}

async fn ctl_expire_tokens(State(sim): State<Simulator>) -> StatusCode {
    sim.expire_tokens();
    StatusCode::NO_CONTENT
}

/// `POST /_sim/items/{id}` with an [`super::ItemFault`]: serve that item wrong.
async fn ctl_mangle_item(
    State(sim): State<Simulator>,
    Path(item_id): Path<String>,
    Json(fault): Json<super::ItemFault>,
) -> StatusCode {
    sim.mangle_item(&item_id, fault);
    StatusCode::NO_CONTENT
}

/// `DELETE /_sim/items`: every item served as it is again.
async fn ctl_clear_item_faults(State(sim): State<Simulator>) -> StatusCode {
    sim.clear_item_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct RevokeRequest {
    #[serde(default = "forbidden")]
    status: u16,
}

fn forbidden() -> u16 {
    403
}

/// Body optional: `{"status": 401 | 403 | 404}`, 403 when absent.
async fn ctl_revoke_key(State(sim): State<Simulator>, body: String) -> Response {
    let req: RevokeRequest = if body.trim().is_empty() {
        RevokeRequest {
            status: forbidden(),
        }
    } else {
        match serde_json::from_str(&body) {
            Ok(req) => req,
            Err(e) => {
                return ApiError::not_valid("status", format!("bad revoke-key body: {e}"))
                    .into_response();
            }
        }
    };
    sim.revoke_api_key(req.status);
    StatusCode::NO_CONTENT.into_response()
}

async fn ctl_restore_key(State(sim): State<Simulator>) -> StatusCode {
    sim.restore_api_key();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct LogoRequest {
    served: bool,
}

/// `POST /_sim/connectors-logo` `{"served": false}`: `/connectors` without logos.
async fn ctl_connectors_logo(
    State(sim): State<Simulator>,
    Json(req): Json<LogoRequest>,
) -> StatusCode {
    sim.set_connectors_without_logo(!req.served);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct UserFaultRequest {
    user_id: String,
    fault: Fault,
    #[serde(default = "one")]
    times: u32,
}

async fn ctl_user_fault(
    State(sim): State<Simulator>,
    Json(req): Json<UserFaultRequest>,
) -> StatusCode {
    sim.inject_user_fault(&req.user_id, req.fault, req.times);
    StatusCode::NO_CONTENT
}

async fn ctl_users(State(sim): State<Simulator>) -> Response {
    Json(sim.user_ids()).into_response()
}

/// The user's connections as scripted, each with the case it was made for.
async fn ctl_user(State(sim): State<Simulator>, Path(user_id): Path<String>) -> Response {
    if !sim.user_ids().contains(&user_id) {
        return ApiError::not_found("user").into_response();
    }
    let data: Vec<Value> = sim
        .scripted(&user_id)
        .into_iter()
        .map(|c| {
            let case = sim.case_of(&c.id);
            let mut v = serde_json::to_value(&c).unwrap_or(Value::Null);
            v["case"] = json!(case);
            v
        })
        .collect();
    Json(json!({"id": user_id, "connections": data})).into_response()
}

async fn ctl_add_user(State(sim): State<Simulator>, Path(user_id): Path<String>) -> StatusCode {
    sim.add_user(&user_id);
    StatusCode::NO_CONTENT
}

async fn ctl_remove_user(State(sim): State<Simulator>, Path(user_id): Path<String>) -> StatusCode {
    sim.remove_user(&user_id);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_accept_any_quoting() {
        for f in [
            "connection.id.eq('abc')",
            "connection.id.eq(\"abc\")",
            "connection.id.eq(abc)",
        ] {
            assert_eq!(parse_filter(f).unwrap(), "abc");
        }
        assert!(parse_filter("institution.id.eq('AU00000')").is_err());
    }
}
