//! The process-wide Basiq token: fetched lazily, shared by every task, refreshed ahead of
//! expiry, single-flight, and backed off when `/token` fails.
//!
//! Basiq asks for one token per application, refreshed a few times an hour at most. The
//! cache holds a `tokio::sync::Mutex` across the fetch, so N callers arriving at expiry wait
//! for one `/token` call and then share its result.
//!
//! Bad fetches back off, for every caller at once: a failed `/token` call, a token that
//! lives less than [`SHORT_LIVED`] (`expires_in` zero or negative), or a token Basiq refuses
//! as stale within [`SHORT_LIVED`] of its fetch. After `n` of them in a row no `/token` call
//! is made for `min(1 s * 2^(n-1), 5 min)` (the first early refusal is replaced at once): a
//! caller meanwhile gets the token it has, if it has not been refused, or else the last
//! error at once, without a request. A revoked key therefore costs one `/token` call per
//! window, not one per user.
//!
//! Every time here is the injected [`Clock`]'s: a driven clock ages the token and runs out
//! the backoff. A time the clock cannot place (the wall clock went back past a fetch) makes
//! the token due and ends the backoff rather than stretching either.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio::sync::Mutex;

use super::error::Error;
use crate::clock::{self, Clock};

/// Refresh this long before Basiq's expiry (capped at a quarter of the lifetime, so a
/// short-lived token is not refetched on every call).
const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// The first backoff window after a bad fetch; doubled per bad fetch in a row.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest backoff window.
const BACKOFF_CAP: Duration = Duration::from_secs(5 * 60);
/// Basiq's tokens live 60 minutes: one that lives, or is refused, sooner than this is a bad
/// fetch for the backoff.
pub(crate) const SHORT_LIVED: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct Token {
    pub secret: Arc<SecretString>,
    pub generation: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"[redacted]")
            .field("generation", &self.generation)
            .finish()
    }
}

struct Cached {
    token: Token,
    fetched_at: DateTime<Utc>,
    refresh_at: DateTime<Utc>,
    /// Lived less than [`SHORT_LIVED`] by Basiq's own word.
    short_lived: bool,
    /// Basiq refused it: never handed out again.
    refused: bool,
}

#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    generation: u64,
    /// Bad fetches in a row (failed, short-lived, refused early); cleared once a token of a
    /// normal lifetime has served [`SHORT_LIVED`] without being refused.
    strikes: u32,
    /// No `/token` call before this.
    not_before: Option<DateTime<Utc>>,
    /// What a caller with no usable token gets before `not_before`.
    last_error: Option<Error>,
}

pub(crate) struct TokenCache {
    slot: Mutex<Slot>,
    clock: Clock,
}

/// The backoff window after `strikes` bad fetches in a row (none for zero).
fn window(strikes: u32) -> Duration {
    if strikes == 0 {
        return Duration::ZERO;
    }
    BACKOFF_BASE
        .checked_mul(2u32.saturating_pow((strikes - 1).min(20)))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP)
}

