//! A scripted world for the life simulation: a seeded population and a timeline of what
//! happens to it over days. Basiq updates every connection on its own twice a day; banks go
//! down, some with `/connectors` saying so and some without, and while they are down every
//! job fails bank-side (now and then with a code that looks like the user's); the banks'
//! own data holders speak on the Consumer Data Right (one says `UNAVAILABLE` before Basiq's
//! `/connectors` flips, another announces maintenance a day ahead that `/connectors` never
//! mentions); users change their passwords, meet their bank's messages, revoke consents or
//! let them expire, and fix it all some hours later; users log in.
//!
//! It knows nothing of the daemon: a harness applies each [`WorldEvent`] at its time
//! ([`Simulator::apply`]; a [`WorldEvent::Login`] is the harness's to act on) and checks what
//! the daemon said against the truth: the timeline, [`Simulator::job_records`] (which job
//! failed for whose reason) and [`Simulator::reads_of`] (what the daemon could know when).

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::state::{INSTITUTIONS, is_open_banking, uuid};
use super::{JobOrigin, JobRecord, Outcome, ScriptedConnection, Simulator};

/// What to generate.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    pub users: usize,
    pub days: u32,
    pub seed: u64,
    pub start: DateTime<Utc>,
}

/// The population and its timeline, sorted by time.
#[derive(Clone, Debug)]
pub struct World {
    pub config: WorldConfig,
    pub users: Vec<WorldUser>,
    pub timeline: Vec<Timed>,
}

#[derive(Clone, Debug)]
pub struct WorldUser {
    pub id: String,
    pub connections: Vec<ScriptedConnection>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Timed {
    pub at: DateTime<Utc>,
    pub event: WorldEvent,
}

/// One thing that happens in the world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WorldEvent {
    /// Basiq updates the connection on its own (if it is active).
    BasiqUpdate {
        user_id: String,
        connection_id: String,
    },
    /// Every job at this connector fails from now on; `told`: `/connectors` says
    /// `major-outage`, otherwise it keeps saying `operational`.
    BankDown {
        institution_id: String,
        method: String,
        told: bool,
    },
    BankUp {
        institution_id: String,
        method: String,
        told: bool,
    },
    /// The bank goes down and its data holder says so first: its CDR status is
    /// `UNAVAILABLE` (with the explanation) and every job at the institution's open-banking
    /// connector fails from now on, while `/connectors` still says `operational` (a
    /// [`WorldEvent::BankDown`] with `told` follows minutes later, and its `BankUp` ends the
    /// failures).
    CdrDown {
        institution_id: String,
        explanation: String,
    },
    /// The data holder's CDR status is `OK` again (shortly before or after Basiq's
    /// `BankUp`).
    CdrUp { institution_id: String },
    /// The data holder lists a planned outage of its open-banking connector on the CDR,
    /// ahead of time; `/connectors` never mentions it.
    MaintenanceAnnounced {
        institution_id: String,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        explanation: String,
    },
    /// The announced maintenance begins: every job at the open-banking connector fails
    /// (every other one with a code that looks like the user's).
    MaintenanceStarted { institution_id: String },
    /// The maintenance is over: jobs work again and the data holder no longer lists it.
    MaintenanceEnded { institution_id: String },
    /// The user changed their bank password: the next job fails `invalid-credentials`.
    PasswordChanged {
        user_id: String,
        connection_id: String,
    },
    /// The bank shows the user a message: the next job fails
    /// `account-not-accessible-requires-user-action`.
    BankMessage {
        user_id: String,
        connection_id: String,
    },
    /// The user revokes their consent (`consent.revoked`): every open-banking connection of
    /// theirs stops.
    ConsentRevoked { user_id: String },
    /// The user's consent reaches its end (`consent.expired`), the `expiryDate` of every
    /// open-banking connection of theirs.
    ConsentExpired { user_id: String },
    /// The user consents again: every open-banking connection of theirs is active with a new
    /// consent, and a job of theirs succeeds (`consent.created`).
    Reconsented { user_id: String },
    /// The user fixes what was asked (new credentials, the message cleared, a new consent):
    /// the connection is active again and a job of theirs succeeds (`connection.activated`).
    Reconnected {
        user_id: String,
        connection_id: String,
    },
    /// The user opens the partner's app (the harness runs the login check).
    Login { user_id: String },
}

