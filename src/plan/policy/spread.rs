//! Delays that spread refreshes out (pure; the caller passes the RNG).
//!
//! When an outage ends, every connection it hurt wants a refresh at once: spreading them over a
//! window keeps the daemon from hammering a bank that just came back. Transient failures are
//! retried the way Basiq advises ("wait ~10 minutes and retry a couple of times"), with
//! exponential backoff and full jitter so retries of many connections do not line up.

use std::time::Duration;

use rand::Rng;

/// The first transient retry waits up to this long.
pub const TRANSIENT_RETRY_BASE: Duration = Duration::from_secs(10 * 60);
/// Transient failures are retried this many times, then left to the next trigger.
pub const TRANSIENT_MAX_RETRIES: u32 = 2;

/// Delays for n recovery refreshes spread uniformly with jitter over `window` (each delay in
/// [i*w/n, (i+1)*w/n)).
///
/// The delays come out in increasing order. A slice too small to hold a nanosecond (a zero
/// window) yields its start.
pub fn recovery_delays(n: usize, window: Duration, rng: &mut impl Rng) -> Vec<Duration> {
    let w = window.as_nanos();
    let n_wide = n as u128;
    (0..n_wide)
        .map(|i| {
            let low = w * i / n_wide;
            let high = w * (i + 1) / n_wide;
            let at = if high > low {
                rng.random_range(low..high)
            } else {
                low
            };
            from_nanos(at)
        })
        .collect()
}

/// Transient-failure retry: exponential backoff with full jitter, base 10 min: attempt 1 ->
/// uniform [0, base], attempt 2 -> [0, 2*base]; None after `max_retries` (2).
///
/// Attempts count from 1; 0 is read as 1.
pub fn transient_retry_delay(
    attempt: u32,
    base: Duration,
    max_retries: u32,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let attempt = attempt.max(1);
    if attempt > max_retries {
        return None;
    }
    let ceiling = 2u32
        .checked_pow(attempt - 1)
        .and_then(|factor| base.checked_mul(factor))
        .unwrap_or(Duration::MAX);
    Some(from_nanos(rng.random_range(0..=ceiling.as_nanos())))
}

fn from_nanos(nanos: u128) -> Duration {
    const PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below one billion, so it fits a u32.
    let sub = u32::try_from(nanos % PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn recovery_delays_fall_one_per_slice_of_the_window() {
        let mut rng = StdRng::seed_from_u64(1);
        for (n, window) in [
            (1, 30 * MIN),
            (7, 30 * MIN),
            (100, 60 * MIN),
            (3, Duration::ZERO),
        ] {
            for _ in 0..50 {
                let delays = recovery_delays(n, window, &mut rng);
                assert_eq!(delays.len(), n);
                for (i, delay) in delays.iter().enumerate() {
                    let low = window * i as u32 / n as u32;
                    let high = window * (i as u32 + 1) / n as u32;
                    assert!(
                        *delay >= low && (*delay < high || high == low),
                        "{n} over {window:?}: delay {i} is {delay:?}, not in [{low:?}, {high:?})"
                    );
                }
            }
        }
        assert!(recovery_delays(0, 30 * MIN, &mut rng).is_empty());
    }

    #[test]
    fn recovery_delays_are_jittered_not_a_fixed_grid() {
        let mut rng = StdRng::seed_from_u64(2);
        let a = recovery_delays(10, 30 * MIN, &mut rng);
        let b = recovery_delays(10, 30 * MIN, &mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn transient_retries_back_off_exponentially_with_full_jitter() {
        let mut rng = StdRng::seed_from_u64(3);
        let base = TRANSIENT_RETRY_BASE;
        let cases = [
            (0, Some(base)),
            (1, Some(base)),
            (2, Some(2 * base)),
            (3, None),
        ];
        for (attempt, ceiling) in cases {
            let delays: Vec<Option<Duration>> = (0..200)
                .map(|_| transient_retry_delay(attempt, base, TRANSIENT_MAX_RETRIES, &mut rng))
                .collect();
            match ceiling {
                None => assert!(delays.iter().all(Option::is_none), "attempt {attempt}"),
                Some(ceiling) => {
                    let delays: Vec<Duration> = delays.into_iter().flatten().collect();
                    assert_eq!(delays.len(), 200, "attempt {attempt}");
                    assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
                    // Full jitter: some retries come early, some late.
                    assert!(delays.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
                    assert!(
                        delays.iter().any(|d| *d > ceiling * 3 / 4),
                        "attempt {attempt}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_huge_backoff_saturates_instead_of_overflowing() {
        let mut rng = StdRng::seed_from_u64(4);
        let delay = transient_retry_delay(40, Duration::MAX / 2, 100, &mut rng);
        assert!(delay.is_some());
    }
}
