//! Property tests: Basiq's answers, mutated and garbled, never panic the decoders.
//!
//! (a) Each recorded shape below (our own fixtures, written from the shapes Basiq sends) gets
//! one field, at any depth, replaced by an arbitrary JSON value or removed; decoding it and
//! converting it to domain types gives a value or a typed error, and a mutated item in a list
//! never costs the good item next to it. The decoded connection and job also go through the
//! planner, which does date arithmetic on what Basiq sent. (b) Arbitrary bytes and every
//! truncation of every fixture go through every decoder.
//!
//! Bounded: [`CASES`] cases per property, a few seconds in all.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use rand::SeedableRng;
use serde_json::{Map, Number, Value, json};

use super::error::{ApiError, Error};
use super::wire::{
    self, ConnectionWire, ConnectorWire, ErrorEnvelope, JobStub, JobWire, RawList, Reference,
    TokenResponse, UserWire,
};
use crate::domain::{Connection, Job, UserId};
use crate::plan::policy::schedule::AutoRefresh;
use crate::plan::{self, ConnectorStatuses, Fetched, PlanSettings, Stored};

/// Cases per property.
const CASES: u32 = 2_000;

fn connection() -> Value {
    json!({
        "type": "connection", "id": "64011b56-988a-4c2c-bfca-16c836cec23f", "status": "active",
        "method": "open-banking", "createdDate": "2026-01-10T09:00:00Z",
        "expiryDate": "2027-01-10T09:00:00Z", "lastUsed": "2026-11-20T02:15:07Z",
        "mfaEnabled": false,
        "institution": {"type": "institution", "id": "AU00000",
                        "links": {"self": "https://au-api.basiq.io/institutions/AU00000"}},
        "links": {"self": "https://au-api.basiq.io/users/u-1/connections/64011b56-988a-4c2c-bfca-16c836cec23f",
                  "institution": "https://au-api.basiq.io/institutions/AU00000"}
    })
}

/// As Basiq's recorded answers are: no `method`, `expiryDate` or `mfaEnabled`.
fn recorded_connection() -> Value {
    let mut c = connection();
    let o = c.as_object_mut().expect("an object");
    o.remove("method");
    o.remove("expiryDate");
    o.remove("mfaEnabled");
    c
}

fn job() -> Value {
    json!({
        "type": "job", "id": "5c50a2d1-0000-4000-8000-00000000000a",
        "created": "2026-11-20T02:15:00Z", "updated": "2026-11-20T02:15:09Z", "jobType": "connection",
        "institution": {"type": "institution", "id": "AU00000",
                        "links": {"self": "https://au-api.basiq.io/institutions/AU00000"}},
        "steps": [
            {"title": "verify-credentials", "status": "failed",
             "result": {"code": "authorization-failed", "title": "Authorization failed", "detail": "access_denied"}},
            {"title": "mfa-challenge", "status": "success",
             "result": [{"type": "mfa", "method": "token", "input": [], "expiryMs": 120000}]},
            {"title": "retrieve-accounts", "status": "success", "result": {"type": "link", "url": "/users/u-1/accounts"}},
            {"title": "retrieve-transactions", "status": "pending", "result": null}
        ],
        "links": {"self": "https://au-api.basiq.io/jobs/5c50a2d1-0000-4000-8000-00000000000a",
                  "source": "https://au-api.basiq.io/users/u-1/connections/64011b56-988a-4c2c-bfca-16c836cec23f"}
    })
}

fn user() -> Value {
    json!({
        "type": "user", "id": "b2af0000-0000-4000-8000-000000000001", "email": "max@hooli.com",
        "mobile": "+61410888666", "name": "Max Elliot", "firstName": "Max", "middleName": "",
        "lastName": "Elliot",
        "connections": {"type": "list", "count": 1, "data": [
            {"type": "connection", "id": "64011b56-988a-4c2c-bfca-16c836cec23f",
             "links": {"self": "https://au-api.basiq.io/users/u-1/connections/64011b56-988a-4c2c-bfca-16c836cec23f"}}]},
        "accounts": {"type": "list", "count": 0, "data": []},
        "links": {"self": "https://au-api.basiq.io/users/u-1"}
    })
}

