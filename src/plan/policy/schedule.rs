//! When the daemon owes a refresh (pure): the one owner of the schedule.
//!
//! Four triggers put a refresh on the schedule: the user's login (not scheduled: it happens
//! when the partner's app asks), a daily slot in the unattended window (mode `daily`), the
//! end of an outage (recovery, spread over `recovery_window`), and a transient failure
//! (backoff with full jitter, at most `transient_max_retries` per incident). *Whether* a
//! refresh may go is [`super::decide`]; this module says *when* one is owed, and
//! [`upcoming`] puts both together for the `plan` dry run.
//!
//! Precedence: a recovery slot is never replaced by a transient retry (the spread is the
//! point of recovery); a recovery replaces a transient retry.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;

use super::gates::{Denial, RefreshFacts, RefreshLimits, RefreshMode, Trigger, decide, not_before};
use super::spread::transient_retry_delay;
use crate::plan::classify::{Health, Side};

/// What the sweep schedules by itself (none when `refresh.mode = "off"`).
#[derive(Clone, Debug)]
pub struct AutoRefresh {
    pub recovery_window: Duration,
    pub transient_retry_base: Duration,
    pub transient_max_retries: u32,
    /// The policy's floor: a retry scheduled earlier would only be denied.
    pub min_interval: Duration,
    /// The per-bank pace: an outage's recoveries are spread over a window it can keep.
    pub per_institution_per_minute: std::num::NonZeroU32,
}

/// A refresh the daemon owes: when, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Owed {
    pub at: DateTime<Utc>,
    pub trigger: Trigger,
    /// The incident it is for (an outage's end, a failed job's time): a job that succeeded
    /// after it makes the refresh not needed.
    #[serde(skip)]
    pub since: Option<DateTime<Utc>>,
}

impl Owed {
    /// A job that succeeded at `success` (its start) answers what this refresh was for.
    pub fn answered_by(&self, success: Option<DateTime<Utc>>) -> bool {
        self.since
            .zip(success)
            .is_some_and(|(since, success)| success >= since)
    }
}

/// What one connection's verdict says, for its schedule.
#[derive(Clone, Debug)]
pub struct Verdicted<'a> {
    pub health: Health,
    pub reason: Option<&'a str>,
    /// The newest job's id.
    pub newest_job: Option<&'a str>,
    /// The newest job's start (or end) when it failed: a retry's incident.
    pub failed_at: Option<DateTime<Utc>>,
    /// The newest job's start when it succeeded.
    pub succeeded_at: Option<DateTime<Utc>>,
    /// The times a refresh must wait `min_interval` after (Basiq's `lastUsed`, the newest
    /// job of any origin, our last attempt).
    pub floors: [Option<DateTime<Utc>>; 3],
}

/// One connection's transient-failure incident.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incident {
    /// Retries scheduled in this incident.
    pub retries: u32,
    /// The failed job the last retry decision was made for: the same failure seen again
    /// (the next sweep, a followed job) is not a new failure.
    pub job_id: Option<String>,
}

/// The schedule of one connection after its newest state is classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduled {
    pub owed: Option<Owed>,
    pub incident: Incident,
    /// A retry was newly scheduled (for the log).
    pub new_retry: Option<(u32, DateTime<Utc>)>,
}

/// The schedule after a verdict. A refresh owed for an incident that a success since has
/// answered is dropped, whatever asked for it.
pub fn after_verdict(
    auto: &AutoRefresh,
    now: DateTime<Utc>,
    v: &Verdicted<'_>,
    owed: Option<Owed>,
    incident: Incident,
    rng: &mut impl Rng,
) -> Scheduled {
    let owed = owed.filter(|o| !o.answered_by(v.succeeded_at));
    let keep = |incident| Scheduled {
        owed,
        incident,
        new_retry: None,
    };
    match v.health {
        // The retry's own job is running, or the bank is down: the incident goes on.
        Health::InProgress | Health::InstitutionOutage => keep(incident),
        Health::TransientFailure => transient(auto, now, v, owed, incident, rng),
        // Healthy, stale, pending, action required, unknown: the incident is over.
        _ => Scheduled {
            owed: owed.filter(|o| o.trigger != Trigger::TransientRetry),
            incident: Incident::default(),
            new_retry: None,
        },
    }
}

