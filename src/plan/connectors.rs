//! A `/connectors` answer, planned: which connectors' statuses moved, which outages Basiq
//! reported open or closed (and since when they may have begun), which inferred outages a
//! recovery ends, which connectors' connections to classify again (with the recoveries an
//! ended outage owes), and which outage notices to tell. Pure: the store writes the plan.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{Connector, ConnectorKey, ConnectorStatus};

use super::Requeue;

/// What the store last knew of a connector: its status and when it was last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownConnector {
    pub status: ConnectorStatus,
    pub checked_at: DateTime<Utc>,
}

/// A connector whose status moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub key: ConnectorKey,
    pub name: Option<String>,
    pub from: Option<ConnectorStatus>,
    pub to: ConnectorStatus,
    /// The bank was down before the change (the one predicate, [`ConnectorStatus::is_down`]).
    pub was_down: bool,
    /// A new outage: the earliest it may have begun (the last read that saw it up), `None`
    /// when not known (down at the first sight).
    pub down_since: Option<DateTime<Utc>>,
}

impl StatusChange {
    pub fn is_down(&self) -> bool {
        self.to.is_down()
    }

    /// Down before, up now: the outage is over.
    pub fn recovered(&self) -> bool {
        self.was_down && !self.is_down()
    }
}

/// What one `/connectors` answer changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectorsPlan {
    /// Every connector of the answer whose status did not move (its read time and name).
    pub unchanged: Vec<(ConnectorKey, Option<String>)>,
    pub changes: Vec<StatusChange>,
    /// Connectors whose connections are classified again (recoveries included).
    pub requeue: Vec<Requeue>,
    /// Outages Basiq reported starting (`true`) or ending: one notice each.
    pub told: Vec<(ConnectorKey, bool)>,
    /// What the answer says of the institutions behind open-banking connectors (short
    /// name, ABN): what the CDR mapping reads.
    pub institutions: Vec<(ConnectorKey, Option<String>, Option<String>)>,
}

/// Plans one `/connectors` answer against what was known.
pub fn plan_connectors(
    known: &HashMap<ConnectorKey, KnownConnector>,
    answer: &[Connector],
    now: DateTime<Utc>,
) -> ConnectorsPlan {
    let mut plan = ConnectorsPlan::default();
    for c in answer {
        let key = ConnectorKey::new(c.institution_id.as_str(), &c.method);
        if c.method == crate::domain::Method::OpenBanking
            && (c.short_name.is_some() || c.abn.is_some())
        {
            plan.institutions
                .push((key.clone(), c.short_name.clone(), c.abn.clone()));
        }
        let before = known.get(&key);
        if before.is_some_and(|b| b.status == c.status) {
            plan.unchanged.push((key, c.name.clone()));
            continue;
        }
        let was_down = before.is_some_and(|b| b.status.is_down());
        let change = StatusChange {
            key: key.clone(),
            name: c.name.clone(),
            from: before.map(|b| b.status.clone()),
            to: c.status.clone(),
            was_down,
            // Up at the last read: it began after it.
            down_since: before.filter(|b| !b.status.is_down()).map(|b| b.checked_at),
        };
        if was_down != change.is_down() {
            plan.told.push((key.clone(), change.is_down()));
        }
        plan.requeue.push(Requeue {
            key,
            // Recovered since the last read, which still saw it down.
            ended_after: change
                .recovered()
                .then(|| before.map_or(now, |b| b.checked_at)),
        });
        plan.changes.push(change);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{InstitutionId, Method};

    fn at(h: i64) -> DateTime<Utc> {
        "2026-11-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::hours(h)
    }

    fn answer(status: &str) -> Vec<Connector> {
        vec![Connector {
            institution_id: InstitutionId::new("AU00001"),
            method: Method::Web,
            status: ConnectorStatus::parse(status),
            name: None,
            short_name: None,
            abn: None,
        }]
    }

    fn known(status: &str, checked: i64) -> HashMap<ConnectorKey, KnownConnector> {
        [(
            ConnectorKey::new("AU00001", &Method::Web),
            KnownConnector {
                status: ConnectorStatus::parse(status),
                checked_at: at(checked),
            },
        )]
        .into()
    }

    #[test]
    fn an_outage_begins_after_the_last_read_that_saw_the_bank_up_and_ends_after_the_last_that_saw_it_down()
     {
        let key = ConnectorKey::new("AU00001", &Method::Web);
        let down = plan_connectors(&known("operational", 1), &answer("major-outage"), at(2));
        assert_eq!(down.changes[0].down_since, Some(at(1)));
        assert_eq!(down.told, vec![(key.clone(), true)]);
        assert_eq!(down.requeue[0].ended_after, None);
        let up = plan_connectors(&known("major-outage", 3), &answer("operational"), at(4));
        assert!(up.changes[0].recovered());
        assert_eq!(up.told, vec![(key.clone(), false)]);
        assert_eq!(up.requeue[0].ended_after, Some(at(3)));
        // Down at the first sight: its start is not known.
        let first = plan_connectors(&HashMap::new(), &answer("major-outage"), at(5));
        assert_eq!(first.changes[0].down_since, None);
        // One down status to another: nothing told, nothing recovered.
        let worse = plan_connectors(&known("partial-outage", 6), &answer("major-outage"), at(7));
        assert!(worse.told.is_empty());
        assert_eq!(worse.requeue[0].ended_after, None);
        let same = plan_connectors(&known("operational", 8), &answer("operational"), at(9));
        assert!(same.changes.is_empty() && same.requeue.is_empty());
        assert_eq!(same.unchanged.len(), 1);
    }
}
