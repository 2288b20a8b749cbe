//! The benchmark harness: one command, every figure of the performance targets beside its
//! target, measured in one run on this machine. Never a timed assertion in a test.
//!
//! ```sh
//! cargo run --release --example bench -- --users 100000
//! cargo run --release --example bench -- --users 2000 --million   # adds the 1M-user figures
//! cargo run --release --example bench -- --users 2000 --notices   # with the outbox written
//! cargo run --release --example bench -- --users 2000 --registered 2000,200000
//! cargo run --release --example bench -- --users 2000 --first-start 200000 --timeout 900
//! cargo run --release --example bench -- --users 2000 --vs-script --runs 3
//! ```
//!
//! The simulator runs in a second process (this binary again, `--role sim`) with `--users`
//! users (random UUID ids, as Basiq's), so the CPU figures are the daemon's alone. Every id
//! the harness makes up is a random UUID too (lowercase 8-4-4-4-12 hex), and a register it
//! seeds gets its rows in random key order, as one built over months does ([`seed`]): ids
//! in sequence would keep every B-tree's writes on its last pages and hide what random keys
//! cost. Spreads over banks and failures come from row counters, never from an id's text.
//!
//! By default, in this process, in order, against the same simulator at the same
//! concurrency:
//! 1. **sweep**: the library's real sweep (`Context::run_pass_all`, the path of
//!    `basiq-health sweep`) over every registered user on a fresh database; CPU is this
//!    process's user + sys time over the pass (`/proc/self/stat`), peak RSS its `VmHWM`
//!    right after.
//! 2. **raw**: the limit: the same two GETs per user with reqwest, bodies discarded.
//! 3. **naive**: the way a cron script does it: one user at a time, one SQLite connection,
//!    the two GETs, one INSERT per connection and job, one transaction per user.
//!
//! `--registered N[,N...]` (instead of the default figures; [`registered`]): cost per user
//! against register size. For each N a fresh database with N users registered: the
//! simulator's, due, and made-up ones, not due, each with two connections, two jobs of
//! three steps and two health changes, seeded by SQL. Then the daemon's tick pass in this
//! process, which must sweep the due users only. One table: CPU per user swept, users per
//! second, and write syscalls and bytes written per user swept (`/proc/self/io`), then the
//! largest N's CPU per user against the first N's (target: within 15 %).
//!
//! `--first-start N` (instead of the default figures; [`first_start`]): the daemon's first
//! start (`basiq-health run`, a child process) on N registered users whose connections sit
//! at the simulator's connectors, none of which the database has seen: times from the
//! spawn to READY=1, to the first `/connectors` answer, to the first user swept, to a
//! login check's answer, to the end of the whole reclassification, to every due user
//! swept; the longest write-lock hold; the daemon's peak RSS. Gives up after `--timeout S`
//! (default 900) with what was reached.
//!
//! With `--million`, the register grows to 1,000,000 users and 2,000,000 connections and
//! the product's own commands run as child processes (this binary again, `--role cli`,
//! which is `basiq-health` itself; [`million`]): `users import` of 1M ids (time and peak
//! RSS), `status`, `run` to `READY=1` (a real notify socket), `/metrics` and
//! `GET /v1/status`, a `sweep` of the simulator's users with 1M registered (peak RSS), and
//! the inferred-outage count.
//!
//! `--vs-script` (after the default figures, against the same simulator): `basiq-health
//! sweep` (this binary as `--role cli`, config as `--million` writes it, concurrency 8, on a
//! fresh database its own `users import` process filled first, not counted) against
//! `examples/naive_cron.py`, the cron job a partner would write (Python 3, standard library:
//! a token, then one user at a time the two GETs with urllib, one INSERT OR REPLACE per
//! connection and job, one transaction per user, WAL, synchronous NORMAL), each a whole
//! child process over the simulator's users, CPU from `wait4`'s rusage (user + sys; never
//! its `ru_maxrss`, see [`procs`]) divided by the users done (both must do every user).
//! One table: each one's CPU per user, their ratio (target: sweep at most 0.2x the script's,
//! every run) and both wall times. `--runs N` (default 1) makes N runs, which of the two
//! goes first alternating, and quotes each run and the range.
//!
//! `--keep` keeps the temporary directories (databases, the daemon's config and log) and
//! prints where they are.

