//! Following a refresh's job: poll `GET /jobs/{id}` with backoff (from
//! `follow_poll_initial`, growing to `follow_poll_max`, giving up after `follow_timeout`),
//! log each step change, store the job, and classify the connection again when it ends.
//!
//! The polls wait on the context's clock, and the timeout is counted on it: a driven clock
//! lets a follower poll (and give up) as fast as it is driven.

use std::time::Duration;

use super::Refresher;
use crate::clock;
use crate::domain::{ConnectionId, Job, JobId, JobState, UserId};

/// How following a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Followed {
    /// The job's end was read and recorded.
    ToTheEnd,
    /// The job could not be read before the follow timeout.
    Unreadable,
    /// The job was still running at the follow timeout.
    StillRunning,
    /// Shutdown stopped the follower.
    Cancelled,
}

pub(super) async fn follow_job(
    r: &Refresher,
    user: &UserId,
    connection: &ConnectionId,
    job_id: &JobId,
) -> Followed {
    let settings = &r.inner.settings;
    let cancel = r.inner.cancel.clone();
    let client = r.inner.context.client().clone();
    let clock = r.inner.context.clock().clone();
    let started = clock.now();
    // Past the timeout, or at a time the clock cannot place after the start (it went back).
    let timed_out =
        || clock::age(clock.now(), started).is_none_or(|a| a >= settings.follow_timeout);
    let mut delay = settings.follow_poll_initial;
    let mut seen: Vec<(String, String)> = Vec::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Followed::Cancelled,
            () = clock.sleep(delay) => {}
        }
        let job = match client.get_job(job_id).await {
            Ok(job) => job,
            Err(e) => {
                tracing::warn!(
                    user_id = %user, connection_id = %connection, job_id = %job_id,
                    correlation_id = e.correlation_id(), error = %e,
                    "could not read the job; trying again"
                );
                if timed_out() {
                    tracing::error!(
                        user_id = %user, connection_id = %connection, job_id = %job_id,
                        correlation_id = e.correlation_id(), error = %e,
                        "could not read the job to its end; the next sweep picks it up"
                    );
                    return Followed::Unreadable;
                }
                delay = next_delay(delay, settings.follow_poll_max);
                continue;
            }
        };
        seen = log_steps(&job, seen, user, connection, job_id);
        if job.state() != JobState::InProgress {
            return job_ended(r, user, connection, &job).await;
        }
        if timed_out() {
            tracing::warn!(
                user_id = %user, connection_id = %connection, job_id = %job_id,
                "job still running after the follow timeout; the next sweep picks it up"
            );
            return Followed::StillRunning;
        }
        delay = next_delay(delay, settings.follow_poll_max);
    }
}

/// One line per step whose status changed since the last poll; the steps as now seen.
fn log_steps(
    job: &Job,
    seen: Vec<(String, String)>,
    user: &UserId,
    connection: &ConnectionId,
    job_id: &JobId,
) -> Vec<(String, String)> {
    let now: Vec<(String, String)> = job
        .steps
        .iter()
        .map(|s| (s.title.clone(), s.status.as_str().to_owned()))
        .collect();
    for (i, (step, status)) in now.iter().enumerate() {
        if seen.get(i) != Some(&(step.clone(), status.clone())) {
            tracing::info!(
                event = "job_step",
                user_id = %user,
                connection_id = %connection,
                job_id = %job_id,
                step = step.as_str(),
                status = status.as_str(),
                "job step changed"
            );
        }
    }
    now
}

/// The followed job ended: the connection is read again and planned with it.
async fn job_ended(r: &Refresher, user: &UserId, connection: &ConnectionId, job: &Job) -> Followed {
    let recorded = r.inner.context.job_ended(user, connection, job).await;
    if let Err(e) = &recorded {
        tracing::error!(user_id = %user, connection_id = %connection, job_id = %job.id, error = %e, "could not record the finished job");
    }
    tracing::info!(
        event = "job_finished",
        user_id = %user,
        connection_id = %connection,
        job_id = %job.id,
        state = job.state().as_str(),
        failure_code = job.failure_code(),
        "refresh job ended"
    );
    if recorded.is_ok() {
        Followed::ToTheEnd
    } else {
        Followed::Unreadable
    }
}

fn next_delay(delay: Duration, max: Duration) -> Duration {
    delay.mul_f64(1.5).min(max)
}