fn connector() -> Value {
    json!({
        "type": "connector", "id": "AU00000", "method": "web", "stage": "live", "status": "operational",
        "institution": {"type": "Test Bank", "name": "Hooli Bank", "shortName": "Hooli", "tier": "4",
                        "country": "Australia",
                        "logo": {"type": "image", "links": {"full": "https://x/AU00000-full.svg",
                                                            "square": "https://x/AU00000.svg"}}},
        "scopes": ["bank:accounts.basic:read"], "authorization": {"type": "user", "meta": {}},
        "stats": {"averageDurationMs": {"verifyCredentials": 8154, "retrieveAccounts": 3820,
                                        "retrieveTransactions": 7127, "total": 31588}},
        "links": {"self": "https://au-api.basiq.io/connectors/AU00000/web"}
    })
}

fn token() -> Value {
    json!({"access_token": "eyJhbGciOiJIUzI1NiJ9.e30.sig", "token_type": "Bearer", "expires_in": 3600})
}

fn job_stub() -> Value {
    json!({"type": "job", "id": "df9e0000-0000-4000-8000-000000000001",
           "links": {"self": "https://au-api.basiq.io/jobs/df9e0000-0000-4000-8000-000000000001"}})
}

fn error_envelope() -> Value {
    json!({
        "type": "list", "correlationId": "bd1183d9-0000-4000-8000-000000000001",
        "data": [{"type": "error", "code": "resource-not-found", "title": "Requested resource is not found",
                  "detail": "Requested user does not exist.", "source": {"parameter": "userId"}}]
    })
}

/// Every fixture, by name.
fn fixtures() -> Vec<(&'static str, Value)> {
    vec![
        ("connection", connection()),
        ("recorded connection", recorded_connection()),
        ("job", job()),
        ("user", user()),
        ("connector", connector()),
        ("token", token()),
        ("job stub", job_stub()),
        ("error envelope", error_envelope()),
    ]
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Every path in `v`, the root (empty path) included.
fn paths(v: &Value) -> Vec<Vec<Seg>> {
    let mut out = vec![Vec::new()];
    let children: Vec<(Seg, &Value)> = match v {
        Value::Object(m) => m.iter().map(|(k, v)| (Seg::Key(k.clone()), v)).collect(),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (Seg::Index(i), v))
            .collect(),
        _ => Vec::new(),
    };
    for (seg, child) in children {
        for mut p in paths(child) {
            p.insert(0, seg.clone());
            out.push(p);
        }
    }
    out
}

/// Replaces (or, with `None`, removes) the value at `path`.
fn mutate(v: &mut Value, path: &[Seg], with: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        *v = with.unwrap_or(Value::Null);
        return;
    };
    let mut at = v;
    for seg in parents {
        at = match (seg, at) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k).expect("path exists"),
            (Seg::Index(i), Value::Array(a)) => &mut a[*i],
            _ => unreachable!("paths come from the same value"),
        };
    }
    match (last, at, with) {
        (Seg::Key(k), Value::Object(m), Some(w)) => {
            m.insert(k.clone(), w);
        }
        (Seg::Key(k), Value::Object(m), None) => {
            m.remove(k);
        }
        (Seg::Index(i), Value::Array(a), Some(w)) => a[*i] = w,
        (Seg::Index(i), Value::Array(a), None) => {
            a.remove(*i);
        }
        _ => unreachable!("paths come from the same value"),
    }
}

