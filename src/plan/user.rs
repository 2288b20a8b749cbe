//! The planner: every decision one unit of work makes, as a pure function of what was
//! fetched, what is stored, the settings and `now`. No I/O.
//!
//! A user's sweep reads fetch → plan → commit → emit: [`plan_user`] turns Basiq's answer and
//! the stored state into a [`UserPlan`] (the jobs and connections to write, the health
//! changes, consent warnings, inferred outages opening and closing, the refreshes owed, the
//! user's next slot, and the log notes), which the store writes in one transaction and the
//! sweep logs after the commit. [`plan_reclassify`] does the same for the connections at a
//! connector whose status or inferred outage moved. The same planner serves a followed
//! job's end, with the one connection re-read.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::facts::{
    Attempts, ConnectionRow, ConnectorStatuses, Fetched, Fresh, Inference, KeyPeriods, Stored,
    StoredJob,
};
use super::policy::CAP_WINDOW;
use crate::domain::{Connection, ConnectionId, ConnectorKey, Job, JobState, Method, UserId};
use crate::plan::classify::{
    self, ConnectorView, DownPeriod, Facts, Health, NewestJob, Side, Verdict,
};
use crate::plan::policy::schedule::{self, AutoRefresh, Incident, Owed};

/// What the planner needs from the settings.
#[derive(Clone, Debug)]
pub struct PlanSettings {
    pub stale_after: Duration,
    pub outage_min_users: i64,
    /// How far back failures count toward an inferred outage: the start of an inferred
    /// outage's period is this long before it was inferred.
    pub outage_window: Duration,
    /// Refreshes the sweep schedules by itself (none when `refresh.mode = "off"`).
    pub auto_refresh: Option<AutoRefresh>,
}

impl PlanSettings {
    /// `outage_window` as a signed span (unbounded when it does not fit).
    pub fn window(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.outage_window).unwrap_or(chrono::Duration::MAX)
    }
}

/// An inferred outage opening or closing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutageMove {
    Open {
        key: ConnectorKey,
        users: i64,
    },
    /// `inferred_at`: when it was inferred, if known (a success since then ends it).
    Close {
        key: ConnectorKey,
        inferred_at: Option<DateTime<Utc>>,
    },
}

/// A connector whose connections are classified again; `ended_after`: an outage there
/// ended (no earlier than then), so the connections it held get recovery slots, and a job
/// that succeeded after it answers them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requeue {
    pub key: ConnectorKey,
    pub ended_after: Option<DateTime<Utc>>,
}

/// A recorded change of health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthChange {
    pub connection_id: ConnectionId,
    pub user_id: UserId,
    pub from: Option<Health>,
    pub to: Health,
    pub reason: Option<String>,
    pub job_id: Option<String>,
}

/// Log events, emitted after the commit so they never claim what the database does not hold.
#[derive(Clone, Debug)]
pub enum Note {
    HealthChanged {
        row: Box<ConnectionRow>,
        from: Option<Health>,
        verdict: Verdict,
    },
    ConsentExpiring {
        row: Box<ConnectionRow>,
        days: i64,
    },
    OutageInferred {
        key: ConnectorKey,
        users: i64,
    },
    OutageCleared {
        key: ConnectorKey,
    },
    RetryScheduled {
        row: Box<ConnectionRow>,
        attempt: u32,
        at: DateTime<Utc>,
    },
    CappedByBasiq {
        row: Box<ConnectionRow>,
        until: DateTime<Utc>,
    },
}

/// Everything one unit of work writes, in one transaction.
#[derive(Clone, Debug, Default)]
pub struct UserPlan {
    pub user_id: Option<UserId>,
    /// Jobs to store, each with the connection it belongs to.
    pub jobs: Vec<(Job, Option<ConnectionId>)>,
    /// The new state of every connection touched, whole.
    pub connections: Vec<ConnectionRow>,
    /// Connections Basiq no longer lists.
    pub gone: Vec<ConnectionId>,
    pub health_changes: Vec<HealthChange>,
    pub outages: Vec<OutageMove>,
    /// Connectors whose other connections must be classified again.
    pub reclassify: Vec<Requeue>,
    /// A sweep: the user's next slot.
    pub next_due_at: Option<DateTime<Utc>>,
    /// Users to sweep again by then at the latest (an invalid connection waiting for a
    /// re-check that cannot come is judged again when the wait is over).
    pub sweep_by: Vec<(UserId, DateTime<Utc>)>,
    pub notes: Vec<Note>,
}

impl UserPlan {
    /// The health of each of the user's connections, for the pass's counts.
    pub fn healths(&self) -> Vec<Health> {
        self.connections.iter().filter_map(|r| r.health).collect()
    }
}

