//! Signing in to the console. A browser does not send the `/v1` bearer token, so:
//! `basiq-health console` prints a one-time link (`/login?code=...`: the code is kept as its
//! SHA-256, works once, for [`CODE_LIFETIME`]), or the login page takes the API token
//! pasted in. Either sets a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` when
//! the request came through https, expiring after [`SESSION_LIFETIME`]; kept as its
//! SHA-256). Every state-changing request carries a CSRF token derived from the cookie.

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use secrecy::ExposeSecret;

use super::PageError;
use crate::api::ApiState;
use crate::store::Store;
use crate::store::console::CodeUse;

pub const SESSION_COOKIE: &str = "bh_session";
/// The login form's own cookie: what its CSRF token is derived from before any session.
const LOGIN_COOKIE: &str = "bh_login";
pub const CODE_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);
pub const SESSION_LIFETIME: chrono::Duration = chrono::Duration::hours(12);

/// 32 random bytes as hex: a code, a cookie.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CSRF token of a session (or of the login form's cookie).
pub fn csrf_for(cookie: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(format!("basiq-health csrf:{cookie}").as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equal, in a time that does not say how much matched.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A cookie the request carries.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The request came through a TLS proxy (its cookies are then `Secure`).
fn via_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A signed-in request's session cookie; otherwise the redirect to `/login`.
pub async fn session(state: &ApiState, headers: &HeaderMap) -> Result<String, Response> {
    let now = state.context.clock().now();
    if let Some(c) = cookie(headers, SESSION_COOKIE)
        && c.len() == 64
    {
        match state.context.store().console_session(c, now).await {
            Ok(true) => return Ok(c.to_owned()),
            Ok(false) => {}
            Err(e) => return Err(PageError::from(e).into_response()),
        }
    }
    Err(Redirect::to("/login").into_response())
}

/// A state-changing request's CSRF token, checked against its session: 403 when forged.
pub fn check_csrf(session: &str, given: &str) -> Result<(), PageError> {
    if same(&csrf_for(session), given) {
        Ok(())
    } else {
        Err(PageError(
            StatusCode::FORBIDDEN,
            "this form's CSRF token is missing or wrong: reload the page and try again".into(),
        ))
    }
}

/// A new one-time sign-in code (what `basiq-health console` prints in a link).
pub async fn create_code(
    store: &Store,
    now: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<String> {
    let code = new_secret();
    store
        .add_console_code(&code, now, now + CODE_LIFETIME)
        .await?;
    Ok(code)
}

/// The link a sign-in code makes, at the console's address (an unspecified address is
/// reached on loopback).
pub fn sign_in_link(addr: std::net::SocketAddr, code: &str) -> String {
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    format!("http://{host}:{}/login?code={code}", addr.port())
}

#[derive(askama::Template)]
#[template(path = "login.html", config = "src/console/askama.toml")]
struct LoginPage {
    csrf: String,
    problem: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
pub struct LoginQuery {
    code: Option<String>,
}

/// The login page; with `?code=`, the one-time link taken.
pub async fn login_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let Query(query) = query.map_err(|_| {
        PageError(
            StatusCode::BAD_REQUEST,
            "the sign-in link is malformed: it is /login?code=... as `basiq-health console` prints it".into(),
        )
    })?;
    let Some(code) = query.code else {
        return login_form(&headers, None, StatusCode::OK);
    };
    let now = state.context.clock().now();
    let taken = if code.len() == 64 && code.bytes().all(|b| b.is_ascii_hexdigit()) {
        state.context.store().take_console_code(&code, now).await?
    } else {
        CodeUse::Unknown
    };
    let problem = match taken {
        CodeUse::Taken => return signed_in(&state, &headers).await,
        CodeUse::Used => "this sign-in link was used already: each works once",
        CodeUse::Expired => "this sign-in link has expired (they last 10 minutes)",
        CodeUse::Unknown => "this sign-in link is not known here",
    };
    tracing::warn!(
        event = "console_sign_in_refused",
        why = problem,
        "a console sign-in link was refused"
    );
    login_form(
        &headers,
        Some(format!(
            "{problem}: run `basiq-health console` for a new one, or paste the API token."
        )),
        StatusCode::BAD_REQUEST,
    )
}

fn login_form(
    headers: &HeaderMap,
    problem: Option<String>,
    status: StatusCode,
) -> Result<Response, PageError> {
    let pre = new_secret();
    let page = LoginPage {
        csrf: csrf_for(&pre),
        problem,
    };
    let mut response = (status, Html(askama::Template::render(&page)?)).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &pre, 600, via_https(headers)),
    );
    Ok(response)
}

/// A new session: its cookie set, on to who must act.
async fn signed_in(state: &ApiState, headers: &HeaderMap) -> Result<Response, PageError> {
    let now = state.context.clock().now();
    let cookie_value = new_secret();
    state
        .context
        .store()
        .add_console_session(&cookie_value, now, now + SESSION_LIFETIME)
        .await?;
    tracing::info!(event = "console_signed_in", "a console session began");
    let mut response = Redirect::to("/").into_response();
    let secure = via_https(headers);
    let response_headers = response.headers_mut();
    response_headers.append(
        header::SET_COOKIE,
        set_cookie(
            SESSION_COOKIE,
            &cookie_value,
            SESSION_LIFETIME.num_seconds(),
            secure,
        ),
    );
    response_headers.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0, secure));
    Ok(response)
}

#[derive(Debug, serde::Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

/// The login form: the API token pasted in.
pub async fn login_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(|_| {
        PageError(
            StatusCode::BAD_REQUEST,
            "the sign-in form is malformed".into(),
        )
    })?;
    let pre = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if pre.is_empty() {
        return Err(PageError(
            StatusCode::FORBIDDEN,
            "the sign-in form has expired: reload it and try again".into(),
        ));
    }
    check_csrf(pre, &form.csrf)?;
    if !same(form.token.trim(), state.token.expose_secret()) {
        tracing::warn!(
            event = "console_sign_in_refused",
            why = "wrong token",
            "a console sign-in with a wrong token was refused"
        );
        return login_form(
            &headers,
            Some("that is not the API token (api.token_file)".into()),
            StatusCode::UNAUTHORIZED,
        );
    }
    signed_in(&state, &headers).await
}

#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// Signing out: the session ends here and in the browser.
pub async fn logout(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let session = match session(&state, &headers).await {
        Ok(s) => s,
        Err(redirect) => return Ok(redirect),
    };
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    check_csrf(&session, &csrf)?;
    state.context.store().end_console_session(&session).await?;
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, via_https(&headers)),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_is_the_session_s_own() {
        let a = new_secret();
        let b = new_secret();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(check_csrf(&a, &csrf_for(&a)).is_ok());
        assert!(check_csrf(&a, &csrf_for(&b)).is_err());
        assert!(check_csrf(&a, "").is_err());
    }

    #[test]
    fn cookies_are_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; bh_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "v", 60, true);
        let text = set.to_str().unwrap();
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Max-Age=60",
            "Path=/",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }
}
