//! The facts a planner reads, as plain types: a stored connection ([`ConnectionRow`]), our
//! refresh attempts, the inferred-outage facts and down periods at a connector, what Basiq
//! last said of every connector, and what one fetch said. The store reads its rows into
//! these; the planner decides on them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::classify::{ConnectorView, Health, NewestJob};
use super::policy::schedule::Owed;
use super::policy::{DecisionKind, Trigger};
use crate::domain::{
    Connection, ConnectionId, ConnectionStatus, ConnectorKey, ConnectorStatus, DownPeriod,
    InstitutionId, Job, JobId, JobState, Method, UserId,
};

/// Who said a bank is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutageSource {
    /// Basiq's `/connectors` said so.
    Connectors,
    /// Several users failed bank-side at the connector.
    Inferred,
    /// The data holder's own Consumer Data Right status said so.
    Cdr,
}

impl OutageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connectors => "connectors",
            Self::Inferred => "inferred",
            Self::Cdr => "cdr",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Connectors, Self::Inferred, Self::Cdr]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for OutageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An outage as stored: opened and closed by `/connectors` or by inference.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct OutageRow {
    pub id: i64,
    pub institution_id: String,
    pub method: String,
    pub source: OutageSource,
    pub status: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub affected_users: Option<i64>,
    /// The data holder's own words (a `cdr` outage).
    pub explanation: Option<String>,
}

/// The last refresh decision made for a connection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LastDecision {
    pub decision: DecisionKind,
    /// The denial reason (or `deferred`).
    pub reason: Option<String>,
    pub trigger: Option<Trigger>,
    pub at: DateTime<Utc>,
}

/// A connection as stored: what Basiq said, its newest job, its current health, and its
/// refresh schedule. No `Default`: an id has no valid empty value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRow {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub institution_id: InstitutionId,
    pub method: Method,
    pub status: ConnectionStatus,
    pub created_date: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub newest_job_id: Option<String>,
    pub newest_job: Option<NewestJob>,
    pub health: Option<Health>,
    pub reason: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub health_since: Option<DateTime<Utc>>,
    pub consent_warned_days: Option<i64>,
    pub gone_at: Option<DateTime<Utc>>,
    /// Basiq's cap is reached (a 429/403, or a job step `too-many-requests`) until then.
    pub basiq_capped_until: Option<DateTime<Utc>>,
    /// The refresh the daemon owes (recovery or transient retry).
    pub refresh_due: Option<Owed>,
    /// Retries spent on the current transient-failure incident.
    pub transient_retries: u32,
    pub transient_job_id: Option<String>,
    /// Daily mode: the next slot in the unattended window.
    pub daily_due_at: Option<DateTime<Utc>>,
    pub mfa_enabled: Option<bool>,
    /// A refresh may ask the user for a one-time code: only attended triggers.
    pub needs_user_present: bool,
    /// The newest job failed bank-side then: what the outage inference counts.
    pub bank_failure_at: Option<DateTime<Utc>>,
    pub last_decision: Option<LastDecision>,
    /// The status turned `invalid` after this read (the last that saw it otherwise)...
    pub invalid_from: Option<DateTime<Utc>>,
    /// ...and by this one (the first that saw it invalid).
    pub invalid_seen: Option<DateTime<Utc>>,
}

impl ConnectionRow {
    /// The connector this connection reaches its bank through.
    pub fn connector_key(&self) -> ConnectorKey {
        ConnectorKey::new(self.institution_id.as_str(), &self.method)
    }

    /// The later of the newest job's created and updated times.
    pub fn newest_job_at(&self) -> Option<DateTime<Utc>> {
        self.newest_job
            .as_ref()
            .and_then(|j| j.updated.max(j.created))
    }
}

/// What the store says about inferred outages at one connector, for a whole group of
/// plans: whether one is open, since when failures count, and the users failing
/// bank-side there since then (at most `limit` of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyFacts {
    pub open: bool,
    /// Failures before this are the outage Basiq already reported.
    pub counts_since: Option<DateTime<Utc>>,
    /// Failures count from here: the later of the window's start and `counts_since`.
    pub from: DateTime<Utc>,
    pub failing: std::collections::BTreeSet<UserId>,
    /// The periods its bank was down, open or recently ended.
    pub periods: KeyPeriods,
}