#[path = "bench/daemon.rs"]
mod daemon;
#[path = "bench/first_start.rs"]
mod first_start;
#[path = "bench/million.rs"]
mod million;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/registered.rs"]
mod registered;
#[path = "bench/seed.rs"]
mod seed;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use basiq_health::domain::UserId;
use basiq_health::settings::Settings;
use basiq_health::store::SweepCounts;
use basiq_health::work::Context;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use procs::{cpu_secs_of, peak_rss_mib, reset_peak_rss, self_cpu};

const SEED: u64 = 42;

struct Args {
    users: usize,
    concurrency: usize,
    million: bool,
    /// Write notifications to the outbox, as with `[[notify.endpoints]]` configured.
    notices: bool,
    /// `--registered`: the register sizes, in order.
    registered: Vec<usize>,
    /// `--first-start`: the register size.
    first_start: Option<usize>,
    /// How long `--first-start` waits for everything it measures.
    timeout: Duration,
    /// `--vs-script`: `basiq-health sweep` against `examples/naive_cron.py`, whole processes.
    vs_script: bool,
    /// How many alternating runs `--vs-script` makes.
    runs: usize,
    keep: bool,
}

const USAGE: &str = "--users N, --concurrency N, --million, --notices, --registered N[,N...], \
                     --first-start N, --timeout S, --vs-script, --runs N, --keep";

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut args = Args {
        users: 2000,
        concurrency: 8,
        million: false,
        notices: false,
        registered: Vec::new(),
        first_start: None,
        timeout: Duration::from_secs(900),
        vs_script: false,
        runs: 1,
        keep: false,
    };
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value ({USAGE})"))
        };
        match a.as_str() {
            "--users" => args.users = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--million" => args.million = true,
            "--notices" => args.notices = true,
            "--registered" => {
                args.registered = value()?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()?;
            }
            "--first-start" => args.first_start = Some(value()?.parse()?),
            "--timeout" => args.timeout = Duration::from_secs(value()?.parse()?),
            "--vs-script" => args.vs_script = true,
            "--runs" => args.runs = value()?.parse::<usize>()?.max(1),
            "--keep" => args.keep = true,
            other => bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("--role") {
        argv.next();
        match argv.next().as_deref() {
            Some("sim") => {
                let users = argv.next().context("--role sim USERS")?.parse()?;
                return tokio::runtime::Runtime::new()?.block_on(serve_sim(users));
            }
            Some("cli") => {
                use clap::Parser;
                let cli = basiq_health::cli::Cli::parse_from(
                    std::iter::once("basiq-health".to_owned()).chain(argv),
                );
                let code = match basiq_health::cli::run(cli) {
                    Ok(code) => code,
                    Err(e) => {
                        eprintln!("basiq-health: {}", basiq_health::cli::describe(&e));
                        basiq_health::cli::exit_code(&e)
                    }
                };
                std::process::exit(i32::from(code));
            }
            other => bail!("unknown role {other:?}"),
        }
    }
    let args = parse_args(argv)?;
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

/// `--role sim`: serve the simulator on a loopback port, print its address and key as one
/// JSON line, serve until stdin closes.
async fn serve_sim(users: usize) -> anyhow::Result<()> {
    let sim = basiq_sim::Simulator::new(basiq_sim::SimConfig {
        users,
        seed: SEED,
        step_duration: Duration::from_millis(100),
        ..basiq_sim::SimConfig::default()
    });
    let running = sim.clone().bind("127.0.0.1:0".parse()?).await?;
    println!(
        "{}",
        serde_json::json!({"base_url": running.base_url(), "api_key": sim.api_key()})
    );
    std::io::stdout().flush()?;
    // Until the harness closes our stdin (or exits).
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink).ok();
    })
    .await?;
    running.shutdown().await;
    Ok(())
}

struct SimProcess {
    child: Child,
    base_url: String,
    api_key: String,
}

impl SimProcess {
    fn start(users: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--role", "sim", &users.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("sim stdout")?).read_line(&mut line)?;
        let v: Value = serde_json::from_str(&line).context("the simulator's first line")?;
        Ok(Self {
            child,
            base_url: v["base_url"].as_str().context("base_url")?.to_owned(),
            api_key: v["api_key"].as_str().context("api_key")?.to_owned(),
        })
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&format!("/proc/{}/stat", self.child.id())).unwrap_or(f64::NAN)
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

async fn counters(http: &reqwest::Client, base: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(format!("{base}/_sim/counters"))
        .send()
        .await?
        .json()
        .await?)
}

