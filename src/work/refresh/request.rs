//! One refresh attempt as a unit of work: the gates on the newest facts, the pace, the
//! reservation (the cap and the floor, atomically and durably, before the request leaves),
//! the request, and what its answer means ([`crate::plan::policy::attempt`]). Every attempt
//! not a dry run records its decision on the connection.

use chrono::{DateTime, Utc};

use super::pace::Paced;
use super::{Decision, RefreshError, Refresher};
use crate::basiq::{self, RefreshOutcome};
use crate::domain::{ConnectionId, JobId, UserId};
use crate::plan::ConnectionRow;
use crate::plan::policy::{self, Denial, RefreshDecision, RefreshMode, Sent, Trigger};

impl Refresher {
    /// One refresh request through every gate. `follow`: poll its job to the end in the
    /// background. A paced-out request is reported as denied with reason `deferred`.
    pub async fn request(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        trigger: Trigger,
        dry_run: bool,
        follow: bool,
    ) -> Result<Decision, RefreshError> {
        let now = self.inner.context.clock().now();
        let decision = self
            .attempt(user, connection, trigger, dry_run, follow, now)
            .await?;
        Ok(self.record(user, connection, trigger, dry_run, &decision))
    }

    /// The login-time check: sweep the user (unless swept very recently), then ask for a
    /// login-triggered refresh of each connection; the gates decide which go.
    pub async fn login(&self, user: &UserId) -> Result<(bool, Vec<Decision>), RefreshError> {
        let swept = self.inner.context.login_check(user).await?;
        let mut decisions = Vec::new();
        if self.inner.settings.limits.mode == RefreshMode::Off {
            return Ok((swept, decisions));
        }
        let rows = self
            .inner
            .context
            .store()
            .all_connections(Some(user))
            .await?;
        for row in rows {
            decisions.push(
                self.request(user, &row.connection_id, Trigger::Login, false, true)
                    .await?,
            );
        }
        Ok((swept, decisions))
    }

    /// Counts a decision (for metrics), logs a denial, and gives the printed answer.
    pub(super) fn record(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        trigger: Trigger,
        dry_run: bool,
        decision: &RefreshDecision,
    ) -> Decision {
        let answer = Decision::of(user, connection, trigger, dry_run, decision);
        let label = answer.decision.as_str();
        *self
            .inner
            .decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((label.to_owned(), answer.reason.clone().unwrap_or_default()))
            .or_default() += 1;
        if let Some(reason) = &answer.reason {
            tracing::info!(
                event = "refresh_denied",
                user_id = %user,
                connection_id = %connection,
                trigger = trigger.as_str(),
                reason = reason.as_str(),
                dry_run,
                "refresh denied"
            );
        }
        answer
    }

    /// One attempt, at `now`: the gates decide on it, and the decision, the reservation and
    /// the request's outcome are recorded at it. A pacer that made the attempt wait moves
    /// its `now` to when it let the attempt go (see [`Refresher::attempt_row`]).
    pub(super) async fn attempt(
        &self,
        user: &UserId,
        connection: &ConnectionId,
        trigger: Trigger,
        dry_run: bool,
        follow: bool,
        now: DateTime<Utc>,
    ) -> Result<RefreshDecision, RefreshError> {
        let store = self.inner.context.store();
        let unknown = || RefreshError::UnknownConnection {
            user_id: user.clone(),
            connection_id: connection.clone(),
        };
        let row = store.connection(connection).await?.ok_or_else(unknown)?;
        if row.user_id != *user || row.gone_at.is_some() {
            return Err(unknown());
        }
        let mut now = now;
        let result = self
            .attempt_row(&row, trigger, dry_run, follow, &mut now)
            .await;
        if !dry_run {
            let failed = RefreshDecision::denied(Denial::RequestFailed);
            let decision = result.as_ref().unwrap_or(&failed);
            let job = decision.job().map(|j| j.as_str().to_owned());
            if let Err(e) = store
                .record_decision(
                    &row,
                    trigger,
                    decision.kind(),
                    decision.reason(),
                    job.as_deref(),
                    now,
                )
                .await
            {
                tracing::error!(connection_id = %row.connection_id, error = %e, "could not store the refresh decision");
            }
            // An attempt decided is progress, for the watchdog and /healthz.
            let context = &self.inner.context;
            context.progress().touch(context.clock().now());
        }
        result
    }

