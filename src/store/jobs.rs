//! Jobs and their steps, kept after Basiq forgets them (7 days).

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::{Result, Store, from_opt_ts, opt_ts, ts};
use crate::domain::{ConnectionId, Job, JobId, StepResult, UserId};

/// A stored job, for reports and the policy.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct JobRow {
    pub job_id: String,
    pub user_id: String,
    pub connection_id: Option<String>,
    pub institution_id: Option<String>,
    pub state: String,
    pub failure_code: Option<String>,
    pub failed_step: Option<String>,
    pub created: Option<i64>,
    pub updated: Option<i64>,
}

impl JobRow {
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        from_opt_ts(self.created)
    }
}

/// Inserts or updates a job and replaces its steps. `connection_id` is the connection the
/// job was matched to (from `links.source`, or by institution when that is missing). A
/// stored job never goes backwards: an older snapshot (lower `updated`), or a finished job
/// seen in progress again, changes nothing. Returns whether it was written.
/// Steps per multi-row INSERT (7 parameters each, well under SQLite's 32,766).
const STEPS_PER_STATEMENT: usize = 1000;

pub async fn upsert_job(
    conn: &mut SqliteConnection,
    user_id: &UserId,
    job: &Job,
    connection_id: Option<&ConnectionId>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let failed = job.failed_step();
    let written = sqlx::query(
        "INSERT INTO jobs (job_id, user_id, connection_id, institution_id, job_type, state,
                           failure_code, failed_step, created, updated, first_seen_at, last_seen_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (job_id) DO UPDATE SET
             connection_id = COALESCE(excluded.connection_id, jobs.connection_id),
             institution_id = COALESCE(excluded.institution_id, jobs.institution_id),
             job_type = COALESCE(excluded.job_type, jobs.job_type),
             state = excluded.state, failure_code = excluded.failure_code,
             failed_step = excluded.failed_step,
             created = COALESCE(excluded.created, jobs.created),
             updated = COALESCE(excluded.updated, jobs.updated),
             last_seen_at = excluded.last_seen_at
         WHERE NOT (jobs.state != 'in-progress' AND excluded.state = 'in-progress')
           AND (excluded.updated IS NULL OR jobs.updated IS NULL OR excluded.updated >= jobs.updated)",
    )
    .bind(job.id.as_str())
    .bind(user_id.as_str())
    .bind(connection_id.map(ConnectionId::as_str))
    .bind(job.institution_id.as_ref().map(|i| i.as_str().to_owned()))
    .bind(job.job_type.clone())
    .bind(job.state().as_str())
    .bind(job.failure_code().map(str::to_owned))
    .bind(failed.map(|s| s.title.clone()))
    .bind(opt_ts(job.created))
    .bind(opt_ts(job.updated))
    .bind(ts(now))
    .bind(ts(now))
    .execute(&mut *conn)
    .await?;
    if written.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM job_steps WHERE job_id = ?")
        .bind(job.id.as_str())
        .execute(&mut *conn)
        .await?;
    // The steps in one statement (a job has a handful; chunked, so a job with thousands
    // stays under SQLite's parameter limit): one hand-off to SQLite's thread, not one per step.
    for (chunk_index, chunk) in job.steps.chunks(STEPS_PER_STATEMENT).enumerate() {
        let mut sql = String::from(
            "INSERT INTO job_steps (job_id, position, title, status, result_code, result_title, result_detail) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?, ?, ?)"
            });
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, step) in chunk.iter().enumerate() {
            let position = chunk_index * STEPS_PER_STATEMENT + i;
            let (code, title, detail) = match &step.result {
                StepResult::Failure {
                    code,
                    title,
                    detail,
                } => (Some(code.clone()), title.clone(), detail.clone()),
                _ => (None, None, None),
            };
            query = query
                .bind(job.id.as_str().to_owned())
                .bind(i64::try_from(position).unwrap_or(i64::MAX))
                .bind(step.title.clone())
                .bind(step.status.as_str().to_owned())
                .bind(code)
                .bind(title)
                .bind(detail);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(true)
}

impl Store {
    pub async fn get_job(&self, id: &JobId) -> Result<Option<JobRow>> {
        sqlx::query_as(
            "SELECT job_id, user_id, connection_id, institution_id, state, failure_code,
                    failed_step, created, updated FROM jobs WHERE job_id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(self.pool())
        .await
    }

    /// Jobs of one connection, newest first.
    pub async fn jobs_for_connection(&self, id: &ConnectionId, limit: u32) -> Result<Vec<JobRow>> {
        sqlx::query_as(
            "SELECT job_id, user_id, connection_id, institution_id, state, failure_code,
                    failed_step, created, updated FROM jobs
             WHERE connection_id = ? ORDER BY created DESC LIMIT ?",
        )
        .bind(id.as_str())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
    }

    pub async fn count_jobs(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
            .fetch_one(self.pool())
            .await
    }
}