/// One user of a group commit: what Basiq said, the connector statuses it was fetched
/// with, and its next slot (a sweep) or none (a followed job).
pub struct GroupMember<'a> {
    pub user: &'a UserId,
    pub fetched: &'a Fetched,
    pub connectors: &'a ConnectorStatuses,
    pub next_due_at: Option<DateTime<Utc>>,
}

/// What the plans made so far in a group changed about the inferred-outage facts the
/// store gave for the whole group: as if each plan had been committed before the next one
/// was made.
#[derive(Default)]
struct GroupOverlay {
    failing: HashMap<ConnectorKey, BTreeSet<UserId>>,
    not_failing: HashMap<ConnectorKey, BTreeSet<UserId>>,
    open: HashMap<ConnectorKey, bool>,
}

impl GroupOverlay {
    fn inference(
        &self,
        key: &ConnectorKey,
        facts: &crate::plan::KeyFacts,
        user: &UserId,
        limit: i64,
    ) -> Inference {
        let mut users: BTreeSet<&UserId> = facts.failing.iter().collect();
        if let Some(add) = self.failing.get(key) {
            users.extend(add);
        }
        if let Some(remove) = self.not_failing.get(key) {
            for u in remove {
                users.remove(u);
            }
        }
        users.remove(user);
        Inference {
            open: self.open.get(key).copied().unwrap_or(facts.open),
            other_users_failing: i64::try_from(users.len()).unwrap_or(i64::MAX).min(limit),
            counts_since: facts.counts_since,
        }
    }

