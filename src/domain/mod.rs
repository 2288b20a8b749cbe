//! The daemon's vocabulary: identifiers and the enums Basiq speaks, parsed once at the edge.
//!
//! Knows nothing about HTTP or SQLite. Every enum that mirrors a Basiq value keeps unknown
//! values verbatim in an `Other(String)` variant: Basiq adds values without notice, and an
//! unknown value must never turn a good answer into a parse failure.
//!
//! Ids are the exception: a user, connection or job id outside [`ID_RULE`] is refused
//! wherever it enters (command line, import file, local API, Basiq's answers), because an
//! id ends up in URLs, SQL and log lines.
//!
//! [`cdr`] holds the Consumer Data Right's vocabulary (brands, statuses, planned outages).

pub mod cdr;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The rule every Basiq user, connection and job id must meet before it reaches the store,
/// a URL or a log line: 1 to 64 ASCII letters, digits or `-`. Basiq's ids are UUIDs
/// (`64011b56-988a-4c2c-bfca-16c836cec23f`, 36 characters), well inside it.
pub const ID_RULE: &str = "[A-Za-z0-9-]{1,64}";

/// The longest id [`ID_RULE`] accepts.
pub const ID_MAX_LEN: usize = 64;

/// How much of a refused id an error quotes: enough to recognise it, never a whole file.
const QUOTED_MAX_CHARS: usize = 100;

/// What is wrong with a refused id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdProblem {
    Empty,
    /// Longer than [`ID_MAX_LEN`]; the length in characters.
    TooLong(usize),
    /// A character outside the alphabet, at a 1-based character position.
    BadChar {
        ch: char,
        at: usize,
    },
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::TooLong(n) => write!(f, "it is {n} characters long (at most {ID_MAX_LEN})"),
            Self::BadChar { ch, at } => write!(f, "character {at} ({ch:?}) is not allowed"),
        }
    }
}

/// An id that breaks [`ID_RULE`]. Its message names the kind of id, quotes the id (escaped,
/// truncated when huge) and states the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} {quoted}: {problem}; an id is 1 to {ID_MAX_LEN} ASCII letters, digits or '-' ({ID_RULE})"
)]
pub struct IdError {
    kind: &'static str,
    quoted: String,
    problem: IdProblem,
}

impl IdError {
    /// `user id`, `connection id` or `job id`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
    pub fn problem(&self) -> &IdProblem {
        &self.problem
    }
}

/// The id in double quotes with every control or invisible character escaped (Rust's
/// `Debug` for strings), cut after [`QUOTED_MAX_CHARS`] characters.
fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTED_MAX_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!(
            "{:?}... ({} characters)",
            &value[..cut],
            value.chars().count()
        ),
    }
}

/// Checks `value` against [`ID_RULE`].
fn check_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    let refuse = |problem| IdError {
        kind,
        quoted: quote(value),
        problem,
    };
    if value.is_empty() {
        return Err(refuse(IdProblem::Empty));
    }
    if let Some((at, ch)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(refuse(IdProblem::BadChar { ch, at: at + 1 }));
    }
    // Only ASCII is left, so bytes are characters.
    if value.len() > ID_MAX_LEN {
        return Err(refuse(IdProblem::TooLong(value.len())));
    }
    Ok(())
}

/// An id newtype that holds only ids meeting [`ID_RULE`]: built by `parse` (also `FromStr`,
/// `TryFrom`, and `Deserialize`, so an id in a Basiq answer is checked as it is read).
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            /// The id, if it meets [`ID_RULE`]; otherwise an error naming it.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_id($kind, &value)?;
                Ok(Self(value))
            }

            /// An id read back from this daemon's own database, not checked again: every
            /// id is checked before it is stored. A row written before ids were checked may
            /// break the rule; that is harmless, because URLs are built segment by segment
            /// (`basiq::pipeline`) and SQL binds values.
            #[allow(dead_code)] // not every kind of id is stored
            pub(crate) fn from_store(value: String) -> Self {
                Self(value)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }
    };
}

