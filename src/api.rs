//! The local control API (axum): register users, login-time checks, health, status.
//!
//! Every `/v1` route needs the bearer token, on loopback too (any local account could
//! otherwise add and delete users or list every user id): `api.token_file`, or the
//! `api-token` file the daemon creates beside the database at first start (random, 0600).
//! `/healthz` and `/metrics` are open on a loopback address (probes, a local scraper); on any
//! other address `/metrics` needs the token too. Thin: every handler calls the context, the
//! store or the report.
//!
//! Each handler carries its OpenAPI description (`#[utoipa::path]`) and is mounted through
//! [`routes`], so the router and the description ([`openapi`], served at
//! `/v1/openapi.json`, committed as `docs/openapi.json`) come from one list.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::UserId;
use crate::report;
use crate::work::Context;

#[derive(Clone)]
pub struct ApiState {
    pub refresher: crate::work::refresh::Refresher,
    pub context: Context,
    pub token: SecretString,
    /// The API listens on a loopback address: `/metrics` needs no token.
    pub loopback: bool,
    /// What `/healthz` judges the daemon's work by (the watchdog judges by the same).
    pub liveness: crate::service::Liveness,
    /// The webhook receiver's answers, for `/metrics`.
    pub receiver: Arc<crate::events::receiver::ReceiverStats>,
    /// What the settings draw warnings about (the console's "your operators").
    pub warnings: Arc<Vec<String>>,
    /// A dead letter retried from the console lives this long again (`notify.max_age`).
    pub notify_max_age: std::time::Duration,
}

pub fn router(state: ApiState) -> Router {
    routed().with_state(state)
}

/// The API's router before its state is given: what [`router`] serves (listed by the test
/// that every route is described).
pub fn routed() -> Router<ApiState> {
    routes().split_for_parts().0
}

/// Every route with its description: a route is mounted only with its documentation.
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_users))
        .routes(routes!(add_user, remove_user))
        .routes(routes!(login))
        .routes(routes!(user_health))
        .routes(routes!(status))
        .routes(routes!(openapi_json))
        .routes(routes!(healthz))
        .routes(routes!(metrics))
}

/// The OpenAPI 3.1 description of the local API and of the webhook receiver (which listens
/// on its own address, `webhooks.listen`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes().into_openapi();
    doc.merge(crate::events::receiver::openapi());
    doc
}

/// [`openapi`] as `docs/openapi.json` holds it: pretty, keys in a stable order, a final
/// newline.
pub fn openapi_text() -> String {
    static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let value = serde_json::to_value(openapi()).unwrap_or_default();
        let mut text = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
        text.push('\n');
        text
    });
    TEXT.clone()
}

/// The value with every object's keys in alphabetical order, whatever serde_json's map is.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let map: std::collections::BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(map.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "basiq-health local API",
        description = "The daemon's control API. Every `/v1` route needs the bearer token \
            (`api.token_file`, or the `api-token` file beside the database). `/healthz` is \
            open; `/metrics` is open on a loopback address only. The webhook receiver \
            (`POST /v1/basiq/webhook`) listens on its own address, `webhooks.listen`, and is \
            authenticated by its Standard Webhooks signature instead. Every error answers \
            `{\"error\": \"...\"}`."
    ),
    modifiers(&BearerToken),
    tags(
        (name = "users", description = "The registered users and their connections' health"),
        (name = "status", description = "The whole installation's report"),
        (name = "service", description = "Probes, metrics and this description"),
        (name = "webhooks", description = "Basiq's events, on `webhooks.listen`"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the `/v1` routes name.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "The token in `api.token_file` (default: the `api-token` file \
                             beside the database)",
                        ))
                        .build(),
                ),
            );
    }
}

pub use crate::serve::ErrorBody;

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "local API: database error");
        Self(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
    }
}

/// A user id from a request path, checked before anything reaches the store or Basiq:
/// one outside the rule answers 400 with an error naming it.
fn user_id(raw: String) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

fn authorise(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = &state.token;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // No early exit on the first differing byte: the time does not say how much matched.
    let expected = token.expose_secret().as_bytes();
    let ok = given.is_some_and(|g| {
        let g = g.as_bytes();
        g.len() == expected.len()
            && g.iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required: send `Authorization: Bearer <token>` with the token \
             from api.token_file (default: the api-token file beside the database)"
                .into(),
        ))
    }
}

/// `PUT /v1/users/{id}`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Added {
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// Newly registered (201); `false`: it was already (200).
    pub added: bool,
}

/// `DELETE /v1/users/{id}`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub removed: bool,
}

/// One user's connections, as `GET /v1/users/{id}/health` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserHealth {
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub connections: Vec<report::ConnectionView>,
}

/// `POST /v1/users/{id}/login`'s answer: the user's connections after the check.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginAnswer {
    #[schema(value_type = String)]
    pub user_id: UserId,
    pub connections: Vec<report::ConnectionView>,
    /// The user was swept now (not when swept within `sweep.login_min_interval`).
    pub swept: bool,
    /// One decision per connection (none when `refresh.mode = "off"`).
    pub refreshes: Vec<crate::work::refresh::Decision>,
}

