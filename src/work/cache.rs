//! The cached `/connectors` answer, shared by every task: when it was read, how its failed
//! reads back off, and which notifications it was read after. State only; the reads
//! themselves are [`super::connectors`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock;
use crate::domain::{Connector, ConnectorKey};
use crate::plan::ConnectorStatuses;

/// The first retry of a failed `/connectors` waits this long, doubling up to the TTL.
const CONNECTORS_RETRY_BASE: Duration = Duration::from_secs(5);

/// Fetches forced to confirm notices are this far apart at least.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);

/// The cached `/connectors` answer. Its times are the clock's; an age below zero (the wall
/// clock went back) counts as expired, never as fresh.
pub struct ConnectorCache {
    /// The last successful fetch.
    fetched_at: Option<DateTime<Utc>>,
    /// Failed fetches since the last success, and when the last one failed: no fetch for
    /// [`ConnectorCache::retry_delay`] after it.
    failures: u32,
    failed_at: Option<DateTime<Utc>>,
    statuses: ConnectorStatuses,
    /// The newest outbox row when the last successful fetch began: every notification up
    /// to it was made before the statuses were read.
    outbox_mark: i64,
    /// The last fetch forced to confirm a notice.
    forced_at: Option<DateTime<Utc>>,
}

impl ConnectorCache {
    /// The statuses stored by an earlier run, not yet read by this one.
    pub fn new(statuses: ConnectorStatuses) -> Self {
        Self {
            fetched_at: None,
            failures: 0,
            failed_at: None,
            statuses,
            outbox_mark: 0,
            forced_at: None,
        }
    }

    pub fn statuses(&self) -> &ConnectorStatuses {
        &self.statuses
    }

    /// The wait after the last failed fetch: 5 s doubling per failure in a row, at most the
    /// TTL.
    fn retry_delay(&self, ttl: Duration) -> Duration {
        CONNECTORS_RETRY_BASE
            .checked_mul(2u32.saturating_pow(self.failures.saturating_sub(1).min(20)))
            .unwrap_or(ttl)
            .min(ttl)
    }

    /// A failed fetch is being backed off at `now`.
    pub fn backing_off(&self, now: DateTime<Utc>, ttl: Duration) -> bool {
        self.failed_at
            .is_some_and(|t| clock::within(now, t, self.retry_delay(ttl)))
    }

    /// The cached answer serves at `now`: read within the TTL, or a failed read is backed off.
    pub fn serves(&self, now: DateTime<Utc>, ttl: Duration) -> bool {
        let fresh = self.fetched_at.is_some_and(|t| clock::within(now, t, ttl));
        fresh || self.backing_off(now, ttl)
    }

    /// Whether the statuses were read after the notification `outbox_id` was made.
    pub fn confirms(&self, outbox_id: i64) -> bool {
        self.outbox_mark >= outbox_id
    }

    /// A read may be forced at `now` to confirm a notice: not while failed reads back off,
    /// and at most once per [`CONFIRM_EVERY`]. Taking it marks the time.
    pub fn take_forced(&mut self, now: DateTime<Utc>, ttl: Duration) -> bool {
        let recent = self
            .forced_at
            .is_some_and(|t| clock::within(now, t, CONFIRM_EVERY));
        if self.backing_off(now, ttl) || recent {
            return false;
        }
        self.forced_at = Some(now);
        true
    }

    /// A read that began after outbox row `mark` answered `list` at `now`, and was stored.
    pub fn answered(&mut self, list: &[Connector], mark: i64, now: DateTime<Utc>) {
        self.fetched_at = Some(now);
        self.outbox_mark = self.outbox_mark.max(mark);
        self.failures = 0;
        self.failed_at = None;
        self.statuses.known = true;
        for c in list {
            self.statuses.statuses.insert(
                ConnectorKey::new(c.institution_id.as_str(), &c.method),
                c.status.clone(),
            );
        }
    }

    /// A read failed at `now` (or its answer could not be stored): the next waits
    /// [`ConnectorCache::retry_delay`].
    /// What the data holders now say (the CDR witness), as committed.
    pub fn set_witnesses(
        &mut self,
        witnesses: std::collections::HashMap<ConnectorKey, crate::plan::CdrWitness>,
    ) {
        self.statuses.cdr = witnesses;
    }

    pub fn failed(&mut self, now: DateTime<Utc>) {
        self.failures = self.failures.saturating_add(1);
        self.failed_at = Some(now);
    }
}
