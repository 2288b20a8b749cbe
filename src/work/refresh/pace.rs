//! The refresh pacer: a global and a per-institution rate (governor, in memory).
//!
//! Pacing only smooths how fast refreshes leave the daemon; it is not a cap. It lives in
//! memory and a restart forgets it, which is harmless: the daily cap that must survive a
//! restart is enforced in SQLite. Both limiters allow no bursts (burst 1), so a backlog
//! drains at the configured rate instead of all at once.
//!
//! The pace is kept in the injected [`Clock`]'s time (the limiters read it, the waits sleep
//! on it, the deadline is counted on it): a driven clock paces by driven time.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rand::Rng;

use crate::clock::Clock;

/// The most random delay added to a wait, so that waiters woken together do not fire together.
const MAX_JITTER: Duration = Duration::from_secs(1);

/// The pace was exceeded for longer than the caller would wait: defer to a later tick.
#[derive(Debug, thiserror::Error)]
#[error("refresh pace exceeded: deferred")]
pub struct Deferred;

/// How a slot was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paced {
    /// At once.
    AtOnce,
    /// After waiting for it: the caller's `now` is old.
    AfterWaiting,
}

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Nanos>>;
type KeyedLimiter = RateLimiter<String, DashMapStateStore<String>, Clock, NoOpMiddleware<Nanos>>;

/// Paces refreshes globally and per institution.
pub struct Pacer {
    global: DirectLimiter,
    per_institution: KeyedLimiter,
    clock: Clock,
    max_jitter: Duration,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("institutions", &self.per_institution.len())
            .field("max_jitter", &self.max_jitter)
            .finish_non_exhaustive()
    }
}

impl Pacer {
    pub fn new(
        global_per_minute: NonZeroU32,
        per_institution_per_minute: NonZeroU32,
        clock: Clock,
    ) -> Self {
        Self::with_quotas(
            Quota::per_minute(global_per_minute).allow_burst(NonZeroU32::MIN),
            Quota::per_minute(per_institution_per_minute).allow_burst(NonZeroU32::MIN),
            clock,
        )
    }

    fn with_quotas(global: Quota, per_institution: Quota, clock: Clock) -> Self {
        Self {
            global: RateLimiter::direct_with_clock(global, clock.clone()),
            per_institution: RateLimiter::dashmap_with_clock(per_institution, clock.clone()),
            clock,
            max_jitter: MAX_JITTER,
        }
    }

    /// The most random delay added to each wait (default 1 s; zero turns jitter off).
    pub fn with_max_jitter(mut self, max_jitter: Duration) -> Self {
        self.max_jitter = max_jitter;
        self
    }

    /// Waits for both limiters (plus a small random jitter up to ~1s) up to `max_wait`;
    /// Err(Deferred) if it cannot within max_wait (the caller defers to a later tick, never
    /// drops silently).
    ///
    /// The institution's slot is taken first, so a busy institution never spends a global
    /// slot that another institution could use. The reverse can happen: when the global
    /// limiter is what runs out of time, the institution's slot is spent (that institution
    /// just waits a little longer next time; no extra request reaches Basiq). Jitter is added
    /// only to waits, never to an immediate grant, and never pushes past `max_wait`.
    pub async fn acquire(
        &self,
        institution_id: &str,
        max_wait: Duration,
    ) -> Result<Paced, Deferred> {
        let deadline = chrono::Duration::from_std(max_wait)
            .ok()
            .and_then(|w| self.clock.now().checked_add_signed(w));
        let key = institution_id.to_owned();
        let mut paced = Paced::AtOnce;
        while let Err(not_until) = self.per_institution.check_key(&key) {
            self.wait(not_until.wait_time_from(self.instant()), deadline)
                .await?;
            paced = Paced::AfterWaiting;
        }
        while let Err(not_until) = self.global.check() {
            self.wait(not_until.wait_time_from(self.instant()), deadline)
                .await?;
            paced = Paced::AfterWaiting;
        }
        Ok(paced)
    }

    /// Now, as the limiters read it.
    fn instant(&self) -> Nanos {
        governor::clock::Clock::now(&self.clock)
    }

    /// Forgets institutions whose limiter is back to full: keeps the map small.
    pub fn forget_idle_institutions(&self) {
        self.per_institution.retain_recent();
        self.per_institution.shrink_to_fit();
    }