impl WorldEvent {
    /// The connection the event is about, if one.
    pub fn connection_id(&self) -> Option<&str> {
        match self {
            Self::BasiqUpdate { connection_id, .. }
            | Self::PasswordChanged { connection_id, .. }
            | Self::BankMessage { connection_id, .. }
            | Self::Reconnected { connection_id, .. } => Some(connection_id),
            _ => None,
        }
    }
}

const HOUR: i64 = 3600;

/// The seeded world.
pub fn generate(config: WorldConfig) -> World {
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x0011_fe11_fe00);
    let users: Vec<WorldUser> = (0..config.users)
        .map(|_| make_user(&mut rng, &config))
        .collect();
    let mut timeline = Vec::new();
    basiq_updates(&mut rng, &config, &users, &mut timeline);
    outages(&mut rng, &config, &users, &mut timeline);
    for user in &users {
        user_life(&mut rng, &config, user, &mut timeline);
    }
    // Its own generator: the rest of the world is the same with or without it.
    cdr_incidents(&config, &mut timeline);
    let end = end_of(&config);
    timeline.retain(|t| t.at >= config.start && t.at < end);
    // Stable: what was generated first for one instant happens first.
    timeline.sort_by_key(|t| t.at);
    World {
        config,
        users,
        timeline,
    }
}

fn end_of(config: &WorldConfig) -> DateTime<Utc> {
    config.start + TimeDelta::days(i64::from(config.days))
}

fn secs(rng: &mut StdRng, low: i64, high: i64) -> TimeDelta {
    TimeDelta::seconds(rng.random_range(low..high.max(low + 1)))
}

/// One to three connections at distinct banks, healthy: used within the day, a job that
/// succeeded hours ago; a sixth of the open-banking consents end during the run.
fn make_user(rng: &mut StdRng, config: &WorldConfig) -> WorldUser {
    let id = uuid(rng);
    let n = rng.random_range(1..=3usize);
    // Banks are not equally popular: the first has a third of the connections.
    let mut banks: Vec<(&str, u32)> = INSTITUTIONS
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id, if i == 0 { 5 } else { 2 }))
        .collect();
    let mut connections = Vec::new();
    // A sixth of the users' consents end during the run (one consent, all their banks).
    let run = i64::from(config.days) * 24 * HOUR;
    let consent_ends = rng
        .random_ratio(1, 6)
        .then(|| config.start + secs(rng, 6 * HOUR, run.max(7 * HOUR)));
    for _ in 0..n {
        let total: u32 = banks.iter().map(|(_, w)| w).sum();
        let mut pick = rng.random_range(0..total);
        let at = banks
            .iter()
            .position(|(_, w)| {
                let here = pick < *w;
                pick = pick.saturating_sub(*w);
                here
            })
            .unwrap_or(0);
        let (institution, _) = banks.swap_remove(at);
        let method = if rng.random_bool(0.5) {
            "open-banking"
        } else {
            "web"
        };
        let mut c = ScriptedConnection::new_at(institution, method, config.start);
        c.id = uuid(rng);
        c.last_used = Some(config.start - secs(rng, HOUR, 20 * HOUR));
        if let (Some(expiry), Some(ends)) = (c.expiry.as_mut(), consent_ends) {
            *expiry = ends;
        }
        connections.push(c);
    }
    WorldUser { id, connections }
}

/// Basiq's own updates: twice a day per connection, at its own times (not for connections
/// that ask for a one-time code: Basiq cannot answer it either).
fn basiq_updates(
    rng: &mut StdRng,
    config: &WorldConfig,
    users: &[WorldUser],
    out: &mut Vec<Timed>,
) {
    for user in users {
        for c in user.connections.iter().filter(|c| !asks_code(c)) {
            let first = secs(rng, 0, 12 * HOUR);
            for half_day in 0..i64::from(config.days) * 2 {
                out.push(Timed {
                    at: config.start + first + TimeDelta::hours(12 * half_day),
                    event: WorldEvent::BasiqUpdate {
                        user_id: user.id.clone(),
                        connection_id: c.id.clone(),
                    },
                });
            }
        }
    }
}

