//! Basiq's JSON as it arrives, and its conversion into domain types.
//!
//! Private to `basiq`: nothing outside this module sees a wire type. Every quirk listed in
//! API.md is absorbed here (method `openbanking`, `expiryDate: ""`, failure `result` without
//! `type`, `result` as an array, missing or placeholder `links.source`, `source: null`,
//! an error envelope whose `data` is `null`).
//!
//! A list is read item by item ([`decode_items`]): one item Basiq sent in a shape we cannot
//! read is reported as [`Unreadable`] (its id when readable, the field, serde's message) and
//! the others are kept. Ids are checked here too: an id outside `[A-Za-z0-9-]` would end up
//! in a request path or a filter, so it makes its item unreadable.

use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::domain::{
    Connection, ConnectionId, ConnectionStatus, Connector, ConnectorStatus, InstitutionId, Job,
    JobId, Method, Step, StepResult, StepStatus, UserId,
};

/// A list envelope `{"type":"list","data":[...]}` whose items are read one at a time, each
/// kept as its text until then ([`Item`]). `data` must be an array: a list without one
/// tells nothing (not even "empty").
#[derive(Debug, Deserialize)]
pub(crate) struct RawList {
    pub data: Vec<Box<serde_json::value::RawValue>>,
}

/// A list inside another resource (a user's `connections`), read as a tree: it is not on
/// the sweep's path, and a tree can be read again from a tree (the property tests do).
#[derive(Debug, Deserialize)]
pub(crate) struct ValueList {
    pub data: Vec<Value>,
}

/// One item of a list: its text as it came, or a tree already parsed.
pub(crate) trait Item {
    /// The item read straight into `W`, when it reads (no tree built): the path of every
    /// readable item. `None` sends it down the tree path, which names what is wrong.
    fn read_directly<W: DeserializeOwned>(&self) -> Option<W>;
    fn into_value(self) -> Value;
}

impl Item for Value {
    fn read_directly<W: DeserializeOwned>(&self) -> Option<W> {
        None
    }

    fn into_value(self) -> Value {
        self
    }
}

impl Item for Box<serde_json::value::RawValue> {
    fn read_directly<W: DeserializeOwned>(&self) -> Option<W> {
        let text = self.get();
        // serde reads a struct from an array too (positionally): only objects come this way.
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    fn into_value(self) -> Value {
        // It was read as JSON once already.
        serde_json::from_str(self.get()).unwrap_or(Value::Null)
    }
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: secrecy::SecretString,
    #[serde(default)]
    /// Seconds; the spec allows any integer, so it is clamped by [`token_lifetime`].
    pub expires_in: Option<i64>,
}

/// Basiq's error envelope, read leniently: whatever part of it is there is kept. A body that
/// is not JSON (a gateway's HTML page, an empty body) gives the default (all `None`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ErrorEnvelope {
    pub correlation_id: Option<String>,
    pub code: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
}

/// Longest text kept from an error envelope field: a body is not a log line.
const MAX_ERROR_TEXT: usize = 500;