/// A transient failure: a retry, unless one is decided for this failed job already, a
/// recovery is owed, the retries are spent, or Basiq's own cap is the cause.
fn transient(
    auto: &AutoRefresh,
    now: DateTime<Utc>,
    v: &Verdicted<'_>,
    owed: Option<Owed>,
    incident: Incident,
    rng: &mut impl Rng,
) -> Scheduled {
    let keep = |incident| Scheduled {
        owed,
        incident,
        new_retry: None,
    };
    // Basiq's own cap: waiting for the rolling window is the only remedy.
    if v.reason.is_some_and(|r| Side::of(r) == Side::Cap) {
        return keep(incident);
    }
    if v.newest_job.is_some() && incident.job_id.as_deref() == v.newest_job {
        return keep(incident);
    }
    let seen = Incident {
        retries: incident.retries,
        job_id: v.newest_job.map(str::to_owned),
    };
    if owed.is_some_and(|o| o.trigger == Trigger::Recovery) {
        return keep(seen);
    }
    let attempt = incident.retries.saturating_add(1);
    let Some(delay) = transient_retry_delay(
        attempt,
        auto.transient_retry_base,
        auto.transient_max_retries,
        rng,
    ) else {
        return keep(seen);
    };
    let at = floored(
        now + chrono::Duration::from_std(delay).unwrap_or_default(),
        &v.floors,
        auto.min_interval,
    );
    Scheduled {
        owed: Some(Owed {
            at,
            trigger: Trigger::TransientRetry,
            since: v.failed_at.or(Some(now)),
        }),
        incident: Incident {
            retries: attempt,
            job_id: v.newest_job.map(str::to_owned),
        },
        new_retry: Some((attempt, at)),
    }
}

/// `at`, or later when a floor plus `min_interval` is later: a refresh planned sooner
/// would only be denied.
pub fn floored(
    at: DateTime<Utc>,
    floors: &[Option<DateTime<Utc>>],
    min_interval: Duration,
) -> DateTime<Utc> {
    let floor = chrono::Duration::from_std(min_interval).unwrap_or_default();
    floors
        .iter()
        .flatten()
        .filter_map(|t| t.checked_add_signed(floor))
        .fold(at, DateTime::max)
}

/// The window an outage's `n` recoveries are spread over: `recovery_window`, or, when the
/// per-bank pace cannot send them all within it, the shortest window the pace allows (with a
/// quarter to spare, so jittered neighbours rarely wait for each other). The flag: stretched.
pub fn recovery_window(n: u32, auto: &AutoRefresh) -> (Duration, bool) {
    let per_minute = u64::from(auto.per_institution_per_minute.get());
    let needed_ms = u64::from(n).saturating_mul(60_000).div_ceil(per_minute);
    let needed = Duration::from_millis(needed_ms.saturating_mul(5) / 4);
    if needed > auto.recovery_window {
        (needed, true)
    } else {
        (auto.recovery_window, false)
    }
}

/// The recovery slot of the `k`-th of `n` connections an outage held (from 0): uniform with
/// jitter in the k-th n-th of the window after `ended`. Indexed, so batches of any size
/// together cover the whole window, never its first minutes only.
pub fn recovery_slot(
    k: u32,
    n: u32,
    window: Duration,
    ended: DateTime<Utc>,
    rng: &mut impl Rng,
) -> DateTime<Utc> {
    let n = n.max(k.saturating_add(1));
    let w = window.as_nanos();
    let low = w * u128::from(k) / u128::from(n);
    let high = w * (u128::from(k) + 1) / u128::from(n);
    let at = if high > low {
        rng.random_range(low..high)
    } else {
        low
    };
    ended + chrono::Duration::nanoseconds(i64::try_from(at).unwrap_or(i64::MAX))
}

/// A recovery replaces anything but an earlier recovery; a retry replaces nothing but
/// another retry.
pub fn merge(current: Option<Owed>, new: Owed) -> Owed {
    match current {
        Some(c) if c.trigger == Trigger::Recovery && new.trigger != Trigger::Recovery => c,
        _ => new,
    }
}

/// What the next 24 hours hold for one connection, as `plan` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Upcoming {
    Refresh {
        refresh_at: DateTime<Utc>,
        trigger: Trigger,
    },
    Denied {
        denied: Denial,
    },
}

