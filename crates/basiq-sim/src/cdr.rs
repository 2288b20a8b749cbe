//! The Consumer Data Right's public side, served beside Basiq so the daemon can be tested
//! against it: the CDR Register's brand summary and each data holder brand's discovery
//! endpoints (status and outages), with the Consumer Data Standards' version headers (`x-v`,
//! `x-min-v`), error bodies (`{"errors": [...]}`), a strong ETag on the Register and times
//! written with Sydney's offset; the `/_sim/cdr/` control routes; and the faults a Register or
//! a bank's gateway shows at its worst.
//!
//! Routes, `{sim}` being the simulator's base URL:
//! - `GET {sim}/cdr-register/v1/{banking|all}/data-holders/brands/summary` (`x-v: 2`)
//! - `GET {sim}/cdr/{brandId}/cds-au/v1/discovery/status` (`x-v: 1`)
//! - `GET {sim}/cdr/{brandId}/cds-au/v1/discovery/outages` (`x-v: 1`)
//!
//! and the control routes, without authentication like the rest of `/_sim/`:
//! - `POST /_sim/cdr/brands` (a [`CdrBrand`]: add or replace a brand),
//! - `POST /_sim/cdr/brands/{brandId}/status` (a [`CdrStatus`]),
//! - `POST /_sim/cdr/brands/{brandId}/outages` (`{"outages": [...]}`, each a [`CdrOutage`]),
//! - `POST /_sim/cdr/faults` (`{"target", "fault", "times"?, "delay_ms"?}`: see
//!   [`CdrFault`]) and `DELETE /_sim/cdr/faults`,
//! - `GET /_sim/cdr/counters` ([`CdrCounters`]).
//!
//! The seeded brands ([`CDR_BRANDS`]) pair with the Basiq institutions of `state` by ABN in
//! every way the daemon must cope with: one brand for an ABN, two told apart by name, two it
//! cannot tell apart, none, and brands no Basiq connector names. ABNs are written with and
//! without spaces on both sides, so only a comparison of digits pairs them.
//!
//! It knows nothing of the daemon. Its state lives in the simulator's one `State`, behind the
//! one mutex: a handler locks, reads or changes, and unlocks before it awaits anything.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, TimeDelta, Utc, Weekday};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::state::{INSTITUTIONS, ts};
use super::{RunningSim, Simulator};

/// The version of the Register's brand summary served (the Register's current one).
const REGISTER_VERSION: u32 = 2;
/// The version of the discovery endpoints served.
const DISCOVERY_VERSION: u32 = 1;
/// The `target` of a fault aimed at the Register rather than at one brand.
pub const CDR_REGISTER_TARGET: &str = "register";
/// How long a [`CdrFault::Slow`] answer waits unless told: longer than any sane timeout.
pub const CDR_SLOW_DEFAULT: Duration = Duration::from_secs(30);
/// Every brand's `logoUri`: a name that never resolves, so nothing fetches it by mistake.
const LOGO_URI: &str = "https://example.invalid/logo.png";

/// The CDS version headers. `HeaderName::from_static` needs them lowercase, as they are.
const X_V: HeaderName = HeaderName::from_static("x-v");
const X_MIN_V: HeaderName = HeaderName::from_static("x-min-v");

/// A data holder brand the Register lists from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdrBrandSeed {
    /// `dataHolderBrandId`: fixed, so tests can name it.
    pub brand_id: &'static str,
    pub brand_name: &'static str,
    /// As the Register writes it: spaced for some brands, plain for others, absent for one.
    pub abn: Option<&'static str>,
    pub acn: Option<&'static str>,
    /// The Basiq institution whose ABN this brand shares, if any (whether or not the daemon
    /// can tell this brand from the institution's other brands: see [`cdr_brand_id`]).
    pub institution_id: Option<&'static str>,
}

/// The brands the Register lists when the simulator starts, in the order it lists them.
///
/// | institution | Basiq ABN | brands with that ABN |
/// |---|---|---|
/// | AU00000 Hooli Bank | `11 111 111 111` | Hooli Bank |
/// | AU00001 Aviato Bank | `22222222222` | Aviato (its short name), Aviato Business Banking |
/// | AU00002 Pied Piper Bank | `33 333 333 333` | PP Retail, PP Wholesale (neither by name) |
/// | AU00003 Nucleus Bank | `44444444444` | Nucleus Bank |
/// | AU00004 Raviga Credit Union | `55 555 555 555` | Raviga |
/// | AU00005 Bachmanity Bank | `66666666666` | none |
///
/// and, named by no Basiq institution, Endframe Bank, Gavin Belson Savings and Optimoji Mutual
/// (which has no ABN in the Register).
pub const CDR_BRANDS: &[CdrBrandSeed] = &[
    CdrBrandSeed {
        brand_id: "0b6f3a1e-9c2d-4f7a-8e51-3d2c1b0a0001",
        brand_name: "Hooli Bank",
        abn: Some("11111111111"),
        acn: Some("111111111"),
        institution_id: Some("AU00000"),
    },
    CdrBrandSeed {
        brand_id: "1c7e4b2f-ad3e-4a8b-9f62-4e3d2c1b0002",
        brand_name: "Aviato",
        abn: Some("22 222 222 222"),
        acn: Some("222222222"),
        institution_id: Some("AU00001"),
    },
    CdrBrandSeed {
        brand_id: "2d8f5c3a-be4f-4b9c-8a73-5f4e3d2c0003",
        brand_name: "Aviato Business Banking",
        abn: Some("22222222222"),
        acn: Some("222222222"),
        institution_id: Some("AU00001"),
    },
    CdrBrandSeed {
        brand_id: "3e9a6d4b-cf5a-4cad-9b84-6a5f4e3d0004",
        brand_name: "PP Retail",
        abn: Some("33333333333"),
        acn: Some("333333333"),
        institution_id: Some("AU00002"),
    },
    CdrBrandSeed {
        brand_id: "4fab7e5c-da6b-4dbe-8c95-7b6a5f4e0005",
        brand_name: "PP Wholesale",
        abn: Some("33 333 333 333"),
        acn: Some("333333333"),
        institution_id: Some("AU00002"),
    },
    CdrBrandSeed {
        brand_id: "5abc8f6d-eb7c-4ecf-9da6-8c7b6a5f0006",
        brand_name: "Nucleus Bank",
        abn: Some("44 444 444 444"),
        acn: Some("444444444"),
        institution_id: Some("AU00003"),
    },
    CdrBrandSeed {
        brand_id: "6bcd9a7e-fc8d-4fda-8eb7-9d8c7b6a0007",
        brand_name: "Raviga",
        abn: Some("55555555555"),
        acn: Some("555555555"),
        institution_id: Some("AU00004"),
    },
    CdrBrandSeed {
        brand_id: "7cdeab8f-ad9e-4aeb-9fc8-ae9d8c7b0008",
        brand_name: "Endframe Bank",
        abn: Some("77777777777"),
        acn: Some("777777777"),
        institution_id: None,
    },
    CdrBrandSeed {
        brand_id: "8defbc9a-beaf-4bfc-8ad9-bfae9d8c0009",
        brand_name: "Gavin Belson Savings",
        abn: Some("88 888 888 888"),
        acn: Some("888888888"),
        institution_id: None,
    },
    CdrBrandSeed {
        brand_id: "9efacdab-cfba-4cad-9bea-cabfae9d0010",
        brand_name: "Optimoji Mutual",
        abn: None,
        acn: None,
        institution_id: None,
    },
];

/// The seeded brand a Basiq institution resolves to: the only brand with its ABN (digits
/// compared), or among several the only one whose name equals the institution's name or
/// short name (case, spaces and punctuation aside). `None` when no brand has the ABN, when
/// the name does not settle it (AU00002), or for an institution the simulator does not know.
/// Brands added with [`Simulator::add_cdr_brand`] are not considered.
pub fn cdr_brand_id(institution_id: &str) -> Option<&'static str> {
    let institution = INSTITUTIONS.iter().find(|i| i.id == institution_id)?;
    let abn = abn_digits(institution.abn?);
    let same_abn: Vec<&CdrBrandSeed> = CDR_BRANDS
        .iter()
        .filter(|b| b.abn.map(abn_digits).as_deref() == Some(abn.as_str()))
        .collect();
    if let [only] = same_abn.as_slice() {
        return Some(only.brand_id);
    }
    let names = [
        normalise_name(institution.name),
        normalise_name(institution.short_name),
    ];
    let named: Vec<&&CdrBrandSeed> = same_abn
        .iter()
        .filter(|b| names.contains(&normalise_name(b.brand_name)))
        .collect();
    match named.as_slice() {
        [one] => Some(one.brand_id),
        _ => None,
    }
}