id_type!(
    /// A Basiq user id.
    UserId,
    "user id"
);
id_type!(
    /// A Basiq connection id (stable across purge).
    ConnectionId,
    "connection id"
);
id_type!(
    /// A Basiq job id.
    JobId,
    "job id"
);
id_type!(
    /// A Basiq event id (`/events/{id}`).
    EventId,
    "event id"
);

/// The `webhook-id` of every notification: this prefix and [`WEBHOOK_ID_HEX`] lowercase hex
/// digits (16 random bytes).
pub const WEBHOOK_ID_PREFIX: &str = "msg_";
/// The hex digits after [`WEBHOOK_ID_PREFIX`].
pub const WEBHOOK_ID_HEX: usize = 32;

/// What `notify retry` names: one delivery (its id in `notify list`, a positive integer), or
/// a notification by its `webhook-id` (every endpoint's delivery of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryRef {
    Delivery(i64),
    Webhook(String),
}

/// An argument that is neither a delivery id nor a webhook id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid delivery id {quoted}: expected a delivery id (a positive integer, as `notify list` \
     shows it) or a webhook id ({WEBHOOK_ID_PREFIX} followed by {WEBHOOK_ID_HEX} lowercase hex digits)"
)]
pub struct DeliveryRefError {
    quoted: String,
}

impl std::str::FromStr for DeliveryRef {
    type Err = DeliveryRefError;
    fn from_str(value: &str) -> Result<Self, DeliveryRefError> {
        if let Some(hex) = value.strip_prefix(WEBHOOK_ID_PREFIX)
            && hex.len() == WEBHOOK_ID_HEX
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Ok(Self::Webhook(value.to_owned()));
        }
        match value.parse::<i64>() {
            Ok(id) if id > 0 && value.bytes().all(|b| b.is_ascii_digit()) => Ok(Self::Delivery(id)),
            _ => Err(DeliveryRefError {
                quoted: quote(value),
            }),
        }
    }
}

impl fmt::Display for DeliveryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delivery(id) => write!(f, "{id}"),
            Self::Webhook(id) => f.write_str(id),
        }
    }
}

/// An event as `GET /events` and `GET /events/{id}` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    /// `entity.eventType`, e.g. `connection.invalidated`.
    pub event_type: String,
    pub user_id: Option<UserId>,
    /// The resource's URL (`dataRef`).
    pub data_ref: Option<String>,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
}

/// A Basiq institution id, e.g. `AU00000`. Not checked: it never goes into a URL path, only
/// into the store and the connector key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstitutionId(pub String);

impl InstitutionId {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstitutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for InstitutionId {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// Generates an enum over known kebab-case wire values with an `Other` catch-all.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// A value this build does not know, kept verbatim.
            Other(String),
        }

        impl $name {
            pub fn parse(value: &str) -> Self {
                match value {
                    $($text $(| $alias)* => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(other) => other,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Ok(Self::parse(&text))
            }
        }
    };
}

wire_enum!(
    /// A connection's status. The spec names four; the docs add `init`, `deleted`, `revoked`.
    ConnectionStatus {
        Active => "active",
        Pending => "pending",
        PreInit => "pre-init",
        Init => "init",
        Invalid => "invalid",
        Deleted => "deleted",
        Revoked => "revoked",
    }
);

wire_enum!(
    /// How a connection reaches the bank. Basiq spells open banking two ways.
    Method {
        Web => "web",
        OpenBanking => "open-banking" | "openbanking",
        Csv => "csv",
        Pdf => "pdf",
        Unknown => "unknown",
    }
);

// The enums come from a macro that cannot mark a `#[default]` variant.
#[allow(clippy::derivable_impls)]
impl Default for Method {
    fn default() -> Self {
        Self::Unknown
    }
}

#[allow(clippy::derivable_impls)]
impl Default for ConnectionStatus {
    fn default() -> Self {
        Self::Pending
    }
}

impl Method {
    /// What a connection's method is when Basiq leaves it out (its recorded answers do): an
    /// `expiryDate` means an open-banking consent; without one the method is unknown.
    pub fn from_wire(value: Option<&str>, has_expiry: bool) -> Self {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            Some(text) => Self::parse(text),
            None if has_expiry => Self::OpenBanking,
            None => Self::Unknown,
        }
    }
}

