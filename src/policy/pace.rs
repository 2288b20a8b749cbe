//! The refresh pacer: a global and a per-institution rate (governor, in memory).
//!
//! Pacing only smooths how fast refreshes leave the daemon; it is not a cap. It lives in
//! memory and a restart forgets it, which is harmless: the daily cap that must survive a
//! restart is enforced in SQLite. Both limiters allow no bursts (burst 1), so a backlog
//! drains at the configured rate instead of all at once.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;

/// The most random delay added to a wait, so that waiters woken together do not fire together.
const MAX_JITTER: Duration = Duration::from_secs(1);

/// The pace was exceeded for longer than the caller would wait: defer to a later tick.
#[derive(Debug, thiserror::Error)]
#[error("refresh pace exceeded: deferred")]
pub struct Deferred;

/// Paces refreshes globally and per institution.
pub struct Pacer {
    global: DefaultDirectRateLimiter,
    per_institution: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
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
    pub fn new(global_per_minute: NonZeroU32, per_institution_per_minute: NonZeroU32) -> Self {
        Self::with_quotas(
            Quota::per_minute(global_per_minute).allow_burst(NonZeroU32::MIN),
            Quota::per_minute(per_institution_per_minute).allow_burst(NonZeroU32::MIN),
        )
    }

    fn with_quotas(global: Quota, per_institution: Quota) -> Self {
        let clock = DefaultClock::default();
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
    pub async fn acquire(&self, institution_id: &str, max_wait: Duration) -> Result<(), Deferred> {
        let deadline = Instant::now().checked_add(max_wait);
        let key = institution_id.to_owned();
        while let Err(not_until) = self.per_institution.check_key(&key) {
            self.wait(not_until.wait_time_from(self.clock.now()), deadline)
                .await?;
        }
        while let Err(not_until) = self.global.check() {
            self.wait(not_until.wait_time_from(self.clock.now()), deadline)
                .await?;
        }
        Ok(())
    }

    /// Forgets institutions whose limiter is back to full: keeps the map small.
    pub fn forget_idle_institutions(&self) {
        self.per_institution.retain_recent();
        self.per_institution.shrink_to_fit();
    }

    /// Sleeps `wait` plus jitter, or fails at once if `wait` would pass the deadline
    /// (`None`: a deadline too far to represent, i.e. none).
    async fn wait(&self, wait: Duration, deadline: Option<Instant>) -> Result<(), Deferred> {
        let slack = match deadline {
            Some(deadline) => deadline
                .checked_duration_since(Instant::now())
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
        tokio::time::sleep(wait.saturating_add(jitter)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn acquire_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        let pacer = Pacer::new(per_minute(1), per_minute(1));
        assert_send(&pacer.acquire("AU00000", Duration::ZERO));
    }

    #[tokio::test]
    async fn a_second_refresh_without_waiting_is_deferred() {
        let pacer = Pacer::new(per_minute(60), per_minute(60));
        assert!(pacer.acquire("AU00000", Duration::ZERO).await.is_ok());
        assert!(pacer.acquire("AU00000", Duration::ZERO).await.is_err());
        assert!(
            pacer.acquire("AU00001", Duration::ZERO).await.is_err(),
            "the global pace covers every institution"
        );
    }

    #[tokio::test]
    async fn five_refreshes_at_sixty_a_minute_cannot_all_happen_within_a_second() {
        let pacer = Pacer::new(per_minute(60), per_minute(60)).with_max_jitter(Duration::ZERO);
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
        let pacer = Pacer::new(per_minute(600), per_minute(600)).with_max_jitter(Duration::ZERO);
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
        let pacer = Pacer::with_quotas(two_now, Quota::per_minute(per_minute(1)));
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
        let pacer =
            Pacer::new(per_minute(600), per_minute(600)).with_max_jitter(Duration::from_secs(3600));
        let deadline = Instant::now().checked_add(Duration::from_millis(50));
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
}
