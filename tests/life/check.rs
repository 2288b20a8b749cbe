//! Every promise, checked over a whole life run against the world's truth: which job failed
//! for whose reason (`JobRecord::users_fault`), when each bank was down, what the banks' data
//! holders said on the CDR (an outage reported, maintenance announced), what the daemon
//! could know when (the simulator's read log, the CDR witness's read intervals), and what it
//! said (the outbox, the health changes, the refresh attempts, what the partner's receiver
//! got).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use basiq_sim::JobRecord;
use basiq_sim::world::WorldEvent;
use chrono::{DateTime, TimeDelta, Utc};

use super::Run;

/// A connection as the world made it.
#[derive(Clone, Debug)]
pub struct WorldConnection {
    pub user_id: String,
    pub institution_id: String,
    pub method: String,
    pub mfa: bool,
}

/// One rule's outcome.
#[derive(Clone, Debug)]
pub struct Row {
    pub promise: &'static str,
    pub rule: &'static str,
    pub checked: u64,
    pub breaches: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub figures: Vec<(String, String)>,
}

impl Report {
    pub fn breaches(&self) -> usize {
        self.rows.iter().map(|r| r.breaches.len()).sum()
    }

    fn row(&mut self, promise: &'static str, rule: &'static str) -> &mut Row {
        self.rows.push(Row {
            promise,
            rule,
            checked: 0,
            breaches: Vec::new(),
        });
        self.rows.last_mut().expect("just pushed")
    }

    fn figure(&mut self, name: &str, value: impl ToString) {
        self.figures.push((name.to_owned(), value.to_string()));
    }

    /// The table of every rule, the figures, and the evidence of each breach (five per rule).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<4} {:<58} {:>8} {:>8}",
            "", "rule", "checked", "breaches"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<4} {:<58} {:>8} {:>8}",
                r.promise,
                r.rule,
                r.checked,
                r.breaches.len()
            );
        }
        let _ = writeln!(out);
        for (name, value) in &self.figures {
            let _ = writeln!(out, "{name:<44} {value}");
        }
        for r in self.rows.iter().filter(|r| !r.breaches.is_empty()) {
            let _ = writeln!(out, "\nbreach: {} {}", r.promise, r.rule);
            for b in r.breaches.iter().take(5) {
                let _ = writeln!(out, "  - {b}");
            }
        }
        out
    }
}

/// A period the world had a user-side problem at a connection: from the end of the job that
/// showed it (or the consent's end) to the end of the next job that succeeded.
#[derive(Clone, Debug)]
struct Episode {
    connection_id: String,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    cause: String,
}

/// A notification as written, with its delivery.
#[derive(Clone, Debug)]
struct Sent {
    id: i64,
    webhook_id: String,
    event_type: String,
    order_key: String,
    payload: serde_json::Value,
    created: DateTime<Utc>,
    state: String,
}

impl Sent {
    fn connection(&self) -> Option<&str> {
        self.payload["data"]["connection_id"].as_str()
    }
    fn action(&self) -> &str {
        self.payload["data"]["user_action"]
            .as_str()
            .unwrap_or("none")
    }
    fn to(&self) -> &str {
        self.payload["data"]["to"].as_str().unwrap_or_default()
    }
    fn asks(&self) -> bool {
        self.event_type == "connection.health_changed" && self.action() != "none"
    }
}

#[derive(Clone, Debug)]
struct Change {
    connection_id: String,
    to: String,
    reason: Option<String>,
    job_id: Option<String>,
    at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    webhook_id: String,
    event_type: String,
    order_key: String,
    payload: String,
    created_at: i64,
    state: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    connection_id: String,
    to_health: String,
    reason: Option<String>,
    job_id: Option<String>,
    changed_at: i64,
}

#[derive(sqlx::FromRow)]
struct OutageDbRow {
    institution_id: String,
    method: String,
    source: String,
    started_at: i64,
    since: Option<i64>,
    ended_at: Option<i64>,
}

/// Per connection: when a user-side problem showed (`Some(cause)`) or a job succeeded.
type Marks = BTreeMap<String, Vec<(DateTime<Utc>, Option<String>)>>;

#[derive(Clone, Debug)]
struct Attempt {
    connection_id: String,
    trigger: String,
    at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
struct Outage {
    key: (String, String),
    source: String,
    started: DateTime<Utc>,
    /// The last read that saw the bank up (a `/connectors` outage); `None`: not known.
    since: Option<DateTime<Utc>>,
    ended: Option<DateTime<Utc>>,
}

/// A bank down in the world: (down, up, told by /connectors).
type WorldOutage = (DateTime<Utc>, DateTime<Utc>, bool);

/// A bank's data holder saying on the CDR that its bank is down, from the report (`from`,
/// when the bank's jobs start failing) until it says `OK`; `/connectors` follows at
/// `flipped`.
#[derive(Clone, Debug)]
struct CdrReport {
    key: (String, String),
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    flipped: Option<DateTime<Utc>>,
}

/// A maintenance window a data holder announced on the CDR: every job at its connector
/// fails from `starts` to `ends`.
#[derive(Clone, Debug)]
struct Announced {
    key: (String, String),
    announced: DateTime<Utc>,
    starts: DateTime<Utc>,
    ends: DateTime<Utc>,
}

/// What the checks read, gathered once.
struct Facts<'a> {
    run: &'a Run,
    connections: HashMap<String, WorldConnection>,
    jobs: HashMap<String, JobRecord>,
    jobs_of: HashMap<String, Vec<JobRecord>>,
    reads: HashMap<String, Vec<DateTime<Utc>>>,
    world_outages: HashMap<(String, String), Vec<WorldOutage>>,
    cdr_reports: Vec<CdrReport>,
    windows: Vec<Announced>,
    episodes: Vec<Episode>,
    sent: Vec<Sent>,
    changes: Vec<Change>,
    attempts: Vec<Attempt>,
    /// Refreshes the pace deferred to a later tick: (connection, trigger, when).
    deferred: Vec<Attempt>,
    outages: Vec<Outage>,
    refreshes: Vec<(String, DateTime<Utc>)>,
    /// Refresh decisions the daemon denied or deferred for an announced window.
    held_for_maintenance: i64,
}

fn at(secs: i64) -> DateTime<Utc> {
    basiq_health::store::from_ts(secs)
}

fn key_of(method: &str) -> String {
    if method == "openbanking" {
        "open-banking".into()
    } else {
        method.to_owned()
    }
}