/// The id of the seeded brand called `brand_name` (exactly as listed).
pub fn cdr_brand_id_named(brand_name: &str) -> Option<&'static str> {
    CDR_BRANDS
        .iter()
        .find(|b| b.brand_name == brand_name)
        .map(|b| b.brand_id)
}

fn abn_digits(abn: &str) -> String {
    abn.chars().filter(char::is_ascii_digit).collect()
}

fn normalise_name(name: &str) -> String {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

const AEST: FixedOffset = match FixedOffset::east_opt(10 * 3600) {
    Some(offset) => offset,
    None => panic!("+10:00 is a valid offset"),
};
const AEDT: FixedOffset = match FixedOffset::east_opt(11 * 3600) {
    Some(offset) => offset,
    None => panic!("+11:00 is a valid offset"),
};

/// Sydney's offset from UTC at `t`: `+11:00` during daylight saving, from 02:00 standard time
/// on the first Sunday of October until 03:00 daylight time on the first Sunday of April,
/// `+10:00` otherwise (the rule since 2008). chrono alone: the simulator carries no time zone
/// database, and one rule is all a data holder's timestamps need.
pub fn sydney_offset(t: DateTime<Utc>) -> FixedOffset {
    let year = chrono::Datelike::year(&t);
    // Both changes fall at 16:00 UTC on the Saturday before: 03:00 at +11:00 in April,
    // 02:00 at +10:00 in October.
    let ends = first_sunday_at(year, 4, 3, AEDT);
    let starts = first_sunday_at(year, 10, 2, AEST);
    match (ends, starts) {
        (Some(ends), Some(starts)) if t < ends || t >= starts => AEDT,
        _ => AEST,
    }
}

/// `t` in RFC 3339, to the second, with Sydney's offset at that instant, as a data holder
/// in Sydney writes its times: `2026-01-15T11:00:00+11:00`.
pub fn sydney_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&sydney_offset(t))
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// The instant the local clock at `offset` reads `hour`:00 on the first Sunday of `month`.
fn first_sunday_at(year: i32, month: u32, hour: u32, offset: FixedOffset) -> Option<DateTime<Utc>> {
    let day = NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Sun, 1)?;
    let local = day.and_hms_opt(hour, 0, 0)?;
    Some(local.and_utc() - TimeDelta::seconds(i64::from(offset.local_minus_utc())))
}

/// A time given as text, re-written with Sydney's offset when it is RFC 3339; anything else
/// is served as given, so a test can send a time the daemon must refuse.
fn sydney_or_verbatim(text: &str) -> String {
    DateTime::parse_from_rfc3339(text)
        .map(|t| sydney_time(t.with_timezone(&Utc)))
        .unwrap_or_else(|_| text.to_owned())
}

/// What a brand's `discovery/status` says, as set by a test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdrStatus {
    /// `OK`, `PARTIAL_FAILURE`, `SCHEDULED_OUTAGE`, `UNAVAILABLE`: served verbatim, so an
    /// unknown value can be sent too.
    pub status: String,
    /// Served when set; the standard requires it for anything but `OK`, and leaving it out
    /// is how a test sends a brand that breaks that rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// RFC 3339 in any offset (served with Sydney's), or any other text (served verbatim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_time: Option<String>,
    /// As `detection_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_resolution_time: Option<String>,
}

impl CdrStatus {
    /// `status` with an optional explanation and no times.
    pub fn new(status: &str, explanation: Option<&str>) -> Self {
        Self {
            status: status.to_owned(),
            explanation: explanation.map(str::to_owned),
            detection_time: None,
            expected_resolution_time: None,
        }
    }
}

/// One outage a brand's `discovery/outages` lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdrOutage {
    /// RFC 3339 in any offset (served with Sydney's), or any other text (served verbatim).
    pub outage_time: String,
    /// Served verbatim: every ISO 8601 shape (`PT2H30M`, `P1D`, `PT0.5H`), or none at all.
    pub duration: String,
    /// `isPartial`, left out when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_partial: Option<bool>,
    pub explanation: String,
}

/// A brand the Register lists, added or replaced by a test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdrBrand {
    pub brand_id: String,
    pub brand_name: String,
    /// Left out of the Register's answer when `None`.
    #[serde(default)]
    pub abn: Option<String>,
    #[serde(default)]
    pub acn: Option<String>,
    /// Served verbatim (an `http://` base on another host, say); `None` is the simulator's
    /// own `{sim}/cdr/{brandId}`, where the discovery routes answer.
    #[serde(default)]
    pub public_base_uri: Option<String>,
}

impl From<&CdrBrandSeed> for CdrBrand {
    fn from(seed: &CdrBrandSeed) -> Self {
        Self {
            brand_id: seed.brand_id.to_owned(),
            brand_name: seed.brand_name.to_owned(),
            abn: seed.abn.map(str::to_owned),
            acn: seed.acn.map(str::to_owned),
            public_base_uri: None,
        }
    }
}

/// What an injected CDR fault does to a request of its target (the Register or one brand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdrFault {
    /// The connection is closed without any HTTP answer (hyper is made to abandon the
    /// response, as for the Basiq routes' `Fault::Drop`); no 503.
    Down,
    /// Waits this long, then answers normally ([`CDR_SLOW_DEFAULT`] unless told).
    Slow(Duration),
    /// 406 with the CDS `Header/UnsupportedVersion` error, whatever `x-v` says.
    NotAcceptable,
    /// 200 `application/json` with a body cut short: `{"data": {"status": `.
    Malformed,
    /// Discovery status only: 200 `UNAVAILABLE` without the `explanation` the standard
    /// requires. Aimed at the Register, or met by an outages request, it is passed over and
    /// stays queued.
    MissingExplanation,
    /// 404 `text/html`: a gateway's page instead of a CDS error body.
    GatewayNotFound,
}

impl CdrFault {
    /// The name used by the control route: `down`, `slow`, `406`, `malformed`,
    /// `missing-explanation`, `html-404`.
    pub fn name(self) -> &'static str {
        match self {
            CdrFault::Down => "down",
            CdrFault::Slow(_) => "slow",
            CdrFault::NotAcceptable => "406",
            CdrFault::Malformed => "malformed",
            CdrFault::MissingExplanation => "missing-explanation",
            CdrFault::GatewayNotFound => "html-404",
        }
    }

    /// The fault called `name`; `slow_delay` is the wait of `slow` ([`CDR_SLOW_DEFAULT`]
    /// when `None`) and is ignored by the others.
    pub fn from_name(name: &str, slow_delay: Option<Duration>) -> Result<Self, UnknownCdrFault> {
        Ok(match name {
            "down" => CdrFault::Down,
            "slow" => CdrFault::Slow(slow_delay.unwrap_or(CDR_SLOW_DEFAULT)),
            "406" => CdrFault::NotAcceptable,
            "malformed" => CdrFault::Malformed,
            "missing-explanation" => CdrFault::MissingExplanation,
            "html-404" => CdrFault::GatewayNotFound,
            other => return Err(UnknownCdrFault(other.to_owned())),
        })
    }

    fn applies_to(self, endpoint: Endpoint) -> bool {
        !matches!(self, CdrFault::MissingExplanation) || endpoint == Endpoint::Status
    }
}

impl fmt::Display for CdrFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CdrFault {
    type Err = UnknownCdrFault;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s, None)
    }
}

/// A fault name that is not one of the simulator's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown CDR fault {0:?}: expected one of down, slow, 406, malformed, missing-explanation, html-404"
)]
pub struct UnknownCdrFault(pub String);