wire_enum!(
    /// A job step's status.
    StepStatus {
        Pending => "pending",
        InProgress => "in-progress",
        Success => "success",
        Failed => "failed",
    }
);

wire_enum!(
    /// A connector's (institution + method) status from `/connectors`.
    ConnectorStatus {
        Operational => "operational",
        DegradedPerformance => "degraded-performance",
        PartialOutage => "partial-outage",
        MajorOutage => "major-outage",
        UnderMaintenance => "under-maintenance",
    }
);

impl ConnectorStatus {
    /// The one meaning of "the bank is down", used by classification, the refresh gates and
    /// recovery alike. Partial and major outages fail logins too; degraded performance and
    /// `under-maintenance` still work (Basiq: "can and should still be used"). A status this
    /// build does not know is read as down: blaming the bank wrongly costs a notice,
    /// blaming the user wrongly costs a locked bank account.
    pub fn is_down(&self) -> bool {
        matches!(
            self,
            Self::PartialOutage | Self::MajorOutage | Self::Other(_)
        )
    }

    /// How bad a status is, for taking the worst over several connectors (higher is worse).
    pub fn severity(&self) -> u8 {
        match self {
            Self::Operational => 0,
            Self::DegradedPerformance => 1,
            Self::UnderMaintenance => 2,
            Self::Other(_) => 3,
            Self::PartialOutage => 4,
            Self::MajorOutage => 5,
        }
    }
}

/// A connector's key: an institution reached one way, the method in its canonical
/// spelling (`openbanking` and `open-banking` are one connector).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConnectorKey {
    pub institution_id: String,
    pub method: String,
}

impl ConnectorKey {
    pub fn new(institution_id: &str, method: &Method) -> Self {
        Self {
            institution_id: institution_id.to_owned(),
            method: method.as_str().to_owned(),
        }
    }
}

impl fmt::Display for ConnectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.institution_id, self.method)
    }
}

/// A connection as the daemon sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub id: ConnectionId,
    pub status: ConnectionStatus,
    pub method: Method,
    pub institution_id: InstitutionId,
    pub created_date: Option<chrono::DateTime<chrono::Utc>>,
    pub last_used: Option<chrono::DateTime<chrono::Utc>>,
    /// The open-banking consent's end; `None` for web connections (Basiq sends `""`).
    pub expiry_date: Option<chrono::DateTime<chrono::Utc>>,
    /// `mfaEnabled`; `None` when Basiq leaves it out (its recorded answers do).
    pub mfa_enabled: Option<bool>,
}

/// What a job step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepResult {
    None,
    Link(String),
    Failure {
        code: String,
        title: Option<String>,
        detail: Option<String>,
    },
    Mfa {
        method: Option<String>,
    },
    /// A shape we do not know, kept as JSON text.
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub title: String,
    pub status: StepStatus,
    pub result: StepResult,
}

/// Where a job stands, derived from its steps (connection jobs have no top-level status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    InProgress,
    Success,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in-progress",
            Self::Success => "success",
            Self::Failed => "failed",
        }
    }
}

/// A Basiq job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub created: Option<chrono::DateTime<chrono::Utc>>,
    pub updated: Option<chrono::DateTime<chrono::Utc>>,
    pub job_type: Option<String>,
    pub institution_id: Option<InstitutionId>,
    /// From `links.source`; missing while some jobs are in progress.
    pub connection_id: Option<ConnectionId>,
    /// Whether the job carried a `links.source` at all (one that names no connection, e.g.
    /// a statement upload's, must not be matched to a connection by institution).
    pub has_source: bool,
    pub steps: Vec<Step>,
}