impl ErrorEnvelope {
    /// `correlationId` from the top level; code, title and detail from the first error in
    /// `data` (an array, or one object). `data` may be `null`, missing or of any shape.
    pub(crate) fn read(body: &[u8]) -> Self {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .map(|s| s.chars().take(MAX_ERROR_TEXT).collect::<String>())
        };
        let first = match map.get("data") {
            Some(Value::Array(items)) => items.iter().find(|i| i.is_object()),
            Some(item @ Value::Object(_)) => Some(item),
            _ => None,
        };
        Self {
            correlation_id: text(map.get("correlationId")),
            code: text(first.and_then(|f| f.get("code"))),
            title: text(first.and_then(|f| f.get("title"))),
            detail: text(first.and_then(|f| f.get("detail"))),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Reference {
    pub id: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Links {
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionWire {
    /// Checked as read: an id outside [`crate::domain::ID_RULE`] fails this item's decode.
    pub id: ConnectionId,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub institution: Option<Reference>,
    #[serde(default)]
    pub created_date: Option<String>,
    #[serde(default)]
    pub last_used: Option<String>,
    #[serde(default)]
    pub expiry_date: Option<String>,
    /// Read leniently: anything but a JSON boolean is "not said".
    #[serde(default)]
    pub mfa_enabled: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobWire {
    pub id: JobId,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
    #[serde(default)]
    pub job_type: Option<String>,
    #[serde(default)]
    pub institution: Option<Reference>,
    #[serde(default)]
    pub steps: Vec<StepWire>,
    #[serde(default)]
    pub links: Option<Links>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct StepWire {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub result: Value,
}

/// The stub a refresh answers with: `{"type":"job","id":...,"links":{"self":...}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct JobStub {
    pub id: JobId,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConnectorWire {
    pub id: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub institution: Option<ConnectorInstitution>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectorInstitution {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub short_name: Option<String>,
    /// Text with spaces, or a number: only its digits are kept (the CDR mapping).
    #[serde(default)]
    pub abn: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserWire {
    pub id: UserId,
    #[serde(default)]
    pub connections: Option<ValueList>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventWire {
    pub id: crate::domain::EventId,
    #[serde(default)]
    pub created_date: Option<String>,
    #[serde(default)]
    pub entity: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub user_id: Option<Value>,
    #[serde(default)]
    pub data_ref: Option<String>,
}

impl EventWire {
    pub(crate) fn into_domain(self) -> Result<crate::domain::Event, BadField> {
        let kind = self.event_type.unwrap_or_default();
        let event_type = match self.entity.filter(|e| !e.is_empty()) {
            Some(entity) if !kind.contains('.') => format!("{entity}.{kind}"),
            _ => kind,
        };
        // A user id that breaks the id rule is not taken (the entity link may still say).
        let user_id = self
            .user_id
            .as_ref()
            .and_then(Value::as_str)
            .and_then(|u| UserId::parse(u).ok());
        Ok(crate::domain::Event {
            id: self.id,
            event_type,
            user_id,
            data_ref: self.data_ref,
            created: timestamp("createdDate", self.created_date.as_deref())?,
        })
    }
}

/// A field Basiq sent that we could not turn into a domain value.
#[derive(Debug, thiserror::Error)]
#[error("field `{field}` is not {expected}: {value:?}")]
pub struct BadField {
    pub field: &'static str,
    /// What the field should have been, e.g. "a timestamp".
    pub expected: &'static str,
    /// The value, cut to 80 characters.
    pub value: String,
}

impl BadField {
    fn new(field: &'static str, expected: &'static str, value: &str) -> Self {
        Self {
            field,
            expected,
            value: value.chars().take(80).collect(),
        }
    }
}

/// Timestamps outside these years are read as garbage: date arithmetic near chrono's limits
/// would overflow. Year 1 stays readable: `0001-01-01T00:00:00Z` is a common "never".
const YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// Basiq sends RFC 3339 (`2020-09-09T11:06:52Z`); an empty string means "none".
pub(crate) fn timestamp(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, BadField> {
    let Some(text) = value.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .into_iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|t| t.and_utc())
        });
    match parsed {
        Some(t) if YEARS.contains(&t.year()) => Ok(Some(t)),
        _ => Err(BadField::new(field, "a timestamp", text)),
    }
}

/// Basiq's ids are UUIDs or short hex/alphanumeric strings. Anything else (a slash, a quote,
/// a space) would change the path or the filter of the requests the id goes into.
/// One list item that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unreadable {
    /// The item's `id`, when it is a string (shown escaped: it may be anything).
    pub id: Option<String>,
    /// Where in the item: serde's path (`steps[0].status`, `.` for the item itself) or the
    /// field a conversion refused.
    pub field: String,
    pub message: String,
}

impl Unreadable {
    /// The id for a log line: escaped and cut, so it cannot forge or flood one.
    pub(crate) fn shown_id(&self) -> String {
        match &self.id {
            Some(id) => id.chars().take(80).flat_map(char::escape_debug).collect(),
            None => "(unreadable)".to_owned(),
        }
    }
}

/// Why one item (or one single-resource answer) could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ItemError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

/// Decodes one value into its wire type (serde's path names the field that failed), then
/// converts it into a domain value.
pub(crate) fn decode_one<W: DeserializeOwned, D>(
    value: Value,
    convert: impl Fn(W) -> Result<D, BadField>,
) -> Result<D, ItemError> {
    // serde reads a struct from an array too (positionally): Basiq's resources are objects.
    if !value.is_object() {
        return Err(ItemError {
            field: ".".to_owned(),
            message: format!("expected an object, found {}", kind_of(&value)),
        });
    }
    let wire: W = serde_path_to_error::deserialize(value).map_err(|e| ItemError {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    convert(wire).map_err(|e| ItemError {
        field: e.field.to_owned(),
        message: e.to_string(),
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The items of a list that could be read, and those that could not.
#[derive(Debug)]
pub(crate) struct Decoded<D> {
    pub items: Vec<D>,
    pub unreadable: Vec<Unreadable>,
}

/// Decodes each item on its own: one unreadable item does not cost the others.
/// An item that reads goes straight from its text to the domain; one that does not is read
/// again as a tree, for its id and the field at fault.
pub(crate) fn decode_items<I: Item, W: DeserializeOwned, D>(
    data: Vec<I>,
    convert: impl Fn(W) -> Result<D, BadField>,
) -> Decoded<D> {
    let mut decoded = Decoded {
        items: Vec::with_capacity(data.len()),
        unreadable: Vec::new(),
    };
    for item in data {
        if let Some(d) = item.read_directly().and_then(|w| convert(w).ok()) {
            decoded.items.push(d);
            continue;
        }
        let item = item.into_value();
        let id = item.get("id").and_then(Value::as_str).map(str::to_owned);
        match decode_one(item, &convert) {
            Ok(d) => decoded.items.push(d),
            Err(e) => decoded.unreadable.push(Unreadable {
                id,
                field: e.field,
                message: e.message,
            }),
        }
    }
    decoded
}

impl ConnectionWire {
    pub(crate) fn into_domain(self) -> Result<Connection, BadField> {
        let expiry_date = timestamp("expiryDate", self.expiry_date.as_deref())?;
        Ok(Connection {
            created_date: timestamp("createdDate", self.created_date.as_deref())?,
            last_used: timestamp("lastUsed", self.last_used.as_deref())?,
            method: Method::from_wire(self.method.as_deref(), expiry_date.is_some()),
            expiry_date,
            id: self.id,
            status: ConnectionStatus::parse(self.status.as_deref().unwrap_or("")),
            institution_id: InstitutionId(self.institution.map(|i| i.id).unwrap_or_default()),
            mfa_enabled: self.mfa_enabled.and_then(|v| v.as_bool()),
        })
    }
}

/// The connection id is the last path segment of `links.source` when it points at a
/// connection; Basiq's own test data also holds the placeholder `"{source}"`. A segment
/// that names a connection but breaks the id rule is an error, not "no connection".
pub(crate) fn connection_id_from_source(source: &str) -> Result<Option<ConnectionId>, BadField> {
    let path = source.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let (Some(id), Some(parent)) = (segments.next(), segments.next()) else {
        return Ok(None);
    };
    if parent != "connections" || id.is_empty() || id.contains('{') {
        return Ok(None);
    }
    ConnectionId::parse(id).map(Some).map_err(|_| {
        BadField::new(
            "links.source",
            "a link to a connection id of [A-Za-z0-9-]{1,64}",
            source,
        )
    })
}

fn step_result(value: Value) -> StepResult {
    match value {
        Value::Null => StepResult::None,
        // One Basiq guide shows `result` as an array of result objects: the first one speaks.
        Value::Array(items) => items
            .into_iter()
            .next()
            .map(step_result)
            .unwrap_or(StepResult::None),
        Value::Object(map) => {
            let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
            if let Some(code) = text("code") {
                StepResult::Failure {
                    code,
                    title: text("title"),
                    detail: text("detail"),
                }
            } else {
                match text("type").as_deref() {
                    Some("link") => StepResult::Link(text("url").unwrap_or_default()),
                    Some("mfa") => StepResult::Mfa {
                        method: text("method"),
                    },
                    _ => StepResult::Other(Value::Object(map).to_string()),
                }
            }
        }
        other => StepResult::Other(other.to_string()),
    }
}

impl JobWire {
    pub(crate) fn into_domain(self) -> Result<Job, BadField> {
        let source = self
            .links
            .and_then(|l| l.source)
            .filter(|s| !s.trim().is_empty() && !s.contains('{'));
        Ok(Job {
            created: timestamp("created", self.created.as_deref())?,
            updated: timestamp("updated", self.updated.as_deref())?,
            has_source: source.is_some(),
            connection_id: match source {
                Some(s) => connection_id_from_source(&s)?,
                None => None,
            },
            id: self.id,
            job_type: self.job_type,
            institution_id: self.institution.map(|i| InstitutionId(i.id)),
            steps: self
                .steps
                .into_iter()
                .map(|s| Step {
                    title: s.title,
                    status: StepStatus::parse(&s.status),
                    result: step_result(s.result),
                })
                .collect(),
        })
    }
}

impl ConnectorWire {
    pub(crate) fn into_domain(self) -> Result<Connector, BadField> {
        Ok(Connector {
            institution_id: InstitutionId(self.id),
            method: Method::parse(self.method.as_deref().unwrap_or("")),
            status: ConnectorStatus::parse(self.status.as_deref().unwrap_or("")),
            name: self.institution.as_ref().and_then(|i| i.name.clone()),
            short_name: self.institution.as_ref().and_then(|i| i.short_name.clone()),
            abn: self
                .institution
                .and_then(|i| i.abn)
                .and_then(|abn| match abn {
                    Value::String(text) => crate::domain::cdr::abn_digits(&text),
                    Value::Number(n) => crate::domain::cdr::abn_digits(&n.to_string()),
                    _ => None,
                }),
        })
    }
}

impl JobStub {
    pub(crate) fn into_domain(self) -> Result<JobId, BadField> {
        Ok(self.id)
    }
}

impl Reference {
    pub(crate) fn into_connection_id(self) -> Result<ConnectionId, BadField> {
        ConnectionId::parse(self.id.as_str())
            .map_err(|_| BadField::new("id", "an id of [A-Za-z0-9-]{1,64}", &self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_link_yields_the_connection_id() {
        assert_eq!(
            connection_id_from_source("https://au-api.basiq.io/users/u1/connections/c1").unwrap(),
            Some(ConnectionId::parse("c1").unwrap())
        );
        assert_eq!(connection_id_from_source("{source}").unwrap(), None);
        assert_eq!(
            connection_id_from_source("https://x/users/u1").unwrap(),
            None
        );
    }

    #[test]
    fn an_id_outside_the_alphabet_in_a_basiq_answer_is_a_decode_error() {
        let connection = |id: &str| serde_json::json!({"id": id, "status": "active"});
        let good: ConnectionWire =
            serde_json::from_value(connection("64011b56-988a-4c2c-bfca-16c836cec23f")).unwrap();
        assert_eq!(good.id.as_str(), "64011b56-988a-4c2c-bfca-16c836cec23f");
        for bad in ["../../etc", "u1/connections/x/../..", "", "a b", "%2e%2e"] {
            let err = serde_json::from_value::<ConnectionWire>(connection(bad)).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("invalid connection id {bad:?}")),
                "{err}"
            );
            let err =
                serde_json::from_value::<JobWire>(serde_json::json!({"id": bad})).unwrap_err();
            assert!(err.to_string().contains("invalid job id"), "{err}");
            assert!(serde_json::from_value::<JobStub>(serde_json::json!({"id": bad})).is_err());
            assert!(serde_json::from_value::<UserWire>(serde_json::json!({"id": bad})).is_err());
            // A user's list of connections is read item by item: the bad one is refused.
            let reference: Reference =
                serde_json::from_value(serde_json::json!({"id": bad})).unwrap();
            assert!(reference.into_connection_id().is_err());
        }
        // The connection named by a job's `links.source` is checked too.
        let job: JobWire = serde_json::from_value(serde_json::json!({
            "id": "j1",
            "links": {"source": "https://au-api.basiq.io/users/u1/connections/a%2F..%2Fb"}
        }))
        .unwrap();
        let err = job.into_domain().unwrap_err();
        assert_eq!(err.field, "links.source", "{err}");
        assert!(err.to_string().contains("a%2F..%2Fb"), "{err}");
    }

    #[test]
    fn step_results_of_every_shape_parse() {
        let failure = serde_json::json!({"code": "authorization-failed", "title": "t", "detail": "access_denied"});
        assert!(
            matches!(step_result(failure.clone()), StepResult::Failure { code, .. } if code == "authorization-failed")
        );
        assert!(matches!(
            step_result(Value::Array(vec![failure])),
            StepResult::Failure { .. }
        ));
        assert_eq!(step_result(Value::Null), StepResult::None);
        assert_eq!(step_result(Value::Array(vec![])), StepResult::None);
        assert_eq!(
            step_result(serde_json::json!({"type": "link", "url": "/users/u"})),
            StepResult::Link("/users/u".into())
        );
        assert!(matches!(
            step_result(serde_json::json!({"type": "mfa", "method": "token"})),
            StepResult::Mfa { .. }
        ));
        assert!(matches!(
            step_result(serde_json::json!({"type": "weird"})),
            StepResult::Other(_)
        ));
    }

    #[test]
    fn empty_expiry_is_none_and_garbage_is_an_error() {
        assert_eq!(timestamp("expiryDate", Some("")).unwrap(), None);
        assert!(
            timestamp("x", Some("2020-09-09T11:06:52Z"))
                .unwrap()
                .is_some()
        );
        let err = timestamp("lastUsed", Some("yesterday")).unwrap_err();
        assert!(err.to_string().contains("lastUsed"));
    }
}

#[cfg(test)]
mod fixture_tests {
    //! The project's own fixtures, one per documented quirk.
    use super::*;
    use crate::domain::{JobState, StepResult};

    /// Every item of a list fixture, each of which must be readable.
    fn load<W: DeserializeOwned, D>(
        text: &str,
        convert: impl Fn(W) -> Result<D, BadField>,
    ) -> Vec<D> {
        let list: RawList = serde_json::from_str(text).expect("fixture parses");
        let decoded = decode_items(list.data, convert);
        assert_eq!(
            decoded.unreadable,
            vec![],
            "every item of the fixture is readable"
        );
        decoded.items
    }

    #[test]
    fn connection_quirks_parse() {
        let conns: Vec<Connection> = load(
            include_str!("../../tests/fixtures/connections-quirks.json"),
            ConnectionWire::into_domain,
        );
        assert_eq!(
            conns[0].method,
            Method::OpenBanking,
            "`openbanking` spelling"
        );
        assert!(conns[0].expiry_date.is_some());
        assert_eq!(conns[1].expiry_date, None, "`expiryDate: \"\"` on web");
        assert_eq!(
            conns[2].status,
            ConnectionStatus::Other("suspended-by-bank".into())
        );
        assert_eq!(conns[2].method, Method::Other("carrier-pigeon".into()));
        assert_eq!(conns[2].last_used, None);
    }

    #[test]
    fn job_quirks_parse() {
        let jobs: Vec<Job> = load(
            include_str!("../../tests/fixtures/jobs-quirks.json"),
            JobWire::into_domain,
        );
        assert_eq!(
            jobs[0].failure_code(),
            Some("invalid-credentials"),
            "failure without `type`"
        );
        assert_eq!(jobs[0].state(), JobState::Failed);
        assert_eq!(
            jobs[0].connection_id.as_ref().map(|c| c.as_str()),
            Some("c0a80101-0000-4000-8000-000000000002")
        );
        assert_eq!(
            jobs[1].failure_code(),
            Some("authorization-failed"),
            "`result` as an array"
        );
        assert_eq!(jobs[2].connection_id, None, "missing `links.source`");
        assert_eq!(jobs[2].state(), JobState::InProgress);
        assert_eq!(
            jobs[2].institution_id.as_ref().map(|i| i.as_str()),
            Some("AU00000")
        );
        assert_eq!(jobs[3].connection_id, None, "placeholder `{{source}}`");
        assert!(matches!(jobs[3].steps[1].result, StepResult::Mfa { .. }));
        assert_eq!(jobs[3].state(), JobState::Success);
    }

    #[test]
    fn error_envelope_with_null_source_parses() {
        let env = ErrorEnvelope::read(include_bytes!(
            "../../tests/fixtures/error-source-null.json"
        ));
        assert_eq!(
            env.correlation_id.as_deref(),
            Some("7f3c2a10-5b1e-4e7e-9d57-0c1a2b3c4d5e")
        );
        assert_eq!(env.code.as_deref(), Some("access-denied"));
    }

    #[test]
    fn an_error_envelope_with_null_data_keeps_its_correlation_id() {
        for body in [
            r#"{"type":"list","correlationId":"c0ffee00-0000-4000-8000-000000000001","data":null}"#,
            r#"{"type":"list","correlationId":"c0ffee00-0000-4000-8000-000000000001"}"#,
            r#"{"correlationId":"c0ffee00-0000-4000-8000-000000000001","data":"oops"}"#,
        ] {
            let env = ErrorEnvelope::read(body.as_bytes());
            assert_eq!(
                env.correlation_id.as_deref(),
                Some("c0ffee00-0000-4000-8000-000000000001"),
                "{body}"
            );
            assert_eq!(env.code, None, "{body}");
        }
        // `data` as one object, and errors beside non-objects: what is there is kept.
        let env = ErrorEnvelope::read(
            br#"{"correlationId":"c1","data":[null,{"code":"resource-not-found","detail":7}]}"#,
        );
        assert_eq!(env.correlation_id.as_deref(), Some("c1"));
        assert_eq!(env.code.as_deref(), Some("resource-not-found"));
        assert_eq!(env.detail, None);
        let env = ErrorEnvelope::read(br#"{"data":{"code":"access-denied"}}"#);
        assert_eq!(env.code.as_deref(), Some("access-denied"));
        assert_eq!(
            ErrorEnvelope::read(b"<html>404</html>"),
            ErrorEnvelope::default()
        );
    }

    #[test]
    fn one_unreadable_item_is_reported_and_the_others_kept() {
        let items: Vec<Value> = serde_json::from_str(
            r#"[
              {"id": "j-good", "created": "2026-11-20T02:15:00Z", "steps": []},
              {"id": "j-null-steps", "steps": null},
              {"id": "j-bad-time", "created": "yesterday"},
              {"id": "../j", "steps": []},
              ["not", "a", "job"],
              {"id": "j-bad-step", "steps": [{"title": "verify-credentials", "status": 3}]}
            ]"#,
        )
        .unwrap();
        let decoded = decode_items(items, JobWire::into_domain);
        assert_eq!(decoded.items.len(), 1);
        assert_eq!(decoded.items[0].id.as_str(), "j-good");
        let seen: Vec<(Option<&str>, &str)> = decoded
            .unreadable
            .iter()
            .map(|u| (u.id.as_deref(), u.field.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (Some("j-null-steps"), "steps"),
                (Some("j-bad-time"), "created"),
                (Some("../j"), "id"),
                (None, "."),
                (Some("j-bad-step"), "steps[0].status"),
            ]
        );
    }

    #[test]
    fn connectors_parse_with_unknown_status() {
        let connectors: Vec<Connector> = load(
            include_str!("../../tests/fixtures/connectors.json"),
            ConnectorWire::into_domain,
        );
        assert_eq!(connectors[0].status, ConnectorStatus::MajorOutage);
        assert_eq!(connectors[0].name.as_deref(), Some("Hooli Bank"));
        assert_eq!(
            connectors[1].status,
            ConnectorStatus::Other("melting".into())
        );
        assert_eq!(connectors[1].method, Method::OpenBanking);
    }
}

/// How long a token is used: Basiq's `expires_in`, at most 24 h (the spec allows any
/// integer; a huge one used to overflow the clock). Missing means Basiq's documented hour;
/// zero or negative means "fetch again soon": 30 s, so a broken answer does not become one
/// `/token` call per request.
pub fn token_lifetime(expires_in: Option<i64>) -> std::time::Duration {
    let secs = match expires_in {
        None => 3600,
        Some(s) if s <= 0 => 30,
        Some(s) => s.min(24 * 3600),
    };
    std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(3600))
}

#[cfg(test)]
mod token_lifetime_tests {
    use super::token_lifetime;
    use std::time::Duration;

    #[test]
    fn expires_in_is_clamped_to_a_sane_range() {
        for (given, secs) in [
            (None, 3600),
            (Some(3600), 3600),
            (Some(i64::MAX), 86_400),
            (Some(0), 30),
            (Some(-5), 30),
            (Some(i64::MIN), 30),
            (Some(2), 2),
        ] {
            assert_eq!(
                token_lifetime(given),
                Duration::from_secs(secs),
                "{given:?}"
            );
        }
    }
}