/// Strings that probe the decoders' edges, plus any unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("2020-09-09T11:06:52Z".to_owned()),
        Just("9999-12-31T23:59:59Z".to_owned()),
        Just("0000-01-01T00:00:00Z".to_owned()),
        Just("0001-01-01T00:00:00Z".to_owned()),
        Just("+262143-12-31T23:59:59Z".to_owned()),
        Just("262143-12-31 23:59:59".to_owned()),
        Just("1970-01-01T00:00:00.999999999999Z".to_owned()),
        Just("{source}".to_owned()),
        Just("https://au-api.basiq.io/users/u/connections/../../x".to_owned()),
        Just("https://au-api.basiq.io/users/u/connections/".to_owned()),
        Just("open-banking".to_owned()),
        Just("openbanking".to_owned()),
        Just("failed".to_owned()),
        Just("mfa".to_owned()),
        Just("link".to_owned()),
        Just("resource-not-found".to_owned()),
        any::<String>(),
        "\\PC{0,40}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(i64::MIN)),
        Just(Value::from(u64::MAX)),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        Just(Value::from(1e308)),
        Just(Value::from(-0.0)),
    ]
}

/// Any JSON value: null, bools, numbers (huge, negative, float), strings (unicode), and
/// arrays and objects of them, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let key = prop_oneof![
            Just("id".to_owned()),
            Just("code".to_owned()),
            Just("type".to_owned()),
            Just("url".to_owned()),
            Just("method".to_owned()),
            Just("title".to_owned()),
            Just("status".to_owned()),
            Just("source".to_owned()),
            "\\PC{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn plan_settings() -> PlanSettings {
    PlanSettings {
        stale_after: Duration::from_secs(24 * 3600),
        outage_min_users: 3,
        outage_window: Duration::from_secs(3600),
        auto_refresh: Some(AutoRefresh {
            recovery_window: Duration::from_secs(3600),
            transient_retry_base: Duration::from_secs(600),
            transient_max_retries: 2,
            min_interval: Duration::from_secs(3600),
            per_institution_per_minute: std::num::NonZeroU32::new(10).unwrap(),
        }),
    }
}

