//! The CDR's JSON as it arrives, and its conversion into [`crate::domain::cdr`] types.
//!
//! Private to `cdr`: nothing outside it sees a wire type. Read leniently, because hundreds of
//! data holders write these answers by hand: unknown fields are ignored; an optional field
//! that is missing, `null`, of another type or unreadable (a time that is not RFC 3339, a
//! URL that is not one) becomes `None`. What cannot be done without is refused: a body
//! without its `data` (the Register's array, a status's `status`, the outages' array) is a
//! decode error; one list item without what makes it (a brand without its id, an outage
//! without a readable start or duration) is skipped and counted, and the others are kept.
//!
//! Times are RFC 3339 with any offset (`+10:00`, `+11:00`, `Z`) and are kept in UTC. All text
//! kept goes through [`clean_text`]; serde's messages too, because they quote the body.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::duration::parse_duration;
use crate::domain::cdr::{
    Brand, BrandStatus, CdrStatus, MAX_BRAND_NAME_CHARS, MAX_EXPLANATION_CHARS, Maintenance,
    abn_digits, clean_text, is_brand_id,
};

/// The longest decode message kept: enough to find the fault, never a body.
const MAX_MESSAGE_CHARS: usize = 200;

/// The longest status value kept verbatim (an unknown one ends up in logs and metrics).
const MAX_STATUS_CHARS: usize = 64;

/// The readable items of a list, and how many were skipped.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Read<T> {
    pub items: Vec<T>,
    pub skipped: usize,
}

/// `GET /banking/data-holders/brands/summary`: `{"data": [...], "links", "meta"}`.
#[derive(Deserialize)]
struct RegisterBody {
    data: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrandWire {
    #[serde(default, deserialize_with = "lenient_string")]
    data_holder_brand_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    brand_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    public_base_uri: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    last_updated: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    abn: Option<String>,
}

/// `GET /cds-au/v1/discovery/status`: `{"data": {...}}`.
#[derive(Deserialize)]
struct StatusBody {
    data: StatusWire,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusWire {
    status: String,
    #[serde(default, deserialize_with = "lenient_string")]
    explanation: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    detection_time: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    expected_resolution_time: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    update_time: Option<String>,
}

/// `GET /cds-au/v1/discovery/outages`: `{"data": {"outages": [...]}}`.
#[derive(Deserialize)]
struct OutagesBody {
    data: OutagesData,
}

#[derive(Deserialize)]
struct OutagesData {
    outages: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutageWire {
    #[serde(default, deserialize_with = "lenient_string")]
    outage_time: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    duration: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    is_partial: Option<bool>,
    #[serde(default, deserialize_with = "lenient_string")]
    explanation: Option<String>,
}

/// The Register's brands; an item without a usable `dataHolderBrandId` (or not an object)
/// is skipped.
pub(super) fn brands(body: &[u8]) -> Result<Read<Brand>, String> {
    let body: RegisterBody = parse(body)?;
    Ok(read_items(body.data, |wire: BrandWire| {
        let brand_id = wire.data_holder_brand_id.filter(|id| is_brand_id(id))?;
        Some(Brand {
            brand_id,
            brand_name: wire
                .brand_name
                .map(|name| clean_text(&name, MAX_BRAND_NAME_CHARS))
                .unwrap_or_default(),
            abn: wire.abn.as_deref().and_then(abn_digits),
            public_base_uri: wire
                .public_base_uri
                .and_then(|uri| url::Url::parse(uri.trim()).ok()),
            last_updated: wire.last_updated.as_deref().and_then(parse_time),
        })
    }))
}

/// A brand's status; only `status` is required.
pub(super) fn status(body: &[u8]) -> Result<BrandStatus, String> {
    let body: StatusBody = parse(body)?;
    let wire = body.data;
    Ok(BrandStatus {
        status: CdrStatus::parse(&clean_text(&wire.status, MAX_STATUS_CHARS)),
        explanation: wire
            .explanation
            .map(|text| clean_text(&text, MAX_EXPLANATION_CHARS))
            .filter(|text| !text.is_empty()),
        update_time: wire.update_time.as_deref().and_then(parse_time),
        detection_time: wire.detection_time.as_deref().and_then(parse_time),
        expected_resolution_time: wire
            .expected_resolution_time
            .as_deref()
            .and_then(parse_time),
    })
}

/// A brand's planned outages; one without a readable `outageTime` or `duration` (or whose
/// end cannot be represented) is skipped.
pub(super) fn outages(body: &[u8]) -> Result<Read<Maintenance>, String> {
    let body: OutagesBody = parse(body)?;
    Ok(read_items(body.data.outages, |wire: OutageWire| {
        let starts_at = parse_time(wire.outage_time.as_deref()?)?;
        let duration = parse_duration(wire.duration.as_deref()?)?;
        Some(Maintenance {
            starts_at,
            ends_at: starts_at.checked_add_signed(duration)?,
            partial: wire.is_partial.unwrap_or(false),
            explanation: wire
                .explanation
                .map(|text| clean_text(&text, MAX_EXPLANATION_CHARS))
                .unwrap_or_default(),
        })
    }))
}

/// An RFC 3339 time with any offset, in UTC.
pub(super) fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Each item read as `W` and converted; an item that is not an object, or that `convert`
/// refuses, is counted in `skipped`. (serde reads a struct from an array too, positionally:
/// only objects are read.)
fn read_items<W, T>(items: Vec<Value>, convert: impl Fn(W) -> Option<T>) -> Read<T>
where
    W: for<'de> Deserialize<'de>,
{
    let total = items.len();
    let items: Vec<T> = items
        .into_iter()
        .filter(Value::is_object)
        .filter_map(|item| serde_json::from_value(item).ok())
        .filter_map(convert)
        .collect();
    Read {
        skipped: total - items.len(),
        items,
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| clean_text(&e.to_string(), MAX_MESSAGE_CHARS))
}

/// Any JSON value; kept only when it is a string.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(text) => Some(text),
        _ => None,
    })
}

