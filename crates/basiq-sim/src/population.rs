//! The seeded population: users, their connections, their job history and the connectors.
//!
//! The mix of cases follows [`MIX`] by largest remainder over all connections, so even a small
//! population has a healthy connection, and a large one has every case. Times are relative to
//! the moment the simulator is built; everything else depends on the seed only.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::cdr::CdrState;
use super::state::{
    ACCOUNTS, Conn, Connector, INSTITUTIONS, Job, SourceLink, State, TRANSACTIONS, Timing, User,
    VERIFY, uuid,
};
use super::{
    Case, Counters, DEGRADED_CONNECTOR, JobOrigin, OUTAGE_CONNECTOR, Outcome, ScriptedConnection,
    SimConfig,
};

/// The share of connections, in percent, made for each case.
const MIX: [(Case, usize); 10] = [
    (Case::Healthy, 55),
    (Case::InvalidCredentials, 8),
    (Case::BankPopup, 6),
    (Case::ServiceUnavailable, 8),
    (Case::ConsentExpiringSoon, 6),
    (Case::ConsentExpired, 4),
    (Case::ConnectionInvalid, 4),
    (Case::NotYetActive, 4),
    (Case::Stale, 3),
    (Case::Transient, 2),
];

/// Users on the connector in outage, once the population is big enough to spare them: enough
/// for the daemon to tell an outage from bad luck.
const MIN_OUTAGE_USERS: usize = 3;

const FIRST_NAMES: [&str; 14] = [
    "Gavin", "Richard", "Monica", "Jared", "Dinesh", "Bertram", "Erlich", "Laurie", "Nelson",
    "Jian", "Russ", "Peter", "Carla", "Ron",
];
const LAST_NAMES: [&str; 14] = [
    "Belson",
    "Hendricks",
    "Hall",
    "Dunn",
    "Chugtai",
    "Gilfoyle",
    "Bachman",
    "Bream",
    "Bighetti",
    "Yang",
    "Hanneman",
    "Gregory",
    "Walton",
    "Laflamme",
];

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

struct Slot {
    user: usize,
    case: Case,
    at_outage: bool,
}

pub(super) fn build(cfg: &SimConfig, now: DateTime<Utc>) -> State {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (mut users, per_user) = make_users(&mut rng, cfg.users);
    let total: usize = per_user.iter().sum();
    let slots = assign_cases(&mut rng, &per_user, total);
    let mut state = empty_state(cfg, now);
    let healthy = connect(&mut rng, now, &mut state, &mut users, &slots);
    // Stable: jobs created in the same instant keep the order they were made in.
    state.jobs.sort_by_key(|j| j.created);
    // A refresh that is running as the simulator starts, without `links.source` until it ends:
    // on the last healthy connection, so the first ones stay plain.
    if healthy.len() >= 2
        && let Some(&(u, c)) = healthy.last()
    {
        let job = running_refresh(&mut rng, &users[u], c, now, cfg.step_duration);
        state.push_job(job);
    }
    state.users = users;
    state.reindex_users();
    state
}

/// `n` users with made-up names, without connections yet, and how many each will have.
fn make_users(rng: &mut StdRng, n: usize) -> (Vec<User>, Vec<usize>) {
    let mut users = Vec::with_capacity(n);
    let mut per_user = Vec::with_capacity(n);
    for n in 0..n {
        let id = uuid(rng);
        let first = pick(rng, &FIRST_NAMES);
        let last = pick(rng, &LAST_NAMES);
        let mobile = format!("+614{:08}", rng.random_range(0..100_000_000u32));
        users.push(User {
            id,
            email: format!(
                "{}.{}{n}@example.com",
                first.to_lowercase(),
                last.to_lowercase()
            ),
            mobile,
            first_name: first.to_owned(),
            last_name: last.to_owned(),
            connections: Vec::new(),
        });
        per_user.push(rng.random_range(1..=3usize));
    }
    (users, per_user)
}