    /// The down periods at `key` as the plans before left them.
    fn periods(
        &self,
        key: &ConnectorKey,
        facts: &crate::plan::KeyFacts,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> KeyPeriods {
        let mut periods = facts.periods.clone();
        match self.open.get(key) {
            Some(true) if !facts.open => periods.inferred_opened(now, window),
            Some(false) if facts.open => periods.inferred_closed(now),
            _ => {}
        }
        periods
    }

    /// After `plan` of `user` (whose stored rows were `stored`): at each connector, is the
    /// user now failing bank-side, and did an inferred outage open or close.
    fn apply(
        &mut self,
        user: &UserId,
        stored: &[ConnectionRow],
        plan: &UserPlan,
        facts: &HashMap<ConnectorKey, crate::plan::KeyFacts>,
    ) {
        let gone: BTreeSet<&ConnectionId> = plan.gone.iter().collect();
        let mut rows: HashMap<&ConnectionId, &ConnectionRow> =
            stored.iter().map(|r| (&r.connection_id, r)).collect();
        for r in &plan.connections {
            rows.insert(&r.connection_id, r);
        }
        let keys: BTreeSet<ConnectorKey> = rows.values().map(|r| r.connector_key()).collect();
        for key in keys {
            let Some(f) = facts.get(&key) else { continue };
            let failing = rows.values().any(|r| {
                r.connector_key() == key
                    && r.gone_at.is_none()
                    && !gone.contains(&r.connection_id)
                    && r.bank_failure_at.is_some_and(|t| t >= f.from)
            });
            let (add, remove) = if failing {
                (&mut self.failing, &mut self.not_failing)
            } else {
                (&mut self.not_failing, &mut self.failing)
            };
            add.entry(key.clone()).or_default().insert(user.clone());
            if let Some(set) = remove.get_mut(&key) {
                set.remove(user);
            }
        }
        for outage in &plan.outages {
            match outage {
                OutageMove::Open { key, .. } => self.open.insert(key.clone(), true),
                OutageMove::Close { key, .. } => self.open.insert(key.clone(), false),
            };
        }
    }
}

/// The connectors whose inferred-outage facts a group's plans need: those of what each
/// member fetched and of what is stored for it.
pub fn group_keys(
    members: &[GroupMember<'_>],
    stored: &HashMap<UserId, Stored>,
) -> Vec<ConnectorKey> {
    let keys: BTreeSet<ConnectorKey> = members
        .iter()
        .flat_map(|m| member_keys(m, stored.get(m.user)))
        .collect();
    keys.into_iter().collect()
}

/// The connectors of what one member fetched and of what is stored for it.
fn member_keys(m: &GroupMember<'_>, stored: Option<&Stored>) -> BTreeSet<ConnectorKey> {
    let mut keys: BTreeSet<ConnectorKey> = m
        .fetched
        .connections
        .iter()
        .map(|c| ConnectorKey::new(c.institution_id.as_str(), &c.method))
        .collect();
    if let Some(s) = stored {
        keys.extend(s.connections.iter().map(ConnectionRow::connector_key));
    }
    keys
}

/// Plans a group of users one after the other, each seeing the inferred-outage facts as
/// the plans before it left them, exactly as if each had been committed before the next
/// was made: the order users are swept in, and how they are grouped, changes nothing.
/// `facts` must list at least `limit` + the group's size failing users per connector.
pub fn plan_group(
    now: DateTime<Utc>,
    members: &[GroupMember<'_>],
    mut stored: HashMap<UserId, Stored>,
    facts: &HashMap<ConnectorKey, crate::plan::KeyFacts>,
    settings: &PlanSettings,
    rng: &mut impl rand::Rng,
) -> Vec<UserPlan> {
    let mut overlay = GroupOverlay::default();
    let limit = settings.outage_min_users.max(1);
    members
        .iter()
        .map(|m| {
            let mut mine = stored.remove(m.user).unwrap_or_default();
            let keys = member_keys(m, Some(&mine));
            mine.inference = keys
                .iter()
                .filter_map(|key| {
                    let f = facts.get(key)?;
                    Some((key.clone(), overlay.inference(key, f, m.user, limit)))
                })
                .collect();
            mine.periods = keys
                .iter()
                .filter_map(|key| {
                    let f = facts.get(key)?;
                    Some((key.clone(), overlay.periods(key, f, now, settings.window())))
                })
                .collect();
            let plan = plan_user(
                now,
                m.user,
                m.fetched,
                &mine,
                m.connectors,
                settings,
                m.next_due_at,
                rng,
            );
            overlay.apply(m.user, &mine.connections, &plan, facts);
            plan
        })
        .collect()
}

/// Which connection each job belongs to: its `links.source`; when it has none, and it is a
/// connection job, the one connection at its institution (Basiq allows one active
/// connection per institution and user). A statement job at the same bank is not matched.
pub fn match_jobs(connections: &[Connection], jobs: &[Job]) -> Vec<Option<ConnectionId>> {
    jobs.iter()
        .map(|job| {
            if job.has_source {
                return job.connection_id.clone();
            }
            if !job.is_connection_job() {
                return None;
            }
            let institution = job.institution_id.as_ref()?;
            let mut at: Vec<&Connection> = connections
                .iter()
                .filter(|c| &c.institution_id == institution)
                .collect();
            if at.len() > 1 {
                at.retain(|c| c.status == crate::domain::ConnectionStatus::Active);
            }
            (at.len() == 1).then(|| at[0].id.clone())
        })
        .collect()
}

/// What a fetch says of each connection it names.
pub fn freshest(fetched: &Fetched) -> Vec<(ConnectionId, Fresh)> {
    let matched = match_jobs(&fetched.connections, &fetched.jobs);
    let mut newest: HashMap<&ConnectionId, &Job> = HashMap::new();
    for (job, connection) in fetched.jobs.iter().zip(&matched) {
        if let Some(c) = connection {
            let entry = newest.entry(c).or_insert(job);
            if job.created > entry.created {
                *entry = job;
            }
        }
    }
    fetched
        .connections
        .iter()
        .map(|c| {
            let fresh = Fresh {
                status: c.status.clone(),
                last_used: c.last_used,
                newest_job: newest
                    .get(&c.id)
                    .map(|j| (j.id.as_str().to_owned(), newest_of(j))),
            };
            (c.id.clone(), fresh)
        })
        .collect()
}

/// A job snapshot older than the stored one, or a finished job seen running again, is not
/// news.
fn is_backwards(job: &Job, stored: Option<&StoredJob>) -> bool {
    let Some(s) = stored else {
        return false;
    };
    let older = matches!((s.updated, job.updated), (Some(had), Some(new)) if new < had);
    let reopened = s.state != JobState::InProgress && job.state() == JobState::InProgress;
    older || reopened
}

/// A finished job whose stored snapshot says the same (state, `updated`, and a match to
/// a connection when it has one now).
fn is_unchanged(job: &Job, stored: Option<&StoredJob>, matched: bool) -> bool {
    stored.is_some_and(|s| {
        s.state != JobState::InProgress
            && s.state == job.state()
            && s.updated == job.updated
            && (s.matched || !matched)
    })
}

fn newest_of(job: &Job) -> NewestJob {
    NewestJob {
        state: job.state(),
        failure_code: job.failure_code().map(str::to_owned),
        side: job.failure_code().map(Side::of),
        created: job.created,
        updated: job.updated,
    }
}

/// A fresh row for a connection seen for the first time.
fn fresh_row(user: &UserId, c: &Connection) -> ConnectionRow {
    ConnectionRow {
        connection_id: c.id.clone(),
        user_id: user.clone(),
        institution_id: c.institution_id.clone(),
        method: c.method.clone(),
        status: c.status.clone(),
        created_date: None,
        last_used: None,
        expiry_date: None,
        newest_job_id: None,
        newest_job: None,
        health: None,
        reason: None,
        checked_at: None,
        health_since: None,
        consent_warned_days: None,
        gone_at: None,
        basiq_capped_until: None,
        refresh_due: None,
        transient_retries: 0,
        transient_job_id: None,
        daily_due_at: None,
        mfa_enabled: None,
        needs_user_present: false,
        bank_failure_at: None,
        last_decision: None,
        invalid_from: None,
        invalid_seen: None,
    }
}

/// When a connection turned `invalid`: first seen now, it happened after the last read that
/// saw it otherwise (or, never read before, after it was made); seen before, it stays.
fn note_invalid(row: &mut ConnectionRow, c: &Connection, now: DateTime<Utc>) {
    if c.status != crate::domain::ConnectionStatus::Invalid {
        row.invalid_from = None;
        row.invalid_seen = None;
    } else if row.status != crate::domain::ConnectionStatus::Invalid || row.invalid_seen.is_none() {
        let before = row.checked_at.or(c.created_date).unwrap_or(now);
        row.invalid_from = Some(before.min(now));
        row.invalid_seen = Some(now);
    }
}

/// Plans one user's sweep (or, with `fetched.complete = false`, one re-read connection).
#[allow(clippy::too_many_arguments)]
pub fn plan_user(
    now: DateTime<Utc>,
    user: &UserId,
    fetched: &Fetched,
    stored: &Stored,
    connectors: &ConnectorStatuses,
    settings: &PlanSettings,
    next_due_at: Option<DateTime<Utc>>,
    rng: &mut impl rand::Rng,
) -> UserPlan {
    let mut plan = UserPlan {
        user_id: Some(user.clone()),
        next_due_at,
        ..UserPlan::default()
    };

    // Jobs: matched, never backwards; the newest per connection by `created`.
    let seen = read_jobs(fetched, stored, &mut plan.jobs);

    // The new state of each connection, before classification.
    let rows = refreshed_rows(now, user, fetched, stored, &seen);
    if fetched.complete {
        plan.gone = gone_connections(fetched, stored);
    }

    let (inferred, periods) = infer_outages(now, &rows, stored, settings, &mut plan);
    for mut row in rows {
        let key = ConnectorKey::new(row.institution_id.as_str(), &row.method);
        let view = connectors.view(row.institution_id.as_str(), &row.method);
        let attempts = stored
            .attempts
            .get(&row.connection_id)
            .copied()
            .unwrap_or_default();
        consent(&mut row, now, &mut plan.notes);
        capped_by_basiq(&mut row, &attempts, now, &mut plan.notes);
        let inferred = inferred.get(&key).copied().unwrap_or(false);
        let known = Known {
            view: &view,
            inferred,
            periods: &periods.get(&key).map(KeyPeriods::all).unwrap_or_default(),
            attempts: &attempts,
        };
        classify_row(&mut row, &known, now, settings, rng, &mut plan);
        plan.connections.push(row);
    }
    plan
}

/// What a user's fetched jobs say of each connection: its newest job, and whether any
/// job prompted for a code.
struct SeenJobs<'a> {
    newest: HashMap<ConnectionId, &'a Job>,
    mfa_seen: BTreeSet<ConnectionId>,
}

/// Reads the fetched jobs: those not going backwards and not unchanged go to `to_write`
/// with their matched connection; the newest per connection (by `created`) and the MFA
/// prompts are returned.
fn read_jobs<'a>(
    fetched: &'a Fetched,
    stored: &Stored,
    to_write: &mut Vec<(Job, Option<ConnectionId>)>,
) -> SeenJobs<'a> {
    let matched = match_jobs(&fetched.connections, &fetched.jobs);
    let mut seen = SeenJobs {
        newest: HashMap::new(),
        mfa_seen: BTreeSet::new(),
    };
    for (job, connection) in fetched.jobs.iter().zip(&matched) {
        let had = stored.jobs.get(&job.id);
        if is_backwards(job, had) {
            continue;
        }
        // A finished job already stored as it is now has nothing to write (most jobs of a
        // daily sweep): only new or moved jobs are written.
        if !is_unchanged(job, had, connection.is_some()) {
            to_write.push((job.clone(), connection.clone()));
        }
        let Some(connection) = connection else {
            continue;
        };
        if job.shows_mfa() {
            seen.mfa_seen.insert(connection.clone());
        }
        let entry = seen.newest.entry(connection.clone()).or_insert(job);
        if job.created > entry.created {
            *entry = job;
        }
    }
    seen
}

