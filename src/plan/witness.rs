//! The CDR witness, planned: what one read of a data holder's status or planned outages
//! changes (the `cdr` outages it opens or closes, the maintenance windows it announces or
//! withdraws, the reclassifications and notices they cause), and when the brand is read
//! next. Pure: the poller fetches, the store writes the plan.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::domain::cdr::{BrandStatus, Maintenance};
use crate::domain::{ConnectorKey, Method};

use super::Requeue;

/// What the store knows of one polled brand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolledBrand {
    pub brand_id: String,
    pub public_base_uri: Option<String>,
    /// The institutions mapped to it (normally one).
    pub institutions: Vec<String>,
    /// The last status read (`OK`, `UNAVAILABLE`, ...), and when.
    pub status: Option<String>,
    pub status_checked_at: Option<DateTime<Utc>>,
    /// Failed reads since the last good one.
    pub failures: u32,
    pub status_due_at: DateTime<Utc>,
    pub outages_due_at: DateTime<Utc>,
}

/// The connector a data holder's words are about: its institution's open banking.
pub fn cdr_key(institution_id: &str) -> ConnectorKey {
    ConnectorKey::new(institution_id, &Method::OpenBanking)
}

/// A `cdr` outage to open: its institution, what the data holder said, and the earliest it
/// may have begun (the last read that saw the bank up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub key: ConnectorKey,
    pub status: String,
    pub explanation: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

/// What one status read changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusPlan {
    pub brand_id: String,
    /// The read, or why it failed (`None` status: the witness says nothing).
    pub read: Result<BrandStatus, String>,
    pub opened: Vec<Opened>,
    /// `cdr` outages that end now.
    pub closed: Vec<ConnectorKey>,
    /// Connectors classified again (an ended outage's with its recoveries).
    pub requeue: Vec<Requeue>,
    pub next_due: DateTime<Utc>,
}

/// Plans one status read of `brand` at `now`. `open`: the institutions with a `cdr` outage
/// open. A status that says down opens one for each institution of the brand that has none;
/// `OK` closes them (the outage ended after the last read that saw it down); a status nobody
/// knows, or a read that failed, changes nothing.
pub fn plan_status(
    brand: &PolledBrand,
    open: &HashSet<String>,
    read: Result<BrandStatus, String>,
    now: DateTime<Utc>,
    next_due: DateTime<Utc>,
) -> StatusPlan {
    let mut plan = StatusPlan {
        brand_id: brand.brand_id.clone(),
        read,
        opened: Vec::new(),
        closed: Vec::new(),
        requeue: Vec::new(),
        next_due,
    };
    let Ok(status) = &plan.read else {
        return plan;
    };
    // The last read that saw it up, when the one before this was good and said OK.
    let seen_up = brand
        .status_checked_at
        .filter(|_| brand.failures == 0 && brand.status.as_deref() == Some("OK"));
    match status.status.is_down() {
        Some(true) => {
            for institution in brand.institutions.iter().filter(|i| !open.contains(*i)) {
                let key = cdr_key(institution);
                plan.opened.push(Opened {
                    key: key.clone(),
                    status: status.status.as_str().to_owned(),
                    explanation: status.explanation.clone(),
                    since: seen_up,
                });
                plan.requeue.push(Requeue {
                    key,
                    ended_after: None,
                });
            }
        }
        Some(false) => {
            for institution in brand.institutions.iter().filter(|i| open.contains(*i)) {
                let key = cdr_key(institution);
                plan.closed.push(key.clone());
                plan.requeue.push(Requeue {
                    key,
                    // Down at the last good read, if there was one since it opened.
                    ended_after: Some(brand.status_checked_at.unwrap_or(now).min(now)),
                });
            }
        }
        None => {}
    }
    plan
}

/// A maintenance window as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWindow {
    pub id: i64,
    pub institution_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// A window first seen: stored, and told to the partner once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWindow {
    pub key: ConnectorKey,
    pub brand_id: String,
    pub window: Maintenance,
}

/// What one read of a brand's planned outages changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowsPlan {
    pub brand_id: String,
    pub read: Result<usize, String>,
    pub new: Vec<NewWindow>,
    /// Windows the data holder no longer lists before they began (ids).
    pub withdrawn: Vec<i64>,
    pub next_due: DateTime<Utc>,
}

