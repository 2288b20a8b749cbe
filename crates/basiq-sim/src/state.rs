//! The simulator's state behind one mutex, and how it renders into Basiq's JSON shapes.
//!
//! Nothing in here awaits: a handler locks, reads or changes, renders, and unlocks.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::{Case, Counters, Fault, Outcome, Route, ScriptedConnection, ScriptedJob};

/// Basiq forgets jobs after this long: `/users/{id}/jobs` lists only younger ones.
pub(super) const JOB_RETENTION: TimeDelta = TimeDelta::days(7);
/// Open-banking refreshes Basiq accepts per connection in 24 hours.
pub(super) const OPEN_BANKING_DAILY_CAP: usize = 20;

pub(super) const VERIFY: &str = "verify-credentials";
pub(super) const MFA: &str = "mfa-challenge";
pub(super) const ACCOUNTS: &str = "retrieve-accounts";
pub(super) const TRANSACTIONS: &str = "retrieve-transactions";
const STANDARD_STEPS: [&str; 3] = [VERIFY, ACCOUNTS, TRANSACTIONS];

/// Failure codes after which Basiq marks the connection `invalid`: the user has to act.
const USER_SIDE_CODES: [&str; 8] = [
    "invalid-credentials",
    "account-not-accessible-requires-user-action",
    "user-action-required",
    "authorization-failed",
    "invalid-connection",
    "invalid-username-or-password",
    "locked-account",
    "multifactor-required",
];

pub(super) struct State {
    pub users: Vec<User>,
    /// Every job, oldest first.
    pub jobs: Vec<Job>,
    pub connectors: Vec<Connector>,
    /// Issued tokens and when each stops working.
    pub tokens: HashMap<String, DateTime<Utc>>,
    pub counters: Counters,
    pub faults: HashMap<Route, VecDeque<(Fault, u32)>>,
    pub global_delay: Duration,
    pub route_delays: HashMap<Route, Duration>,
    /// Chaos per route: every n-th request gets the next fault of the list, in turn.
    pub chaos: HashMap<Route, Chaos>,
    /// For ids and tokens made while serving; seeded, so runs repeat.
    pub rng: StdRng,
    pub cases: HashMap<String, Case>,
    /// Items served wrong and other shape switches.
    pub shapes: super::shapes::Shapes,
    /// A revoked key and faults aimed at one user.
    pub access: AccessFaults,
    /// Where each user sits in `users`: a lookup per request must not walk the population.
    pub user_index: HashMap<String, usize>,
    /// Each user's jobs (positions in `jobs`, oldest first); rebuilt after `jobs` changes.
    pub job_index: Option<HashMap<String, Vec<usize>>>,
    /// Jobs still running whose outcome is not yet applied: `settle` has work only then.
    pub live_jobs: usize,
    /// Basiq's events, oldest first.
    pub events: Vec<super::SimEvent>,
    /// Events recorded by a change of state (a job's end) whose webhooks are not sent yet.
    pub pending_events: Vec<super::SimEvent>,
    /// World mode: jobs' ends send events, reads are logged.
    pub world: bool,
    /// World mode: when each user's lists (or one of its connections) were read.
    pub reads: HashMap<String, Vec<DateTime<Utc>>>,
    /// Connectors whose bank fails every job while set (an outage, whether `/connectors`
    /// says so or not), by (institution id, method).
    pub bank_failing: HashMap<(String, String), BankFailing>,
    /// World mode: Basiq's own retries of its failed updates, (when, user, connection).
    pub basiq_retries: Vec<(DateTime<Utc>, String, String)>,
    /// The CDR Register's brands and each brand's discovery answers, faults and counters.
    pub cdr: super::cdr::CdrState,
}

/// A bank failing every job at one connector.
#[derive(Clone, Debug, Default)]
pub struct BankFailing {
    /// Every n-th job fails with a code that looks like the user's
    /// (`account-not-accessible-requires-user-action`) without invalidating the connection:
    /// the bank's error page read wrong (0: never).
    pub misleading_every: u32,
    pub jobs: u32,
}

/// Faults handed out every `every`-th request of a route, cycling through `faults`.
pub(super) struct Chaos {
    pub every: u32,
    pub faults: Vec<Fault>,
    pub seen: u64,
    pub next: usize,
}

