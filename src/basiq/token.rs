//! The process-wide Basiq token: fetched lazily, shared by every task, refreshed ahead of
//! expiry, single-flight.
//!
//! Basiq asks for one token per application, refreshed a few times an hour at most. The
//! cache holds a `tokio::sync::Mutex` across the fetch, so N callers arriving at expiry wait
//! for one `/token` call and then share its result.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Refresh this long before Basiq's expiry (capped at a quarter of the lifetime, so a
/// short-lived token is not refetched on every call).
const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);

#[derive(Clone)]
pub(crate) struct Token {
    pub secret: Arc<SecretString>,
    pub generation: u64,
}

struct Cached {
    token: Token,
    refresh_at: Instant,
}

#[derive(Default)]
pub(crate) struct TokenCache {
    slot: Mutex<Option<Cached>>,
}

impl TokenCache {
    /// The current token, or the one `fetch` returns when there is none or it is due.
    pub async fn get<F, Fut, E>(&self, fetch: F) -> Result<Token, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(SecretString, Duration), E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let generation = slot.as_ref().map_or(0, |c| c.token.generation) + 1;
        let (secret, lifetime) = fetch().await?;
        let ahead = REFRESH_AHEAD.min(lifetime / 4);
        let token = Token {
            secret: Arc::new(secret),
            generation,
        };
        *slot = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(ahead),
        });
        Ok(token)
    }

    /// Forget the token `generation` (Basiq refused it). A newer token fetched meanwhile by
    /// another task is kept, so a burst of refusals still costs one `/token` call.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot
            .as_ref()
            .is_some_and(|c| c.token.generation == generation)
        {
            // Keep the generation counter moving: mark as due instead of dropping.
            if let Some(cached) = slot.as_mut() {
                cached.refresh_at = Instant::now();
            }
        }
    }
}