/// Plans one read of `brand`'s planned outages at `now` against the windows stored for its
/// institutions that have not ended (`stored`). A window that ends in the past is history,
/// not news; one no longer listed that has not begun is withdrawn; a read that failed
/// changes nothing.
pub fn plan_windows(
    brand: &PolledBrand,
    stored: &[StoredWindow],
    read: Result<Vec<Maintenance>, String>,
    now: DateTime<Utc>,
    next_due: DateTime<Utc>,
) -> WindowsPlan {
    let mut plan = WindowsPlan {
        brand_id: brand.brand_id.clone(),
        read: read.as_ref().map(Vec::len).map_err(Clone::clone),
        new: Vec::new(),
        withdrawn: Vec::new(),
        next_due,
    };
    let Ok(listed) = read else {
        return plan;
    };
    let ahead: Vec<&Maintenance> = listed.iter().filter(|m| m.ends_at > now).collect();
    for institution in &brand.institutions {
        let mine: Vec<&StoredWindow> = stored
            .iter()
            .filter(|w| &w.institution_id == institution)
            .collect();
        for m in &ahead {
            let known = mine
                .iter()
                .any(|w| w.starts_at == m.starts_at && w.ends_at == m.ends_at);
            if !known {
                plan.new.push(NewWindow {
                    key: cdr_key(institution),
                    brand_id: brand.brand_id.clone(),
                    window: (*m).clone(),
                });
            }
        }
        for w in mine.iter().filter(|w| w.starts_at > now) {
            let listed = ahead
                .iter()
                .any(|m| w.starts_at == m.starts_at && w.ends_at == m.ends_at);
            if !listed {
                plan.withdrawn.push(w.id);
            }
        }
    }
    plan
}

/// When a brand is read next: `every` after `now`, plus a delay of up to a tenth of it that
/// is the brand's own (the same every time), so that brands spread over the interval and
/// no brand is read twice within it.
pub fn next_read(brand_id: &str, now: DateTime<Utc>, every: std::time::Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(every + jitter(brand_id, every / 10))
        .unwrap_or(chrono::Duration::MAX)
}

/// A brand's first read: within the first `spread` (at most a minute) of it being mapped.
pub fn first_read(
    brand_id: &str,
    now: DateTime<Utc>,
    spread: std::time::Duration,
) -> DateTime<Utc> {
    let spread = spread.min(std::time::Duration::from_secs(60));
    now + chrono::Duration::from_std(jitter(brand_id, spread)).unwrap_or_default()
}

/// A stable delay in `[0, span)` for a brand (FNV-1a of its id).
fn jitter(brand_id: &str, span: std::time::Duration) -> std::time::Duration {
    let hash = brand_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let millis = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
    std::time::Duration::from_millis(if millis == 0 { 0 } else { hash % millis })
}

