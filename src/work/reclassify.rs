//! Reclassifying the connections at a connector whose status moved (or whose inferred
//! outage opened or closed) as units of work: durable work in `reclassify_queue`, done one
//! batch per transaction, each batch its own plan ([`plan::plan_reclassify`]) and its own
//! `now`. The connections an ended outage held get recovery slots spread over
//! `recovery_window` by their index in it.

use chrono::{DateTime, Utc};

use super::context::{Context, SweepError};
use super::emit::emit_notes;
use crate::domain::ConnectionId;
use crate::plan::classify::Health;
use crate::plan::policy::schedule::AutoRefresh;
use crate::plan::{self, ConnectorStatuses, PlanSettings};
use crate::store;

/// Connections reclassified per transaction: short enough that no write holds the lock for
/// long, even at a bank with a third of a million connections.
const RECLASSIFY_BATCH: u32 = 500;

impl Context {
    /// Works through the reclassification queue, one batch per transaction, until it is
    /// empty.
    pub async fn drain_reclassify(&self, statuses: &ConnectorStatuses) -> Result<(), SweepError> {
        let settings = self.plan_settings();
        while self.reclassify_batch(statuses, &settings).await? {}
        Ok(())
    }

    /// One batch, one unit of work (one `now`): read the next rows at the queued connector,
    /// plan them, write the plan and the queue's cursor, commit, then log. Returns whether
    /// there was a batch.
    async fn reclassify_batch(
        &self,
        statuses: &ConnectorStatuses,
        settings: &PlanSettings,
    ) -> Result<bool, SweepError> {
        let window = settings.window();
        let now = self.clock().now();
        let mut tx = self.store().write().await?;
        let Some(mut job) = store::connectors::next_reclassify(&mut tx).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        let rows =
            store::connections::rows_at_connector(&mut tx, &job.key, &job.cursor, RECLASSIFY_BATCH)
                .await?;
        let finished = rows.len() < RECLASSIFY_BATCH as usize;
        let inferred = store::connections::inference_at(
            &mut tx,
            &job.key,
            None,
            now.checked_sub_signed(window)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            settings.outage_min_users,
        )
        .await?
        .open;
        let ids: Vec<ConnectionId> = rows.iter().map(|r| r.connection_id.clone()).collect();
        let attempts = store::connections::attempts_for(&mut tx, &ids, now).await?;
        if let Some(last) = rows.last() {
            job.cursor = last.connection_id.as_str().to_owned();
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let held = rows
            .iter()
            .filter(|r| r.health == Some(Health::InstitutionOutage))
            .count();
        let slots = recovery_slots(&mut job, held, settings, &mut rng);
        let periods = store::connections::down_periods(&mut tx, &job.key, now, window)
            .await?
            .all();
        let plan = plan::plan_reclassify(
            now,
            rows,
            statuses,
            inferred,
            &periods,
            &attempts,
            settings,
            slots.into_iter(),
            &mut rng,
        );
        super::write::write_plans(&mut tx, &[&plan], now).await?;
        store::connectors::advance_reclassify(&mut tx, &job, finished).await?;
        tx.commit().await?;
        self.progress().touch(self.clock().now());
        if job.recovery
            && finished
            && job.recovery_total > 0
            && let Some(auto) = &settings.auto_refresh
        {
            log_recovery(&job, auto);
        }
        emit_notes(plan.notes);
        Ok(true)
    }
}

/// The recovery slots of one reclassification batch holding `held` connections an outage
/// held: the k-th of n refreshes in the k-th n-th of the window after the outage ended,
/// with jitter, so the whole window is used whatever the batch size. The window is
/// `recovery_window`, or the shortest the per-bank pace can keep
/// ([`crate::plan::policy::schedule::recovery_window`]).
fn recovery_slots(
    job: &mut store::connectors::Reclassify,
    held: usize,
    settings: &PlanSettings,
    rng: &mut impl rand::Rng,
) -> Vec<crate::plan::policy::schedule::Owed> {
    let Some(auto) = settings.auto_refresh.as_ref().filter(|_| job.recovery) else {
        return Vec::new();
    };
    let held = u32::try_from(held).unwrap_or(u32::MAX);
    let total = job
        .recovery_total
        .max(job.recovery_done.saturating_add(held));
    let (window, _) = crate::plan::policy::schedule::recovery_window(total, auto);
    let slots = (job.recovery_done..job.recovery_done.saturating_add(held))
        .map(|k| crate::plan::policy::schedule::Owed {
            at: crate::plan::policy::schedule::recovery_slot(k, total, window, job.queued_at, rng),
            trigger: crate::plan::policy::Trigger::Recovery,
            since: Some(job.ended_after.unwrap_or(job.queued_at)),
        })
        .collect();
    job.recovery_done = job.recovery_done.saturating_add(held);
    slots
}

/// One line when an outage's recoveries are planned: over `recovery_window`, or over a
/// longer one when the per-bank pace cannot send them all within it.
fn log_recovery(job: &store::connectors::Reclassify, auto: &AutoRefresh) {
    let (window, stretched) =
        crate::plan::policy::schedule::recovery_window(job.recovery_total, auto);
    if stretched {
        tracing::warn!(
            event = "recovery_scheduled",
            institution_id = %job.key.institution_id,
            method = %job.key.method,
            connections = job.recovery_total,
            window_s = window.as_secs(),
            recovery_window_s = auto.recovery_window.as_secs(),
            per_institution_per_minute = auto.per_institution_per_minute.get(),
            stretched = true,
            "outage over: the per-bank pace cannot send every recovery within refresh.recovery_window; spread over the shortest window it allows"
        );
    } else {
        tracing::info!(
            event = "recovery_scheduled",
            institution_id = %job.key.institution_id,
            method = %job.key.method,
            connections = job.recovery_total,
            window_s = window.as_secs(),
            stretched = false,
            "outage over: recovery refreshes spread over the window"
        );
    }
}
