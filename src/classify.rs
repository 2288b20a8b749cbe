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
}

impl ConnectorView {
    /// The one predicate of "the bank is down" ([`ConnectorStatus::is_down`]).
    pub fn is_down(&self) -> bool {
        matches!(self, Self::Status(s) if s.is_down())
    }

    pub fn status(&self) -> Option<&ConnectorStatus> {
        match self {
            Self::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// The newest job of a connection, as far as classification cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewestJob {
    pub state: JobState,
    pub failure_code: Option<String>,
    pub created: Option<DateTime<Utc>>,
    pub updated: Option<DateTime<Utc>>,
}

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
    /// The stored verdict, kept when a user-side failure cannot be judged yet.
    pub previous: Option<(Health, Option<&'a str>)>,
    pub stale_after: Duration,
    pub now: DateTime<Utc>,
}

/// The reason given while a user-side failure waits for the connector status.
pub const CONNECTOR_STATUS_UNKNOWN: &str = "connector-status-unknown";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub health: Health,
    /// The Basiq failure code where one exists, else `connection-invalid`,
    /// `consent-expired`, `no-recent-job`; `None` for a plain success or no news.
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
pub fn classify(f: &Facts<'_>) -> Verdict {
    let bank_down = f.connector.is_down() || f.outage_inferred;
    let recent_job = f
        .newest_job
        .filter(|j| j.created.is_none_or(|c| f.now - c <= JOB_RETENTION));
    // A failure that asks the user to act is only reported once the bank is known to be up.
    let blame_user = |reason: String| {
        if bank_down {
            Verdict::new(Health::InstitutionOutage, reason)
        } else if *f.connector == ConnectorView::Unknown {
            match f.previous {
                Some((health, reason)) => Verdict::new(health, reason.map(str::to_owned)),
                None => Verdict::new(Health::Unknown, CONNECTOR_STATUS_UNKNOWN.to_owned()),
            }
        } else {
            Verdict::new(Health::ActionRequired, reason)
        }
    };

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
        let code = job
            .failure_code
            .clone()
            .unwrap_or_else(|| crate::domain::NO_FAILURE_CODE.into());
        return match Side::of(&code) {
            Side::User => blame_user(code),
            Side::Bank if bank_down => Verdict::new(Health::InstitutionOutage, code),
            Side::Bank | Side::Retry | Side::Cap => Verdict::new(Health::TransientFailure, code),
            Side::Unknown => Verdict::new(Health::Unknown, code),
        };
    }

    match f.status {
        ConnectionStatus::Invalid => return blame_user("connection-invalid".into()),
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
        classify(&Facts {
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
}
