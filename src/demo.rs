//! `basiq-health demo`: the simulator in-process, a temporary database, and the real daemon
//! path (`App::run_until_stopped`) over a compressed day, with an outage that starts and
//! ends during it. Ends with the report. Needs no config file and no key of the user's.

use std::time::Duration;

use anyhow::Context;

use crate::app::App;
use crate::domain::UserId;
use crate::report;
use crate::settings::{LogFormat, LogSettings, Settings};
use crate::store::Store;
use crate::telemetry;
use basiq_sim::{SimConfig, Simulator};

/// The connector the demo takes down and brings back.
const DEMO_OUTAGE: (&str, &str) = ("AU00002", "open-banking");

pub async fn run(users: usize, seed: u64, day: Duration) -> anyhow::Result<u8> {
    let day = day.max(Duration::from_secs(10));
    let sim = Simulator::new(SimConfig {
        users,
        seed,
        step_duration: Duration::from_millis(500),
        ..SimConfig::default()
    });
    let running = sim
        .clone()
        .bind("127.0.0.1:0".parse()?)
        .await
        .context("while starting the simulator")?;
    let dir = tempfile_dir()?;
    let db = dir.join("demo.db");
    // The compressed day: a tick every second, connectors re-read every 2 s.
    let toml = format!(
        "[basiq]\nbase_url = {base:?}\nmax_requests_per_second = 200\n\
         [database]\npath = {db:?}\n\
         [log]\nformat = \"json\"\nlevel = \"warn\"\n\
         [sweep]\nperiod = \"{period}ms\"\ntick = \"* * * * * *\"\nconcurrency = 8\nconnectors_ttl = \"2s\"\n\
         [api]\nlisten = \"\"\n",
        base = running.base_url(),
        db = db.display().to_string(),
        period = day.as_millis(),
    );
    // The simulator's key is handed over in-process, never through the environment.
    let settings = Settings::from_toml(&toml)?;
    let log_file =
        std::fs::File::create(dir.join("demo.log")).context("while creating the demo log")?;
    telemetry::init(
        &LogSettings {
            format: LogFormat::Json,
            level: "info".into(),
        },
        std::sync::Mutex::new(log_file),
    );

    println!(
        "basiq-health demo: {users} simulated users, a day compressed into {}",
        crate::settings::fmt_duration(day)
    );
    println!(
        "  simulator: {}   database: {}",
        running.base_url(),
        db.display()
    );
    println!("  logs (JSON lines): {}", dir.join("demo.log").display());
    let app = App::build_with_key(settings, secrecy::SecretString::from(sim.api_key())).await?;
    let ids = sim
        .user_ids()
        .into_iter()
        .map(UserId::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let registered = app.sweeper().add_users(&ids).await?;
    println!("  registered {registered} users, each at its own offset in the day\n");
    let store: Store = app.sweeper().store().clone();

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    let started = tokio::time::Instant::now();
    let mut outage_started = false;
    let mut outage_ended = false;
    // The day plus a little: every user's slot passes once.
    let total = day + Duration::from_secs(3);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(2).min(day / 10)).await;
        let t = started.elapsed().as_secs_f64() / day.as_secs_f64();
        if !outage_started && t >= 0.25 {
            sim.set_connector_status(DEMO_OUTAGE.0, DEMO_OUTAGE.1, "major-outage");
            outage_started = true;
            println!(
                "  [{:>5.1}s] Pied Piper Bank (open banking) goes down",
                started.elapsed().as_secs_f64()
            );
        }
        if outage_started && !outage_ended && t >= 0.6 {
            sim.set_connector_status(DEMO_OUTAGE.0, DEMO_OUTAGE.1, "operational");
            outage_ended = true;
            println!(
                "  [{:>5.1}s] Pied Piper Bank (open banking) is back",
                started.elapsed().as_secs_f64()
            );
        }
        let swept = store
            .users_swept_since(
                chrono::Utc::now() - chrono::Duration::from_std(total).unwrap_or_default(),
            )
            .await
            .unwrap_or(0);
        let open = store.open_outages().await.map(|o| o.len()).unwrap_or(0);
        println!(
            "  [{:>5.1}s] swept {swept}/{} users; {open} outage(s) open",
            started.elapsed().as_secs_f64(),
            ids.len()
        );
    }
    let _ = stop_tx.send(());
    daemon.await.context("the daemon task failed")??;

    let store = Store::open(&db).await?;
    let status = report::status(&store, None, None).await?;
    let since = chrono::Utc::now()
        - chrono::Duration::from_std(total + Duration::from_secs(60)).unwrap_or_default();
    let outages = store.outages_since(since).await?;
    println!("\n== health per institution ==");
    print!("{}", per_institution(&status));
    println!("\n== outages seen during the day ==");
    for o in &outages {
        let end = o
            .ended_at
            .map(|e| format!("recovered at {}", e.format("%H:%M:%S")))
            .unwrap_or_else(|| "still open".into());
        println!(
            "  {} {:<13} {:<9} started {}  {}{}",
            o.institution_id,
            o.method,
            o.source,
            o.started_at.format("%H:%M:%S"),
            end,
            o.status
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
    }
    println!();
    print!("{}", report::render_table(&status));
    store.close().await;
    running.shutdown().await;
    println!(
        "\ndatabase kept at {} (basiq-health status reads it with [database] path set to it)",
        db.display()
    );
    Ok(0)
}

fn per_institution(status: &report::StatusReport) -> String {
    use std::collections::BTreeMap;
    let mut table: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for c in &status.connections {
        let health = c.health.clone().unwrap_or_else(|| "-".into());
        *table
            .entry((c.institution_id.clone(), c.method.clone()))
            .or_default()
            .entry(health)
            .or_default() += 1;
    }
    let mut out = String::new();
    for ((institution, method), counts) in table {
        let cells: Vec<String> = counts.iter().map(|(h, n)| format!("{h} {n}")).collect();
        out.push_str(&format!(
            "  {institution} {method:<13} {}\n",
            cells.join(", ")
        ));
    }
    out
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("basiq-health-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
    Ok(dir)
}