fn requests_of(counters: &Value) -> u64 {
    counters["requests"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

async fn sim_ids(http: &reqwest::Client, sim: &SimProcess) -> anyhow::Result<Vec<String>> {
    Ok(http
        .get(format!("{}/_sim/users", sim.base_url))
        .send()
        .await?
        .json()
        .await?)
}

fn parse_ids(ids: &[String]) -> anyhow::Result<Vec<UserId>> {
    ids.iter()
        .map(|id| UserId::parse(id).map_err(anyhow::Error::msg))
        .collect()
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let sim = SimProcess::start(args.users)?;
    let http = reqwest::Client::new();
    let ids = sim_ids(&http, &sim).await?;
    println!(
        "basiq-health benchmark: {} simulated users, concurrency {}, requests unpaced, {} cores, {}",
        ids.len(),
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d")
    );
    if !args.registered.is_empty() {
        let users = parse_ids(&ids)?;
        registered::registered(&sim, &users, &args.registered, args.concurrency, args.keep).await?;
    }
    if let Some(n) = args.first_start {
        let users = parse_ids(&ids)?;
        first_start::first_start(&sim, &users, n, args.timeout, args.keep).await?;
    }
    if args.registered.is_empty() && args.first_start.is_none() {
        default_figures(&sim, &ids, &args).await?;
    }
    if args.vs_script {
        vs_script(&sim, &ids, args.runs, args.keep)?;
    }
    if args.million {
        million::million(&sim, &parse_ids(&ids)?, args.keep).await?;
    }
    Ok(())
}

/// The settings of a sweep in this process: the simulator, the database `db`, unpaced, no
/// local API.
fn sweep_settings(sim: &SimProcess, db: &Path, concurrency: usize) -> anyhow::Result<Settings> {
    let toml = format!(
        "[basiq]\nbase_url = {:?}\nmax_requests_per_second = 100000\n[database]\npath = {:?}\n\
         [sweep]\nconcurrency = {concurrency}\n[api]\nlisten = \"\"\n",
        sim.base_url,
        db.display().to_string(),
    );
    Ok(Settings::from_toml(&toml)?)
}

/// The library's sweeper on the database `db` (created and migrated if new).
async fn sweep_context(sim: &SimProcess, db: &Path, concurrency: usize) -> anyhow::Result<Context> {
    basiq_health::app::build_sweeper_with_key(
        &sweep_settings(sim, db, concurrency)?,
        secrecy::SecretString::from(sim.api_key.clone()),
    )
    .await
}

/// The sweep of every registered user (figure 1), measured.
struct Sweep {
    registered: usize,
    register_s: f64,
    counts: SweepCounts,
    took: f64,
    cpu: f64,
    sim_cpu: f64,
    rss: f64,
    counters: Value,
    rows: i64,
    notices: i64,
}

/// The default figures: the sweep, the raw HTTP limit, the naive way.
async fn default_figures(sim: &SimProcess, ids: &[String], args: &Args) -> anyhow::Result<()> {
    let sweep = sweep_all(sim, parse_ids(ids)?, args).await?;
    let (raw_rate, raw_cpu_ms) = raw_loop(sim, ids, args.concurrency).await?;
    let naive_dir = tempfile::tempdir()?;
    let naive = naive_sweep(sim, ids, &naive_dir.path().join("naive.db")).await?;
    print_figures(&sweep, (raw_rate, raw_cpu_ms), naive, args.notices);
    Ok(())
}

async fn sweep_all(sim: &SimProcess, users: Vec<UserId>, args: &Args) -> anyhow::Result<Sweep> {
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir()?;
    let context = sweep_context(sim, &dir.path().join("bench.db"), args.concurrency).await?;
    context.store().set_notices(args.notices);
    let started = Instant::now();
    for chunk in users.chunks(10_000) {
        context.add_users(chunk).await?;
    }
    let register_s = started.elapsed().as_secs_f64();
    let registered = users.len();
    // The sweep reads the register page by page, as `basiq-health sweep` does: this process
    // holds no list of every user while it sweeps, and its peak RSS is measured from here.
    drop(users);
    reset_peak_rss();
    http.post(format!("{}/_sim/reset-counters", sim.base_url))
        .send()
        .await?;
    let (cpu0, sim_cpu0) = (self_cpu(), sim.cpu_secs());
    let started = Instant::now();
    let counts = context
        .run_pass_all(
            basiq_health::work::PassTrigger::Command,
            &CancellationToken::new(),
        )
        .await?;
    let took = started.elapsed().as_secs_f64();
    let (cpu, sim_cpu) = (self_cpu() - cpu0, sim.cpu_secs() - sim_cpu0);
    let rss = peak_rss_mib();
    let counters = counters(&http, &sim.base_url).await?;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM connections) + (SELECT COUNT(*) FROM jobs)
              + (SELECT COUNT(*) FROM job_steps) + (SELECT COUNT(*) FROM health_changes)
              + (SELECT COUNT(*) FROM users WHERE last_swept_at IS NOT NULL)",
    )
    .fetch_one(context.store().pool())
    .await?;
    let notices: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(context.store().pool())
        .await?;
    context.store().close().await;
    Ok(Sweep {
        registered,
        register_s,
        counts,
        took,
        cpu,
        sim_cpu,
        rss,
        counters,
        rows,
        notices,
    })
}