/// The dry run of one connection over `horizon`: its owed refresh (or daily slot), pushed
/// past the recency floor and the cap when they open in time, or the reason it will not go.
pub fn upcoming(
    facts: &RefreshFacts<'_>,
    owed: Option<Owed>,
    daily_slot: Option<DateTime<Utc>>,
    oldest_attempt: Option<DateTime<Utc>>,
    limits: &RefreshLimits,
    horizon: chrono::Duration,
) -> Upcoming {
    let end = facts.now + horizon;
    let candidates = refresh_candidates(owed, daily_slot, limits);
    if candidates.is_empty() {
        return Upcoming::Denied {
            denied: nothing_owed(facts, limits),
        };
    }
    let mut denial = None;
    for candidate in candidates {
        match first_slot(&candidate, facts, oldest_attempt, limits, end) {
            Ok(at) => {
                return Upcoming::Refresh {
                    refresh_at: at,
                    trigger: candidate.trigger,
                };
            }
            Err(Some(d)) => {
                denial.get_or_insert(d);
            }
            Err(None) => {}
        }
    }
    Upcoming::Denied {
        denied: denial.unwrap_or(Denial::NotScheduledInMode),
    }
}

/// The refreshes a connection may make, earliest first: its owed one, and its daily slot in
/// the daily mode.
fn refresh_candidates(
    owed: Option<Owed>,
    daily_slot: Option<DateTime<Utc>>,
    limits: &RefreshLimits,
) -> Vec<Owed> {
    let mut candidates: Vec<Owed> = owed.into_iter().collect();
    if limits.mode == RefreshMode::Daily
        && let Some(at) = daily_slot
    {
        candidates.push(Owed {
            at,
            trigger: Trigger::Scheduled,
            since: None,
        });
    }
    candidates.sort_by_key(|o| o.at);
    candidates
}

/// Why nothing goes when nothing is owed: a gate that would refuse any unattended refresh
/// explains more than the mode does (a connection waiting for its user says so).
fn nothing_owed(facts: &RefreshFacts<'_>, limits: &RefreshLimits) -> Denial {
    let any_mode = RefreshLimits {
        mode: RefreshMode::Daily,
        ..limits.clone()
    };
    let gate = decide(Trigger::Recovery, facts, &any_mode)
        .err()
        .filter(|d| {
            !matches!(
                d,
                Denial::RecentlyRefreshed | Denial::DailyCap | Denial::JobInProgress
            )
        });
    gate.unwrap_or(match limits.mode {
        RefreshMode::Off => Denial::RefreshOff,
        _ => Denial::NotScheduledInMode,
    })
}

/// When `candidate` may go by `end`, pushed past the recency floor and the cap; else the
/// reason it may not (none when it is allowed only after `end`, or still waits after the
/// passes).
fn first_slot(
    candidate: &Owed,
    facts: &RefreshFacts<'_>,
    oldest_attempt: Option<DateTime<Utc>>,
    limits: &RefreshLimits,
    end: DateTime<Utc>,
) -> Result<DateTime<Utc>, Option<Denial>> {
    let mut at = candidate.at.max(facts.now);
    // The recency floor may move the time, then an announced maintenance window, then the
    // cap (and each may move it into the next).
    for _ in 0..6 {
        let facts_then = RefreshFacts {
            now: at,
            ..facts.clone()
        };
        let (denied, opens) = match decide(candidate.trigger, &facts_then, limits) {
            Ok(()) if at <= end => return Ok(at),
            Ok(()) => return Err(None),
            Err(Denial::RecentlyRefreshed) => (
                Denial::RecentlyRefreshed,
                not_before(candidate.trigger, &facts_then, limits),
            ),
            Err(Denial::DailyCap) => (Denial::DailyCap, cap_opens(facts, oldest_attempt, at)),
            // Past the end of the window the bank announced.
            Err(Denial::ScheduledOutage) => (
                Denial::ScheduledOutage,
                super::gates::maintenance_at(facts, at).map(|w| w.ends_at),
            ),
            Err(other) => return Err(Some(other)),
        };
        match opens {
            Some(t) if t <= end => at = t,
            _ => return Err(Some(denied)),
        }
    }
    Err(None)
}