/// The state before any user is in it: the connectors, no fault, no token.
fn empty_state(cfg: &SimConfig, now: DateTime<Utc>) -> State {
    State {
        users: Vec::new(),
        jobs: Vec::new(),
        connectors: connectors(),
        tokens: HashMap::new(),
        counters: Counters::default(),
        faults: HashMap::new(),
        global_delay: Duration::ZERO,
        route_delays: HashMap::new(),
        chaos: HashMap::new(),
        rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed_5eed_5eed_5eed),
        cases: HashMap::new(),
        shapes: Default::default(),
        access: Default::default(),
        user_index: HashMap::new(),
        job_index: None,
        live_jobs: 0,
        events: Vec::new(),
        pending_events: Vec::new(),
        world: cfg.world,
        reads: HashMap::new(),
        bank_failing: HashMap::new(),
        basiq_retries: Vec::new(),
        cdr: CdrState::new(now),
    }
}

/// Gives each user the connections of its slots, their history jobs into `state` (unsorted).
/// Returns the healthy connections, as (user, connection) positions.
fn connect(
    rng: &mut StdRng,
    now: DateTime<Utc>,
    state: &mut State,
    users: &mut [User],
    slots: &[Slot],
) -> Vec<(usize, usize)> {
    let mut by_user: Vec<Vec<&Slot>> = vec![Vec::new(); users.len()];
    for slot in slots {
        by_user[slot.user].push(slot);
    }
    let mut array_quirk_done = false;
    let mut healthy: Vec<(usize, usize)> = Vec::new();
    for (u, user_slots) in by_user.iter_mut().enumerate() {
        // The outage slot goes first, so its institution is still free.
        user_slots.sort_by_key(|s| !s.at_outage);
        let mut used: Vec<&str> = Vec::new();
        for slot in user_slots.iter() {
            let (institution, method) = place(rng, slot, &used);
            used.push(institution);
            let made = make_connection(rng, now, slot.case, institution, method);
            for job in made.jobs {
                // The first failure in population order is served as an array.
                let failed = matches!(job.2, Outcome::Fail { .. });
                let as_array = failed && !std::mem::replace(&mut array_quirk_done, true);
                // Sorted once by the caller: inserting each in place is quadratic at 100,000
                // users.
                let job = history_job(rng, &users[u].id, &made.conn, job, as_array);
                state.jobs.push(job);
            }
            if slot.case == Case::Healthy {
                healthy.push((u, users[u].connections.len()));
            }
            state.cases.insert(made.conn.id.clone(), slot.case);
            let spell_openbanking = method == "open-banking" && rng.random_ratio(1, 5);
            users[u].connections.push(Conn {
                s: made.conn,
                spell_openbanking,
                accepted: Vec::new(),
            });
        }
    }
    healthy
}

/// A finished job of a connection's history, with fixed times.
fn history_job(
    rng: &mut StdRng,
    user_id: &str,
    conn: &ScriptedConnection,
    (created, updated, outcome): Finished,
    result_as_array: bool,
) -> Job {
    Job {
        id: uuid(rng),
        user_id: user_id.to_owned(),
        connection_id: conn.id.clone(),
        institution_id: conn.institution_id.clone(),
        created,
        outcome,
        timing: Timing::Fixed {
            updated,
            running: false,
        },
        source: SourceLink::Always,
        result_as_array,
        job_type: None,
        invalidates: false,
        origin: JobOrigin::Seed,
    }
}

/// A refresh of `user`'s connection `c` started `now`, one step per `step`, that will
/// succeed; `links.source` appears only once it ends.
fn running_refresh(
    rng: &mut StdRng,
    user: &User,
    c: usize,
    now: DateTime<Utc>,
    step: Duration,
) -> Job {
    let conn = &user.connections[c].s;
    Job {
        id: uuid(rng),
        user_id: user.id.clone(),
        connection_id: conn.id.clone(),
        institution_id: conn.institution_id.clone(),
        created: now,
        outcome: Outcome::Success,
        timing: Timing::Live {
            step,
            applied: false,
        },
        source: SourceLink::WhenFinished,
        result_as_array: false,
        job_type: None,
        invalidates: false,
        origin: JobOrigin::Seed,
    }
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from.choose(rng).copied().unwrap_or("Alex")
}