/// A connection whose bank asks for a one-time code at every refresh.
pub fn asks_code(c: &ScriptedConnection) -> bool {
    c.mfa.unwrap_or_else(|| {
        INSTITUTIONS
            .iter()
            .any(|i| i.id == c.institution_id && i.mfa)
    })
}

/// Two outages a day: one told by `/connectors`, one only seen in the jobs failing (at the
/// two busiest connectors in turn, so the daemon can infer it).
fn outages(rng: &mut StdRng, config: &WorldConfig, users: &[WorldUser], out: &mut Vec<Timed>) {
    let mut busiest: Vec<((String, String), usize)> = Vec::new();
    for c in users.iter().flat_map(|u| &u.connections) {
        let key = (c.institution_id.clone(), c.method.clone());
        match busiest.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => busiest.push((key, 1)),
        }
    }
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for half in 0..i64::from(config.days) * 2 {
        let (day, told) = (half / 2, half % 2 == 0);
        let pick = if told {
            busiest.choose(rng)
        } else {
            busiest.get(usize::try_from(day).unwrap_or(0) % busiest.len().clamp(1, 2))
        };
        let Some(((institution_id, method), _)) = pick.cloned() else {
            continue;
        };
        let at = config.start + TimeDelta::days(day) + secs(rng, 2 * HOUR, 20 * HOUR);
        let hours = if told { (1, 5) } else { (5, 9) };
        let length = secs(rng, hours.0 * HOUR, hours.1 * HOUR);
        out.push(Timed {
            at,
            event: WorldEvent::BankDown {
                institution_id: institution_id.clone(),
                method: method.clone(),
                told,
            },
        });
        out.push(Timed {
            at: at + length,
            event: WorldEvent::BankUp {
                institution_id,
                method,
                told,
            },
        });
    }
}

/// The banks whose data holder says first that it is down, in turn (each maps to one CDR
/// brand: `crate::cdr_brand_id`).
pub const CDR_FIRST_BANKS: [&str; 2] = ["AU00004", "AU00001"];
/// The banks that announce maintenance, in turn (each maps to one CDR brand).
pub const MAINTENANCE_BANKS: [&str; 2] = ["AU00003", "AU00000"];

/// The banks' own words on the CDR, one incident a day, in turn: on even days a bank
/// ([`CDR_FIRST_BANKS`]) goes down and its data holder says `UNAVAILABLE` 10 to 30 minutes
/// before `/connectors` says `major-outage`, then `OK` within 10 minutes of Basiq saying
/// `operational` again (1 to 4 hours later); on odd days a bank ([`MAINTENANCE_BANKS`]) is
/// under maintenance for 1 to 2 hours inside the daily unattended window (00:00-06:00 in
/// Sydney: 13:00-19:00 UTC in November), announced 20 to 30 hours ahead. Each at a time its
/// open-banking connector has no other outage within an hour either side.
fn cdr_incidents(config: &WorldConfig, out: &mut Vec<Timed>) {
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x00cd_7e55_0b5e);
    let busy: Vec<(&str, Vec<Span>)> = CDR_FIRST_BANKS
        .iter()
        .chain(&MAINTENANCE_BANKS)
        .map(|b| (*b, down_periods(out, b)))
        .collect();
    let end = end_of(config);
    let free = |institution: &str, from: DateTime<Utc>, until: DateTime<Utc>| {
        let margin = TimeDelta::hours(1);
        from >= config.start
            && until < end
            && busy
                .iter()
                .filter(|(b, _)| *b == institution)
                .flat_map(|(_, periods)| periods)
                .all(|(down, up)| *up + margin <= from || until + margin <= *down)
    };
    for day in 0..i64::from(config.days) {
        let midnight = config.start + TimeDelta::days(day);
        let turn = usize::try_from(day / 2).unwrap_or(0);
        // The bank whose turn it is, or the other when it has no free time that day.
        let banks = if day % 2 == 0 {
            CDR_FIRST_BANKS
        } else {
            MAINTENANCE_BANKS
        };
        'banks: for institution in [banks[turn % 2], banks[(turn + 1) % 2]] {
            for _ in 0..50 {
                if day % 2 == 0 {
                    let reported = midnight + secs(&mut rng, 2 * HOUR, 20 * HOUR);
                    let flipped = reported + secs(&mut rng, 10 * 60, 30 * 60);
                    let up = flipped + secs(&mut rng, HOUR, 4 * HOUR);
                    let ok = up + secs(&mut rng, -10 * 60, 10 * 60);
                    if free(institution, reported, up.max(ok)) {
                        cdr_first(institution, [reported, flipped, up, ok], out);
                        break 'banks;
                    }
                } else {
                    // Whole minutes, as a data holder writes them.
                    let starts = midnight + TimeDelta::minutes(rng.random_range(13 * 60..17 * 60));
                    let ends = starts + TimeDelta::minutes(15 * rng.random_range(4..=8));
                    let announced = (starts - secs(&mut rng, 20 * HOUR, 30 * HOUR))
                        .max(config.start + TimeDelta::minutes(10));
                    if free(institution, starts, ends) {
                        maintenance(institution, [announced, starts, ends], out);
                        break 'banks;
                    }
                }
            }
        }
    }
}