    /// The gates, the pace, the reservation and the request, all at `now`. The unit of time
    /// of an attempt starts when it may go: a pacer that made it wait (up to
    /// `refresh.max_wait`) sets `now` afresh, and the rest of the attempt (the reservation,
    /// the outcome, the decision recorded by the caller) is dated by that.
    async fn attempt_row(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        dry_run: bool,
        follow: bool,
        now: &mut DateTime<Utc>,
    ) -> Result<RefreshDecision, RefreshError> {
        if let Err(denied) = self.gate(row, trigger, *now).await? {
            return Ok(denied);
        }
        if dry_run {
            return Ok(RefreshDecision::Refreshed(None));
        }
        if let Some(held) = self.pace(row, trigger, now).await? {
            return Ok(held);
        }
        let now = *now;
        // The cap and the floor, atomically and durably, before the request leaves.
        let limits = &self.inner.settings.limits;
        let cap = policy::cap_for(&row.method, trigger, limits);
        let store = self.inner.context.store();
        let rule = |used, last| policy::reservation(cap, limits.min_interval, used, last, now);
        let attempt = match store.reserve_refresh(row, trigger, rule, now).await? {
            Ok(id) => id,
            Err(denial) => return Ok(RefreshDecision::denied(denial)),
        };
        let client = self.inner.context.client();
        match client
            .refresh_connection(&row.user_id, &row.connection_id)
            .await
        {
            Ok(outcome) => {
                self.sent(row, trigger, attempt, &outcome, follow, now)
                    .await
            }
            Err(e) => self.send_failed(row, trigger, attempt, e, now).await,
        }
    }

    /// Waits for the pace (up to `refresh.max_wait`): `Some(deferred)` when it does not let
    /// the attempt go in time. An attempt that waited is decided again at its new `now`, on
    /// what a sweep read meanwhile (a success, `lastUsed`).
    async fn pace(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        now: &mut DateTime<Utc>,
    ) -> Result<Option<RefreshDecision>, RefreshError> {
        let paced = self
            .inner
            .pacer
            .acquire(row.institution_id.as_str(), self.inner.settings.max_wait)
            .await;
        match paced {
            Err(_) => Ok(Some(RefreshDecision::Deferred)),
            Ok(Paced::AtOnce) => Ok(None),
            Ok(Paced::AfterWaiting) => {
                *now = self.inner.context.clock().now();
                let row = self
                    .inner
                    .context
                    .store()
                    .connection(&row.connection_id)
                    .await?
                    .unwrap_or_else(|| row.clone());
                Ok(self.gate(&row, trigger, *now).await?.err())
            }
        }
    }

    /// Basiq took the request: the attempt is finished with its job, which is followed.
    async fn sent(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        attempt: i64,
        outcome: &RefreshOutcome,
        follow: bool,
        now: DateTime<Utc>,
    ) -> Result<RefreshDecision, RefreshError> {
        let (sent, job_id): (Sent, JobId) = match outcome {
            RefreshOutcome::Created(j) => (Sent::Created, j.clone()),
            RefreshOutcome::Existing(j) => (Sent::Existing, j.clone()),
            RefreshOutcome::FoundAfterTimeout(j) => (Sent::FoundAfterTimeout, j.clone()),
        };
        self.inner
            .context
            .store()
            .finish_refresh(attempt, sent, Some(job_id.as_str()), None, now)
            .await?;
        tracing::info!(
            event = "refresh_sent",
            user_id = %row.user_id,
            connection_id = %row.connection_id,
            job_id = %job_id,
            trigger = trigger.as_str(),
            outcome = sent.as_str(),
            "refresh requested"
        );
        if follow {
            self.follow(
                row.user_id.clone(),
                row.connection_id.clone(),
                job_id.clone(),
            );
        }
        Ok(RefreshDecision::Refreshed(Some(job_id)))
    }

    /// The request failed: the attempt is finished with how, and what that means is
    /// decided. Basiq's cap stops attempts until our window has room; a rejection for the
    /// user's reason is planned and committed (the user must act now); a failure that is
    /// neither is the caller's error.
    async fn send_failed(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        attempt: i64,
        e: basiq::Error,
        now: DateTime<Utc>,
    ) -> Result<RefreshDecision, RefreshError> {
        let store = self.inner.context.store();
        let status = e.status();
        let rejected = matches!(e, basiq::Error::Rejected { .. });
        let sent = Sent::failure(status, rejected);
        store
            .finish_refresh(attempt, sent, None, status, now)
            .await?;
        tracing::warn!(
            event = "refresh_failed",
            user_id = %row.user_id,
            connection_id = %row.connection_id,
            trigger = trigger.as_str(),
            status,
            correlation_id = e.correlation_id(),
            outcome = sent.as_str(),
            error = %e,
            "refresh request failed"
        );
        if sent == Sent::CappedByBasiq {
            // Basiq's own count includes the partner app's refreshes.
            let (_, _, oldest) = store.refresh_window(&row.connection_id, now).await?;
            let until = policy::capped_until(oldest, now);
            store.set_basiq_capped(&row.connection_id, until).await?;
            return Ok(RefreshDecision::Denied {
                denial: Denial::DailyCap,
                reopens: Some(until),
            });
        }
        let basiq::Error::Rejected { api } = &e else {
            return Err(e.into());
        };
        // Refused for the user's reason (a 400 `invalid-credentials`): the user must act
        // now, and nothing is retried automatically.
        let code = api.code.as_deref().unwrap_or_default();
        if let Some(plan) = crate::plan::plan_refresh_rejected(row, code, now) {
            crate::work::write::commit_plan(store, &plan, now).await?;
            crate::work::emit_notes(plan.notes);
            return Ok(RefreshDecision::denied(Denial::NeedsUserAction));
        }
        Ok(RefreshDecision::denied(policy::rejection_denial(
            &row.status,
            code,
        )))
    }
}