/// `/healthz`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Healthz {
    pub status: HealthzStatus,
    /// The last scheduler tick (Unix seconds); none since start.
    pub last_tick: Option<i64>,
    /// The last progress of the work (Unix seconds).
    pub last_progress: i64,
    /// A sweep pass is running.
    pub in_pass: bool,
    /// Why the daemon is unavailable; empty when it is not.
    pub problems: Vec<String>,
}

#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthzStatus {
    Ok,
    Unavailable,
}

#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "users",
    summary = "Every registered user",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The registered users", body = Vec<report::UserView>),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 503, description = "The database cannot be read now", body = ErrorBody),
    )
)]
async fn list_users(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorise(&state, &headers)?;
    let users = state.context.store().list_users().await?;
    Ok(Json(report::users_json(&users)).into_response())
}

#[utoipa::path(
    put,
    path = "/v1/users/{id}",
    tag = "users",
    summary = "Register a user (idempotent)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A Basiq user id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses(
        (status = 201, description = "Registered now", body = Added),
        (status = 200, description = "Already registered", body = Added),
        (status = 400, description = "The id breaks the id rule", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 503, description = "The database cannot be written now", body = ErrorBody),
    )
)]
async fn add_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorise(&state, &headers)?;
    let id = user_id(id)?;
    let added = state.context.add_users(std::slice::from_ref(&id)).await? > 0;
    let code = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(Added { user_id: id, added })).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    tag = "users",
    summary = "Stop watching a user (history kept)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A Basiq user id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses(
        (status = 200, description = "Removed", body = Removed),
        (status = 400, description = "The id breaks the id rule", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 404, description = "The user is not registered", body = ErrorBody),
        (status = 503, description = "The database cannot be written now", body = ErrorBody),
    )
)]
async fn remove_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorise(&state, &headers)?;
    let id = user_id(id)?;
    let removed = state
        .context
        .store()
        .remove_users(std::slice::from_ref(&id), state.context.clock().now())
        .await?;
    if removed == 0 {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("user {id} is not registered"),
        ));
    }
    Ok(Json(Removed {
        user_id: id,
        removed: true,
    })
    .into_response())
}

async fn connections(
    state: &ApiState,
    id: &UserId,
) -> Result<Vec<report::ConnectionView>, ApiError> {
    let report = report::status(
        state.context.store(),
        Some(id),
        None,
        state.context.clock().now(),
    )
    .await?;
    Ok(report.connections)
}

#[utoipa::path(
    post,
    path = "/v1/users/{id}/login",
    tag = "users",
    summary = "The user logged in to the partner's app: check now, refresh if allowed",
    description = "Registers the user when needed, sweeps it unless swept within \
        `sweep.login_min_interval`, and asks for a login refresh of each connection the \
        refresh policy allows.",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A Basiq user id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses(
        (status = 200, description = "Checked", body = LoginAnswer),
        (status = 400, description = "The id breaks the id rule", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 502, description = "Basiq failed or could not be reached", body = ErrorBody),
        (status = 503, description = "The database cannot be used now", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorise(&state, &headers)?;
    let id = user_id(id)?;
    let (swept, refreshes) = match state.refresher.login(&id).await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(user_id = %id, error = %e, "login check failed");
            return Err(ApiError(StatusCode::BAD_GATEWAY, e.to_string()));
        }
    };
    let connections = connections(&state, &id).await?;
    Ok(Json(LoginAnswer {
        user_id: id,
        connections,
        swept,
        refreshes,
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/health",
    tag = "users",
    summary = "One user's connections and their health",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A Basiq user id", pattern = "^[A-Za-z0-9-]{1,64}$")),
    responses(
        (status = 200, description = "The user's connections", body = UserHealth),
        (status = 400, description = "The id breaks the id rule", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 404, description = "The user is not registered", body = ErrorBody),
        (status = 503, description = "The database cannot be read now", body = ErrorBody),
    )
)]
async fn user_health(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorise(&state, &headers)?;
    let id = user_id(id)?;
    if state.context.store().get_user(&id).await?.is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("user {id} is not registered"),
        ));
    }
    let connections = connections(&state, &id).await?;
    Ok(Json(UserHealth {
        user_id: id,
        connections,
    })
    .into_response())
}

