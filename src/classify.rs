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
    /// A code this build does not know.
    Unknown,
}

impl Side {
    pub fn of(code: &str) -> Self {
        match code {
            "invalid-credentials"
            | "account-not-accessible-requires-user-action"
            | "user-action-required"
            | "invalid-connection"
            | "authorization-failed"
            | "invalid-username-or-password"
            | "locked-account"
            | "multifactor-required"
            | "consent-expired"
            | "consent-revoked" => Self::User,
            "service-unavailable"
            | "maintenance"
            | "maintenance-error"
            | "system-unavailable"
            | "temporary-unavailable"
            | "connector-error" => Self::Bank,
            c if c.starts_with("institution-") => Self::Bank,
            "unknown-error" | "job-timed-out" | "too-many-requests" => Self::Retry,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Bank => "bank",
            Self::Retry => "retry",
            Self::Unknown => "unknown",
        }
    }
}

/// The newest job of a connection, as far as classification cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewestJob {
    pub state: JobState,
    pub failure_code: Option<String>,
    pub created: Option<DateTime<Utc>>,
}

/// Everything classification looks at for one connection.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub status: &'a ConnectionStatus,
    pub method: &'a Method,
    pub last_used: Option<DateTime<Utc>>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub newest_job: Option<&'a NewestJob>,
    /// `None` when `/connectors` does not list the connector (treated as operational).
    pub connector: Option<&'a ConnectorStatus>,
    /// At least `outage.min_users` users failed bank-side at this connector recently.
    pub outage_inferred: bool,
    pub stale_after: Duration,
    pub now: DateTime<Utc>,
}

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
    let connector = f.connector.unwrap_or(&ConnectorStatus::Operational);
    let bank_down = *connector != ConnectorStatus::Operational || f.outage_inferred;
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
        return Verdict::new(Health::ActionRequired, Some("consent-expired".into()));
    }

    if let Some(job) = recent_job
        && job.state == JobState::Failed
    {
        let code = job
            .failure_code
            .clone()
            .unwrap_or_else(|| "unknown-error".into());
        return match Side::of(&code) {
            // Banks in an outage fail logins too: do not tell the user to re-enter credentials.
            Side::User if connector.is_outage() => Verdict::new(Health::InstitutionOutage, code),
            Side::User => Verdict::new(Health::ActionRequired, code),
            Side::Bank if bank_down => Verdict::new(Health::InstitutionOutage, code),
            Side::Bank | Side::Retry => Verdict::new(Health::TransientFailure, code),
            Side::Unknown => Verdict::new(Health::Unknown, code),
        };
    }

    match f.status {
        ConnectionStatus::Invalid => {
            return Verdict::new(Health::ActionRequired, Some("connection-invalid".into()));
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
            expect: (Health::Healthy, None),
        }
    }

    fn run(c: &Case) -> Verdict {
        let status = ConnectionStatus::parse(c.status);
        let method = Method::parse(c.method);
        let connector = c.connector.map(ConnectorStatus::parse);
        classify(&Facts {
            status: &status,
            method: &method,
            last_used: c
                .last_used_hours
                .map(|h| now() - chrono::Duration::hours(h)),
            expiry_date: c.expiry_days.map(|d| now() + chrono::Duration::days(d)),
            newest_job: c.job.as_ref(),
            connector: connector.as_ref(),
            outage_inferred: c.inferred,
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
                expect: (InstitutionOutage, Some("service-unavailable")),
                ..case("bank-side while degraded")
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

    #[test]
    fn failure_codes_have_sides() {
        assert_eq!(Side::of("authorization-failed"), Side::User);
        assert_eq!(Side::of("institution-disabled"), Side::Bank);
        assert_eq!(Side::of("too-many-requests"), Side::Retry);
        assert_eq!(Side::of("bank-statement-bad"), Side::Unknown);
    }
}
