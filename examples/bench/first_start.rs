//! `--first-start N`: the daemon's first start on a register whose connectors it has never
//! seen. A fresh database with N users registered: the simulator's, due, and made-up ones
//! (random UUIDs, not due) with two connections each, as sweeps left them (`active`,
//! `healthy` after a recent job; one in 49 needing action), spread over the simulator's
//! own connectors (read from its `/connectors`: a share of 1 % at each it reports down,
//! the rest even over the others); the `connectors` table empty. So the daemon's first
//! `/connectors` answer queues every connector for reclassification, and most connections
//! come out of it unchanged, as in a real register.
//!
//! Then `basiq-health run` as a child process (tick every second), measured from its spawn:
//! READY=1 on a real notify socket; the first `/connectors` answer and the first user swept
//! (`/metrics`, polled every 25 ms); a login check (`POST /v1/users/{id}/login` for one of
//! the simulator's users) sent at READY=1; the whole reclassification (`reclassify_queue`
//! empty after the first answer, read every 100 ms on a read-only connection of the
//! harness's own); every due user swept; the longest write-lock hold
//! (`basiq_health_write_lock_hold_max_seconds`); and, after SIGTERM, the daemon's peak RSS.
//! Waiting stops at `--timeout` (default 900 s) with what was reached.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use basiq_health::domain::{Connector, UserId};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, SqliteConnection};

use super::daemon::{Daemon, DaemonDir, line_count, sample, scrape, tail};
use super::procs::{cpu_split_of, terminate};
use super::seed::{NOT_DUE_FOR, Seeder, Slot};
use super::{SimProcess, mark, sweep_context};

/// The `/metrics` and database polls' period: the database is read every fourth poll.
const POLL: Duration = Duration::from_millis(25);