/// Spreads [`MIX`] over `total` connections and places the service-unavailable ones, most of
/// them on the connector in outage at distinct users.
fn assign_cases(rng: &mut StdRng, per_user: &[usize], total: usize) -> Vec<Slot> {
    let mut counts = largest_remainder(total);
    let count_of = |counts: &[(Case, usize)], case: Case| {
        counts
            .iter()
            .find(|(c, _)| *c == case)
            .map_or(0, |(_, n)| *n)
    };
    let users = per_user.len();
    let min_outage = if users >= 2 * MIN_OUTAGE_USERS {
        MIN_OUTAGE_USERS
    } else {
        0
    };
    let unavailable = count_of(&counts, Case::ServiceUnavailable);
    let at_outage = min_outage.max((unavailable * 3).div_ceil(4)).min(users);
    // Borrow from the biggest other case (never the last healthy one) to reach `at_outage`.
    let mut missing = at_outage.saturating_sub(unavailable);
    while missing > 0 {
        let donor = counts
            .iter_mut()
            .filter(|(c, n)| {
                *c != Case::ServiceUnavailable && (*c != Case::Healthy || *n > 1) && *n > 0
            })
            .max_by_key(|(_, n)| *n);
        let Some(donor) = donor else { break };
        donor.1 -= 1;
        missing -= 1;
        if let Some(s) = counts
            .iter_mut()
            .find(|(c, _)| *c == Case::ServiceUnavailable)
        {
            s.1 += 1;
        }
    }
    let at_outage = at_outage.min(count_of(&counts, Case::ServiceUnavailable));

    let mut owners: Vec<usize> = (0..users).collect();
    owners.shuffle(rng);
    let outage_users = &owners[..at_outage];

    let mut rest: Vec<Case> = Vec::with_capacity(total);
    for (case, n) in &counts {
        let n = if *case == Case::ServiceUnavailable {
            n - at_outage
        } else {
            *n
        };
        rest.extend(std::iter::repeat_n(*case, n));
    }
    rest.shuffle(rng);
    let mut rest = rest.into_iter();

    let mut slots = Vec::with_capacity(total);
    for (user, &n) in per_user.iter().enumerate() {
        for k in 0..n {
            let slot = if k == 0 && outage_users.contains(&user) {
                Slot {
                    user,
                    case: Case::ServiceUnavailable,
                    at_outage: true,
                }
            } else {
                Slot {
                    user,
                    case: rest.next().unwrap_or(Case::Healthy),
                    at_outage: false,
                }
            };
            slots.push(slot);
        }
    }
    slots
}

/// `total * share / 100` for each case, the leftovers to the largest remainders, and at least
/// one healthy connection whenever there is a connection at all.
fn largest_remainder(total: usize) -> Vec<(Case, usize)> {
    let mut counts: Vec<(Case, usize)> = MIX.iter().map(|(c, p)| (*c, total * p / 100)).collect();
    let given: usize = counts.iter().map(|(_, n)| n).sum();
    let mut order: Vec<usize> = (0..MIX.len()).collect();
    // Stable sort: ties go to the case listed first.
    order.sort_by_key(|&i| std::cmp::Reverse(total * MIX[i].1 % 100));
    for &i in order.iter().take(total - given) {
        counts[i].1 += 1;
    }
    if total > 0 && counts[0].1 == 0 {
        if let Some(donor) = counts.iter_mut().skip(1).max_by_key(|(_, n)| *n) {
            donor.1 -= 1;
        }
        counts[0].1 = 1;
    }
    counts
}

/// Chooses the institution and method of a slot: the connector in outage for the outage
/// slots, an institution the user has no connection at yet for the others.
fn place(rng: &mut StdRng, slot: &Slot, used: &[&str]) -> (&'static str, &'static str) {
    if slot.at_outage {
        return OUTAGE_CONNECTOR;
    }
    let method = match slot.case {
        Case::ConsentExpiringSoon | Case::ConsentExpired => "open-banking",
        Case::InvalidCredentials | Case::BankPopup => "web",
        _ if rng.random_bool(0.5) => "web",
        _ => "open-banking",
    };
    let free: Vec<&'static str> = INSTITUTIONS
        .iter()
        .map(|i| i.id)
        .filter(|id| !used.contains(id) && (*id, method) != OUTAGE_CONNECTOR)
        .collect();
    // A user has at most three connections and there are six banks: `free` is never empty.
    let institution = free.choose(rng).copied().unwrap_or(INSTITUTIONS[0].id);
    (institution, method)
}

