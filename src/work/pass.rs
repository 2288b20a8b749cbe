//! A pass as a unit of work: the loop that takes users (the named ones, every due one batch
//! after batch, or every registered one page by page) and sweeps them concurrently
//! ([`super::sweep`]), counting how each ended. A tick's pass first reads `/connectors`
//! (at most once per TTL) and resumes the reclassification queue (its recoveries before any
//! user, the rest in the background). An authentication or a storage failure stops the
//! pass: users not yet started are skipped, the ones in flight finish.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::context::{Context, SweepError};
use super::sweep::UserOutcome;
use crate::basiq;
use crate::domain::UserId;
use crate::store::{self, SweepCounts};

/// What started a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassTrigger {
    /// The daemon's tick: due users, after a read of `/connectors`.
    Tick,
    /// A command or a caller naming its users (`basiq-health sweep`, the API, tests).
    Command,
}

impl PassTrigger {
    /// The name stored on the pass's row and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tick => "tick",
            Self::Command => "command",
        }
    }
}

/// Where a pass takes its users from.
enum Source {
    /// The users named, once.
    Named(Option<Vec<UserId>>),
    /// Due users, batch after batch, until none is due.
    Due,
    /// Every user, page after page in id order.
    All { after: Option<UserId> },
}

/// How a pass's users ended so far, and what stopped it.
#[derive(Default)]
struct Tally {
    counts: SweepCounts,
    /// Basiq refused the API key: no other user can be swept either.
    auth_failure: Option<basiq::Error>,
    /// The storage failed (full disk, locked database): the next tick tries again.
    store_failure: Option<sqlx::Error>,
}

impl Context {
    /// One pass: `only` names users (swept whether due or not); otherwise, on a tick, every
    /// due user, in batches, until none is due. Stops taking new users when `cancel` fires.
    ///
    /// An authentication failure (Basiq refused the API key) stops the pass: no user is
    /// started after it, one error line says so, and the counts come back with `aborted`
    /// set (also stored on the pass's row). The users it stopped are not postponed: the next
    /// pass takes them again, and the token cache's backoff paces the `/token` calls.
    pub async fn run_pass(
        &self,
        trigger: PassTrigger,
        only: Option<Vec<UserId>>,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let source = match (only, trigger) {
            (Some(users), _) => Source::Named(Some(users)),
            (None, PassTrigger::Command) => Source::Named(None),
            (None, PassTrigger::Tick) => Source::Due,
        };
        self.run_pass_from(trigger, source, cancel).await
    }

    /// A pass over every registered user (neither gone nor removed), due or not, read page
    /// by page (`sweep.batch_size` ids at a time): `basiq-health sweep`.
    pub async fn run_pass_all(
        &self,
        trigger: PassTrigger,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        self.run_pass_from(trigger, Source::All { after: None }, cancel)
            .await
    }

    async fn run_pass_from(
        &self,
        trigger: PassTrigger,
        source: Source,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let progress = self.progress();
        progress
            .in_pass
            .store(true, std::sync::atomic::Ordering::Relaxed);
        progress.touch(self.clock().now());
        let result = self.run_pass_inner(trigger, source, cancel).await;
        progress
            .in_pass
            .store(false, std::sync::atomic::Ordering::Relaxed);
        progress.touch(self.clock().now());
        result
    }

    async fn run_pass_inner(
        &self,
        trigger: PassTrigger,
        mut source: Source,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        // Measured, not decided: the pass's duration for the histogram and the log line.
        let started = std::time::Instant::now();
        let sweep_id = self
            .store()
            .start_sweep(trigger.as_str(), self.clock().now())
            .await?;
        if trigger == PassTrigger::Tick {
            self.tick_connectors().await;
        }
        // Fired by `cancel`, an authentication failure or a database failure: users not yet
        // started are skipped, the ones in flight finish (never dropped inside a write).
        let stop = cancel.child_token();
        let mut tally = Tally::default();
        while !stop.is_cancelled() {
            let batch = self.next_batch(&mut source).await?;
            if batch.is_empty() {
                break;
            }
            self.sweep_batch(batch, &stop, &mut tally).await;
        }
        self.finish_pass(sweep_id, trigger, tally, started, cancel)
            .await
    }

    /// Connector statuses move without any user being due (an outage ends): read them on
    /// every tick, at most once per TTL, and resume the work a crash or a failure left in the
    /// reclassification queue (recoveries before the pass, the rest in the background).
    async fn tick_connectors(&self) {
        self.connectors().await;
        self.resume_reclassify().await;
    }

    /// The next users to sweep (none: the pass is over).
    async fn next_batch(&self, source: &mut Source) -> store::Result<Vec<UserId>> {
        let batch_size = self.options().batch_size;
        Ok(match source {
            Source::Named(users) => users.take().unwrap_or_default(),
            Source::Due => {
                self.store()
                    .due_users(self.clock().now(), batch_size)
                    .await?
            }
            Source::All { after } => {
                let page = self.store().users_page(after.as_ref(), batch_size).await?;
                *after = page.last().cloned();
                page
            }
        })
    }

    /// Sweeps a batch concurrently: up to `concurrency` users fetching (the permits) and
    /// two groups' worth more waiting for their commit (one group committing, the next
    /// forming), so a group commit can take many plans while fetching goes on.
    async fn sweep_batch(&self, batch: Vec<UserId>, stop: &CancellationToken, tally: &mut Tally) {
        let mut results = futures_util::stream::iter(batch)
            .map(|user| self.sweep_in_pass(user, stop))
            .buffer_unordered(self.options().concurrency.max(1) + 2 * store::GROUP_MAX);
        while let Some((user, result)) = results.next().await {
            // Swept, gone or failed and postponed: a user finished, however long the pass.
            self.progress().touch(self.clock().now());
            self.record(tally, &user, result, stop);
        }
    }

