//! Basiq's events in: the webhook receiver ([`receiver`]), the `/events` poll ([`poll`]),
//! and the processing of the inbox ([`process`]).
//!
//! Both ways in store the event in the inbox first (idempotent by webhook id and by Basiq's
//! event id), and one processor takes the inbox in order. What an event does is decided
//! here, purely ([`action`]), from its type and the ids its links carry.

pub mod poll;
pub mod receiver;

use serde::Deserialize;

use crate::domain::{ConnectionId, UserId};

/// The ids an entity link (`links.eventEntity`, `dataRef`) carries:
/// `.../users/{user}[/connections/{connection}]`. An id that breaks the id rule is not
/// taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntityIds {
    pub user_id: Option<UserId>,
    pub connection_id: Option<ConnectionId>,
}

impl EntityIds {
    pub fn from_link(link: Option<&str>) -> Self {
        let Some(url) = link.and_then(|l| url::Url::parse(l).ok()) else {
            return Self::default();
        };
        let Some(segments) = url.path_segments() else {
            return Self::default();
        };
        let segments: Vec<&str> = segments.collect();
        let after = |name: &str| {
            segments
                .iter()
                .position(|s| *s == name)
                .and_then(|i| segments.get(i + 1))
                .copied()
        };
        Self {
            user_id: after("users").and_then(|u| UserId::parse(u).ok()),
            connection_id: after("connections").and_then(|c| ConnectionId::parse(c).ok()),
        }
    }
}

/// A webhook's payload as Basiq sends it.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    #[serde(default)]
    pub event_type_id: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub links: Option<PayloadLinks>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayloadLinks {
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub event_entity: Option<String>,
}

/// What an event does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sweep the user now (two requests).
    Sweep(UserId),
    /// The connection leaves the watched state (history kept).
    ConnectionDeleted(UserId, ConnectionId),
    /// The user's open-banking connections need the user: `consent-revoked` or
    /// `consent-expired`.
    ConsentEnded(UserId, &'static str),
    /// Basiq's consent warning (7 days before the end).
    ConsentWarning(UserId),
    UserDeleted(UserId),
    UserCreated(UserId),
    /// Needs the user id, which only `GET /events/{id}` can tell.
    NeedsLookup,
    /// Stored and counted, nothing done.
    Ignore(&'static str),
}

/// The event types that do something; the others are stored (from a webhook) and counted.
pub const HANDLED: [&str; 11] = [
    "connection.invalidated",
    "connection.created",
    "connection.activated",
    "connection.deleted",
    "consent.revoked",
    "consent.expired",
    "consent.warning",
    "consent.updated",
    "consent.created",
    "user.deleted",
    "user.created",
];

/// Decides what an event does from its type and ids. `register_new_users` is
/// `webhooks.register_new_users`.
pub fn action(event_type: &str, ids: &EntityIds, register_new_users: bool) -> Action {
    if !HANDLED.contains(&event_type) {
        return Action::Ignore("not-handled");
    }
    let Some(user) = ids.user_id.clone() else {
        return Action::NeedsLookup;
    };
    match event_type {
        "connection.invalidated" | "connection.created" | "connection.activated" => {
            Action::Sweep(user)
        }
        "connection.deleted" => match ids.connection_id.clone() {
            Some(c) => Action::ConnectionDeleted(user, c),
            // Which one is not said: the user's sweep finds it missing.
            None => Action::Sweep(user),
        },
        "consent.revoked" => Action::ConsentEnded(user, "consent-revoked"),
        "consent.expired" => Action::ConsentEnded(user, "consent-expired"),
        "consent.warning" => Action::ConsentWarning(user),
        "consent.updated" | "consent.created" => Action::Sweep(user),
        "user.deleted" => Action::UserDeleted(user),
        "user.created" if register_new_users => Action::UserCreated(user),
        _ => Action::Ignore("register-new-users-off"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_links_give_their_ids_and_refuse_bad_ones() {
        let ids = EntityIds::from_link(Some("https://au-api.basiq.io/users/u-1/connections/c-2"));
        assert_eq!(ids.user_id.unwrap().as_str(), "u-1");
        assert_eq!(ids.connection_id.unwrap().as_str(), "c-2");
        let ids = EntityIds::from_link(Some("https://au-api.basiq.io/users/u-1"));
        assert_eq!(ids.user_id.unwrap().as_str(), "u-1");
        assert!(ids.connection_id.is_none());
        for bad in [
            "https://au-api.basiq.io/users/..%2F..%2Fetc",
            "https://au-api.basiq.io/users/",
            "not a url",
            "https://au-api.basiq.io/users/a%20b/connections/c",
        ] {
            assert!(EntityIds::from_link(Some(bad)).user_id.is_none(), "{bad}");
        }
        assert_eq!(EntityIds::from_link(None), EntityIds::default());
    }

    #[test]
    fn each_event_type_does_what_the_issue_says() {
        let ids = EntityIds::from_link(Some("https://x/users/u/connections/c"));
        let u = UserId::parse("u").unwrap();
        let c = ConnectionId::parse("c").unwrap();
        assert_eq!(
            action("connection.invalidated", &ids, false),
            Action::Sweep(u.clone())
        );
        assert_eq!(
            action("connection.deleted", &ids, false),
            Action::ConnectionDeleted(u.clone(), c)
        );
        assert_eq!(
            action("consent.revoked", &ids, false),
            Action::ConsentEnded(u.clone(), "consent-revoked")
        );
        assert_eq!(
            action("user.created", &ids, false),
            Action::Ignore("register-new-users-off")
        );
        assert_eq!(action("user.created", &ids, true), Action::UserCreated(u));
        assert_eq!(
            action("transactions.updated", &ids, true),
            Action::Ignore("not-handled")
        );
        assert_eq!(
            action("consent.revoked", &EntityIds::default(), false),
            Action::NeedsLookup
        );
    }
}
