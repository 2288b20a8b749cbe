//! ISO 8601 durations as data holders write an outage's `duration`.
//!
//! Hand-written (about sixty lines) rather than taken from a crate: no crate in the tree
//! reads them, and the ones that do (`iso8601`, `iso8601-duration`) either give years and
//! months a guessed length, or refuse shapes data holders send (`PT90M`, a comma decimal,
//! a fraction), and none caps the result. What is read here is exactly this:
//!
//! - `P`, then an optional date part of weeks and days (`P1W`, `P1D`, `P1W2D`), then
//!   optionally `T` and a time part of hours, minutes and seconds (`PT2H30M`, `P1DT2H`),
//!   each unit at most once and in that order; at least one number in all, and at least one
//!   after a `T`. `P`, `PT`, `P1DT` and an empty text are refused.
//! - A number is ASCII digits, any count of them, with no cap on a single unit (`PT90M`,
//!   `PT36H`). Only the last number may carry a fraction, after `.` or `,` (`PT1.5H`,
//!   `PT1,5H`, `PT0.5S`); a fraction is cut to the nanosecond.
//! - Years and months are refused (`P1Y`, `P1M`): they have no fixed length, and `P1M` is
//!   the usual slip for `PT1M` (one minute): guessing thirty days or one minute would both
//!   be a guess about an outage window. A unit in the wrong part is refused too (`P1H`,
//!   `PT1D`), as is a sign (`-PT1H`, `PT-1H`).
//! - Letters in either case (`pt2h30m` is read like `PT2H30M`), and whitespace around the
//!   text is ignored.
//! - Anything longer than [`MAX_DAYS`] days is refused: no outage lasts a year, and such a
//!   value is a mistake (or an attack on date arithmetic) rather than a plan.

use chrono::Duration;

/// The longest duration accepted, in days.
pub const MAX_DAYS: u64 = 366;

const SECOND: u128 = 1_000_000_000;
const MINUTE: u128 = 60 * SECOND;
const HOUR: u128 = 60 * MINUTE;
const DAY: u128 = 24 * HOUR;
const WEEK: u128 = 7 * DAY;

/// The fraction digits that count: beyond eighteen, a digit is worth less than a
/// nanosecond even of a week.
const FRACTION_DIGITS: u32 = 18;

/// An ISO 8601 duration (see the module documentation for the shapes read), or `None`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let upper = text.trim().to_ascii_uppercase();
    let rest = upper.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, time),
        Some(_) => return None,
        None => (rest, ""),
    };
    let mut reader = Reader::default();
    reader.part(date.as_bytes(), &[(b'W', WEEK), (b'D', DAY)])?;
    reader.part(
        time.as_bytes(),
        &[(b'H', HOUR), (b'M', MINUTE), (b'S', SECOND)],
    )?;
    let cap = u128::from(MAX_DAYS) * DAY;
    if !reader.any || reader.nanos > cap {
        return None;
    }
    Some(Duration::nanoseconds(i64::try_from(reader.nanos).ok()?))
}

#[derive(Default)]
struct Reader {
    nanos: u128,
    any: bool,
    /// A number with a fraction was read: it must have been the last one.
    fraction_read: bool,
}

impl Reader {
    /// Reads `number unit` pairs of one part, the units in the order of `units`.
    fn part(&mut self, mut text: &[u8], units: &[(u8, u128)]) -> Option<()> {
        let mut next_unit = 0;
        while !text.is_empty() {
            if self.fraction_read {
                return None;
            }
            let (whole, after) = digits(text)?;
            let (fraction, after) = match after.first() {
                Some(b'.' | b',') => {
                    self.fraction_read = true;
                    digits(&after[1..])?
                }
                _ => (&[][..], after),
            };
            let (&unit, after) = after.split_first()?;
            let offset = units[next_unit..].iter().position(|(u, _)| *u == unit)?;
            let size = units[next_unit + offset].1;
            next_unit += offset + 1;
            let mut value = size.checked_mul(number(whole)?)?;
            if !fraction.is_empty() {
                let kept = &fraction[..fraction.len().min(FRACTION_DIGITS as usize)];
                let scale = 10u128.pow(u32::try_from(kept.len()).ok()?);
                value = value.checked_add(size.checked_mul(number(kept)?)? / scale)?;
            }
            self.nanos = self.nanos.checked_add(value)?;
            self.any = true;
            text = after;
        }
        Some(())
    }
}