fn print_figures(s: &Sweep, (raw_rate, raw_cpu_ms): (f64, f64), naive: (f64, f64), notices: bool) {
    let swept = s.counts.users_swept as f64;
    let sweep_rate = swept / s.took;
    let cpu_ms = s.cpu * 1000.0 / swept.max(1.0);
    let token = s.counters["token_calls"].as_u64().unwrap_or(0);
    let connectors = s.counters["requests"]["connectors"].as_u64().unwrap_or(0);
    let user_requests = requests_of(&s.counters) - token - connectors;
    println!(
        "registered {} users in {:.2} s; swept {} ({} failed, {} gone) in {:.2} s",
        s.registered,
        s.register_s,
        s.counts.users_swept,
        s.counts.users_failed,
        s.counts.users_gone,
        s.took
    );
    println!(
        "notifications written to the outbox: {} ({})",
        s.notices,
        if notices {
            "--notices: as with an endpoint configured"
        } else {
            "none configured"
        }
    );
    println!();
    println!("| figure | measured | target | |");
    println!("|---|---|---|---|");
    println!("| users swept per second | {sweep_rate:.0} | | |");
    println!(
        "| CPU per user swept (user+sys, simulator excluded) | {cpu_ms:.3} ms | <= 0.2 ms | {} |",
        mark(cpu_ms <= 0.2)
    );
    let ratio = sweep_rate / raw_rate;
    println!(
        "| sweep / raw-HTTP rate (raw: {raw_rate:.0} users/s, {raw_cpu_ms:.3} ms CPU/user) | {ratio:.2} | >= 0.5 | {} |",
        mark(ratio >= 0.5)
    );
    let per_user = user_requests as f64 / swept.max(1.0);
    println!(
        "| requests per user swept (besides /token, /connectors) | {per_user:.3} | 2.0 | {} |",
        mark((per_user - 2.0).abs() < 0.01)
    );
    println!(
        "| /token and /connectors calls in the pass | {token} and {connectors} | 1 and 1 | {} |",
        mark(token <= 1 && connectors <= 1)
    );
    println!(
        "| peak RSS of the daemon's process during the sweep | {:.1} MiB | <= 64 MB | {} |",
        s.rss,
        mark(s.rss <= 61.0)
    );
    println!(
        "| SQLite rows written per second | {:.0} ({} rows) | | |",
        s.rows as f64 / s.took,
        s.rows
    );
    let (naive_rate, naive_cpu_ms) = naive;
    println!(
        "| naive way (1 connection, 1 transaction per user, sequential) | {naive_rate:.0} users/s, {naive_cpu_ms:.3} ms CPU/user | | sweep is {:.1}x its rate at {:.2}x its CPU per user |",
        sweep_rate / naive_rate,
        cpu_ms / naive_cpu_ms
    );
    println!(
        "| simulator CPU during the sweep (other process, not counted) | {:.3} ms/user | | |",
        s.sim_cpu * 1000.0 / swept.max(1.0)
    );
}

async fn token(http: &reqwest::Client, sim: &SimProcess) -> anyhow::Result<String> {
    let v: Value = http
        .post(format!("{}/token", sim.base_url))
        .header("authorization", format!("Basic {}", sim.api_key))
        .header("basiq-version", "3.0")
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned())
}

