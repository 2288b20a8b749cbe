//! The operator's console: server-rendered pages on the local API's listener, at `/`.
//!
//! - [`auth`]: sign-in (a one-time link from `basiq-health console`, or the API token pasted
//!   in), the session cookie, the CSRF token every state-changing request carries;
//! - [`pages`]: who must act, the banks and one bank's timeline, one connection, the
//!   refreshes, the notifications and events;
//! - [`svg`]: the bars and the timeline, drawn on the server.
//!
//! Every page is HTML from a template checked at compile time (askama, escaping by
//! default: whatever a bank, Basiq or a data holder wrote shows as text), with no script,
//! one embedded stylesheet and nothing asked of any other host; every answer carries a
//! strict `Content-Security-Policy`. It reads the store and the context; it decides nothing.

pub mod auth;
pub mod pages;
pub mod svg;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::ApiState;

/// Nothing but this origin's stylesheet and forms; no script, no frame, no other host.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const STYLESHEET: &str = include_str!("console.css");

/// The console's routes, on the local API's state.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(pages::home))
        .route("/banks", get(pages::banks))
        .route("/banks/{institution}/{method}", get(pages::bank))
        .route("/connections/{id}", get(pages::connection))
        .route("/refreshes", get(pages::refreshes))
        .route("/notifications", get(pages::notifications))
        .route("/notifications/{id}/retry", post(pages::retry))
        .route("/login", get(auth::login_page).post(auth::login_token))
        .route("/logout", post(auth::logout))
        .route("/assets/console.css", get(stylesheet))
        .layer(axum::middleware::map_response(secure_headers))
}

/// Every console answer: the policy, no sniffing, no referrer, nothing cached.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// A page that could not be made: its status and a page saying why.
pub struct PageError(pub StatusCode, pub String);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{code} · basiq-health</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/assets/console.css\">\
             </head><body><main><h1>{code}</h1><p>{text}</p><p><a href=\"/\">Back to who must act</a></p></main></body></html>",
            code = self.0,
            text = escape(&self.1)
        );
        (self.0, Html(body)).into_response()
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "console: database error");
        Self(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database could not be read; try again".into(),
        )
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        tracing::error!(error = %e, "console: a page could not be rendered");
        Self(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the page could not be rendered".into(),
        )
    }
}

/// Text made safe for HTML (for the few strings not rendered through a template).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaped_text_cannot_open_a_tag_or_an_attribute() {
        assert_eq!(
            super::escape("<img src=x onerror=\"alert(1)\">&'\u{1b}"),
            "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39; "
        );
    }
}