/// The last `/connectors` answer as far as it is known, and what the second witness (the
/// data holders' own CDR status and planned outages) says of the same connectors.
#[derive(Clone, Debug, Default)]
pub struct ConnectorStatuses {
    /// `/connectors` has answered at least once on this installation.
    pub known: bool,
    pub statuses: HashMap<ConnectorKey, ConnectorStatus>,
    /// The CDR witness of the open-banking connectors that have one.
    pub cdr: HashMap<ConnectorKey, CdrWitness>,
}

impl ConnectorStatuses {
    /// The status a connection's connector has. A connection whose method is unknown
    /// (Basiq's recorded answers leave `method` out) gets its institution's worst status.
    /// The data holder's own CDR status saying "down" makes it down whatever Basiq says; a
    /// witness that could not be read says nothing. (Its maintenance windows are periods:
    /// [`Self::windows`], and the store's down periods.)
    pub fn view(&self, institution_id: &str, method: &Method) -> ConnectorView {
        let basiq = self.basiq_view(institution_id, method);
        match self.witness(institution_id, method) {
            Some(w) if w.down => ConnectorView::Witnessed {
                basiq: basiq.status().cloned(),
            },
            _ => basiq,
        }
    }

    fn basiq_view(&self, institution_id: &str, method: &Method) -> ConnectorView {
        if !self.known {
            return ConnectorView::Unknown;
        }
        let found = if *method == Method::Unknown {
            self.statuses
                .iter()
                .filter(|(k, _)| k.institution_id == institution_id)
                .map(|(_, s)| s)
                .max_by_key(|s| s.severity())
        } else {
            self.statuses
                .get(&ConnectorKey::new(institution_id, method))
        };
        found.map_or(ConnectorView::Unlisted, |s| {
            ConnectorView::Status(s.clone())
        })
    }

    /// The CDR witness of a connection's connector: open banking only (web connectors are
    /// outside the CDR); a connection of unknown method is its institution's.
    pub fn witness(&self, institution_id: &str, method: &Method) -> Option<&CdrWitness> {
        match method {
            Method::Web => None,
            _ => self
                .cdr
                .get(&ConnectorKey::new(institution_id, &Method::OpenBanking)),
        }
    }

    /// The maintenance windows announced for a connection's connector.
    pub fn windows(&self, institution_id: &str, method: &Method) -> &[Window] {
        self.witness(institution_id, method)
            .map_or(&[], |w| w.windows.as_slice())
    }
}

/// A maintenance window a data holder announced (a CDR planned outage).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub partial: bool,
}

impl Window {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.starts_at <= at && at < self.ends_at
    }
}

/// What a data holder itself says of its open-banking connector (the CDR witness).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdrWitness {
    /// Its status says down (`UNAVAILABLE`, `PARTIAL_FAILURE`, `SCHEDULED_OUTAGE`): a `cdr`
    /// outage is open. `false` also when it cannot be read: an unread witness says nothing.
    pub down: bool,
    /// Its announced windows that have not ended, earliest first.
    pub windows: Vec<Window>,
}

/// A stored job's snapshot, to keep jobs from going backwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    pub state: JobState,
    pub updated: Option<DateTime<Utc>>,
    /// The stored job is matched to a connection.
    pub matched: bool,
}

/// Our refresh attempts of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    pub last: Option<DateTime<Utc>>,
    /// The oldest in the rolling 24 h window.
    pub oldest_in_window: Option<DateTime<Utc>>,
}

/// Inferred-outage facts at one connector, from everyone else's stored state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inference {
    pub open: bool,
    /// Distinct *other* users failing bank-side there in the window (counted up to the
    /// threshold only).
    pub other_users_failing: i64,
    /// Failures before this belong to an outage that is over (reported or inferred).
    pub counts_since: Option<DateTime<Utc>>,
}

/// The periods a connector's bank was down, open or recently ended, by where they were
/// learnt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPeriods {
    /// `/connectors` said so.
    pub connectors: Vec<DownPeriod>,
    /// Several users failed bank-side (from: the start of the inference window).
    pub inferred: Vec<DownPeriod>,
    /// The data holder announced it (a CDR planned outage), ahead.
    pub maintenance: Vec<DownPeriod>,
}

