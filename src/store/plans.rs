//! Writing plans: every table a planned unit of work touches, in the caller's transaction.
//! Values only: what to write was decided by the planner (`crate::plan`); the
//! notifications the plans cause are written by the caller after these
//! ([`super::events::write_planned`]).

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::connections::write_rows;
use super::shapes;
use super::{Result, WriteTx, ts, ts_ceil};
use crate::domain::{ConnectionId, ConnectorKey, Job, UserId};
use crate::plan::classify::Health;
use crate::plan::{ConnectionRow, HealthChange, OutageMove, UserPlan};

/// Writes whole plans (a group commit's): jobs (never backwards), connections, gone ones,
/// health changes, inferred outages opening and closing, the reclassifications they queue,
/// and each user's sweep. Multi-row statements: a handful of hand-offs to SQLite's thread
/// for the whole group, whatever the number of users, jobs and connections. Returns the
/// inferred outages that opened (`true`) or closed here: one another transaction moved
/// already (two units of work seeing the same failures) is not told twice.
pub async fn write_plans(
    tx: &mut WriteTx,
    plans: &[&UserPlan],
    now: DateTime<Utc>,
) -> Result<Vec<(ConnectorKey, bool)>> {
    let conn: &mut SqliteConnection = tx;
    let jobs: Vec<(&UserId, &Job, Option<&ConnectionId>)> = plans
        .iter()
        .filter_map(|p| p.user_id.as_ref().map(|u| (u, &p.jobs)))
        .flat_map(|(u, jobs)| jobs.iter().map(move |(j, c)| (u, j, c.as_ref())))
        .collect();
    if !jobs.is_empty() {
        super::jobs::upsert_jobs(conn, &jobs, now).await?;
    }
    let rows: Vec<&ConnectionRow> = plans.iter().flat_map(|p| &p.connections).collect();
    for chunk in shapes::chunks(&rows) {
        write_rows(conn, chunk, now).await?;
    }
    let gone: Vec<&ConnectionId> = plans.iter().flat_map(|p| &p.gone).collect();
    mark_gone(conn, &gone, now).await?;
    let changes: Vec<&HealthChange> = plans.iter().flat_map(|p| &p.health_changes).collect();
    insert_health_changes(conn, &changes, now).await?;
    // Outages and reclassifications are rare: one after the other.
    let mut moved = Vec::new();
    for outage in plans.iter().flat_map(|p| &p.outages) {
        if let Some(done) = write_outage_move(conn, outage, now).await? {
            moved.push(done);
        }
    }
    for r in plans.iter().flat_map(|p| &p.reclassify) {
        super::connectors::queue_reclassify(conn, &r.key, r.ended_after, now).await?;
    }
    let swept: Vec<(&UserId, DateTime<Utc>)> = plans
        .iter()
        .filter_map(|p| p.user_id.as_ref().zip(p.next_due_at))
        .collect();
    mark_swept(conn, &swept, now).await?;
    for (user, by) in plans.iter().flat_map(|p| &p.sweep_by) {
        sqlx::query(
            "UPDATE users SET next_due_at = MIN(next_due_at, ?) WHERE user_id = ? AND gone_at IS NULL",
        )
        .bind(ts_ceil(*by))
        .bind(user.as_str().to_owned())
        .execute(&mut *conn)
        .await?;
    }
    Ok(moved)
}

async fn mark_gone(
    conn: &mut SqliteConnection,
    gone: &[&ConnectionId],
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in shapes::padded(gone) {
        let marks = shapes::repeat("?", chunk.len());
        let sql = format!(
            "UPDATE connections SET gone_at = ? WHERE gone_at IS NULL AND connection_id IN ({marks})"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ts(now));
        for id in &chunk {
            query = query.bind(id.as_str().to_owned());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_health_changes(
    conn: &mut SqliteConnection,
    changes: &[&HealthChange],
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in shapes::chunks(changes) {
        let values = shapes::repeat("(?, ?, ?, ?, ?, ?, ?)", chunk.len());
        let sql = format!(
            "INSERT INTO health_changes (connection_id, user_id, from_health, to_health, reason, job_id, changed_at)
             VALUES {values}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for change in chunk {
            query = query
                .bind(change.connection_id.as_str().to_owned())
                .bind(change.user_id.as_str().to_owned())
                .bind(change.from.map(Health::as_str))
                .bind(change.to.as_str())
                .bind(change.reason.clone())
                .bind(change.job_id.clone())
                .bind(ts(now));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The move, if it moved anything.
async fn write_outage_move(
    conn: &mut SqliteConnection,
    outage: &OutageMove,
    now: DateTime<Utc>,
) -> Result<Option<(ConnectorKey, bool)>> {
    let (key, opened, done) = match outage {
        OutageMove::Open { key, users } => {
            (key, true, open_inferred(conn, key, *users, now).await?)
        }
        OutageMove::Close { key, .. } => (
            key,
            false,
            super::connectors::close_inferred(conn, key, now).await?,
        ),
    };
    Ok(done.then(|| (key.clone(), opened)))
}

async fn open_inferred(
    conn: &mut SqliteConnection,
    key: &ConnectorKey,
    users: i64,
    now: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO outages (institution_id, method, source, started_at, affected_users)
         VALUES (?, ?, 'inferred', ?, ?)
         ON CONFLICT (institution_id, method, source) WHERE ended_at IS NULL DO NOTHING",
    )
    .bind(key.institution_id.clone())
    .bind(key.method.clone())
    .bind(ts(now))
    .bind(users)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

async fn mark_swept(
    conn: &mut SqliteConnection,
    swept: &[(&UserId, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in shapes::chunks(swept) {
        let values = shapes::repeat("(?, ?)", chunk.len());
        let sql = format!(
            "UPDATE users SET last_swept_at = ?, next_due_at = v.column2, gone_at = NULL
             FROM (VALUES {values}) AS v WHERE users.user_id = v.column1"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ts(now));
        for (user, next) in chunk {
            query = query.bind(user.as_str().to_owned()).bind(ts_ceil(*next));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}