/// Any JSON value; kept only when it is a boolean.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Value::deserialize(d)?.as_bool())
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, TimeZone};
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn bytes(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn register_brands_are_read_with_every_optional_field_missing_null_or_odd() {
        let body = bytes(json!({
            "data": [
                {"dataHolderBrandId": "b-1", "brandName": "  Big\nBank ", "publicBaseUri": "https://api.big.example/cds",
                 "logoUri": "https://x", "industries": ["banking"], "lastUpdated": "2026-03-01T10:00:00+10:00",
                 "abn": "12 345 678 901", "acn": "345678901", "interimId": null, "somethingNew": {"x": 1}},
                {"dataHolderBrandId": "b-2"},
                {"dataHolderBrandId": "b-3", "brandName": null, "publicBaseUri": "not a url", "lastUpdated": "yesterday",
                 "abn": 12345678901u64},
                {"brandName": "No Id Bank"},
                {"dataHolderBrandId": null},
                {"dataHolderBrandId": ""},
                {"dataHolderBrandId": "has space"},
                ["b-4", "Array Bank"],
                "b-5"
            ],
            "links": {"self": "https://register/x"},
            "meta": {}
        }));
        let read = brands(&body).unwrap();
        assert_eq!(read.skipped, 6);
        assert_eq!(
            read.items,
            vec![
                Brand {
                    brand_id: "b-1".into(),
                    brand_name: "Big Bank".into(),
                    abn: Some("12345678901".into()),
                    public_base_uri: Some("https://api.big.example/cds".parse().unwrap()),
                    last_updated: Some(utc("2026-03-01T00:00:00Z")),
                },
                Brand {
                    brand_id: "b-2".into(),
                    brand_name: String::new(),
                    abn: None,
                    public_base_uri: None,
                    last_updated: None,
                },
                Brand {
                    brand_id: "b-3".into(),
                    brand_name: String::new(),
                    abn: None,
                    public_base_uri: None,
                    last_updated: None,
                },
            ]
        );
    }

    #[test]
    fn a_register_answer_without_its_data_array_is_a_decode_error() {
        for body in [
            json!({}),
            json!({"data": null}),
            json!({"data": {}}),
            json!([]),
        ] {
            assert!(brands(&bytes(body.clone())).is_err(), "{body}");
        }
        assert!(brands(b"<html>").is_err());
        assert_eq!(brands(&bytes(json!({"data": []}))).unwrap().items, vec![]);
    }

    #[test]
    fn a_status_is_read_with_its_times_in_utc_and_its_explanation_cleaned() {
        let body = bytes(json!({"data": {
            "status": "PARTIAL_FAILURE", "explanation": "Payments\n\u{1b}[2Jdown",
            "detectionTime": "2026-03-01T10:00:00+11:00", "expectedResolutionTime": "2026-03-01T12:00:00Z",
            "updateTime": "2026-03-01T00:05:00.250Z", "extra": true
        }, "links": {}, "meta": {}}));
        assert_eq!(
            status(&body).unwrap(),
            BrandStatus {
                status: CdrStatus::PartialFailure,
                explanation: Some("Payments [2Jdown".into()),
                update_time: Some(utc("2026-03-01T00:05:00.250Z")),
                detection_time: Some(utc("2026-02-28T23:00:00Z")),
                expected_resolution_time: Some(utc("2026-03-01T12:00:00Z")),
            }
        );
    }

    #[test]
    fn a_status_without_explanation_or_times_reads_as_none() {
        for data in [
            json!({"status": "UNAVAILABLE"}),
            json!({"status": "UNAVAILABLE", "explanation": null, "updateTime": null}),
            json!({"status": "UNAVAILABLE", "explanation": "  ", "updateTime": "soon"}),
            json!({"status": "UNAVAILABLE", "explanation": 7, "updateTime": 1700000000}),
        ] {
            let read = status(&bytes(json!({ "data": data }))).unwrap();
            assert_eq!(read.status, CdrStatus::Unavailable);
            assert_eq!(read.explanation, None, "{data}");
            assert_eq!(read.update_time, None, "{data}");
        }
    }

    #[test]
    fn an_unknown_status_is_kept_and_a_missing_one_is_a_decode_error() {
        let read = status(&bytes(json!({"data": {"status": "DEGRADED"}}))).unwrap();
        assert_eq!(read.status, CdrStatus::Other("DEGRADED".into()));
        for body in [
            json!({"data": {}}),
            json!({"data": {"status": null}}),
            json!({"data": {"status": 1}}),
            json!({"data": null}),
            json!({"status": "OK"}),
        ] {
            assert!(status(&bytes(body.clone())).is_err(), "{body}");
        }
    }

    #[test]
    fn outages_are_read_and_the_unreadable_ones_skipped_and_counted() {
        let body = bytes(json!({"data": {"outages": [
            {"outageTime": "2026-03-01T01:00:00+10:00", "duration": "PT2H30M", "isPartial": true,
             "explanation": "Upgrade\r\nof the core"},
            {"outageTime": "2026-03-07T23:00:00+11:00", "duration": "P1DT2H"},
            {"outageTime": "2026-03-01T01:00:00+10:00", "duration": "P1M"},
            {"outageTime": "Saturday night", "duration": "PT1H"},
            {"duration": "PT1H"},
            {"outageTime": "2026-03-01T01:00:00Z"},
            {"outageTime": "2026-03-01T01:00:00Z", "duration": 3600},
            null
        ]}, "links": {}, "meta": {}}));
        let read = outages(&body).unwrap();
        assert_eq!(read.skipped, 6);
        assert_eq!(
            read.items,
            vec![
                Maintenance {
                    starts_at: utc("2026-02-28T15:00:00Z"),
                    ends_at: utc("2026-02-28T17:30:00Z"),
                    partial: true,
                    explanation: "Upgrade of the core".into(),
                },
                Maintenance {
                    starts_at: utc("2026-03-07T12:00:00Z"),
                    ends_at: utc("2026-03-08T14:00:00Z"),
                    partial: false,
                    explanation: String::new(),
                },
            ]
        );
    }

    #[test]
    fn an_outages_answer_without_its_array_is_a_decode_error() {
        for body in [
            json!({"data": {}}),
            json!({"data": {"outages": null}}),
            json!({"data": []}),
            json!({}),
        ] {
            assert!(outages(&bytes(body.clone())).is_err(), "{body}");
        }
        let empty = outages(&bytes(json!({"data": {"outages": []}}))).unwrap();
        assert_eq!(
            empty,
            Read {
                items: vec![],
                skipped: 0
            }
        );
    }

    #[test]
    fn a_decode_message_is_short_and_one_line_even_when_it_quotes_the_body() {
        let body = format!(
            "{{\"data\": {{\"status\": [\"{}\\n\\u001b[2J\"]}}}}",
            "x".repeat(10_000)
        );
        let message = status(body.as_bytes()).unwrap_err();
        assert!(message.chars().count() <= MAX_MESSAGE_CHARS, "{message}");
        assert!(!message.contains(['\n', '\u{1b}']), "{message}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn an_outage_time_at_any_australian_offset_is_the_same_utc_instant(
            secs in 946_684_800i64..4_102_444_800, // 2000 to 2100
            millis in 0u32..1000,
            duration_minutes in 0i64..10_000,
        ) {
            let instant = Utc.timestamp_opt(secs, millis * 1_000_000).unwrap();
            let rendered: Vec<String> = [10, 11, 0]
                .into_iter()
                .map(|hours| {
                    let offset = FixedOffset::east_opt(hours * 3600).unwrap();
                    instant.with_timezone(&offset).to_rfc3339()
                })
                .collect();
            let body = bytes(json!({"data": {"outages": rendered.iter().map(|time| json!({
                "outageTime": time, "duration": format!("PT{duration_minutes}M"), "explanation": "x"
            })).collect::<Vec<_>>()}}));
            let read = outages(&body).unwrap();
            prop_assert_eq!(read.skipped, 0);
            prop_assert_eq!(read.items.len(), 3);
            for item in &read.items {
                prop_assert_eq!(item.starts_at, instant);
                prop_assert_eq!(item.ends_at, instant + chrono::Duration::minutes(duration_minutes));
            }
        }

        #[test]
        fn any_bytes_are_read_or_refused_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = brands(&body);
            let _ = status(&body);
            let _ = outages(&body);
        }
    }
}