impl KeyPeriods {
    pub fn all(&self) -> Vec<DownPeriod> {
        self.connectors
            .iter()
            .chain(&self.inferred)
            .chain(&self.maintenance)
            .copied()
            .collect()
    }

    /// An inferred outage opened at `now` (its window before counts).
    pub fn inferred_opened(&mut self, now: DateTime<Utc>, window: chrono::Duration) {
        if !self.inferred.iter().any(DownPeriod::is_open) {
            self.inferred.push(DownPeriod {
                from: now.checked_sub_signed(window),
                until: None,
            });
        }
    }

    /// The open inferred outage closed at `now`.
    pub fn inferred_closed(&mut self, now: DateTime<Utc>) {
        for p in self.inferred.iter_mut().filter(|p| p.is_open()) {
            p.until = Some(now);
        }
    }
}

/// What the store holds for one user.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub connections: Vec<ConnectionRow>,
    pub jobs: HashMap<JobId, StoredJob>,
    pub attempts: HashMap<ConnectionId, Attempts>,
    pub inference: HashMap<ConnectorKey, Inference>,
    /// The down periods of each connector this user's connections use.
    pub periods: HashMap<ConnectorKey, KeyPeriods>,
}

/// What Basiq said.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub connections: Vec<Connection>,
    pub jobs: Vec<Job>,
    /// `connections` is the user's whole list (a sweep), not one re-read connection.
    pub complete: bool,
}

/// What one read of Basiq said of a connection, for a refresh decided before the read is
/// committed: its status, `lastUsed`, and its newest job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fresh {
    pub status: crate::domain::ConnectionStatus,
    pub last_used: Option<DateTime<Utc>>,
    pub newest_job: Option<(String, NewestJob)>,
}

impl Fresh {
    /// The row as it will be once this read is committed, as far as the gates look.
    pub fn overlay(&self, row: &ConnectionRow) -> ConnectionRow {
        let mut row = row.clone();
        row.status = self.status.clone();
        row.last_used = row.last_used.max(self.last_used);
        if let Some((id, job)) = &self.newest_job {
            let newer = row
                .newest_job
                .as_ref()
                .is_none_or(|had| job.created >= had.created);
            if newer {
                row.newest_job_id = Some(id.clone());
                row.newest_job = Some(job.clone());
            }
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64) -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::hours(h)
    }

    fn statuses(down: bool) -> ConnectorStatuses {
        let key = ConnectorKey::new("AU00001", &Method::OpenBanking);
        ConnectorStatuses {
            known: true,
            statuses: [
                (key.clone(), ConnectorStatus::Operational),
                (
                    ConnectorKey::new("AU00001", &Method::Web),
                    ConnectorStatus::Operational,
                ),
            ]
            .into(),
            cdr: [(
                key,
                CdrWitness {
                    down,
                    windows: vec![Window {
                        starts_at: at(6),
                        ends_at: at(8),
                        partial: true,
                    }],
                },
            )]
            .into(),
        }
    }

    #[test]
    fn the_cdr_witness_is_the_open_banking_connector_s_and_never_the_web_one_s() {
        let s = statuses(true);
        let ob = s.view("AU00001", &Method::OpenBanking);
        assert!(ob.is_down());
        assert_eq!(
            ob.status(),
            Some(&ConnectorStatus::Operational),
            "Basiq's kept"
        );
        assert!(s.view("AU00001", &Method::Unknown).is_down());
        assert!(!s.view("AU00001", &Method::Web).is_down());
        assert!(s.windows("AU00001", &Method::Web).is_empty());
        assert_eq!(s.windows("AU00001", &Method::OpenBanking).len(), 1);
        // A witness that says up (or nothing) leaves Basiq's word.
        assert_eq!(
            statuses(false).view("AU00001", &Method::OpenBanking),
            ConnectorView::Status(ConnectorStatus::Operational)
        );
    }

    #[test]
    fn a_window_holds_from_its_start_to_just_before_its_end() {
        let w = statuses(false).windows("AU00001", &Method::OpenBanking)[0];
        assert!(!w.contains(at(5)));
        assert!(w.contains(at(6)));
        assert!(w.contains(at(8) - chrono::Duration::seconds(1)));
        assert!(!w.contains(at(8)));
    }
}
