//! The benchmark harness: one command, every figure of the performance targets beside its
//! target, measured in one run on this machine. Never a timed assertion in a test.
//!
//! ```sh
//! cargo run --release --example bench -- --users 100000
//! cargo run --release --example bench -- --users 2000 --million   # adds the 1M-user figures
//! cargo run --release --example bench -- --users 2000 --notices   # with the outbox written
//! ```
//!
//! The simulator runs in a second process (this binary again, `--role sim`), so the CPU
//! figures are the daemon's alone. In this process, in order, against the same simulator
//! at the same concurrency:
//! 1. **sweep**: the library's real sweep (`Context::run_pass`, the path of `basiq-health
//!    sweep`) over every registered user on a fresh database; CPU is this process's
//!    user + sys time over the pass (`/proc/self/stat`), peak RSS its `VmHWM` right after.
//! 2. **raw**: the limit: the same two GETs per user with reqwest, bodies discarded.
//! 3. **naive**: the way a cron script does it: one user at a time, one SQLite connection,
//!    the two GETs, one INSERT per connection and job, one transaction per user.
//!
//! With `--million`, the register grows to 1,000,000 users and 2,000,000 connections and
//! the product's own commands run as child processes (this binary again, `--role cli`,
//! which is `basiq-health` itself): `users import` of 1M ids (time and peak RSS), `status`,
//! `run` to `READY=1` (a real notify socket), `/metrics` and `GET /v1/status`, a `sweep` of
//! the simulator's users with 1M registered (peak RSS), and the inferred-outage count.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use basiq_health::domain::UserId;
use basiq_health::settings::Settings;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SEED: u64 = 42;

