//! The unattended window (`refresh.unattended_window` in `refresh.timezone`) and each
//! connection's stable slot in it (pure, `now` passed in).
//!
//! The window is wall-clock time in one time zone, so it follows daylight saving. One
//! occurrence per local date: it starts at that date's `start` and ends at `end` the same
//! day, or the next day when the window wraps midnight (`end <= start`; `start == end` is a
//! whole day). Local times are turned into instants the way Temporal's "compatible" rule
//! does: a time skipped by a DST gap moves forward by the gap, a time that happens twice takes
//! the earlier instant.

use std::fmt;

use chrono::offset::LocalResult;
use chrono::{
    DateTime, Days, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;

/// The default `refresh.unattended_window`.
pub const DEFAULT_WINDOW: &str = "00:00-06:00";
/// The default `refresh.timezone`.
pub const DEFAULT_TIMEZONE: &str = "Australia/Sydney";

const DAY_SECS: i64 = 24 * 3600;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window `{0}` is not of the form HH:MM-HH:MM, e.g. \"00:00-06:00\"")]
    Format(String),
    #[error("`{time}` in window `{spec}` is not a time of day: write HH:MM, 00:00 to 23:59")]
    Time { spec: String, time: String },
    #[error("unknown time zone `{0}`: write an IANA name such as \"Australia/Sydney\"")]
    TimeZone(String),
}

/// A daily window of local time; `end <= start` wraps midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DailyWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub tz: Tz,
}

impl Default for DailyWindow {
    /// 00:00-06:00 in Australia/Sydney.
    fn default() -> Self {
        Self {
            start: NaiveTime::MIN,
            end: NaiveTime::from_hms_opt(6, 0, 0).unwrap_or(NaiveTime::MIN),
            tz: chrono_tz::Australia::Sydney,
        }
    }
}

impl fmt::Display for DailyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{} {}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.tz.name()
        )
    }
}

/// As the two keys it is written with: `unattended_window = "HH:MM-HH:MM"` and `timezone`.
impl serde::Serialize for DailyWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry(
            "unattended_window",
            &format!(
                "{}-{}",
                self.start.format("%H:%M"),
                self.end.format("%H:%M")
            ),
        )?;
        map.serialize_entry("timezone", self.tz.name())?;
        map.end()
    }
}

impl DailyWindow {
    /// Parses `"HH:MM-HH:MM"` (spaces around the parts allowed; `24:00` as the end means
    /// midnight) and an IANA time zone name.
    pub fn parse(spec: &str, tz: &str) -> Result<Self, WindowError> {
        let (start, end) = spec
            .split_once('-')
            .ok_or_else(|| WindowError::Format(spec.to_owned()))?;
        let time = |text: &str, is_end: bool| {
            let text = text.trim();
            if is_end && text == "24:00" {
                return Ok(NaiveTime::MIN);
            }
            NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| WindowError::Time {
                spec: spec.to_owned(),
                time: text.to_owned(),
            })
        };
        let tz = tz
            .trim()
            .parse::<Tz>()
            .map_err(|_| WindowError::TimeZone(tz.to_owned()))?;
        Ok(Self {
            start: time(start, false)?,
            end: time(end, true)?,
            tz,
        })
    }

    /// Is `now` inside an occurrence of the window?
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        let (start, end) = self.occurrence(now);
        start <= now && now < end
    }

    /// The occurrence `[start, end)` that contains `now` or, if none does, the next one.
    pub fn occurrence(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        self.occurrence_date(now)
            .and_then(|date| self.bounds(date))
            .unwrap_or((now, now))
    }

    /// The connection's stable slot (hash of seed + key as a fraction of the window length) in
    /// the window occurrence that contains `now` or, if none does, the next one; computed in
    /// local time and converted to UTC; a local time that does not exist (DST gap) moves
    /// forward, an ambiguous one takes the earlier instant.
    ///
    /// The slot is the same wall-clock time every day, so a connection is refreshed at a
    /// predictable local time; on a DST day it may be an hour off in UTC.
    pub fn slot(&self, seed: u64, key: &str, now: DateTime<Utc>) -> DateTime<Utc> {
        let offset_secs = (stable_fraction(seed, key) * self.length_secs() as f64) as i64;
        self.occurrence_date(now)
            .and_then(|date| {
                let local = date
                    .and_time(self.start)
                    .checked_add_signed(TimeDelta::seconds(offset_secs))?;
                Some(resolve(self.tz, local))
            })
            .unwrap_or(now)
    }

    /// The window's length in local wall-clock seconds: `(0, 24 h]`.
    fn length_secs(&self) -> i64 {
        let secs = (self.end - self.start).num_seconds().rem_euclid(DAY_SECS);
        if secs == 0 { DAY_SECS } else { secs }
    }

    /// The instants an occurrence starting on local `date` begins and ends.
    fn bounds(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let start = date.and_time(self.start);
        let end = start.checked_add_signed(TimeDelta::seconds(self.length_secs()))?;
        Some((resolve(self.tz, start), resolve(self.tz, end)))
    }

    /// The local date on which the occurrence containing `now` (or the next one) starts.
    fn occurrence_date(&self, now: DateTime<Utc>) -> Option<NaiveDate> {
        let today = now.with_timezone(&self.tz).date_naive();
        // Occurrences are at most a day long, so yesterday's may still be running; earlier
        // ones have ended and tomorrow's is the latest that can be next.
        let yesterday = today.checked_sub_days(Days::new(1))?;
        [
            Some(yesterday),
            Some(today),
            today.checked_add_days(Days::new(1)),
        ]
        .into_iter()
        .flatten()
        .find(|date| self.bounds(*date).is_some_and(|(_, end)| now < end))
    }
}

