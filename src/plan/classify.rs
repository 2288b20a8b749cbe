//! Health classification: pure, table-tested. No I/O, `now` passed in.
//!
//! Input: one connection as stored (status, method, consent expiry, lastUsed, its newest
//! job), its connector's status from `/connectors`, and whether an outage is inferred from
//! other users' failures at that connector. Output: a [`Health`] and a reason code.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ConnectionStatus, ConnectorStatus, JobState, Method};

/// How Basiq keeps jobs: a connection with no job in this window has no recent job.
pub const JOB_RETENTION: chrono::Duration = chrono::Duration::days(7);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    InProgress,
    Pending,
    ActionRequired,
    InstitutionOutage,
    TransientFailure,
    Stale,
    Unknown,
}

impl Health {
    pub const ALL: [Health; 8] = [
        Health::Healthy,
        Health::InProgress,
        Health::Pending,
        Health::ActionRequired,
        Health::InstitutionOutage,
        Health::TransientFailure,
        Health::Stale,
        Health::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::InProgress => "in-progress",
            Self::Pending => "pending",
            Self::ActionRequired => "action-required",
            Self::InstitutionOutage => "institution-outage",
            Self::TransientFailure => "transient-failure",
            Self::Stale => "stale",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == text)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who has to act on a failure code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The user: re-enter credentials, clear a bank popup, re-consent.
    User,
    /// The bank or Basiq's connector.
    Bank,
    /// Nobody yet: retry later.
    Retry,
    /// Basiq's own refresh cap: wait until the rolling day has room, never sooner.
    Cap,
    /// A code this build does not know, or a failure without a code: never retried
    /// automatically, because nobody can tell whether a retry would lock the user out.
    Unknown,
}

/// Every code the user must act on (API.md's research, the older codes included).
pub const USER_CODES: [&str; 11] = [
    "invalid-credentials",
    "account-not-accessible-requires-user-action",
    "user-action-required",
    "invalid-connection",
    "authorization-failed",
    "invalid-username-or-password",
    "locked-account",
    "multifactor-required",
    "multi-factor-authentication",
    "consent-expired",
    "consent-revoked",
];

/// Every code that means the bank or Basiq's connector is at fault.
pub const BANK_CODES: [&str; 9] = [
    "service-unavailable",
    "maintenance",
    "maintenance-error",
    "system-unavailable",
    "temporary-unavailable",
    "connector-error",
    "institution-not-available",
    "institution-disabled",
    "institution-not-found",
];

impl Side {
    pub fn of(code: &str) -> Self {
        match code {
            c if USER_CODES.contains(&c) => Self::User,
            c if BANK_CODES.contains(&c) || c.starts_with("institution-") => Self::Bank,
            "unknown-error" | "job-timed-out" => Self::Retry,
            "too-many-requests" => Self::Cap,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Bank => "bank",
            Self::Retry => "retry",
            Self::Cap => "cap",
            Self::Unknown => "unknown",
        }
    }

    /// The side a stored name means (`None`: not a side's name).
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::User,
            Self::Bank,
            Self::Retry,
            Self::Cap,
            Self::Unknown,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// What is known of a connection's connector (institution + method).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectorView {
    /// `/connectors` has never answered on this installation: nobody can tell whether the
    /// bank is up, so nobody is blamed.
    Unknown,
    /// `/connectors` answered and does not list this connector (treated as up).
    Unlisted,
    Status(ConnectorStatus),
    /// The data holder itself says its bank is down (its CDR status, or a maintenance window
    /// it announced), whatever Basiq's status (`basiq`, when `/connectors` lists it).
    Witnessed {
        basiq: Option<ConnectorStatus>,
    },
}

impl ConnectorView {
    /// The one predicate of "the bank is down" ([`ConnectorStatus::is_down`]), or a second
    /// witness saying so: any witness saying "down" is enough.
    pub fn is_down(&self) -> bool {
        match self {
            Self::Status(s) => s.is_down(),
            Self::Witnessed { .. } => true,
            Self::Unknown | Self::Unlisted => false,
        }
    }

