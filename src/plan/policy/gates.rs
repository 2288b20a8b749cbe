//! May this connection be refreshed now? The mode, then the gates in a fixed order (pure).
//!
//! Why so careful: open-banking connections allow 20 refreshes a day, counted with the
//! partner's own app that the daemon cannot see; web connections log in to the bank with
//! the user's password, and repeated logins with bad credentials lock the user out of it.
//!
//! The order is part of the contract, because the first failing gate is what operators see:
//!
//! 0. the mode: `off` denies every trigger but [`Trigger::Manual`] (`refresh-off`);
//!    `smart-cache` denies [`Trigger::Scheduled`] (`not-scheduled-in-mode`);
//! 1. `connection-not-active`;
//! 2. `needs-user-action` (every trigger, login and manual included);
//! 3. `needs-user-present` (an MFA connection, for every trigger without the user);
//! 4. `unknown-failure` (a failure nobody can read, for every trigger without the user);
//! 5. `job-in-progress`;
//! 6. `not-needed` (a recovery or retry whose incident a job of any origin answered: it
//!    succeeded after the outage's end, or after the failure being retried);
//! 7. `recently-refreshed` (see [`not_before`] for the thresholds);
//! 8. `institution-outage` (the one "bank is down" predicate, or an inferred outage);
//! 9. `connector-status-unknown` (no `/connectors` answer yet, for automatic triggers);
//! 10. `daily-cap` (the rolling 24 h cap from [`cap_for`], or Basiq said it is capped).
//!
//! Pacing comes after all of them and lives in [`super::pace`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{ConnectionStatus, Method};
use crate::plan::Window;
use crate::plan::classify::{ConnectorView, Health};

/// `refresh.mode`: when the daemon refreshes on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefreshMode {
    /// Refresh at a user's login check when the data is old, and to recover after an
    /// outage or a transient failure; never on a schedule.
    #[default]
    SmartCache,
    /// Smart-cache, plus each active connection once a day in its unattended-window slot.
    Daily,
    /// Never refresh automatically; only a manual `refresh` command goes through the gates.
    Off,
}

impl RefreshMode {
    pub const ALL: [RefreshMode; 3] = [Self::SmartCache, Self::Daily, Self::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SmartCache => "smart-cache",
            Self::Daily => "daily",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for RefreshMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `refresh.mode` value that is none of the known ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown refresh mode `{0}`: write smart-cache, daily or off")]
pub struct UnknownRefreshMode(pub String);

impl FromStr for RefreshMode {
    type Err = UnknownRefreshMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == text.trim())
            .ok_or_else(|| UnknownRefreshMode(text.to_owned()))
    }
}

/// What asked for a refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// The partner's app checked the user at login and the data is old.
    Login,
    /// An operator's `refresh` command.
    Manual,
    /// The institution's outage ended.
    Recovery,
    /// The last refresh failed with a "retry later" or bank-side code.
    TransientRetry,
    /// The connection's daily slot in the unattended window (mode `daily` only).
    Scheduled,
}

impl Trigger {
    pub const ALL: [Trigger; 5] = [
        Self::Login,
        Self::Manual,
        Self::Recovery,
        Self::TransientRetry,
        Self::Scheduled,
    ];

    /// A person is waiting for this refresh: it may use the open-banking login reserve.
    pub fn is_attended(self) -> bool {
        matches!(self, Self::Login | Self::Manual)
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Manual => "manual",
            Self::Recovery => "recovery",
            Self::TransientRetry => "transient-retry",
            Self::Scheduled => "scheduled",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a refresh was denied. The gates' variants are listed in the order they are checked;
/// the last two are what Basiq or the network answered to a request that was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Denial {
    RefreshOff,
    NotScheduledInMode,
    ConnectionNotActive,
    NeedsUserAction,
    NeedsUserPresent,
    UnknownFailure,
    JobInProgress,
    NotNeeded,
    RecentlyRefreshed,
    InstitutionOutage,
    /// Inside a maintenance window the data holder announced (CDR planned outage).
    ScheduledOutage,
    ConnectorStatusUnknown,
    DailyCap,
    /// Basiq refused the request (a 4xx other than its cap).
    RejectedByBasiq,
    /// The request failed (network, 5xx): nothing is known to have been sent.
    RequestFailed,
}

impl Denial {
    pub const ALL: [Denial; 15] = [
        Self::RefreshOff,
        Self::NotScheduledInMode,
        Self::ConnectionNotActive,
        Self::NeedsUserAction,
        Self::NeedsUserPresent,
        Self::UnknownFailure,
        Self::JobInProgress,
        Self::NotNeeded,
        Self::RecentlyRefreshed,
        Self::InstitutionOutage,
        Self::ScheduledOutage,
        Self::ConnectorStatusUnknown,
        Self::DailyCap,
        Self::RejectedByBasiq,
        Self::RequestFailed,
    ];