/// A span of time: (from, until).
type Span = (DateTime<Utc>, DateTime<Utc>);

/// The periods the institution's open-banking connector is down in the timeline so far:
/// each `BankDown` with the `BankUp` after it.
fn down_periods(timeline: &[Timed], institution: &str) -> Vec<Span> {
    let here = |i: &str, m: &str| i == institution && is_open_banking(m);
    let (mut downs, mut ups) = (Vec::new(), Vec::new());
    for t in timeline {
        match &t.event {
            WorldEvent::BankDown {
                institution_id,
                method,
                ..
            } if here(institution_id, method) => downs.push(t.at),
            WorldEvent::BankUp {
                institution_id,
                method,
                ..
            } if here(institution_id, method) => ups.push(t.at),
            _ => {}
        }
    }
    downs.sort();
    ups.sort();
    downs
        .iter()
        .enumerate()
        .map(|(i, down)| {
            (
                *down,
                ups.get(i).copied().unwrap_or(DateTime::<Utc>::MAX_UTC),
            )
        })
        .collect()
}

/// The data holder reports the outage (`reported`), `/connectors` follows (`flipped`) and
/// says `operational` again (`up`), the data holder says `OK` (`ok`).
fn cdr_first(
    institution: &str,
    [reported, flipped, up, ok]: [DateTime<Utc>; 4],
    out: &mut Vec<Timed>,
) {
    let institution_id = institution.to_owned();
    let method = "open-banking".to_owned();
    out.push(Timed {
        at: reported,
        event: WorldEvent::CdrDown {
            institution_id: institution_id.clone(),
            explanation:
                "Our online banking platform is unavailable; we are working to restore it.".into(),
        },
    });
    out.push(Timed {
        at: flipped,
        event: WorldEvent::BankDown {
            institution_id: institution_id.clone(),
            method: method.clone(),
            told: true,
        },
    });
    out.push(Timed {
        at: up,
        event: WorldEvent::BankUp {
            institution_id: institution_id.clone(),
            method,
            told: true,
        },
    });
    out.push(Timed {
        at: ok,
        event: WorldEvent::CdrUp { institution_id },
    });
}

fn maintenance(
    institution: &str,
    [announced, starts, ends]: [DateTime<Utc>; 3],
    out: &mut Vec<Timed>,
) {
    let institution_id = institution.to_owned();
    out.push(Timed {
        at: announced,
        event: WorldEvent::MaintenanceAnnounced {
            institution_id: institution_id.clone(),
            starts_at: starts,
            ends_at: ends,
            explanation: "Scheduled upgrade of our core banking system.".into(),
        },
    });
    out.push(Timed {
        at: starts,
        event: WorldEvent::MaintenanceStarted {
            institution_id: institution_id.clone(),
        },
    });
    out.push(Timed {
        at: ends,
        event: WorldEvent::MaintenanceEnded { institution_id },
    });
}