/// What Basiq sent, planned as a sweep: the planner must not panic on any value a decoder
/// let through.
fn plan_sweep(connections: Vec<Connection>, jobs: Vec<Job>) {
    for job in &jobs {
        let _ = (job.state(), job.failure_code(), job.shows_mfa());
    }
    let fetched = Fetched {
        connections,
        jobs,
        complete: true,
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
    let _ = plan::plan_user(
        now,
        &UserId::parse("u-1").unwrap(),
        &fetched,
        &Stored::default(),
        &ConnectorStatuses::default(),
        &plan_settings(),
        Some(now + chrono::Duration::hours(24)),
        &mut rand::rngs::StdRng::seed_from_u64(7),
    );
}

/// Decodes `value` as the resource `kind` names, and everything the domain does with it.
/// Returns whether it was read (a typed error is fine; a panic fails the property).
fn decode_as(kind: &str, value: Value) -> bool {
    match kind {
        "connection" | "recorded connection" => {
            match wire::decode_one(value, ConnectionWire::into_domain) {
                Ok(c) => {
                    plan_sweep(vec![c], vec![]);
                    true
                }
                Err(_) => false,
            }
        }
        "job" => match wire::decode_one(value, JobWire::into_domain) {
            Ok(j) => {
                let c = wire::decode_one(connection(), ConnectionWire::into_domain)
                    .expect("the fixture connection reads");
                plan_sweep(vec![c], vec![j]);
                true
            }
            Err(_) => false,
        },
        "user" => match serde_json::from_value::<UserWire>(value) {
            Ok(u) => {
                let refs = u.connections.map(|l| l.data).unwrap_or_default();
                let _ = wire::decode_items(refs, Reference::into_connection_id);
                true
            }
            Err(_) => false,
        },
        "connector" => wire::decode_one(value, ConnectorWire::into_domain).is_ok(),
        "token" => match serde_json::from_value::<TokenResponse>(value) {
            Ok(t) => {
                let _ = wire::token_lifetime(t.expires_in);
                true
            }
            Err(_) => false,
        },
        "job stub" => wire::decode_one(value, JobStub::into_domain).is_ok(),
        "error envelope" => {
            let body = serde_json::to_vec(&value).expect("a value serialises");
            let env = ErrorEnvelope::read(&body);
            for status in [400, 401, 403, 404, 429, 500, 503] {
                let api = ApiError {
                    status,
                    code: env.code.clone(),
                    title: env.title.clone(),
                    detail: env.detail.clone(),
                    correlation_id: env.correlation_id.clone(),
                };
                let err = Error::from_status(status, api, None);
                let _ = (err.is_transient(), err.is_stale_token(), err.to_string());
            }
            true
        }
        other => unreachable!("no fixture {other}"),
    }
}

/// Every decoder over one body: none may panic.
fn every_decoder(body: &[u8]) {
    let value = serde_json::from_slice::<Value>(body).ok();
    let _ = ErrorEnvelope::read(body);
    let _ = serde_json::from_slice::<TokenResponse>(body);
    if let Ok(list) = serde_json::from_slice::<RawList>(body) {
        let _ = wire::decode_items(list.data.clone(), ConnectionWire::into_domain);
        let _ = wire::decode_items(list.data.clone(), JobWire::into_domain);
        let _ = wire::decode_items(list.data, ConnectorWire::into_domain);
    }
    if let Some(v) = value {
        for (kind, _) in fixtures() {
            decode_as(kind, v.clone());
        }
    }
}

#[test]
fn every_fixture_reads_as_it_stands() {
    for (kind, value) in fixtures() {
        assert!(decode_as(kind, value), "{kind}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Property (a): any JSON value in any field (or the field removed) of a recorded shape
    /// gives a value or a typed error; in a list beside a good item, the good one is kept.
    #[test]
    fn any_value_in_any_field_gives_a_value_or_a_typed_error(
        which in 0..8usize,
        pick in any::<prop::sample::Index>(),
        with in prop::option::weighted(0.9, json_value()),
    ) {
        let (kind, mut value) = fixtures().swap_remove(which);
        let all = paths(&value);
        let path = &all[pick.index(all.len())];
        mutate(&mut value, path, with);
        decode_as(kind, value.clone());
        let list_of = |convert_kind: &str, good: Value| {
            let data = vec![good, value.clone()];
            match convert_kind {
                "connection" => {
                    let d = wire::decode_items(data, ConnectionWire::into_domain);
                    (d.items.len(), d.unreadable.len())
                }
                "job" => {
                    let d = wire::decode_items(data, JobWire::into_domain);
                    (d.items.len(), d.unreadable.len())
                }
                _ => {
                    let d = wire::decode_items(data, ConnectorWire::into_domain);
                    (d.items.len(), d.unreadable.len())
                }
            }
        };
        let listed = match kind {
            "connection" | "recorded connection" => Some(list_of("connection", connection())),
            "job" => Some(list_of("job", job())),
            "connector" => Some(list_of("connector", connector())),
            _ => None,
        };
        if let Some((read, unreadable)) = listed {
            prop_assert!(read >= 1, "the good item is kept: {path:?}");
            prop_assert_eq!(read + unreadable, 2);
        }
    }

    /// Property (b): arbitrary bytes never panic a decoder.
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        every_decoder(&body);
    }

    /// Property (b): a body cut anywhere (a dropped connection, a short read) never panics.
    #[test]
    fn truncated_bodies_never_panic(which in 0..8usize, cut in any::<prop::sample::Index>()) {
        let (_, value) = fixtures().swap_remove(which);
        let list = json!({"type": "list", "data": [value.clone(), value]});
        let body = serde_json::to_vec(&list).expect("a value serialises");
        every_decoder(&body[..cut.index(body.len() + 1)]);
    }
}