/// The leading ASCII digits (at least one) and what follows them.
fn digits(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = text
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

fn number(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, d| {
        n.checked_mul(10)?.checked_add(u128::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hms(h: i64, m: i64, s: i64) -> Duration {
        Duration::hours(h) + Duration::minutes(m) + Duration::seconds(s)
    }

    #[test]
    fn every_shape_a_data_holder_may_send_is_read() {
        for (text, expected) in [
            ("PT2H30M", hms(2, 30, 0)),
            ("PT45M", hms(0, 45, 0)),
            ("PT90M", hms(0, 90, 0)),
            ("PT1H30M15S", hms(1, 30, 15)),
            ("PT36H", hms(36, 0, 0)),
            ("P1D", Duration::days(1)),
            ("P1DT2H", Duration::days(1) + hms(2, 0, 0)),
            ("P0DT1H", hms(1, 0, 0)),
            ("P1W", Duration::weeks(1)),
            ("P1W2D", Duration::days(9)),
            ("PT1.5H", hms(1, 30, 0)),
            ("PT1,5H", hms(1, 30, 0)),
            ("PT0.5S", Duration::milliseconds(500)),
            ("PT1H0.25M", hms(1, 0, 15)),
            ("P0.5D", hms(12, 0, 0)),
            ("PT0.000000001S", Duration::nanoseconds(1)),
            ("PT0.0000000019S", Duration::nanoseconds(1)),
            ("PT0S", Duration::zero()),
            ("PT05M", hms(0, 5, 0)),
            ("pt2h30m", hms(2, 30, 0)),
            (" PT2H ", hms(2, 0, 0)),
            ("P366D", Duration::days(366)),
            ("PT8784H", Duration::days(366)),
        ] {
            assert_eq!(parse_duration(text), Some(expected), "{text:?}");
        }
    }

    #[test]
    fn malformed_signed_unordered_year_month_and_overlong_durations_are_refused() {
        for text in [
            "",
            "P",
            "PT",
            "P1DT",
            "T1H",
            "1H",
            "P1H",
            "PT1D",
            "PT1W",
            "-PT1H",
            "PT-1H",
            "P-1D",
            "+PT1H",
            "PT30M1H",
            "PT1H1H",
            "P1D1W",
            "P1Y",
            "P1M",
            "P1Y2M3D",
            "PT1.5H30M",
            "PT.5H",
            "PT1.H",
            "PT1.5",
            "PT1",
            "P1DT2H3",
            "PT1H 30M",
            "PT1HT30M",
            "P367D",
            "P366DT1S",
            "P53W",
            "PT99999999999999999999999999999999999999999H",
            "PT1e3S",
            "PT１H",
            "PT2H30M\u{0}",
        ] {
            assert_eq!(parse_duration(text), None, "{text:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_days_hours_minutes_and_seconds_read_back_exactly(
            d in 0i64..=300, h in 0i64..=100, m in 0i64..=10_000, s in 0i64..=100_000,
        ) {
            let text = format!("P{d}DT{h}H{m}M{s}S");
            prop_assert_eq!(parse_duration(&text), Some(Duration::days(d) + hms(h, m, s)));
        }

        #[test]
        fn any_text_is_read_or_refused_without_panicking(text in "\\PC{0,40}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn any_text_of_duration_characters_is_read_or_refused_within_the_cap(
            text in "[PpTtWDHMSYwdhmsy0-9.,-]{0,30}",
        ) {
            if let Some(d) = parse_duration(&text) {
                prop_assert!(d >= Duration::zero() && d <= Duration::days(366));
            }
        }
    }
}