pub async fn first_start(
    sim: &SimProcess,
    sim_users: &[UserId],
    n: usize,
    timeout: Duration,
    keep: bool,
) -> anyhow::Result<()> {
    let dir = DaemonDir::new(sim, "first-start", "* * * * * *", keep)?;
    // The login check's user is registered but not due: only the login check sweeps it, and
    // the tick's pass sweeps every other of the simulator's users.
    let (login_user, due) = sim_users
        .split_last()
        .context("the simulator has no user")?;
    let register = prepare(sim, due, login_user, n, &dir.db).await?;
    println!(
        "first start: {} registered ({} due, 1 for the login check), {} made-up connections over the simulator's {} connectors ({:.1} % at one it reports down), no connector seen; seeded in {:.1} s",
        sim_users.len() + register.made_up,
        due.len(),
        2 * register.made_up,
        register.connectors,
        register.down_share * 100.0,
        register.seeded.as_secs_f64()
    );
    let mut daemon = dir.spawn()?;
    let deadline = daemon.spawned + timeout;
    let marks = watch(&dir, &mut daemon, login_user, due.len(), deadline).await;
    let (status, rss, killed) = terminate(daemon.child, Duration::from_secs(60)).await?;
    let marks = marks.with_context(|| format!("the daemon's log ends:\n{}", tail(&dir.log, 20)))?;
    let changed = health_changed(&dir.db, login_user).await?;
    print_table(n, timeout, &marks);
    println!(
        "| peak RSS of the daemon | {rss:.1} MiB ({status}{}) | | |",
        if killed { ", SIGKILLed after 60 s" } else { "" }
    );
    println!();
    println!(
        "connections whose health the run changed: {changed} of the {} made-up ones; daemon log: {} lines{}",
        2 * register.made_up,
        line_count(&dir.log)?,
        if keep {
            format!(" (kept in {})", dir.dir.path().display())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The register, as seeded.
struct Register {
    made_up: usize,
    connectors: usize,
    /// The share of the made-up connections at a connector the simulator reports down.
    down_share: f64,
    seeded: Duration,
}

/// Registers the simulator's users (the product's `add_users`: `due` due now, `login_user`
/// not), reads the simulator's connectors through the product's client (nothing stored),
/// and seeds the made-up users and their connections over them, up to `n` registered.
async fn prepare(
    sim: &SimProcess,
    due: &[UserId],
    login_user: &UserId,
    n: usize,
    db: &Path,
) -> anyhow::Result<Register> {
    let now = chrono::Utc::now();
    let context = sweep_context(sim, db, 1).await?;
    let connectors = context.client().list_connectors().await?;
    // Due a minute ago: a due time rounds up to the second, and the pass must find them due.
    let due_at = now - chrono::Duration::minutes(1);
    context.store().add_users(due, now, |_| due_at).await?;
    let not_due = now + chrono::Duration::seconds(NOT_DUE_FOR);
    context
        .store()
        .add_users(std::slice::from_ref(login_user), now, |_| not_due)
        .await?;
    context.store().close().await;
    let slots = slots(&connectors);
    let total: u32 = slots.iter().map(|s| s.weight).sum();
    let down: u32 = connectors
        .iter()
        .zip(&slots)
        .filter(|(c, _)| c.status.is_down())
        .map(|(_, s)| s.weight)
        .sum();
    let made_up = n.saturating_sub(due.len() + 1);
    let started = Instant::now();
    let mut seeder = Seeder::open(db, now).await?;
    seeder.made_up_users(made_up).await?;
    seeder.connections(&slots).await?;
    seeder.close().await?;
    Ok(Register {
        made_up,
        connectors: connectors.len(),
        down_share: f64::from(down) / f64::from(total.max(1)),
        seeded: started.elapsed(),
    })
}

/// One slot (1 %) for each connector reported down, the other 99 % even over the rest.
fn slots(connectors: &[Connector]) -> Vec<Slot> {
    let up = connectors.iter().filter(|c| !c.status.is_down()).count();
    let share = u32::try_from(99 / up.max(1)).unwrap_or(1).max(1);
    connectors
        .iter()
        .map(|c| Slot {
            institution_id: c.institution_id.as_str().to_owned(),
            method: c.method.as_str().to_owned(),
            weight: if c.status.is_down() { 1 } else { share },
        })
        .collect()
}

/// What was reached, each time from the spawn.
#[derive(Default)]
struct Marks {
    ready: Option<Duration>,
    connectors_answered: Option<Duration>,
    first_swept: Option<Duration>,
    all_swept: Option<Duration>,
    swept: u64,
    login: Option<Login>,
    /// The login check's sweep committed (the user's connections are stored).
    login_swept: Option<Duration>,
    reclassified: Option<Duration>,
    /// The most connectors seen queued at once.
    queue_peak: i64,
    lock_hold_max: Option<f64>,
    /// The daemon's user and sys CPU seconds when the watch ended, and when that was.
    cpu: Option<(f64, f64)>,
    ended: Duration,
}

/// The login check: when it was sent, and its answer (when, HTTP status) or what failed.
struct Login {
    user: UserId,
    sent: Duration,
    answer: Result<(Duration, u16), String>,
}

impl Marks {
    fn done(&self, due: usize) -> bool {
        self.all_swept.is_some()
            && self.first_swept.is_some()
            && self.reclassified.is_some()
            && self.login.is_some()
            && self.login_swept.is_some()
            && self.swept >= due as u64
    }

    fn read_metrics(&mut self, text: &str, at: Duration, due: usize) {
        self.swept = sample(text, "basiq_health_users_swept_total").unwrap_or(0.0) as u64;
        if self.swept > 0 {
            self.first_swept.get_or_insert(at);
        }
        if self.swept >= due as u64 {
            self.all_swept.get_or_insert(at);
        }
        let connectors = "basiq_health_basiq_requests_total{endpoint=\"connectors\",";
        if sample(text, connectors).unwrap_or(0.0) > 0.0 {
            self.connectors_answered.get_or_insert(at);
        }
        if let Some(hold) = sample(text, "basiq_health_write_lock_hold_max_seconds") {
            self.lock_hold_max = Some(hold);
        }
    }

    /// The reclassification is over once the first `/connectors` answer is stored (its
    /// transaction queues the connectors that moved) and the queue is empty. The login
    /// check's sweep is committed once its user has connections stored.
    async fn read_db(
        &mut self,
        db: &mut SqliteConnection,
        login_user: &UserId,
        at: Duration,
    ) -> anyhow::Result<()> {
        let (known, queued, login_swept): (i64, i64, bool) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM connectors), (SELECT COUNT(*) FROM reclassify_queue),
                    EXISTS (SELECT 1 FROM connections WHERE user_id = ?)",
        )
        .bind(login_user.as_str())
        .fetch_one(&mut *db)
        .await?;
        self.queue_peak = self.queue_peak.max(queued);
        if known > 0 && queued == 0 {
            self.reclassified.get_or_insert(at);
        }
        if login_swept {
            self.login_swept.get_or_insert(at);
        }
        Ok(())
    }
}

/// Waits for READY=1, sends the login check, then polls until everything is reached, the
/// daemon exits, or `deadline`.
async fn watch(
    dir: &DaemonDir,
    daemon: &mut Daemon,
    login_user: &UserId,
    due: usize,
    deadline: Instant,
) -> anyhow::Result<Marks> {
    let mut marks = Marks {
        ready: daemon.ready(deadline).await?,
        ..Marks::default()
    };
    if marks.ready.is_none() {
        return Ok(marks);
    }
    let token = dir.api_token()?;
    let mut login = Some(tokio::spawn(login_check(
        dir.api,
        token,
        login_user.clone(),
        daemon.spawned,
        deadline,
    )));
    let mut db = SqliteConnectOptions::new()
        .filename(&dir.db)
        .read_only(true)
        .connect()
        .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    for poll in 0u64.. {
        if let Ok(text) = scrape(&http, dir.api).await {
            marks.read_metrics(&text, daemon.spawned.elapsed(), due);
        }
        if poll % 4 == 0 {
            marks
                .read_db(&mut db, login_user, daemon.spawned.elapsed())
                .await?;
        }
        if let Some(handle) = login.take_if(|h| h.is_finished()) {
            marks.login = Some(handle.await?);
        }
        let exited = daemon.child.try_wait()?.is_some();
        if marks.done(due) || exited || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    if let Some(handle) = login {
        handle.abort();
    }
    marks.cpu = cpu_split_of(&format!("/proc/{}/stat", daemon.child.id()));
    marks.ended = daemon.spawned.elapsed();
    Ok(marks)
}

/// `POST /v1/users/{id}/login`, waiting at most until `deadline`.
async fn login_check(
    api: SocketAddr,
    token: String,
    user: UserId,
    spawned: Instant,
    deadline: Instant,
) -> Login {
    let sent = spawned.elapsed();
    let answer = async {
        let http = reqwest::Client::builder()
            .timeout(deadline.saturating_duration_since(Instant::now()))
            .build()?;
        let r = http
            .post(format!("http://{api}/v1/users/{user}/login"))
            .bearer_auth(token)
            .send()
            .await?;
        let status = r.status().as_u16();
        r.bytes().await?;
        anyhow::Ok((spawned.elapsed(), status))
    }
    .await
    .map_err(|e| e.to_string());
    Login { user, sent, answer }
}

/// Health changes the run wrote for the made-up users' connections (none were seeded).
async fn health_changed(db: &Path, login_user: &UserId) -> anyhow::Result<i64> {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM health_changes h JOIN users u ON u.user_id = h.user_id
         WHERE u.next_due_at > ? AND u.user_id != ?",
    )
    .bind(chrono::Utc::now().timestamp() + NOT_DUE_FOR / 2)
    .bind(login_user.as_str())
    .fetch_one(&mut conn)
    .await?)
}

