//! Notifications to the partner's app: what to tell, as pure functions of the plan being
//! committed ([`notices`]), and the delivery loop ([`deliver`]).
//!
//! A notification is a row of the outbox, written in the same transaction as the change
//! that causes it (`store::outbox`), then delivered at least once to every endpoint that
//! asks for its type, signed the Standard Webhooks way. The body is
//! `{"type": EVENT, "timestamp": RFC 3339, "data": {...}}`.
//!
//! What is told:
//! - `connection.health_changed` when a connection's *settled* health (not `in-progress` or
//!   `pending`) differs from the one last told: a refresh that goes healthy → in-progress →
//!   healthy tells nothing, and a first sight tells only what asks for attention.
//! - `connection.consent_expiring` once per threshold (30, 7, 1 days).
//! - `institution.outage_started` / `institution.outage_ended` (source `connectors`,
//!   `inferred` or `cdr`).
//! - `institution.maintenance_scheduled` once per window a data holder announces ahead.
//!
//! `user_action` is `none` unless the health is `action-required`; the classifier never
//! gives `action-required` for a failure while the bank is known to be down, so no
//! notification asks a user to act during an outage.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::domain::{ConnectionId, ConnectorKey, UserId};
use crate::plan::ConnectionRow;
use crate::plan::classify::Health;
use crate::plan::{Note, OutageSource, UserPlan};

pub const HEALTH_CHANGED: &str = "connection.health_changed";
pub const CONSENT_EXPIRING: &str = "connection.consent_expiring";
pub const OUTAGE_STARTED: &str = "institution.outage_started";
pub const OUTAGE_ENDED: &str = "institution.outage_ended";
pub const MAINTENANCE_SCHEDULED: &str = "institution.maintenance_scheduled";

/// One notification to write to the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub event_type: &'static str,
    pub user_id: Option<UserId>,
    pub data: Value,
}

impl Notice {
    /// Notices with the same key reach an endpoint in order: a user's, or one connector's
    /// outage start and end.
    pub fn order_key(&self) -> String {
        match &self.user_id {
            Some(u) => u.as_str().to_owned(),
            None => format!(
                "institution:{}/{}",
                self.data["institution_id"].as_str().unwrap_or_default(),
                self.data["method"].as_str().unwrap_or_default()
            ),
        }
    }

    /// The Standard Webhooks payload.
    pub fn payload(&self, at: DateTime<Utc>) -> Value {
        json!({
            "type": self.event_type,
            "timestamp": at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "data": self.data,
        })
    }
}

/// What the app should ask of its user.
pub fn user_action(health: Health, reason: Option<&str>) -> &'static str {
    if health != Health::ActionRequired {
        return "none";
    }
    match reason.unwrap_or("") {
        "consent-expired" | "consent-revoked" => "reconsent",
        "multifactor-required"
        | "multi-factor-authentication"
        | "account-not-accessible-requires-user-action"
        | "user-action-required" => "clear-bank-message",
        "locked-account" => "unlock-bank-account",
        _ => "reenter-credentials",
    }
}

/// A short text for the user, by action (or health when there is nothing to do).
pub fn human_text(health: Health, action: &str) -> &'static str {
    match action {
        "reconsent" => "Your consent to share this bank's data has ended: please connect again.",
        "clear-bank-message" => {
            "Your bank needs your attention: log in to your bank and clear any message, then connect again."
        }
        "unlock-bank-account" => {
            "Your bank has locked your account: unlock it with your bank, then connect again."
        }
        "reenter-credentials" => {
            "Your bank did not accept your login details: please enter them again."
        }
        _ => match health {
            Health::Healthy => "This bank connection is working.",
            Health::InstitutionOutage => {
                "Your bank is having problems: nothing to do, we will retry."
            }
            Health::TransientFailure => "A temporary problem: nothing to do, we will retry.",
            Health::Stale => "This bank connection has not been updated for a while.",
            _ => "This bank connection's state is not known yet.",
        },
    }
}

/// Health an app is told about: a refresh in flight or a connection being set up is not.
pub fn settled(h: Health) -> bool {
    !matches!(h, Health::InProgress | Health::Pending)
}

/// What asks for attention on a first sight (nothing was told before).
fn worth_telling_first(h: Health) -> bool {
    matches!(h, Health::ActionRequired | Health::InstitutionOutage)
}

/// A connection's health-change candidate in one commit: its first `from` and last `to`.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub connection_id: &'a ConnectionId,
    pub user_id: &'a UserId,
    pub from: Option<Health>,
    pub to: Health,
    pub reason: Option<&'a str>,
}