/// What the CDR routes have been asked, faulted requests included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdrCounters {
    /// Requests to the Register's brand summary, 304s included.
    pub register: u64,
    /// Of those, the ones answered 304 Not Modified.
    pub register_not_modified: u64,
    /// Requests to `discovery/status`, by the brand id in the path (known or not).
    pub status: BTreeMap<String, u64>,
    /// Requests to `discovery/outages`, by the brand id in the path (known or not).
    pub outages: BTreeMap<String, u64>,
}

/// Which CDR endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Register,
    Status,
    Outages,
}

/// A brand as the Register lists it.
struct Listed {
    brand: CdrBrand,
    last_updated: DateTime<Utc>,
}

/// A status as set, and when (the `updateTime` served).
struct SetStatus {
    status: CdrStatus,
    at: DateTime<Utc>,
}

struct QueuedFault {
    fault: CdrFault,
    /// `None`: until cleared.
    left: Option<u32>,
}

/// The CDR side of the simulator's state.
pub(super) struct CdrState {
    brands: Vec<Listed>,
    /// Bumped by every change to `brands`: the Register's ETag is made of it.
    version: u64,
    /// A brand not in here is `OK` since the simulator started.
    statuses: HashMap<String, SetStatus>,
    outages: HashMap<String, Vec<CdrOutage>>,
    /// By target: [`CDR_REGISTER_TARGET`] or a brand id.
    faults: HashMap<String, VecDeque<QueuedFault>>,
    counters: CdrCounters,
    started: DateTime<Utc>,
}

impl CdrState {
    /// The seeded brands, all `OK` since `now`, no outage, no fault.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            brands: CDR_BRANDS
                .iter()
                .map(|seed| Listed {
                    brand: CdrBrand::from(seed),
                    last_updated: now,
                })
                .collect(),
            version: 1,
            statuses: HashMap::new(),
            outages: HashMap::new(),
            faults: HashMap::new(),
            counters: CdrCounters::default(),
            started: now,
        }
    }

    pub fn reset_counters(&mut self) {
        self.counters = CdrCounters::default();
    }

    fn brand(&self, brand_id: &str) -> Option<&CdrBrand> {
        self.brands
            .iter()
            .map(|l| &l.brand)
            .find(|b| b.brand_id == brand_id)
    }

    /// A strong ETag that changes whenever the list of brands does.
    fn etag(&self) -> String {
        format!("\"cdr-register-{}\"", self.version)
    }

    fn add_brand(&mut self, brand: CdrBrand, now: DateTime<Utc>) {
        let listed = Listed {
            brand,
            last_updated: now,
        };
        match self
            .brands
            .iter_mut()
            .find(|l| l.brand.brand_id == listed.brand.brand_id)
        {
            Some(existing) => *existing = listed,
            None => self.brands.push(listed),
        }
        self.version += 1;
    }

    /// Counts the request, then hands out the first fault queued for `target` that applies
    /// to `endpoint`.
    fn on_request(&mut self, target: &str, endpoint: Endpoint) -> Option<CdrFault> {
        match endpoint {
            Endpoint::Register => self.counters.register += 1,
            Endpoint::Status => *self.counters.status.entry(target.to_owned()).or_default() += 1,
            Endpoint::Outages => *self.counters.outages.entry(target.to_owned()).or_default() += 1,
        }
        let queue = self.faults.get_mut(target)?;
        let at = queue.iter().position(|q| q.fault.applies_to(endpoint))?;
        let fault = queue[at].fault;
        if let Some(left) = &mut queue[at].left {
            *left = left.saturating_sub(1);
            if *left == 0 {
                queue.remove(at);
            }
        }
        tracing::debug!(target, %fault, "simulator applying a CDR fault");
        Some(fault)
    }

    fn public_base_uri(brand: &CdrBrand, base: &str) -> String {
        brand
            .public_base_uri
            .clone()
            .unwrap_or_else(|| format!("{base}/cdr/{}", brand.brand_id))
    }

    fn register_json(&self, base: &str, industry: &str) -> Value {
        let data: Vec<Value> = self
            .brands
            .iter()
            .map(
                |Listed {
                     brand,
                     last_updated,
                 }| {
                    let mut entry = json!({
                        "dataHolderBrandId": brand.brand_id,
                        "brandName": brand.brand_name,
                        "publicBaseUri": Self::public_base_uri(brand, base),
                        "logoUri": LOGO_URI,
                        "industries": ["banking"],
                        "lastUpdated": ts(*last_updated),
                        "interimId": null,
                    });
                    if let Some(abn) = &brand.abn {
                        entry["abn"] = json!(abn);
                    }
                    if let Some(acn) = &brand.acn {
                        entry["acn"] = json!(acn);
                    }
                    entry
                },
            )
            .collect();
        json!({
            "data": data,
            "links": {"self": format!("{base}/cdr-register/v1/{industry}/data-holders/brands/summary")},
            "meta": {},
        })
    }

    fn status_data(&self, brand_id: &str) -> Value {
        let default = SetStatus {
            status: CdrStatus::new("OK", None),
            at: self.started,
        };
        let SetStatus { status, at } = self.statuses.get(brand_id).unwrap_or(&default);
        let mut data = json!({"status": status.status, "updateTime": sydney_time(*at)});
        if let Some(explanation) = &status.explanation {
            data["explanation"] = json!(explanation);
        }
        if let Some(t) = &status.detection_time {
            data["detectionTime"] = json!(sydney_or_verbatim(t));
        }
        if let Some(t) = &status.expected_resolution_time {
            data["expectedResolutionTime"] = json!(sydney_or_verbatim(t));
        }
        data
    }

    fn outages_data(&self, brand_id: &str) -> Value {
        let outages: Vec<Value> = self
            .outages
            .get(brand_id)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|o| {
                let mut outage = json!({
                    "outageTime": sydney_or_verbatim(&o.outage_time),
                    "duration": o.duration,
                    "explanation": o.explanation,
                });
                if let Some(partial) = o.is_partial {
                    outage["isPartial"] = json!(partial);
                }
                outage
            })
            .collect();
        json!({"outages": outages})
    }
}

impl Simulator {
    /// The Register's base as the daemon configures it (`register_url`):
    /// `{base}/cdr-register/v1`, `base` being the simulator's base URL.
    pub fn cdr_register_url(&self, base: &str) -> String {
        format!("{}/cdr-register/v1", base.trim_end_matches('/'))
    }

    /// The `publicBaseUri` the Register gives a brand of the simulator's own:
    /// `{base}/cdr/{brand_id}`.
    pub fn cdr_public_base_uri(&self, base: &str, brand_id: &str) -> String {
        format!("{}/cdr/{brand_id}", base.trim_end_matches('/'))
    }

    /// Sets what the brand's `discovery/status` says, `updateTime` being now by the
    /// simulator's clock. False (and nothing set) when the Register has no such brand.
    pub fn set_cdr_status(&self, brand_id: &str, status: &str, explanation: Option<&str>) -> bool {
        self.set_cdr_status_detail(brand_id, CdrStatus::new(status, explanation))
    }

    /// As [`Simulator::set_cdr_status`], with detection and expected resolution times.
    pub fn set_cdr_status_detail(&self, brand_id: &str, status: CdrStatus) -> bool {
        let now = self.now();
        let mut st = self.lock();
        if st.cdr.brand(brand_id).is_none() {
            return false;
        }
        tracing::info!(brand_id, status = %status.status, "simulator CDR status set");
        st.cdr
            .statuses
            .insert(brand_id.to_owned(), SetStatus { status, at: now });
        true
    }

    /// Replaces the outages the brand's `discovery/outages` lists. False (and nothing set)
    /// when the Register has no such brand.
    pub fn set_cdr_outages(&self, brand_id: &str, outages: Vec<CdrOutage>) -> bool {
        let mut st = self.lock();
        if st.cdr.brand(brand_id).is_none() {
            return false;
        }
        tracing::info!(
            brand_id,
            outages = outages.len(),
            "simulator CDR outages set"
        );
        st.cdr.outages.insert(brand_id.to_owned(), outages);
        true
    }