impl Chaos {
    /// The fault for this request, if it is one of every `every`.
    pub fn on_request(&mut self) -> Option<Fault> {
        self.seen += 1;
        if self.faults.is_empty() || !self.seen.is_multiple_of(u64::from(self.every.max(1))) {
            return None;
        }
        let fault = self.faults[self.next % self.faults.len()].clone();
        self.next += 1;
        Some(fault)
    }
}

/// Faults about who may do what: a revoked API key, and faults aimed at one user's routes.
#[derive(Default)]
pub(super) struct AccessFaults {
    /// `POST /token` answers this status whatever the key.
    pub revoked_key: Option<u16>,
    pub user_faults: HashMap<String, VecDeque<(Fault, u32)>>,
}

impl AccessFaults {
    /// The next fault queued for the user whose routes `path` is under (`/users/{id}/...`).
    pub fn next_user_fault(&mut self, path: &str) -> Option<Fault> {
        let user_id = path.strip_prefix("/users/")?.split('/').next()?;
        let queue = self.user_faults.get_mut(user_id)?;
        let (fault, left) = queue.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
        }
        Some(fault)
    }
}

pub(super) struct User {
    pub id: String,
    pub email: String,
    pub mobile: String,
    pub first_name: String,
    pub last_name: String,
    pub connections: Vec<Conn>,
}

pub(super) struct Conn {
    pub s: ScriptedConnection,
    /// Serve an open-banking method as `openbanking` (Basiq spells it both ways).
    pub spell_openbanking: bool,
    /// When refreshes were accepted (202), for the open-banking daily cap.
    pub accepted: Vec<DateTime<Utc>>,
}

pub(super) struct Job {
    pub id: String,
    pub user_id: String,
    pub connection_id: String,
    pub institution_id: String,
    pub created: DateTime<Utc>,
    pub outcome: Outcome,
    pub timing: Timing,
    pub source: SourceLink,
    /// Serve the failure result as an array of one object (one Basiq guide does).
    pub result_as_array: bool,
    /// `jobType`; `None`: `connection`.
    pub job_type: Option<String>,
    /// A user-side failure that invalidates its connection when it ends (false: a bank's
    /// failure dressed as the user's).
    pub invalidates: bool,
    /// Who asked for it.
    pub origin: super::JobOrigin,
}

