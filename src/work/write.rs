//! Committing plans: the plan's values, then the notifications they cause, in the caller's
//! transaction, so that a notification exists exactly when the change that causes it does.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{Connector, ConnectorKey};
use crate::plan::OutageSource;
use crate::plan::UserPlan;
use crate::plan::connectors::{ConnectorsPlan, plan_connectors};
use crate::plan::notices::{self, Planned};
use crate::store::{self, Store, WriteTx};

/// Writes plans (a group commit's or one unit's) and the notifications they cause: health
/// changes not told yet, consent warnings, and one notice per inferred outage the write
/// really opened or closed.
pub async fn write_plans(
    tx: &mut WriteTx,
    plans: &[&UserPlan],
    now: DateTime<Utc>,
) -> store::Result<()> {
    let moved = store::plans::write_plans(tx, plans, now).await?;
    if !tx.notices() {
        return Ok(());
    }
    let told = store::events::told(tx, &notices::to_tell(plans)).await?;
    let affected = affected(tx, moved.iter().map(|(key, _)| key)).await?;
    let planned = notices::plan_notices(plans, &told, &moved, &affected);
    store::events::write_planned(tx, &planned, now).await
}

/// Commits one plan in a transaction of its own.
pub async fn commit_plan(store: &Store, plan: &UserPlan, now: DateTime<Utc>) -> store::Result<()> {
    let mut tx = store.write().await?;
    write_plans(&mut tx, &[plan], now).await?;
    tx.commit().await
}

/// Plans a `/connectors` answer against what was known and commits it, with one notice per
/// outage Basiq reported starting or ending. Returns the plan (its status changes).
pub async fn commit_connectors(
    store: &Store,
    answer: &[Connector],
    now: DateTime<Utc>,
) -> store::Result<ConnectorsPlan> {
    let mut tx = store.write().await?;
    let known = store::connectors::known_connectors(&mut tx).await?;
    let plan = plan_connectors(&known, answer, now);
    store::connectors::write_connectors(&mut tx, &plan, now).await?;
    if tx.notices() {
        let affected = affected(&mut tx, plan.told.iter().map(|(key, _)| key)).await?;
        let notices = plan
            .told
            .iter()
            .map(|(key, down)| {
                let count = affected.get(key).copied().unwrap_or(0);
                notices::outage_notice(key, *down, OutageSource::Connectors, count)
            })
            .collect();
        let planned = Planned {
            notices,
            told: Vec::new(),
        };
        store::events::write_planned(&mut tx, &planned, now).await?;
    }
    tx.commit().await?;
    Ok(plan)
}

/// The watched connections at each connector (an outage notice's count).
async fn affected<'a>(
    tx: &mut WriteTx,
    keys: impl Iterator<Item = &'a ConnectorKey>,
) -> store::Result<HashMap<ConnectorKey, i64>> {
    let mut out = HashMap::new();
    for key in keys {
        out.insert(key.clone(), store::events::connections_at(tx, key).await?);
    }
    Ok(out)
}
