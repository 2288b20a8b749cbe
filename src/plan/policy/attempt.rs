//! What a refresh attempt came to, and what follows from how it ended (pure): the decision
//! ([`RefreshDecision`]), how a sent request ended ([`Sent`]), the stop Basiq's own cap
//! imposes, the denial a rejected request means, and how long a refresh owed but denied
//! stays owed.

use chrono::{DateTime, Duration, Utc};

use super::gates::{CAP_WINDOW, DecisionKind, Denial};
use crate::domain::{ConnectionStatus, JobId};

/// What became of one refresh request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshDecision {
    /// Sent (the job Basiq runs), or allowed by a dry run (no job).
    Refreshed(Option<JobId>),
    /// A gate said no; `reopens`: when it could go, if the gate knows (the recency floor,
    /// the cap).
    Denied {
        denial: Denial,
        reopens: Option<DateTime<Utc>>,
    },
    /// The pace did not allow it within `max_wait`: it stays owed for a later tick.
    Deferred,
}

impl RefreshDecision {
    pub fn denied(denial: Denial) -> Self {
        Self::Denied {
            denial,
            reopens: None,
        }
    }

    pub fn kind(&self) -> DecisionKind {
        match self {
            Self::Refreshed(_) => DecisionKind::Refreshed,
            Self::Denied { .. } => DecisionKind::Denied,
            Self::Deferred => DecisionKind::Deferred,
        }
    }

    /// The reason code, as stored, shown and counted: the denial's, or `deferred`.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Refreshed(_) => None,
            Self::Denied { denial, .. } => Some(denial.as_str()),
            Self::Deferred => Some(DecisionKind::Deferred.as_str()),
        }
    }

    pub fn job(&self) -> Option<&JobId> {
        match self {
            Self::Refreshed(job) => job.as_ref(),
            _ => None,
        }
    }
}

/// How a sent refresh request ended, as stored on its attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Basiq created a job.
    Created,
    /// Basiq answered with a job already running.
    Existing,
    /// The request timed out, and the job it made was found by a lookup.
    FoundAfterTimeout,
    /// Basiq's own cap (429 or 403): it counts the partner app's refreshes too.
    CappedByBasiq,
    /// Refused (a 4xx other than the cap).
    Rejected,
    /// Failed (network, 5xx): nothing is known to have been sent.
    Failed,
}

impl Sent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Existing => "existing",
            Self::FoundAfterTimeout => "found-after-timeout",
            Self::CappedByBasiq => "capped-by-basiq",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }

    /// A request that failed with `status` (`rejected`: Basiq refused it with a 4xx).
    pub fn failure(status: Option<u16>, rejected: bool) -> Self {
        if matches!(status, Some(429 | 403)) {
            Self::CappedByBasiq
        } else if rejected {
            Self::Rejected
        } else {
            Self::Failed
        }
    }
}

/// The durable gate, asked inside the reservation's transaction: with `used` attempts of
/// the connection in the cap's window and the newest at `last`, another at `now` is denied
/// within `min_interval` of the newest (`recently-refreshed`, unless the floor is zero) or
/// at `cap` (`daily-cap`).
pub fn reservation(
    cap: u32,
    min_interval: std::time::Duration,
    used: u32,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), Denial> {
    let floor = Duration::from_std(min_interval).unwrap_or(Duration::MAX);
    let recent = last.is_some_and(|l| now.checked_sub_signed(floor).is_none_or(|edge| l > edge));
    if recent && !min_interval.is_zero() {
        return Err(Denial::RecentlyRefreshed);
    }
    if used >= cap {
        return Err(Denial::DailyCap);
    }
    Ok(())
}

/// Capped by Basiq at `now`: no attempt until our own window has room again (its oldest
/// attempt leaves it), and at least an hour.
pub fn capped_until(oldest_attempt: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
    oldest_attempt
        .map(|o| o + CAP_WINDOW)
        .unwrap_or(now)
        .max(now + Duration::hours(1))
}

