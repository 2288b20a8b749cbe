//! Jobs and their steps, kept after Basiq forgets them (7 days).

use std::collections::HashSet;

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

/// Stores jobs (of one or many users) in a few statements of fixed shapes: multi-row
/// upserts (`RETURNING` says which were written), then the steps of the written ones
/// replaced by a DELETE and multi-row INSERTs. Each job comes with the connection it
/// was matched to (from `links.source`, or by institution when that is missing). A stored
/// job never goes backwards: an older snapshot (lower `updated`), or a finished job seen in
/// progress again, changes nothing.
pub async fn upsert_jobs(
    conn: &mut SqliteConnection,
    jobs: &[(&UserId, &Job, Option<&ConnectionId>)],
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in super::shapes::chunks(jobs) {
        let written = upsert_chunk(conn, chunk, now).await?;
        let written = last_copies(chunk, &written);
        if written.is_empty() {
            continue;
        }
        delete_steps(conn, &written).await?;
        let steps: Vec<(&Job, usize, &crate::domain::Step)> = written
            .iter()
            .flat_map(|job| job.steps.iter().enumerate().map(move |(i, s)| (*job, i, s)))
            .collect();
        insert_steps(conn, &steps).await?;
    }
    Ok(())
}

/// Upserts one chunk of jobs in one multi-row statement; returns the ids it wrote (a job
/// that would go backwards is not written).
async fn upsert_chunk(
    conn: &mut SqliteConnection,
    chunk: &[(&UserId, &Job, Option<&ConnectionId>)],
    now: DateTime<Utc>,
) -> Result<HashSet<String>> {
    let mut sql = String::from(
        "INSERT INTO jobs (job_id, user_id, connection_id, institution_id, job_type, state,
                               failure_code, failed_step, created, updated, first_seen_at, last_seen_at)
             VALUES ",
    );
    sql.push_str(&super::shapes::repeat(
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        chunk.len(),
    ));
    sql.push_str(
        " ON CONFLICT (job_id) DO UPDATE SET
                 connection_id = COALESCE(excluded.connection_id, jobs.connection_id),
                 institution_id = COALESCE(excluded.institution_id, jobs.institution_id),
                 job_type = COALESCE(excluded.job_type, jobs.job_type),
                 state = excluded.state, failure_code = excluded.failure_code,
                 failed_step = excluded.failed_step,
                 created = COALESCE(excluded.created, jobs.created),
                 updated = COALESCE(excluded.updated, jobs.updated),
                 last_seen_at = excluded.last_seen_at
             WHERE NOT (jobs.state != 'in-progress' AND excluded.state = 'in-progress')
               AND (excluded.updated IS NULL OR jobs.updated IS NULL OR excluded.updated >= jobs.updated)
             RETURNING job_id",
    );
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
    for (user_id, job, connection_id) in chunk {
        let failed = job.failed_step();
        query = query
            .bind(job.id.as_str().to_owned())
            .bind(user_id.as_str().to_owned())
            .bind(connection_id.map(|c| c.as_str().to_owned()))
            .bind(job.institution_id.as_ref().map(|i| i.as_str().to_owned()))
            .bind(job.job_type.clone())
            .bind(job.state().as_str())
            .bind(job.failure_code().map(str::to_owned))
            .bind(failed.map(|s| s.title.clone()))
            .bind(opt_ts(job.created))
            .bind(opt_ts(job.updated))
            .bind(ts(now))
            .bind(ts(now));
    }
    Ok(query.fetch_all(&mut *conn).await?.into_iter().collect())
}

/// The written jobs of a chunk in chunk order, each once: a job listed twice was upserted
/// twice, and its steps are the last copy's.
fn last_copies<'a>(
    chunk: &[(&UserId, &'a Job, Option<&ConnectionId>)],
    written: &HashSet<String>,
) -> Vec<&'a Job> {
    let mut seen = HashSet::new();
    let mut last: Vec<&Job> = chunk
        .iter()
        .rev()
        .map(|(_, job, _)| *job)
        .filter(|job| written.contains(job.id.as_str()) && seen.insert(job.id.as_str()))
        .collect();
    last.reverse();
    last
}

/// Deletes the stored steps of `jobs`, in one statement.
async fn delete_steps(conn: &mut SqliteConnection, jobs: &[&Job]) -> Result<()> {
    for list in super::shapes::padded(jobs) {
        let sql = format!(
            "DELETE FROM job_steps WHERE job_id IN ({})",
            super::shapes::repeat("?", list.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for job in list {
            query = query.bind(job.id.as_str().to_owned());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Steps in multi-row INSERTs of the fixed sizes.
async fn insert_steps(
    conn: &mut SqliteConnection,
    steps: &[(&Job, usize, &crate::domain::Step)],
) -> Result<()> {
    for chunk in super::shapes::chunks(steps) {
        let mut sql = String::from(
            "INSERT INTO job_steps (job_id, position, title, status, result_code, result_title, result_detail) VALUES ",
        );
        sql.push_str(&super::shapes::repeat("(?, ?, ?, ?, ?, ?, ?)", chunk.len()));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (job, position, step) in chunk {
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
                .bind(i64::try_from(*position).unwrap_or(i64::MAX))
                .bind(step.title.clone())
                .bind(step.status.as_str().to_owned())
                .bind(code)
                .bind(title)
                .bind(detail);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
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
             WHERE connection_id = ? ORDER BY created DESC LIMIT ? + 0",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Step, StepStatus};

    fn job(id: &str, steps: usize, minutes_ago: i64) -> Job {
        let at = Utc::now() - chrono::Duration::minutes(minutes_ago);
        Job {
            id: JobId::parse(id).unwrap(),
            created: Some(at),
            updated: Some(at),
            job_type: None,
            institution_id: None,
            connection_id: None,
            has_source: false,
            steps: (0..steps)
                .map(|i| Step {
                    title: format!("step-{i}"),
                    status: StepStatus::Success,
                    result: StepResult::None,
                })
                .collect(),
        }
    }

    async fn steps_of(store: &Store, id: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT title FROM job_steps WHERE job_id = ? ORDER BY position")
            .bind(id)
            .fetch_all(store.pool())
            .await
            .unwrap()
    }

    /// Many jobs in few statements keep the one-by-one rules: a job listed twice is
    /// written once with the last copy's steps, thousands of steps stay under SQLite's
    /// parameter limit, and an older snapshot changes nothing.
    #[tokio::test]
    async fn many_jobs_at_once_keep_the_one_by_one_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.db")).await.unwrap();
        let user = UserId::parse("u1").unwrap();
        let now = Utc::now();
        let twice_a = job("j-twice", 2, 10);
        let mut twice_b = job("j-twice", 3, 10);
        twice_b.updated = Some(now - chrono::Duration::minutes(5));
        let long = job("j-long", 2500, 20);
        let jobs = [twice_a, twice_b, long];
        let jobs: Vec<(&UserId, &Job, Option<&ConnectionId>)> =
            jobs.iter().map(|j| (&user, j, None)).collect();
        let mut tx = store.write().await.unwrap();
        upsert_jobs(&mut tx, &jobs, now).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            steps_of(&store, "j-twice").await,
            ["step-0", "step-1", "step-2"]
        );
        let long = steps_of(&store, "j-long").await;
        assert_eq!(long.len(), 2500);
        assert_eq!(long[2499], "step-2499");

        // An older snapshot of j-twice with one step: not written.
        let older = job("j-twice", 1, 30);
        let mut tx = store.write().await.unwrap();
        upsert_jobs(&mut tx, &[(&user, &older, None)], now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(steps_of(&store, "j-twice").await.len(), 3);
    }
}