/// A local time as an instant: a time in a DST gap moves forward by the gap (it is read with
/// the offset in force before the gap), an ambiguous time takes the earlier instant.
fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(at) => at.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => {
            // Transitions are months apart, so a day earlier the offset is the pre-gap one.
            let before = local.checked_sub_days(Days::new(1)).unwrap_or(local);
            let offset = tz.offset_from_utc_datetime(&before).fix().local_minus_utc();
            let utc = local
                .checked_sub_signed(TimeDelta::seconds(i64::from(offset)))
                .unwrap_or(local);
            Utc.from_utc_datetime(&utc)
        }
    }
}

/// [`crate::plan::slots::stable_hash`] of the seed and the key, as a fraction in `[0, 1)`.
fn stable_fraction(seed: u64, key: &str) -> f64 {
    let z = crate::plan::slots::stable_hash(seed, key);
    // The top 53 bits fit an f64 exactly, so the fraction never rounds up to 1.
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn window(spec: &str) -> DailyWindow {
        DailyWindow::parse(spec, DEFAULT_TIMEZONE).unwrap()
    }

    /// A key whose slot falls at `fraction` of the window, found by search (stable: the
    /// hash is fixed).
    fn key_near(seed: u64, fraction: f64) -> String {
        (0..100_000)
            .map(|i| format!("conn-{i}"))
            .find(|k| (stable_fraction(seed, k) - fraction).abs() < 0.002)
            .unwrap()
    }

    #[test]
    fn windows_parse_and_bad_ones_say_what_to_write() {
        let w = DailyWindow::parse(" 22:30 - 05:00 ", "Europe/London").unwrap();
        assert_eq!(w.start, NaiveTime::from_hms_opt(22, 30, 0).unwrap());
        assert_eq!(w.end, NaiveTime::from_hms_opt(5, 0, 0).unwrap());
        assert_eq!(w.tz, chrono_tz::Europe::London);
        assert_eq!(
            DailyWindow::parse(DEFAULT_WINDOW, DEFAULT_TIMEZONE).unwrap(),
            DailyWindow::default()
        );
        assert_eq!(window("22:00-24:00").end, NaiveTime::MIN);
        assert_eq!(
            DailyWindow::default().to_string(),
            "00:00-06:00 Australia/Sydney"
        );

        let bad = [
            ("0000", "UTC", WindowError::Format("0000".into())),
            (
                "00:00-25:00",
                "UTC",
                WindowError::Time {
                    spec: "00:00-25:00".into(),
                    time: "25:00".into(),
                },
            ),
            (
                "24:00-06:00",
                "UTC",
                WindowError::Time {
                    spec: "24:00-06:00".into(),
                    time: "24:00".into(),
                },
            ),
            (
                "00:00-06:00",
                "Sydney",
                WindowError::TimeZone("Sydney".into()),
            ),
        ];
        for (spec, tz, expected) in bad {
            let err = DailyWindow::parse(spec, tz).unwrap_err();
            assert_eq!(err, expected, "{spec} {tz}");
            assert!(!err.to_string().is_empty());
        }
        assert!(
            WindowError::TimeZone("Sydney".into())
                .to_string()
                .contains("Australia/Sydney")
        );
    }

    #[test]
    fn the_window_contains_local_night_hours_in_sydney() {
        let w = DailyWindow::default();
        // November: AEDT, UTC+11. 00:00-06:00 local is 13:00-19:00 UTC the day before.
        let cases = [
            ("2026-11-22T12:59:59Z", false),
            ("2026-11-22T13:00:00Z", true),
            ("2026-11-22T18:59:59Z", true),
            ("2026-11-22T19:00:00Z", false),
            // July: AEST, UTC+10.
            ("2026-07-14T13:30:00Z", false),
            ("2026-07-14T14:00:00Z", true),
            ("2026-07-14T19:59:00Z", true),
            ("2026-07-14T20:00:00Z", false),
        ];
        for (now, expected) in cases {
            assert_eq!(w.contains(utc(now)), expected, "{now}");
        }
    }

    #[test]
    fn a_window_that_wraps_midnight_spans_two_local_dates() {
        let w = DailyWindow::parse("22:00-02:00", "UTC").unwrap();
        let cases = [
            ("2026-03-10T21:59:00Z", false, "2026-03-10T22:00:00Z"),
            ("2026-03-10T22:00:00Z", true, "2026-03-10T22:00:00Z"),
            ("2026-03-10T23:30:00Z", true, "2026-03-10T22:00:00Z"),
            ("2026-03-11T01:59:00Z", true, "2026-03-10T22:00:00Z"),
            ("2026-03-11T02:00:00Z", false, "2026-03-11T22:00:00Z"),
            ("2026-03-11T12:00:00Z", false, "2026-03-11T22:00:00Z"),
        ];
        for (now, inside, start) in cases {
            assert_eq!(w.contains(utc(now)), inside, "{now}");
            let (s, e) = w.occurrence(utc(now));
            assert_eq!((s, e - s), (utc(start), TimeDelta::hours(4)), "{now}");
        }
        let key = key_near(7, 0.75);
        // 75% of 4 h after 22:00 is 01:00 the next day, whichever side of midnight `now` is.
        for now in [
            "2026-03-10T22:10:00Z",
            "2026-03-11T01:30:00Z",
            "2026-03-10T12:00:00Z",
        ] {
            let slot = w.slot(7, &key, utc(now));
            assert!(
                (slot - utc("2026-03-11T01:00:00Z")).num_seconds().abs() < 60,
                "{now}: {slot}"
            );
        }
    }

    #[test]
    fn a_window_with_equal_ends_is_the_whole_day() {
        let w = DailyWindow::parse("03:00-03:00", "UTC").unwrap();
        for now in [
            "2026-03-10T02:59:00Z",
            "2026-03-10T03:00:00Z",
            "2026-03-10T17:00:00Z",
        ] {
            assert!(w.contains(utc(now)), "{now}");
        }
        let (s, e) = w.occurrence(utc("2026-03-10T02:59:00Z"));
        assert_eq!(
            (s, e),
            (utc("2026-03-09T03:00:00Z"), utc("2026-03-10T03:00:00Z"))
        );
    }

    #[test]
    fn the_window_follows_sydney_across_the_april_transition() {
        // Sunday 5 April 2026, 03:00 AEDT -> 02:00 AEST: 02:00-03:00 local happens twice.
        let w = DailyWindow::default();
        let (s, e) = w.occurrence(utc("2026-04-04T14:00:00Z"));
        assert_eq!(s, utc("2026-04-04T13:00:00Z"), "00:00 AEDT");
        assert_eq!(e, utc("2026-04-04T20:00:00Z"), "06:00 AEST: a 7 h night");
        assert!(w.contains(utc("2026-04-04T19:30:00Z")));
        assert!(!w.contains(utc("2026-04-04T20:00:00Z")));

        let seed = 11;
        let cases = [
            // fraction of 6 h -> local time -> instant
            (0.25, "2026-04-04T14:30:00Z"),  // 01:30 AEDT
            (0.375, "2026-04-04T15:15:00Z"), // 02:15 twice: the earlier, AEDT
            (0.75, "2026-04-04T18:30:00Z"),  // 04:30 AEST
        ];
        for (fraction, expected) in cases {
            let key = key_near(seed, fraction);
            let slot = w.slot(seed, &key, utc("2026-04-04T12:00:00Z"));
            assert!(
                (slot - utc(expected)).num_seconds().abs() < 60,
                "{fraction}: {slot}, expected about {expected}"
            );
            assert!(w.contains(slot), "{fraction}: the slot is in the window");
        }
    }

    #[test]
    fn the_window_follows_sydney_across_the_october_transition() {
        // Sunday 4 October 2026, 02:00 AEST -> 03:00 AEDT: 02:00-03:00 local does not exist.
        let w = DailyWindow::default();
        let (s, e) = w.occurrence(utc("2026-10-03T15:00:00Z"));
        assert_eq!(s, utc("2026-10-03T14:00:00Z"), "00:00 AEST");
        assert_eq!(e, utc("2026-10-03T19:00:00Z"), "06:00 AEDT: a 5 h night");

        let seed = 11;
        let cases = [
            (0.25, "2026-10-03T15:30:00Z"),  // 01:30 AEST
            (0.375, "2026-10-03T16:15:00Z"), // 02:15 does not exist: 03:15 AEDT
            (0.75, "2026-10-03T17:30:00Z"),  // 04:30 AEDT
        ];
        for (fraction, expected) in cases {
            let key = key_near(seed, fraction);
            let slot = w.slot(seed, &key, utc("2026-10-03T15:00:00Z"));
            assert!(
                (slot - utc(expected)).num_seconds().abs() < 60,
                "{fraction}: {slot}, expected about {expected}"
            );
            assert!(w.contains(slot), "{fraction}: the slot is in the window");
        }
    }

    #[test]
    fn the_slot_is_stable_in_the_current_occurrence_or_the_next() {
        let w = DailyWindow::default();
        let key = "5b3532e0-23c7-48cb-b7a4-000000000001";
        let inside = utc("2026-11-22T14:00:00Z");
        let slot = w.slot(42, key, inside);
        assert!(w.contains(slot));
        assert_eq!(
            slot,
            w.slot(42, key, utc("2026-11-22T18:59:00Z")),
            "same night"
        );
        assert_eq!(
            w.slot(42, key, utc("2026-11-22T19:00:00Z")),
            slot + TimeDelta::days(1),
            "after the window: the next night, same local time"
        );
        assert_eq!(
            w.slot(42, key, utc("2026-11-22T08:00:00Z")),
            slot,
            "before the window: tonight's"
        );
        let moved = (0..50)
            .filter(|i| w.slot(1, &format!("c{i}"), inside) != w.slot(2, &format!("c{i}"), inside))
            .count();
        assert!(moved >= 48, "another seed places connections elsewhere");
    }

    #[test]
    fn slots_spread_evenly_over_the_window() {
        let mut per_hour = [0u32; 6];
        for i in 0..6_000 {
            let fraction = stable_fraction(0x5eed, &format!("5b3532e0-23c7-48cb-b7a4-{i:012x}"));
            assert!((0.0..1.0).contains(&fraction));
            per_hour[(fraction * 6.0) as usize] += 1;
        }
        for (hour, count) in per_hour.iter().enumerate() {
            assert!((800..=1200).contains(count), "hour {hour}: {count}");
        }
    }
}