struct Args {
    users: usize,
    concurrency: usize,
    million: bool,
    /// Write notifications to the outbox, as with `[[notify.endpoints]]` configured.
    notices: bool,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut args = Args {
        users: 2000,
        concurrency: 8,
        million: false,
        notices: false,
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--users" => args.users = it.next().context("--users N")?.parse()?,
            "--concurrency" => args.concurrency = it.next().context("--concurrency N")?.parse()?,
            "--million" => args.million = true,
            "--notices" => args.notices = true,
            other => bail!(
                "unknown argument {other:?} (--users N, --concurrency N, --million, --notices)"
            ),
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

/// user + sys seconds of a process from its `stat` file (USER_HZ is 100 on Linux).
fn cpu_secs_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn self_cpu() -> f64 {
    cpu_secs_of("/proc/self/stat").unwrap_or(f64::NAN)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
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

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let sim = SimProcess::start(args.users)?;
    let http = reqwest::Client::new();
    let users = parse_ids(&sim_ids(&http, &sim).await?)?;
    println!(
        "basiq-health benchmark: {} simulated users, concurrency {}, requests unpaced, {} cores, {}",
        users.len(),
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d")
    );

    // 1. The sweep.
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("bench.db");
    let toml = format!(
        "[basiq]\nbase_url = {:?}\nmax_requests_per_second = 100000\n[database]\npath = {:?}\n\
         [sweep]\nconcurrency = {}\n[api]\nlisten = \"\"\n",
        sim.base_url,
        db.display().to_string(),
        args.concurrency
    );
    let settings = Settings::from_toml(&toml)?;
    let context = basiq_health::app::build_sweeper_with_key(
        &settings,
        secrecy::SecretString::from(sim.api_key.clone()),
    )
    .await?;
    context.store().set_notices(args.notices);
    let started = Instant::now();
    for chunk in users.chunks(10_000) {
        context.add_users(chunk).await?;
    }
    let register = started.elapsed();
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
    let c = counters(&http, &sim.base_url).await?;
    let swept = counts.users_swept as f64;
    let requests = requests_of(&c);
    let token = c["token_calls"].as_u64().unwrap_or(0);
    let connectors = c["requests"]["connectors"].as_u64().unwrap_or(0);
    let user_requests = requests - token - connectors;
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
    let sweep_rate = swept / took;
    let cpu_ms = cpu * 1000.0 / swept.max(1.0);

    // 2. The raw HTTP limit.
    let ids = sim_ids(&http, &sim).await?;
    let (raw_rate, raw_cpu_ms) = raw_loop(&sim, &ids, args.concurrency).await?;

    // 3. The naive way.
    let naive_dir = tempfile::tempdir()?;
    let (naive_rate, naive_cpu_ms) =
        naive_sweep(&sim, &ids, &naive_dir.path().join("naive.db")).await?;

    println!(
        "registered {registered} users in {:.2} s; swept {} ({} failed, {} gone) in {took:.2} s",
        register.as_secs_f64(),
        counts.users_swept,
        counts.users_failed,
        counts.users_gone
    );
    println!(
        "notifications written to the outbox: {notices} ({})",
        if args.notices {
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
        "| peak RSS of the daemon's process during the sweep | {rss:.1} MiB | <= 64 MB | {} |",
        mark(rss <= 61.0)
    );
    println!(
        "| SQLite rows written per second | {:.0} ({rows} rows) | | |",
        rows as f64 / took
    );
    println!(
        "| naive way (1 connection, 1 transaction per user, sequential) | {naive_rate:.0} users/s, {naive_cpu_ms:.3} ms CPU/user | | sweep is {:.1}x its rate at {:.2}x its CPU per user |",
        sweep_rate / naive_rate,
        cpu_ms / naive_cpu_ms
    );
    println!(
        "| simulator CPU during the sweep (other process, not counted) | {:.3} ms/user | | |",
        sim_cpu * 1000.0 / swept.max(1.0)
    );

    if args.million {
        million(&sim, &parse_ids(&ids)?).await?;
    }
    Ok(())
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

/// Runs this binary as `basiq-health ARGS` and waits: wall time, peak RSS (MiB), stdout.
fn product(config: &Path, args: &[&str]) -> anyhow::Result<(f64, f64, String)> {
    let started = Instant::now();
    let child = Command::new(std::env::current_exe()?)
        .args(["--role", "cli", "--config"])
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (status, rss, out, err) = wait_with_rusage(child)?;
    let took = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("basiq-health {args:?} failed ({status}): {err}");
    }
    Ok((took, rss, out))
}

/// Waits for a child through `wait4`, for its own peak RSS.
fn wait_with_rusage(
    mut child: Child,
) -> anyhow::Result<(std::process::ExitStatus, f64, String, String)> {
    use std::io::Read;
    let mut out = String::new();
    let mut err = String::new();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut e = String::new();
        if let Some(s) = stderr.as_mut() {
            s.read_to_string(&mut e).ok();
        }
        e
    });
    if let Some(s) = stdout.as_mut() {
        s.read_to_string(&mut out)?;
    }
    err.push_str(&reader.join().unwrap_or_default());
    let mut status = 0;
    // SAFETY: `rusage` is plain data, zeroed is a valid value; the pid is our child's,
    // not yet waited for (std's `Child` is not waited on after this).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    std::mem::forget(child);
    Ok((
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as f64 / 1024.0,
        out,
        err,
    ))
}

/// The 1M-user figures: the product's commands over a register of 1,000,000 users and
/// 2,000,000 connections.
async fn million(sim: &SimProcess, sim_users: &[UserId]) -> anyhow::Result<()> {
    const USERS: usize = 1_000_000;
    println!();
    println!(
        "1,000,000 registered users, 2,000,000 connections (the product's commands, each its own process):"
    );
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("million.db");
    let config = dir.path().join("basiq-health.toml");
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, &sim.api_key)?;
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let api = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    std::fs::write(
        &config,
        format!(
            "[basiq]\nbase_url = {:?}\napi_key_file = {:?}\nmax_requests_per_second = 100000\n\
             [database]\npath = {:?}\n[sweep]\nconcurrency = 8\ntick = \"*/2 * * * * *\"\n\
             [api]\nlisten = \"{api}\"\n",
            sim.base_url,
            key_file.display().to_string(),
            db.display().to_string()
        ),
    )?;
    // The ids: the simulator's users first, then made-up ones up to a million.
    let file = dir.path().join("users.txt");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for u in sim_users {
            writeln!(w, "{u}")?;
        }
        for i in sim_users.len()..USERS {
            writeln!(w, "bench-user-{i:07}")?;
        }
    }
    let (took, rss, _) = product(
        &config,
        &["users", "import", file.to_str().context("path")?],
    )?;
    println!(
        "| `users import` of 1,000,000 ids | {took:.1} s, {rss:.0} MiB | <= 20 s, <= 64 MB | {} |",
        mark(took <= 20.0 && rss <= 61.0)
    );
    // Two connections per made-up user, a third at one bank; nobody but the simulator's
    // users due, so `run` and `sweep` touch only them. The made-up banks are not among the
    // simulator's connectors: the daemon's first `/connectors` answer reclassifies every
    // connection at a connector whose status it learns, which at 2,000,000 connections is
    // minutes of work on a first start (measured apart from the sweep).
    {
        use sqlx::Connection;
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await?;
        let now = chrono::Utc::now().timestamp();
        let mut tx = conn.begin().await?;
        sqlx::query(
            "UPDATE users SET next_due_at = CASE WHEN user_id LIKE 'bench-user-%' THEN ?1 ELSE ?2 END",
        )
        .bind(now + 86_400 * 365)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO connections (connection_id, user_id, institution_id, method, status,
                 first_seen_at, health, reason, checked_at, health_since, newest_job_side,
                 bank_failure_at)
             SELECT 'c' || k.k || '-' || substr(u.user_id, 12), u.user_id,
                    CASE WHEN CAST(substr(u.user_id, 12) AS INTEGER) % 3 = 0 THEN 'BENCH-0'
                         ELSE 'BENCH-' || (CAST(substr(u.user_id, 12) AS INTEGER) % 5 + 1) END,
                    'open-banking', 'active', ?1,
                    CASE WHEN CAST(substr(u.user_id, 12) AS INTEGER) % 50 = 0 THEN 'action-required'
                         ELSE 'healthy' END,
                    NULL, ?1, ?1,
                    CASE WHEN CAST(substr(u.user_id, 12) AS INTEGER) % 3 = 0 AND k.k = 0 THEN 'bank' END,
                    CASE WHEN CAST(substr(u.user_id, 12) AS INTEGER) % 3 = 0 AND k.k = 0 THEN ?1 - 60 END
             FROM users u, (SELECT 0 AS k UNION ALL SELECT 1) k
             WHERE u.user_id LIKE 'bench-user-%'",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let (took, rss, out) = product(&config, &["status"])?;
    println!(
        "| `status` (table) | {:.0} ms, {rss:.0} MiB, {} lines | <= 300 ms | {} |",
        took * 1000.0,
        out.lines().count(),
        mark(took <= 0.3)
    );
    // `run` to READY=1 through a real notify socket.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(60)))?;
    let started = Instant::now();
    let mut run = Command::new(std::env::current_exe()?)
        .args(["--role", "cli", "--config"])
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut buf = [0u8; 4096];
    let ready = loop {
        let n = notify.recv(&mut buf)?;
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break started.elapsed().as_secs_f64();
        }
    };
    println!(
        "| start to READY=1 | {:.0} ms | <= 500 ms | {} |",
        ready * 1000.0,
        mark(ready <= 0.5)
    );
    // Keep draining stderr so the daemon never blocks on a full pipe.
    let stderr = run.stderr.take().context("stderr")?;
    std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
    let token = std::fs::read_to_string(dir.path().join("api-token"))?;
    let http = reqwest::Client::new();
    for path in ["/metrics", "/v1/status"] {
        // The first scrape warms the page cache; the figure is the median of five after it.
        let mut times = Vec::new();
        for _ in 0..6 {
            let started = Instant::now();
            let r = http
                .get(format!("http://{api}{path}"))
                .bearer_auth(token.trim())
                .send()
                .await?
                .error_for_status()?;
            r.bytes().await?;
            times.push(started.elapsed().as_secs_f64());
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        let t = times[times.len() / 2];
        println!(
            "| `GET {path}` | {:.1} ms | <= 50 ms | {} |",
            t * 1000.0,
            mark(t <= 0.05)
        );
    }
    // The simulator's users are due: the daemon's tick sweeps them, 1M registered.
    let started = Instant::now();
    let swept = loop {
        let text = http
            .get(format!("http://{api}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let swept = text
            .lines()
            .find_map(|l| l.strip_prefix("basiq_health_users_swept_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
        if swept >= sim_users.len() || started.elapsed() > Duration::from_secs(600) {
            break swept;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // SIGTERM, and the daemon's own peak RSS through wait4.
    // SAFETY: signalling our own child, still running.
    unsafe { libc::kill(run.id() as libc::pid_t, libc::SIGTERM) };
    let (status, rss, _, _) = wait_with_rusage(run)?;
    println!(
        "| `run` sweeping {swept} due users with 1M registered: peak RSS of the daemon | {rss:.1} MiB (exit {status}) | <= 64 MB | {} |",
        mark(rss <= 61.0)
    );
    // The inferred-outage count each swept user's plan reads, a third of the register
    // failing bank-side at one bank.
    let store = basiq_health::store::Store::open(&db).await?;
    let key = basiq_health::domain::ConnectorKey::new(
        "BENCH-0",
        &basiq_health::domain::Method::OpenBanking,
    );
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut conn = store.pool().acquire().await?;
    let calls = 2000u32;
    let started = Instant::now();
    let mut listed = 0;
    for _ in 0..calls {
        // What a group commit of 128 users reads per connector: the threshold (3) plus the
        // group's size plus one failing users at most.
        listed = basiq_health::store::connections::key_facts(
            &mut conn,
            std::slice::from_ref(&key),
            since,
            chrono::Duration::hours(1),
            3 + 128 + 1,
        )
        .await?[&key]
            .failing
            .len();
    }
    let per = started.elapsed().as_secs_f64() * 1e3 / f64::from(calls);
    println!(
        "| inferred-outage check per swept user (333,000 failing at one bank): one read per connector per group of up to 128 | {per:.3} ms per read, {listed} failing listed | <= 1 ms | {} |",
        mark(per <= 1.0)
    );
    drop(conn);
    store.close().await;
    let (took, rss, _) = product(&config, &["sweep", "--user", sim_users[0].as_str()])?;
    println!(
        "| `sweep --user` of one user with 1M registered | {:.0} ms, peak RSS {rss:.1} MiB | | |",
        took * 1000.0
    );
    Ok(())
}