/// An ISO 8601 duration in hours and minutes (`PT1H`, `PT1H45M`), as data holders write
/// them.
fn iso_duration(d: TimeDelta) -> String {
    let (hours, minutes) = (d.num_minutes() / 60, d.num_minutes() % 60);
    match (hours, minutes) {
        (0, m) => format!("PT{m}M"),
        (h, 0) => format!("PT{h}H"),
        (h, m) => format!("PT{h}H{m}M"),
    }
}

/// One user's week: logins about once a day, and now and then an incident on one of their
/// connections, fixed hours later.
fn user_life(rng: &mut StdRng, config: &WorldConfig, user: &WorldUser, out: &mut Vec<Timed>) {
    let end = end_of(config);
    let mut at = config.start + secs(rng, 0, 24 * HOUR);
    while at < end {
        out.push(Timed {
            at,
            event: WorldEvent::Login {
                user_id: user.id.clone(),
            },
        });
        at += secs(rng, 10 * HOUR, 40 * HOUR);
    }
    let consent_expiry = user
        .connections
        .iter()
        .filter_map(|c| c.expiry)
        .filter(|e| *e < end)
        .min();
    if let Some(expiry) = consent_expiry {
        consent_end(rng, user, expiry, false, out);
    }
    let days = i64::from(config.days);
    for c in &user.connections {
        // About one incident per connection in five days.
        for _ in 0..rng.random_range(0..=(days / 5 + 1)) {
            let start = config.start + secs(rng, HOUR, days * 24 * HOUR);
            incident(rng, user, c, start, out);
        }
    }
}

fn incident(
    rng: &mut StdRng,
    user: &WorldUser,
    c: &ScriptedConnection,
    start: DateTime<Utc>,
    out: &mut Vec<Timed>,
) {
    let (user_id, connection_id) = (user.id.clone(), c.id.clone());
    let open_banking = is_open_banking(&c.method);
    if open_banking && rng.random_ratio(1, 3) {
        return consent_end(rng, user, start, true, out);
    }
    let event = match rng.random_range(0..2) {
        0 => WorldEvent::PasswordChanged {
            user_id,
            connection_id,
        },
        _ => WorldEvent::BankMessage {
            user_id,
            connection_id,
        },
    };
    out.push(Timed { at: start, event });
    reconnect_later(rng, user, c, start, out);
}

fn consent_end(
    rng: &mut StdRng,
    user: &WorldUser,
    at: DateTime<Utc>,
    revoked: bool,
    out: &mut Vec<Timed>,
) {
    let user_id = user.id.clone();
    let event = if revoked {
        WorldEvent::ConsentRevoked { user_id }
    } else {
        WorldEvent::ConsentExpired { user_id }
    };
    out.push(Timed { at, event });
    out.push(Timed {
        at: at + secs(rng, 6 * HOUR, 48 * HOUR),
        event: WorldEvent::Reconsented {
            user_id: user.id.clone(),
        },
    });
}

fn reconnect_later(
    rng: &mut StdRng,
    user: &WorldUser,
    c: &ScriptedConnection,
    after: DateTime<Utc>,
    out: &mut Vec<Timed>,
) {
    out.push(Timed {
        at: after + secs(rng, 6 * HOUR, 48 * HOUR),
        event: WorldEvent::Reconnected {
            user_id: user.id.clone(),
            connection_id: c.id.clone(),
        },
    });
}

impl World {
    /// Puts the population into the simulator, each connection with a job that succeeded
    /// when it was last used.
    pub fn install(&self, sim: &Simulator) {
        for user in &self.users {
            for c in &user.connections {
                sim.add_connection(&user.id, c.clone());
                if let Some(used) = c.last_used {
                    sim.add_job(
                        &user.id,
                        super::ScriptedJob {
                            id: None,
                            connection_id: c.id.clone(),
                            created: used - TimeDelta::seconds(40),
                            updated: used,
                            outcome: Outcome::Success,
                            running: false,
                            with_source: true,
                        },
                    );
                }
            }
        }
    }
}