/// The denial a request Basiq rejected for a reason not the user's means: the connection
/// is not active (by its status or Basiq's code), or Basiq refused it.
pub fn rejection_denial(status: &ConnectionStatus, code: &str) -> Denial {
    if *status != ConnectionStatus::Active || code.contains("not-active") {
        Denial::ConnectionNotActive
    } else {
        Denial::RejectedByBasiq
    }
}

/// A refresh owed but denied by a gate that opens by itself (the recency floor, the cap, a
/// status not known yet) stays owed until then; the other gates end it (the next verdict
/// decides again).
pub fn owed_after(
    denial: Denial,
    reopens: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    match denial {
        Denial::RecentlyRefreshed | Denial::DailyCap => reopens.or(Some(now + Duration::hours(1))),
        Denial::ConnectorStatusUnknown => Some(now + Duration::minutes(5)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_reservation_denies_within_the_floor_then_at_the_cap() {
        let now = at("2026-12-01T12:00:00Z");
        let hour = std::time::Duration::from_secs(3600);
        let recent = Some(now - Duration::minutes(30));
        let old = Some(now - Duration::hours(2));
        assert_eq!(reservation(20, hour, 0, None, now), Ok(()));
        assert_eq!(
            reservation(20, hour, 3, recent, now),
            Err(Denial::RecentlyRefreshed)
        );
        assert_eq!(reservation(20, hour, 3, old, now), Ok(()));
        assert_eq!(reservation(3, hour, 3, old, now), Err(Denial::DailyCap));
        // No floor: only the cap.
        let none = std::time::Duration::ZERO;
        assert_eq!(reservation(20, none, 3, Some(now), now), Ok(()));
        assert_eq!(
            reservation(3, none, 3, Some(now), now),
            Err(Denial::DailyCap)
        );
    }

    #[test]
    fn a_cap_status_is_basiq_s_cap_whatever_else() {
        assert_eq!(Sent::failure(Some(429), true), Sent::CappedByBasiq);
        assert_eq!(Sent::failure(Some(403), false), Sent::CappedByBasiq);
        assert_eq!(Sent::failure(Some(400), true), Sent::Rejected);
        assert_eq!(Sent::failure(Some(503), false), Sent::Failed);
        assert_eq!(Sent::failure(None, false), Sent::Failed);
    }

    #[test]
    fn basiq_s_cap_holds_until_the_window_has_room_and_at_least_an_hour() {
        let now = at("2026-12-01T12:00:00Z");
        assert_eq!(capped_until(None, now), now + Duration::hours(1));
        let oldest = at("2026-11-30T20:00:00Z");
        assert_eq!(capped_until(Some(oldest), now), at("2026-12-01T20:00:00Z"));
        let old = at("2026-11-30T12:30:00Z");
        assert_eq!(capped_until(Some(old), now), now + Duration::hours(1));
    }

    #[test]
    fn a_rejection_is_not_active_by_status_or_code() {
        let active = ConnectionStatus::Active;
        assert_eq!(
            rejection_denial(&active, "bad-request"),
            Denial::RejectedByBasiq
        );
        assert_eq!(
            rejection_denial(&active, "connection-not-active"),
            Denial::ConnectionNotActive
        );
        assert_eq!(
            rejection_denial(&ConnectionStatus::Invalid, ""),
            Denial::ConnectionNotActive
        );
    }

    #[test]
    fn only_gates_that_open_by_themselves_keep_a_refresh_owed() {
        let now = at("2026-12-01T12:00:00Z");
        let later = now + Duration::minutes(17);
        assert_eq!(
            owed_after(Denial::RecentlyRefreshed, Some(later), now),
            Some(later)
        );
        assert_eq!(
            owed_after(Denial::DailyCap, None, now),
            Some(now + Duration::hours(1))
        );
        assert_eq!(
            owed_after(Denial::ConnectorStatusUnknown, None, now),
            Some(now + Duration::minutes(5))
        );
        assert_eq!(owed_after(Denial::NeedsUserAction, Some(later), now), None);
        assert_eq!(owed_after(Denial::InstitutionOutage, None, now), None);
    }
}
