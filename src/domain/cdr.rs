//! The Consumer Data Right's vocabulary: a data holder's brand as the CDR Register lists it,
//! the operational status and the planned outages a brand publishes, and the text helpers
//! that make outside text safe to keep (ABNs, names to compare, explanations to show).
//!
//! Plain types, parsed once at the edge (`crate::cdr`): knows nothing about HTTP, JSON,
//! SQLite or Basiq. What a status means for a bank's health is decided in `plan`, not here;
//! [`CdrStatus::is_down`] only says what the status itself states.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The longest explanation kept from a data holder (a status or an outage), in characters.
pub const MAX_EXPLANATION_CHARS: usize = 500;

/// The longest brand name kept from the Register, in characters.
pub const MAX_BRAND_NAME_CHARS: usize = 200;

/// The longest `dataHolderBrandId` accepted ([`is_brand_id`]). The Register's ids are UUIDs
/// (36 characters); the margin is for data holders that do not follow the habit.
pub const MAX_BRAND_ID_CHARS: usize = 128;

/// A data holder's brand (a bank brand) as the CDR Register lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Brand {
    /// The Register's `dataHolderBrandId`; meets [`is_brand_id`].
    pub brand_id: String,
    /// Cleaned ([`clean_text`], at most [`MAX_BRAND_NAME_CHARS`]); empty when the Register
    /// gave none.
    pub brand_name: String,
    /// Eleven digits ([`abn_digits`]), or `None` when missing or not an ABN.
    pub abn: Option<String>,
    /// Where the brand's public endpoints live (`{publicBaseUri}/cds-au/v1/discovery/...`);
    /// `None` when missing or not a URL: such a brand cannot be polled.
    pub public_base_uri: Option<url::Url>,
    pub last_updated: Option<DateTime<Utc>>,
}

/// A brand's operational status as `GET /discovery/status` states it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CdrStatus {
    /// `OK`: the implementation is fully functional.
    Ok,
    /// `PARTIAL_FAILURE`: one or more end points are unexpectedly unavailable.
    PartialFailure,
    /// `SCHEDULED_OUTAGE`: a planned outage is under way.
    ScheduledOutage,
    /// `UNAVAILABLE`: the implementation is unexpectedly unavailable.
    Unavailable,
    /// A value this build does not know, kept verbatim.
    Other(String),
}

impl CdrStatus {
    pub fn parse(value: &str) -> Self {
        match value {
            "OK" => Self::Ok,
            "PARTIAL_FAILURE" => Self::PartialFailure,
            "SCHEDULED_OUTAGE" => Self::ScheduledOutage,
            "UNAVAILABLE" => Self::Unavailable,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Ok => "OK",
            Self::PartialFailure => "PARTIAL_FAILURE",
            Self::ScheduledOutage => "SCHEDULED_OUTAGE",
            Self::Unavailable => "UNAVAILABLE",
            Self::Other(other) => other,
        }
    }

    /// What the status states: `Some(true)` for the three down values (a partial failure
    /// counts: some end points are down), `Some(false)` for `OK`, and `None` for a value this
    /// build does not know: a witness that cannot be understood says nothing.
    pub fn is_down(&self) -> Option<bool> {
        match self {
            Self::Ok => Some(false),
            Self::PartialFailure | Self::ScheduledOutage | Self::Unavailable => Some(true),
            Self::Other(_) => None,
        }
    }
}

impl fmt::Display for CdrStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CdrStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One answer of `GET /discovery/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrandStatus {
    pub status: CdrStatus,
    /// Cleaned ([`clean_text`], at most [`MAX_EXPLANATION_CHARS`]). The standard requires one
    /// unless the status is `OK`, but a data holder may leave it out: then `None`, as for an
    /// empty one.
    pub explanation: Option<String>,
    pub update_time: Option<DateTime<Utc>>,
    pub detection_time: Option<DateTime<Utc>>,
    pub expected_resolution_time: Option<DateTime<Utc>>,
}

/// One planned outage of `GET /discovery/outages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Maintenance {
    pub starts_at: DateTime<Utc>,
    /// `starts_at` plus the announced duration.
    pub ends_at: DateTime<Utc>,
    /// `isPartial`: only some end points will be down.
    pub partial: bool,
    /// Cleaned ([`clean_text`], at most [`MAX_EXPLANATION_CHARS`]); empty when none was given.
    pub explanation: String,
}

/// The eleven digits of an ABN written any way (`"12 345 678 901"`, `"ABN 12345678901"`):
/// every character that is not an ASCII digit is dropped, and the result is kept only when
/// exactly eleven digits remain. The check digit is not verified: the ABN is only a key to
/// match on, and a wrong one simply matches nothing.
pub fn abn_digits(text: &str) -> Option<String> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    (digits.len() == 11).then_some(digits)
}

