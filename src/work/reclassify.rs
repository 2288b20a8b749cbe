//! Reclassifying the connections at a connector whose status moved (or whose inferred
//! outage opened or closed) as units of work: durable work in `reclassify_queue`, done one
//! batch per transaction, each batch its own plan ([`plan::plan_reclassify`]), its own `now`
//! and the connector statuses committed when it runs. The connections an ended outage held
//! get recovery slots spread over `recovery_window` by their index in it.
//!
//! Two drainers. An outage's recovery is drained by the unit of work that queued it before
//! that unit answers: the `/connectors` read does it under the connector cache's lock, so no
//! sweep classifies a held connection against the new statuses (and takes it out of the
//! outage without its recovery slot) before the batch reached it. Every other entry (the
//! first sight of a connector, a connector going down, an inferred outage opening) is
//! drained by one background worker ([`super::background`]) while sweeps and login checks
//! go on with what is known: a connection not reclassified yet is classified with the new
//! statuses when its user is swept, and the batch that reaches it later finds nothing to
//! change. Each batch reads the statuses as committed, inside its own transaction, so a
//! read of `/connectors` that committed meanwhile is what it classifies against.

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::context::{Context, SweepError};
use super::emit::emit_notes;
use crate::domain::ConnectionId;
use crate::plan::classify::{DownPeriod, Health};
use crate::plan::policy::schedule::AutoRefresh;
use crate::plan::{self, Attempts, ConnectionRow, ConnectorStatuses, PlanSettings};
use crate::store;

/// Connections reclassified per transaction: short enough that no write holds the lock for
/// long, even at a bank with a third of a million connections.
const RECLASSIFY_BATCH: u32 = 500;

impl Context {
    /// Works through the queued recoveries (outages that ended), one batch per transaction,
    /// until none is left. Reads first: nothing queued costs no write transaction.
    pub async fn drain_recoveries(&self) -> Result<(), SweepError> {
        if !self.store().reclassify_pending(true).await? {
            return Ok(());
        }
        let settings = self.plan_settings();
        while self.reclassify_batch(true, &settings).await? {}
        Ok(())
    }

    /// Works through the whole queue here, recoveries first, until it is empty or `cancel`
    /// fires (between batches): a one-shot command leaves no work behind.
    pub async fn drain_reclassify(&self, cancel: &CancellationToken) -> Result<(), SweepError> {
        self.drain_recoveries().await?;
        let settings = self.plan_settings();
        while !cancel.is_cancelled() && self.reclassify_batch(false, &settings).await? {}
        Ok(())
    }

    /// A unit of work queued reclassifications: the recoveries before it answers, the rest
    /// in the background.
    pub(super) async fn reclassify_queued(&self) -> Result<(), SweepError> {
        self.wake_reclassify();
        self.drain_recoveries().await
    }

    /// The background reclassification's unit: the next batch that is not a recovery.
    /// Returns whether more may be left (not after a failure: the next wake, at the latest
    /// the next tick's, resumes it). Reads first: a wake with nothing queued (every tick
    /// wakes it) costs a read, not a write transaction.
    pub(super) async fn reclassify_in_background(&self) -> bool {
        let batch = async {
            if !self.store().reclassify_pending(false).await? {
                return Ok(false);
            }
            self.reclassify_batch(false, &self.plan_settings()).await
        };
        match batch.await {
            Ok(more) => more,
            Err(e) => {
                tracing::error!(error = %e, "reclassification failed; it resumes on the next tick");
                false
            }
        }
    }

    /// One batch, one unit of work (one `now`): read the next rows at the oldest queued
    /// connector that is (`recovery`) or is not an outage's recovery, plan them, write the
    /// plan and the queue's cursor, commit, then log. Returns whether there was a batch.
    async fn reclassify_batch(
        &self,
        recovery: bool,
        settings: &PlanSettings,
    ) -> Result<bool, SweepError> {
        let now = self.clock().now();
        let mut tx = self.store().write().await?;
        let Some(mut job) = store::connectors::next_reclassify(&mut tx, recovery).await? else {
            tx.rollback().await?;
            return Ok(false);
        };
        let batch = Batch::read(&mut tx, &job, now, settings).await?;
        let finished = batch.rows.len() < RECLASSIFY_BATCH as usize;
        if let Some(last) = batch.rows.last() {
            job.cursor_rowid = batch.last_rowid.unwrap_or(job.cursor_rowid);
            job.cursor = last.connection_id.as_str().to_owned();
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let held = batch
            .rows
            .iter()
            .filter(|r| r.health == Some(Health::InstitutionOutage))
            .count();
        let slots = recovery_slots(&mut job, held, settings, &mut rng);
        let plan = plan::plan_reclassify(
            now,
            batch.rows,
            &batch.statuses,
            batch.inferred,
            &batch.periods,
            &batch.attempts,
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

/// What one batch reads in its transaction: the next rows at the connector, the statuses
/// committed at its institution, the inferred-outage facts, the down periods and our
/// attempts of the rows. Each read goes through an index: its cost is the batch's.
struct Batch {
    rows: Vec<ConnectionRow>,
    /// Where the walk stands after the rows.
    last_rowid: Option<i64>,
    statuses: ConnectorStatuses,
    inferred: bool,
    periods: Vec<DownPeriod>,
    attempts: std::collections::HashMap<ConnectionId, Attempts>,
}

impl Batch {
    async fn read(
        tx: &mut sqlx::SqliteConnection,
        job: &store::connectors::Reclassify,
        now: DateTime<Utc>,
        settings: &PlanSettings,
    ) -> Result<Self, SweepError> {
        let window = settings.window();
        let key = &job.key;
        // Our attempts of the rows come with them, in the same statement.
        let store::connections::AtConnector {
            rows,
            attempts,
            last_rowid,
        } = store::connections::rows_at_connector(tx, key, job.cursor_rowid, RECLASSIFY_BATCH, now)
            .await?;
        // As committed, not as some task's copy of the cache: a read of `/connectors` that
        // committed since the entry was queued (and queued it again) is what this batch sees.
        let statuses = store::connectors::statuses_at(tx, &key.institution_id, now).await?;
        let since = now
            .checked_sub_signed(window)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let inferred =
            store::connections::inference_at(tx, key, None, since, settings.outage_min_users)
                .await?
                .open;
        let periods = store::connections::down_periods(tx, key, now, window)
            .await?
            .all();
        Ok(Self {
            rows,
            last_rowid,
            statuses,
            inferred,
            periods,
            attempts,
        })
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