/// The new state of each fetched connection: its stored row (or a fresh one) brought up
/// to date, in Basiq's order.
fn refreshed_rows(
    now: DateTime<Utc>,
    user: &UserId,
    fetched: &Fetched,
    stored: &Stored,
    seen: &SeenJobs<'_>,
) -> Vec<ConnectionRow> {
    let by_id: HashMap<&ConnectionId, &ConnectionRow> = stored
        .connections
        .iter()
        .map(|r| (&r.connection_id, r))
        .collect();
    fetched
        .connections
        .iter()
        .map(|c| {
            let row = by_id
                .get(&c.id)
                .map(|r| (*r).clone())
                .unwrap_or_else(|| fresh_row(user, c));
            refreshed_row(row, user, c, seen, now)
        })
        .collect()
}

/// A connection's row brought up to what Basiq says of it now and of its jobs.
fn refreshed_row(
    mut row: ConnectionRow,
    user: &UserId,
    c: &Connection,
    seen: &SeenJobs<'_>,
    now: DateTime<Utc>,
) -> ConnectionRow {
    row.user_id = user.clone();
    row.institution_id = c.institution_id.clone();
    row.method = c.method.clone();
    note_invalid(&mut row, c, now);
    row.status = c.status.clone();
    row.created_date = c.created_date;
    row.last_used = c.last_used;
    row.expiry_date = c.expiry_date;
    row.mfa_enabled = c.mfa_enabled;
    // Once a refresh has prompted for a code, it may again: this is never forgotten.
    row.needs_user_present =
        row.needs_user_present || c.mfa_enabled == Some(true) || seen.mfa_seen.contains(&c.id);
    row.gone_at = None;
    if let Some(job) = seen.newest.get(&c.id) {
        note_newest_job(&mut row, job);
    }
    row.bank_failure_at = bank_failure_at(&row, now);
    row
}