/// `at + d`, or the end of time.
fn after(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A backoff running at `now`: before `not_before`, and by no more than the longest window
/// (further away than that, the wall clock went back: the window is over).
fn backing_off(not_before: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    not_before.is_some_and(|t| now < t && clock::age(t, now).is_some_and(|d| d <= BACKOFF_CAP))
}

impl TokenCache {
    pub fn new(clock: Clock) -> Self {
        Self {
            slot: Mutex::default(),
            clock,
        }
    }

    /// The current token, or the one `fetch` returns when there is none or it is due and no
    /// backoff window is open. In a window: the token in hand (if Basiq has not refused it),
    /// or the last error, at once.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Token, Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(SecretString, Duration), Error>>,
    {
        let mut slot = self.slot.lock().await;
        let now = self.clock.now();
        if let Some(c) = slot.cached.as_ref().filter(|c| !c.refused) {
            let age = clock::age(now, c.fetched_at);
            let proven = !c.short_lived && age.is_some_and(|a| a >= SHORT_LIVED);
            let token = c.token.clone();
            let fresh = age.is_some() && now < c.refresh_at;
            if proven {
                slot.strikes = 0;
            }
            if fresh || backing_off(slot.not_before, now) {
                return Ok(token);
            }
        } else if backing_off(slot.not_before, now) {
            return Err(slot.last_error.clone().unwrap_or_else(|| Error::Transport {
                message: "the Basiq token is being refetched after a failure; try again shortly"
                    .into(),
                timeout: false,
            }));
        }
        match fetch().await {
            // The fetch is a network exchange: the token is dated when it arrived.
            Ok((secret, lifetime)) => {
                let now = self.clock.now();
                slot.generation += 1;
                let ahead = REFRESH_AHEAD.min(lifetime / 4);
                let short_lived = lifetime < SHORT_LIVED;
                slot.not_before = None;
                slot.last_error = None;
                if short_lived {
                    // `expires_in` zero or negative (clamped to seconds) or just small: use it,
                    // but refetch no sooner than the backoff allows.
                    slot.strikes = slot.strikes.saturating_add(1);
                    slot.not_before = Some(after(now, window(slot.strikes)));
                }
                let token = Token {
                    secret: Arc::new(secret),
                    generation: slot.generation,
                };
                slot.cached = Some(Cached {
                    token: token.clone(),
                    fetched_at: now,
                    refresh_at: after(now, lifetime.saturating_sub(ahead)),
                    short_lived,
                    refused: false,
                });
                Ok(token)
            }
            Err(err) => {
                slot.strikes = slot.strikes.saturating_add(1);
                let wait = window(slot.strikes);
                slot.not_before = Some(after(self.clock.now(), wait));
                tracing::warn!(
                    status = err.status(),
                    code = err.code(),
                    correlation_id = err.correlation_id(),
                    failures_in_a_row = slot.strikes,
                    next_try_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %err,
                    "could not get a Basiq token; every caller waits for the next try"
                );
                slot.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Forget the token `generation`: Basiq refused it with `err`. A newer token fetched
    /// meanwhile by another task is kept, so a burst of refusals still costs one `/token`
    /// call. A token refused within [`SHORT_LIVED`] of its fetch is a bad fetch: the first is
    /// replaced at once, the next ones wait out the backoff.
    pub async fn invalidate(&self, generation: u64, err: &Error) {
        let mut slot = self.slot.lock().await;
        let Some(cached) = slot
            .cached
            .as_mut()
            .filter(|c| c.token.generation == generation && !c.refused)
        else {
            return;
        };
        cached.refused = true;
        let fetched_at = cached.fetched_at;
        // A refusal the clock cannot place after the fetch counts as early.
        if clock::age(self.clock.now(), fetched_at).is_none_or(|a| a < SHORT_LIVED) {
            slot.strikes = slot.strikes.saturating_add(1);
            let until = after(fetched_at, window(slot.strikes - 1));
            slot.not_before = Some(slot.not_before.map_or(until, |t| t.max(until)));
        }
        // A failed fetch says more than the refusal that followed it.
        if slot.last_error.is_none() {
            slot.last_error = Some(err.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basiq::ApiError;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn t0() -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse().unwrap()
    }

    fn unavailable() -> Error {
        Error::Server {
            api: ApiError {
                status: 503,
                code: Some("service-unavailable".into()),
                ..ApiError::default()
            },
        }
    }

    fn stale() -> Error {
        Error::Unauthorised {
            api: ApiError {
                status: 403,
                code: Some("access-denied".into()),
                detail: Some("Token has expired".into()),
                ..ApiError::default()
            },
        }
    }

    async fn failing(cache: &TokenCache, calls: &AtomicU32) -> Result<Token, Error> {
        cache
            .get(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable())
            })
            .await
    }

    async fn lasting(
        cache: &TokenCache,
        calls: &AtomicU32,
        lifetime: Duration,
    ) -> Result<Token, Error> {
        cache
            .get(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok((SecretString::from("tok".to_owned()), lifetime))
            })
            .await
    }

    #[tokio::test]
    async fn failed_token_fetches_back_off_for_every_caller() {
        let clock = Clock::manual(t0());
        let cache = Arc::new(TokenCache::new(clock.clone()));
        let calls = Arc::new(AtomicU32::new(0));
        let callers = (0..32).map(|_| {
            let (cache, calls) = (cache.clone(), calls.clone());
            tokio::spawn(async move { failing(&cache, &calls).await.map(|_| ()) })
        });
        for r in futures_util::future::join_all(callers).await {
            let err = r.unwrap().unwrap_err();
            assert_eq!(err.status(), Some(503), "each caller gets the last error");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch for 32 callers");

        // The window doubles per failure in a row: 1 s, 2 s, 4 s, 8 s from each failure.
        for (n, wait) in [(1u32, 1000u64), (2, 2000), (3, 4000), (4, 8000)] {
            clock.advance(Duration::from_millis(wait - 10));
            assert!(failing(&cache, &calls).await.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), n, "still backing off");
            clock.advance(Duration::from_millis(20));
            assert!(failing(&cache, &calls).await.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), n + 1, "tried again");
        }
        // Capped at 5 minutes.
        for _ in 0..20 {
            clock.advance(BACKOFF_CAP);
            assert!(failing(&cache, &calls).await.is_err());
        }
        let before = calls.load(Ordering::SeqCst);
        assert_eq!(before, 25, "one fetch per 5-minute window once capped");
        clock.advance(BACKOFF_CAP);
        lasting(&cache, &calls, Duration::from_secs(3600))
            .await
            .expect("a success after the window");
        assert_eq!(calls.load(Ordering::SeqCst), before + 1);

        // The token served its time: the next failure waits one second, not five minutes.
        clock.advance(Duration::from_secs(3600));
        assert!(failing(&cache, &calls).await.is_err());
        assert!(
            failing(&cache, &calls).await.is_ok(),
            "the token in hand, due but not refused, during the window"
        );
        let n = calls.load(Ordering::SeqCst);
        assert_eq!(n, before + 2);
        clock.advance(Duration::from_millis(1010));
        let _ = failing(&cache, &calls).await;
        assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    }

    #[tokio::test]
    async fn a_due_token_is_still_used_while_token_fetches_back_off() {
        let clock = Clock::manual(t0());
        let cache = TokenCache::new(clock.clone());
        let calls = AtomicU32::new(0);
        let first = lasting(&cache, &calls, Duration::from_secs(3600))
            .await
            .unwrap();
        // Past the refresh point (5 minutes ahead of expiry), /token is down.
        clock.advance(Duration::from_secs(56 * 60));
        let kept = failing(&cache, &calls).await;
        assert!(
            kept.is_err(),
            "the failed refetch is reported to its caller"
        );
        let kept = failing(&cache, &calls).await.expect("the unrefused token");
        assert_eq!(kept.generation, first.generation);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Once Basiq refuses it, callers get the fetch failure at once.
        cache.invalidate(first.generation, &stale()).await;
        let err = failing(&cache, &calls).await.unwrap_err();
        assert_eq!(err.status(), Some(503));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn repeated_zero_lifetimes_back_off_to_one_fetch_per_five_minutes() {
        let clock = Clock::manual(t0());
        let cache = TokenCache::new(clock.clone());
        let calls = AtomicU32::new(0);
        // `expires_in: 0` is clamped to 30 s by `wire::token_lifetime`.
        let zero = crate::basiq::wire::token_lifetime(Some(0));
        for _ in 0..3600 {
            lasting(&cache, &calls, zero).await.unwrap();
            clock.advance(Duration::from_secs(1));
        }
        let first_hour = calls.load(Ordering::SeqCst);
        // 22.5 s apart at first (30 s less a quarter), then 32 s, 64 s, ... 5 min.
        assert!(
            (10..=25).contains(&first_hour),
            "{first_hour} fetches in an hour"
        );
        for _ in 0..3600 {
            lasting(&cache, &calls, zero).await.unwrap();
            clock.advance(Duration::from_secs(1));
        }
        let second_hour = calls.load(Ordering::SeqCst) - first_hour;
        assert!(
            (11..=13).contains(&second_hour),
            "{second_hour}: one per 5 min"
        );
    }

    #[tokio::test]
    async fn tokens_refused_right_after_their_fetch_back_off() {
        let clock = Clock::manual(t0());
        let cache = TokenCache::new(clock.clone());
        let calls = AtomicU32::new(0);
        let mut refused = 0;
        for _ in 0..600 {
            match lasting(&cache, &calls, Duration::from_secs(3600)).await {
                Ok(t) => cache.invalidate(t.generation, &stale()).await,
                Err(e) => {
                    assert_eq!(e.status(), Some(403), "the refusal, at once");
                    refused += 1;
                }
            }
            clock.advance(Duration::from_millis(100));
        }
        let fetches = calls.load(Ordering::SeqCst);
        assert!(fetches <= 8, "{fetches} fetches in one minute");
        assert!(refused > 500);
    }

    #[tokio::test]
    async fn one_early_refusal_is_replaced_at_once() {
        let clock = Clock::manual(t0());
        let cache = TokenCache::new(clock.clone());
        let calls = AtomicU32::new(0);
        let first = lasting(&cache, &calls, Duration::from_secs(3600))
            .await
            .unwrap();
        cache.invalidate(first.generation, &stale()).await;
        // A second refusal of the same generation (another caller) changes nothing.
        cache.invalidate(first.generation, &stale()).await;
        let second = lasting(&cache, &calls, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(second.generation, first.generation + 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_is_refetched_when_the_clock_passes_its_refresh_time_and_not_before() {
        let clock = Clock::manual(t0());
        let cache = TokenCache::new(clock.clone());
        let calls = AtomicU32::new(0);
        let hour = Duration::from_secs(3600);
        let first = lasting(&cache, &calls, hour).await.unwrap();
        // Refreshed 5 minutes ahead of the expiry: at 55 minutes.
        clock.advance(Duration::from_secs(55 * 60 - 1));
        let kept = lasting(&cache, &calls, hour).await.unwrap();
        assert_eq!(kept.generation, first.generation, "still fresh");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(1));
        let next = lasting(&cache, &calls, hour).await.unwrap();
        assert_eq!(next.generation, first.generation + 1, "due by the clock");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