/// A connection as the population makes it, and its finished history jobs.
struct Made {
    conn: ScriptedConnection,
    jobs: Vec<Finished>,
}

/// (created, updated, outcome) of a finished job.
type Finished = (DateTime<Utc>, DateTime<Utc>, Outcome);

/// A range of seconds, both ends included.
type Span = (i64, i64);

fn secs(rng: &mut StdRng, (lo, hi): Span) -> TimeDelta {
    TimeDelta::seconds(rng.random_range(lo..=hi))
}

/// How a job failed, as Basiq tells it: step, code, title, detail.
type Failure = (&'static str, &'static str, &'static str, &'static str);

const INVALID_CREDENTIALS: Failure = (
    VERIFY,
    "invalid-credentials",
    "Cannot login to target institution using supplied credentials",
    "Account is locked",
);
const BANK_POPUP: Failure = (
    VERIFY,
    "account-not-accessible-requires-user-action",
    "Account not accessible",
    "Cannot access the account until the user logs in to their bank and \
     completes the action it asks for",
);
const CONNECTION_INVALID: Failure = (
    VERIFY,
    "invalid-connection",
    "Invalid connection",
    "The connection is no longer valid: the user has to connect again",
);
const SERVICE_UNAVAILABLE: Failure = (
    VERIFY,
    "service-unavailable",
    "Service unavailable",
    "The institution's service is currently unavailable. Please try again later.",
);
const UNKNOWN_ERROR: Failure = (
    TRANSACTIONS,
    "unknown-error",
    "Unknown error",
    "An unknown error occurred while retrieving transactions",
);
const JOB_TIMED_OUT: Failure = (
    ACCOUNTS,
    "job-timed-out",
    "Job timed out",
    "The job did not finish in time",
);

/// A connection in `case`, with its history. Every draw from `rng` comes in a fixed order,
/// so a seed makes the same population.
fn make_connection(
    rng: &mut StdRng,
    now: DateTime<Utc>,
    case: Case,
    institution: &str,
    method: &str,
) -> Made {
    let mut conn = new_connection(rng, now, institution, method);
    let (mut jobs, older) = history(rng, now, case, &mut conn);
    // Half of them also have an older job that `/users/{id}/jobs` no longer lists.
    if older && rng.random_bool(0.5) {
        jobs.insert(0, finished(rng, now, (8 * DAY, 20 * DAY), Outcome::Success));
    }
    Made { conn, jobs }
}

/// An active connection made 40 to 300 days ago, with a year of consent when it is open
/// banking, and no history yet.
fn new_connection(
    rng: &mut StdRng,
    now: DateTime<Utc>,
    institution: &str,
    method: &str,
) -> ScriptedConnection {
    let id = uuid(rng);
    let created = now - secs(rng, (40 * DAY, 300 * DAY));
    // A year of consent from the day the connection was made.
    let expiry = (method != "web").then(|| created + TimeDelta::days(365));
    ScriptedConnection {
        id,
        institution_id: institution.to_owned(),
        method: method.to_owned(),
        status: "active".to_owned(),
        outcome: Outcome::Success,
        last_used: None,
        created,
        expiry,
        mfa: None,
        recorded_shape: false,
    }
}

