//! One user's sweep as a unit of work: **fetch → plan → commit → emit**. Two requests
//! (`/users/{id}/connections`, `/users/{id}/jobs`) plus the shared `/connectors` cache; the
//! pure planner ([`crate::plan::plan_user`]) over what was fetched and what is stored,
//! inside the group commit's `BEGIN IMMEDIATE` transaction; then its log lines. Nothing is
//! written after the commit: a crash leaves either the old state or the whole new one. A
//! followed job's end and the login check are the same unit on less input.

use super::context::{Context, SweepError};
use super::emit::emit_notes;
use crate::basiq;
use crate::domain::{ConnectionId, Job, UserId};
use crate::plan::Fetched;
use crate::plan::classify::Health;

/// How one user's sweep ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserOutcome {
    Swept(Vec<Health>),
    /// Basiq answered 404: marked gone.
    Gone,
    /// Skipped (shutdown began before it started).
    Skipped,
}

impl Context {
    /// Sweeps one user: fetch, plan, commit, emit. Every log line names `user_id` on the
    /// event itself (a span field would be repeated as a duplicate JSON key).
    pub async fn sweep_user(&self, user: &UserId) -> Result<UserOutcome, SweepError> {
        let permit = self.fetch_permit().await?;
        let outcome = self.sweep_user_with(user, permit).await;
        self.progress().touch(self.clock().now());
        outcome
    }

    pub(super) async fn sweep_user_with(
        &self,
        user: &UserId,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<UserOutcome, SweepError> {
        let store = self.store();
        let connections = match self.client().list_connections(user).await {
            Ok(c) => c,
            // Only Basiq's own `resource-not-found`: a gateway's 404 is retried, never gone.
            Err(basiq::Error::NotFound { api }) => {
                store.mark_gone(user, self.clock().now()).await?;
                tracing::warn!(
                    event = "user_gone",
                    user_id = %user,
                    correlation_id = api.correlation_id.as_deref(),
                    "Basiq does not know this user (404 resource-not-found): it is not swept \
                     until re-added or checked at login"
                );
                return Ok(UserOutcome::Gone);
            }
            Err(e) => return Err(e.into()),
        };
        let jobs = self.client().list_jobs(user, None).await?;
        drop(permit);
        let statuses = self.connectors().await;
        // A connection Basiq sent that could not be read is absent from the list but not
        // gone: with one skipped, no connection is marked gone this time.
        let fetched = Fetched {
            complete: connections.is_complete(),
            connections: connections.items,
            jobs,
        };
        // The user's next slot counts from the end of its fetches (the group commit takes
        // its own `now` for the plan).
        let now = self.clock().now();
        let next = self.next_due(user, now);
        // Plan and commit.
        let plan = self
            .plan_and_commit(user, fetched, statuses, Some(next))
            .await?;
        let healths = plan.healths();
        // Emit.
        let reclassify = !plan.reclassify.is_empty();
        emit_notes(plan.notes);
        if reclassify {
            self.reclassify_queued().await?;
        }
        Ok(UserOutcome::Swept(healths))
    }

    /// A followed job ended: re-read the connection (one request), plan and commit it with
    /// the job, emit.
    pub async fn job_ended(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
        job: &Job,
    ) -> Result<(), SweepError> {
        let connection = self.client().get_connection(user, connection_id).await?;
        let statuses = self.connectors().await;
        let mut job = job.clone();
        // We asked for this job for this connection.
        job.connection_id = Some(connection_id.clone());
        job.has_source = true;
        let fetched = Fetched {
            connections: vec![connection],
            jobs: vec![job],
            complete: false,
        };
        let plan = self.plan_and_commit(user, fetched, statuses, None).await?;
        let reclassify = !plan.reclassify.is_empty();
        emit_notes(plan.notes);
        if reclassify {
            self.reclassify_queued().await?;
        }
        Ok(())
    }

    /// The login-time check: sweep the user now unless swept within `login_min_interval`.
    /// Returns whether a sweep ran.
    pub async fn login_check(&self, user: &UserId) -> Result<bool, SweepError> {
        let store = self.store();
        let now = self.clock().now();
        if store.get_user(user).await?.is_none() {
            self.add_users_at(std::slice::from_ref(user), now).await?;
        }
        let row = store.get_user(user).await?;
        let min = chrono::Duration::from_std(self.options().login_min_interval).unwrap_or_default();
        // A gone user logging in is the news that it may exist again: always asked, and a
        // successful sweep clears `gone`.
        let recent = row
            .filter(|r| r.gone_at.is_none())
            .and_then(|r| r.last_swept_at)
            .is_some_and(|t| now - t < min);
        if recent {
            return Ok(false);
        }
        self.sweep_user(user).await?;
        Ok(true)
    }
}