    /// The next `times` requests to `target` ([`CDR_REGISTER_TARGET`] or a brand id, known
    /// or not) get `fault`, after any faults queued for it before; `None`: every request
    /// until [`Simulator::clear_cdr_faults`] (and the faults queued after it wait as long).
    pub fn inject_cdr_fault(&self, target: &str, fault: CdrFault, times: Option<u32>) {
        if times == Some(0) {
            return;
        }
        tracing::info!(target, %fault, ?times, "simulator CDR fault injected");
        self.lock()
            .cdr
            .faults
            .entry(target.to_owned())
            .or_default()
            .push_back(QueuedFault { fault, left: times });
    }

    /// Drops every queued CDR fault.
    pub fn clear_cdr_faults(&self) {
        self.lock().cdr.faults.clear();
    }

    /// Adds a brand to the Register, or replaces the one with its id; either way the
    /// Register's ETag changes. A new brand is `OK`, without outages.
    pub fn add_cdr_brand(&self, brand: CdrBrand) {
        tracing::info!(brand_id = %brand.brand_id, "simulator CDR brand added");
        let now = self.now();
        self.lock().cdr.add_brand(brand, now);
    }

    /// Every brand the Register lists, in its order.
    pub fn cdr_brands(&self) -> Vec<CdrBrand> {
        self.lock()
            .cdr
            .brands
            .iter()
            .map(|l| l.brand.clone())
            .collect()
    }

    /// The Register's current ETag (quotes included, as in the header).
    pub fn cdr_register_etag(&self) -> String {
        self.lock().cdr.etag()
    }

    /// A snapshot of the CDR counters.
    pub fn cdr_counters(&self) -> CdrCounters {
        self.lock().cdr.counters.clone()
    }
}

impl RunningSim {
    /// `http://127.0.0.1:PORT/cdr-register/v1`: what the daemon uses as the Register's URL.
    pub fn cdr_register_url(&self) -> String {
        self.sim.cdr_register_url(&self.base_url())
    }
}

/// A CDS error: `{"errors": [{"code", "title", "detail"}]}`.
#[derive(Debug)]
struct CdsError {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: String,
}

impl CdsError {
    fn header_missing(header: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "urn:au-cds:error:cds-all:Header/Missing",
            title: "Missing Required Header",
            detail: header.to_owned(),
        }
    }

    /// The standard's answer to a version header that is not a positive integer.
    fn invalid_version(header: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "urn:au-cds:error:cds-all:Header/InvalidVersion",
            title: "Invalid Version",
            detail: header.to_owned(),
        }
    }

    fn unsupported_version(detail: String) -> Self {
        Self {
            status: StatusCode::NOT_ACCEPTABLE,
            code: "urn:au-cds:error:cds-all:Header/UnsupportedVersion",
            title: "Unsupported Version",
            detail,
        }
    }

    fn not_found(detail: String) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "urn:au-cds:error:cds-all:Resource/NotFound",
            title: "Resource Not Found",
            detail,
        }
    }

    fn invalid_field(detail: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "urn:au-cds:error:cds-all:Field/Invalid",
            title: "Invalid Field",
            detail,
        }
    }
}

impl IntoResponse for CdsError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
        }]});
        (self.status, Json(body)).into_response()
    }
}

type CdsResult = Result<Response, CdsError>;

/// Checks `x-v` (and `x-min-v`) against the one version an endpoint serves, the standard's
/// way: the client asks for `x-v` or anything down to `x-min-v`, and a range without the
/// served version is a 406. An `x-min-v` not below `x-v` counts as absent.
fn negotiate(headers: &HeaderMap, served: u32) -> Result<(), CdsError> {
    let Some(raw) = headers.get(X_V) else {
        return Err(CdsError::header_missing("x-v"));
    };
    let wanted = version(raw.to_str().ok()).ok_or_else(|| CdsError::invalid_version("x-v"))?;
    let lowest = match headers.get(X_MIN_V) {
        None => wanted,
        Some(raw) => version(raw.to_str().ok())
            .ok_or_else(|| CdsError::invalid_version("x-min-v"))?
            .min(wanted),
    };
    if (lowest..=wanted).contains(&served) {
        Ok(())
    } else {
        Err(CdsError::unsupported_version(format!(
            "Only version {served} is served"
        )))
    }
}

/// A version header's value: a positive integer, digits only.
fn version(text: Option<&str>) -> Option<u32> {
    let text = text?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|v| *v > 0)
}

/// Whether `If-None-Match` names `etag` (or `*`), compared weakly as RFC 9110 says.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The answer a fault gives instead of the endpoint's, after waiting for a slow one; `None`
/// when the endpoint answers (a slow fault, once waited, and `missing-explanation`, which
/// the status handler applies itself).
async fn faulted(fault: Option<CdrFault>) -> Option<Response> {
    match fault? {
        CdrFault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        CdrFault::MissingExplanation => None,
        CdrFault::Down => Some(super::routes::dropped()),
        CdrFault::NotAcceptable => Some(
            CdsError::unsupported_version("The requested version is not supported".to_owned())
                .into_response(),
        ),
        CdrFault::Malformed => Some(
            (
                StatusCode::OK,
                [(CONTENT_TYPE, "application/json")],
                r#"{"data": {"status": "#,
            )
                .into_response(),
        ),
        CdrFault::GatewayNotFound => Some(super::shapes::gateway_page(404)),
    }
}

pub(super) fn router() -> Router<Simulator> {
    Router::new()
        .route(
            "/cdr-register/v1/{industry}/data-holders/brands/summary",
            get(register),
        )
        .route("/cdr/{brand_id}/cds-au/v1/discovery/status", get(status))
        .route("/cdr/{brand_id}/cds-au/v1/discovery/outages", get(outages))
        .route("/_sim/cdr/brands", post(ctl_add_brand))
        .route("/_sim/cdr/brands/{brand_id}/status", post(ctl_status))
        .route("/_sim/cdr/brands/{brand_id}/outages", post(ctl_outages))
        .route("/_sim/cdr/faults", post(ctl_fault).delete(ctl_clear_faults))
        .route("/_sim/cdr/counters", get(ctl_counters))
}

async fn register(
    State(sim): State<Simulator>,
    Path(industry): Path<String>,
    headers: HeaderMap,
) -> CdsResult {
    let fault = sim
        .lock()
        .cdr
        .on_request(CDR_REGISTER_TARGET, Endpoint::Register);
    if let Some(answer) = faulted(fault).await {
        return Ok(answer);
    }
    negotiate(&headers, REGISTER_VERSION)?;
    // Every brand here is a bank; the Register's other industries would list none of them.
    if industry != "banking" && industry != "all" {
        return Err(CdsError::invalid_field(format!(
            "industry {industry:?}: the simulator's Register serves banking and all"
        )));
    }
    let base = sim.base_url(&headers);
    let mut st = sim.lock();
    let etag = st.cdr.etag();
    let served = REGISTER_VERSION.to_string();
    if not_modified(&headers, &etag) {
        st.cdr.counters.register_not_modified += 1;
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(ETAG, etag.as_str()), (X_V, served.as_str())],
        )
            .into_response());
    }
    let body = st.cdr.register_json(&base, &industry);
    Ok((
        StatusCode::OK,
        [(ETAG, etag.as_str()), (X_V, served.as_str())],
        Json(body),
    )
        .into_response())
}

/// What both discovery endpoints do first: count, apply a fault, find the brand, check the
/// version. `Err(answer)` is the answer already decided; `Ok` the brand's `publicBaseUri`.
async fn discovery(
    sim: &Simulator,
    brand_id: &str,
    endpoint: Endpoint,
    headers: &HeaderMap,
) -> Result<(String, Option<CdrFault>), Response> {
    let fault = sim.lock().cdr.on_request(brand_id, endpoint);
    if let Some(answer) = faulted(fault).await {
        return Err(answer);
    }
    let base = sim.base_url(headers);
    let public_base = sim
        .lock()
        .cdr
        .brand(brand_id)
        .map(|b| CdrState::public_base_uri(b, &base))
        .ok_or_else(|| {
            CdsError::not_found(format!("No data holder brand {brand_id}")).into_response()
        })?;
    negotiate(headers, DISCOVERY_VERSION).map_err(IntoResponse::into_response)?;
    Ok((public_base, fault))
}