impl<'a> Facts<'a> {
    async fn gather(run: &'a Run) -> anyhow::Result<Self> {
        let connections = super::connections_of(&run.world);
        let records = run.sim.job_records();
        let mut jobs_of: HashMap<String, Vec<JobRecord>> = HashMap::new();
        for j in &records {
            jobs_of
                .entry(j.connection_id.clone())
                .or_default()
                .push(j.clone());
        }
        for list in jobs_of.values_mut() {
            list.sort_by_key(|j| j.created);
        }
        let reads = run
            .world
            .users
            .iter()
            .map(|u| u.id.clone())
            .chain(connections.keys().cloned())
            .map(|id| {
                let reads = run.sim.reads_of(&id);
                (id, reads)
            })
            .collect();
        let mut facts = Facts {
            run,
            connections,
            jobs: records.iter().map(|j| (j.id.clone(), j.clone())).collect(),
            jobs_of,
            reads,
            world_outages: world_outages(run),
            cdr_reports: cdr_reports(run),
            windows: windows(run),
            episodes: Vec::new(),
            sent: Vec::new(),
            changes: Vec::new(),
            attempts: Vec::new(),
            deferred: Vec::new(),
            outages: Vec::new(),
            refreshes: Vec::new(),
            held_for_maintenance: 0,
        };
        facts.episodes = episodes(&facts);
        facts.read_store().await?;
        let counters = run.sim.counters();
        for (connection, times) in counters.refresh_calls {
            for t in times {
                facts.refreshes.push((connection.clone(), t));
            }
        }
        facts.refreshes.sort_by_key(|(_, t)| *t);
        Ok(facts)
    }

    async fn read_store(&mut self) -> anyhow::Result<()> {
        let pool = self.run.app.context().store().pool();
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT o.id, o.webhook_id, o.event_type, o.order_key, o.payload, o.created_at,
                    (SELECT d.state FROM deliveries d WHERE d.outbox_id = o.id) AS state
             FROM outbox o ORDER BY o.id",
        )
        .fetch_all(pool)
        .await?;
        self.sent = rows
            .into_iter()
            .map(|r| Sent {
                id: r.id,
                webhook_id: r.webhook_id,
                event_type: r.event_type,
                order_key: r.order_key,
                payload: serde_json::from_str(&r.payload).unwrap_or_default(),
                created: at(r.created_at),
                state: r.state.unwrap_or_else(|| "none".into()),
            })
            .collect();
        let rows: Vec<ChangeRow> = sqlx::query_as(
            "SELECT connection_id, to_health, reason, job_id, changed_at FROM health_changes ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
        self.changes = rows
            .into_iter()
            .map(|r| Change {
                connection_id: r.connection_id,
                to: r.to_health,
                reason: r.reason,
                job_id: r.job_id,
                at: at(r.changed_at),
            })
            .collect();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT connection_id, trigger, reserved_at FROM refresh_attempts ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
        self.attempts = rows
            .into_iter()
            .map(|(connection_id, trigger, t)| Attempt {
                connection_id,
                trigger,
                at: at(t),
            })
            .collect();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT connection_id, trigger, decided_at FROM refresh_decisions
             WHERE decision = 'deferred' ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
        self.deferred = rows
            .into_iter()
            .map(|(connection_id, trigger, t)| Attempt {
                connection_id,
                trigger,
                at: at(t),
            })
            .collect();
        self.held_for_maintenance = sqlx::query_scalar(
            "SELECT COUNT(*) FROM refresh_decisions WHERE reason = 'scheduled-outage'",
        )
        .fetch_one(pool)
        .await?;
        let rows: Vec<OutageDbRow> = sqlx::query_as(
            "SELECT institution_id, method, source, started_at, since, ended_at FROM outages ORDER BY id",
        )
        .fetch_all(pool)
        .await?;
        self.outages = rows
            .into_iter()
            .map(|r| Outage {
                key: (r.institution_id, key_of(&r.method)),
                source: r.source,
                started: at(r.started_at),
                since: r.since.map(at),
                ended: r.ended_at.map(at),
            })
            .collect();
        Ok(())
    }

    fn key(&self, connection: &str) -> Option<(String, String)> {
        self.connections
            .get(connection)
            .map(|c| (c.institution_id.clone(), key_of(&c.method)))
    }

    /// The last read at or before `t` that told of the connection: its user's lists, or the
    /// connection alone.
    fn known_at(&self, connection: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let user = &self.connections.get(connection)?.user_id;
        [user.as_str(), connection]
            .into_iter()
            .filter_map(|id| self.reads.get(id))
            .flatten()
            .filter(|r| **r <= t)
            .max()
            .copied()
    }

