//! `--million`: the product's commands, each its own process, over a register of 1,000,000
//! users (random UUIDs: the simulator's users and made-up ones) and 2,000,000 connections.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use basiq_health::domain::UserId;

use super::daemon::{DaemonDir, sample, scrape};
use super::procs::terminate;
use super::seed::{Seeder, random_uuid};
use super::{SimProcess, mark};

const USERS: usize = 1_000_000;

pub async fn million(sim: &SimProcess, sim_users: &[UserId], keep: bool) -> anyhow::Result<()> {
    println!();
    println!(
        "1,000,000 registered users, 2,000,000 connections (the product's commands, each its own process):"
    );
    let dir = DaemonDir::new(sim, "million", "*/2 * * * * *", keep)?;
    register(&dir, sim_users).await?;
    let (took, rss, out) = dir.product(&["status"])?;
    println!(
        "| `status` (table) | {:.0} ms, {rss:.0} MiB, {} lines | <= 300 ms | {} |",
        took * 1000.0,
        out.lines().count(),
        mark(took <= 0.3)
    );
    run(&dir, sim_users.len()).await?;
    inferred_read(&dir).await?;
    let (took, rss, _) = dir.product(&["sweep", "--user", sim_users[0].as_str()])?;
    println!(
        "| `sweep --user` of one user with 1M registered | {:.0} ms, peak RSS {rss:.1} MiB | | |",
        took * 1000.0
    );
    if keep {
        println!("kept: {}", dir.dir.path().display());
    }
    Ok(())
}

/// `users import` of the simulator's users and made-up ones up to a million (the figure),
/// then, by SQL: nobody but the simulator's users due, two connections per made-up user.
/// The made-up banks are not among the simulator's connectors, so the daemon's first
/// `/connectors` answer reclassifies none of them (`--first-start` measures that).
async fn register(dir: &DaemonDir, sim_users: &[UserId]) -> anyhow::Result<()> {
    let file = dir.dir.path().join("users.txt");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for u in sim_users {
            writeln!(w, "{u}")?;
        }
        let mut rng = rand::rng();
        for _ in sim_users.len()..USERS {
            writeln!(w, "{}", random_uuid(&mut rng))?;
        }
    }
    let (took, rss, _) = dir.product(&["users", "import", file.to_str().context("path")?])?;
    println!(
        "| `users import` of 1,000,000 ids | {took:.1} s, {rss:.0} MiB | <= 20 s, <= 64 MB | {} |",
        mark(took <= 20.0 && rss <= 61.0)
    );
    let mut seeder = Seeder::open(&dir.db, chrono::Utc::now()).await?;
    let due: Vec<String> = sim_users.iter().map(|u| u.as_str().to_owned()).collect();
    seeder.number_registered(&due).await?;
    seeder.million_connections().await?;
    seeder.close().await
}

/// `run` to READY=1 through a real notify socket, the API's reads, the tick's sweep of the
/// simulator's users with 1M registered, and the daemon's peak RSS.
async fn run(dir: &DaemonDir, due: usize) -> anyhow::Result<()> {
    let mut daemon = dir.spawn()?;
    let ready = daemon
        .ready(Instant::now() + Duration::from_secs(60))
        .await?
        .context("no READY=1 within 60 s")?
        .as_secs_f64();
    println!(
        "| start to READY=1 | {:.0} ms | <= 500 ms | {} |",
        ready * 1000.0,
        mark(ready <= 0.5)
    );
    let token = dir.api_token()?;
    let http = reqwest::Client::new();
    for path in ["/metrics", "/v1/status"] {
        let t = median_read(&http, &format!("http://{}{path}", dir.api), &token).await?;
        println!(
            "| `GET {path}` | {:.1} ms | <= 50 ms | {} |",
            t * 1000.0,
            mark(t <= 0.05)
        );
    }
    console_pages(dir, &http).await?;
    // The simulator's users are due: the daemon's tick sweeps them, 1M registered.
    let started = Instant::now();
    let swept = loop {
        let text = scrape(&http, dir.api).await?;
        let swept = sample(&text, "basiq_health_users_swept_total").unwrap_or(0.0) as usize;
        if swept >= due || started.elapsed() > Duration::from_secs(600) {
            break swept;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, rss, _) = terminate(daemon.child, Duration::from_secs(60)).await?;
    println!(
        "| `run` sweeping {swept} due users with 1M registered: peak RSS of the daemon | {rss:.1} MiB ({status}) | <= 64 MB | {} |",
        mark(rss <= 61.0)
    );
    Ok(())
}

/// Each console page with 1M registered: signed in with the link `basiq-health console`
/// prints, the median of five loads (after one that warms the page cache) as the server
/// answers them on loopback.
async fn console_pages(dir: &DaemonDir, http: &reqwest::Client) -> anyhow::Result<()> {
    let (_, _, link) = dir.product(&["console"])?;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let signed = no_redirect.get(link.trim()).send().await?;
    let cookie = signed
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bh_session="))
        .and_then(|v| v.split(';').next())
        .context("the console's sign-in link set no session")?
        .to_owned();
    let (bank, method, connection): (String, String, String) = {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.db.display())).await?;
        let row =
            sqlx::query_as("SELECT institution_id, method, connection_id FROM connections LIMIT 1")
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        row
    };
    let pages = [
        "/".to_owned(),
        "/banks".to_owned(),
        format!("/banks/{bank}/{method}"),
        format!("/connections/{connection}"),
        "/refreshes".to_owned(),
        "/notifications".to_owned(),
    ];
    for page in pages {
        let mut times = Vec::new();
        for _ in 0..6 {
            let started = Instant::now();
            let r = http
                .get(format!("http://{}{page}", dir.api))
                .header(reqwest::header::COOKIE, &cookie)
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
            "| console `GET {page}` | {:.1} ms | <= 200 ms | {} |",
            t * 1000.0,
            mark(t <= 0.2)
        );
    }
    Ok(())
}

/// The median of five reads of `url` after one that warms the page cache (seconds).
async fn median_read(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let r = http
            .get(url)
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
        r.bytes().await?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The inferred-outage count each swept user's plan reads, a third of the register
/// failing bank-side at one bank.
async fn inferred_read(dir: &DaemonDir) -> anyhow::Result<()> {
    let store = basiq_health::store::Store::open(&dir.db).await?;
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
    Ok(())
}
