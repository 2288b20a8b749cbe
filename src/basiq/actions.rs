//! The changes: a connection's refresh and its purge. Neither is ever retried blindly: Basiq
//! may have acted on a request whose answer was lost.

use chrono::{DateTime, Utc};
use reqwest::{Method as HttpMethod, StatusCode};

use super::client::{Client, Ids, RefreshOutcome};
use super::error::Error;
use super::pipeline::{Call, one};
use super::wire;
use crate::domain::{ConnectionId, JobId, UserId};

impl Client {
    /// `POST /users/{id}/connections/{cid}/refresh`: 202 is a new job, 200 the running one.
    ///
    /// Never retried blindly: Basiq may have accepted a request whose answer was lost. After
    /// a timeout or a dropped connection, the jobs of this connection are looked up instead.
    pub async fn refresh_connection(
        &self,
        user_id: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<RefreshOutcome, Error> {
        let asked_at = self.inner.clock.now();
        let call = self.connection_action(user_id, connection_id, "refresh")?;
        match self.execute(call).await {
            Ok((status, body)) => {
                let id = one("refresh", &body, wire::JobStub::into_domain)?;
                Ok(if status == StatusCode::OK {
                    RefreshOutcome::Existing(id)
                } else {
                    RefreshOutcome::Created(id)
                })
            }
            Err(err @ Error::Transport { .. }) => {
                tracing::warn!(
                    user_id = %user_id,
                    connection_id = %connection_id,
                    error = %err,
                    "refresh answer lost; looking for the job instead of sending it again"
                );
                match self
                    .find_lost_refresh(user_id, connection_id, asked_at)
                    .await
                {
                    Some(job) => Ok(RefreshOutcome::FoundAfterTimeout(job)),
                    None => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    /// `POST /users/{id}/connections/{cid}/purge` (204): deletes the connection's data,
    /// keeps its id. Irreversible, so never retried.
    pub async fn purge_connection(
        &self,
        user_id: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<(), Error> {
        let call = self.connection_action(user_id, connection_id, "purge")?;
        self.execute(call).await.map(|_| ())
    }

    /// `POST /users/{id}/connections/{cid}/{action}`, never retried.
    fn connection_action<'a>(
        &self,
        user_id: &'a UserId,
        connection_id: &'a ConnectionId,
        action: &'static str,
    ) -> Result<Call<'a>, Error> {
        Ok(Call {
            method: HttpMethod::POST,
            url: self.url(&[
                "users",
                user_id.as_str(),
                "connections",
                connection_id.as_str(),
                action,
            ])?,
            query: vec![],
            endpoint: action,
            ids: Ids::connection(user_id, connection_id),
            retry_transient: false,
        })
    }

    /// The job a refresh asked at `asked_at` started, though its answer was lost: looked for
    /// after each of `refresh_lookups`' delays in turn (the newest job created since a little
    /// before the ask). `None` after the last look.
    async fn find_lost_refresh(
        &self,
        user_id: &UserId,
        connection_id: &ConnectionId,
        asked_at: DateTime<Utc>,
    ) -> Option<JobId> {
        let since = asked_at - chrono::Duration::seconds(5);
        let looks = self.inner.options.refresh_lookups;
        for (look, delay) in looks.iter().enumerate() {
            tokio::time::sleep(*delay).await;
            match self.list_jobs(user_id, Some(connection_id)).await {
                Ok(jobs) => {
                    let found = jobs
                        .into_iter()
                        .filter(|j| j.created.is_some_and(|c| c >= since))
                        .max_by_key(|j| j.created);
                    if let Some(job) = found {
                        return Some(job.id);
                    }
                }
                Err(e) => tracing::warn!(
                    user_id = %user_id,
                    connection_id = %connection_id,
                    correlation_id = e.correlation_id(),
                    error = %e,
                    look = look + 1,
                    "could not list the jobs while looking for a lost refresh"
                ),
            }
        }
        tracing::warn!(
            user_id = %user_id,
            connection_id = %connection_id,
            looks = looks.len(),
            "no job found for the lost refresh; it counts as attempted and is not resent"
        );
        None
    }
}