    /// Sleeps `wait` plus jitter, or fails at once if `wait` would pass the deadline
    /// (`None`: a deadline too far to represent, i.e. none).
    async fn wait(&self, wait: Duration, deadline: Option<DateTime<Utc>>) -> Result<(), Deferred> {
        let slack = match deadline {
            Some(deadline) => crate::clock::age(deadline, self.clock.now())
                .and_then(|left| left.checked_sub(wait))
                .ok_or(Deferred)?,
            None => Duration::MAX,
        };
        let jitter_ceiling = self.max_jitter.min(slack);
        let jitter = if jitter_ceiling.is_zero() {
            Duration::ZERO
        } else {
            rand::rng().random_range(Duration::ZERO..=jitter_ceiling)
        };
        self.clock.sleep(wait.saturating_add(jitter)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn per_minute(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn acquire_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let pacer = Pacer::new(per_minute(1), per_minute(1), Clock::system());
        assert_send(&pacer.acquire("AU00000", Duration::ZERO));
    }

    #[tokio::test]
    async fn a_second_refresh_without_waiting_is_deferred() {
        let pacer = Pacer::new(per_minute(60), per_minute(60), Clock::system());
        assert!(pacer.acquire("AU00000", Duration::ZERO).await.is_ok());
        assert!(pacer.acquire("AU00000", Duration::ZERO).await.is_err());
        assert!(
            pacer.acquire("AU00001", Duration::ZERO).await.is_err(),
            "the global pace covers every institution"
        );
    }

    #[tokio::test]
    async fn five_refreshes_at_sixty_a_minute_cannot_all_happen_within_a_second() {
        let pacer = Pacer::new(per_minute(60), per_minute(60), Clock::system())
            .with_max_jitter(Duration::ZERO);
        let started = Instant::now();
        let outcomes = futures_util::future::join_all(
            (0..5).map(|_| pacer.acquire("AU00000", Duration::from_secs(1))),
        )
        .await;
        let granted = outcomes.iter().filter(|o| o.is_ok()).count();
        // One now, perhaps one a second later; a slow machine only grants fewer.
        assert!((1..=2).contains(&granted), "granted {granted}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waits are bounded by max_wait"
        );
    }

    #[tokio::test]
    async fn a_refresh_waits_for_its_turn_when_allowed_to() {
        // 600 a minute: one every 100 ms.
        let pacer = Pacer::new(per_minute(600), per_minute(600), Clock::system())
            .with_max_jitter(Duration::ZERO);
        let started = Instant::now();
        for _ in 0..3 {
            pacer
                .acquire("AU00000", Duration::from_secs(20))
                .await
                .unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_busy_institution_does_not_spend_a_global_slot() {
        // The global limiter holds two slots; each institution one a minute.
        let two_now = Quota::per_minute(per_minute(1)).allow_burst(per_minute(2));
        let pacer = Pacer::with_quotas(two_now, Quota::per_minute(per_minute(1)), Clock::system());
        assert!(pacer.acquire("AU00000", Duration::ZERO).await.is_ok());
        assert!(pacer.acquire("AU00000", Duration::ZERO).await.is_err());
        assert!(
            pacer.acquire("AU00001", Duration::ZERO).await.is_ok(),
            "the deferred AU00000 left its global slot"
        );
        assert!(
            pacer.acquire("AU00002", Duration::ZERO).await.is_err(),
            "both global slots are spent"
        );
    }

    #[tokio::test]
    async fn jitter_never_pushes_a_wait_past_max_wait() {
        // An hour of jitter allowed, but only 50 ms left before the deadline.
        let pacer = Pacer::new(per_minute(600), per_minute(600), Clock::system())
            .with_max_jitter(Duration::from_secs(3600));
        let deadline = Some(pacer.clock.now() + chrono::Duration::milliseconds(50));
        let waited =
            tokio::time::timeout(Duration::from_secs(5), pacer.wait(Duration::ZERO, deadline))
                .await;
        assert!(
            matches!(waited, Ok(Ok(()))),
            "the jitter was clamped to the slack"
        );
        pacer.acquire("AU00000", Duration::ZERO).await.unwrap();
        pacer.forget_idle_institutions();
    }

    #[tokio::test]
    async fn a_paced_refresh_waits_for_the_driven_clock() {
        let t0: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        let clock = Clock::manual(t0);
        let pacer = std::sync::Arc::new(
            Pacer::new(per_minute(1), per_minute(1), clock.clone()).with_max_jitter(Duration::ZERO),
        );
        assert_eq!(
            pacer.acquire("AU00000", Duration::ZERO).await.unwrap(),
            Paced::AtOnce
        );
        assert!(
            pacer
                .acquire("AU00000", Duration::from_secs(59))
                .await
                .is_err(),
            "the next slot is a driven minute away: deferred without waiting"
        );
        let waiting = {
            let pacer = pacer.clone();
            tokio::spawn(async move { pacer.acquire("AU00000", Duration::from_secs(120)).await })
        };
        while clock.parked() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(clock.next_wake(), Some(t0 + chrono::Duration::seconds(60)));
        clock.advance(Duration::from_secs(59));
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "granted before the clock reached the slot"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(waiting.await.unwrap().unwrap(), Paced::AfterWaiting);
    }
}