pub(super) enum Timing {
    /// Started by a refresh (or the population): one step per `step`, from `created`.
    /// `applied` once the end has changed the connection.
    Live { step: Duration, applied: bool },
    /// Written by hand or by the population with fixed times.
    Fixed {
        updated: DateTime<Utc>,
        running: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SourceLink {
    Always,
    Never,
    /// Missing while the job runs, present once it ends.
    WhenFinished,
}

pub(super) struct Institution {
    pub id: &'static str,
    pub name: &'static str,
    pub short_name: &'static str,
    pub tier: &'static str,
    pub mfa: bool,
    /// The Australian Business Number as Basiq writes it: with spaces for some banks, plain
    /// digits for others, so the daemon has to compare digits. `None`: Basiq has none.
    pub abn: Option<&'static str>,
    /// The Australian Company Number, nine digits.
    pub acn: Option<&'static str>,
    /// The bank's number in the CDR (made up, in the shape Basiq serves).
    pub cdr_provider_number: Option<&'static str>,
}

pub(super) struct Connector {
    pub institution: &'static Institution,
    /// `web` or `open-banking`.
    pub method: String,
    pub status: String,
    /// Serve the method as `openbanking`, the spelling of Basiq's connector spec.
    pub spell_openbanking: bool,
    /// The institution's name as served, when a test renamed it (hostile text, say).
    pub name: Option<String>,
}

/// The six banks the simulator offers, each for `web` and `open-banking`.
pub(super) const INSTITUTIONS: [Institution; 6] = [
    Institution {
        id: "AU00000",
        name: "Hooli Bank",
        short_name: "Hooli",
        tier: "4",
        mfa: false,
        abn: Some("11 111 111 111"),
        acn: Some("111111111"),
        cdr_provider_number: Some("ADRBNK000100"),
    },
    Institution {
        id: "AU00001",
        name: "Aviato Bank",
        short_name: "Aviato",
        tier: "4",
        mfa: false,
        abn: Some("22222222222"),
        acn: Some("222222222"),
        cdr_provider_number: Some("ADRBNK000101"),
    },
    Institution {
        id: "AU00002",
        name: "Pied Piper Bank",
        short_name: "Pied Piper",
        tier: "4",
        mfa: true,
        abn: Some("33 333 333 333"),
        acn: Some("333333333"),
        cdr_provider_number: Some("ADRBNK000102"),
    },
    Institution {
        id: "AU00003",
        name: "Nucleus Bank",
        short_name: "Nucleus",
        tier: "4",
        mfa: false,
        abn: Some("44444444444"),
        acn: Some("444444444"),
        cdr_provider_number: Some("ADRBNK000103"),
    },
    Institution {
        id: "AU00004",
        name: "Raviga Credit Union",
        short_name: "Raviga",
        tier: "4",
        mfa: false,
        abn: Some("55 555 555 555"),
        acn: Some("555555555"),
        cdr_provider_number: Some("ADRBNK000104"),
    },
    Institution {
        id: "AU00005",
        name: "Bachmanity Bank",
        short_name: "Bachmanity",
        tier: "4",
        mfa: false,
        abn: Some("66666666666"),
        acn: Some("666666666"),
        cdr_provider_number: Some("ADRBNK000105"),
    },
];

/// An institution the simulator does not know, for connections added by hand.
static UNLISTED: Institution = Institution {
    id: "AU99999",
    name: "Unlisted Bank",
    short_name: "Unlisted",
    tier: "4",
    mfa: false,
    abn: None,
    acn: None,
    cdr_provider_number: None,
};

/// What a job looks like at one moment.
pub(super) struct JobView {
    pub steps: Vec<Value>,
    pub finished: bool,
    pub updated: DateTime<Utc>,
}

impl State {
    pub fn user(&self, user_id: &str) -> Option<&User> {
        self.user_index.get(user_id).map(|&i| &self.users[i])
    }

    pub fn user_mut(&mut self, user_id: &str) -> Option<&mut User> {
        self.user_index.get(user_id).map(|&i| &mut self.users[i])
    }

    /// Rebuilds the user index after `users` was replaced or reordered.
    pub fn reindex_users(&mut self) {
        self.user_index = self
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.id.clone(), i))
            .collect();
    }