impl Simulator {
    /// Makes one world event happen now (a login does nothing here: the harness runs it).
    pub fn apply(&self, event: &WorldEvent) {
        let now = self.now();
        match event {
            WorldEvent::BasiqUpdate {
                user_id,
                connection_id,
            } => {
                self.basiq_update(user_id, connection_id);
            }
            WorldEvent::BankDown {
                institution_id,
                method,
                told,
            } => self.bank_down(institution_id, method, *told, true),
            WorldEvent::BankUp {
                institution_id,
                method,
                told,
            } => self.bank_down(institution_id, method, *told, false),
            WorldEvent::CdrDown {
                institution_id,
                explanation,
            } => {
                self.say_cdr_status(institution_id, "UNAVAILABLE", Some(explanation));
                self.set_failing(institution_id, "open-banking", Some(3));
            }
            WorldEvent::CdrUp { institution_id } => {
                self.say_cdr_status(institution_id, "OK", None);
            }
            WorldEvent::MaintenanceAnnounced {
                institution_id,
                starts_at,
                ends_at,
                explanation,
            } => {
                let outage = super::CdrOutage {
                    outage_time: starts_at.to_rfc3339(),
                    duration: iso_duration(*ends_at - *starts_at),
                    is_partial: Some(false),
                    explanation: explanation.clone(),
                };
                self.say_cdr_outages(institution_id, vec![outage]);
            }
            WorldEvent::MaintenanceStarted { institution_id } => {
                self.set_failing(institution_id, "open-banking", Some(2));
            }
            WorldEvent::MaintenanceEnded { institution_id } => {
                self.set_failing(institution_id, "open-banking", None);
                self.say_cdr_outages(institution_id, Vec::new());
            }
            WorldEvent::PasswordChanged { connection_id, .. } => {
                self.set_outcome(connection_id, user_fault("invalid-credentials"));
            }
            WorldEvent::BankMessage { connection_id, .. } => {
                self.set_outcome(
                    connection_id,
                    user_fault("account-not-accessible-requires-user-action"),
                );
            }
            WorldEvent::ConsentRevoked { user_id } => self.consent_ends(user_id, "revoked", now),
            WorldEvent::ConsentExpired { user_id } => self.consent_ends(user_id, "expired", now),
            WorldEvent::Reconsented { user_id } => {
                for connection_id in self.open_banking_of(user_id) {
                    self.reconnect(user_id, &connection_id, now, "consent.created");
                }
            }
            WorldEvent::Reconnected {
                user_id,
                connection_id,
            } => self.reconnect(user_id, connection_id, now, "connection.activated"),
            WorldEvent::Login { .. } => {}
        }
        self.send_pending_events();
    }