/// Makes `job` the row's newest job, unless the row holds a newer one (a followed refresh).
fn note_newest_job(row: &mut ConnectionRow, job: &Job) {
    let stored_is_newer = row.newest_job_id.as_deref() != Some(job.id.as_str())
        && row
            .newest_job
            .as_ref()
            .and_then(|j| j.created)
            .zip(job.created)
            .is_some_and(|(had, new)| had > new);
    if !stored_is_newer {
        row.newest_job_id = Some(job.id.as_str().to_owned());
        row.newest_job = Some(newest_of(job));
    }
}

/// When the row's newest job failed at the bank (its `updated`, else `created`, else now).
fn bank_failure_at(row: &ConnectionRow, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    row.newest_job.as_ref().and_then(|j| {
        let bank = j.state == JobState::Failed
            && j.failure_code
                .as_deref()
                .is_some_and(|c| Side::of(c) == Side::Bank);
        bank.then(|| j.updated.or(j.created).unwrap_or(now))
    })
}

/// Stored connections not yet gone that Basiq no longer lists.
fn gone_connections(fetched: &Fetched, stored: &Stored) -> Vec<ConnectionId> {
    let present: BTreeSet<&ConnectionId> = fetched.connections.iter().map(|c| &c.id).collect();
    stored
        .connections
        .iter()
        .filter(|r| r.gone_at.is_none() && !present.contains(&r.connection_id))
        .map(|r| r.connection_id.clone())
        .collect()
}