/// The limit: the two GETs per user at the same concurrency, bodies read and discarded.
async fn raw_loop(
    sim: &SimProcess,
    ids: &[String],
    concurrency: usize,
) -> anyhow::Result<(f64, f64)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let bearer = format!("Bearer {}", token(&http, sim).await?);
    let cpu0 = self_cpu();
    let started = Instant::now();
    let http = &http;
    let bearer = &bearer;
    let base = &sim.base_url;
    let mut done = futures_util::stream::iter(ids)
        .map(|id| async move {
            for path in ["connections", "jobs"] {
                let r = http
                    .get(format!("{base}/users/{id}/{path}"))
                    .header("authorization", bearer)
                    .send()
                    .await?;
                r.bytes().await?;
            }
            anyhow::Ok(())
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = done.next().await {
        r?;
    }
    let took = started.elapsed().as_secs_f64();
    let cpu = self_cpu() - cpu0;
    Ok((
        ids.len() as f64 / took,
        cpu * 1000.0 / ids.len().max(1) as f64,
    ))
}

/// The cron script: one user at a time, one connection, one transaction per user, one
/// INSERT per connection and job.
async fn naive_sweep(sim: &SimProcess, ids: &[String], db: &Path) -> anyhow::Result<(f64, f64)> {
    use sqlx::Connection;
    let http = reqwest::Client::new();
    let bearer = format!("Bearer {}", token(&http, sim).await?);
    let mut conn = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal),
    )
    .await?;
    sqlx::query(
        "CREATE TABLE connections (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, institution TEXT, body TEXT)",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("CREATE TABLE jobs (id TEXT PRIMARY KEY, user_id TEXT, created TEXT, body TEXT)")
        .execute(&mut conn)
        .await?;
    let cpu0 = self_cpu();
    let started = Instant::now();
    for id in ids {
        let get = |path: &'static str| {
            http.get(format!("{}/users/{id}/{path}", sim.base_url))
                .header("authorization", &bearer)
                .send()
        };
        let connections: Value = get("connections").await?.json().await?;
        let jobs: Value = get("jobs").await?.json().await?;
        let mut tx = conn.begin().await?;
        for c in connections["data"].as_array().into_iter().flatten() {
            sqlx::query("INSERT OR REPLACE INTO connections VALUES (?, ?, ?, ?, ?)")
                .bind(c["id"].as_str())
                .bind(id)
                .bind(c["status"].as_str())
                .bind(c["institution"]["id"].as_str())
                .bind(c.to_string())
                .execute(&mut *tx)
                .await?;
        }
        for j in jobs["data"].as_array().into_iter().flatten() {
            sqlx::query("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)")
                .bind(j["id"].as_str())
                .bind(id)
                .bind(j["created"].as_str())
                .bind(j.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    let took = started.elapsed().as_secs_f64();
    let cpu = self_cpu() - cpu0;
    Ok((
        ids.len() as f64 / took,
        cpu * 1000.0 / ids.len().max(1) as f64,
    ))
}

/// One whole process's figures for `--vs-script`: users done, CPU (user + sys) and wall
/// seconds.
struct WholeRun {
    users: u64,
    cpu: f64,
    wall: f64,
}

impl WholeRun {
    fn cpu_ms_per_user(&self) -> f64 {
        self.cpu * 1000.0 / (self.users.max(1) as f64)
    }
}

/// `--vs-script`: `basiq-health sweep` (this binary as `--role cli`) and
/// `python3 examples/naive_cron.py`, each a whole child process over the simulator's users
/// on a fresh database, CPU from `wait4`'s rusage; `runs` runs, the order alternating.
fn vs_script(sim: &SimProcess, ids: &[String], runs: usize, keep: bool) -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/naive_cron.py");
    println!();
    println!(
        "`basiq-health sweep` against the naive cron script ({}: one user at a time, two GETs \
         with urllib, one INSERT per connection and job, one transaction per user), each a \
         whole process, CPU = wait4's user + sys:",
        script.display()
    );
    let mut results = Vec::new();
    for run in 0..runs {
        let (sweep, naive) = if run % 2 == 0 {
            let s = product_sweep(sim, ids, keep)?;
            (s, cron_script(sim, ids, &script, keep)?)
        } else {
            let n = cron_script(sim, ids, &script, keep)?;
            (product_sweep(sim, ids, keep)?, n)
        };
        println!(
            "run {} ({} first): sweep {} users in {:.2} s, {:.2} s CPU; script {} users in {:.2} s, {:.2} s CPU",
            run + 1,
            if run % 2 == 0 { "sweep" } else { "script" },
            sweep.users,
            sweep.wall,
            sweep.cpu,
            naive.users,
            naive.wall,
            naive.cpu
        );
        results.push((sweep, naive));
    }
    let quote = |values: Vec<f64>, digits: usize, unit: &str| {
        let each = values
            .iter()
            .map(|v| format!("{v:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ");
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (
            format!("{each}{unit}"),
            format!("{lo:.digits$}-{hi:.digits$}{unit}"),
            hi,
        )
    };
    println!();
    println!("| figure (whole processes) | each run | range | target | |");
    println!("|---|---|---|---|---|");
    let (each, range, _) = quote(
        results.iter().map(|(s, _)| s.cpu_ms_per_user()).collect(),
        3,
        " ms",
    );
    println!("| `basiq-health sweep` CPU per user swept (user+sys) | {each} | {range} | | |");
    let (each, range, _) = quote(
        results.iter().map(|(_, n)| n.cpu_ms_per_user()).collect(),
        3,
        " ms",
    );
    println!("| naive cron script (python3) CPU per user | {each} | {range} | | |");
    let (each, range, worst) = quote(
        results
            .iter()
            .map(|(s, n)| s.cpu_ms_per_user() / n.cpu_ms_per_user())
            .collect(),
        2,
        "x",
    );
    println!(
        "| sweep ÷ script, CPU per user | {each} | {range} | <= 0.2x (every run) | {} |",
        mark(worst <= 0.2)
    );
    let (each, range, _) = quote(results.iter().map(|(s, _)| s.wall).collect(), 2, " s");
    println!("| `basiq-health sweep` wall time | {each} | {range} | | |");
    let (each, range, _) = quote(results.iter().map(|(_, n)| n.wall).collect(), 2, " s");
    println!("| naive cron script wall time | {each} | {range} | | |");
    Ok(())
}

/// `users import` of `ids` (its own process, not measured) on a fresh database, then
/// `basiq-health sweep` as a whole process: users swept, its CPU and wall time.
fn product_sweep(sim: &SimProcess, ids: &[String], keep: bool) -> anyhow::Result<WholeRun> {
    let dir = daemon::DaemonDir::new(sim, "vs-script", "*/2 * * * * *", keep)?;
    let file = dir.dir.path().join("users.txt");
    std::fs::write(&file, ids.join("\n") + "\n")?;
    dir.product(&["users", "import", file.to_str().context("path")?])?;
    let started = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .args(["--role", "cli", "--config"])
        .arg(&dir.config)
        .arg("sweep")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let done = procs::wait_cpu(child, started)?;
    if !done.status.success() {
        bail!(
            "basiq-health sweep failed ({}): {}",
            done.status,
            done.stderr
        );
    }
    let counts: Value = done
        .stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("users_swept").is_some())
        })
        .context("no counts printed by `basiq-health sweep`")?;
    let field = |name: &str| counts[name].as_u64().unwrap_or(0);
    let (swept, failed, gone) = (
        field("users_swept"),
        field("users_failed"),
        field("users_gone"),
    );
    if (swept + failed + gone) as usize != ids.len() {
        bail!(
            "`basiq-health sweep` did {swept} swept + {failed} failed + {gone} gone of {} users",
            ids.len()
        );
    }
    if keep {
        println!("kept: {}", dir.dir.path().display());
    }
    Ok(WholeRun {
        users: swept,
        cpu: done.cpu,
        wall: done.wall,
    })
}

