//! Basiq's JSON as it arrives, and its conversion into domain types.
//!
//! Private to `basiq`: nothing outside this module sees a wire type. Every quirk listed in
//! API.md is absorbed here (method `openbanking`, `expiryDate: ""`, failure `result` without
//! `type`, `result` as an array, missing or placeholder `links.source`, `source: null`).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::{
    Connection, ConnectionId, ConnectionStatus, Connector, ConnectorStatus, IdError, InstitutionId,
    Job, JobId, Method, Step, StepResult, StepStatus, UserId,
};

#[derive(Debug, Deserialize)]
pub(crate) struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: secrecy::SecretString,
    #[serde(default)]
    /// Seconds; the spec allows any integer, so it is clamped by [`token_lifetime`].
    pub expires_in: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorEnvelope {
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub data: Vec<ErrorItem>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorItem {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Reference {
    pub id: String,
}

/// A connection named inside another answer (`GET /users/{id}`): its id is checked as read.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnectionRef {
    pub id: ConnectionId,
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
pub(crate) struct ConnectorInstitution {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserWire {
    pub id: UserId,
    #[serde(default)]
    pub connections: Option<List<ConnectionRef>>,
}

/// A timestamp Basiq sent that we could not read.
#[derive(Debug, thiserror::Error)]
#[error("field `{field}` is not a timestamp: {value:?}")]
pub struct BadTimestamp {
    pub field: &'static str,
    pub value: String,
}

/// A job whose `links.source` or timestamps cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BadJob {
    #[error(transparent)]
    Timestamp(#[from] BadTimestamp),
    #[error("field `links.source` names a connection by an id we refuse: {0}")]
    SourceId(#[from] IdError),
}

/// Basiq sends RFC 3339 (`2020-09-09T11:06:52Z`); an empty string means "none".
pub(crate) fn timestamp(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, BadTimestamp> {
    let Some(text) = value.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(BadTimestamp {
        field,
        value: text.to_owned(),
    })
}

impl ConnectionWire {
    pub(crate) fn into_domain(self) -> Result<Connection, BadTimestamp> {
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
pub(crate) fn connection_id_from_source(source: &str) -> Result<Option<ConnectionId>, IdError> {
    let path = source.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let (Some(id), Some(parent)) = (segments.next(), segments.next()) else {
        return Ok(None);
    };
    if parent != "connections" || id.is_empty() || id.contains('{') {
        return Ok(None);
    }
    ConnectionId::parse(id).map(Some)
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
    pub(crate) fn into_domain(self) -> Result<Job, BadJob> {
        let source = self
            .links
            .and_then(|l| l.source)
            .filter(|s| !s.trim().is_empty() && !s.contains('{'));
        Ok(Job {
            created: timestamp("created", self.created.as_deref())?,
            updated: timestamp("updated", self.updated.as_deref())?,
            has_source: source.is_some(),
            connection_id: source
                .as_deref()
                .map(connection_id_from_source)
                .transpose()?
                .flatten(),
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
    pub(crate) fn into_domain(self) -> Connector {
        Connector {
            institution_id: InstitutionId(self.id),
            method: Method::parse(self.method.as_deref().unwrap_or("")),
            status: ConnectorStatus::parse(self.status.as_deref().unwrap_or("")),
            name: self.institution.and_then(|i| i.name),
        }
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
            let user = serde_json::json!({"id": "u1", "connections": {"data": [{"id": bad}]}});
            assert!(serde_json::from_value::<UserWire>(user).is_err());
        }
        // The connection named by a job's `links.source` is checked too.
        let job: JobWire = serde_json::from_value(serde_json::json!({
            "id": "j1",
            "links": {"source": "https://au-api.basiq.io/users/u1/connections/a%2F..%2Fb"}
        }))
        .unwrap();
        let err = job.into_domain().unwrap_err();
        assert!(matches!(err, BadJob::SourceId(_)), "{err}");
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

    fn load<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_json::from_str(text).expect("fixture parses")
    }

    #[test]
    fn connection_quirks_parse() {
        let list: List<ConnectionWire> =
            load(include_str!("../../tests/fixtures/connections-quirks.json"));
        let conns: Vec<Connection> = list
            .data
            .into_iter()
            .map(|c| c.into_domain().unwrap())
            .collect();
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
        let list: List<JobWire> = load(include_str!("../../tests/fixtures/jobs-quirks.json"));
        let jobs: Vec<Job> = list
            .data
            .into_iter()
            .map(|j| j.into_domain().unwrap())
            .collect();
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
        let env: ErrorEnvelope = load(include_str!("../../tests/fixtures/error-source-null.json"));
        assert_eq!(
            env.correlation_id.as_deref(),
            Some("7f3c2a10-5b1e-4e7e-9d57-0c1a2b3c4d5e")
        );
        assert_eq!(env.data[0].code.as_deref(), Some("access-denied"));
    }

    #[test]
    fn connectors_parse_with_unknown_status() {
        let list: List<ConnectorWire> = load(include_str!("../../tests/fixtures/connectors.json"));
        let connectors: Vec<Connector> = list
            .data
            .into_iter()
            .map(ConnectorWire::into_domain)
            .collect();
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