/// Inferred outages at each connector this user uses: everyone else's failures plus this
/// user's, so the order users are swept in does not matter. Opened by the threshold; once
/// open, one lasts until a job at the bank succeeds after it was inferred. Failures are seen
/// a few at a time (a user's sweep, a followed refresh), so an outage that closed whenever
/// they aged out of the window would flicker shut while the bank is still down, and each
/// failure in a gap would ask its user to act. Returns whether each is open, and the down
/// periods as this plan leaves them.
fn infer_outages(
    now: DateTime<Utc>,
    rows: &[ConnectionRow],
    stored: &Stored,
    settings: &PlanSettings,
    plan: &mut UserPlan,
) -> (
    HashMap<ConnectorKey, bool>,
    HashMap<ConnectorKey, KeyPeriods>,
) {
    let mut inferred = HashMap::new();
    let mut periods = stored.periods.clone();
    let keys: BTreeSet<ConnectorKey> = rows.iter().map(ConnectionRow::connector_key).collect();
    for key in keys {
        let facts = stored.inference.get(&key).copied().unwrap_or_default();
        let at_key = rows.iter().filter(|r| r.connector_key() == key);
        let mine = at_key.clone().any(|r| {
            r.bank_failure_at
                .is_some_and(|t| facts.counts_since.is_none_or(|since| t >= since))
        });
        let users = facts.other_users_failing + i64::from(mine);
        let key_periods = periods.entry(key.clone()).or_default();
        let inferred_at = key_periods
            .inferred
            .iter()
            .find(|p| p.is_open())
            .and_then(|p| p.from)
            .and_then(|from| from.checked_add_signed(settings.window()));
        let succeeded_since = at_key.clone().any(|r| {
            r.newest_job.as_ref().is_some_and(|j| {
                j.state == JobState::Success
                    && j.created
                        .is_some_and(|c| inferred_at.is_none_or(|at| c >= at))
            })
        });
        // A day on with no failure seen in the window, every user there has been swept once
        // more since: an outage nothing confirms any longer ends, so that nobody at a bank
        // where nothing succeeds (every user failing their own way) is held for good.
        let stale =
            users == 0 && inferred_at.is_some_and(|at| now - at >= chrono::Duration::hours(24));
        let open = users >= settings.outage_min_users || (facts.open && !succeeded_since && !stale);
        if open != facts.open {
            let (moved, note) = if open {
                key_periods.inferred_opened(now, settings.window());
                let (key, users) = (key.clone(), users);
                (
                    OutageMove::Open {
                        key: key.clone(),
                        users,
                    },
                    Note::OutageInferred { key, users },
                )
            } else {
                key_periods.inferred_closed(now);
                let inferred_at = inferred_at.or(Some(now));
                (
                    OutageMove::Close {
                        key: key.clone(),
                        inferred_at,
                    },
                    Note::OutageCleared { key: key.clone() },
                )
            };
            let ended_after = match &moved {
                OutageMove::Close { inferred_at, .. } => *inferred_at,
                OutageMove::Open { .. } => None,
            };
            plan.outages.push(moved);
            plan.notes.push(note);
            plan.reclassify.push(Requeue {
                key: key.clone(),
                ended_after,
            });
        }
        inferred.insert(key, open);
    }
    (inferred, periods)
}

/// Plans the reclassification of a batch of connections at one connector. `recovery`: the
/// outage there ended; held connections get recovery slots (`slots`, one per connection
/// held, in order). A connection the new facts leave as it was (its health, reason, owed
/// refresh and retries, nothing to tell) is neither written nor logged: on a first start most
/// of a bank's connections are, and a bank is hundreds of thousands of them.
#[allow(clippy::too_many_arguments)]
pub fn plan_reclassify(
    now: DateTime<Utc>,
    rows: Vec<ConnectionRow>,
    connectors: &ConnectorStatuses,
    inferred: bool,
    periods: &[DownPeriod],
    attempts: &HashMap<ConnectionId, Attempts>,
    settings: &PlanSettings,
    mut recovery_slots: impl Iterator<Item = Owed>,
    rng: &mut impl rand::Rng,
) -> UserPlan {
    let mut plan = UserPlan::default();
    for stored in rows {
        let mut row = stored.clone();
        let view = connectors.view(row.institution_id.as_str(), &row.method);
        let a = attempts
            .get(&row.connection_id)
            .copied()
            .unwrap_or_default();
        if let Some(auto) = &settings.auto_refresh
            && row.health == Some(Health::InstitutionOutage)
            && let Some(mut slot) = recovery_slots.next()
        {
            // Never before the recency floor: a slot sooner would only be denied.
            let floors = [row.last_used, row.newest_job_at(), a.last];
            slot.at = schedule::floored(slot.at, &floors, auto.min_interval);
            row.refresh_due = Some(schedule::merge(row.refresh_due, slot));
        }
        let known = Known {
            view: &view,
            inferred,
            periods,
            attempts: &a,
        };
        let notes = plan.notes.len();
        classify_row(&mut row, &known, now, settings, rng, &mut plan);
        if plan.notes.len() > notes || !same_but_checked(&row, &stored) {
            plan.connections.push(row);
        }
    }
    plan
}

/// The row as classified differs from the stored one in when it was classified only. (A
/// change of health or reason is noted, and changes the row.)
fn same_but_checked(row: &ConnectionRow, stored: &ConnectionRow) -> bool {
    *stored
        == ConnectionRow {
            checked_at: stored.checked_at,
            ..row.clone()
        }
}