    /// Builds the per-user job index if `jobs` changed since it was last built.
    pub fn index_jobs(&mut self) {
        if self.job_index.is_none() {
            let mut index: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, j) in self.jobs.iter().enumerate() {
                index.entry(j.user_id.clone()).or_default().push(i);
            }
            self.job_index = Some(index);
        }
    }

    /// The user's jobs, oldest first; [`State::index_jobs`] first, or none are found.
    pub fn user_jobs(&self, user_id: &str) -> impl Iterator<Item = &Job> {
        let positions = self
            .job_index
            .as_ref()
            .and_then(|index| index.get(user_id))
            .map(Vec::as_slice)
            .unwrap_or_default();
        positions.iter().map(|&i| &self.jobs[i])
    }

    pub fn connection_mut(&mut self, connection_id: &str) -> Option<&mut Conn> {
        self.users
            .iter_mut()
            .flat_map(|u| u.connections.iter_mut())
            .find(|c| c.s.id == connection_id)
    }

    pub fn new_id(&mut self) -> String {
        uuid(&mut self.rng)
    }

    /// A JWT-looking token: header, claims and a random signature, base64url.
    pub fn new_token(&mut self, ttl: Duration, now: DateTime<Utc>) -> String {
        let header = base64(br#"{"alg":"HS256","typ":"JWT"}"#, URL_SAFE, false);
        let jti = self.new_id();
        let exp = now.timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = format!(
            r#"{{"partnerid":"simulator","scope":"SERVER_ACCESS","jti":"{jti}","exp":{exp}}}"#
        );
        let claims = base64(claims.as_bytes(), URL_SAFE, false);
        let mut sig = [0u8; 32];
        self.rng.fill(&mut sig[..]);
        let token = format!("{header}.{claims}.{}", base64(&sig, URL_SAFE, false));
        let expires = TimeDelta::from_std(ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.tokens.insert(token.clone(), expires);
        self.counters.issued_tokens.push(token.clone());
        token
    }

    pub fn expire_tokens(&mut self, now: DateTime<Utc>) {
        for expiry in self.tokens.values_mut() {
            *expiry = now;
        }
    }

    pub fn set_connector_status(&mut self, institution_id: &str, method: &str, status: &str) {
        let method = if method == "openbanking" {
            "open-banking"
        } else {
            method
        };
        if let Some(c) = self
            .connectors
            .iter_mut()
            .find(|c| c.institution.id == institution_id && c.method == method)
        {
            c.status = status.to_owned();
            return;
        }
        let institution = INSTITUTIONS
            .iter()
            .find(|i| i.id == institution_id)
            .unwrap_or(&UNLISTED);
        self.connectors.push(Connector {
            institution,
            method: method.to_owned(),
            status: status.to_owned(),
            spell_openbanking: false,
            name: None,
        });
    }

    /// Serves the institution under another name from now on (every method).
    pub fn set_institution_name(&mut self, institution_id: &str, name: &str) {
        for c in self
            .connectors
            .iter_mut()
            .filter(|c| c.institution.id == institution_id)
        {
            c.name = Some(name.to_owned());
        }
    }

    pub fn add_user(&mut self, user_id: &str) {
        if self.user(user_id).is_some() {
            return;
        }
        let short: String = user_id.chars().take(8).collect();
        self.user_index.insert(user_id.to_owned(), self.users.len());
        self.users.push(User {
            id: user_id.to_owned(),
            email: format!("user-{short}@example.com"),
            mobile: "+61400000000".to_owned(),
            first_name: "Added".to_owned(),
            last_name: "User".to_owned(),
            connections: Vec::new(),
        });
    }

    pub fn remove_user(&mut self, user_id: &str) {
        self.users.retain(|u| u.id != user_id);
        self.reindex_users();
        self.jobs.retain(|j| j.user_id != user_id);
        self.job_index = None;
        self.live_jobs = self.jobs.iter().filter(|j| j.is_unsettled()).count();
    }

    pub fn add_connection(&mut self, user_id: &str, mut conn: ScriptedConnection) {
        if conn.id.is_empty() {
            conn.id = self.new_id();
        }
        self.add_user(user_id);
        let Some(user) = self.user_mut(user_id) else {
            return;
        };
        let conn = Conn {
            s: conn,
            spell_openbanking: false,
            accepted: Vec::new(),
        };
        match user.connections.iter_mut().find(|c| c.s.id == conn.s.id) {
            Some(existing) => *existing = conn,
            None => user.connections.push(conn),
        }
    }

    pub fn add_job(&mut self, user_id: &str, job: ScriptedJob) {
        let institution_id = self.user(user_id).and_then(|u| {
            u.connections
                .iter()
                .find(|c| c.s.id == job.connection_id)
                .map(|c| c.s.institution_id.clone())
        });
        let Some(institution_id) = institution_id else {
            tracing::warn!(
                user_id,
                connection_id = %job.connection_id,
                "simulator: add_job for an unknown user or connection, ignored"
            );
            return;
        };
        let id = match job.id {
            Some(id) => id,
            None => self.new_id(),
        };
        self.push_job(Job {
            id,
            user_id: user_id.to_owned(),
            connection_id: job.connection_id,
            institution_id,
            created: job.created,
            outcome: job.outcome,
            timing: Timing::Fixed {
                updated: job.updated,
                running: job.running,
            },
            source: if job.with_source {
                SourceLink::Always
            } else {
                SourceLink::Never
            },
            result_as_array: false,
            job_type: None,
            invalidates: false,
            origin: super::JobOrigin::Scripted,
        });
    }

    /// Keeps `jobs` ordered by creation time, so lists come out oldest first.
    pub fn push_job(&mut self, job: Job) {
        if job.is_unsettled() {
            self.live_jobs += 1;
        }
        let at = self.jobs.partition_point(|j| j.created <= job.created);
        self.jobs.insert(at, job);
        self.job_index = None;
    }

    /// Applies every job that has finished by `now` to its connection, in finishing order.
    pub fn settle(&mut self, now: DateTime<Utc>) {
        if self.live_jobs == 0 {
            return;
        }
        let mut done: Vec<(DateTime<Utc>, usize)> = self
            .jobs
            .iter()
            .enumerate()
            .filter_map(|(i, j)| match j.timing {
                Timing::Live { applied: false, .. } => {
                    let view = j.view(now);
                    view.finished.then_some((view.updated, i))
                }
                _ => None,
            })
            .collect();
        done.sort();
        for (finished_at, i) in done {
            let (user_id, connection_id, outcome, invalidates, origin) = {
                let job = &mut self.jobs[i];
                if let Timing::Live { applied, .. } = &mut job.timing {
                    *applied = true;
                }
                self.live_jobs = self.live_jobs.saturating_sub(1);
                (
                    job.user_id.clone(),
                    job.connection_id.clone(),
                    job.outcome.clone(),
                    job.invalidates,
                    job.origin,
                )
            };
            // Basiq retries a failed update of its own every 2 hours (not one the user must
            // act on).
            let failed = matches!(outcome, Outcome::Fail { .. });
            if self.world && failed && !invalidates && origin == super::JobOrigin::Basiq {
                self.basiq_retries.push((
                    finished_at + TimeDelta::hours(2),
                    user_id.clone(),
                    connection_id.clone(),
                ));
            }
            let world = self.world;
            let Some(conn) = self
                .user_mut(&user_id)
                .and_then(|u| u.connections.iter_mut().find(|c| c.s.id == connection_id))
            else {
                continue;
            };
            let mut invalidated = false;
            match outcome {
                Outcome::Success => {
                    conn.s.last_used = Some(finished_at);
                    conn.s.status = "active".to_owned();
                }
                Outcome::Fail { code, .. } if is_user_side(&code) && invalidates => {
                    invalidated = conn.s.status == "active";
                    conn.s.status = "invalid".to_owned();
                }
                _ => {}
            }
            if invalidated && world {
                // Basiq tells the app when a job finds the user must act.
                let event = self.record_event(
                    "connection.invalidated",
                    &user_id,
                    Some(&connection_id),
                    finished_at,
                );
                self.pending_events.push(event);
            }
        }
    }

    /// Records one of Basiq's events (served by `/events` from now on); the caller sends its
    /// webhook.
    pub fn record_event(
        &mut self,
        event_type: &str,
        user_id: &str,
        connection_id: Option<&str>,
        at: DateTime<Utc>,
    ) -> super::SimEvent {
        let (entity, kind) = event_type.split_once('.').unwrap_or(("user", event_type));
        let path = match connection_id {
            Some(c) => format!("/users/{user_id}/connections/{c}"),
            None => format!("/users/{user_id}"),
        };
        let id: String = {
            let a = self.new_id().replace('-', "");
            let b = self.new_id().replace('-', "");
            format!("{a}{b}")
        };
        let event = super::SimEvent {
            id,
            created: at,
            entity: entity.to_owned(),
            event_type: kind.to_owned(),
            user_id: user_id.to_owned(),
            path,
        };
        self.events.push(event.clone());
        event
    }

    /// How a job started now at this connection ends: the connection's own outcome, unless
    /// its bank is failing (then a bank-side failure, now and then one that looks like the
    /// user's but is not). The flag: a user-side failure that invalidates the connection.
    pub fn job_outcome(
        &mut self,
        institution_id: &str,
        method: &str,
        own: &Outcome,
    ) -> (Outcome, bool) {
        let method = if is_open_banking(method) {
            "open-banking"
        } else {
            method
        };
        if let Some(failing) = self
            .bank_failing
            .get_mut(&(institution_id.to_owned(), method.to_owned()))
        {
            failing.jobs += 1;
            let misleading = failing.misleading_every > 0
                && failing.jobs.is_multiple_of(failing.misleading_every);
            let outcome = if misleading {
                Outcome::fail(
                    ACCOUNTS,
                    "account-not-accessible-requires-user-action",
                    "Account not accessible",
                    "The bank's site answered with a page that could not be read.",
                )
            } else {
                Outcome::fail(
                    ACCOUNTS,
                    "service-unavailable",
                    "Service unavailable",
                    "The institution is not available.",
                )
            };
            return (outcome, false);
        }
        let invalidates = matches!(own, Outcome::Fail { code, .. } if is_user_side(code));
        (own.clone(), invalidates)
    }

    /// Starts a live job for a connection (a refresh, Basiq's own update, a reconnection).
    pub fn start_job(
        &mut self,
        user_id: &str,
        connection_id: &str,
        origin: super::JobOrigin,
        step: Duration,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let (institution_id, method, own) = {
            let conn = self
                .user(user_id)?
                .connections
                .iter()
                .find(|c| c.s.id == connection_id)?;
            (
                conn.s.institution_id.clone(),
                conn.s.method.clone(),
                conn.s.outcome.clone(),
            )
        };
        let (outcome, invalidates) = if origin == super::JobOrigin::User {
            (Outcome::Success, false)
        } else {
            self.job_outcome(&institution_id, &method, &own)
        };
        let id = self.new_id();
        self.push_job(Job {
            id: id.clone(),
            user_id: user_id.to_owned(),
            connection_id: connection_id.to_owned(),
            institution_id,
            created: now,
            outcome,
            timing: Timing::Live {
                step,
                applied: false,
            },
            source: SourceLink::Always,
            result_as_array: false,
            job_type: None,
            invalidates,
            origin,
        });
        Some(id)
    }

    /// The newest job of the connection that is still running at `now`.
    pub fn running_job(&self, connection_id: &str, now: DateTime<Utc>) -> Option<&Job> {
        self.jobs
            .iter()
            .rev()
            .filter(|j| j.connection_id == connection_id)
            .find(|j| !j.view(now).finished)
    }
}

pub(super) fn is_user_side(code: &str) -> bool {
    USER_SIDE_CODES.contains(&code)
}

pub(super) fn is_open_banking(method: &str) -> bool {
    method == "open-banking" || method == "openbanking"
}

/// Basiq's timestamp format: seconds, `Z`.
pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The step list an outcome walks through, and the index of the step it ends on.
fn layout(outcome: &Outcome) -> (Vec<String>, usize) {
    let standard = || {
        STANDARD_STEPS
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
    };
    match outcome {
        Outcome::Success => (standard(), STANDARD_STEPS.len() - 1),
        Outcome::Fail { step, .. } => {
            let mut titles = standard();
            let at = match titles.iter().position(|t| t == step) {
                Some(at) => at,
                None => {
                    titles.push(step.clone());
                    titles.len() - 1
                }
            };
            (titles, at)
        }
        Outcome::MfaPending => (
            [VERIFY, MFA, ACCOUNTS, TRANSACTIONS]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            1,
        ),
        Outcome::Hang => (standard(), 1),
    }
}

impl Job {
    /// What the job is and how it ended, as of `now`.
    pub fn record(&self, now: DateTime<Utc>) -> super::JobRecord {
        let view = self.view(now);
        let (success, code) = match &self.outcome {
            Outcome::Success => (view.finished, None),
            Outcome::Fail { code, .. } => (false, view.finished.then(|| code.clone())),
            _ => (false, None),
        };
        super::JobRecord {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            connection_id: self.connection_id.clone(),
            origin: self.origin,
            created: self.created,
            ended: view.finished.then_some(view.updated),
            success,
            code,
            users_fault: self.invalidates,
        }
    }

    /// The job at `now`.
    ///
    /// Running, with its outcome not yet applied to its connection.
    pub fn is_unsettled(&self) -> bool {
        matches!(self.timing, Timing::Live { applied: false, .. })
    }

    /// A live job moves one step per `step`: step k is `in-progress` during
    /// `[created + k*step, created + (k+1)*step)` and done after. `MfaPending` and `Hang` stop
    /// moving at their second step. A fixed job is either done or frozen on its last step.
    pub fn view(&self, now: DateTime<Utc>) -> JobView {
        let (titles, end) = layout(&self.outcome);
        let forever = matches!(self.outcome, Outcome::MfaPending | Outcome::Hang);
        // `stage` = how many step periods have passed; end + 1 means finished.
        let (stage, updated) = match self.timing {
            Timing::Live { step, .. } => {
                let elapsed = (now - self.created).to_std().unwrap_or_default();
                let periods = if step.is_zero() {
                    u128::MAX
                } else {
                    elapsed.as_nanos() / step.as_nanos()
                };
                let cap = if forever { end } else { end + 1 };
                let stage = usize::try_from(periods).unwrap_or(usize::MAX).min(cap);
                let moved = step.saturating_mul(u32::try_from(stage).unwrap_or(u32::MAX));
                let updated = self.created + TimeDelta::from_std(moved).unwrap_or_default();
                (stage, updated)
            }
            Timing::Fixed { updated, running } => {
                let stage = if running || forever { end } else { end + 1 };
                (stage, updated)
            }
        };
        let finished = !forever && stage > end;
        let steps = titles
            .iter()
            .enumerate()
            .map(|(i, title)| {
                let (status, result) = self.step_state(i, title, stage, end);
                json!({"title": title, "status": status, "result": result})
            })
            .collect();
        JobView {
            steps,
            finished,
            updated,
        }
    }

    fn step_state(&self, i: usize, title: &str, stage: usize, end: usize) -> (&'static str, Value) {
        match &self.outcome {
            Outcome::MfaPending => match i {
                0 => ("in-progress", Value::Null),
                1 if stage >= 1 => (
                    "in-progress",
                    json!({
                        "type": "mfa",
                        "method": "token",
                        "input": [{"type": "text", "name": "otp", "label": "One-time password"}],
                        "expiryMs": 120000
                    }),
                ),
                _ => ("pending", Value::Null),
            },
            // Steps after the failing one never start.
            Outcome::Fail { .. } if i > end => ("pending", Value::Null),
            Outcome::Fail {
                code,
                title: error_title,
                detail,
                ..
            } if i == end && stage > end => {
                let error = json!({"code": code, "title": error_title, "detail": detail});
                // An empty code: Basiq's recorded failures with `"result": null`.
                let result = if code.is_empty() {
                    Value::Null
                } else if self.result_as_array {
                    Value::Array(vec![error])
                } else {
                    error
                };
                ("failed", result)
            }
            _ if i < stage => (
                "success",
                json!({"type": "link", "url": self.link_for(title)}),
            ),
            _ if i == stage => ("in-progress", Value::Null),
            _ => ("pending", Value::Null),
        }
    }

    /// The relative url a successful step links to, as Basiq writes it.
    fn link_for(&self, title: &str) -> String {
        let user = &self.user_id;
        let inst = &self.institution_id;
        match title {
            ACCOUNTS => format!("/users/{user}/accounts?filter=institution.id.eq('{inst}')"),
            TRANSACTIONS => {
                format!("/users/{user}/transactions?filter=institution.id.eq('{inst}')")
            }
            _ => format!("/users/{user}/connections/{}", self.connection_id),
        }
    }

    pub fn to_json(&self, base: &str, now: DateTime<Utc>) -> Value {
        let view = self.view(now);
        let mut links = json!({"self": format!("{base}/jobs/{}", self.id)});
        let show_source = match self.source {
            SourceLink::Always => true,
            SourceLink::Never => false,
            SourceLink::WhenFinished => view.finished,
        };
        if show_source {
            links["source"] = json!(format!(
                "{base}/users/{}/connections/{}",
                self.user_id, self.connection_id
            ));
        }
        json!({
            "type": "job",
            "id": self.id,
            "created": ts(self.created),
            "updated": ts(view.updated),
            "jobType": self.job_type.as_deref().unwrap_or("connection"),
            "institution": institution_ref(base, &self.institution_id),
            "steps": view.steps,
            "links": links,
        })
    }
}

pub(super) fn job_stub(base: &str, id: &str) -> Value {
    json!({"type": "job", "id": id, "links": {"self": format!("{base}/jobs/{id}")}})
}

pub(super) fn institution_ref(base: &str, id: &str) -> Value {
    json!({"type": "institution", "id": id, "links": {"self": format!("{base}/institutions/{id}")}})
}

impl User {
    pub fn to_json(&self, base: &str) -> Value {
        let me = format!("{base}/users/{}", self.id);
        let connections: Vec<Value> = self
            .connections
            .iter()
            .map(|c| {
                json!({
                    "type": "connection",
                    "id": c.s.id,
                    "links": {"self": format!("{me}/connections/{}", c.s.id)},
                })
            })
            .collect();
        json!({
            "type": "user",
            "id": self.id,
            "email": self.email,
            "mobile": self.mobile,
            "name": format!("{} {}", self.first_name, self.last_name),
            "firstName": self.first_name,
            "middleName": "",
            "lastName": self.last_name,
            "connections": {"type": "list", "count": connections.len(), "data": connections},
            "accounts": {"type": "list", "count": 0, "data": []},
            "links": {
                "self": me,
                "accounts": format!("{me}/accounts"),
                "connections": format!("{me}/connections"),
                "transactions": format!("{me}/transactions"),
                "auth_link": null,
            },
        })
    }
}

impl Conn {
    pub fn to_json(&self, base: &str, user_id: &str) -> Value {
        let s = &self.s;
        let me = format!("{base}/users/{user_id}");
        let inst = &s.institution_id;
        let method = if self.spell_openbanking && s.method == "open-banking" {
            "openbanking"
        } else {
            s.method.as_str()
        };
        let mfa_enabled = s
            .mfa
            .unwrap_or_else(|| INSTITUTIONS.iter().any(|i| i.id == inst && i.mfa));
        let mut out = json!({
            "type": "connection",
            "id": s.id,
            "status": s.status,
            "method": method,
            "createdDate": ts(s.created),
            "expiryDate": s.expiry.map(ts).unwrap_or_default(),
            "mfaEnabled": mfa_enabled,
            "institution": institution_ref(base, inst),
            "links": {
                "self": format!("{me}/connections/{}", s.id),
                "user": me,
                "accounts": format!("{me}/accounts?filter=institution.id.eq('{inst}')"),
                "transactions": format!("{me}/transactions?filter=institution.id.eq('{inst}')"),
                "institution": format!("{base}/institutions/{inst}"),
            },
        });
        if s.recorded_shape {
            let o = out.as_object_mut().expect("an object");
            o.remove("method");
            o.remove("mfaEnabled");
            if s.expiry.is_none() {
                o.remove("expiryDate");
            }
        }
        // Never-activated connections have no lastUsed at all.
        let never_used = matches!(s.status.as_str(), "pending" | "pre-init" | "init");
        if let (Some(last), false) = (s.last_used, never_used) {
            out["lastUsed"] = json!(ts(last));
        }
        out
    }
}

impl Connector {
    pub fn to_json(&self, base: &str) -> Value {
        let i = self.institution;
        let web = self.method == "web";
        // Stable, made-up averages that differ by bank.
        let n: u64 = i.id.bytes().map(u64::from).sum::<u64>() % 7;
        let verify = 6_000 + n * 700 + if web { 2_000 } else { 0 };
        let accounts = 3_000 + n * 300;
        let transactions = 6_000 + n * 900;
        let authorization = if i.mfa { "user-mfa" } else { "user" };
        let scopes: Vec<&str> = if web {
            Vec::new()
        } else {
            vec!["bank:accounts.basic:read", "bank:transactions:read"]
        };
        let method = if self.spell_openbanking && self.method == "open-banking" {
            "openbanking"
        } else {
            self.method.as_str()
        };
        let mut out = json!({
            "type": "connector",
            "id": i.id,
            "method": method,
            "stage": "live",
            "status": self.status,
            "institution": {
                "type": "Test Bank",
                "name": self.name.as_deref().unwrap_or(i.name),
                "shortName": i.short_name,
                "tier": i.tier,
                "country": "Australia",
            },
            "scopes": scopes,
            "authorization": {"type": authorization},
            "stats": {"averageDurationMs": {
                "verifyCredentials": verify,
                "retrieveAccounts": accounts,
                "retrieveTransactions": transactions,
                "total": verify + accounts + transactions,
            }},
            "links": {"self": format!("{base}/connectors/{}/{}", i.id, self.method)},
        });
        // Basiq names the legal entity only for open-banking connectors, the CDR side of a
        // bank; a web connector has no such keys at all.
        if !web && let Some(institution) = out["institution"].as_object_mut() {
            institution.insert("abn".to_owned(), json!(i.abn));
            institution.insert("acn".to_owned(), json!(i.acn));
            institution.insert("cdrProviderNumber".to_owned(), json!(i.cdr_provider_number));
        }
        out
    }
}

/// A lowercase UUID v4 made from `rng`, so seeded populations repeat.
pub(super) fn uuid<R: Rng + ?Sized>(rng: &mut R) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b[..]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(super) const STANDARD: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
pub(super) const URL_SAFE: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 without a crate: keys and tokens only need to look the part.
pub(super) fn base64(input: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for k in 0..4 {
            if k < chars {
                out.push(char::from(alphabet[((n >> (18 - 6 * k)) & 63) as usize]));
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64(b"sim-key-7", STANDARD, true), "c2ltLWtleS03");
        assert_eq!(base64(b"ab", STANDARD, true), "YWI=");
        assert_eq!(base64(b"a", URL_SAFE, false), "YQ");
    }
}