    /// The reason code, as stored and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefreshOff => "refresh-off",
            Self::NotScheduledInMode => "not-scheduled-in-mode",
            Self::ConnectionNotActive => "connection-not-active",
            Self::NeedsUserAction => "needs-user-action",
            Self::NeedsUserPresent => "needs-user-present",
            Self::UnknownFailure => "unknown-failure",
            Self::JobInProgress => "job-in-progress",
            Self::NotNeeded => "not-needed",
            Self::RecentlyRefreshed => "recently-refreshed",
            Self::InstitutionOutage => "institution-outage",
            Self::ScheduledOutage => "scheduled-outage",
            Self::ConnectorStatusUnknown => "connector-status-unknown",
            Self::DailyCap => "daily-cap",
            Self::RejectedByBasiq => "rejected-by-basiq",
            Self::RequestFailed => "request-failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of a refresh request, as stored and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionKind {
    Refreshed,
    Denied,
    /// The pace did not allow it now: it stays owed for a later tick.
    Deferred,
}

impl DecisionKind {
    pub const ALL: [DecisionKind; 3] = [Self::Refreshed, Self::Denied, Self::Deferred];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refreshed => "refreshed",
            Self::Denied => "denied",
            Self::Deferred => "deferred",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

/// The `refresh.*` limits, already validated by settings (serialized as those keys).
#[derive(Clone, Debug, Serialize)]
pub struct RefreshLimits {
    pub mode: RefreshMode,
    /// The floor for every trigger: no refresh within this of the last one (ours or anyone's).
    #[serde(serialize_with = "crate::settings::serialize_duration")]
    pub min_interval: Duration,
    /// A login check refreshes only data older than this.
    #[serde(serialize_with = "crate::settings::serialize_duration")]
    pub login_stale_after: Duration,
    /// The daily schedule refreshes only data older than this.
    #[serde(serialize_with = "crate::settings::serialize_duration")]
    pub stale_after: Duration,
    /// Basiq's 20 a day; settings refuse more.
    pub open_banking_daily_cap: u32,
    /// Web connections log in with the user's password: keep it low.
    pub web_daily_cap: u32,
    /// Open-banking refreshes that automatic triggers leave for login and manual ones.
    pub reserved_for_login: u32,
}

impl Default for RefreshLimits {
    fn default() -> Self {
        Self {
            mode: RefreshMode::SmartCache,
            min_interval: Duration::from_secs(3600),
            login_stale_after: Duration::from_secs(12 * 3600),
            stale_after: Duration::from_secs(20 * 3600),
            open_banking_daily_cap: 20,
            web_daily_cap: 4,
            reserved_for_login: 5,
        }
    }
}

/// Everything the gates look at for one connection.
#[derive(Clone, Debug)]
pub struct RefreshFacts<'a> {
    pub status: &'a ConnectionStatus,
    pub method: &'a Method,
    /// The stored classification, if the connection was classified yet.
    pub health: Option<Health>,
    /// A job for this connection is pending or running.
    pub job_running: bool,
    /// A refresh may ask this user for a one-time code (`mfaEnabled`, or a job of this
    /// connection showed an `mfa-challenge` step).
    pub needs_user_present: bool,
    /// Basiq's `lastUsed`: when the connection last fetched data, whoever asked.
    pub last_used: Option<DateTime<Utc>>,
    /// The newest job of this connection from any origin (the partner's app, Basiq's smart
    /// cache, us): the later of its created and updated times.
    pub newest_job_at: Option<DateTime<Utc>>,
    /// The newest job's start, when it succeeded.
    pub newest_success_at: Option<DateTime<Utc>>,
    /// The incident a recovery or retry is owed for (the outage's end, the failure's time).
    pub incident_since: Option<DateTime<Utc>>,
    /// Our own last refresh attempt, successful or not.
    pub last_attempt: Option<DateTime<Utc>>,
    pub connector: &'a ConnectorView,
    /// Enough users failed bank-side at this connector recently.
    pub outage_inferred: bool,
    /// The maintenance windows its data holder announced (CDR planned outages).
    pub maintenance: &'a [Window],
    /// Our attempts for this connection in the rolling last 24 h.
    pub attempts_last_24h: u32,
    /// Basiq answered 429/403 to a refresh: no refresh for this connection until then.
    pub basiq_capped_until: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

/// May `trigger` refresh this connection now? `Err` names the first gate that says no.
pub fn decide(
    trigger: Trigger,
    facts: &RefreshFacts<'_>,
    limits: &RefreshLimits,
) -> Result<(), Denial> {
    match (limits.mode, trigger) {
        (RefreshMode::Off, Trigger::Manual) => {}
        (RefreshMode::Off, _) => return Err(Denial::RefreshOff),
        (RefreshMode::SmartCache, Trigger::Scheduled) => return Err(Denial::NotScheduledInMode),
        _ => {}
    }
    if *facts.status != ConnectionStatus::Active {
        return Err(Denial::ConnectionNotActive);
    }
    // Even a login: the user has to fix their credentials or consent first, and retrying bad
    // credentials is what locks people out of their bank.
    if facts.health == Some(Health::ActionRequired) {
        return Err(Denial::NeedsUserAction);
    }
    // A one-time-password prompt at 3 am: only with the user there to answer it.
    if facts.needs_user_present && !trigger.is_attended() {
        return Err(Denial::NeedsUserPresent);
    }
    // A failure nobody can read may be a credential failure: no blind retry.
    if facts.health == Some(Health::Unknown) && !trigger.is_attended() {
        return Err(Denial::UnknownFailure);
    }
    // Basiq would answer with the running job anyway; asking again only spends the cap.
    if facts.job_running {
        return Err(Denial::JobInProgress);
    }
    // What the refresh was for happened already: a job succeeded after the incident.
    let owed_for_incident = matches!(trigger, Trigger::Recovery | Trigger::TransientRetry);
    let answered = facts
        .incident_since
        .zip(facts.newest_success_at)
        .is_some_and(|(since, success)| success >= since);
    if owed_for_incident && answered {
        return Err(Denial::NotNeeded);
    }
    if not_before(trigger, facts, limits).is_some() {
        return Err(Denial::RecentlyRefreshed);
    }
    // The bank said ahead that it would be down then: a refresh there only fails.
    if maintenance_at(facts, facts.now).is_some() {
        return Err(Denial::ScheduledOutage);
    }
    if facts.connector.is_down() || facts.outage_inferred {
        return Err(Denial::InstitutionOutage);
    }
    if *facts.connector == ConnectorView::Unknown && !trigger.is_attended() {
        return Err(Denial::ConnectorStatusUnknown);
    }
    let capped_by_basiq = facts.basiq_capped_until.is_some_and(|t| t > facts.now);
    if capped_by_basiq || facts.attempts_last_24h >= cap_for(facts.method, trigger, limits) {
        return Err(Denial::DailyCap);
    }
    Ok(())
}

/// The announced maintenance window that covers `at`, if any.
pub fn maintenance_at<'a>(facts: &RefreshFacts<'a>, at: DateTime<Utc>) -> Option<&'a Window> {
    facts.maintenance.iter().find(|w| w.contains(at))
}