    /// One user of a pass: skipped once the pass stops, otherwise swept; a failure other
    /// than Basiq refusing the key postpones the user by `sweep.retry_after`.
    async fn sweep_in_pass(
        &self,
        user: UserId,
        stop: &CancellationToken,
    ) -> (UserId, Result<UserOutcome, SweepError>) {
        if stop.is_cancelled() {
            return (user, Ok(UserOutcome::Skipped));
        }
        let permit = match self.fetch_permit().await {
            Ok(permit) => permit,
            Err(e) => return (user, Err(e)),
        };
        // Checked again once a permit is ours: a stop while this user waited (an auth
        // failure, SIGTERM) starts no request for it.
        if stop.is_cancelled() {
            return (user, Ok(UserOutcome::Skipped));
        }
        let result = self.sweep_user_with(&user, permit).await;
        if let Err(e) = &result
            && !e.is_auth()
        {
            // Postponed here, inside the user's own future: awaiting a write in the pass's
            // loop would stop polling the users in flight, and one of them may hold the
            // write lock this write waits for.
            let retry = self.clock().now()
                + chrono::Duration::from_std(self.options().retry_after).unwrap_or_default();
            if let Err(e) = self.store().set_next_due(&user, retry).await {
                tracing::error!(user_id = %user, error = %e, "could not postpone the user");
            }
        }
        (user, result)
    }

    /// Counts how one user ended; an authentication or a storage failure fires `stop`.
    fn record(
        &self,
        tally: &mut Tally,
        user: &UserId,
        result: Result<UserOutcome, SweepError>,
        stop: &CancellationToken,
    ) {
        let progress = self.progress();
        let counts = &mut tally.counts;
        match result {
            Ok(UserOutcome::Swept(healths)) => {
                counts.users_swept += 1;
                progress.users_swept.inc();
                for h in healths {
                    *counts.by_health.entry(h.as_str().to_owned()).or_default() += 1;
                }
            }
            Ok(UserOutcome::Gone) => {
                counts.users_gone += 1;
                progress.users_gone.inc();
            }
            Ok(UserOutcome::Skipped) => {}
            Err(SweepError::Basiq(e)) if e.is_auth() => {
                // Not this user's fault: counted, not postponed, logged once at the end.
                counts.users_failed += 1;
                progress.users_failed.inc();
                if tally.auth_failure.is_none() {
                    stop.cancel();
                    tally.auth_failure = Some(e);
                }
            }
            Err(e) => {
                counts.users_failed += 1;
                progress.users_failed.inc();
                log_user_failed(user, &e);
                if let SweepError::Store(e) = e
                    && tally.store_failure.is_none()
                    && store::health::is_storage_failure(&e)
                {
                    // Infrastructure trouble (full disk, locked database): stop this pass
                    // once the users in flight are done; the next tick tries again. A
                    // failure of one user's plan (a constraint) fails that user only.
                    stop.cancel();
                    tally.store_failure = Some(e);
                }
            }
        }
    }

    /// Stores the pass's counts (with why it stopped, if it did), and logs them.
    async fn finish_pass(
        &self,
        sweep_id: i64,
        trigger: PassTrigger,
        tally: Tally,
        started: std::time::Instant,
        cancel: &CancellationToken,
    ) -> store::Result<SweepCounts> {
        let Tally {
            mut counts,
            auth_failure,
            store_failure,
        } = tally;
        let store = self.store();
        if let Some(e) = store_failure {
            counts.aborted = Some(store::Abort {
                cause: store::AbortCause::Database,
                error: e.to_string(),
            });
            store
                .finish_sweep(sweep_id, &counts, self.clock().now())
                .await
                .ok();
            return Err(e);
        }
        if let Some(e) = &auth_failure {
            counts.aborted = Some(store::Abort {
                cause: store::AbortCause::Auth,
                error: e.to_string(),
            });
            tracing::error!(
                event = "sweep_aborted",
                trigger = trigger.as_str(),
                status = e.status(),
                code = e.code(),
                correlation_id = e.correlation_id(),
                users_swept = counts.users_swept,
                error = %e,
                "Basiq refused the API key: the sweep pass stops; the next pass tries again"
            );
        }
        store
            .finish_sweep(sweep_id, &counts, self.clock().now())
            .await?;
        let progress = self.progress();
        progress.passes.inc();
        progress
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        let by_health: BTreeMap<&str, u64> = counts
            .by_health
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        tracing::info!(
            event = "sweep_finished",
            trigger = trigger.as_str(),
            users_swept = counts.users_swept,
            users_failed = counts.users_failed,
            users_gone = counts.users_gone,
            by_health = %serde_json::to_string(&by_health).unwrap_or_default(),
            duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            interrupted = cancel.is_cancelled(),
            aborted = auth_failure.is_some(),
            "sweep finished"
        );
        Ok(counts)
    }
}

/// One error line for a user whose sweep failed (it is retried later).
fn log_user_failed(user: &UserId, e: &SweepError) {
    let (status, correlation_id) = match e {
        SweepError::Basiq(b) => (b.status(), b.correlation_id().map(str::to_owned)),
        SweepError::Store(_) => (None, None),
    };
    tracing::error!(
        event = "user_sweep_failed",
        user_id = %user,
        status,
        correlation_id,
        error = %e,
        "sweep of this user failed; it is retried later"
    );
}
