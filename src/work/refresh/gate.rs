//! What the gates read for one stored connection: the row with what this process read and
//! has not committed yet, the connector statuses, the inferred outage, the cap's window.

use chrono::{DateTime, Utc};

use super::{RefreshError, Refresher};
use crate::domain::JobState;
use crate::plan::policy::{self, RefreshDecision, RefreshFacts, Trigger};
use crate::plan::{ConnectionRow, ConnectorStatuses};

impl Refresher {
    /// The gates on the newest facts: the stored row with what this process read and has
    /// not committed yet, the connector statuses, the cap's window.
    pub(super) async fn gate(
        &self,
        row: &ConnectionRow,
        trigger: Trigger,
        now: DateTime<Utc>,
    ) -> Result<Result<(), RefreshDecision>, RefreshError> {
        let row = self.inner.context.freshest(row);
        let statuses = self.inner.context.connectors().await;
        let facts = self.facts(&row, &statuses, now).await?;
        let limits = &self.inner.settings.limits;
        Ok(
            policy::decide(trigger, &facts.facts(), limits).map_err(|denial| {
                RefreshDecision::Denied {
                    denial,
                    reopens: policy::not_before(trigger, &facts.facts(), limits),
                }
            }),
        )
    }

    /// Everything the gates look at for one stored connection, from the store and the
    /// given connector statuses (the `plan` dry run passes the cached ones).
    pub async fn facts(
        &self,
        row: &ConnectionRow,
        statuses: &ConnectorStatuses,
        now: DateTime<Utc>,
    ) -> Result<GateFacts, RefreshError> {
        let store = self.inner.context.store();
        let view = statuses.view(row.institution_id.as_str(), &row.method);
        let inferred = {
            let mut conn = store.pool().acquire().await?;
            crate::store::connectors::inferred_open(
                &mut conn,
                row.institution_id.as_str(),
                row.method.as_str(),
            )
            .await?
        };
        let (attempts, last_attempt, oldest_attempt) =
            store.refresh_window(&row.connection_id, now).await?;
        let job_running = row.newest_job.as_ref().is_some_and(|j| {
            j.state == JobState::InProgress
                && j.created
                    .is_none_or(|c| now - c <= crate::plan::classify::JOB_RETENTION)
        });
        let maintenance = statuses
            .windows(row.institution_id.as_str(), &row.method)
            .to_vec();
        Ok(GateFacts {
            row: row.clone(),
            view,
            inferred,
            maintenance,
            job_running,
            last_attempt,
            oldest_attempt,
            attempts,
            now,
        })
    }
}

/// What the gates look at for one connection, owned; [`GateFacts::facts`] borrows it as
/// the pure [`RefreshFacts`].
#[derive(Clone, Debug)]
pub struct GateFacts {
    pub row: ConnectionRow,
    pub view: crate::plan::classify::ConnectorView,
    pub inferred: bool,
    /// The maintenance windows announced for its connector (CDR).
    pub maintenance: Vec<crate::plan::Window>,
    pub job_running: bool,
    pub last_attempt: Option<DateTime<Utc>>,
    pub oldest_attempt: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub now: DateTime<Utc>,
}

impl GateFacts {
    pub fn facts(&self) -> RefreshFacts<'_> {
        RefreshFacts {
            status: &self.row.status,
            method: &self.row.method,
            health: self.row.health,
            job_running: self.job_running,
            needs_user_present: self.row.needs_user_present,
            last_used: self.row.last_used,
            newest_job_at: self.row.newest_job_at(),
            newest_success_at: self
                .row
                .newest_job
                .as_ref()
                .filter(|j| j.state == JobState::Success)
                .and_then(|j| j.created.or(j.updated)),
            incident_since: self.row.refresh_due.and_then(|o| o.since),
            last_attempt: self.last_attempt,
            connector: &self.view,
            outage_inferred: self.inferred,
            maintenance: &self.maintenance,
            attempts_last_24h: self.attempts,
            basiq_capped_until: self.row.basiq_capped_until,
            now: self.now,
        }
    }
}