/// Shapes `conn` into `case` and makes its recent jobs; true when it may also have an older
/// job.
fn history(
    rng: &mut StdRng,
    now: DateTime<Utc>,
    case: Case,
    conn: &mut ScriptedConnection,
) -> (Vec<Finished>, bool) {
    match case {
        Case::Healthy | Case::ConsentExpiringSoon => {
            if case == Case::ConsentExpiringSoon {
                consent_ends(conn, now + secs(rng, (DAY, 25 * DAY)));
            }
            let job = finished(rng, now, (HOUR / 2, 6 * DAY + 12 * HOUR), Outcome::Success);
            conn.last_used = Some(job.1);
            (vec![job], true)
        }
        Case::InvalidCredentials | Case::BankPopup | Case::ConnectionInvalid => {
            conn.status = "invalid".to_owned();
            let failure = match case {
                Case::InvalidCredentials => INVALID_CREDENTIALS,
                Case::BankPopup => BANK_POPUP,
                _ => CONNECTION_INVALID,
            };
            let job = failed(rng, now, conn, failure, (HOUR, 6 * DAY), (DAY, 10 * DAY));
            (vec![job], true)
        }
        Case::ServiceUnavailable => {
            let (ago, idle) = ((2 * HOUR, 20 * HOUR), (12 * HOUR, 3 * DAY));
            (
                vec![failed(rng, now, conn, SERVICE_UNAVAILABLE, ago, idle)],
                true,
            )
        }
        Case::ConsentExpired => {
            let expiry = now - secs(rng, (DAY, 5 * DAY));
            consent_ends(conn, expiry);
            conn.status = "invalid".to_owned();
            // The last refresh worked, shortly before the consent ran out.
            let job = finished(rng, expiry, (2 * HOUR, 20 * HOUR), Outcome::Success);
            conn.last_used = Some(job.1);
            (vec![job], true)
        }
        Case::NotYetActive => {
            conn.status = if rng.random_bool(0.5) {
                "pending"
            } else {
                "pre-init"
            }
            .to_owned();
            conn.created = now - secs(rng, (600, 3 * DAY));
            conn.expiry = None;
            (Vec::new(), false)
        }
        Case::Stale => {
            conn.last_used = Some(now - secs(rng, (5 * DAY - 2 * HOUR, 5 * DAY + 2 * HOUR)));
            (
                vec![finished(rng, now, (8 * DAY, 12 * DAY), Outcome::Success)],
                false,
            )
        }
        Case::Transient => {
            let failure = if rng.random_bool(0.5) {
                UNKNOWN_ERROR
            } else {
                JOB_TIMED_OUT
            };
            let job = failed(
                rng,
                now,
                conn,
                failure,
                (HOUR, 5 * DAY),
                (6 * HOUR, 2 * DAY),
            );
            (vec![job], true)
        }
    }
}

/// The consent runs out at `expiry`, a year after the connection was made.
fn consent_ends(conn: &mut ScriptedConnection, expiry: DateTime<Utc>) {
    conn.expiry = Some(expiry);
    conn.created = expiry - TimeDelta::days(365);
}

/// A job started `ago` before `from` that ran 15 to 90 s.
fn finished(rng: &mut StdRng, from: DateTime<Utc>, ago: Span, outcome: Outcome) -> Finished {
    let started = from - secs(rng, ago);
    let done = started + secs(rng, (15, 90));
    (started, done, outcome)
}

/// `conn` now fails with `failure`: its last job, started `ago` before `now`, failed so, and
/// it was last used `idle` before that job.
fn failed(
    rng: &mut StdRng,
    now: DateTime<Utc>,
    conn: &mut ScriptedConnection,
    (step, code, title, detail): Failure,
    ago: Span,
    idle: Span,
) -> Finished {
    conn.outcome = Outcome::fail(step, code, title, detail);
    let started = now - secs(rng, ago);
    conn.last_used = Some(started - secs(rng, idle));
    let done = started + secs(rng, (15, 90));
    (started, done, conn.outcome.clone())
}

fn connectors() -> Vec<Connector> {
    let mut out = Vec::new();
    for institution in &INSTITUTIONS {
        for method in ["web", "open-banking"] {
            let status = if (institution.id, method) == OUTAGE_CONNECTOR {
                "major-outage"
            } else if (institution.id, method) == DEGRADED_CONNECTOR {
                "degraded-performance"
            } else {
                "operational"
            };
            out.push(Connector {
                institution,
                method: method.to_owned(),
                status: status.to_owned(),
                // One bank's open-banking connector uses the spec's spelling.
                spell_openbanking: institution.id == "AU00005" && method == "open-banking",
                name: None,
            });
        }
    }
    out
}