    /// What Basiq does by itself at this minute: its retries of failed updates (every 2
    /// hours after a failure). The harness calls it once per step.
    pub fn tick(&self) {
        let now = self.now();
        let due: Vec<(String, String)> = {
            let mut st = self.lock();
            st.settle(now);
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.basiq_retries)
                .into_iter()
                .partition(|(at, _, _)| *at <= now);
            st.basiq_retries = later;
            due.into_iter().map(|(_, u, c)| (u, c)).collect()
        };
        for (user_id, connection_id) in due {
            self.basiq_update(&user_id, &connection_id);
        }
        self.send_pending_events();
    }

    /// Basiq updates the connection on its own; `None` when it is not active (Basiq does not
    /// update those) or a job of it is running.
    pub fn basiq_update(&self, user_id: &str, connection_id: &str) -> Option<String> {
        let now = self.now();
        let step = self.inner.step;
        let mut st = self.lock();
        st.settle(now);
        let active = st
            .user(user_id)?
            .connections
            .iter()
            .any(|c| c.s.id == connection_id && c.s.status == "active");
        if !active || st.running_job(connection_id, now).is_some() {
            return None;
        }
        st.start_job(user_id, connection_id, JobOrigin::Basiq, step, now)
    }

    /// A bank fails every job at its connector (`down`), or works again; `told`: `/connectors`
    /// says `major-outage` meanwhile.
    pub fn bank_down(&self, institution_id: &str, method: &str, told: bool, down: bool) {
        self.set_failing(institution_id, method, down.then_some(3));
        if told {
            let status = if down { "major-outage" } else { "operational" };
            self.set_connector_status(institution_id, method, status);
        }
    }

    /// Every job at the connector fails from now on, every `misleading_every`-th with a code
    /// that looks like the user's (`Some`), or none does (`None`).
    pub fn set_failing(&self, institution_id: &str, method: &str, misleading_every: Option<u32>) {
        let now = self.now();
        let mut st = self.lock();
        st.settle(now);
        let key = (institution_id.to_owned(), method.to_owned());
        match misleading_every {
            Some(misleading_every) => {
                st.bank_failing.insert(
                    key,
                    super::state::BankFailing {
                        misleading_every,
                        jobs: 0,
                    },
                );
            }
            None => {
                st.bank_failing.remove(&key);
            }
        }
    }

    /// What the institution's data holder says on its CDR status now; nothing when the
    /// institution maps to no single brand.
    fn say_cdr_status(&self, institution_id: &str, status: &str, explanation: Option<&str>) {
        match super::cdr_brand_id(institution_id) {
            Some(brand) => {
                self.set_cdr_status(brand, status, explanation);
            }
            None => tracing::warn!(institution_id, "world: no CDR brand to speak for it"),
        }
    }

    /// The planned outages the institution's data holder lists from now on.
    fn say_cdr_outages(&self, institution_id: &str, outages: Vec<super::CdrOutage>) {
        match super::cdr_brand_id(institution_id) {
            Some(brand) => {
                self.set_cdr_outages(brand, outages);
            }
            None => tracing::warn!(institution_id, "world: no CDR brand to speak for it"),
        }
    }

    /// The user's open-banking connections.
    pub fn open_banking_of(&self, user_id: &str) -> Vec<String> {
        self.lock()
            .user(user_id)
            .map(|u| {
                u.connections
                    .iter()
                    .filter(|c| is_open_banking(&c.s.method))
                    .map(|c| c.s.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The user's consent ends: every open-banking connection of theirs stops, and Basiq
    /// sends one event about the user.
    fn consent_ends(&self, user_id: &str, how: &str, now: DateTime<Utc>) {
        let ids = self.open_banking_of(user_id);
        {
            let mut st = self.lock();
            st.settle(now);
            for id in ids {
                let Some(c) = st.connection_mut(&id) else {
                    continue;
                };
                if how == "expired" {
                    c.s.expiry = Some(now);
                    c.s.status = "invalid".into();
                } else {
                    c.s.status = "revoked".into();
                }
            }
        }
        self.emit_event(&format!("consent.{how}"), user_id, None);
    }

    /// The user connects again: active, a fresh consent for open banking, and a job of theirs
    /// that succeeds.
    pub fn reconnect(&self, user_id: &str, connection_id: &str, now: DateTime<Utc>, event: &str) {
        let step = self.inner.step;
        {
            let mut st = self.lock();
            st.settle(now);
            let Some(c) = st.connection_mut(connection_id) else {
                return;
            };
            c.s.status = "active".into();
            c.s.outcome = Outcome::Success;
            if is_open_banking(&c.s.method) {
                c.s.expiry = Some(now + TimeDelta::days(365));
            }
            st.start_job(user_id, connection_id, JobOrigin::User, step, now);
        }
        self.emit_event(event, user_id, Some(connection_id));
    }

    /// Every job the simulator knows, as the world saw it at its clock's now.
    pub fn job_records(&self) -> Vec<JobRecord> {
        let now = self.now();
        let mut st = self.lock();
        st.settle(now);
        st.jobs.iter().map(|j| j.record(now)).collect()
    }

    /// When the user's lists (a user id) or one connection alone (a connection id) were
    /// read, in world mode.
    pub fn reads_of(&self, id: &str) -> Vec<DateTime<Utc>> {
        self.lock().reads.get(id).cloned().unwrap_or_default()
    }
}

fn user_fault(code: &str) -> Outcome {
    Outcome::fail(
        "verify-credentials",
        code,
        "The user must act",
        "The institution refused the connection until the user acts.",
    )
}