/// `GET /v1/status?limit=N&all=true`: at most `limit` connections listed (default
/// [`report::DEFAULT_LIMIT`]), every one with `all=true`.
#[derive(Debug, Default, serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// At most this many connections listed, those needing the user's action first
    /// (default 1000).
    limit: Option<usize>,
    /// List every connection (`limit` is then ignored).
    #[serde(default)]
    all: bool,
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    summary = "The report: counts, connections, outages, maintenance",
    security(("bearer" = [])),
    params(StatusQuery),
    responses(
        (status = 200, description = "The report", body = report::StatusReport),
        (status = 400, description = "The query is not `limit=N` and/or `all=true`", body = ErrorBody),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
        (status = 503, description = "The database cannot be read now", body = ErrorBody),
    )
)]
async fn status(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorise(&state, &headers)?;
    let axum::extract::Query(query) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "the query must be limit=N and/or all=true: {}",
                e.body_text()
            ),
        )
    })?;
    let limit = (!query.all).then_some(query.limit.unwrap_or(report::DEFAULT_LIMIT));
    let report = report::status(
        state.context.store(),
        None,
        limit,
        state.context.clock().now(),
    )
    .await?;
    Ok(Json(report).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "service",
    summary = "This description (OpenAPI 3.1), as `docs/openapi.json` holds it",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"),
        (status = 401, description = "No or a wrong bearer token", body = ErrorBody),
    )
)]
async fn openapi_json(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorise(&state, &headers)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], openapi_text()).into_response())
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    summary = "Prometheus metrics (OpenMetrics text)",
    description = "Open on a loopback address; on any other address the bearer token is \
        required.",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The metrics", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 401, description = "Not on loopback, and no or a wrong bearer token", body = ErrorBody),
        (status = 503, description = "The database cannot be read now", body = ErrorBody),
    )
)]
async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !state.loopback {
        authorise(&state, &headers)?;
    }
    let text = crate::metrics::render_serving(
        &state.context,
        &state.refresher,
        &state.receiver,
        Some(&state.liveness),
    )
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// 200 while the daemon makes progress and its writes succeed; 503 when nothing moves (no
/// tick and no progress for three tick intervals while idle, nothing finished for the stall
/// interval in a pass) or its last write failed. Reads no database and takes no lock: it
/// answers at once whatever another process holds, from the writer's own recent outcomes.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    summary = "Liveness: the daemon makes progress and its writes succeed",
    description = "503 when nothing moves (no tick and no progress for three tick \
        intervals while idle, nothing finished for the stall interval in a pass) or the \
        last database write failed. Needs no token.",
    security(()),
    responses(
        (status = 200, description = "Alive", body = Healthz),
        (status = 503, description = "Stalled or failing writes: `problems` says why", body = Healthz),
    )
)]
async fn healthz(State(state): State<ApiState>) -> Response {
    use std::sync::atomic::Ordering;
    let progress = state.context.progress();
    let now = state.context.clock().now().timestamp();
    let mut problems = Vec::new();
    if let Some(f) = state.context.store().write_health().failing() {
        problems.push(format!(
            "database writes failing since {} ({} failure(s)): {}",
            f.since.to_rfc3339(),
            f.failures,
            f.error
        ));
    }
    problems.extend(state.liveness.problem(progress, now));
    let last_tick = state.liveness.ticks.last_tick.load(Ordering::Relaxed);
    let ok = problems.is_empty();
    let body = Healthz {
        status: if ok {
            HealthzStatus::Ok
        } else {
            HealthzStatus::Unavailable
        },
        last_tick: (last_tick > 0).then_some(last_tick),
        last_progress: progress.last_progress.load(Ordering::Relaxed),
        in_pass: progress.in_pass.load(Ordering::Relaxed),
        problems,
    };
    if ok {
        Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The bearer token in `path`, created first when missing: 32 random bytes as hex, written
/// to a private temporary file (0600 whatever the umask) and hard-linked into place, so two
/// processes starting at once agree on one token and nobody ever reads a half-written file.
/// Returns the token and whether this call created it.
pub fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<(SecretString, bool)> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match crate::settings::read_token_file(path) {
        Ok(token) => return Ok((token, false)),
        Err(_) if !path.exists() => {}
        // Missing when read, there now: another start linked it in between (the link is
        // whole), so the second read sees it.
        Err(_) => match crate::settings::read_token_file(path) {
            Ok(token) => return Ok((token, false)),
            Err(problem) => anyhow::bail!("the local API token file: {problem}"),
        },
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| crate::settings::API_TOKEN_FILE_NAME.to_owned());
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
                let _ = dir.sync_all();
            }
            Ok((SecretString::from(token), true))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let token = crate::settings::read_token_file(path)
                .map_err(|p| anyhow::anyhow!("the local API token file: {p}"))?;
            Ok((token, false))
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "while creating the local API token file {} (set api.token_file to use another)",
                path.display()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_starts_agree_on_one_private_token_and_a_restart_reuses_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let tokens: Vec<(String, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let (t, created) = load_or_create_token(&path).unwrap();
                        (t.expose_secret().to_owned(), created)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(tokens.iter().all(|(t, _)| t == &tokens[0].0), "{tokens:?}");
        assert!(tokens.iter().filter(|(_, c)| *c).count() <= 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, created) = load_or_create_token(&path).unwrap();
        assert!(!created);
        assert_eq!(again.expose_secret(), tokens[0].0);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // An empty file is an error naming it, not silently replaced.
        std::fs::write(&path, "").unwrap();
        let err = load_or_create_token(&path).unwrap_err().to_string();
        assert!(err.contains("api-token") && err.contains("empty"), "{err}");
    }
}
