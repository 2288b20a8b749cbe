//! The dry run of the next 24 hours (`basiq-health plan`): reads the store and the last
//! known connector statuses only; sends nothing and reserves nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{RefreshError, Refresher};
use crate::domain::UserId;
use crate::plan::policy::{self, RefreshMode, Trigger};

impl Refresher {
    /// The dry run of the next 24 hours: for every registered connection (of `users`, or
    /// all), when the daemon would refresh it and why, or why not. Reads the store and the
    /// last known connector statuses only: sends nothing and reserves nothing.
    pub async fn dry_run(
        &self,
        users: Option<&[UserId]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<PlanLine>, RefreshError> {
        let store = self.inner.context.store();
        let statuses = store.connector_statuses(now).await?;
        let mut rows = Vec::new();
        match users {
            Some(users) => {
                for u in users {
                    rows.extend(store.all_connections(Some(u)).await?);
                }
            }
            None => rows = store.all_connections(None).await?,
        }
        let limits = &self.inner.settings.limits;
        let window = self.inner.settings.unattended_window;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let facts = self.facts(&row, &statuses, now).await?;
            let daily = (limits.mode == RefreshMode::Daily).then(|| {
                row.daily_due_at.filter(|t| *t >= now).unwrap_or_else(|| {
                    window.slot(self.inner.seed, row.connection_id.as_str(), now)
                })
            });
            let upcoming = policy::schedule::upcoming(
                &facts.facts(),
                row.refresh_due,
                daily,
                facts.oldest_attempt,
                limits,
                chrono::Duration::hours(24),
            );
            let note = late_recovery(
                &upcoming,
                row.refresh_due,
                self.inner.settings.recovery_window,
            );
            out.push(PlanLine {
                user_id: row.user_id.to_string(),
                connection_id: row.connection_id.to_string(),
                institution_id: row.institution_id.to_string(),
                method: row.method.as_str().to_owned(),
                health: row.health.map(|h| h.as_str().to_owned()),
                upcoming,
                note,
            });
        }
        Ok(out)
    }
}

/// One connection's next 24 hours, as `plan` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanLine {
    pub user_id: String,
    pub connection_id: String,
    pub institution_id: String,
    pub method: String,
    pub health: Option<String>,
    /// `{"refresh_at", "trigger"}` or `{"denied": reason}`.
    #[serde(flatten)]
    pub upcoming: policy::schedule::Upcoming,
    /// Why a recovery comes later than `refresh.recovery_window` after its outage's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// A recovery planned later than `recovery_window` after its outage ended.
fn late_recovery(
    upcoming: &policy::schedule::Upcoming,
    owed: Option<policy::schedule::Owed>,
    window: std::time::Duration,
) -> Option<&'static str> {
    let policy::schedule::Upcoming::Refresh {
        refresh_at,
        trigger: Trigger::Recovery,
    } = upcoming
    else {
        return None;
    };
    let ended = owed?.since?;
    let window = chrono::Duration::from_std(window).ok()?;
    (*refresh_at > ended + window).then_some(
        "after refresh.recovery_window: the per-bank pace cannot send this outage's \
         recoveries within it (spread over the shortest window it allows), or the recency \
         floor comes later",
    )
}