    /// Basiq's status of the connector, when `/connectors` lists it.
    pub fn status(&self) -> Option<&ConnectorStatus> {
        match self {
            Self::Status(s) => Some(s),
            Self::Witnessed { basiq } => basiq.as_ref(),
            _ => None,
        }
    }
}

/// The newest job of a connection, as far as classification cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewestJob {
    pub state: JobState,
    pub failure_code: Option<String>,
    /// Who must act on `failure_code` ([`Side::of`]), decided when the job was read and
    /// stored with it (the inferred-outage rule counts the bank's).
    pub side: Option<Side>,
    pub created: Option<DateTime<Utc>>,
    pub updated: Option<DateTime<Utc>>,
}

pub use crate::domain::DownPeriod;

/// Everything classification looks at for one connection.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub status: &'a ConnectionStatus,
    pub method: &'a Method,
    pub last_used: Option<DateTime<Utc>>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub newest_job: Option<&'a NewestJob>,
    pub connector: &'a ConnectorView,
    /// At least `outage.min_users` users failed bank-side at this connector recently.
    pub outage_inferred: bool,
    /// The periods its bank was down, open and recently ended.
    pub periods: &'a [DownPeriod],
    /// When the status turned `invalid`: between the last read that saw it otherwise and
    /// the first that saw it invalid.
    pub invalid_within: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The stored verdict, kept when a user-side failure cannot be judged yet.
    pub previous: Option<(Health, Option<&'a str>)>,
    pub stale_after: Duration,
    pub now: DateTime<Utc>,
}

impl Facts<'_> {
    /// The bank is known to be down now: a witness says so, or a period of it (a
    /// maintenance window the data holder announced) covers now.
    fn bank_down(&self) -> bool {
        self.connector.is_down()
            || self.outage_inferred
            || self.periods.iter().any(|p| p.covers(self.now))
    }
}

/// The reason given while a user-side failure waits for the connector status.
pub const CONNECTOR_STATUS_UNKNOWN: &str = "connector-status-unknown";

/// The reason of a connection whose failure happened while its bank was down, once the
/// outage is over: nobody is asked anything until a job that started after the end says.
pub const RECHECK_AFTER_OUTAGE: &str = "recheck-after-outage";

/// How long an `invalid` connection whose invalidation the outage may have caused waits for
/// a re-check that cannot come (Basiq refreshes no invalid connection): then it is the
/// user's to act on.
pub const RECHECK_LIMIT: chrono::Duration = chrono::Duration::hours(6);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    /// The Basiq failure code where one exists, else `connection-invalid`,
    /// `consent-expired`, `no-recent-job`, `recheck-after-outage`; `None` for a plain
    /// success or no news.
    pub reason: Option<String>,
}

impl Verdict {
    fn new(health: Health, reason: impl Into<Option<String>>) -> Self {
        Self {
            health,
            reason: reason.into(),
        }
    }
}

/// Classifies one connection.
///
/// A failure belongs to the period it happened in: one that overlaps a period in which its
/// bank was down is the outage's, whatever its code (held while the outage lasts, re-checked
/// after it); one from before the outage stays the user's.
pub fn classify(f: &Facts<'_>) -> Verdict {
    let recent_job = f
        .newest_job
        .filter(|j| j.created.is_none_or(|c| f.now - c <= JOB_RETENTION));
    if let Some(job) = recent_job
        && job.state == JobState::InProgress
    {
        return Verdict::new(Health::InProgress, None);
    }
    if matches!(
        f.status,
        ConnectionStatus::Pending | ConnectionStatus::PreInit | ConnectionStatus::Init
    ) && recent_job.is_none()
    {
        return Verdict::new(Health::Pending, Some(f.status.as_str().to_owned()));
    }
    let consent_expired =
        *f.method == Method::OpenBanking && f.expiry_date.is_some_and(|e| e <= f.now);
    if consent_expired {
        // The consent's end is a date, not a failure: the bank's state does not change it.
        return Verdict::new(Health::ActionRequired, Some("consent-expired".into()));
    }
    if let Some(job) = recent_job
        && job.state == JobState::Failed
    {
        return failed_job(f, job);
    }
    match f.status {
        ConnectionStatus::Invalid => {
            return user_failure(f, "connection-invalid", f.invalid_within);
        }
        ConnectionStatus::Revoked => {
            return Verdict::new(Health::ActionRequired, Some("consent-revoked".into()));
        }
        ConnectionStatus::Deleted | ConnectionStatus::Other(_) => {
            return Verdict::new(Health::Unknown, Some(f.status.as_str().to_owned()));
        }
        _ => {}
    }
    if recent_job.is_some_and(|j| j.state == JobState::Success) {
        return Verdict::new(Health::Healthy, None);
    }
    let stale_after = chrono::Duration::from_std(f.stale_after).unwrap_or(chrono::Duration::MAX);
    match f.last_used {
        Some(used) if f.now - used <= stale_after => {
            Verdict::new(Health::Healthy, Some("no-recent-job".into()))
        }
        _ => Verdict::new(Health::Stale, Some("no-recent-job".into())),
    }
}

