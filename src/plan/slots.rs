//! Stable, jittered per-user offsets inside the sweep period (pure).
//!
//! Like Prometheus spreading scrape offsets: each user's offset is a hash of the
//! installation seed and the user id, so it is stable across restarts, differs between
//! installations, and spreads a population evenly over the period.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

/// FNV-1a over the seed and the id, then a SplitMix64 finaliser for avalanche.
pub fn stable_hash(seed: u64, key: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for byte in seed.to_le_bytes().iter().chain(key.as_bytes()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(PRIME);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The user's offset inside the period, in milliseconds.
pub fn offset_ms(seed: u64, key: &str, period: Duration) -> i64 {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
    i64::try_from(stable_hash(seed, key) % period_ms).unwrap_or(0)
}

/// The first slot of this user strictly after `after`. Slots are `k * period + offset`
/// counted from the unix epoch, so they do not drift with when a sweep happened to run.
pub fn next_slot(seed: u64, key: &str, period: Duration, after: DateTime<Utc>) -> DateTime<Utc> {
    let period_ms = i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1);
    let offset = offset_ms(seed, key, period);
    let now_ms = after.timestamp_millis();
    let base = now_ms.div_euclid(period_ms) * period_ms;
    let mut slot = base + offset;
    if slot <= now_ms {
        slot += period_ms;
    }
    Utc.timestamp_millis_opt(slot).single().unwrap_or(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_users_spread_evenly_over_a_day() {
        let period = Duration::from_secs(24 * 3600);
        let seed = 0x5eed_u64;
        let mut per_hour = [0u32; 24];
        for i in 0..10_000 {
            // Ids shaped like Basiq's: mostly shared prefixes, which a weak hash would clump.
            let id = format!("5b3532e0-23c7-48cb-b7a4-{i:012x}");
            let offset = offset_ms(seed, &id, period);
            per_hour[usize::try_from(offset / 3_600_000).unwrap()] += 1;
        }
        let expected = 10_000.0 / 24.0;
        for (hour, count) in per_hour.iter().enumerate() {
            let ratio = f64::from(*count) / expected;
            assert!(
                (0.8..=1.2).contains(&ratio),
                "hour {hour}: {count} users ({ratio:.2} of 1/24)"
            );
        }
    }

    #[test]
    fn offsets_are_stable_and_differ_between_installations() {
        let period = Duration::from_secs(86_400);
        assert_eq!(
            offset_ms(1, "user-a", period),
            offset_ms(1, "user-a", period)
        );
        let moved = (0..50)
            .filter(|i| {
                offset_ms(1, &format!("u{i}"), period) != offset_ms(2, &format!("u{i}"), period)
            })
            .count();
        assert!(moved >= 48, "another seed places users elsewhere");
    }

    #[test]
    fn the_next_slot_is_strictly_after_and_within_one_period() {
        let period = Duration::from_secs(3600);
        let now: DateTime<Utc> = "2026-11-23T10:17:00Z".parse().unwrap();
        let slot = next_slot(9, "u", period, now);
        assert!(slot > now && slot <= now + chrono::Duration::hours(1));
        assert_eq!(
            next_slot(9, "u", period, slot),
            slot + chrono::Duration::hours(1)
        );
        assert_eq!(
            next_slot(9, "u", period, slot - chrono::Duration::milliseconds(1)),
            slot
        );
    }
}
