//! `POST .../purge` after checking the connection is active; every request is audited.

use super::{RefreshError, Refresher};
use crate::domain::{ConnectionId, UserId};

/// What `purge` found or did.
#[derive(Clone, Debug)]
pub enum PurgeOutcome {
    /// Not confirmed: what would be removed.
    WouldPurge(crate::domain::Connection),
    /// Basiq can only purge active connections.
    NotActive(crate::domain::Connection),
    Purged(crate::domain::Connection),
}

impl Refresher {
    /// `POST .../purge` after checking the connection is active; every request is audited.
    /// Purge deletes the connection's accounts and transactions and keeps its id.
    pub async fn purge(
        &self,
        user: &UserId,
        connection_id: &ConnectionId,
        confirmed: bool,
    ) -> Result<PurgeOutcome, RefreshError> {
        let client = self.inner.context.client();
        let store = self.inner.context.store();
        let connection = client.get_connection(user, connection_id).await?;
        // One command, one `now`: when the connection was read and the purge decided.
        let now = self.inner.context.clock().now();
        let institution = Some(connection.institution_id.as_str());
        if connection.status != crate::domain::ConnectionStatus::Active {
            store
                .record_purge(
                    user,
                    connection_id,
                    institution,
                    "refused-not-active",
                    None,
                    None,
                    Some(connection.status.as_str()),
                    now,
                )
                .await?;
            return Ok(PurgeOutcome::NotActive(connection));
        }
        if !confirmed {
            return Ok(PurgeOutcome::WouldPurge(connection));
        }
        match client.purge_connection(user, connection_id).await {
            Ok(()) => {
                store
                    .record_purge(
                        user,
                        connection_id,
                        institution,
                        "purged",
                        Some(204),
                        None,
                        None,
                        now,
                    )
                    .await?;
                tracing::warn!(
                    event = "connection_purged",
                    user_id = %user,
                    connection_id = %connection_id,
                    institution_id = %connection.institution_id,
                    "connection purged: accounts and transactions deleted, id kept"
                );
                Ok(PurgeOutcome::Purged(connection))
            }
            Err(e) => {
                store
                    .record_purge(
                        user,
                        connection_id,
                        institution,
                        "failed",
                        e.status(),
                        e.correlation_id(),
                        Some(&e.to_string()),
                        now,
                    )
                    .await?;
                Err(e.into())
            }
        }
    }
}