/// The newest job failed.
fn failed_job(f: &Facts<'_>, job: &NewestJob) -> Verdict {
    let code = job
        .failure_code
        .clone()
        .unwrap_or_else(|| crate::domain::NO_FAILURE_CODE.into());
    let start = job.created.or(job.updated).unwrap_or(f.now);
    let ran = Some((start, job.updated.unwrap_or(start).max(start)));
    match Side::of(&code) {
        Side::User => user_failure(f, &code, ran),
        Side::Bank => match outage_failure(f, &code, ran) {
            Some(verdict) => verdict,
            None if f.bank_down() => Verdict::new(Health::InstitutionOutage, code),
            None => Verdict::new(Health::TransientFailure, code),
        },
        Side::Retry | Side::Cap => Verdict::new(Health::TransientFailure, code),
        Side::Unknown => Verdict::new(Health::Unknown, code),
    }
}

/// A failure that asks the user to act (`ran`: when it happened). The user is asked only
/// once the bank is known to be up, or known to have gone down after the failure.
fn user_failure(
    f: &Facts<'_>,
    reason: &str,
    ran: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Verdict {
    if let Some(verdict) = outage_failure(f, reason, ran) {
        return verdict;
    }
    // Down now, but no period of it is known (its start, say): nobody can tell. A window
    // the bank announced is a known period while it lasts: a failure before it began stays
    // the user's.
    let known_period = f.periods.iter().any(|p| p.is_open() || p.covers(f.now));
    if f.bank_down() && (!known_period || ran.is_none()) {
        return Verdict::new(Health::InstitutionOutage, reason.to_owned());
    }
    if *f.connector == ConnectorView::Unknown {
        return match f.previous {
            Some((health, reason)) => Verdict::new(health, reason.map(str::to_owned)),
            None => Verdict::new(Health::Unknown, CONNECTOR_STATUS_UNKNOWN.to_owned()),
        };
    }
    Verdict::new(Health::ActionRequired, reason.to_owned())
}

/// The verdict of a failure that happened while its bank was down: held while the outage
/// lasts (or the bank is down again), re-checked once it is over. `None`: it happened in no
/// known outage.
fn outage_failure(
    f: &Facts<'_>,
    reason: &str,
    ran: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Option<Verdict> {
    let (start, end) = ran?;
    let during: Vec<&DownPeriod> = f
        .periods
        .iter()
        .filter(|p| p.overlaps(start, end))
        .collect();
    if during.is_empty() {
        return None;
    }
    if during.iter().any(|p| p.is_open()) {
        return Some(Verdict::new(Health::InstitutionOutage, reason.to_owned()));
    }
    let ended = during.iter().filter_map(|p| p.until).max()?;
    let invalid = *f.status == ConnectionStatus::Invalid;
    if invalid && f.now - ended > RECHECK_LIMIT {
        // No re-check can come: Basiq refreshes no invalid connection. Whatever the bank
        // does now, the outage this failure belonged to is long over.
        let reason = Some("connection-invalid".to_owned());
        return Some(Verdict::new(Health::ActionRequired, reason));
    }
    if f.bank_down() {
        // Down again: the re-check waits for this outage too.
        return Some(Verdict::new(Health::InstitutionOutage, reason.to_owned()));
    }
    let reason = Some(RECHECK_AFTER_OUTAGE.to_owned());
    Some(Verdict::new(Health::Pending, reason))
}

/// The consent-expiry warning thresholds, in days.
pub const CONSENT_THRESHOLDS: [i64; 3] = [30, 7, 1];

/// The smallest threshold an open-banking consent has crossed, if any (not yet expired).
pub fn consent_threshold(
    method: &Method,
    expiry: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<i64> {
    let expiry = expiry.filter(|_| *method == Method::OpenBanking)?;
    let left = expiry - now;
    if left <= chrono::Duration::zero() {
        return None;
    }
    CONSENT_THRESHOLDS
        .into_iter()
        .rev()
        .find(|days| left <= chrono::Duration::days(*days))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    fn now() -> DateTime<Utc> {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn job(state: JobState, code: Option<&str>) -> NewestJob {
        NewestJob {
            state,
            failure_code: code.map(str::to_owned),
            side: code.map(Side::of),
            created: Some(now() - chrono::Duration::hours(3)),
            updated: None,
        }
    }

    struct Case {
        name: &'static str,
        status: &'static str,
        method: &'static str,
        job: Option<NewestJob>,
        connector: Option<&'static str>,
        inferred: bool,
        last_used_hours: Option<i64>,
        expiry_days: Option<i64>,
        previous: Option<(Health, Option<&'static str>)>,
        /// Down periods, in hours from now: (from, until); `None` = unknown start / open.
        periods: Vec<(Option<i64>, Option<i64>)>,
        /// When the status turned invalid, in hours from now.
        invalid_within: Option<(i64, i64)>,
        expect: (Health, Option<&'static str>),
    }

    fn case(name: &'static str) -> Case {
        Case {
            name,
            status: "active",
            method: "web",
            job: None,
            connector: Some("operational"),
            inferred: false,
            last_used_hours: Some(5),
            expiry_days: None,
            previous: None,
            periods: Vec::new(),
            invalid_within: None,
            expect: (Health::Healthy, None),
        }
    }

    fn run(c: &Case) -> Verdict {
        let status = ConnectionStatus::parse(c.status);
        let method = Method::parse(c.method);
        let connector = match c.connector {
            Some("?") => ConnectorView::Unknown,
            Some(s) => ConnectorView::Status(ConnectorStatus::parse(s)),
            None => ConnectorView::Unlisted,
        };
        let hours = |h: i64| now() + chrono::Duration::hours(h);
        let periods: Vec<DownPeriod> = c
            .periods
            .iter()
            .map(|(from, until)| DownPeriod {
                from: from.map(hours),
                until: until.map(hours),
            })
            .collect();
        classify(&Facts {
            periods: &periods,
            invalid_within: c.invalid_within.map(|(a, b)| (hours(a), hours(b))),
            status: &status,
            method: &method,
            last_used: c
                .last_used_hours
                .map(|h| now() - chrono::Duration::hours(h)),
            expiry_date: c.expiry_days.map(|d| now() + chrono::Duration::days(d)),
            newest_job: c.job.as_ref(),
            connector: &connector,
            outage_inferred: c.inferred,
            previous: c.previous,
            stale_after: 72 * H,
            now: now(),
        })
    }

    #[test]
    fn a_failure_inside_announced_maintenance_is_the_bank_s_until_the_window_is_over() {
        use Health::*;
        let failed = || Some(job(JobState::Failed, Some("invalid-credentials")));
        let cases = vec![
            // The job ran 3 hours ago inside a window from 4 hours ago to an hour ahead.
            Case {
                method: "open-banking",
                job: failed(),
                periods: vec![(Some(-4), Some(1))],
                expect: (InstitutionOutage, Some("invalid-credentials")),
                ..case("failed inside a window that lasts")
            },
            Case {
                method: "open-banking",
                job: failed(),
                periods: vec![(Some(-4), Some(-1))],
                expect: (Pending, Some(RECHECK_AFTER_OUTAGE)),
                ..case("failed inside a window that is over: re-checked, not asked")
            },
            // Before a window that began since: the user's, asked once the bank is up.
            Case {
                method: "open-banking",
                job: failed(),
                periods: vec![(Some(-2), Some(-1))],
                expect: (ActionRequired, Some("invalid-credentials")),
                ..case("failed before a window that is over")
            },
            // A window that began after the failure and lasts now: the failure came first.
            Case {
                method: "open-banking",
                job: failed(),
                periods: vec![(Some(-2), Some(1))],
                expect: (ActionRequired, Some("invalid-credentials")),
                ..case("failed before a window that lasts now")
            },
            // A window still ahead says nothing now.
            Case {
                method: "open-banking",
                job: failed(),
                periods: vec![(Some(6), Some(8))],
                expect: (ActionRequired, Some("invalid-credentials")),
                ..case("a window six hours ahead")
            },
        ];
        for c in &cases {
            let v = run(c);
            assert_eq!((v.health, v.reason.as_deref()), c.expect, "{}", c.name);
        }
    }

    #[test]
    fn a_bank_that_says_itself_it_is_down_holds_a_user_side_failure_whatever_basiq_says() {
        let status = ConnectionStatus::Active;
        let method = Method::OpenBanking;
        let j = job(JobState::Failed, Some("invalid-credentials"));
        for basiq in [None, Some(ConnectorStatus::Operational)] {
            let connector = ConnectorView::Witnessed { basiq };
            assert!(connector.is_down());
            let v = classify(&Facts {
                periods: &[DownPeriod {
                    from: None,
                    until: None,
                }],
                invalid_within: None,
                status: &status,
                method: &method,
                last_used: None,
                expiry_date: None,
                newest_job: Some(&j),
                connector: &connector,
                outage_inferred: false,
                previous: None,
                stale_after: 72 * H,
                now: now(),
            });
            assert_eq!(v.health, Health::InstitutionOutage);
        }
    }

    #[test]
    fn every_health_value_is_reached_by_its_case() {
        use Health::*;
        use JobState::{Failed, Success};
        let cases = vec![
            Case {
                job: Some(job(Success, None)),
                expect: (Healthy, None),
                ..case("newest job succeeded")
            },
            Case {
                status: "pending",
                last_used_hours: None,
                expect: (Pending, Some("pending")),
                ..case("pending, no job")
            },
            Case {
                status: "pre-init",
                last_used_hours: None,
                expect: (Pending, Some("pre-init")),
                ..case("pre-init, no job")
            },
            Case {
                status: "init",
                method: "open-banking",
                last_used_hours: None,
                expect: (Pending, Some("init")),
                ..case("init, no job")
            },
            Case {
                job: Some(job(JobState::InProgress, None)),
                expect: (InProgress, None),
                ..case("job running")
            },
            Case {
                status: "pending",
                job: Some(job(JobState::InProgress, None)),
                expect: (InProgress, None),
                ..case("pending with a running job")
            },
            Case {
                job: Some(job(Failed, Some("invalid-credentials"))),
                expect: (ActionRequired, Some("invalid-credentials")),
                ..case("bad password")
            },
            Case {
                job: Some(job(
                    Failed,
                    Some("account-not-accessible-requires-user-action"),
                )),
                expect: (
                    ActionRequired,
                    Some("account-not-accessible-requires-user-action"),
                ),
                ..case("bank popup")
            },
            Case {
                status: "invalid",
                job: Some(job(Failed, Some("user-action-required"))),
                expect: (ActionRequired, Some("user-action-required")),
                ..case("invalid with the job's code")
            },
            Case {
                status: "invalid",
                expect: (ActionRequired, Some("connection-invalid")),
                ..case("invalid without a job")
            },
            Case {
                method: "open-banking",
                expiry_days: Some(-2),
                job: Some(job(Success, None)),
                expect: (ActionRequired, Some("consent-expired")),
                ..case("consent expired")
            },
            Case {
                method: "openbanking",
                status: "invalid",
                expiry_days: Some(-1),
                expect: (ActionRequired, Some("consent-expired")),
                ..case("consent expired, invalid")
            },
            Case {
                job: Some(job(Failed, Some("service-unavailable"))),
                connector: Some("major-outage"),
                expect: (InstitutionOutage, Some("service-unavailable")),
                ..case("bank-side during outage")
            },
            Case {
                job: Some(job(Failed, Some("service-unavailable"))),
                connector: Some("degraded-performance"),
                expect: (TransientFailure, Some("service-unavailable")),
                ..case("bank-side while merely degraded: retried, not an outage")
            },
            Case {
                job: Some(job(Failed, Some("institution-not-available"))),
                inferred: true,
                expect: (InstitutionOutage, Some("institution-not-available")),
                ..case("bank-side with inferred outage")
            },
            Case {
                job: Some(job(Failed, Some("service-unavailable"))),
                expect: (TransientFailure, Some("service-unavailable")),
                ..case("bank-side, connector operational")
            },
            Case {
                job: Some(job(Failed, Some("maintenance"))),
                connector: None,
                expect: (TransientFailure, Some("maintenance")),
                ..case("bank-side, connector unlisted")
            },
            Case {
                job: Some(job(Failed, Some("invalid-credentials"))),
                connector: Some("partial-outage"),
                expect: (InstitutionOutage, Some("invalid-credentials")),
                ..case("user-side code during partial outage")
            },
            Case {
                job: Some(job(Failed, Some("invalid-credentials"))),
                connector: Some("degraded-performance"),
                expect: (ActionRequired, Some("invalid-credentials")),
                ..case("user-side code while merely degraded")
            },
            Case {
                job: Some(job(Failed, Some("unknown-error"))),
                expect: (TransientFailure, Some("unknown-error")),
                ..case("unknown-error retries")
            },
            Case {
                job: Some(job(Failed, Some("job-timed-out"))),
                connector: Some("major-outage"),
                expect: (TransientFailure, Some("job-timed-out")),
                ..case("job-timed-out retries")
            },
            Case {
                job: Some(job(Failed, Some("quantum-flux"))),
                expect: (Unknown, Some("quantum-flux")),
                ..case("unknown code kept verbatim")
            },
            Case {
                last_used_hours: Some(24),
                expect: (Healthy, Some("no-recent-job")),
                ..case("no job, recently used")
            },
            Case {
                last_used_hours: Some(100),
                expect: (Stale, Some("no-recent-job")),
                ..case("no job, used long ago")
            },
            Case {
                last_used_hours: None,
                expect: (Stale, Some("no-recent-job")),
                ..case("no job, never used")
            },
            Case {
                job: Some(NewestJob {
                    created: Some(now() - chrono::Duration::days(9)),
                    ..job(Failed, Some("invalid-credentials"))
                }),
                last_used_hours: Some(200),
                expect: (Stale, Some("no-recent-job")),
                ..case("a job older than 7 days does not count")
            },
            Case {
                status: "frozen",
                expect: (Unknown, Some("frozen")),
                ..case("unknown status")
            },
        ];
        let mut reached = std::collections::BTreeSet::new();
        for c in &cases {
            let v = run(c);
            assert_eq!(
                (v.health, v.reason.as_deref()),
                c.expect,
                "case: {}",
                c.name
            );
            reached.insert(v.health);
        }
        assert_eq!(
            reached.len(),
            Health::ALL.len(),
            "every health value is reached"
        );
    }

    #[test]
    fn the_same_failure_classifies_by_the_connector_status() {
        let failing = Case {
            job: Some(job(JobState::Failed, Some("service-unavailable"))),
            ..case("x")
        };
        let during = Case {
            connector: Some("major-outage"),
            ..failing
        };
        let failing = Case {
            job: Some(job(JobState::Failed, Some("service-unavailable"))),
            ..case("x")
        };
        assert_ne!(run(&during).health, run(&failing).health);
    }

    #[test]
    fn consent_thresholds_are_30_7_and_1_days() {
        let ob = Method::OpenBanking;
        let at =
            |days: i64| consent_threshold(&ob, Some(now() + chrono::Duration::days(days)), now());
        assert_eq!(at(40), None);
        assert_eq!(at(29), Some(30));
        assert_eq!(at(6), Some(7));
        assert_eq!(
            consent_threshold(&ob, Some(now() + chrono::Duration::hours(5)), now()),
            Some(1)
        );
        assert_eq!(at(-1), None);
        assert_eq!(
            consent_threshold(&Method::Web, Some(now() + chrono::Duration::days(3)), now()),
            None
        );
    }

    /// Rule 13: every documented code has its side.
    #[test]
    fn every_documented_failure_code_has_its_side() {
        let table = [
            ("invalid-credentials", Side::User),
            ("account-not-accessible-requires-user-action", Side::User),
            ("user-action-required", Side::User),
            ("invalid-connection", Side::User),
            ("authorization-failed", Side::User),
            ("invalid-username-or-password", Side::User),
            ("locked-account", Side::User),
            ("multifactor-required", Side::User),
            ("multi-factor-authentication", Side::User),
            ("consent-expired", Side::User),
            ("consent-revoked", Side::User),
            ("service-unavailable", Side::Bank),
            ("maintenance", Side::Bank),
            ("maintenance-error", Side::Bank),
            ("system-unavailable", Side::Bank),
            ("temporary-unavailable", Side::Bank),
            ("connector-error", Side::Bank),
            ("institution-not-available", Side::Bank),
            ("institution-disabled", Side::Bank),
            ("institution-not-found", Side::Bank),
            ("unknown-error", Side::Retry),
            ("job-timed-out", Side::Retry),
            ("too-many-requests", Side::Cap),
            ("no-failure-code", Side::Unknown),
            ("missing-required-field", Side::Unknown),
            ("invalid-csv-row", Side::Unknown),
            ("bank-statement-bad", Side::Unknown),
            ("quantum-flux", Side::Unknown),
        ];
        for (code, side) in table {
            assert_eq!(Side::of(code), side, "{code}");
        }
        for code in USER_CODES {
            assert_eq!(Side::of(code), Side::User, "{code}");
        }
    }

    /// Rule 2: a failed step without a code is unknown, never a retry.
    #[test]
    fn a_failure_without_a_code_is_unknown() {
        let c = Case {
            job: Some(job(JobState::Failed, Some("no-failure-code"))),
            expect: (Health::Unknown, Some("no-failure-code")),
            ..case("failed step, result null")
        };
        let v = run(&c);
        assert_eq!((v.health, v.reason.as_deref()), c.expect);
        let c = Case {
            job: Some(job(JobState::Failed, None)),
            ..case("failed job, code lost")
        };
        assert_eq!(run(&c).health, Health::Unknown);
    }

    /// Rules 10 and 11: no user is blamed while the bank is down or its status unknown.
    #[test]
    fn a_user_side_failure_is_not_blamed_on_the_user_unless_the_bank_is_known_up() {
        use Health::*;
        let failing = |name| Case {
            job: Some(job(JobState::Failed, Some("invalid-credentials"))),
            ..case(name)
        };
        let cases = [
            Case {
                connector: Some("?"),
                expect: (Unknown, Some("connector-status-unknown")),
                ..failing("no connector status on a fresh database")
            },
            Case {
                connector: Some("?"),
                previous: Some((Healthy, None)),
                expect: (Healthy, None),
                ..failing("no connector status: the previous verdict is kept")
            },
            Case {
                connector: Some("major-outage"),
                method: "unknown",
                expect: (InstitutionOutage, Some("invalid-credentials")),
                ..failing("method unknown, worst connector status in outage")
            },
            Case {
                connector: Some("on-fire"),
                expect: (InstitutionOutage, Some("invalid-credentials")),
                ..failing("a connector status this build does not know")
            },
            Case {
                connector: Some("under-maintenance"),
                expect: (ActionRequired, Some("invalid-credentials")),
                ..failing("under maintenance still works")
            },
            Case {
                inferred: true,
                expect: (InstitutionOutage, Some("invalid-credentials")),
                ..failing("an inferred outage")
            },
            Case {
                status: "invalid",
                connector: Some("major-outage"),
                expect: (InstitutionOutage, Some("connection-invalid")),
                ..case("invalid during an outage")
            },
            Case {
                job: Some(job(JobState::Failed, Some("too-many-requests"))),
                expect: (TransientFailure, Some("too-many-requests")),
                ..case("Basiq's cap")
            },
        ];
        for c in &cases {
            let v = run(c);
            assert_eq!(
                (v.health, v.reason.as_deref()),
                c.expect,
                "case: {}",
                c.name
            );
        }
    }

    fn failed_at(code: &str, hours_ago: i64) -> NewestJob {
        NewestJob {
            state: JobState::Failed,
            failure_code: Some(code.to_owned()),
            side: Some(Side::of(code)),
            created: Some(now() - chrono::Duration::hours(hours_ago)),
            updated: Some(
                now() - chrono::Duration::hours(hours_ago) + chrono::Duration::minutes(1),
            ),
        }
    }

    /// A failure belongs to the period it happened in.
    #[test]
    fn a_failure_belongs_to_the_period_it_happened_in() {
        use Health::*;
        let popup = "account-not-accessible-requires-user-action";
        let cases = [
            Case {
                job: Some(failed_at(popup, 2)),
                connector: Some("major-outage"),
                periods: vec![(Some(-3), None)],
                expect: (InstitutionOutage, Some(popup)),
                ..case("a user-side code during the open outage is the outage's")
            },
            Case {
                job: Some(failed_at(popup, 2)),
                periods: vec![(Some(-3), Some(-1))],
                expect: (Pending, Some(RECHECK_AFTER_OUTAGE)),
                ..case("the same code once the outage is over: re-checked, not asked")
            },
            Case {
                job: Some(failed_at("service-unavailable", 2)),
                periods: vec![(Some(-3), Some(-1))],
                expect: (Pending, Some(RECHECK_AFTER_OUTAGE)),
                ..case("a bank-side failure of the outage, once over: re-checked")
            },
            Case {
                job: Some(failed_at("service-unavailable", 30)),
                periods: vec![(Some(-3), Some(-1))],
                expect: (TransientFailure, Some("service-unavailable")),
                ..case("a bank-side failure from before the outage is retried as ever")
            },
            Case {
                job: Some(failed_at("invalid-credentials", 30)),
                inferred: true,
                periods: vec![(Some(-2), None)],
                expect: (ActionRequired, Some("invalid-credentials")),
                ..case("a failure from before an inferred outage stays the user's")
            },
            Case {
                job: Some(failed_at("invalid-credentials", 30)),
                connector: Some("major-outage"),
                periods: vec![(None, None)],
                expect: (InstitutionOutage, Some("invalid-credentials")),
                ..case("an outage whose start is not known holds, as before")
            },
            Case {
                job: Some(failed_at("invalid-credentials", 30)),
                connector: Some("major-outage"),
                expect: (InstitutionOutage, Some("invalid-credentials")),
                ..case("down with no period known at all: held")
            },
            Case {
                status: "invalid",
                inferred: true,
                periods: vec![(Some(-2), None)],
                invalid_within: Some((-24 * 19, -24 * 18)),
                expect: (ActionRequired, Some("connection-invalid")),
                ..case("invalid for days before the outage: the user's")
            },
            Case {
                status: "invalid",
                inferred: true,
                periods: vec![(Some(-2), None)],
                invalid_within: Some((-3, -1)),
                expect: (InstitutionOutage, Some("connection-invalid")),
                ..case("turned invalid while the bank was down: held")
            },
            Case {
                status: "invalid",
                periods: vec![(Some(-5), Some(-2))],
                invalid_within: Some((-4, -3)),
                expect: (Pending, Some(RECHECK_AFTER_OUTAGE)),
                ..case("turned invalid in the outage, just over: re-checked")
            },
            Case {
                status: "invalid",
                periods: vec![(Some(-12), Some(-8))],
                invalid_within: Some((-11, -10)),
                expect: (ActionRequired, Some("connection-invalid")),
                ..case("still invalid long after the outage: no re-check can come")
            },
            Case {
                job: Some(failed_at("invalid-credentials", 1)),
                periods: vec![(Some(-5), Some(-2))],
                expect: (ActionRequired, Some("invalid-credentials")),
                ..case("a job after the end decides")
            },
            Case {
                status: "invalid",
                job: Some(failed_at("invalid-credentials", 30)),
                inferred: true,
                periods: vec![(Some(-31), Some(-20)), (Some(-2), None)],
                expect: (ActionRequired, Some("connection-invalid")),
                ..case("a failure an old outage held stays the user's when the bank fails again")
            },
        ];
        for c in &cases {
            let v = run(c);
            assert_eq!(
                (v.health, v.reason.as_deref()),
                c.expect,
                "case: {}",
                c.name
            );
        }
    }
}