/// The health changes of the plans that may be told, one per connection (first `from`,
/// last `to`), those into an unsettled health left out.
pub fn candidates<'a>(plans: &[&'a UserPlan]) -> Vec<Candidate<'a>> {
    let mut out: Vec<Candidate<'a>> = Vec::new();
    let mut at: HashMap<&ConnectionId, usize> = HashMap::new();
    for change in plans.iter().flat_map(|p| &p.health_changes) {
        match at.get(&change.connection_id) {
            Some(&i) => {
                out[i].to = change.to;
                out[i].reason = change.reason.as_deref();
            }
            None => {
                at.insert(&change.connection_id, out.len());
                out.push(Candidate {
                    connection_id: &change.connection_id,
                    user_id: &change.user_id,
                    from: change.from,
                    to: change.to,
                    reason: change.reason.as_deref(),
                });
            }
        }
    }
    out.retain(|c| settled(c.to) && (c.from.is_some() || worth_telling_first(c.to)));
    out
}

/// The health last told for a connection.
pub type Told = (Health, Option<String>);

/// The `connection.health_changed` notices of the candidates, given what was last told
/// (`told`) and the rows being written (for the institution). Returns the notices and the
/// new "last told" of each connection notified.
pub fn health_notices(
    candidates: &[Candidate<'_>],
    told: &HashMap<String, Told>,
    rows: &HashMap<&ConnectionId, &ConnectionRow>,
) -> (Vec<Notice>, Vec<(ConnectionId, Told)>) {
    let mut notices = Vec::new();
    let mut now_told = Vec::new();
    for c in candidates {
        let before: Option<Told> = told
            .get(c.connection_id.as_str())
            .cloned()
            .or_else(|| c.from.filter(|f| settled(*f)).map(|f| (f, None)));
        let action = user_action(c.to, c.reason);
        let same = before
            .as_ref()
            .is_some_and(|(h, r)| *h == c.to && user_action(*h, r.as_deref()) == action);
        if same || (before.is_none() && !worth_telling_first(c.to)) {
            continue;
        }
        let row = rows.get(c.connection_id);
        let institution = row.map(|r| r.institution_id.as_str().to_owned());
        let method = row.map(|r| r.method.as_str().to_owned());
        notices.push(Notice {
            event_type: HEALTH_CHANGED,
            user_id: Some(c.user_id.clone()),
            data: json!({
                "user_id": c.user_id,
                "connection_id": c.connection_id,
                "institution_id": institution,
                "method": method,
                "from": before.as_ref().map(|(h, _)| h.as_str()),
                "to": c.to.as_str(),
                "reason": c.reason,
                "user_action": action,
                "text": human_text(c.to, action),
            }),
        });
        now_told.push((c.connection_id.clone(), (c.to, c.reason.map(str::to_owned))));
    }
    (notices, now_told)
}

/// The `connection.consent_expiring` notices among a plan's notes.
pub fn consent_notices(plans: &[&UserPlan]) -> Vec<Notice> {
    plans
        .iter()
        .flat_map(|p| &p.notes)
        .filter_map(|n| match n {
            Note::ConsentExpiring { row, days } => Some(Notice {
                event_type: CONSENT_EXPIRING,
                user_id: Some(row.user_id.clone()),
                data: json!({
                    "user_id": row.user_id,
                    "connection_id": row.connection_id,
                    "institution_id": row.institution_id.as_str(),
                    "days": days,
                    "expires_at": row.expiry_date.map(|e| e.to_rfc3339_opts(SecondsFormat::Secs, true)),
                    "user_action": "reconsent",
                    "text": format!("Your consent to share this bank's data ends within {days} day(s): please renew it."),
                }),
            }),
            _ => None,
        })
        .collect()
}

/// An outage starting or ending at a connector, with the watched connections there.
pub fn outage_notice(
    key: &ConnectorKey,
    started: bool,
    source: OutageSource,
    affected: i64,
) -> Notice {
    Notice {
        event_type: if started {
            OUTAGE_STARTED
        } else {
            OUTAGE_ENDED
        },
        user_id: None,
        data: json!({
            "institution_id": key.institution_id,
            "method": key.method,
            "source": source.as_str(),
            "affected_connections": affected,
            "user_action": "none",
            "text": if started {
                "This bank is having problems: its users have nothing to do, connections are retried."
            } else {
                "This bank is working again."
            },
        }),
    }
}

/// A maintenance window a data holder announced, first seen: when the bank will be down
/// (`partial`: part of it), in its own words, and the watched connections there.
pub fn maintenance_notice(
    key: &ConnectorKey,
    window: &crate::domain::cdr::Maintenance,
    affected: i64,
) -> Notice {
    Notice {
        event_type: MAINTENANCE_SCHEDULED,
        user_id: None,
        data: json!({
            "institution_id": key.institution_id,
            "method": key.method,
            "starts_at": window.starts_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "ends_at": window.ends_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "partial": window.partial,
            "explanation": window.explanation,
            "affected_connections": affected,
            "user_action": "none",
            "text": "This bank has announced maintenance: its users have nothing to do, refreshes wait until it is over.",
        }),
    }
}

/// The notifications some plans cause, and what is told of each connection after them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Planned {
    pub notices: Vec<Notice>,
    pub told: Vec<(ConnectionId, Told)>,
}

/// The connections whose last told health the plans' notices depend on.
pub fn to_tell<'a>(plans: &[&'a UserPlan]) -> Vec<&'a ConnectionId> {
    candidates(plans)
        .into_iter()
        .map(|c| c.connection_id)
        .collect()
}

