//! The `/connectors` read as a unit of work: at most once per TTL (single-flight, under the
//! cache's lock), its answer planned and committed ([`super::write::commit_connectors`]),
//! the status changes logged, the outages that ended reclassified before anyone sees the new
//! statuses, and the other connectors that moved handed to the background reclassification
//! ([`super::reclassify`]).

use super::context::Context;
use crate::plan::ConnectorStatuses;
use crate::plan::connectors::ConnectorsPlan;

impl Context {
    /// Connector statuses, from cache or (at most once per TTL, single-flight) `/connectors`.
    /// A failed fetch keeps the last known statuses and is retried with backoff (5 s
    /// doubling, at most the TTL), not after the full TTL: until `/connectors` has answered
    /// once, no user is blamed. Status changes are recorded, and the connections an outage
    /// that ended held given their recovery slots, before the new statuses are handed out;
    /// the other connections at connectors that moved are reclassified in the background.
    pub async fn connectors(&self) -> ConnectorStatuses {
        let mut cache = self.connector_cache().await;
        if cache.serves(self.clock().now(), self.options().connectors_ttl) {
            return cache.statuses().clone();
        }
        self.fetch_connectors(&mut cache).await
    }

    /// Whether the bank statuses were read after the notification `outbox_id` was made,
    /// reading them now if not (at most once a second, and not while the fetch backs off
    /// after failures). The read reclassifies what an outage explains.
    pub async fn connectors_confirm(&self, outbox_id: i64) -> bool {
        let mut cache = self.connector_cache().await;
        if cache.confirms(outbox_id) {
            return true;
        }
        if !cache.take_forced(self.clock().now(), self.options().connectors_ttl) {
            return false;
        }
        self.fetch_connectors(&mut cache).await;
        cache.confirms(outbox_id)
    }

    async fn fetch_connectors(
        &self,
        cache: &mut super::cache::ConnectorCache,
    ) -> ConnectorStatuses {
        if self.read_connectors(cache).await {
            self.wake_reclassify();
        }
        // Held under the lock: no sweep classifies against the new statuses before the
        // connections an outage held got their recovery slots, whether this read queued them
        // or a read before a crash did (its statuses are the cache's from the start, and the
        // first call reads `/connectors` here). The rest waits for no one.
        if let Err(e) = self.drain_recoveries().await {
            tracing::error!(error = %e, "reclassification failed; it resumes on the next tick");
        }
        cache.statuses().clone()
    }

    /// Reads `/connectors`, commits the answer and updates the cache (or notes the failure).
    /// Returns whether reclassifications were queued.
    async fn read_connectors(&self, cache: &mut super::cache::ConnectorCache) -> bool {
        let mark = self.store().newest_outbox_id().await.unwrap_or(0);
        let listed = self.client().list_connectors().await;
        // The read's time is when Basiq answered: a failed read may have taken its retries'
        // time, and its backoff starts from its end.
        let now = self.clock().now();
        let list = match listed {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    correlation_id = e.correlation_id(),
                    known = cache.statuses().known,
                    "could not fetch /connectors; using the last known statuses"
                );
                cache.failed(now);
                return false;
            }
        };
        match super::write::commit_connectors(self.store(), &list, now).await {
            Ok(plan) => {
                cache.answered(&list, mark, now);
                log_changes(&plan);
                !plan.requeue.is_empty()
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store connector statuses");
                cache.failed(now);
                false
            }
        }
    }

    /// Recoveries a failed drain left queued, drained under the cache's lock as a read of
    /// `/connectors` drains them, and the background reclassification woken: a tick's
    /// resumption of the queue, whether or not `/connectors` was read again.
    pub(super) async fn resume_reclassify(&self) {
        let _cache = self.connector_cache().await;
        if let Err(e) = self.drain_recoveries().await {
            tracing::error!(error = %e, "reclassification failed; it resumes on the next tick");
        }
        self.wake_reclassify();
    }
}

/// One line per connector whose status moved.
fn log_changes(plan: &ConnectorsPlan) {
    for change in &plan.changes {
        tracing::info!(
            event = "connector_status_changed",
            institution_id = %change.key.institution_id,
            method = %change.key.method,
            from = change.from.as_ref().map(|s| s.as_str().to_owned()),
            to = %change.to,
            "connector status changed"
        );
    }
}