/// When the cap next opens after `at`: Basiq's "capped until", or our oldest attempt in
/// the window leaving it.
fn cap_opens(
    facts: &RefreshFacts<'_>,
    oldest_attempt: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    [
        facts.basiq_capped_until,
        oldest_attempt.map(|o| o + crate::plan::policy::CAP_WINDOW),
    ]
    .into_iter()
    .flatten()
    .filter(|t| *t > at)
    .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn now() -> DateTime<Utc> {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn auto() -> AutoRefresh {
        AutoRefresh {
            recovery_window: Duration::from_secs(3600),
            transient_retry_base: super::super::TRANSIENT_RETRY_BASE,
            transient_max_retries: 2,
            min_interval: Duration::from_secs(3600),
            per_institution_per_minute: std::num::NonZeroU32::new(10).unwrap(),
        }
    }

    fn verdict<'a>(health: Health, reason: Option<&'a str>, job: Option<&'a str>) -> Verdicted<'a> {
        Verdicted {
            health,
            reason,
            newest_job: job,
            failed_at: None,
            succeeded_at: None,
            floors: [None; 3],
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn after(
        health: Health,
        job: Option<&str>,
        owed: Option<Owed>,
        incident: Incident,
    ) -> Scheduled {
        after_verdict(
            &auto(),
            now(),
            &verdict(health, Some("service-unavailable"), job),
            owed,
            incident,
            &mut rng(),
        )
    }

    /// Rule 8: retries are decided per failed job, bounded, and survive the retry's own job.
    #[test]
    fn transient_retries_are_bounded_and_survive_their_own_job_in_progress() {
        let first = after(
            Health::TransientFailure,
            Some("j1"),
            None,
            Incident::default(),
        );
        assert_eq!(first.incident.retries, 1);
        assert_eq!(first.owed.map(|o| o.trigger), Some(Trigger::TransientRetry));
        // The same failed job seen again decides nothing new.
        let again = after(
            Health::TransientFailure,
            Some("j1"),
            first.owed,
            first.incident.clone(),
        );
        assert_eq!(again.incident.retries, 1);
        assert!(again.new_retry.is_none());
        // The retry's own job in progress keeps the count.
        let running = after(Health::InProgress, Some("j2"), None, first.incident.clone());
        assert_eq!(running.incident.retries, 1);
        // The retry failed too: a second retry.
        let second = after(Health::TransientFailure, Some("j2"), None, running.incident);
        assert_eq!(second.incident.retries, 2);
        assert!(second.owed.is_some());
        // And no third.
        let third = after(Health::TransientFailure, Some("j3"), None, second.incident);
        assert_eq!(third.incident.retries, 2);
        assert!(third.owed.is_none());
        // Success ends the incident.
        let healed = after(Health::Healthy, Some("j4"), first.owed, third.incident);
        assert_eq!(healed.incident, Incident::default());
        assert!(healed.owed.is_none());
    }

    /// Rule 7: a transient retry never replaces a recovery slot.
    #[test]
    fn a_transient_retry_never_replaces_a_recovery_slot() {
        let recovery = Owed {
            at: now() + chrono::Duration::minutes(50),
            trigger: Trigger::Recovery,
            since: None,
        };
        let s = after(
            Health::TransientFailure,
            Some("j1"),
            Some(recovery),
            Incident::default(),
        );
        assert_eq!(s.owed, Some(recovery));
        let retry = Owed {
            at: now() + chrono::Duration::minutes(5),
            trigger: Trigger::TransientRetry,
            since: None,
        };
        assert_eq!(merge(Some(recovery), retry), recovery);
        assert_eq!(merge(Some(retry), recovery), recovery);
    }

    /// Rule 3: Basiq's cap is waited out, never retried.
    #[test]
    fn too_many_requests_schedules_no_retry() {
        let s = after_verdict(
            &auto(),
            now(),
            &verdict(
                Health::TransientFailure,
                Some("too-many-requests"),
                Some("j1"),
            ),
            None,
            Incident::default(),
            &mut rng(),
        );
        assert!(s.owed.is_none());
    }

    #[test]
    fn retries_wait_for_the_recency_floor() {
        let used = now() - chrono::Duration::minutes(10);
        let s = after_verdict(
            &auto(),
            now(),
            &Verdicted {
                floors: [Some(used), None, None],
                ..verdict(
                    Health::TransientFailure,
                    Some("service-unavailable"),
                    Some("j1"),
                )
            },
            None,
            Incident::default(),
            &mut rng(),
        );
        assert!(s.owed.unwrap().at >= used + chrono::Duration::hours(1));
    }

    #[test]
    fn recovery_slots_cover_the_window() {
        let window = Duration::from_secs(3600);
        let mut r = rng();
        let slots: Vec<_> = (0..20)
            .map(|k| recovery_slot(k, 20, window, now(), &mut r))
            .collect();
        let mut gaps = vec![slots[0] - now()];
        gaps.extend(slots.windows(2).map(|w| w[1] - w[0]));
        let largest = gaps.into_iter().max().unwrap();
        assert!(largest <= chrono::Duration::seconds(3 * 3600 / 20));
        assert!(*slots.last().unwrap() - now() >= chrono::Duration::minutes(45));
    }

    /// A success since the incident answers the refresh owed for it, whatever its trigger.
    #[test]
    fn a_success_since_the_incident_drops_the_refresh_owed_for_it() {
        let ended = now() - chrono::Duration::minutes(20);
        let recovery = Owed {
            at: now() + chrono::Duration::minutes(5),
            trigger: Trigger::Recovery,
            since: Some(ended),
        };
        let healthy = |succeeded: DateTime<Utc>| Verdicted {
            succeeded_at: Some(succeeded),
            ..verdict(Health::Healthy, None, Some("j9"))
        };
        let after_end = after_verdict(
            &auto(),
            now(),
            &healthy(ended + chrono::Duration::minutes(1)),
            Some(recovery),
            Incident::default(),
            &mut rng(),
        );
        assert_eq!(
            after_end.owed, None,
            "Basiq's own refresh after the end answered it"
        );
        let before_end = after_verdict(
            &auto(),
            now(),
            &healthy(ended - chrono::Duration::minutes(1)),
            Some(recovery),
            Incident::default(),
            &mut rng(),
        );
        assert_eq!(
            before_end.owed,
            Some(recovery),
            "a success before the end says nothing"
        );
    }

    #[test]
    fn the_recovery_window_stretches_to_what_the_per_bank_pace_can_keep() {
        let a = auto();
        assert_eq!(recovery_window(100, &a), (a.recovery_window, false));
        // 1,000 at 10 a minute: 100 minutes, a quarter to spare.
        let (w, stretched) = recovery_window(1000, &a);
        assert!(stretched);
        assert_eq!(w, Duration::from_secs(125 * 60));
    }

    fn hours(h: i64) -> DateTime<Utc> {
        now() + chrono::Duration::hours(h)
    }

    /// The dry run of an active, stale open-banking connection in the daily mode whose slot
    /// is `slot` hours ahead, at a bank that announced `windows` (hours from now).
    fn daily_upcoming(slot: i64, windows: &[(i64, i64)]) -> Upcoming {
        let status = crate::domain::ConnectionStatus::Active;
        let method = crate::domain::Method::OpenBanking;
        let view = crate::plan::classify::ConnectorView::Unlisted;
        let maintenance: Vec<crate::plan::Window> = windows
            .iter()
            .map(|(from, until)| crate::plan::Window {
                starts_at: hours(*from),
                ends_at: hours(*until),
                partial: false,
            })
            .collect();
        let facts = RefreshFacts {
            status: &status,
            method: &method,
            health: None,
            job_running: false,
            needs_user_present: false,
            last_used: Some(hours(-30)),
            newest_job_at: None,
            newest_success_at: None,
            incident_since: None,
            last_attempt: None,
            connector: &view,
            outage_inferred: false,
            maintenance: &maintenance,
            attempts_last_24h: 0,
            basiq_capped_until: None,
            now: now(),
        };
        let limits = RefreshLimits {
            mode: RefreshMode::Daily,
            ..RefreshLimits::default()
        };
        upcoming(
            &facts,
            None,
            Some(hours(slot)),
            None,
            &limits,
            chrono::Duration::hours(24),
        )
    }

    #[test]
    fn a_daily_slot_inside_announced_maintenance_moves_past_its_end_or_is_denied() {
        assert_eq!(
            daily_upcoming(7, &[]),
            Upcoming::Refresh {
                refresh_at: hours(7),
                trigger: Trigger::Scheduled
            }
        );
        // Six hours ahead, over the slot: after its end.
        assert_eq!(
            daily_upcoming(7, &[(6, 9)]),
            Upcoming::Refresh {
                refresh_at: hours(9),
                trigger: Trigger::Scheduled
            }
        );
        // Two windows back to back: past both.
        assert_eq!(
            daily_upcoming(7, &[(6, 9), (9, 10)]),
            Upcoming::Refresh {
                refresh_at: hours(10),
                trigger: Trigger::Scheduled
            }
        );
        // A window past the horizon's end: not in the next 24 hours.
        assert_eq!(
            daily_upcoming(7, &[(6, 30)]),
            Upcoming::Denied {
                denied: Denial::ScheduledOutage
            }
        );
        // A window that does not cover the slot changes nothing.
        assert_eq!(
            daily_upcoming(7, &[(8, 9)]),
            Upcoming::Refresh {
                refresh_at: hours(7),
                trigger: Trigger::Scheduled
            }
        );
    }
}