/// The failure code of a failed step that carries none (`result` null or without `code`).
pub const NO_FAILURE_CODE: &str = "no-failure-code";

impl Job {
    /// Any failed step: failed; all steps succeeded: success; otherwise in progress.
    pub fn state(&self) -> JobState {
        if self.steps.iter().any(|s| s.status == StepStatus::Failed) {
            JobState::Failed
        } else if !self.steps.is_empty()
            && self.steps.iter().all(|s| s.status == StepStatus::Success)
        {
            JobState::Success
        } else {
            JobState::InProgress
        }
    }

    /// The failure code of the first failed step: its `result.code`, or
    /// [`NO_FAILURE_CODE`] when it has none. `None` when no step failed.
    pub fn failure_code(&self) -> Option<&str> {
        self.failed_step().map(|s| match &s.result {
            StepResult::Failure { code, .. } if !code.trim().is_empty() => code.as_str(),
            _ => NO_FAILURE_CODE,
        })
    }

    /// The job asked the user for a one-time code or security answers.
    pub fn shows_mfa(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.title == "mfa-challenge" || matches!(s.result, StepResult::Mfa { .. }))
    }

    /// The job is about a connection (statement uploads and other job types are not).
    pub fn is_connection_job(&self) -> bool {
        self.job_type
            .as_deref()
            .is_none_or(|t| t.is_empty() || t == "connection" || t == "connections")
    }

    /// The first failed step, if any.
    pub fn failed_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.status == StepStatus::Failed)
    }
}

/// A connector: one institution reached one way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connector {
    pub institution_id: InstitutionId,
    pub method: Method,
    pub status: ConnectorStatus,
    pub name: Option<String>,
    pub short_name: Option<String>,
    /// The institution's ABN, digits only (open-banking connectors carry it): how the CDR
    /// Register's brand is found.
    pub abn: Option<String>,
}

/// A period in which a connector's bank was down, as far as the daemon knows: a
/// `/connectors` outage, or an inferred one with its inference window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownPeriod {
    /// The earliest it may have begun: the last read that saw the bank up, or the start of
    /// an inferred outage's window. `None`: not known (down at the first sight).
    pub from: Option<DateTime<Utc>>,
    /// When it ended; `None`: still open.
    pub until: Option<DateTime<Utc>>,
}