fn discovery_answer(data: Value, self_link: String) -> Response {
    (
        StatusCode::OK,
        [(X_V, DISCOVERY_VERSION.to_string())],
        Json(json!({"data": data, "links": {"self": self_link}, "meta": {}})),
    )
        .into_response()
}

async fn status(
    State(sim): State<Simulator>,
    Path(brand_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (public_base, fault) = match discovery(&sim, &brand_id, Endpoint::Status, &headers).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let data = if fault == Some(CdrFault::MissingExplanation) {
        json!({"status": "UNAVAILABLE", "updateTime": sydney_time(sim.now())})
    } else {
        sim.lock().cdr.status_data(&brand_id)
    };
    discovery_answer(data, format!("{public_base}/cds-au/v1/discovery/status"))
}

async fn outages(
    State(sim): State<Simulator>,
    Path(brand_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (public_base, _) = match discovery(&sim, &brand_id, Endpoint::Outages, &headers).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let data = sim.lock().cdr.outages_data(&brand_id);
    discovery_answer(data, format!("{public_base}/cds-au/v1/discovery/outages"))
}

// ---- control routes --------------------------------------------------------------------

/// `POST /_sim/cdr/brands` with a [`CdrBrand`].
async fn ctl_add_brand(State(sim): State<Simulator>, Json(brand): Json<CdrBrand>) -> StatusCode {
    sim.add_cdr_brand(brand);
    StatusCode::NO_CONTENT
}

/// `POST /_sim/cdr/brands/{id}/status` with a [`CdrStatus`]; 404 for a brand not listed.
async fn ctl_status(
    State(sim): State<Simulator>,
    Path(brand_id): Path<String>,
    Json(status): Json<CdrStatus>,
) -> CdsResult {
    if sim.set_cdr_status_detail(&brand_id, status) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(CdsError::not_found(format!(
            "No data holder brand {brand_id}"
        )))
    }
}

#[derive(Deserialize)]
struct OutagesBody {
    outages: Vec<CdrOutage>,
}

/// `POST /_sim/cdr/brands/{id}/outages` `{"outages": [...]}`; 404 for a brand not listed.
async fn ctl_outages(
    State(sim): State<Simulator>,
    Path(brand_id): Path<String>,
    Json(body): Json<OutagesBody>,
) -> CdsResult {
    if sim.set_cdr_outages(&brand_id, body.outages) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(CdsError::not_found(format!(
            "No data holder brand {brand_id}"
        )))
    }
}

#[derive(Deserialize)]
struct FaultBody {
    target: String,
    fault: String,
    /// Absent: until cleared.
    #[serde(default)]
    times: Option<u32>,
    /// The wait of a `slow` fault; [`CDR_SLOW_DEFAULT`] when absent.
    #[serde(default)]
    delay_ms: Option<u64>,
}