/// Consent warnings: one per threshold crossed (30, 7, 1 days), not one per sweep.
fn consent(row: &mut ConnectionRow, now: DateTime<Utc>, notes: &mut Vec<Note>) {
    match classify::consent_threshold(&row.method, row.expiry_date, now) {
        Some(days) if row.consent_warned_days.is_none_or(|w| days < w) => {
            row.consent_warned_days = Some(days);
            notes.push(Note::ConsentExpiring {
                row: Box::new(row.clone()),
                days,
            });
        }
        // Consent renewed: warn again when the new one nears its end.
        None if row.consent_warned_days.is_some()
            && row
                .expiry_date
                .is_some_and(|e| e - now > chrono::Duration::days(30)) =>
        {
            row.consent_warned_days = None;
        }
        _ => {}
    }
}

/// A job that failed with Basiq's own `too-many-requests`: no attempt until the rolling
/// window has room (the oldest refresh we know of leaves it), at least an hour.
fn capped_by_basiq(
    row: &mut ConnectionRow,
    attempts: &Attempts,
    now: DateTime<Utc>,
    notes: &mut Vec<Note>,
) {
    let Some(job) = row.newest_job.as_ref() else {
        return;
    };
    let capped = job.state == JobState::Failed
        && job
            .failure_code
            .as_deref()
            .is_some_and(|c| Side::of(c) == Side::Cap)
        && job.created.is_none_or(|c| now - c <= CAP_WINDOW);
    if !capped {
        return;
    }
    let oldest = [attempts.oldest_in_window, job.created]
        .into_iter()
        .flatten()
        .filter(|t| now - *t < CAP_WINDOW)
        .min();
    let until = oldest
        .map(|o| o + CAP_WINDOW)
        .unwrap_or(now + CAP_WINDOW)
        .max(now + chrono::Duration::hours(1));
    if row.basiq_capped_until.is_none_or(|t| t < until)
        && row.basiq_capped_until.is_none_or(|t| t <= now)
    {
        row.basiq_capped_until = Some(until);
        notes.push(Note::CappedByBasiq {
            row: Box::new(row.clone()),
            until,
        });
    }
}

/// What is known of a connection's bank and our attempts of it, for one classification.
struct Known<'a> {
    view: &'a ConnectorView,
    inferred: bool,
    periods: &'a [DownPeriod],
    attempts: &'a Attempts,
}

/// Classifies one connection's new state, records a change, and updates its schedule.
fn classify_row(
    row: &mut ConnectionRow,
    known: &Known<'_>,
    now: DateTime<Utc>,
    settings: &PlanSettings,
    rng: &mut impl rand::Rng,
    plan: &mut UserPlan,
) {
    let attempts = known.attempts;
    let verdict = classify::classify(&Facts {
        status: &row.status,
        method: &row.method,
        last_used: row.last_used,
        expiry_date: row.expiry_date,
        newest_job: row.newest_job.as_ref(),
        connector: known.view,
        outage_inferred: known.inferred,
        periods: known.periods,
        invalid_within: row.invalid_from.zip(row.invalid_seen),
        previous: row.health.map(|h| (h, row.reason.as_deref())),
        stale_after: settings.stale_after,
        now,
    });
    let verdict = keep_consent_end(row, verdict);
    let waits_in_vain = verdict.reason.as_deref() == Some(classify::RECHECK_AFTER_OUTAGE)
        && row.status == crate::domain::ConnectionStatus::Invalid;
    if waits_in_vain {
        let by = now + classify::RECHECK_LIMIT + chrono::Duration::minutes(1);
        plan.sweep_by.push((row.user_id.clone(), by));
    }
    apply_verdict(row, verdict, now, plan);
    if let Some(auto) = &settings.auto_refresh {
        let job = row.newest_job.as_ref();
        let started = job.and_then(|j| j.created.or(j.updated));
        let verdicted = schedule::Verdicted {
            health: row.health.unwrap_or(Health::Unknown),
            reason: row.reason.as_deref(),
            newest_job: row.newest_job_id.as_deref(),
            failed_at: started.filter(|_| job.is_some_and(|j| j.state == JobState::Failed)),
            succeeded_at: started.filter(|_| job.is_some_and(|j| j.state == JobState::Success)),
            floors: [row.last_used, row.newest_job_at(), attempts.last],
        };
        let s = schedule::after_verdict(
            auto,
            now,
            &verdicted,
            row.refresh_due,
            Incident {
                retries: row.transient_retries,
                job_id: row.transient_job_id.clone(),
            },
            rng,
        );
        row.refresh_due = s.owed;
        row.transient_retries = s.incident.retries;
        row.transient_job_id = s.incident.job_id;
        if let Some((attempt, at)) = s.new_retry {
            plan.notes.push(Note::RetryScheduled {
                row: Box::new(row.clone()),
                attempt,
                at,
            });
        }
    }
}