/// How the cap is counted: attempts in the rolling 24 hours before now.
pub const CAP_WINDOW: chrono::Duration = chrono::Duration::hours(24);

/// The number of attempts in a rolling 24h window this trigger may reach (used by the SQLite
/// reservation that enforces the cap atomically).
///
/// Open banking: the full cap for attended triggers, the cap less `reserved_for_login` for
/// automatic ones. Every other method (web, and csv, pdf or unknown ones, which have no bank
/// login to spare) gets the web cap, with no reserve: it is already small.
pub fn cap_for(method: &Method, trigger: Trigger, limits: &RefreshLimits) -> u32 {
    match method {
        Method::OpenBanking if trigger.is_attended() => limits.open_banking_daily_cap,
        Method::OpenBanking => limits
            .open_banking_daily_cap
            .saturating_sub(limits.reserved_for_login),
        _ => limits.web_daily_cap,
    }
}

/// When the `recently-refreshed` gate stops denying `trigger`; `None` when it lets it through.
///
/// Our own last attempt must be at least `min_interval` old for every trigger. Basiq's
/// `lastUsed` must be at least as old as the trigger's threshold, never less than
/// `min_interval`: login and manual `login_stale_after`, scheduled `stale_after`, recovery
/// and transient retries `min_interval` alone. A timestamp in the future counts as now.
/// Callers use this to defer a retry rather than spend a tick on a certain denial: with the
/// defaults a transient retry (10 to 20 minutes) lands inside the 1 h floor.
pub fn not_before(
    trigger: Trigger,
    facts: &RefreshFacts<'_>,
    limits: &RefreshLimits,
) -> Option<DateTime<Utc>> {
    let used_threshold = match trigger {
        Trigger::Login | Trigger::Manual => limits.login_stale_after,
        Trigger::Scheduled => limits.stale_after,
        Trigger::Recovery | Trigger::TransientRetry => limits.min_interval,
    }
    .max(limits.min_interval);
    let until = |at: Option<DateTime<Utc>>, threshold: Duration| {
        at.map(|at| {
            chrono::Duration::from_std(threshold)
                .ok()
                .and_then(|d| at.checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        })
    };
    // Every refresh counts, whoever made it: Basiq's `lastUsed`, the newest job of any
    // origin, and our own attempts.
    let last_activity = facts.last_used.max(facts.newest_job_at);
    [
        until(last_activity, used_threshold),
        until(facts.last_attempt, limits.min_interval),
    ]
    .into_iter()
    .flatten()
    .filter(|until| *until > facts.now)
    .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Duration = Duration::from_secs(60);
    const H: Duration = Duration::from_secs(3600);

    fn now() -> DateTime<Utc> {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn ago(minutes: i64) -> DateTime<Utc> {
        now() - chrono::Duration::minutes(minutes)
    }

    struct Case {
        name: &'static str,
        trigger: Trigger,
        mode: RefreshMode,
        limits: RefreshLimits,
        status: &'static str,
        method: &'static str,
        health: Option<Health>,
        job_running: bool,
        last_used_min_ago: Option<i64>,
        last_attempt_min_ago: Option<i64>,
        connector: Option<&'static str>,
        inferred: bool,
        attempts: u32,
        capped_until_min_from_now: Option<i64>,
        mfa: bool,
        job_min_ago: Option<i64>,
        success_min_ago: Option<i64>,
        incident_min_ago: Option<i64>,
        /// Announced maintenance windows, in minutes from now: (from, until).
        maintenance: Vec<Window>,
        expect: Result<(), Denial>,
    }

    /// A stale, healthy, active open-banking connection in `daily` mode: every trigger passes.
    fn case(name: &'static str, trigger: Trigger) -> Case {
        Case {
            name,
            trigger,
            mode: RefreshMode::Daily,
            limits: RefreshLimits::default(),
            status: "active",
            method: "open-banking",
            health: Some(Health::Stale),
            job_running: false,
            last_used_min_ago: Some(24 * 60),
            last_attempt_min_ago: Some(24 * 60),
            connector: Some("operational"),
            inferred: false,
            attempts: 0,
            capped_until_min_from_now: None,
            mfa: false,
            job_min_ago: None,
            success_min_ago: None,
            incident_min_ago: None,
            maintenance: Vec::new(),
            expect: Ok(()),
        }
    }

    fn run(c: &Case) -> Result<(), Denial> {
        let status = ConnectionStatus::parse(c.status);
        let method = Method::parse(c.method);
        let connector = match c.connector {
            Some("?") => ConnectorView::Unknown,
            Some(s) => ConnectorView::Status(crate::domain::ConnectorStatus::parse(s)),
            None => ConnectorView::Unlisted,
        };
        let limits = RefreshLimits {
            mode: c.mode,
            ..c.limits.clone()
        };
        let facts = RefreshFacts {
            status: &status,
            method: &method,
            health: c.health,
            job_running: c.job_running,
            needs_user_present: c.mfa,
            last_used: c.last_used_min_ago.map(ago),
            newest_job_at: c.job_min_ago.map(ago),
            newest_success_at: c.success_min_ago.map(ago),
            incident_since: c.incident_min_ago.map(ago),
            last_attempt: c.last_attempt_min_ago.map(ago),
            connector: &connector,
            outage_inferred: c.inferred,
            maintenance: &c.maintenance,
            attempts_last_24h: c.attempts,
            basiq_capped_until: c.capped_until_min_from_now.map(|m| ago(-m)),
            now: now(),
        };
        decide(c.trigger, &facts, &limits)
    }

    /// Repairs one gate of a case.
    type Fix = fn(&mut Case);

    fn check(cases: &[Case]) {
        for c in cases {
            assert_eq!(run(c), c.expect, "case: {}", c.name);
        }
    }

    use Denial::*;
    use Trigger::*;

    #[test]
    fn a_stale_healthy_connection_may_be_refreshed_by_every_trigger_in_daily_mode() {
        let cases: Vec<Case> = Trigger::ALL
            .into_iter()
            .map(|t| case(t.as_str(), t))
            .collect();
        check(&cases);
    }

    #[test]
    fn refresh_modes_deny_what_they_do_not_allow() {
        let off = |name, trigger| Case {
            mode: RefreshMode::Off,
            ..case(name, trigger)
        };
        let smart = |name, trigger| Case {
            mode: RefreshMode::SmartCache,
            ..case(name, trigger)
        };
        check(&[
            Case {
                expect: Err(RefreshOff),
                ..off("off denies login", Login)
            },
            Case {
                expect: Err(RefreshOff),
                ..off("off denies recovery", Recovery)
            },
            Case {
                expect: Err(RefreshOff),
                ..off("off denies transient retries", TransientRetry)
            },
            Case {
                expect: Err(RefreshOff),
                ..off("off denies the schedule", Scheduled)
            },
            off("off lets a manual refresh through", Manual),
            Case {
                status: "invalid",
                expect: Err(ConnectionNotActive),
                ..off("a manual refresh in off mode still meets the gates", Manual)
            },
            Case {
                status: "invalid",
                health: Some(Health::ActionRequired),
                expect: Err(RefreshOff),
                ..off("off is checked before any gate", Login)
            },
            Case {
                expect: Err(NotScheduledInMode),
                ..smart("smart-cache has no schedule", Scheduled)
            },
            Case {
                status: "pending",
                expect: Err(NotScheduledInMode),
                ..smart("the mode is checked before the gates", Scheduled)
            },
            smart("smart-cache refreshes at login", Login),
            smart("smart-cache recovers after an outage", Recovery),
            smart("smart-cache retries transient failures", TransientRetry),
            smart("smart-cache takes manual refreshes", Manual),
        ]);
    }

    #[test]
    fn refresh_is_denied_when_the_connection_is_not_active() {
        let cases: Vec<Case> = [
            "pending", "pre-init", "init", "invalid", "revoked", "frozen",
        ]
        .into_iter()
        .map(|status| Case {
            status,
            expect: Err(ConnectionNotActive),
            ..case(status, Login)
        })
        .collect();
        check(&cases);
    }

    #[test]
    fn refresh_is_denied_for_every_trigger_while_the_user_must_act() {
        let mut cases: Vec<Case> = Trigger::ALL
            .into_iter()
            .map(|t| Case {
                health: Some(Health::ActionRequired),
                expect: Err(NeedsUserAction),
                ..case(t.as_str(), t)
            })
            .collect();
        cases.extend([
            Case {
                health: Some(Health::TransientFailure),
                ..case("a transient failure may be retried", TransientRetry)
            },
            Case {
                health: Some(Health::InstitutionOutage),
                ..case("an outage that ended may be recovered", Recovery)
            },
            Case {
                health: None,
                ..case("an unclassified connection may be refreshed", Login)
            },
        ]);
        check(&cases);
    }

    #[test]
    fn refresh_is_denied_while_a_job_is_in_progress() {
        let cases: Vec<Case> = Trigger::ALL
            .into_iter()
            .map(|t| Case {
                job_running: true,
                expect: Err(JobInProgress),
                ..case(t.as_str(), t)
            })
            .collect();
        check(&cases);
    }

    #[test]
    fn refresh_is_denied_when_the_data_is_newer_than_the_trigger_threshold() {
        let used = |name, trigger, minutes, expect| Case {
            last_used_min_ago: Some(minutes),
            expect,
            ..case(name, trigger)
        };
        check(&[
            used(
                "login, used 11 h ago",
                Login,
                11 * 60,
                Err(RecentlyRefreshed),
            ),
            used("login, used exactly 12 h ago", Login, 12 * 60, Ok(())),
            used(
                "manual, used 11 h ago",
                Manual,
                11 * 60,
                Err(RecentlyRefreshed),
            ),
            used("manual, used 13 h ago", Manual, 13 * 60, Ok(())),
            used(
                "scheduled, used 19 h ago",
                Scheduled,
                19 * 60,
                Err(RecentlyRefreshed),
            ),
            used("scheduled, used 20 h ago", Scheduled, 20 * 60, Ok(())),
            used(
                "recovery, used 30 min ago",
                Recovery,
                30,
                Err(RecentlyRefreshed),
            ),
            used("recovery, used 61 min ago", Recovery, 61, Ok(())),
            used(
                "retry, used 59 min ago",
                TransientRetry,
                59,
                Err(RecentlyRefreshed),
            ),
            used("retry, used 2 h ago", TransientRetry, 120, Ok(())),
            used(
                "lastUsed in the future",
                Recovery,
                -5,
                Err(RecentlyRefreshed),
            ),
            Case {
                last_used_min_ago: None,
                last_attempt_min_ago: None,
                ..case("never used, never attempted", Login)
            },
            Case {
                last_attempt_min_ago: Some(59),
                expect: Err(RecentlyRefreshed),
                ..case("login, stale data, our attempt 59 min ago", Login)
            },
            Case {
                last_attempt_min_ago: Some(60),
                ..case("login, stale data, our attempt 60 min ago", Login)
            },
            Case {
                last_attempt_min_ago: Some(3 * 60),
                ..case(
                    "scheduled, our attempt 3 h ago but data still stale",
                    Scheduled,
                )
            },
        ]);
    }

    #[test]
    fn min_interval_is_the_floor_for_every_trigger() {
        let eager = RefreshLimits {
            login_stale_after: 5 * M,
            stale_after: 5 * M,
            min_interval: H,
            ..RefreshLimits::default()
        };
        let mut cases = Vec::new();
        for t in Trigger::ALL {
            cases.push(Case {
                limits: eager.clone(),
                last_used_min_ago: Some(30),
                expect: Err(RecentlyRefreshed),
                ..case("data 30 min old", t)
            });
            cases.push(Case {
                limits: eager.clone(),
                last_attempt_min_ago: Some(59),
                expect: Err(RecentlyRefreshed),
                ..case("our attempt 59 min ago", t)
            });
            cases.push(Case {
                limits: eager.clone(),
                last_used_min_ago: Some(60),
                last_attempt_min_ago: Some(60),
                ..case("both 60 min ago", t)
            });
        }
        check(&cases);
    }

    #[test]
    fn refresh_is_denied_during_an_institution_outage() {
        let at = |name, connector: Option<&'static str>, expect| Case {
            connector,
            expect,
            ..case(name, Recovery)
        };
        check(&[
            at(
                "partial outage",
                Some("partial-outage"),
                Err(InstitutionOutage),
            ),
            at("major outage", Some("major-outage"), Err(InstitutionOutage)),
            at("degraded still works", Some("degraded-performance"), Ok(())),
            at("maintenance still works", Some("under-maintenance"), Ok(())),
            at(
                "unknown connector status is read as down",
                Some("on-fire"),
                Err(InstitutionOutage),
            ),
            at("connector not listed", None, Ok(())),
            at(
                "no /connectors answer yet",
                Some("?"),
                Err(ConnectorStatusUnknown),
            ),
            Case {
                connector: Some("?"),
                ..case("a login while /connectors is unknown", Login)
            },
            Case {
                inferred: true,
                expect: Err(InstitutionOutage),
                ..at("inferred outage", Some("operational"), Ok(()))
            },
            Case {
                connector: Some("major-outage"),
                expect: Err(InstitutionOutage),
                ..case("a login during an outage", Login)
            },
        ]);
    }

    #[test]
    fn refresh_is_denied_when_the_daily_cap_is_reached() {
        let attempts = |name, method, trigger, attempts, expect| Case {
            method,
            attempts,
            expect,
            ..case(name, trigger)
        };
        check(&[
            attempts("automatic, 14 of 20", "open-banking", Recovery, 14, Ok(())),
            attempts(
                "automatic stops at 15",
                "open-banking",
                Recovery,
                15,
                Err(DailyCap),
            ),
            attempts(
                "scheduled stops at 15",
                "open-banking",
                Scheduled,
                15,
                Err(DailyCap),
            ),
            attempts(
                "retry stops at 15",
                "open-banking",
                TransientRetry,
                15,
                Err(DailyCap),
            ),
            attempts("login uses the reserve", "open-banking", Login, 15, Ok(())),
            attempts("login, 19 of 20", "open-banking", Login, 19, Ok(())),
            attempts(
                "login stops at 20",
                "open-banking",
                Login,
                20,
                Err(DailyCap),
            ),
            attempts(
                "manual uses the reserve",
                "open-banking",
                Manual,
                19,
                Ok(()),
            ),
            attempts(
                "manual stops at 20",
                "open-banking",
                Manual,
                20,
                Err(DailyCap),
            ),
            attempts(
                "openbanking spelling, automatic",
                "openbanking",
                Recovery,
                15,
                Err(DailyCap),
            ),
            attempts(
                "openbanking spelling, login",
                "openbanking",
                Login,
                19,
                Ok(()),
            ),
            attempts("web, 3 of 4", "web", Login, 3, Ok(())),
            attempts("web stops at 4", "web", Login, 4, Err(DailyCap)),
            attempts("web has no reserve", "web", Scheduled, 3, Ok(())),
            attempts(
                "web automatic stops at 4",
                "web",
                Recovery,
                4,
                Err(DailyCap),
            ),
            attempts(
                "an unknown method gets the web cap",
                "carrier-pigeon",
                Login,
                4,
                Err(DailyCap),
            ),
        ]);
    }

    #[test]
    fn refresh_is_denied_while_basiq_capped_the_connection() {
        let capped = |name, trigger, minutes, expect| Case {
            capped_until_min_from_now: Some(minutes),
            expect,
            ..case(name, trigger)
        };
        check(&[
            capped("login, capped for 3 h more", Login, 180, Err(DailyCap)),
            capped("manual, capped for 1 min more", Manual, 1, Err(DailyCap)),
            capped(
                "recovery, capped for 3 h more",
                Recovery,
                180,
                Err(DailyCap),
            ),
            capped("the cap ends now", Login, 0, Ok(())),
            capped("the cap ended", Recovery, -10, Ok(())),
        ]);
    }

    #[test]
    fn the_first_failing_gate_is_the_one_reported() {
        let failing_all = || Case {
            status: "invalid",
            health: Some(Health::ActionRequired),
            job_running: true,
            last_used_min_ago: Some(10),
            connector: Some("major-outage"),
            attempts: 20,
            ..case("every gate fails", Login)
        };
        // Fix one gate at a time, in order: each step must report the next gate.
        let mut c = failing_all();
        let fixes: [(Denial, Fix); 6] = [
            (ConnectionNotActive, |c| c.status = "active"),
            (NeedsUserAction, |c| c.health = Some(Health::Stale)),
            (JobInProgress, |c| c.job_running = false),
            (RecentlyRefreshed, |c| c.last_used_min_ago = Some(13 * 60)),
            (InstitutionOutage, |c| c.connector = Some("operational")),
            (DailyCap, |c| c.attempts = 0),
        ];
        for (expected, fix) in fixes {
            assert_eq!(run(&c), Err(expected), "before fixing {expected}");
            fix(&mut c);
        }
        assert_eq!(run(&c), Ok(()));

        check(&[
            Case {
                health: Some(Health::ActionRequired),
                attempts: 20,
                expect: Err(NeedsUserAction),
                ..case("gates 2 and 6 report gate 2", Login)
            },
            Case {
                status: "pending",
                health: Some(Health::ActionRequired),
                expect: Err(ConnectionNotActive),
                ..case("gates 1 and 2 report gate 1", Login)
            },
            Case {
                job_running: true,
                last_attempt_min_ago: Some(1),
                expect: Err(JobInProgress),
                ..case("gates 3 and 4 report gate 3", Recovery)
            },
            Case {
                last_attempt_min_ago: Some(1),
                inferred: true,
                expect: Err(RecentlyRefreshed),
                ..case("gates 4 and 5 report gate 4", Recovery)
            },
            Case {
                connector: Some("partial-outage"),
                capped_until_min_from_now: Some(60),
                expect: Err(InstitutionOutage),
                ..case("gates 5 and 6 report gate 5", Recovery)
            },
        ]);
    }

    #[test]
    fn caps_depend_on_the_method_and_whether_someone_is_waiting() {
        let limits = RefreshLimits::default();
        let cases = [
            ("open-banking", Login, 20),
            ("open-banking", Manual, 20),
            ("open-banking", Recovery, 15),
            ("open-banking", TransientRetry, 15),
            ("open-banking", Scheduled, 15),
            ("openbanking", Login, 20),
            ("openbanking", Scheduled, 15),
            ("web", Login, 4),
            ("web", Scheduled, 4),
            ("csv", Login, 4),
        ];
        for (method, trigger, expected) in cases {
            assert_eq!(
                cap_for(&Method::parse(method), trigger, &limits),
                expected,
                "{method} {trigger}"
            );
        }
        let greedy_reserve = RefreshLimits {
            reserved_for_login: 30,
            ..RefreshLimits::default()
        };
        assert_eq!(cap_for(&Method::OpenBanking, Recovery, &greedy_reserve), 0);
    }

    #[test]
    fn not_before_says_when_the_recently_refreshed_gate_opens() {
        let status = ConnectionStatus::Active;
        let method = Method::Web;
        let facts = RefreshFacts {
            status: &status,
            method: &method,
            health: None,
            job_running: false,
            needs_user_present: false,
            last_used: Some(ago(10)),
            newest_job_at: None,
            newest_success_at: None,
            incident_since: None,
            last_attempt: Some(ago(10)),
            connector: &ConnectorView::Unlisted,
            outage_inferred: false,
            maintenance: &[],
            attempts_last_24h: 0,
            basiq_capped_until: None,
            now: now(),
        };
        let limits = RefreshLimits::default();
        assert_eq!(
            not_before(TransientRetry, &facts, &limits),
            Some(ago(10 - 60))
        );
        assert_eq!(not_before(Login, &facts, &limits), Some(ago(10 - 12 * 60)));
        assert_eq!(
            not_before(Scheduled, &facts, &limits),
            Some(ago(10 - 20 * 60))
        );
        let old = RefreshFacts {
            last_used: Some(ago(25 * 60)),
            newest_success_at: None,
            incident_since: None,
            last_attempt: None,
            ..facts
        };
        assert_eq!(not_before(Scheduled, &old, &limits), None);
    }

    fn window(from_min: i64, until_min: i64) -> Window {
        Window {
            starts_at: ago(-from_min),
            ends_at: ago(-until_min),
            partial: false,
        }
    }

    #[test]
    fn no_refresh_goes_inside_a_maintenance_window_the_bank_announced() {
        for trigger in [Scheduled, Recovery, TransientRetry, Login] {
            let inside = Case {
                maintenance: vec![window(-30, 90)],
                expect: Err(ScheduledOutage),
                ..case("inside an announced window", trigger)
            };
            assert_eq!(run(&inside), inside.expect, "{trigger:?}");
        }
        // Six hours ahead, or over: nothing stops a refresh now.
        for w in [window(6 * 60, 8 * 60), window(-120, -60)] {
            let c = Case {
                maintenance: vec![w],
                ..case("a window not now", Scheduled)
            };
            assert_eq!(run(&c), Ok(()), "{w:?}");
        }
        // Its end is its own: the refresh at the minute it ends may go.
        let ended = Case {
            maintenance: vec![window(-60, 0)],
            ..case("the window ends now", Scheduled)
        };
        assert_eq!(run(&ended), Ok(()));
    }

    #[test]
    fn the_bank_saying_itself_that_it_is_down_denies_like_basiq_saying_so() {
        let c = case("the CDR witness says down", Scheduled);
        let status = ConnectionStatus::parse(c.status);
        let method = Method::parse(c.method);
        for basiq in [None, Some(crate::domain::ConnectorStatus::Operational)] {
            let view = ConnectorView::Witnessed { basiq };
            let facts = RefreshFacts {
                status: &status,
                method: &method,
                health: None,
                job_running: false,
                needs_user_present: false,
                last_used: Some(ago(25 * 60)),
                newest_job_at: None,
                newest_success_at: None,
                incident_since: None,
                last_attempt: None,
                connector: &view,
                outage_inferred: false,
                maintenance: &[],
                attempts_last_24h: 0,
                basiq_capped_until: None,
                now: now(),
            };
            let daily = RefreshLimits {
                mode: RefreshMode::Daily,
                ..RefreshLimits::default()
            };
            assert_eq!(decide(Scheduled, &facts, &daily), Err(InstitutionOutage));
            assert_eq!(decide(Login, &facts, &daily), Err(InstitutionOutage));
        }
    }

    #[test]
    fn modes_and_reasons_have_kebab_case_names() {
        for mode in RefreshMode::ALL {
            assert_eq!(mode.as_str().parse::<RefreshMode>(), Ok(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
        }
        assert_eq!(
            "weekly".parse::<RefreshMode>(),
            Err(UnknownRefreshMode("weekly".into()))
        );
        assert_eq!(RefreshMode::default(), RefreshMode::SmartCache);
        let codes: Vec<&str> = Denial::ALL.into_iter().map(Denial::as_str).collect();
        assert_eq!(
            codes,
            [
                "refresh-off",
                "not-scheduled-in-mode",
                "connection-not-active",
                "needs-user-action",
                "needs-user-present",
                "unknown-failure",
                "job-in-progress",
                "not-needed",
                "recently-refreshed",
                "institution-outage",
                "scheduled-outage",
                "connector-status-unknown",
                "daily-cap",
                "rejected-by-basiq",
                "request-failed",
            ]
        );
        let triggers: Vec<&str> = Trigger::ALL.into_iter().map(Trigger::as_str).collect();
        assert_eq!(
            triggers,
            [
                "login",
                "manual",
                "recovery",
                "transient-retry",
                "scheduled"
            ]
        );
        assert!(Login.is_attended() && Manual.is_attended());
        assert!(
            !Recovery.is_attended() && !TransientRetry.is_attended() && !Scheduled.is_attended()
        );
    }

    /// Rule 1: an MFA connection is refreshed only with the user present.
    #[test]
    fn an_mfa_connection_is_never_refreshed_without_the_user_present() {
        let mut cases: Vec<Case> = [Recovery, TransientRetry, Scheduled]
            .into_iter()
            .map(|t| Case {
                mfa: true,
                expect: Err(NeedsUserPresent),
                ..case(t.as_str(), t)
            })
            .collect();
        cases.extend([Login, Manual].into_iter().map(|t| Case {
            mfa: true,
            ..case(t.as_str(), t)
        }));
        check(&cases);
    }

    /// Rule 2: a failure nobody can read is never retried automatically.
    #[test]
    fn an_unreadable_failure_is_never_refreshed_automatically() {
        let mut cases: Vec<Case> = [Recovery, TransientRetry, Scheduled]
            .into_iter()
            .map(|t| Case {
                health: Some(Health::Unknown),
                expect: Err(UnknownFailure),
                ..case(t.as_str(), t)
            })
            .collect();
        cases.push(Case {
            health: Some(Health::Unknown),
            ..case("the user at login may try", Login)
        });
        check(&cases);
    }

    /// Rule 5: a job from any origin counts as a refresh.
    #[test]
    fn recently_refreshed_sees_jobs_of_every_origin() {
        check(&[
            Case {
                last_used_min_ago: Some(48 * 60),
                job_min_ago: Some(30),
                expect: Err(RecentlyRefreshed),
                ..case("the partner's app refreshed 30 min ago", Recovery)
            },
            Case {
                last_used_min_ago: None,
                last_attempt_min_ago: None,
                job_min_ago: Some(2 * 60),
                expect: Err(RecentlyRefreshed),
                ..case("a job 2 h ago, no lastUsed", Login)
            },
            Case {
                job_min_ago: Some(13 * 60),
                ..case("a job 13 h ago", Login)
            },
        ]);
    }

    /// A recovery or a retry whose incident a success since answered is not needed, before
    /// the recency floor is even asked (a floor would only postpone it).
    #[test]
    fn a_success_since_the_incident_makes_a_recovery_or_a_retry_not_needed() {
        let answered = |name, trigger| Case {
            incident_min_ago: Some(30),
            success_min_ago: Some(10),
            job_min_ago: Some(10),
            last_used_min_ago: Some(9),
            health: Some(Health::Healthy),
            ..case(name, trigger)
        };
        check(&[
            Case {
                expect: Err(NotNeeded),
                ..answered("recovery after Basiq's own success", Recovery)
            },
            Case {
                expect: Err(NotNeeded),
                ..answered("retry after a success", TransientRetry)
            },
            Case {
                expect: Err(RecentlyRefreshed),
                ..answered("a login is not owed for an incident", Login)
            },
            Case {
                success_min_ago: Some(40),
                job_min_ago: Some(40),
                last_used_min_ago: Some(24 * 60),
                expect: Err(RecentlyRefreshed),
                ..answered("a success before the incident answers nothing", Recovery)
            },
        ]);
    }
}
