//! Write health: whether the store's last write failed, since when and why, cleared by the
//! next write that succeeds. `/healthz` and the systemd watchdog read it; the store writes
//! it and decides nothing else.
//!
//! Only failures of the storage count (a full disk, an I/O or read-only error, a lock held
//! past `busy_timeout`, a connection that could not be had): a constraint violation is the
//! caller's mistake, not the disk's. The text kept is SQLite's message, which carries no
//! bound values, so no secret can reach it. `since` is the store's clock's time.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::clock::Clock;

/// Writes are failing: since the first failure after the last success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failing {
    pub since: DateTime<Utc>,
    /// Failures since the last success.
    pub failures: u64,
    /// The last failure, as SQLite put it.
    pub error: String,
}

#[derive(Debug, Default)]
pub struct WriteHealth {
    failing: Mutex<Option<Failing>>,
    /// Storage failures since start (for `/metrics`: a failure between two scrapes shows).
    total: std::sync::atomic::AtomicU64,
    clock: Clock,
}

impl WriteHealth {
    /// No failure yet; failures are dated by `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            failing: Mutex::default(),
            total: Default::default(),
            clock,
        }
    }

    /// `Some` while writes fail (the last write that ended failed).
    pub fn failing(&self) -> Option<Failing> {
        self.lock().clone()
    }

    /// Storage failures of writes since start.
    pub fn failures_total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn succeeded(&self) {
        let mut failing = self.lock();
        if let Some(f) = failing.take() {
            tracing::info!(
                event = "writes_recovered",
                failures = f.failures,
                since = %f.since,
                "database writes succeed again"
            );
        }
    }

    /// Records `e` if it is a failure of the storage; returns whether it was.
    pub(crate) fn failed(&self, e: &sqlx::Error) -> bool {
        if !is_storage_failure(e) {
            return false;
        }
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut failing = self.lock();
        match failing.as_mut() {
            Some(f) => {
                f.failures += 1;
                f.error = e.to_string();
            }
            None => {
                tracing::error!(
                    event = "writes_failing",
                    error = %e,
                    "database writes are failing"
                );
                *failing = Some(Failing {
                    since: self.clock.now(),
                    failures: 1,
                    error: e.to_string(),
                });
            }
        }
        true
    }

    /// Records the outcome of one write and hands it back.
    pub(crate) fn note<T>(&self, result: sqlx::Result<T>) -> sqlx::Result<T> {
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => {
                self.failed(e);
            }
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        // A panic while holding this lock cannot leave the value half-written.
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// SQLite's primary result codes that say the storage, not the statement, failed.
const STORAGE_CODES: &[i64] = &[
    5,  // SQLITE_BUSY: a lock held past busy_timeout
    6,  // SQLITE_LOCKED
    7,  // SQLITE_NOMEM
    8,  // SQLITE_READONLY
    10, // SQLITE_IOERR
    11, // SQLITE_CORRUPT
    13, // SQLITE_FULL
    14, // SQLITE_CANTOPEN
    15, // SQLITE_PROTOCOL
    26, // SQLITE_NOTADB
];

/// A failure of the storage rather than of the statement.
pub fn is_storage_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| STORAGE_CODES.contains(&(c & 0xff))),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_failure_is_kept_until_the_next_success() {
        let health = WriteHealth::default();
        assert_eq!(health.failing(), None);
        assert!(health.failed(&sqlx::Error::PoolTimedOut));
        assert!(health.failed(&sqlx::Error::WorkerCrashed));
        let failing = health.failing().expect("failing");
        assert_eq!(failing.failures, 2);
        health.succeeded();
        assert_eq!(health.failing(), None);
    }

    #[test]
    fn a_mistake_of_the_caller_is_not_a_storage_failure() {
        let health = WriteHealth::default();
        assert!(!health.failed(&sqlx::Error::RowNotFound));
        assert_eq!(health.failing(), None);
    }
}