/// Writes a verdict into the row; a change of health or reason is recorded and noted.
/// Basiq says the user's consent was revoked or expired (`reason`): every open-banking
/// connection of theirs needs the user.
pub fn plan_consent_ended(
    user: &UserId,
    rows: Vec<ConnectionRow>,
    reason: &'static str,
    now: DateTime<Utc>,
) -> UserPlan {
    let mut plan = UserPlan {
        user_id: Some(user.clone()),
        ..UserPlan::default()
    };
    for mut row in rows.into_iter().filter(|r| consent_based(&r.method)) {
        let verdict = Verdict {
            health: Health::ActionRequired,
            reason: Some(reason.to_owned()),
        };
        apply_verdict(&mut row, verdict, now, &mut plan);
        plan.connections.push(row);
    }
    plan
}

/// Basiq's consent warning (sent 7 days before the end): each open-banking connection
/// warned at 7 days, once (a connection already warned at 7 or 1 is not warned again).
pub fn plan_consent_warning(
    user: &UserId,
    rows: Vec<ConnectionRow>,
    now: DateTime<Utc>,
) -> UserPlan {
    const DAYS: i64 = 7;
    let mut plan = UserPlan {
        user_id: Some(user.clone()),
        ..UserPlan::default()
    };
    for mut row in rows.into_iter().filter(|r| consent_based(&r.method)) {
        if row.consent_warned_days.is_some_and(|w| w <= DAYS) {
            continue;
        }
        row.consent_warned_days = Some(DAYS);
        row.checked_at = Some(now);
        plan.notes.push(Note::ConsentExpiring {
            row: Box::new(row.clone()),
            days: DAYS,
        });
        plan.connections.push(row);
    }
    plan
}

/// A consent Basiq said was revoked or expired (a `consent.*` event) stays ended until the
/// user connects again: Basiq's connection may still read `active` with an old successful
/// job, which says nothing about the consent. A job that succeeded after the end shows the
/// user re-consented.
fn keep_consent_end(row: &ConnectionRow, verdict: Verdict) -> Verdict {
    let ended = row.health == Some(Health::ActionRequired)
        && matches!(
            row.reason.as_deref(),
            Some("consent-revoked" | "consent-expired")
        );
    if !ended || verdict.health == Health::InProgress {
        return verdict;
    }
    let reconsented = row.newest_job.as_ref().is_some_and(|j| {
        j.state == JobState::Success
            && j.created
                .zip(row.health_since)
                .is_some_and(|(created, since)| created > since)
    });
    if reconsented {
        return verdict;
    }
    Verdict {
        health: Health::ActionRequired,
        reason: row.reason.clone(),
    }
}

/// An open-banking connection (a consent). A connection whose method Basiq left out and
/// that shows no consent end is not taken for one: the sweep that follows the event reads
/// what Basiq says of it.
fn consent_based(method: &Method) -> bool {
    *method == Method::OpenBanking
}

pub fn apply_verdict(
    row: &mut ConnectionRow,
    verdict: Verdict,
    now: DateTime<Utc>,
    plan: &mut UserPlan,
) {
    row.checked_at = Some(now);
    if row.health == Some(verdict.health) && row.reason == verdict.reason {
        return;
    }
    plan.health_changes.push(HealthChange {
        connection_id: row.connection_id.clone(),
        user_id: row.user_id.clone(),
        from: row.health,
        to: verdict.health,
        reason: verdict.reason.clone(),
        job_id: row.newest_job_id.clone(),
    });
    let from = row.health;
    row.health = Some(verdict.health);
    row.reason = verdict.reason.clone();
    row.health_since = Some(now);
    plan.notes.push(Note::HealthChanged {
        row: Box::new(row.clone()),
        from,
        verdict,
    });
}

/// Basiq refused a refresh with a code the user must act on (a 400 `invalid-credentials`):
/// the connection needs the user now, and no automatic attempt follows.
pub fn plan_refresh_rejected(
    row: &ConnectionRow,
    code: &str,
    now: DateTime<Utc>,
) -> Option<UserPlan> {
    if Side::of(code) != Side::User {
        return None;
    }
    let mut plan = UserPlan::default();
    let mut row = row.clone();
    apply_verdict(
        &mut row,
        Verdict {
            health: Health::ActionRequired,
            reason: Some(code.to_owned()),
        },
        now,
        &mut plan,
    );
    row.refresh_due = None;
    row.transient_retries = 0;
    row.transient_job_id = None;
    plan.connections.push(row);
    Some(plan)
}

#[cfg(test)]
mod tests;
