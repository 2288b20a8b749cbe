//! Group commit of users' plans: the one writer's side of a sweep.
//!
//! Users are fetched concurrently; their plans are made and written here, many per
//! transaction. The committer task takes a request, waits up to [`GROUP_WAIT`] for more (at
//! most [`store::GROUP_MAX`]), then, inside one `BEGIN IMMEDIATE` transaction: reads the
//! stored state of the whole group (two statements) and the inferred-outage facts of its
//! connectors (one statement each), plans the users one after the other
//! ([`plan::plan_group`]: each sees what the plans before it changed), writes every plan in
//! a handful of multi-row statements, and commits. A user's plan is applied whole or not at
//! all: when the group's write fails for a reason of one plan (not of the storage), the
//! group is rolled back and every member is planned and committed alone, so one bad plan
//! fails only its own user.
//!
//! Each group is one unit of work: one `now` from the committer's clock plans and writes
//! all of it. The wait for more plans ([`GROUP_WAIT`]) is the transport's, on tokio's time.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::domain::UserId;
use crate::plan::{self, ConnectorStatuses, Fetched, GroupMember, PlanSettings, UserPlan};
use crate::store::{self, Store};

/// How long the committer waits for more plans after the first of a group.
pub const GROUP_WAIT: Duration = Duration::from_millis(10);

/// One user's fetched answers, waiting to be planned and committed.
pub struct PlanRequest {
    pub user: UserId,
    pub fetched: Fetched,
    pub connectors: ConnectorStatuses,
    pub next_due_at: Option<chrono::DateTime<Utc>>,
    pub reply: oneshot::Sender<Result<UserPlan, sqlx::Error>>,
}

/// Runs until every sender is gone (the sweeper dropped).
pub async fn run_committer(
    store: Store,
    settings: PlanSettings,
    mut queue: mpsc::Receiver<PlanRequest>,
    clock: Clock,
) {
    let mut carried: Vec<PlanRequest> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut carried);
        if batch.is_empty() {
            match queue.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + GROUP_WAIT;
        while batch.len() < store::GROUP_MAX {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(request)) => batch.push(request),
                Ok(None) | Err(_) => break,
            }
        }
        // A user twice in one group (a login check during its sweep) waits for the next:
        // its second plan must see what the first wrote.
        let mut seen = BTreeSet::new();
        let (group, later): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|r| seen.insert(r.user.clone()));
        carried = later;
        commit(&store, &settings, &clock, group).await;
    }
}

async fn commit(store: &Store, settings: &PlanSettings, clock: &Clock, group: Vec<PlanRequest>) {
    match plan_and_write(store, settings, clock, &group).await {
        Ok(plans) => {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = store.group_stats();
            stats.commits.fetch_add(1, Relaxed);
            stats.plans.fetch_add(plans.len() as u64, Relaxed);
            for (request, plan) in group.into_iter().zip(plans) {
                let _ = request.reply.send(Ok(plan));
            }
        }
        Err(e) if group.len() > 1 && !store::health::is_storage_failure(&e) => {
            tracing::warn!(
                error = %e,
                users = group.len(),
                "a group commit failed for one of its plans; committing each user alone"
            );
            for request in group {
                Box::pin(commit(store, settings, clock, vec![request])).await;
            }
        }
        Err(e) => {
            let mut group = group.into_iter();
            if group.len() == 1
                && let Some(only) = group.next()
            {
                let _ = only.reply.send(Err(e));
                return;
            }
            for request in group {
                let _ = request.reply.send(Err(store::copy_error(&e)));
            }
        }
    }
}

async fn plan_and_write(
    store: &Store,
    settings: &PlanSettings,
    clock: &Clock,
    group: &[PlanRequest],
) -> Result<Vec<UserPlan>, sqlx::Error> {
    let mut tx = store.write().await?;
    let now = clock.now();
    let users: Vec<UserId> = group.iter().map(|r| r.user.clone()).collect();
    let stored = store::connections::load_users(&mut tx, &users, now).await?;
    let members: Vec<GroupMember<'_>> = group
        .iter()
        .map(|r| GroupMember {
            user: &r.user,
            fetched: &r.fetched,
            connectors: &r.connectors,
            next_due_at: r.next_due_at,
        })
        .collect();
    let keys = plan::group_keys(&members, &stored);
    let window = settings.window();
    let since = now
        .checked_sub_signed(window)
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    // Enough failing users listed that removing the whole group still leaves the threshold.
    let limit = settings
        .outage_min_users
        .max(1)
        .saturating_add(i64::try_from(group.len()).unwrap_or(i64::MAX))
        .saturating_add(1);
    let facts = store::connections::key_facts(&mut tx, &keys, since, window, limit).await?;
    let plans = plan::plan_group(now, &members, stored, &facts, settings, &mut rand::rng());
    let refs: Vec<&UserPlan> = plans.iter().collect();
    crate::work::write::write_plans(&mut tx, &refs, now).await?;
    tx.commit().await?;
    Ok(plans)
}