impl DownPeriod {
    /// Whether something that happened within `[start, end]` happened while it lasted.
    pub fn overlaps(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| end >= from) && self.until.is_none_or(|until| start <= until)
    }

    pub fn is_open(&self) -> bool {
        self.until.is_none()
    }

    /// Whether it lasts at `at`: begun (when its start is known) and not ended. A window
    /// announced ahead begins in the future.
    pub fn covers(&self, at: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| from <= at) && self.until.is_none_or(|until| at < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_meet_the_rule_or_are_refused_naming_the_id_and_the_rule() {
        let uuid = "64011b56-988a-4c2c-bfca-16c836cec23f";
        let max = "a".repeat(64);
        for ok in [uuid, "u1", "A-9", "-", &max] {
            assert_eq!(UserId::parse(ok).unwrap().as_str(), ok);
            assert_eq!(ok.parse::<ConnectionId>().unwrap().as_str(), ok);
            assert_eq!(JobId::try_from(ok.to_owned()).unwrap().as_str(), ok);
        }
        let long = "a".repeat(65);
        for (bad, quoted, problem) in [
            ("", "\"\"", IdProblem::Empty),
            (&long, &format!("{long:?}"), IdProblem::TooLong(65)),
            (
                "caf\u{e9}",
                "\"caf\u{e9}\"",
                IdProblem::BadChar {
                    ch: '\u{e9}',
                    at: 4,
                },
            ),
            ("%2e", "\"%2e\"", IdProblem::BadChar { ch: '%', at: 1 }),
            ("a b", "\"a b\"", IdProblem::BadChar { ch: ' ', at: 2 }),
            ("a\0b", "\"a\\0b\"", IdProblem::BadChar { ch: '\0', at: 2 }),
            ("a/b", "\"a/b\"", IdProblem::BadChar { ch: '/', at: 2 }),
            ("..", "\"..\"", IdProblem::BadChar { ch: '.', at: 1 }),
            (
                "../../etc",
                "\"../../etc\"",
                IdProblem::BadChar { ch: '.', at: 1 },
            ),
            ("a_b", "\"a_b\"", IdProblem::BadChar { ch: '_', at: 2 }),
            ("u1\n", "\"u1\\n\"", IdProblem::BadChar { ch: '\n', at: 3 }),
            (
                "\u{1b}[2J",
                "\"\\u{1b}[2J\"",
                IdProblem::BadChar {
                    ch: '\u{1b}',
                    at: 1,
                },
            ),
        ] {
            let err = UserId::parse(bad).unwrap_err();
            assert_eq!(err.problem(), &problem, "{bad:?}");
            assert_eq!(err.kind(), "user id");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("invalid user id {quoted}: ")),
                "{bad:?}: {text}"
            );
            assert!(text.contains("[A-Za-z0-9-]{1,64}"), "{text}");
            assert!(ConnectionId::parse(bad).is_err() && JobId::parse(bad).is_err());
        }
        assert!(
            ConnectionId::parse("a/b")
                .unwrap_err()
                .to_string()
                .starts_with("invalid connection id \"a/b\"")
        );
    }

    #[test]
    fn a_huge_refused_id_is_quoted_truncated() {
        let huge = format!("{}/{}", "x".repeat(1_000_000), "y");
        let text = UserId::parse(huge).unwrap_err().to_string();
        assert!(text.len() < 400, "{} bytes", text.len());
        assert!(text.contains("1000002 characters"), "{text}");
        assert!(text.contains("'/'"), "{text}");
    }

    #[test]
    fn ids_serialize_as_strings_and_deserialize_only_when_valid() {
        let id = UserId::parse("u-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"u-1\"");
        assert_eq!(serde_json::from_str::<UserId>("\"u-1\"").unwrap(), id);
        let err = serde_json::from_str::<JobId>("\"../jobs\"").unwrap_err();
        assert!(
            err.to_string().contains("invalid job id \"../jobs\""),
            "{err}"
        );
    }

    #[test]
    fn unknown_enum_values_are_kept_verbatim() {
        assert_eq!(
            ConnectionStatus::parse("frozen"),
            ConnectionStatus::Other("frozen".into())
        );
        assert_eq!(ConnectionStatus::parse("frozen").as_str(), "frozen");
        assert_eq!(Method::parse("openbanking"), Method::OpenBanking);
        assert_eq!(Method::parse("open-banking").as_str(), "open-banking");
        assert_eq!(
            ConnectorStatus::parse("on-fire"),
            ConnectorStatus::Other("on-fire".into())
        );
    }

    #[test]
    fn job_state_is_derived_from_steps() {
        let step = |status: &str| Step {
            title: "verify-credentials".into(),
            status: StepStatus::parse(status),
            result: StepResult::None,
        };
        let job = |steps| Job {
            id: JobId::parse("j").unwrap(),
            created: None,
            updated: None,
            job_type: None,
            institution_id: None,
            connection_id: None,
            has_source: false,
            steps,
        };
        assert_eq!(
            job(vec![step("success"), step("success")]).state(),
            JobState::Success
        );
        assert_eq!(
            job(vec![step("failed"), step("pending")]).state(),
            JobState::Failed
        );
        assert_eq!(
            job(vec![step("success"), step("in-progress")]).state(),
            JobState::InProgress
        );
        assert_eq!(job(vec![]).state(), JobState::InProgress);
    }
}
