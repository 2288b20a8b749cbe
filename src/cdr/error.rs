//! `cdr::CdrError`: what callers of the CDR client branch on and count.

/// How a timeout's [`CdrError::Transport`] message starts; [`CdrError::kind`] reads it.
const TIMED_OUT: &str = "timed out";

/// A failed CDR request. Every message is outside-text safe (one line, bounded) and names no
/// full URL: callers may log it as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CdrError {
    /// Not sent: the URL is neither `https` nor `http` to a loopback host
    /// ([`super::pollable`]), or cannot take a path.
    #[error("not polled: only https, or http to a loopback host, is polled")]
    NotPollable,
    /// No answer: connect failure, reset, too many redirects, or a timeout (the whole
    /// exchange, body included, took longer than the configured timeout; see
    /// [`CdrError::is_timeout`]).
    #[error("no answer from the CDR endpoint: {0}")]
    Transport(String),
    /// An answer that is not a success (for the Register, a 304 counts as one when an
    /// `If-None-Match` was sent). A redirect that is not followed ends here too.
    #[error("the CDR endpoint answered HTTP {0}")]
    Status(u16),
    /// A success whose body could not be read: not JSON, or without what is required.
    #[error("could not read the CDR endpoint's answer: {0}")]
    Decode(String),
    /// The body is larger than the cap for its endpoint; it was not read further.
    #[error("the CDR endpoint's answer is larger than allowed")]
    TooLarge,
}

impl CdrError {
    /// A timeout's transport error; its message starts with [`TIMED_OUT`].
    pub(super) fn timeout(message: &str) -> Self {
        Self::Transport(format!("{TIMED_OUT}: {message}"))
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Transport(message) if message.starts_with(TIMED_OUT))
    }

    /// A short label for metrics: `not-pollable`, `timeout`, `transport`, `status`, `decode`
    /// or `too-large`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotPollable => "not-pollable",
            Self::Transport(_) if self.is_timeout() => "timeout",
            Self::Transport(_) => "transport",
            Self::Status(_) => "status",
            Self::Decode(_) => "decode",
            Self::TooLarge => "too-large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_metrics_label() {
        for (err, kind) in [
            (CdrError::NotPollable, "not-pollable"),
            (CdrError::timeout("operation timed out"), "timeout"),
            (
                CdrError::Transport("connection refused".into()),
                "transport",
            ),
            (CdrError::Status(503), "status"),
            (CdrError::Decode("expected value".into()), "decode"),
            (CdrError::TooLarge, "too-large"),
        ] {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }
}