/// A name in the form two names are compared in: lowercase, `&` read as `and`, letters and
/// digits kept (any script), every other character dropped, words separated by single
/// spaces. `"Bank of Queensland  Ltd."` → `"bank of queensland ltd"`, `"A&B Bank"` → `"a and b
/// bank"`. Punctuation is dropped, not read as a space: `"St.George"` → `"stgeorge"` but
/// `"St. George"` → `"st george"`. Nothing more clever is tried (no generic words dropped):
/// a name that does not match is fixed by the overrides file, not by a guess.
pub fn normalise_name(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch == '&' {
            spaced.push_str(" and ");
        } else if ch.is_alphanumeric() {
            spaced.extend(ch.to_lowercase());
        } else if ch.is_whitespace() {
            spaced.push(' ');
        }
    }
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Outside text made safe to keep and show (a log line, a page, a notification): control
/// characters removed (line breaks and tabs become spaces), the invisible characters that
/// reorder or hide text (bidirectional overrides and isolates, zero-width characters, the
/// byte-order mark) removed, runs of whitespace collapsed to one space, trimmed, and cut to
/// at most `max_chars` characters: when cut, the last of them is `…`.
pub fn clean_text(text: &str, max_chars: usize) -> String {
    let mut spaced = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut pending_space = false;
    for ch in text.chars() {
        if ch.is_whitespace() {
            pending_space = !spaced.is_empty();
        } else if ch.is_control() || is_invisible_format(ch) {
            continue;
        } else {
            if pending_space {
                spaced.push(' ');
                pending_space = false;
            }
            spaced.push(ch);
        }
    }
    if spaced.chars().count() <= max_chars {
        return spaced;
    }
    if max_chars == 0 {
        return String::new();
    }
    let kept: String = spaced.chars().take(max_chars - 1).collect();
    let mut cut = kept.trim_end().to_owned();
    cut.push('…');
    cut
}

/// Unicode format characters that change how the text around them reads or hide it.
fn is_invisible_format(ch: char) -> bool {
    matches!(
        ch,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
    )
}

/// The rule a `dataHolderBrandId` must meet to be kept (from the Register or the overrides
/// file): 1 to [`MAX_BRAND_ID_CHARS`] printable ASCII characters, no spaces. It ends up in
/// the database, log lines and the operator's pages.
pub fn is_brand_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_BRAND_ID_CHARS
        && text.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_and_write_as_the_standard_spells_them() {
        for (text, status, down) in [
            ("OK", CdrStatus::Ok, Some(false)),
            ("PARTIAL_FAILURE", CdrStatus::PartialFailure, Some(true)),
            ("SCHEDULED_OUTAGE", CdrStatus::ScheduledOutage, Some(true)),
            ("UNAVAILABLE", CdrStatus::Unavailable, Some(true)),
        ] {
            assert_eq!(CdrStatus::parse(text), status);
            assert_eq!(status.as_str(), text);
            assert_eq!(status.is_down(), down, "{text}");
            assert_eq!(
                serde_json::to_value(&status).unwrap(),
                serde_json::json!(text)
            );
        }
    }

    #[test]
    fn an_unknown_status_is_kept_verbatim_and_says_nothing_about_down() {
        for text in ["DEGRADED", "ok", ""] {
            let status = CdrStatus::parse(text);
            assert_eq!(status, CdrStatus::Other(text.to_owned()));
            assert_eq!(status.as_str(), text);
            assert_eq!(status.is_down(), None);
        }
    }

    #[test]
    fn an_abn_is_its_eleven_digits_however_it_is_written() {
        for (text, abn) in [
            ("12345678901", Some("12345678901")),
            ("12 345 678 901", Some("12345678901")),
            ("ABN: 12-345-678-901", Some("12345678901")),
            ("1234567890", None),
            ("123456789012", None),
            ("12345678901 / 98765432109", None),
            ("", None),
            ("١٢٣٤٥٦٧٨٩٠١", None),
        ] {
            assert_eq!(abn_digits(text).as_deref(), abn, "{text:?}");
        }
    }

    #[test]
    fn names_are_compared_lowercase_with_ampersands_as_and_and_no_punctuation() {
        for (text, normal) in [
            ("Bank of Queensland  Ltd.", "bank of queensland ltd"),
            ("A&B Bank", "a and b bank"),
            ("  ING\tBank\n", "ing bank"),
            ("St.George", "stgeorge"),
            ("St. George", "st george"),
            ("Crédit Agricole", "crédit agricole"),
            ("ME Bank (Members Equity)", "me bank members equity"),
            ("", ""),
            ("&", "and"),
        ] {
            assert_eq!(normalise_name(text), normal, "{text:?}");
        }
    }

    #[test]
    fn outside_text_loses_control_characters_and_is_cut_with_an_ellipsis() {
        assert_eq!(clean_text("  a\nb\r\n\tc  ", 100), "a b c");
        assert_eq!(clean_text("a\u{0}b\u{1b}[31mc", 100), "ab[31mc");
        assert_eq!(
            clean_text("safe\u{202E}txt.exe\u{200B}", 100),
            "safetxt.exe"
        );
        assert_eq!(clean_text("abcdef", 6), "abcdef");
        assert_eq!(clean_text("abcdefg", 6), "abcde…");
        assert_eq!(clean_text("abcd efg", 6), "abcd…");
        assert_eq!(clean_text("ééééééé", 3), "éé…");
        assert_eq!(clean_text("abc", 0), "");
        assert_eq!(clean_text("abc", 1), "…");
        assert_eq!(clean_text(" \n ", 10), "");
    }

    #[test]
    fn brand_ids_are_printable_ascii_without_spaces() {
        assert!(is_brand_id("0b1c2d3e-0000-4000-8000-000000000001"));
        assert!(is_brand_id("brand_1.x"));
        for bad in ["", "a b", "a\nb", "café", &"a".repeat(129)] {
            assert!(!is_brand_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn times_serialise_as_rfc_3339() {
        let m = Maintenance {
            starts_at: "2026-03-01T01:00:00Z".parse().unwrap(),
            ends_at: "2026-03-01T03:30:00Z".parse().unwrap(),
            partial: true,
            explanation: "upgrade".into(),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["starts_at"], "2026-03-01T01:00:00Z");
        assert_eq!(v["ends_at"], "2026-03-01T03:30:00Z");
    }
}