/// What the plans tell, given what was last told of their connections (`told`), the
/// inferred outages they opened (`true`) or closed (`moved`), and the watched connections at
/// each of those connectors (`affected`): health changes not told yet, consent warnings,
/// one notice per outage moved.
pub fn plan_notices(
    plans: &[&UserPlan],
    told: &HashMap<String, Told>,
    moved: &[(ConnectorKey, bool)],
    affected: &HashMap<ConnectorKey, i64>,
) -> Planned {
    let rows: HashMap<&ConnectionId, &ConnectionRow> = plans
        .iter()
        .flat_map(|p| &p.connections)
        .map(|r| (&r.connection_id, r))
        .collect();
    let (mut notices, told) = health_notices(&candidates(plans), told, &rows);
    notices.extend(consent_notices(plans));
    for (key, started) in moved {
        let count = affected.get(key).copied().unwrap_or(0);
        notices.push(outage_notice(key, *started, OutageSource::Inferred, count));
    }
    Planned { notices, told }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HealthChange;

    fn change(from: Option<Health>, to: Health, reason: Option<&str>) -> HealthChange {
        HealthChange {
            connection_id: ConnectionId::parse("c").unwrap(),
            user_id: UserId::parse("u").unwrap(),
            from,
            to,
            reason: reason.map(str::to_owned),
            job_id: None,
        }
    }

    fn told_of(plans: &[UserPlan], told: &HashMap<String, Told>) -> Vec<Value> {
        let refs: Vec<&UserPlan> = plans.iter().collect();
        let c = candidates(&refs);
        health_notices(&c, told, &HashMap::new())
            .0
            .into_iter()
            .map(|n| n.data)
            .collect()
    }

    fn plan(changes: Vec<HealthChange>) -> UserPlan {
        UserPlan {
            health_changes: changes,
            ..UserPlan::default()
        }
    }

    #[test]
    fn a_change_that_reverts_before_it_settles_is_not_told() {
        use Health::*;
        let told: HashMap<String, Told> = [("c".to_owned(), (Healthy, None))].into();
        // One commit: healthy -> in-progress -> healthy.
        let one = plan(vec![
            change(Some(Healthy), InProgress, None),
            change(Some(InProgress), Healthy, None),
        ]);
        assert!(told_of(&[one], &told).is_empty());
        // Two commits: the first (into in-progress) is not told, the second finds healthy told.
        assert!(
            told_of(
                &[plan(vec![change(Some(Healthy), InProgress, None)])],
                &told
            )
            .is_empty()
        );
        assert!(
            told_of(
                &[plan(vec![change(Some(InProgress), Healthy, None)])],
                &told
            )
            .is_empty()
        );
        // Into action-required after a refresh: told once, from what was told.
        let sent = told_of(
            &[plan(vec![change(
                Some(InProgress),
                ActionRequired,
                Some("invalid-credentials"),
            )])],
            &told,
        );
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["from"], "healthy");
        assert_eq!(sent[0]["user_action"], "reenter-credentials");
    }

    #[test]
    fn a_first_sight_is_told_only_when_it_asks_for_attention() {
        use Health::*;
        let none = HashMap::new();
        assert!(told_of(&[plan(vec![change(None, Healthy, None)])], &none).is_empty());
        assert!(
            told_of(
                &[plan(vec![change(None, Stale, Some("no-recent-job"))])],
                &none
            )
            .is_empty()
        );
        let sent = told_of(
            &[plan(vec![change(
                None,
                InstitutionOutage,
                Some("maintenance"),
            )])],
            &none,
        );
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["user_action"], "none");
        assert!(sent[0]["from"].is_null());
    }

    #[test]
    fn a_new_reason_that_asks_something_else_of_the_user_is_told() {
        use Health::*;
        let told: HashMap<String, Told> = [(
            "c".to_owned(),
            (ActionRequired, Some("invalid-credentials".to_owned())),
        )]
        .into();
        let same_ask = plan(vec![change(
            Some(ActionRequired),
            ActionRequired,
            Some("invalid-username-or-password"),
        )]);
        assert!(told_of(&[same_ask], &told).is_empty());
        let new_ask = plan(vec![change(
            Some(ActionRequired),
            ActionRequired,
            Some("consent-revoked"),
        )]);
        let sent = told_of(&[new_ask], &told);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0]["user_action"], "reconsent");
    }

    #[test]
    fn only_action_required_asks_the_user_to_act() {
        for h in Health::ALL {
            let action = user_action(h, Some("invalid-credentials"));
            assert_eq!(action == "none", h != Health::ActionRequired, "{h:?}");
        }
        assert_eq!(
            user_action(Health::ActionRequired, Some("consent-revoked")),
            "reconsent"
        );
        assert_eq!(
            user_action(Health::ActionRequired, Some("multifactor-required")),
            "clear-bank-message"
        );
        assert_eq!(
            user_action(Health::InstitutionOutage, Some("invalid-credentials")),
            "none"
        );
    }
}
