//! The one clock. Every unit of work (one user's sweep, one refresh attempt, one event, one
//! delivery round) takes `now` from here once and passes it down; nothing else in the daemon
//! reads the wall clock, so a test or the life simulation can drive time instead of sleeping.
//!
//! - [`Clock::system`]: the wall clock, for the daemon and the commands.
//! - [`Clock::manual`]: a driven clock that only moves when told ([`Clock::advance`],
//!   [`Clock::set`]). Sleeping on it ([`Clock::sleep`]) waits until it is driven past the
//!   deadline; [`Clock::parked`] and [`Clock::next_wake`] tell the driver who waits and when.
//!
//! What is measured rather than decided (a pass's duration, a request's latency) uses
//! `std::time::Instant`; waits about the transport (an HTTP retry's backoff) use tokio's
//! timer. Everything about the world's time (a job's age, a TTL, a cap's window, a
//! follower's poll, a pacer's slot) goes through this clock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A cheap, cloneable handle: every clone reads (and drives) the same time.
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Source>,
}

enum Source {
    System,
    Manual(Manual),
}

struct Manual {
    now: watch::Sender<DateTime<Utc>>,
    /// Deadlines of the tasks sleeping on this clock, by sleeper id.
    sleepers: Mutex<BTreeMap<u64, DateTime<Utc>>>,
    next_id: AtomicU64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.inner {
            Source::System => f.write_str("Clock::System"),
            Source::Manual(m) => write!(f, "Clock::Manual({})", *m.now.borrow()),
        }
    }
}

impl Clock {
    /// The wall clock.
    pub fn system() -> Self {
        Self {
            inner: Arc::new(Source::System),
        }
    }

    /// A clock standing at `start` until it is driven.
    pub fn manual(start: DateTime<Utc>) -> Self {
        let (now, _) = watch::channel(start);
        Self {
            inner: Arc::new(Source::Manual(Manual {
                now,
                sleepers: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(0),
            })),
        }
    }

    /// Now.
    pub fn now(&self) -> DateTime<Utc> {
        match &*self.inner {
            Source::System => Utc::now(),
            Source::Manual(m) => *m.now.borrow(),
        }
    }

    /// A driven clock (tests, the life simulation).
    pub fn is_manual(&self) -> bool {
        matches!(&*self.inner, Source::Manual(_))
    }

    /// Moves a driven clock forward by `by` and wakes the sleepers whose deadline has come;
    /// returns the new time. The system clock cannot be driven: it is returned as it is.
    pub fn advance(&self, by: Duration) -> DateTime<Utc> {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let to = self
            .now()
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.set(to);
        self.now()
    }

    /// Sets a driven clock to `at` if that is later than now (time never goes back).
    pub fn set(&self, at: DateTime<Utc>) {
        if let Source::Manual(m) = &*self.inner {
            m.now.send_if_modified(|now| {
                let later = at > *now;
                if later {
                    *now = at;
                }
                later
            });
        }
    }

    /// Sleeps `d` of this clock's time.
    pub async fn sleep(&self, d: Duration) {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let at = self
            .now()
            .checked_add_signed(d)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.sleep_until(at).await;
    }

    /// Sleeps until this clock reads `at` or later.
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        match &*self.inner {
            Source::System => {
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Source::Manual(m) => {
                let mut rx = m.now.subscribe();
                if *rx.borrow_and_update() >= at {
                    return;
                }
                let id = m.next_id.fetch_add(1, Ordering::Relaxed);
                let _parked = Parked::new(m, id, at);
                // The sender lives as long as this clock, which this future borrows.
                while rx.changed().await.is_ok() {
                    if *rx.borrow_and_update() >= at {
                        return;
                    }
                }
            }
        }
    }

    /// How many tasks are sleeping on a driven clock (0 for the system clock).
    pub fn parked(&self) -> usize {
        match &*self.inner {
            Source::System => 0,
            Source::Manual(m) => lock(&m.sleepers).len(),
        }
    }