fn print_table(n: usize, timeout: Duration, m: &Marks) {
    let secs = |d: Option<Duration>| match d {
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
        None => format!("not reached in {} s", timeout.as_secs()),
    };
    let within =
        |d: Option<Duration>, limit: f64| mark(d.is_some_and(|d| d.as_secs_f64() <= limit));
    let first_limit = if n <= 200_000 { 5.0 } else { 10.0 };
    println!();
    println!("| first start, {n} registered (times from the spawn) | measured | target | |");
    println!("|---|---|---|---|");
    println!("| start to READY=1 | {} | | |", secs(m.ready));
    println!(
        "| first `/connectors` answer (seen in /metrics) | {} | | |",
        secs(m.connectors_answered)
    );
    println!(
        "| first user swept | {} | <= {first_limit:.0} s at {} | {} |",
        secs(m.first_swept),
        if n <= 200_000 { "200,000" } else { "1,000,000" },
        within(m.first_swept, first_limit)
    );
    print_login(m.login.as_ref(), timeout);
    println!(
        "| the login check's sweep committed (its user's connections stored) | {} | | |",
        secs(m.login_swept)
    );
    println!(
        "| whole reclassification (`reclassify_queue` empty; at most {} connectors queued) | {} | <= 60 s at 1,000,000 | {} |",
        m.queue_peak,
        secs(m.reclassified),
        within(m.reclassified, 60.0)
    );
    println!(
        "| every due user swept ({} swept by the tick's passes) | {} | | |",
        m.swept,
        secs(m.all_swept)
    );
    if let Some((user, sys)) = m.cpu {
        println!(
            "| the daemon's CPU until then ({:.2} s) | {user:.1} s user + {sys:.1} s sys | | |",
            m.ended.as_secs_f64()
        );
    }
    println!(
        "| longest write-lock hold | {} | | |",
        m.lock_hold_max
            .map_or("not seen".to_owned(), |s| format!("{:.1} ms", s * 1000.0))
    );
}

fn print_login(login: Option<&Login>, timeout: Duration) {
    let Some(login) = login else {
        println!(
            "| login check | not answered in {} s | <= 2 s | MISSED |",
            timeout.as_secs()
        );
        return;
    };
    match &login.answer {
        Ok((at, status)) => {
            let took = at.saturating_sub(login.sent).as_secs_f64();
            println!(
                "| login check of {} (sent at READY=1, {:.2} s) | answered in {took:.2} s (at {:.2} s, HTTP {status}) | <= 2 s | {} |",
                login.user,
                login.sent.as_secs_f64(),
                at.as_secs_f64(),
                mark(took <= 2.0 && *status == 200)
            );
        }
        Err(e) => println!(
            "| login check of {} (sent at {:.2} s) | no answer: {e} | <= 2 s | MISSED |",
            login.user,
            login.sent.as_secs_f64()
        ),
    }
}