    /// The newest activity of the connection (a job's start or end, a success's end) the
    /// daemon could know at `t`, and the end of its newest success then.
    fn known_activity(
        &self,
        connection: &str,
        t: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let Some(known) = self.known_at(connection, t) else {
            return (None, None);
        };
        let jobs = self
            .jobs_of
            .get(connection)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Jobs started before the read (one started in the same second may have come after
        // it) and before `t` (the refresh made at `t` is ours, not news).
        let seen = jobs.iter().filter(|j| j.created < known && j.created < t);
        let activity = seen
            .clone()
            .map(|j| j.ended.filter(|e| *e <= known).unwrap_or(j.created))
            .max();
        let used = seen
            .filter(|j| j.success && j.ended.is_some_and(|e| e <= known))
            .filter_map(|j| j.ended)
            .max();
        (activity, used)
    }

    /// The daemon's outages at the connection's connector (any method of its institution
    /// when the method is not known).
    fn outages_at(&self, connection: &str) -> Vec<&Outage> {
        let Some(key) = self.key(connection) else {
            return Vec::new();
        };
        self.outages.iter().filter(|o| o.key == key).collect()
    }

    fn episode_at(&self, connection: &str, t: DateTime<Utc>, grace: TimeDelta) -> Option<&Episode> {
        self.episodes.iter().find(|e| {
            e.connection_id == connection
                && e.start <= t
                && e.end.is_none_or(|end| end + grace >= t)
        })
    }

    /// What happened at the connection around `t`: world events, jobs, health changes and
    /// notices, a day either side.
    fn timeline(&self, connection: &str, t: DateTime<Utc>) -> String {
        let near = |x: DateTime<Utc>| (x - t).abs() <= TimeDelta::hours(24);
        let mut lines: Vec<(DateTime<Utc>, String)> = Vec::new();
        for e in &self.run.world.timeline {
            if e.event.connection_id() == Some(connection) && near(e.at) {
                lines.push((e.at, format!("world {:?}", e.event)));
            }
        }
        if let Some(key) = self.key(connection) {
            for (down, up, told) in self.world_outages.get(&key).into_iter().flatten() {
                if near(*down) || near(*up) {
                    lines.push((*down, format!("world bank down (told: {told}) until {up}")));
                }
            }
            for r in self.cdr_reports.iter().filter(|r| r.key == key) {
                if near(r.from) || near(r.until) {
                    lines.push((r.from, format!("world CDR says down until {}", r.until)));
                }
            }
            for w in self.windows.iter().filter(|w| w.key == key) {
                if near(w.starts) || near(w.ends) {
                    lines.push((
                        w.starts,
                        format!(
                            "world maintenance (announced {}) until {}",
                            w.announced, w.ends
                        ),
                    ));
                }
            }
        }
        for o in self.outages_at(connection) {
            if near(o.started) || o.ended.is_some_and(near) {
                lines.push((
                    o.started,
                    format!(
                        "daemon outage {} since {:?} ended {:?}",
                        o.source, o.since, o.ended
                    ),
                ));
            }
        }
        for a in self
            .attempts
            .iter()
            .filter(|a| a.connection_id == connection && near(a.at))
        {
            lines.push((a.at, format!("refresh attempt ({})", a.trigger)));
        }
        for j in self.jobs_of.get(connection).into_iter().flatten() {
            if near(j.created) {
                lines.push((
                    j.created,
                    format!(
                        "job {} {:?} ended {:?} success {} code {:?} user's {}",
                        j.id, j.origin, j.ended, j.success, j.code, j.users_fault
                    ),
                ));
            }
        }
        for c in self
            .changes
            .iter()
            .filter(|c| c.connection_id == connection && near(c.at))
        {
            lines.push((
                c.at,
                format!("health -> {} {:?} (job {:?})", c.to, c.reason, c.job_id),
            ));
        }
        for s in self
            .sent
            .iter()
            .filter(|s| s.connection() == Some(connection) && near(s.created))
        {
            lines.push((
                s.created,
                format!(
                    "notice {} {} ask {} [{}]",
                    s.to(),
                    s.action(),
                    s.asks(),
                    s.state
                ),
            ));
        }
        lines.sort_by_key(|(t, _)| *t);
        let at = self
            .key(connection)
            .map(|(institution, method)| format!(" (at {institution}/{method})"))
            .unwrap_or_default();
        let lines: String = lines
            .into_iter()
            .map(|(t, l)| format!("\n      {} {l}", t.format("%d %H:%M:%S")))
            .collect();
        format!("{at}{lines}")
    }
}

fn world_outages(run: &Run) -> HashMap<(String, String), Vec<WorldOutage>> {
    let mut open: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    let mut out: HashMap<(String, String), Vec<WorldOutage>> = HashMap::new();
    for t in &run.world.timeline {
        match &t.event {
            WorldEvent::BankDown {
                institution_id,
                method,
                ..
            } => {
                open.insert((institution_id.clone(), key_of(method)), t.at);
            }
            WorldEvent::BankUp {
                institution_id,
                method,
                told,
            } => {
                let key = (institution_id.clone(), key_of(method));
                if let Some(down) = open.remove(&key) {
                    out.entry(key).or_default().push((down, t.at, *told));
                }
            }
            _ => {}
        }
    }
    for (key, down) in open {
        out.entry(key)
            .or_default()
            .push((down, DateTime::<Utc>::MAX_UTC, false));
    }
    out
}

/// Each CDR report of an outage in the world, with the `/connectors` flip that followed.
fn cdr_reports(run: &Run) -> Vec<CdrReport> {
    let mut out: Vec<CdrReport> = Vec::new();
    for t in &run.world.timeline {
        match &t.event {
            WorldEvent::CdrDown { institution_id, .. } => out.push(CdrReport {
                key: (institution_id.clone(), "open-banking".into()),
                from: t.at,
                until: DateTime::<Utc>::MAX_UTC,
                flipped: None,
            }),
            WorldEvent::BankDown {
                institution_id,
                method,
                told: true,
            } => {
                let key = (institution_id.clone(), key_of(method));
                if let Some(r) = out
                    .iter_mut()
                    .rfind(|r| r.key == key && r.until == DateTime::<Utc>::MAX_UTC)
                {
                    r.flipped.get_or_insert(t.at);
                }
            }
            WorldEvent::CdrUp { institution_id } => {
                let key = (institution_id.clone(), "open-banking".to_owned());
                if let Some(r) = out
                    .iter_mut()
                    .rfind(|r| r.key == key && r.until == DateTime::<Utc>::MAX_UTC)
                {
                    r.until = t.at;
                }
            }
            _ => {}
        }
    }
    out
}

/// Each maintenance window announced in the world.
fn windows(run: &Run) -> Vec<Announced> {
    run.world
        .timeline
        .iter()
        .filter_map(|t| match &t.event {
            WorldEvent::MaintenanceAnnounced {
                institution_id,
                starts_at,
                ends_at,
                ..
            } => Some(Announced {
                key: (institution_id.clone(), "open-banking".into()),
                announced: t.at,
                starts: *starts_at,
                ends: *ends_at,
            }),
            _ => None,
        })
        .collect()
}

/// How long after a data holder says something the witness has surely read it: one read
/// interval, the brand's jitter (up to a tenth of it), and a step either side (the world's
/// event waits for the next step, the read for the next tick).
fn cdr_lag(f: &Facts<'_>, interval: std::time::Duration) -> TimeDelta {
    let step = TimeDelta::from_std(f.run.config.step).unwrap_or_default();
    TimeDelta::from_std(interval + interval / 10).unwrap_or(TimeDelta::MAX) + step * 2
}

/// Whether the CDR witness knew by `by` that the bank was down when `job` ran: the job
/// started while its data holder said the bank was down, or inside a maintenance window it
/// announced, and the witness has read that since (the world's truth, not the daemon's
/// records: a witness the daemon failed to record still counts).
fn cdr_known_down(f: &Facts<'_>, job: &JobRecord, by: DateTime<Utc>) -> bool {
    let Some(key) = f.key(&job.connection_id) else {
        return false;
    };
    let cdr = &f.run.app.settings().cdr;
    let (status_lag, outages_lag) = (
        cdr_lag(f, cdr.status_interval),
        cdr_lag(f, cdr.outages_interval),
    );
    let reported = f.cdr_reports.iter().any(|r| {
        r.key == key && r.from <= job.created && job.created < r.until && r.from + status_lag <= by
    });
    let announced = f.windows.iter().any(|w| {
        w.key == key
            && w.starts <= job.created
            && job.created < w.ends
            && w.announced + outages_lag <= by
    });
    reported || announced
}

/// The user-side episodes: a job that failed for the user's reason, or a consent's end,
/// until a job succeeded.
fn episodes(f: &Facts<'_>) -> Vec<Episode> {
    let mut marks: Marks = BTreeMap::new();
    for (connection, jobs) in &f.jobs_of {
        for j in jobs {
            let Some(ended) = j.ended else { continue };
            let mark = if j.users_fault {
                Some(format!("job {}", j.id))
            } else if j.success {
                None
            } else {
                continue;
            };
            marks
                .entry(connection.clone())
                .or_default()
                .push((ended, mark));
        }
    }
    for t in &f.run.world.timeline {
        if let WorldEvent::ConsentRevoked { user_id } | WorldEvent::ConsentExpired { user_id } =
            &t.event
        {
            let open_banking = f
                .connections
                .iter()
                .filter(|(_, c)| c.user_id == *user_id && key_of(&c.method) == "open-banking");
            for (connection, _) in open_banking {
                let cause = format!("{:?}", t.event).chars().take(16).collect();
                marks
                    .entry(connection.clone())
                    .or_default()
                    .push((t.at, Some(cause)));
            }
        }
    }
    let mut out = Vec::new();
    for (connection, mut list) in marks {
        list.sort_by_key(|(t, _)| *t);
        let mut open: Option<Episode> = None;
        for (t, mark) in list {
            match (mark, open.as_mut()) {
                (Some(cause), None) => {
                    open = Some(Episode {
                        connection_id: connection.clone(),
                        start: t,
                        end: None,
                        cause,
                    });
                }
                (None, Some(e)) => {
                    e.end = Some(t);
                    out.extend(open.take());
                }
                _ => {}
            }
        }
        out.extend(open);
    }
    out
}

/// Runs every check.
pub async fn check(run: &Run) -> anyhow::Result<Report> {
    let f = Facts::gather(run).await?;
    let mut report = Report::default();
    p1(&f, &mut report);
    p2(&f, &mut report);
    p3(&f, &mut report);
    p4(&f, &mut report);
    figures(&f, &mut report);
    Ok(report)
}

fn delivered(s: &Sent) -> bool {
    s.state == "succeeded"
}

fn p1(f: &Facts<'_>, report: &mut Report) {
    asks_have_a_user_cause(
        f,
        report.row("P1", "no ask about a failure the bank caused"),
    );
    must_act_is_told(
        f,
        report.row("P1", "every must-act incident told within a sweep period"),
    );
    told_once(f, report.row("P1", "nothing told twice"));
    no_blame_for_the_bank(
        f,
        report.row("P1", "no action-required for the bank's failure"),
    );
    no_outage_for_the_user(
        f,
        report.row("P1", "no institution-outage for the user's failure"),
    );
    maintenance_told_once(
        f,
        report.row("P1", "each announced maintenance told once, before it"),
    );
    bank_told_first(
        f,
        report.row("P1", "a bank's own outage report told before /connectors'"),
    );
}

fn change_of(f: &Facts<'_>, s: &Sent) -> Option<Change> {
    let connection = s.connection()?;
    f.changes
        .iter()
        .rfind(|c| c.connection_id == connection && c.at == s.created && c.to == s.to())
        .cloned()
}

/// Whether the daemon knew by `by` that the bank was down when `job` ran: an outage it
/// recorded by then (`/connectors` or the data holder said so, or it inferred one) whose
/// period covers the job. A bank failing with no witness yet (not told, not inferred)
/// cannot be told from the user's failure: the README says so, and such asks are counted
/// apart. An outage inferred in the very instant of `by` was inferred from that instant's
/// failures, this job's among them: what was classified before it could not know it (the
/// ask it made waits, and is superseded).
fn bank_known_down(f: &Facts<'_>, job: &JobRecord, by: DateTime<Utc>) -> bool {
    let Some(key) = f.key(&job.connection_id) else {
        return false;
    };
    let end = job.ended.unwrap_or(job.created);
    let window = TimeDelta::from_std(f.run.app.settings().outage.window).unwrap_or_default();
    f.outages.iter().any(|o| {
        let inferred = o.source == "inferred";
        let from = if inferred {
            Some(o.started - window)
        } else {
            o.since
        };
        let known = if inferred {
            o.started < by
        } else {
            o.started <= by
        };
        o.key == key
            && known
            && from.is_none_or(|from| from <= end)
            && o.ended.is_none_or(|e| job.created <= e)
    })
}

fn asks_have_a_user_cause(f: &Facts<'_>, row: &mut Row) {
    for s in f.sent.iter().filter(|s| s.asks() && delivered(s)) {
        row.checked += 1;
        let connection = s.connection().unwrap_or_default();
        let job = change_of(f, s)
            .and_then(|c| c.job_id)
            .and_then(|j| f.jobs.get(&j));
        let reason = s.payload["data"]["reason"].as_str().unwrap_or_default();
        let by_job = job.filter(|j| !j.success && j.code.as_deref() == Some(reason));
        let delivered_at = f
            .run
            .receiver
            .first_receipt(&s.webhook_id)
            .unwrap_or(s.created);
        let justified = match by_job {
            Some(j) => {
                j.users_fault
                    || !(bank_known_down(f, j, delivered_at) || cdr_known_down(f, j, delivered_at))
            }
            None => f
                .episode_at(connection, s.created, TimeDelta::minutes(10))
                .is_some(),
        };
        if !justified {
            row.breaches.push(format!(
                "{connection} asked to {} at {} (reason {reason}, job {:?}):{}",
                s.action(),
                s.created,
                job.map(|j| &j.id),
                f.timeline(connection, s.created)
            ));
        }
    }
}

/// When an episode must have been told by: a sweep period after it began (an hour to
/// spare), later when the daemon held asks for an outage at its bank meanwhile.
fn deadline(f: &Facts<'_>, e: &Episode) -> Option<DateTime<Utc>> {
    let settings = f.run.app.settings();
    let period = TimeDelta::from_std(settings.sweep.period).ok()?;
    let recovery = TimeDelta::from_std(settings.refresh.recovery_window).ok()?;
    let mut by = e.start + period + TimeDelta::hours(1);
    for o in f.outages_at(&e.connection_id) {
        if o.started <= by && o.ended.is_none_or(|end| end >= e.start) {
            let end = o.ended?;
            by = by.max(end + recovery + period + TimeDelta::hours(1));
        }
    }
    Some(by)
}

fn must_act_is_told(f: &Facts<'_>, row: &mut Row) {
    for e in &f.episodes {
        let Some(by) = deadline(f, e) else { continue };
        if by > f.run.ended || e.end.is_some_and(|end| end < by) {
            continue;
        }
        row.checked += 1;
        let notices: Vec<&Sent> = f
            .sent
            .iter()
            .filter(|s| s.connection() == Some(e.connection_id.as_str()) && delivered(s))
            .collect();
        let told_in_time = notices
            .iter()
            .any(|s| s.asks() && s.created >= e.start - TimeDelta::minutes(1) && s.created <= by);
        let standing = notices
            .iter()
            .rfind(|s| s.event_type == "connection.health_changed" && s.created < e.start)
            .is_some_and(|s| s.asks());
        if !told_in_time && !standing {
            row.breaches.push(format!(
                "{} must act since {} ({}), not told by {}:{}",
                e.connection_id,
                e.start,
                e.cause,
                by,
                f.timeline(&e.connection_id, e.start)
            ));
        }
    }
}

fn told_once(f: &Facts<'_>, row: &mut Row) {
    let mut by_connection: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in f
        .sent
        .iter()
        .filter(|s| delivered(s) && s.event_type == "connection.health_changed")
    {
        by_connection
            .entry(s.connection().unwrap_or_default())
            .or_default()
            .push(s);
    }
    for (connection, list) in by_connection {
        for pair in list.windows(2) {
            row.checked += 1;
            let (a, b) = (pair[0], pair[1]);
            if a.to() == b.to() && a.action() == b.action() {
                row.breaches.push(format!(
                    "{connection} told {} ({}) twice, at {} and {}:{}",
                    b.to(),
                    b.action(),
                    a.created,
                    b.created,
                    f.timeline(connection, b.created)
                ));
            }
        }
        for e in f.episodes.iter().filter(|e| e.connection_id == connection) {
            let asks: Vec<&&Sent> = list
                .iter()
                .filter(|s| {
                    s.asks() && s.created >= e.start && e.end.is_none_or(|end| s.created <= end)
                })
                .collect();
            for pair in asks.windows(2) {
                if pair[0].action() == pair[1].action() {
                    row.breaches.push(format!(
                        "{connection} asked to {} twice in one incident (since {}), at {} and {}:{}",
                        pair[1].action(),
                        e.start,
                        pair[0].created,
                        pair[1].created,
                        f.timeline(connection, pair[1].created)
                    ));
                }
            }
        }
    }
}

fn no_blame_for_the_bank(f: &Facts<'_>, row: &mut Row) {
    for c in f.changes.iter().filter(|c| c.to == "action-required") {
        row.checked += 1;
        let Some(job) = c.job_id.as_ref().and_then(|j| f.jobs.get(j)) else {
            continue;
        };
        let about_job = c.reason.as_deref() == job.code.as_deref();
        let known = bank_known_down(f, job, c.at) || cdr_known_down(f, job, c.at);
        if about_job && !job.success && !job.users_fault && known {
            row.breaches.push(format!(
                "{} action-required at {} for job {} ({:?}), the bank's failure:{}",
                c.connection_id,
                c.at,
                job.id,
                job.code,
                f.timeline(&c.connection_id, c.at)
            ));
        }
    }
}

fn no_outage_for_the_user(f: &Facts<'_>, row: &mut Row) {
    let window = TimeDelta::from_std(f.run.app.settings().outage.window).unwrap_or_default();
    for c in f.changes.iter().filter(|c| c.to == "institution-outage") {
        row.checked += 1;
        let Some(job) = c.job_id.as_ref().and_then(|j| f.jobs.get(j)) else {
            continue;
        };
        if !job.users_fault || c.reason.as_deref() != job.code.as_deref() {
            continue;
        }
        let Some(ended) = job.ended else { continue };
        // The daemon's outages at the bank, each from the earliest it may have begun (an
        // inferred one: its inference window before).
        let periods: Vec<(&Outage, Option<DateTime<Utc>>)> = f
            .outages_at(&c.connection_id)
            .into_iter()
            .filter(|o| o.started <= c.at)
            .map(|o| {
                let from = if o.source == "inferred" {
                    Some(o.started - window)
                } else {
                    o.since
                };
                (o, from)
            })
            .collect();
        // Those that held the connection then.
        let holding: Vec<&(&Outage, Option<DateTime<Utc>>)> = periods
            .iter()
            .filter(|(o, _)| o.ended.is_none_or(|e| e >= c.at))
            .collect();
        // A failure an earlier outage's period covered (as the daemon knew it) waits for its
        // re-check while the bank is down again: held, by design, not blamed on the bank.
        let belonged = periods.iter().any(|(o, from)| {
            from.is_none_or(|from| from <= ended)
                && o.ended.is_some_and(|e| job.created <= e && e < c.at)
        });
        let before_every = holding
            .iter()
            .all(|(_, from)| from.is_some_and(|from| ended < from));
        // An announced maintenance window is a period known to the minute: a failure from
        // before it is not its.
        let windows: Vec<&Announced> = f
            .key(&c.connection_id)
            .map(|key| {
                f.windows
                    .iter()
                    .filter(|w| w.key == key && w.starts <= c.at && c.at < w.ends)
                    .collect()
            })
            .unwrap_or_default();
        let before_windows = windows.iter().all(|w| ended < w.starts);
        let held = !holding.is_empty() || !windows.is_empty();
        if held && before_every && before_windows && !belonged {
            row.breaches.push(format!(
                "{} institution-outage at {} for the user's failure {} that ended {}, before the outage's (or window's) period began:{}",
                c.connection_id,
                c.at,
                job.id,
                ended,
                f.timeline(&c.connection_id, c.at)
            ));
        }
    }
}

/// The instant a notice's field names (RFC 3339).
fn instant(s: &Sent, field: &str) -> Option<DateTime<Utc>> {
    let text = s.payload["data"][field].as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// An institution notice's connector.
fn notice_key(s: &Sent) -> (String, String) {
    let data = &s.payload["data"];
    (
        data["institution_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        key_of(data["method"].as_str().unwrap_or_default()),
    )
}

/// When the partner's receiver first accepted (and so verified) a notice.
fn received(f: &Facts<'_>, s: &Sent) -> Option<DateTime<Utc>> {
    f.run.receiver.first_receipt(&s.webhook_id)
}

/// Each window the world announced: exactly one `institution.maintenance_scheduled` about
/// it, delivered and verified before the window starts; and none about a window nobody
/// announced.
fn maintenance_told_once(f: &Facts<'_>, row: &mut Row) {
    let notices: Vec<&Sent> = f
        .sent
        .iter()
        .filter(|s| s.event_type == "institution.maintenance_scheduled")
        .collect();
    let about = |s: &Sent, w: &Announced| {
        notice_key(s) == w.key
            && instant(s, "starts_at") == Some(w.starts)
            && instant(s, "ends_at") == Some(w.ends)
    };
    for w in &f.windows {
        row.checked += 1;
        let told: Vec<&&Sent> = notices.iter().filter(|s| about(s, w)).collect();
        let receipts: Vec<Option<DateTime<Utc>>> = told.iter().map(|s| received(f, s)).collect();
        let in_time = matches!(receipts.as_slice(), [Some(at)] if *at < w.starts);
        if !in_time {
            row.breaches.push(format!(
                "{}/{} maintenance {} to {} (announced {}): {} notice(s), received at {receipts:?}",
                w.key.0,
                w.key.1,
                w.starts,
                w.ends,
                w.announced,
                told.len()
            ));
        }
    }
    for s in notices
        .iter()
        .filter(|s| !f.windows.iter().any(|w| about(s, w)))
    {
        row.checked += 1;
        row.breaches.push(format!(
            "{} at {} about a window nobody announced: {}",
            s.webhook_id, s.created, s.payload["data"]
        ));
    }
}

/// Each outage a data holder reported before `/connectors` did: its `cdr`
/// `institution.outage_started` reached the partner before the `connectors` one.
fn bank_told_first(f: &Facts<'_>, row: &mut Row) {
    for r in &f.cdr_reports {
        let Some(flipped) = r.flipped else { continue };
        row.checked += 1;
        let first = |source: &str| {
            f.sent
                .iter()
                .filter(|s| {
                    s.event_type == "institution.outage_started"
                        && s.payload["data"]["source"] == source
                        && notice_key(s) == r.key
                        && s.created >= r.from
                        && s.created < r.until.max(flipped)
                })
                .filter_map(|s| Some((received(f, s)?, s.id)))
                .min()
        };
        let (cdr, connectors) = (first("cdr"), first("connectors"));
        let first_told = matches!((cdr, connectors), (Some(a), Some(b)) if a < b);
        if !first_told {
            row.breaches.push(format!(
                "{}/{} reported down on the CDR at {}, /connectors at {flipped}: the cdr notice received {:?}, the connectors one {:?}",
                r.key.0,
                r.key.1,
                r.from,
                cdr.map(|c| c.0),
                connectors.map(|c| c.0)
            ));
        }
    }
}

/// The trigger of the daemon's refresh of `connection` at `t`.
fn trigger_of(f: &Facts<'_>, connection: &str, t: DateTime<Utc>) -> String {
    f.attempts
        .iter()
        .find(|a| a.connection_id == connection && (a.at - t).num_seconds().abs() <= 1)
        .map_or_else(|| "unknown".to_owned(), |a| a.trigger.clone())
}

fn automatic(trigger: &str) -> bool {
    !matches!(trigger, "login" | "manual")
}

fn p2(f: &Facts<'_>, report: &mut Report) {
    within_the_cap(
        f,
        report.row("P2", "at most the cap per connection per rolling 24 h"),
    );
    after_the_floor(
        f,
        report.row("P2", "none within min_interval of what was known"),
    );
    let settings = f.run.app.settings();
    let step = TimeDelta::from_std(f.run.config.step).unwrap_or_default();
    let ttl = TimeDelta::from_std(settings.sweep.connectors_ttl).unwrap_or_default();
    let mfa = report.row("P2", "no MFA connection refreshed without the user");
    for (connection, t) in &f.refreshes {
        mfa.checked += 1;
        let trigger = trigger_of(f, connection, *t);
        if f.connections.get(connection).is_some_and(|c| c.mfa) && automatic(&trigger) {
            mfa.breaches
                .push(format!("{connection} ({trigger}) at {t}"));
        }
    }
    let status_lag = cdr_lag(f, settings.cdr.status_interval);
    let down = report.row("P2", "none during an outage");
    for (connection, t) in &f.refreshes {
        let trigger = trigger_of(f, connection, *t);
        if !automatic(&trigger) {
            continue;
        }
        down.checked += 1;
        let known = f
            .outages_at(connection)
            .into_iter()
            .any(|o| o.started <= *t && o.ended.is_none_or(|e| e > *t));
        let told = f.key(connection).is_some_and(|key| {
            f.world_outages
                .get(&key)
                .into_iter()
                .flatten()
                .any(|(d, u, told)| *told && *d + ttl + step <= *t && *t < *u)
        });
        // The data holder said so and the witness has read it since.
        let reported = f.key(connection).is_some_and(|key| {
            f.cdr_reports
                .iter()
                .any(|r| r.key == key && r.from + status_lag <= *t && *t < r.until)
        });
        if known || told || reported {
            down.breaches.push(format!(
                "{connection} ({trigger}) at {t}:{}",
                f.timeline(connection, *t)
            ));
        }
    }
    none_in_maintenance(
        f,
        report.row("P2", "none inside an announced maintenance window"),
    );
    answered_incidents(
        f,
        report.row("P2", "none after a success since the incident"),
    );
    recovery_in_window(
        f,
        report.row("P2", "recovery refreshes inside their window"),
    );
    let bulk = report.row("P2", "no bulk refresh");
    bulk.checked = 1;
    let calls = f.run.sim.counters().bulk_refresh_calls;
    if calls > 0 {
        bulk.breaches.push(format!("{calls} bulk refreshes"));
    }
}

/// No refresh the user did not ask for (scheduled, recovery, a transient failure's retry)
/// reaches a bank inside a maintenance window its data holder announced.
fn none_in_maintenance(f: &Facts<'_>, row: &mut Row) {
    let lag = cdr_lag(f, f.run.app.settings().cdr.outages_interval);
    for (connection, t) in &f.refreshes {
        let trigger = trigger_of(f, connection, *t);
        if !automatic(&trigger) {
            continue;
        }
        row.checked += 1;
        let Some(key) = f.key(connection) else {
            continue;
        };
        let inside = f
            .windows
            .iter()
            .find(|w| w.key == key && w.announced + lag <= *t && w.starts <= *t && *t < w.ends);
        if let Some(w) = inside {
            row.breaches.push(format!(
                "{connection} ({trigger}) at {t}, inside the maintenance {} to {} announced {}:{}",
                w.starts,
                w.ends,
                w.announced,
                f.timeline(connection, *t)
            ));
        }
    }
}

fn within_the_cap(f: &Facts<'_>, row: &mut Row) {
    let settings = f.run.app.settings();
    let mut by: BTreeMap<&str, Vec<DateTime<Utc>>> = BTreeMap::new();
    for (c, t) in &f.refreshes {
        by.entry(c).or_default().push(*t);
    }
    for (connection, times) in by {
        let open_banking = f
            .connections
            .get(connection)
            .is_some_and(|c| key_of(&c.method) == "open-banking");
        let cap = if open_banking {
            settings.refresh.limits.open_banking_daily_cap
        } else {
            settings.refresh.limits.web_daily_cap
        };
        for (i, t) in times.iter().enumerate() {
            row.checked += 1;
            let in_window = times[..=i]
                .iter()
                .filter(|x| **x > *t - TimeDelta::hours(24))
                .count();
            if in_window > cap as usize {
                row.breaches.push(format!(
                    "{connection}: {in_window} refreshes in the 24 h before {t} (cap {cap})"
                ));
            }
        }
    }
}

fn after_the_floor(f: &Facts<'_>, row: &mut Row) {
    let limits = &f.run.app.settings().refresh.limits;
    let floor = TimeDelta::from_std(limits.min_interval).unwrap_or_default();
    let mut ours: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for (connection, t) in &f.refreshes {
        row.checked += 1;
        let trigger = trigger_of(f, connection, *t);
        let (activity, used) = f.known_activity(connection, *t);
        // Our own refresh's job counts as our attempt, not as news.
        let previous = ours.insert(connection, *t);
        let threshold = match trigger.as_str() {
            "login" | "manual" => TimeDelta::from_std(limits.login_stale_after).unwrap_or_default(),
            "scheduled" => TimeDelta::from_std(limits.stale_after).unwrap_or_default(),
            _ => floor,
        }
        .max(floor);
        let too_soon = activity.is_some_and(|a| *t - a < floor)
            || used.is_some_and(|u| *t - u < threshold)
            || previous.is_some_and(|p| *t - p < floor);
        if too_soon {
            row.breaches.push(format!(
                "{connection} ({trigger}) at {t}: known activity {activity:?}, used {used:?}, our last {previous:?}:{}",
                f.timeline(connection, *t)
            ));
        }
    }
}

/// The end of the daemon's last outage at the connection's connector before `t`, or of the
/// last maintenance window announced there (its end recovers the connections it held too).
fn outage_end_before(f: &Facts<'_>, connection: &str, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let key = f.key(connection);
    let windows = f
        .windows
        .iter()
        .filter(|w| Some(&w.key) == key.as_ref())
        .map(|w| w.ends);
    f.outages_at(connection)
        .into_iter()
        .filter_map(|o| o.ended)
        .chain(windows)
        .filter(|e| *e <= t)
        .max()
}

fn answered_incidents(f: &Facts<'_>, row: &mut Row) {
    for (connection, t) in &f.refreshes {
        let trigger = trigger_of(f, connection, *t);
        let since = match trigger.as_str() {
            "recovery" => outage_end_before(f, connection, *t),
            "transient-retry" => f
                .jobs_of
                .get(connection.as_str())
                .into_iter()
                .flatten()
                .filter(|j| j.ended.is_some_and(|e| e <= *t) && !j.success)
                .map(|j| j.created)
                .max(),
            _ => continue,
        };
        row.checked += 1;
        let Some(since) = since else { continue };
        let Some(known) = f.known_at(connection, *t) else {
            continue;
        };
        let answered = f
            .jobs_of
            .get(connection.as_str())
            .into_iter()
            .flatten()
            .find(|j| j.success && j.created >= since && j.ended.is_some_and(|e| e <= known));
        if let Some(j) = answered {
            row.breaches.push(format!(
                "{connection} ({trigger}) at {t}: job {} succeeded at {:?}, after the incident at {since}:{}",
                j.id,
                j.ended,
                f.timeline(connection, *t)
            ));
        }
    }
}

fn recovery_in_window(f: &Facts<'_>, row: &mut Row) {
    let settings = f.run.app.settings();
    let floor = TimeDelta::from_std(settings.refresh.limits.min_interval).unwrap_or_default();
    let slack = TimeDelta::from_std(f.run.config.step).unwrap_or_default() * 3;
    let recoveries: Vec<(&String, DateTime<Utc>, DateTime<Utc>)> = f
        .refreshes
        .iter()
        .filter(|(c, t)| trigger_of(f, c, *t) == "recovery")
        .filter_map(|(c, t)| Some((c, *t, outage_end_before(f, c, *t)?)))
        .collect();
    for (connection, t, end) in &recoveries {
        row.checked += 1;
        let held = recoveries
            .iter()
            .filter(|(c, _, e)| e == end && f.key(c) == f.key(connection))
            .count();
        let per_minute = settings.refresh.per_institution_per_minute.get() as i64;
        let needed = TimeDelta::milliseconds(held as i64 * 60_000 / per_minute * 5 / 4);
        let window = TimeDelta::from_std(settings.refresh.recovery_window)
            .unwrap_or_default()
            .max(needed);
        // The recency floor as the daemon knew it when it sent the refresh.
        let (activity, used) = f.known_activity(connection, *t);
        let floor_at = [activity, used]
            .into_iter()
            .flatten()
            .max()
            .map(|a| a + floor);
        // Each tick the pace deferred it (it stays due) comes on top.
        let deferred = f
            .deferred
            .iter()
            .filter(|d| d.connection_id == **connection && d.at >= *end && d.at <= *t)
            .count() as i32;
        let step = TimeDelta::from_std(f.run.config.step).unwrap_or_default();
        let allowed =
            floor_at.map_or(*end + window, |fl| fl.max(*end + window)) + slack + step * deferred;
        if *t > allowed {
            row.breaches.push(format!(
                "{connection} recovered at {t}, the outage ended {end}, allowed until {allowed}:{}",
                f.timeline(connection, *t)
            ));
        }
    }
}

fn p3(f: &Facts<'_>, report: &mut Report) {
    let counters = f.run.sim.counters();
    let n = |r: basiq_sim::Route| counters.requests.get(&r).copied().unwrap_or(0);
    let (lists, jobs) = (n(basiq_sim::Route::Connections), n(basiq_sim::Route::Jobs));
    let per_sweep = report.row("P3", "two requests per user sweep");
    per_sweep.checked = lists;
    if lists != jobs {
        per_sweep
            .breaches
            .push(format!("{lists} connection lists, {jobs} job lists"));
    }
    let settings = f.run.app.settings();
    let span = f.run.ended - f.run.started;
    let ttl = TimeDelta::from_std(settings.sweep.connectors_ttl).unwrap_or(TimeDelta::minutes(5));
    let asks = f.sent.iter().filter(|s| s.asks()).count() as u64;
    let connectors = report.row("P3", "one /connectors per TTL (plus one per ask confirmed)");
    connectors.checked = 1;
    let allowed = (span.num_seconds() / ttl.num_seconds().max(1)) as u64 + 1 + asks;
    if n(basiq_sim::Route::Connectors) > allowed {
        connectors.breaches.push(format!(
            "{} reads of /connectors, at most {allowed} expected",
            n(basiq_sim::Route::Connectors)
        ));
    }
    // A token lives an hour and is replaced 5 minutes before it ends.
    let tokens = report.row("P3", "one token per hour (each replaced 5 min early)");
    tokens.checked = 1;
    let allowed = (span.num_minutes() / 55) as u64 + 1;
    if counters.token_calls > allowed {
        tokens.breaches.push(format!(
            "{} tokens in {} hours (at most {allowed})",
            counters.token_calls,
            span.num_hours()
        ));
    }
}

fn p4(f: &Facts<'_>, report: &mut Report) {
    let received: HashMap<String, usize> = {
        let mut m = HashMap::new();
        for r in f.run.receiver.accepted() {
            *m.entry(r.webhook_id).or_default() += 1;
        }
        m
    };
    let all = report.row("P4", "every notification delivered at least once");
    for s in &f.sent {
        all.checked += 1;
        let ok = match s.state.as_str() {
            "succeeded" => received.contains_key(&s.webhook_id),
            "superseded" => s.event_type == "connection.health_changed",
            _ => false,
        };
        if !ok {
            all.breaches.push(format!(
                "{} {} made {}: {}",
                s.webhook_id, s.event_type, s.created, s.state
            ));
        }
    }
    let verified = report.row("P4", "every delivery verified");
    verified.checked = received.values().sum::<usize>() as u64;
    let refused = f.run.receiver.refused_signatures();
    if refused > 0 {
        verified
            .breaches
            .push(format!("{refused} deliveries failed verification"));
    }
    let order = report.row("P4", "in order per user (and per bank)");
    let ids: HashMap<&str, (i64, &str)> = f
        .sent
        .iter()
        .map(|s| (s.webhook_id.as_str(), (s.id, s.order_key.as_str())))
        .collect();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut first_seen = std::collections::HashSet::new();
    for r in f.run.receiver.accepted() {
        if !first_seen.insert(r.webhook_id.clone()) {
            continue;
        }
        let Some((id, key)) = ids.get(r.webhook_id.as_str()) else {
            continue;
        };
        order.checked += 1;
        if let Some(before) = last.insert(key, *id)
            && before > *id
        {
            order
                .breaches
                .push(format!("{key}: notification {id} arrived after {before}"));
        }
    }
    let stale = report.row("P4", "none about a superseded state");
    stale.checked = f
        .sent
        .iter()
        .filter(|s| delivered(s) && s.event_type == "connection.health_changed")
        .count() as u64;
    stale.breaches.extend(f.run.stale_sends.iter().cloned());
}

fn figures(f: &Facts<'_>, report: &mut Report) {
    let run = f.run;
    report.figure(
        "users / connections",
        format!("{} / {}", run.world.users.len(), f.connections.len()),
    );
    report.figure(
        "simulated days / steps",
        format!("{} / {}", run.config.days, run.steps),
    );
    let outages: Vec<_> = f.world_outages.values().flatten().collect();
    report.figure(
        "bank outages in the world (told / not told)",
        format!(
            "{} / {}",
            outages.iter().filter(|o| o.2).count(),
            outages.iter().filter(|o| !o.2).count()
        ),
    );
    report.figure(
        "CDR in the world (outages reported / maintenance)",
        format!("{} / {}", f.cdr_reports.len(), f.windows.len()),
    );
    let recorded = |source: &str| f.outages.iter().filter(|o| o.source == source).count();
    report.figure(
        "outages the daemon recorded (connectors / inferred / cdr)",
        format!(
            "{} / {} / {}",
            recorded("connectors"),
            recorded("inferred"),
            recorded("cdr")
        ),
    );
    report.figure(
        "maintenance notices delivered",
        f.sent
            .iter()
            .filter(|s| s.event_type == "institution.maintenance_scheduled" && delivered(s))
            .count(),
    );
    report.figure(
        "refresh decisions held for a window (scheduled-outage)",
        f.held_for_maintenance,
    );
    let cdr = run.sim.cdr_counters();
    report.figure(
        "CDR reads (register / status / outages)",
        format!(
            "{} / {} / {}",
            cdr.register,
            cdr.status.values().sum::<u64>(),
            cdr.outages.values().sum::<u64>()
        ),
    );
    report.figure(
        "CDR polls that failed / reads that failed",
        format!("{} / {}", run.cdr_errors, run.cdr_read_failures),
    );
    let misleading = f
        .jobs
        .values()
        .filter(|j| {
            !j.users_fault
                && j.code.as_deref() == Some("account-not-accessible-requires-user-action")
        })
        .count();
    report.figure(
        "jobs (bank failures that look like the user's)",
        format!("{} ({misleading})", f.jobs.len()),
    );
    report.figure("must-act incidents", f.episodes.len());
    let asks: Vec<&Sent> = f.sent.iter().filter(|s| s.asks() && delivered(s)).collect();
    let fast = f
        .episodes
        .iter()
        .filter(|e| {
            asks.iter().any(|s| {
                s.connection() == Some(e.connection_id.as_str())
                    && s.created >= e.start
                    && s.created - e.start <= TimeDelta::seconds(60)
            })
        })
        .count();
    report.figure(
        "asks delivered (within 60 s of the failure)",
        format!("{} ({fast})", asks.len()),
    );
    let blind = asks
        .iter()
        .filter_map(|s| change_of(f, s)?.job_id)
        .filter_map(|j| f.jobs.get(&j))
        .filter(|j| !j.users_fault && !j.success)
        .count();
    report.figure("asks about a bank failure no witness showed yet", blind);
    let mut by_trigger: BTreeMap<String, u64> = BTreeMap::new();
    for (c, t) in &f.refreshes {
        *by_trigger.entry(trigger_of(f, c, *t)).or_default() += 1;
    }
    report.figure("refreshes sent by trigger", format!("{by_trigger:?}"));
    let counters = run.sim.counters();
    report.figure("tokens", counters.token_calls);
    report.figure(
        "requests per route",
        format!(
            "{:?}",
            counters
                .requests
                .iter()
                .map(|(r, n)| (r.as_str(), n))
                .collect::<BTreeMap<_, _>>()
        ),
    );
    report.figure(
        "notifications written / 503s answered",
        format!("{} / {}", f.sent.len(), run.receiver.answered_503()),
    );
    let webhooks = run.sim.webhooks_sent();
    report.figure(
        "Basiq webhooks sent (lost)",
        format!(
            "{} ({})",
            webhooks.len(),
            webhooks
                .iter()
                .filter(|w| w.fault == Some(basiq_sim::WebhookFault::Lost))
                .count()
        ),
    );
    report.figure("login checks that failed", run.login_errors);
}
