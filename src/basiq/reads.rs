//! The reads: `GET` of users, connections, jobs, connectors and events, each answer decoded
//! into domain types. A list item that cannot be read is skipped, logged and counted; the
//! rest of the list is kept.

use serde::de::DeserializeOwned;
use url::Url;

use super::client::{Client, Ids, Listed, UserSummary};
use super::error::Error;
use super::pipeline::{one, parse};
use super::wire;
use crate::domain::{Connection, ConnectionId, Connector, Job, JobId, UserId};

impl Client {
    /// `GET /users/{id}`.
    pub async fn get_user(&self, user_id: &UserId) -> Result<UserSummary, Error> {
        let url = self.url(&["users", user_id.as_str()])?;
        let body = self
            .get_body("user", url, vec![], Ids::user(user_id))
            .await?;
        let user: wire::UserWire = parse("user", &body)?;
        let refs = user.connections.map(|l| l.data).unwrap_or_default();
        let refs = self.items("user", Ids::user(user_id), refs, |r: wire::Reference| {
            r.into_connection_id()
        });
        Ok(UserSummary {
            id: user.id,
            connection_ids: refs.items,
        })
    }

    /// `GET /users/{id}/connections`. An item that cannot be read is skipped, logged and
    /// counted: the list is then not complete ([`Listed::is_complete`]).
    pub async fn list_connections(&self, user_id: &UserId) -> Result<Listed<Connection>, Error> {
        let url = self.url(&["users", user_id.as_str(), "connections"])?;
        let ids = Ids::user(user_id);
        self.get_list(
            "connections",
            url,
            vec![],
            ids,
            wire::ConnectionWire::into_domain,
        )
        .await
    }

    /// `GET /users/{id}/connections/{cid}`.
    pub async fn get_connection(
        &self,
        user_id: &UserId,
        connection_id: &ConnectionId,
    ) -> Result<Connection, Error> {
        let url = self.url(&[
            "users",
            user_id.as_str(),
            "connections",
            connection_id.as_str(),
        ])?;
        let ids = Ids::connection(user_id, connection_id);
        self.get_one("connection", url, ids, wire::ConnectionWire::into_domain)
            .await
    }

    /// `GET /users/{id}/jobs`, optionally for one connection only (Basiq keeps 7 days). An
    /// item that cannot be read is skipped, logged and counted: that job is just not seen.
    pub async fn list_jobs(
        &self,
        user_id: &UserId,
        connection_id: Option<&ConnectionId>,
    ) -> Result<Vec<Job>, Error> {
        let query = connection_id
            .map(|c| vec![("filter", format!("connection.id.eq('{c}')"))])
            .unwrap_or_default();
        let ids = Ids {
            user_id: Some(user_id),
            connection_id,
            job_id: None,
        };
        let url = self.url(&["users", user_id.as_str(), "jobs"])?;
        let jobs = self
            .get_list("jobs", url, query, ids, wire::JobWire::into_domain)
            .await?;
        Ok(jobs.items)
    }

    /// `GET /jobs/{id}`.
    pub async fn get_job(&self, job_id: &JobId) -> Result<Job, Error> {
        let url = self.url(&["jobs", job_id.as_str()])?;
        self.get_one("job", url, Ids::job(job_id), wire::JobWire::into_domain)
            .await
    }

    /// `GET /connectors`: every connector's status, a few hundred of them. An entry that
    /// cannot be read is skipped, logged and counted; its last known status stays.
    pub async fn list_connectors(&self) -> Result<Vec<Connector>, Error> {
        let url = self.url(&["connectors"])?;
        let connectors = self
            .get_list(
                "connectors",
                url,
                vec![],
                Ids::default(),
                wire::ConnectorWire::into_domain,
            )
            .await?;
        Ok(connectors.items)
    }

    /// `GET /events/{id}`: the event with its user and resource.
    pub async fn get_event(
        &self,
        event_id: &crate::domain::EventId,
    ) -> Result<crate::domain::Event, Error> {
        let url = self.url(&["events", event_id.as_str()])?;
        self.get_one("event", url, Ids::default(), wire::EventWire::into_domain)
            .await
    }

    /// `GET /events`: the application's events of the last 7 days, one request (Basiq's
    /// `links.next` pages are not followed: the next poll continues from the cursor). An
    /// unreadable event is skipped, logged and counted.
    pub async fn list_events(&self) -> Result<Listed<crate::domain::Event>, Error> {
        let url = self.url(&["events"])?;
        self.get_list(
            "events",
            url,
            vec![],
            Ids::default(),
            wire::EventWire::into_domain,
        )
        .await
    }

    /// `GET` one resource, read like a list item so that an error names the field.
    async fn get_one<W: DeserializeOwned, D>(
        &self,
        endpoint: &'static str,
        url: Url,
        ids: Ids<'_>,
        convert: impl Fn(W) -> Result<D, wire::BadField>,
    ) -> Result<D, Error> {
        let body = self.get_body(endpoint, url, vec![], ids).await?;
        one(endpoint, &body, convert)
    }

    /// `GET` a list, its items decoded one by one ([`Self::items`]).
    async fn get_list<W: DeserializeOwned, D>(
        &self,
        endpoint: &'static str,
        url: Url,
        query: Vec<(&'static str, String)>,
        ids: Ids<'_>,
        convert: impl Fn(W) -> Result<D, wire::BadField>,
    ) -> Result<Listed<D>, Error> {
        let body = self.get_body(endpoint, url, query, ids).await?;
        let list: wire::RawList = parse(endpoint, &body)?;
        Ok(self.items(endpoint, ids, list.data, convert))
    }

    /// Decodes a list's items one by one; each unreadable one is logged once and counted.
    fn items<I: wire::Item, W: DeserializeOwned, D>(
        &self,
        endpoint: &'static str,
        ids: Ids<'_>,
        data: Vec<I>,
        convert: impl Fn(W) -> Result<D, wire::BadField>,
    ) -> Listed<D> {
        let decoded = wire::decode_items(data, convert);
        for item in &decoded.unreadable {
            tracing::warn!(
                event = "unreadable_item",
                endpoint,
                user_id = ids.user_id.map(UserId::as_str),
                item_id = %item.shown_id(),
                field = %item.field,
                error = %item.message,
                "skipped an item of a Basiq list that could not be read; the others are kept"
            );
        }
        let unreadable = decoded.unreadable.len();
        if unreadable > 0 {
            self.inner
                .stats
                .count_undecodable(endpoint, u64::try_from(unreadable).unwrap_or(u64::MAX));
        }
        Listed {
            items: decoded.items,
            unreadable,
        }
    }
}