/// `POST /_sim/cdr/faults` `{"target", "fault", "times"?, "delay_ms"?}`; 400 for a fault
/// name the simulator does not know.
async fn ctl_fault(State(sim): State<Simulator>, Json(body): Json<FaultBody>) -> Response {
    match CdrFault::from_name(&body.fault, body.delay_ms.map(Duration::from_millis)) {
        Ok(fault) => {
            sim.inject_cdr_fault(&body.target, fault, body.times);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// `DELETE /_sim/cdr/faults`.
async fn ctl_clear_faults(State(sim): State<Simulator>) -> StatusCode {
    sim.clear_cdr_faults();
    StatusCode::NO_CONTENT
}

async fn ctl_counters(State(sim): State<Simulator>) -> Json<CdrCounters> {
    Json(sim.cdr_counters())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::SimConfig;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    const HOOLI: &str = "0b6f3a1e-9c2d-4f7a-8e51-3d2c1b0a0001";
    const RAVIGA: &str = "6bcd9a7e-fc8d-4fda-8eb7-9d8c7b6a0007";
    /// In daylight saving: 11:00 in Sydney.
    const JANUARY: &str = "2026-01-15T00:00:00Z";

    /// A simulator on a loopback port whose clock stands still at `now`.
    async fn serve_at(now: &str) -> RunningSim {
        let now = at(now);
        Simulator::new(SimConfig {
            users: 2,
            clock: Arc::new(move || now),
            ..SimConfig::default()
        })
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
    }

    struct Client {
        http: reqwest::Client,
        base: String,
    }

    impl Client {
        fn of(running: &RunningSim) -> Self {
            Self {
                http: reqwest::Client::new(),
                base: running.base_url(),
            }
        }

        async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
            self.try_get(path, headers).await.unwrap()
        }

        async fn try_get(
            &self,
            path: &str,
            headers: &[(&str, &str)],
        ) -> reqwest::Result<reqwest::Response> {
            let mut request = self.http.get(format!("{}{path}", self.base));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send().await
        }

        async fn post(&self, path: &str, body: Value) -> reqwest::StatusCode {
            self.http
                .post(format!("{}{path}", self.base))
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
        }

        async fn fault(&self, body: Value) {
            assert_eq!(
                self.post("/_sim/cdr/faults", body).await,
                reqwest::StatusCode::NO_CONTENT
            );
        }
    }

    async fn json_of(response: reqwest::Response) -> Value {
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    const REGISTER: &str = "/cdr-register/v1/banking/data-holders/brands/summary";

    fn status_path(brand_id: &str) -> String {
        format!("/cdr/{brand_id}/cds-au/v1/discovery/status")
    }

    fn outages_path(brand_id: &str) -> String {
        format!("/cdr/{brand_id}/cds-au/v1/discovery/outages")
    }

    // ---- pure ----------------------------------------------------------------------

    #[test]
    fn sydney_is_at_plus_eleven_until_three_in_the_morning_on_the_first_sunday_of_april_2026() {
        // Sunday 5 April 2026, 03:00 at +11:00 = 16:00 UTC on the Saturday.
        assert_eq!(
            sydney_time(at("2026-04-04T15:59:59Z")),
            "2026-04-05T02:59:59+11:00"
        );
        assert_eq!(
            sydney_time(at("2026-04-04T16:00:00Z")),
            "2026-04-05T02:00:00+10:00"
        );
        assert_eq!(sydney_offset(at("2026-04-04T16:00:00Z")), AEST);
    }

    #[test]
    fn sydney_moves_to_plus_eleven_at_two_in_the_morning_on_the_first_sunday_of_october_2026() {
        // Sunday 4 October 2026, 02:00 at +10:00 = 16:00 UTC on the Saturday.
        assert_eq!(
            sydney_time(at("2026-10-03T15:59:59Z")),
            "2026-10-04T01:59:59+10:00"
        );
        assert_eq!(
            sydney_time(at("2026-10-03T16:00:00Z")),
            "2026-10-04T03:00:00+11:00"
        );
        assert_eq!(sydney_offset(at("2026-10-03T16:00:00Z")), AEDT);
    }

    #[test]
    fn sydney_times_carry_the_offset_of_their_own_instant_across_the_year() {
        for (utc, sydney) in [
            ("2026-01-01T00:00:00Z", "2026-01-01T11:00:00+11:00"),
            ("2025-12-31T13:30:00Z", "2026-01-01T00:30:00+11:00"),
            ("2026-07-01T00:00:00Z", "2026-07-01T10:00:00+10:00"),
            // 2025: the changes fell on 6 April and 5 October.
            ("2025-04-05T15:59:59Z", "2025-04-06T02:59:59+11:00"),
            ("2025-04-05T16:00:00Z", "2025-04-06T02:00:00+10:00"),
            ("2025-10-04T16:00:00Z", "2025-10-05T03:00:00+11:00"),
        ] {
            assert_eq!(sydney_time(at(utc)), sydney, "{utc}");
        }
    }

    #[test]
    fn a_time_that_is_not_rfc_3339_is_served_as_given() {
        assert_eq!(
            sydney_or_verbatim("2026-07-01T09:00:00+09:00"),
            "2026-07-01T10:00:00+10:00"
        );
        assert_eq!(sydney_or_verbatim("next tuesday"), "next tuesday");
    }

    #[test]
    fn institutions_resolve_to_the_brand_their_abn_and_name_point_to() {
        for (institution, brand) in [
            ("AU00000", Some("Hooli Bank")),
            ("AU00001", Some("Aviato")),
            ("AU00002", None),
            ("AU00003", Some("Nucleus Bank")),
            ("AU00004", Some("Raviga")),
            ("AU00005", None),
            ("AU99999", None),
        ] {
            assert_eq!(
                cdr_brand_id(institution),
                brand.map(|name| cdr_brand_id_named(name).unwrap()),
                "{institution}"
            );
        }
        assert_eq!(cdr_brand_id("AU00000"), Some(HOOLI));
    }

    #[test]
    fn seeded_brand_ids_are_distinct_lowercase_uuids() {
        let mut seen = std::collections::HashSet::new();
        for brand in CDR_BRANDS {
            let id = brand.brand_id;
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{id}"
            );
            assert!(seen.insert(id), "{id} twice");
        }
    }

    #[test]
    fn every_seeded_brand_names_the_institution_whose_abn_digits_it_shares() {
        for brand in CDR_BRANDS {
            let sharing = INSTITUTIONS
                .iter()
                .find(|i| i.abn.map(abn_digits) == brand.abn.map(abn_digits))
                .map(|i| i.id);
            assert_eq!(brand.institution_id, sharing, "{}", brand.brand_name);
        }
        let shared = |id| {
            CDR_BRANDS
                .iter()
                .filter(|b| b.institution_id == Some(id))
                .count()
        };
        assert_eq!(shared("AU00001"), 2);
        assert_eq!(shared("AU00002"), 2);
        assert_eq!(shared("AU00005"), 0);
    }

    #[test]
    fn version_headers_are_negotiated_the_standards_way() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            h
        };
        let code = |pairs: &[(&str, &str)]| {
            negotiate(&headers(pairs), 2)
                .err()
                .map(|e| (e.status.as_u16(), e.code))
        };
        assert_eq!(code(&[("x-v", "2")]), None);
        assert_eq!(code(&[("x-v", "3"), ("x-min-v", "1")]), None);
        assert_eq!(code(&[("x-v", "3"), ("x-min-v", "2")]), None);
        assert_eq!(
            code(&[]),
            Some((400, "urn:au-cds:error:cds-all:Header/Missing"))
        );
        for bad in ["two", "", "-2", "0", "+2", "2.0"] {
            assert_eq!(
                code(&[("x-v", bad)]),
                Some((400, "urn:au-cds:error:cds-all:Header/InvalidVersion")),
                "{bad:?}"
            );
        }
        assert_eq!(
            code(&[("x-v", "2"), ("x-min-v", "one")]),
            Some((400, "urn:au-cds:error:cds-all:Header/InvalidVersion"))
        );
        let unsupported = Some((406, "urn:au-cds:error:cds-all:Header/UnsupportedVersion"));
        assert_eq!(code(&[("x-v", "1")]), unsupported);
        assert_eq!(code(&[("x-v", "3")]), unsupported);
        assert_eq!(code(&[("x-v", "4"), ("x-min-v", "3")]), unsupported);
        // An x-min-v at or above x-v counts as absent.
        assert_eq!(code(&[("x-v", "3"), ("x-min-v", "5")]), unsupported);
        assert_eq!(code(&[("x-v", "2"), ("x-min-v", "5")]), None);
    }

    #[test]
    fn if_none_match_matches_lists_weak_tags_and_a_star() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(IF_NONE_MATCH, value.parse().unwrap());
            not_modified(&h, "\"cdr-register-3\"")
        };
        assert!(with("\"cdr-register-3\""));
        assert!(with("W/\"cdr-register-3\""));
        assert!(with("\"cdr-register-1\", \"cdr-register-3\""));
        assert!(with("*"));
        assert!(!with("\"cdr-register-2\""));
        assert!(!with("cdr-register-3"));
        assert!(!not_modified(&HeaderMap::new(), "\"cdr-register-3\""));
    }

    #[test]
    fn fault_names_round_trip_and_slow_waits_thirty_seconds_unless_told() {
        for name in [
            "down",
            "slow",
            "406",
            "malformed",
            "missing-explanation",
            "html-404",
        ] {
            assert_eq!(name.parse::<CdrFault>().unwrap().name(), name);
        }
        assert_eq!(
            "slow".parse::<CdrFault>().unwrap(),
            CdrFault::Slow(CDR_SLOW_DEFAULT)
        );
        assert_eq!(CDR_SLOW_DEFAULT, Duration::from_secs(30));
        assert_eq!(
            CdrFault::from_name("slow", Some(Duration::from_millis(5))).unwrap(),
            CdrFault::Slow(Duration::from_millis(5))
        );
        assert!("503".parse::<CdrFault>().is_err());
    }

    // ---- over HTTP -----------------------------------------------------------------

    #[tokio::test]
    async fn the_register_lists_every_brand_with_a_strong_etag_and_answers_304_to_if_none_match() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let base = running.base_url();
        assert_eq!(
            running.cdr_register_url(),
            format!("{base}/cdr-register/v1")
        );

        let response = client.get(REGISTER, &[("x-v", "2")]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-v"], "2");
        let etag = response.headers()[ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        assert_eq!(etag, running.sim.cdr_register_etag());
        let body = json_of(response).await;
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), CDR_BRANDS.len());
        for (entry, seed) in data.iter().zip(CDR_BRANDS) {
            assert_eq!(entry["dataHolderBrandId"], seed.brand_id);
            assert_eq!(entry["brandName"], seed.brand_name);
            assert_eq!(
                entry["publicBaseUri"],
                format!("{base}/cdr/{}", seed.brand_id)
            );
            assert_eq!(entry["logoUri"], LOGO_URI);
            assert_eq!(entry["industries"], json!(["banking"]));
            assert_eq!(entry["lastUpdated"], "2026-01-15T00:00:00Z");
            assert_eq!(entry["interimId"], Value::Null);
            assert_eq!(entry.get("abn").and_then(Value::as_str), seed.abn);
            assert_eq!(entry.get("acn").and_then(Value::as_str), seed.acn);
        }
        assert_eq!(
            body["links"]["self"],
            format!("{base}/cdr-register/v1/banking/data-holders/brands/summary")
        );
        assert_eq!(body["meta"], json!({}));

        let again = client
            .get(REGISTER, &[("x-v", "2"), ("if-none-match", &etag)])
            .await;
        assert_eq!(again.status(), 304);
        assert_eq!(again.headers()[ETAG], etag.as_str());
        assert!(again.text().await.unwrap().is_empty());
        let all = client
            .get(
                "/cdr-register/v1/all/data-holders/brands/summary",
                &[("x-v", "2")],
            )
            .await;
        assert_eq!(all.status(), 200);
        let energy = client
            .get(
                "/cdr-register/v1/energy/data-holders/brands/summary",
                &[("x-v", "2")],
            )
            .await;
        assert_eq!(energy.status(), 400);
    }

    #[tokio::test]
    async fn the_register_answers_400_without_x_v_and_406_to_a_version_it_does_not_serve() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let missing = client.get(REGISTER, &[]).await;
        assert_eq!(missing.status(), 400);
        assert_eq!(
            json_of(missing).await,
            json!({"errors": [{
                "code": "urn:au-cds:error:cds-all:Header/Missing",
                "title": "Missing Required Header",
                "detail": "x-v",
            }]})
        );
        let invalid = client.get(REGISTER, &[("x-v", "latest")]).await;
        assert_eq!(invalid.status(), 400);
        assert_eq!(
            json_of(invalid).await["errors"][0]["code"],
            "urn:au-cds:error:cds-all:Header/InvalidVersion"
        );
        for version in ["1", "3"] {
            let wrong = client.get(REGISTER, &[("x-v", version)]).await;
            assert_eq!(wrong.status(), 406, "x-v {version}");
            assert_eq!(
                json_of(wrong).await["errors"][0]["code"],
                "urn:au-cds:error:cds-all:Header/UnsupportedVersion"
            );
        }
        let ranged = client
            .get(REGISTER, &[("x-v", "3"), ("x-min-v", "2")])
            .await;
        assert_eq!(ranged.status(), 200);
        assert_eq!(ranged.headers()["x-v"], "2");
    }

    #[tokio::test]
    async fn adding_a_brand_changes_the_register_etag_and_serves_its_public_base_uri_verbatim() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let before = running.sim.cdr_register_etag();
        let status = client
            .post(
                "/_sim/cdr/brands",
                json!({
                    "brandId": "aaaaaaaa-0000-4000-8000-00000000000a",
                    "brandName": "Hooli Plain HTTP",
                    "abn": "99 999 999 999",
                    "publicBaseUri": "http://hooli.example.com/api",
                }),
            )
            .await;
        assert_eq!(status, 204);
        let response = client
            .get(REGISTER, &[("x-v", "2"), ("if-none-match", &before)])
            .await;
        assert_eq!(response.status(), 200, "the old ETag no longer matches");
        let after = response.headers()[ETAG].to_str().unwrap().to_owned();
        assert_ne!(after, before);
        let body = json_of(response).await;
        let added = body["data"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(added["brandName"], "Hooli Plain HTTP");
        assert_eq!(added["abn"], "99 999 999 999");
        assert_eq!(added["publicBaseUri"], "http://hooli.example.com/api");
        assert!(added.get("acn").is_none());

        // Replacing a brand by id changes the ETag again, and keeps one entry.
        running.sim.add_cdr_brand(CdrBrand {
            brand_name: "Hooli Renamed".to_owned(),
            ..CdrBrand::from(&CDR_BRANDS[0])
        });
        assert_ne!(running.sim.cdr_register_etag(), after);
        let brands = running.sim.cdr_brands();
        assert_eq!(brands.len(), CDR_BRANDS.len() + 1);
        assert_eq!(brands[0].brand_name, "Hooli Renamed");
    }

    #[tokio::test]
    async fn discovery_status_is_ok_since_the_start_until_a_test_sets_it() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let response = client.get(&status_path(HOOLI), &[("x-v", "1")]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-v"], "1");
        assert_eq!(
            json_of(response).await,
            json!({
                "data": {"status": "OK", "updateTime": "2026-01-15T11:00:00+11:00"},
                "links": {"self": format!(
                    "{}/cdr/{HOOLI}/cds-au/v1/discovery/status",
                    running.base_url()
                )},
                "meta": {},
            })
        );
    }

    #[tokio::test]
    async fn a_status_set_by_the_control_route_is_served_with_its_explanation_and_sydney_times() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let status = client
            .post(
                &format!("/_sim/cdr/brands/{HOOLI}/status"),
                json!({
                    "status": "UNAVAILABLE",
                    "explanation": "Core banking upgrade",
                    "detectionTime": "2026-01-14T22:30:00Z",
                    "expectedResolutionTime": "2026-07-01T09:00:00+09:00",
                }),
            )
            .await;
        assert_eq!(status, 204);
        let data = json_of(client.get(&status_path(HOOLI), &[("x-v", "1")]).await).await;
        assert_eq!(
            data["data"],
            json!({
                "status": "UNAVAILABLE",
                "explanation": "Core banking upgrade",
                "detectionTime": "2026-01-15T09:30:00+11:00",
                "expectedResolutionTime": "2026-07-01T10:00:00+10:00",
                "updateTime": "2026-01-15T11:00:00+11:00",
            })
        );
    }

    #[tokio::test]
    async fn a_status_set_without_an_explanation_is_served_without_the_key() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        assert!(running.sim.set_cdr_status(RAVIGA, "UNAVAILABLE", None));
        let data = json_of(client.get(&status_path(RAVIGA), &[("x-v", "1")]).await).await;
        assert_eq!(
            data["data"],
            json!({"status": "UNAVAILABLE", "updateTime": "2026-01-15T11:00:00+11:00"})
        );
        assert!(
            running
                .sim
                .set_cdr_status(RAVIGA, "PARTIAL_FAILURE", Some("Slow"))
        );
        let data = json_of(client.get(&status_path(RAVIGA), &[("x-v", "1")]).await).await;
        assert_eq!(data["data"]["status"], "PARTIAL_FAILURE");
        assert_eq!(data["data"]["explanation"], "Slow");
    }

    #[tokio::test]
    async fn outages_are_served_with_the_duration_verbatim_and_parsed_times_in_sydney_offset() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let empty = json_of(client.get(&outages_path(HOOLI), &[("x-v", "1")]).await).await;
        assert_eq!(empty["data"], json!({"outages": []}));

        let status = client
            .post(
                &format!("/_sim/cdr/brands/{HOOLI}/outages"),
                json!({"outages": [
                    {"outageTime": "2026-07-01T00:00:00Z", "duration": "PT2H30M",
                     "isPartial": true, "explanation": "Upgrade"},
                    {"outageTime": "next tuesday", "duration": "P1DT0.5H",
                     "explanation": "Whenever"},
                ]}),
            )
            .await;
        assert_eq!(status, 204);
        running.sim.set_cdr_outages(
            RAVIGA,
            vec![CdrOutage {
                outage_time: "2026-04-04T16:00:00Z".to_owned(),
                duration: "two hours".to_owned(),
                is_partial: Some(false),
                explanation: "Not ISO 8601".to_owned(),
            }],
        );
        let response = client.get(&outages_path(HOOLI), &[("x-v", "1")]).await;
        assert_eq!(response.status(), 200);
        let body = json_of(response).await;
        assert_eq!(
            body["data"],
            json!({"outages": [
                {"outageTime": "2026-07-01T10:00:00+10:00", "duration": "PT2H30M",
                 "isPartial": true, "explanation": "Upgrade"},
                {"outageTime": "next tuesday", "duration": "P1DT0.5H",
                 "explanation": "Whenever"},
            ]})
        );
        assert_eq!(
            body["links"]["self"],
            format!(
                "{}/cdr/{HOOLI}/cds-au/v1/discovery/outages",
                running.base_url()
            )
        );
        let raviga = json_of(client.get(&outages_path(RAVIGA), &[("x-v", "1")]).await).await;
        assert_eq!(
            raviga["data"]["outages"][0],
            json!({"outageTime": "2026-04-05T02:00:00+10:00", "duration": "two hours",
                   "isPartial": false, "explanation": "Not ISO 8601"})
        );
    }

    #[tokio::test]
    async fn an_unknown_brand_answers_404_with_a_cds_error_and_the_control_routes_refuse_it() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let unknown = "00000000-0000-4000-8000-000000000000";
        for path in [status_path(unknown), outages_path(unknown)] {
            let response = client.get(&path, &[("x-v", "1")]).await;
            assert_eq!(response.status(), 404, "{path}");
            assert_eq!(
                json_of(response).await["errors"][0]["code"],
                "urn:au-cds:error:cds-all:Resource/NotFound"
            );
        }
        let status = client
            .post(
                &format!("/_sim/cdr/brands/{unknown}/status"),
                json!({"status": "OK"}),
            )
            .await;
        assert_eq!(status, 404);
        assert!(!running.sim.set_cdr_outages(unknown, Vec::new()));
    }

    #[tokio::test]
    async fn discovery_answers_400_without_x_v_and_406_to_a_version_it_does_not_serve() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        for path in [status_path(HOOLI), outages_path(HOOLI)] {
            let missing = client.get(&path, &[]).await;
            assert_eq!(missing.status(), 400, "{path}");
            assert_eq!(
                json_of(missing).await["errors"][0]["code"],
                "urn:au-cds:error:cds-all:Header/Missing"
            );
            let wrong = client.get(&path, &[("x-v", "2")]).await;
            assert_eq!(wrong.status(), 406, "{path}");
            assert_eq!(
                json_of(wrong).await["errors"][0]["code"],
                "urn:au-cds:error:cds-all:Header/UnsupportedVersion"
            );
            let ranged = client.get(&path, &[("x-v", "2"), ("x-min-v", "1")]).await;
            assert_eq!(ranged.status(), 200, "{path}");
        }
    }

    #[tokio::test]
    async fn a_down_fault_closes_the_connection_without_an_answer_until_cleared() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        client
            .fault(json!({"target": "register", "fault": "down"}))
            .await;
        for _ in 0..2 {
            let error = client.try_get(REGISTER, &[("x-v", "2")]).await.unwrap_err();
            assert!(!error.is_timeout() && !error.is_status(), "{error:?}");
        }
        // Aimed at the Register, it leaves the brands alone.
        let status = client.get(&status_path(HOOLI), &[("x-v", "1")]).await;
        assert_eq!(status.status(), 200);
        let cleared = reqwest::Client::new()
            .delete(format!("{}/_sim/cdr/faults", running.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(cleared.status(), 204);
        assert_eq!(client.get(REGISTER, &[("x-v", "2")]).await.status(), 200);
    }

    #[tokio::test]
    async fn a_slow_fault_answers_only_after_its_delay() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        client
            .fault(json!({"target": HOOLI, "fault": "slow", "times": 2, "delay_ms": 400}))
            .await;
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let error = impatient
            .get(format!("{}{}", running.base_url(), status_path(HOOLI)))
            .header("x-v", "1")
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        let started = std::time::Instant::now();
        let patient = client.get(&status_path(HOOLI), &[("x-v", "1")]).await;
        assert_eq!(patient.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert_eq!(json_of(patient).await["data"]["status"], "OK");
    }

    #[tokio::test]
    async fn a_406_fault_answers_406_whatever_x_v_says() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        client
            .fault(json!({"target": "register", "fault": "406", "times": 1}))
            .await;
        let response = client.get(REGISTER, &[("x-v", "2")]).await;
        assert_eq!(response.status(), 406);
        assert_eq!(
            json_of(response).await["errors"][0]["code"],
            "urn:au-cds:error:cds-all:Header/UnsupportedVersion"
        );
        assert_eq!(client.get(REGISTER, &[("x-v", "2")]).await.status(), 200);
    }

    #[tokio::test]
    async fn a_malformed_fault_answers_200_with_json_cut_short() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        client
            .fault(json!({"target": HOOLI, "fault": "malformed", "times": 1}))
            .await;
        let response = client.get(&status_path(HOOLI), &[("x-v", "1")]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let text = response.text().await.unwrap();
        assert_eq!(text, r#"{"data": {"status": "#);
        assert!(serde_json::from_str::<Value>(&text).is_err());
    }

    #[tokio::test]
    async fn a_missing_explanation_fault_serves_unavailable_without_one_and_spares_outages() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        running
            .sim
            .inject_cdr_fault(RAVIGA, CdrFault::MissingExplanation, Some(1));
        // An outages request passes the fault over: it waits for the status request.
        let outages = client.get(&outages_path(RAVIGA), &[("x-v", "1")]).await;
        assert_eq!(outages.status(), 200);
        let status = json_of(client.get(&status_path(RAVIGA), &[("x-v", "1")]).await).await;
        assert_eq!(
            status["data"],
            json!({"status": "UNAVAILABLE", "updateTime": "2026-01-15T11:00:00+11:00"})
        );
        let after = json_of(client.get(&status_path(RAVIGA), &[("x-v", "1")]).await).await;
        assert_eq!(after["data"]["status"], "OK");
    }

    #[tokio::test]
    async fn an_html_404_fault_answers_a_gateway_page() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        client
            .fault(json!({"target": HOOLI, "fault": "html-404", "times": 1}))
            .await;
        let response = client.get(&outages_path(HOOLI), &[("x-v", "1")]).await;
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html");
        assert!(response.text().await.unwrap().contains("<html>"));
    }

    #[tokio::test]
    async fn faults_queue_in_order_and_a_clear_drops_the_rest() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let sim = &running.sim;
        sim.inject_cdr_fault("register", CdrFault::NotAcceptable, Some(1));
        sim.inject_cdr_fault("register", CdrFault::GatewayNotFound, Some(2));
        sim.inject_cdr_fault("register", CdrFault::Malformed, None);
        sim.inject_cdr_fault("register", CdrFault::Down, Some(0));
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(
                client
                    .get(REGISTER, &[("x-v", "2")])
                    .await
                    .status()
                    .as_u16(),
            );
        }
        assert_eq!(seen, [406, 404, 404, 200, 200]);
        let malformed = client.get(REGISTER, &[("x-v", "2")]).await;
        assert!(malformed.text().await.unwrap().starts_with(r#"{"data": {"#));
        sim.clear_cdr_faults();
        let body = json_of(client.get(REGISTER, &[("x-v", "2")]).await).await;
        assert_eq!(body["data"].as_array().unwrap().len(), CDR_BRANDS.len());
        let unknown = client
            .post(
                "/_sim/cdr/faults",
                json!({"target": "register", "fault": "503"}),
            )
            .await;
        assert_eq!(unknown, 400);
    }

    #[tokio::test]
    async fn counters_count_register_reads_304s_and_each_brands_endpoints() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        let etag = running.sim.cdr_register_etag();
        client.get(REGISTER, &[("x-v", "2")]).await;
        client
            .get(REGISTER, &[("x-v", "2"), ("if-none-match", &etag)])
            .await;
        client.get(REGISTER, &[]).await;
        client.get(&status_path(HOOLI), &[("x-v", "1")]).await;
        client.get(&status_path(HOOLI), &[("x-v", "1")]).await;
        client.get(&outages_path(RAVIGA), &[("x-v", "1")]).await;
        running
            .sim
            .inject_cdr_fault(HOOLI, CdrFault::GatewayNotFound, Some(1));
        client.get(&outages_path(HOOLI), &[("x-v", "1")]).await;

        let counters: CdrCounters =
            serde_json::from_value(json_of(client.get("/_sim/cdr/counters", &[]).await).await)
                .unwrap();
        let expected = CdrCounters {
            register: 3,
            register_not_modified: 1,
            status: BTreeMap::from([(HOOLI.to_owned(), 2)]),
            outages: BTreeMap::from([(HOOLI.to_owned(), 1), (RAVIGA.to_owned(), 1)]),
        };
        assert_eq!(counters, expected);
        assert_eq!(running.sim.cdr_counters(), expected);
    }

    #[tokio::test]
    async fn reset_counters_zeroes_the_cdr_counters_too() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        client.get(REGISTER, &[("x-v", "2")]).await;
        client.get(&status_path(HOOLI), &[("x-v", "1")]).await;
        assert_ne!(running.sim.cdr_counters(), CdrCounters::default());
        running.sim.reset_counters();
        assert_eq!(running.sim.cdr_counters(), CdrCounters::default());
    }

    #[tokio::test]
    async fn open_banking_connectors_carry_abn_acn_and_cdr_provider_number_and_web_ones_do_not() {
        let running = serve_at(JANUARY).await;
        let client = Client::of(&running);
        running
            .sim
            .set_connector_status("AU99999", "open-banking", "operational");
        let token = client
            .http
            .post(format!("{}/token", running.base_url()))
            .header("authorization", format!("Basic {}", running.sim.api_key()))
            .header("basiq-version", "3.0")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("scope=SERVER_ACCESS")
            .send()
            .await
            .unwrap();
        let token = json_of(token).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let bearer = format!("Bearer {token}");
        let body = json_of(
            client
                .get("/connectors", &[("authorization", bearer.as_str())])
                .await,
        )
        .await;
        let connectors = body["data"].as_array().unwrap();
        let find = |id: &str, method: &str| {
            connectors
                .iter()
                .find(|c| c["id"] == id && c["method"].as_str().unwrap().replace('-', "") == method)
                .unwrap_or_else(|| panic!("no connector {id} {method}"))
                .clone()
        };
        let hooli = find("AU00000", "openbanking");
        assert_eq!(hooli["institution"]["abn"], "11 111 111 111");
        assert_eq!(hooli["institution"]["acn"], "111111111");
        assert_eq!(hooli["institution"]["cdrProviderNumber"], "ADRBNK000100");
        let aviato = find("AU00001", "openbanking");
        assert_eq!(aviato["institution"]["abn"], "22222222222");
        let unlisted = find("AU99999", "openbanking");
        assert_eq!(unlisted["institution"]["abn"], Value::Null);
        for c in connectors.iter().filter(|c| c["method"] == "web") {
            let institution = c["institution"].as_object().unwrap();
            for key in ["abn", "acn", "cdrProviderNumber"] {
                assert!(!institution.contains_key(key), "{} web has {key}", c["id"]);
            }
        }
        assert!(connectors.iter().any(|c| c["method"] == "web"));
    }
}