    /// How many tasks sleeping on a driven clock have their deadline passed but have not run
    /// yet (woken, not yet polled): a driver waits for none before it moves the clock.
    pub fn overdue(&self) -> usize {
        match &*self.inner {
            Source::System => 0,
            Source::Manual(m) => {
                let now = *m.now.borrow();
                lock(&m.sleepers).values().filter(|at| **at <= now).count()
            }
        }
    }

    /// The earliest deadline of the tasks sleeping on a driven clock.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        match &*self.inner {
            Source::System => None,
            Source::Manual(m) => lock(&m.sleepers).values().min().copied(),
        }
    }
}

/// How long ago `since` was at `now`; `None` when `since` is later than `now` (the wall
/// clock went back). A cache or a backoff treats `None` as expired: a time it cannot place
/// is never a reason to wait.
pub fn age(now: DateTime<Utc>, since: DateTime<Utc>) -> Option<Duration> {
    (now - since).to_std().ok()
}

/// Whether `since` is less than `span` before `now`: a cache entry still fresh, a backoff
/// still running. A negative age (the wall clock went back) is not within.
pub fn within(now: DateTime<Utc>, since: DateTime<Utc>, span: Duration) -> bool {
    age(now, since).is_some_and(|a| a < span)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One sleeper's registration, removed when its sleep ends or is dropped.
struct Parked<'a> {
    manual: &'a Manual,
    id: u64,
}

impl<'a> Parked<'a> {
    fn new(manual: &'a Manual, id: u64, at: DateTime<Utc>) -> Self {
        lock(&manual.sleepers).insert(id, at);
        Self { manual, id }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        lock(&self.manual.sleepers).remove(&self.id);
    }
}

/// The clock as governor's rate limiters see it: nanoseconds of this clock's time since the
/// Unix epoch, so a driven clock paces by driven time.
impl governor::clock::Clock for Clock {
    type Instant = governor::nanos::Nanos;

    fn now(&self) -> Self::Instant {
        let nanos = Clock::now(self).timestamp_nanos_opt().unwrap_or(0).max(0);
        governor::nanos::Nanos::from(u64::try_from(nanos).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_driven() {
        let clock = Clock::manual(t0());
        assert_eq!(clock.now(), t0());
        assert_eq!(
            clock.advance(Duration::from_secs(90)),
            t0() + chrono::Duration::seconds(90)
        );
        clock.set(t0());
        assert_eq!(
            clock.now(),
            t0() + chrono::Duration::seconds(90),
            "never back"
        );
        let copy = clock.clone();
        copy.advance(Duration::from_secs(10));
        assert_eq!(clock.now(), t0() + chrono::Duration::seconds(100));
    }

    #[tokio::test]
    async fn a_sleeper_on_a_manual_clock_wakes_when_the_clock_passes_its_deadline() {
        let clock = Clock::manual(t0());
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep(Duration::from_secs(60)).await })
        };
        while clock.parked() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            clock.next_wake(),
            Some(t0() + chrono::Duration::seconds(60))
        );
        clock.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woken before its deadline");
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.overdue(), 1, "woken, not yet run");
        sleeper.await.unwrap();
        assert_eq!(clock.overdue(), 0);
        assert_eq!(clock.parked(), 0);
        assert_eq!(clock.next_wake(), None);
    }

    #[test]
    fn an_age_below_zero_is_not_within_any_span() {
        let later = t0() + chrono::Duration::seconds(5);
        assert_eq!(age(later, t0()), Some(Duration::from_secs(5)));
        assert!(within(later, t0(), Duration::from_secs(6)));
        assert!(!within(later, t0(), Duration::from_secs(5)));
        assert_eq!(age(t0(), later), None, "the clock went back");
        assert!(!within(t0(), later, Duration::MAX));
    }

    #[test]
    fn governor_paces_by_the_clock_s_own_time() {
        use governor::{Quota, RateLimiter};
        let clock = Clock::manual(t0());
        let quota = Quota::per_minute(std::num::NonZeroU32::new(1).unwrap());
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
        clock.advance(Duration::from_secs(60));
        assert!(limiter.check().is_ok());
    }
}
