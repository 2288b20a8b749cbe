//! `basiq::Error`: what callers of the client branch on.

use std::time::Duration;

/// The code of Basiq's own 404: only it says a resource is gone.
const RESOURCE_NOT_FOUND: &str = "resource-not-found";

/// What Basiq said about a failed request: its status, error code and correlation id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
    /// Basiq support asks for this id: it goes on every log line about the error.
    pub correlation_id: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(title) = &self.title {
            write!(f, ": {title}")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(id) = &self.correlation_id {
            write!(f, " [correlationId {id}]")?;
        }
        Ok(())
    }
}

/// A failed call to Basiq. `Clone`, so the token cache can hand its last `/token` failure to
/// every caller during the backoff window.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// 429: slow down; `retry_after` when Basiq said how long.
    #[error("rate limited by Basiq ({api})")]
    RateLimited {
        retry_after: Option<Duration>,
        api: ApiError,
    },
    /// `/token` refused the API key (401, 403, or 404 "Unable to authenticate"): the key is
    /// wrong or revoked. Nothing works until the key is fixed, so a sweep pass stops on it.
    #[error("Basiq refused the API key ({api}); check basiq.api_key")]
    Auth { api: ApiError },
    /// 401 or 403 on a resource: the token is stale (see [`Error::is_stale_token`]), or it
    /// does not cover this user or resource (`unauthorized-access`, `forbidden-access`).
    #[error("not authorised by Basiq ({api})")]
    Unauthorised { api: ApiError },
    /// 404 with Basiq's own `resource-not-found`: the resource is gone.
    #[error("not found at Basiq ({api})")]
    NotFound { api: ApiError },
    /// Any other 404 (a gateway's HTML page, an empty body, another code): nothing says the
    /// resource is gone, so it is read as a passing server fault and retried.
    #[error("HTTP 404 without Basiq's resource-not-found; read as a passing fault ({api})")]
    UnconfirmedNotFound { api: ApiError },
    /// Another 4xx: the request itself was refused (e.g. refreshing a connection that is not active).
    #[error("request refused by Basiq ({api})")]
    Rejected { api: ApiError },
    /// 5xx.
    #[error("Basiq server error ({api})")]
    Server { api: ApiError },
    /// No answer: connect failure, timeout, reset connection.
    #[error("could not reach Basiq: {message}")]
    Transport { message: String, timeout: bool },
    /// Not sent: the request could not be built (an id the URL cannot carry as one path
    /// segment). Not transient: sending it again builds the same refusal.
    #[error("request not sent to Basiq: {message}")]
    InvalidRequest { message: String },
    /// An answer we could not read.
    #[error("could not read Basiq's answer to {endpoint}: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
}

impl Error {
    /// Worth retrying later: 429, 500, 502, 503, 504, a 404 Basiq did not explain, timeouts,
    /// resets.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. }
            | Self::Transport { .. }
            | Self::UnconfirmedNotFound { .. } => true,
            Self::Server { api } => matches!(api.status, 500 | 502 | 503 | 504),
            _ => false,
        }
    }

    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::RateLimited { api, .. }
            | Self::Auth { api }
            | Self::Unauthorised { api }
            | Self::NotFound { api }
            | Self::UnconfirmedNotFound { api }
            | Self::Rejected { api }
            | Self::Server { api } => Some(api),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        self.api().map(|a| a.status)
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.api().and_then(|a| a.correlation_id.as_deref())
    }

    pub fn code(&self) -> Option<&str> {
        self.api().and_then(|a| a.code.as_deref())
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The API key was refused: no request can succeed until it is fixed.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. })
    }

    /// Basiq refused the token itself, so a new one may help: 403 `access-denied` "Token has
    /// expired" (an expired token, not 401!) or 401 `invalid-authorization-token` (a malformed
    /// or unknown one). A 401/403 `unauthorized-access` is about one user or resource: the
    /// token is fine, and replacing it would only cost a `/token` call.
    pub(crate) fn is_stale_token(&self) -> bool {
        let Self::Unauthorised { api } = self else {
            return false;
        };
        match (api.status, api.code.as_deref()) {
            (401, Some("invalid-authorization-token")) => true,
            (403, Some("access-denied")) => api
                .detail
                .as_deref()
                .is_some_and(|d| d.to_ascii_lowercase().contains("expired")),
            _ => false,
        }
    }

    pub(crate) fn from_status(status: u16, api: ApiError, retry_after: Option<Duration>) -> Self {
        match status {
            429 => Self::RateLimited { retry_after, api },
            401 | 403 => Self::Unauthorised { api },
            404 if api.code.as_deref() == Some(RESOURCE_NOT_FOUND) => Self::NotFound { api },
            404 => Self::UnconfirmedNotFound { api },
            500..=599 => Self::Server { api },
            _ => Self::Rejected { api },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str, detail: &str) -> ApiError {
        ApiError {
            status,
            code: Some(code.into()),
            detail: Some(detail.into()),
            ..ApiError::default()
        }
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        assert!(Error::from_status(429, api(429, "too-many-requests", ""), None).is_transient());
        assert!(Error::from_status(503, api(503, "service-unavailable", ""), None).is_transient());
        assert!(!Error::from_status(501, api(501, "x", ""), None).is_transient());
        assert!(!Error::from_status(404, api(404, "resource-not-found", ""), None).is_transient());
        assert!(!Error::from_status(400, api(400, "parameter-not-valid", ""), None).is_transient());
    }

    #[test]
    fn only_basiq_s_resource_not_found_is_a_not_found() {
        assert!(matches!(
            Error::from_status(404, api(404, "resource-not-found", ""), None),
            Error::NotFound { .. }
        ));
        let gateway = Error::from_status(404, ApiError::default(), None);
        assert!(matches!(gateway, Error::UnconfirmedNotFound { .. }));
        assert!(gateway.is_transient());
        let other = Error::from_status(404, api(404, "parameter-not-valid", ""), None);
        assert!(matches!(other, Error::UnconfirmedNotFound { .. }));
    }

    #[test]
    fn expired_token_is_a_403_access_denied() {
        assert!(
            Error::from_status(403, api(403, "access-denied", "Token has expired"), None)
                .is_stale_token()
        );
        assert!(
            Error::from_status(401, api(401, "invalid-authorization-token", ""), None)
                .is_stale_token()
        );
        assert!(!Error::from_status(403, api(403, "forbidden-access", ""), None).is_stale_token());
    }

    #[test]
    fn unauthorized_access_about_one_user_is_not_a_stale_token() {
        for status in [401, 403] {
            let err = Error::from_status(
                status,
                api(
                    status,
                    "unauthorized-access",
                    "Token does not cover this user",
                ),
                None,
            );
            assert!(!err.is_stale_token(), "{status} unauthorized-access");
            assert!(!err.is_transient() && !err.is_auth());
        }
        // 403 access-denied is stale only when it says the token expired.
        assert!(
            !Error::from_status(403, api(403, "access-denied", "Invalid request"), None)
                .is_stale_token()
        );
        // A bare 401 without Basiq's code is not known to be about the token.
        let bare = ApiError {
            status: 401,
            ..ApiError::default()
        };
        assert!(!Error::from_status(401, bare, None).is_stale_token());
    }
}