/// The Register's next read after `failures` failed in a row: a minute doubling, at most
/// the interval (and the interval after a good read).
pub fn register_next(
    now: DateTime<Utc>,
    failures: u32,
    every: std::time::Duration,
) -> DateTime<Utc> {
    let wait = if failures == 0 {
        every
    } else {
        std::time::Duration::from_secs(60)
            .checked_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)))
            .unwrap_or(every)
            .min(every)
    };
    now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cdr::CdrStatus;

    fn at(h: i64) -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::hours(h)
    }

    fn brand(status: Option<&str>, checked: Option<i64>, failures: u32) -> PolledBrand {
        PolledBrand {
            brand_id: "b-1".into(),
            public_base_uri: Some("https://bank.example/cds".into()),
            institutions: vec!["AU00001".into()],
            status: status.map(str::to_owned),
            status_checked_at: checked.map(at),
            failures,
            status_due_at: at(0),
            outages_due_at: at(0),
        }
    }

    fn says(status: &str) -> Result<BrandStatus, String> {
        Ok(BrandStatus {
            status: CdrStatus::parse(status),
            explanation: Some("maintenance".into()),
            update_time: None,
            detection_time: None,
            expected_resolution_time: None,
        })
    }

    fn open(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_status_that_says_down_opens_an_outage_since_the_last_read_that_saw_the_bank_up() {
        let plan = plan_status(
            &brand(Some("OK"), Some(1), 0),
            &open(&[]),
            says("UNAVAILABLE"),
            at(2),
            at(3),
        );
        assert_eq!(plan.opened.len(), 1);
        assert_eq!(plan.opened[0].key, cdr_key("AU00001"));
        assert_eq!(plan.opened[0].since, Some(at(1)));
        assert_eq!(plan.requeue[0].ended_after, None);
        // Already open: nothing more.
        let again = plan_status(
            &brand(Some("UNAVAILABLE"), Some(2), 0),
            &open(&["AU00001"]),
            says("PARTIAL_FAILURE"),
            at(3),
            at(4),
        );
        assert!(again.opened.is_empty() && again.closed.is_empty() && again.requeue.is_empty());
        // Down at the first read: its start is not known.
        let first = plan_status(
            &brand(None, None, 0),
            &open(&[]),
            says("SCHEDULED_OUTAGE"),
            at(2),
            at(3),
        );
        assert_eq!(first.opened[0].since, None);
        // After failed reads, the last good one is no proof the bank was up since.
        let after_failures = plan_status(
            &brand(Some("OK"), Some(1), 2),
            &open(&[]),
            says("UNAVAILABLE"),
            at(2),
            at(3),
        );
        assert_eq!(after_failures.opened[0].since, None);
    }

    #[test]
    fn ok_closes_the_outage_with_recoveries_after_the_last_read_that_saw_it_down() {
        let plan = plan_status(
            &brand(Some("UNAVAILABLE"), Some(5), 0),
            &open(&["AU00001"]),
            says("OK"),
            at(6),
            at(7),
        );
        assert_eq!(plan.closed, vec![cdr_key("AU00001")]);
        assert_eq!(plan.requeue[0].ended_after, Some(at(5)));
        // OK with nothing open: nothing to do.
        let quiet = plan_status(
            &brand(Some("OK"), Some(5), 0),
            &open(&[]),
            says("OK"),
            at(6),
            at(7),
        );
        assert!(quiet.closed.is_empty() && quiet.requeue.is_empty());
    }

    #[test]
    fn a_witness_that_cannot_be_read_or_understood_says_nothing() {
        for read in [Err("timeout".to_owned()), says("MOSTLY_FINE")] {
            for opened in [open(&[]), open(&["AU00001"])] {
                let plan = plan_status(
                    &brand(Some("UNAVAILABLE"), Some(1), 0),
                    &opened,
                    read.clone(),
                    at(2),
                    at(3),
                );
                assert!(
                    plan.opened.is_empty() && plan.closed.is_empty() && plan.requeue.is_empty()
                );
            }
        }
    }

    fn window(from: i64, to: i64) -> Maintenance {
        Maintenance {
            starts_at: at(from),
            ends_at: at(to),
            partial: false,
            explanation: "upgrade".into(),
        }
    }

    fn stored(id: i64, from: i64, to: i64) -> StoredWindow {
        StoredWindow {
            id,
            institution_id: "AU00001".into(),
            starts_at: at(from),
            ends_at: at(to),
        }
    }

    #[test]
    fn a_window_is_new_once_and_withdrawn_when_no_longer_listed_before_it_begins() {
        let b = brand(Some("OK"), Some(1), 0);
        let first = plan_windows(
            &b,
            &[],
            Ok(vec![window(6, 8), window(-3, -1)]),
            at(0),
            at(1),
        );
        // The window that ended is history.
        assert_eq!(first.new.len(), 1);
        assert_eq!(first.new[0].window.starts_at, at(6));
        let again = plan_windows(&b, &[stored(1, 6, 8)], Ok(vec![window(6, 8)]), at(1), at(2));
        assert!(again.new.is_empty() && again.withdrawn.is_empty());
        // Moved by the bank: the old one is withdrawn, the new one told.
        let moved = plan_windows(&b, &[stored(1, 6, 8)], Ok(vec![window(7, 9)]), at(1), at(2));
        assert_eq!(moved.withdrawn, vec![1]);
        assert_eq!(moved.new.len(), 1);
        // Begun: no longer listed is not withdrawn (it happened).
        let begun = plan_windows(&b, &[stored(1, 6, 8)], Ok(vec![]), at(7), at(8));
        assert!(begun.withdrawn.is_empty());
        // A failed read changes nothing.
        let failed = plan_windows(&b, &[stored(1, 6, 8)], Err("406".into()), at(1), at(2));
        assert!(failed.new.is_empty() && failed.withdrawn.is_empty());
    }

    #[test]
    fn brands_are_read_once_per_interval_each_at_its_own_offset() {
        let every = std::time::Duration::from_secs(300);
        let a = next_read("brand-a", at(0), every);
        let b = next_read("brand-b", at(0), every);
        for t in [a, b] {
            assert!(t >= at(0) + chrono::Duration::seconds(300));
            assert!(t < at(0) + chrono::Duration::seconds(330));
        }
        assert_ne!(a, b);
        assert_eq!(a, next_read("brand-a", at(0), every));
        assert!(first_read("brand-a", at(0), every) < at(0) + chrono::Duration::seconds(60));
    }

    #[test]
    fn the_register_is_retried_from_a_minute_doubling_up_to_its_interval() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(register_next(at(0), 0, day), at(24));
        assert_eq!(
            register_next(at(0), 1, day),
            at(0) + chrono::Duration::minutes(1)
        );
        assert_eq!(
            register_next(at(0), 3, day),
            at(0) + chrono::Duration::minutes(4)
        );
        assert_eq!(register_next(at(0), 40, day), at(24));
    }
}