/// `python3 examples/naive_cron.py` as a whole process over `ids` on a fresh SQLite file:
/// users done (it must have done every one), its CPU and wall time.
fn cron_script(
    sim: &SimProcess,
    ids: &[String],
    script: &Path,
    keep: bool,
) -> anyhow::Result<WholeRun> {
    let mut dir = tempfile::tempdir()?;
    dir.disable_cleanup(keep);
    let file = dir.path().join("users.txt");
    std::fs::write(&file, ids.join("\n") + "\n")?;
    let started = Instant::now();
    let child = Command::new("python3")
        .arg(script)
        .arg(&sim.base_url)
        .arg(&file)
        .arg(dir.path().join("naive.db"))
        .env("BASIQ_API_KEY", &sim.api_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3")?;
    let done = procs::wait_cpu(child, started)?;
    if !done.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            done.status,
            done.stderr
        );
    }
    let out: Value = serde_json::from_str(done.stdout.trim())
        .with_context(|| format!("the script's output {:?}", done.stdout))?;
    let users = out["users"].as_u64().unwrap_or(0);
    if users as usize != ids.len() {
        bail!("the script did {users} of {} users", ids.len());
    }
    if keep {
        println!("kept: {}", dir.path().display());
    }
    Ok(WholeRun {
        users,
        cpu: done.cpu,
        wall: done.wall,
    })
}
