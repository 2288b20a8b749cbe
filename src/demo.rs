//! `basiq-health demo`: the simulator in-process, a temporary database, and the real daemon
//! path (`App::run_until_stopped`) over a compressed day, with an outage that starts and
//! ends during it. Ends with the report. Needs no config file and no key of the user's.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::app::App;
use crate::clock::Clock;
use crate::domain::UserId;
use crate::report;
use crate::settings::{LogFormat, LogSettings, Settings};
use crate::store::Store;
use crate::telemetry;
use basiq_sim::{RunningSim, SimConfig, Simulator};

/// The demo's two Standard Webhooks secrets: Basiq's (the simulator signs with it) and the
/// app's (the daemon signs its notifications with it). Made up, used nowhere else.
const BASIQ_SECRET: &str = "whsec_ZGVtby1iYXNpcS1zZWNyZXQtZm9yLWJhc2lxLWhlYWx0aA==";
const APP_SECRET: &str = "whsec_ZGVtby1hcHAtc2VjcmV0LWZvci1iYXNpcS1oZWFsdGg=";

/// What the demo's receiver verified: when, and the notification.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(tokio::time::Instant, serde_json::Value)>>>;

/// A small receiver, as a partner's app would run: verifies each notification with the
/// `standardwebhooks` crate and keeps it.
async fn start_receiver() -> anyhow::Result<(std::net::SocketAddr, Received)> {
    use axum::http::{HeaderMap, StatusCode};
    let received: Received = Default::default();
    let kept = received.clone();
    let verifier = std::sync::Arc::new(
        standardwebhooks::Webhook::new(APP_SECRET).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: bytes::Bytes| {
            let kept = kept.clone();
            let verifier = verifier.clone();
            async move {
                if verifier.verify(&body, &headers).is_err() {
                    return StatusCode::UNAUTHORIZED;
                }
                if let Ok(v) = serde_json::from_slice(&body) {
                    kept.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((tokio::time::Instant::now(), v));
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, received))
}

/// The connector the demo takes down and brings back.
const DEMO_OUTAGE: (&str, &str) = ("AU00002", "open-banking");

/// When the outage began and ended at the simulator, once it did.
type OutageWindow = (Option<tokio::time::Instant>, Option<tokio::time::Instant>);

pub async fn run(users: usize, seed: u64, day: Duration, serve: bool) -> anyhow::Result<u8> {
    let day = day.max(Duration::from_secs(10));
    let (sim, running) = start_simulator(users, seed).await?;
    let dir = tempfile_dir()?;
    let db = dir.join("demo.db");
    let (receiver, received) = start_receiver().await?;
    let settings = demo_settings(&dir, &db, &running.base_url(), receiver, day)?;
    init_log(&dir)?;
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
    // The demo runs on the system clock, like the daemon.
    let clock = Clock::system();
    let app = start_app(settings, &sim, &clock, receiver).await?;
    let store: Store = app.context().store().clone();
    let witness = app.witness().cloned();
    if let Some(addr) = app.api_addr() {
        let code = crate::console::auth::create_code(&store, clock.now()).await?;
        println!(
            "  the console (sign in within 10 minutes; `--serve` keeps it up after the tour):\n    {}\n",
            crate::console::auth::sign_in_link(addr, &code)
        );
    }
    let api_addr = app.api_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));
    // The day plus a little: every user's slot passes once.
    let total = day + Duration::from_secs(3);
    let cdr = tokio::spawn(second_witness(sim.clone(), witness, clock.clone(), day));
    let outage_window = compressed_day(&sim, &store, &clock, day, total).await;
    let _ = cdr.await;
    event_flow(&sim, &store, &received).await;
    outage_notices(&received, outage_window);
    cdr_notices(&received);
    if serve {
        let code = crate::console::auth::create_code(&store, clock.now()).await?;
        if let Some(addr) = api_addr {
            println!(
                "\nthe daemon, its console and the simulator stay up until Ctrl-C; sign in at\n  {}",
                crate::console::auth::sign_in_link(addr, &code)
            );
        }
        tokio::signal::ctrl_c()
            .await
            .context("while waiting for Ctrl-C")?;
    }
    let _ = stop_tx.send(());
    daemon.await.context("the daemon task failed")??;
    final_report(&db, &clock, total).await?;
    running.shutdown().await;
    println!(
        "\ndatabase kept at {} (basiq-health status reads it with [database] path set to it)",
        db.display()
    );
    Ok(0)
}

/// The simulator, serving on a loopback port.
async fn start_simulator(users: usize, seed: u64) -> anyhow::Result<(Simulator, RunningSim)> {
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
    Ok((sim, running))
}

/// The daemon's settings for the compressed day, its two secrets written into `dir`.
fn demo_settings(
    dir: &Path,
    db: &Path,
    base: &str,
    receiver: std::net::SocketAddr,
    day: Duration,
) -> anyhow::Result<Settings> {
    let basiq_secret = dir.join("basiq-webhook-secret");
    let app_secret = dir.join("app-secret");
    std::fs::write(&basiq_secret, BASIQ_SECRET)?;
    std::fs::write(&app_secret, APP_SECRET)?;
    // The compressed day: a tick every second, connectors re-read every 2 s.
    let toml = format!(
        "[basiq]\nbase_url = {base:?}\nmax_requests_per_second = 200\n\
         [database]\npath = {db:?}\n\
         [log]\nformat = \"json\"\nlevel = \"warn\"\n\
         [sweep]\nperiod = \"{period}ms\"\ntick = \"* * * * * *\"\nconcurrency = 8\nconnectors_ttl = \"2s\"\n\
         [api]\nlisten = \"127.0.0.1:0\"\n\
         [webhooks]\nlisten = \"127.0.0.1:0\"\nsecret_file = {basiq_secret:?}\npoll_interval = \"0s\"\n\
         [cdr]\nregister_url = \"{base}/cdr-register/v1\"\n\
         [notify]\nbackoff_initial = \"200ms\"\n\
         [[notify.endpoints]]\nurl = \"http://{receiver}/hook\"\nsecret_file = {app_secret:?}\n",
        db = db.display().to_string(),
        period = day.as_millis(),
        basiq_secret = basiq_secret.display().to_string(),
        app_secret = app_secret.display().to_string(),
    );
    // The simulator's key is handed over in-process, never through the environment.
    Ok(Settings::from_toml(&toml)?)
}

/// The daemon's logs, as JSON lines in `dir/demo.log`.
fn init_log(dir: &Path) -> anyhow::Result<()> {
    let log_file =
        std::fs::File::create(dir.join("demo.log")).context("while creating the demo log")?;
    telemetry::init(
        &LogSettings {
            format: LogFormat::Json,
            level: "info".into(),
        },
        std::sync::Mutex::new(log_file),
    );
    Ok(())
}

/// The daemon built against the simulator, Basiq's webhooks pointed at it and every
/// simulated user registered.
async fn start_app(
    settings: Settings,
    sim: &Simulator,
    clock: &Clock,
    receiver: std::net::SocketAddr,
) -> anyhow::Result<App> {
    let app = App::build_with_clock(
        settings,
        secrecy::SecretString::from(sim.api_key()),
        clock.clone(),
    )
    .await?;
    let ids = sim
        .user_ids()
        .into_iter()
        .map(UserId::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(addr) = app.webhook_addr() {
        sim.set_webhook_target(&format!("http://{addr}/v1/basiq/webhook"), BASIQ_SECRET);
        println!(
            "  webhooks in: http://{addr}/v1/basiq/webhook   notifications out: http://{receiver}/hook"
        );
    }
    let registered = app.context().add_users(&ids).await?;
    println!("  registered {registered} users, each at its own offset in the day\n");
    Ok(app)
}

/// The compressed day, told as it goes: the outage starts at a quarter of it and ends at
/// 60 %. Returns when it began and ended.
async fn compressed_day(
    sim: &Simulator,
    store: &Store,
    clock: &Clock,
    day: Duration,
    total: Duration,
) -> OutageWindow {
    let users = sim.user_ids().len();
    let started = tokio::time::Instant::now();
    let mut window: OutageWindow = (None, None);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(2).min(day / 10)).await;
        let t = started.elapsed().as_secs_f64() / day.as_secs_f64();
        if window.0.is_none() && t >= 0.25 {
            window.0 = Some(start_outage(sim, started));
        }
        if window.0.is_some() && window.1.is_none() && t >= 0.6 {
            sim.set_connector_status(DEMO_OUTAGE.0, DEMO_OUTAGE.1, "operational");
            window.1 = Some(tokio::time::Instant::now());
            println!(
                "  [{:>5.1}s] Pied Piper Bank (open banking) is back",
                started.elapsed().as_secs_f64()
            );
        }
        let swept = store
            .users_swept_since(clock.now() - chrono::Duration::from_std(total).unwrap_or_default())
            .await
            .unwrap_or(0);
        let open = store.open_outages().await.map(|o| o.len()).unwrap_or(0);
        println!(
            "  [{:>5.1}s] swept {swept}/{users} users; {open} outage(s) open",
            started.elapsed().as_secs_f64(),
        );
    }
    window
}

/// The bank whose own CDR status the demo turns down before Basiq's `/connectors` does, and
/// the one that announces maintenance ahead.
const CDR_FIRST: &str = "AU00001";
const ANNOUNCES: &str = "AU00003";

/// The second witness over the compressed day: at 10 % a bank announces maintenance for
/// 80-90 % of the day; at 35 % another bank's data holder reports itself `UNAVAILABLE`,
/// and only at 45 % does Basiq's `/connectors` say so; both are back at 55 %. The daemon
/// reads the CDR when told here (`cdr poll`'s path) besides its own schedule.
async fn second_witness(
    sim: Simulator,
    witness: Option<crate::work::cdr::Witness>,
    clock: Clock,
    day: Duration,
) {
    let Some(witness) = witness else {
        return;
    };
    let started = tokio::time::Instant::now();
    let at = |share: f64| started + day.mul_f64(share);
    let say = |what: &str| {
        println!("  [{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    };
    let poll = || async {
        if let Err(e) = witness.poll(true).await {
            println!("  (the CDR poll failed: {e})");
        }
    };
    tokio::time::sleep_until(at(0.1)).await;
    if let Some(brand) = basiq_sim::cdr_brand_id(ANNOUNCES) {
        let from = clock.now() + chrono::Duration::from_std(day.mul_f64(0.7)).unwrap_or_default();
        let minutes = day.mul_f64(0.1).as_secs().max(60) / 60;
        sim.set_cdr_outages(
            brand,
            vec![basiq_sim::CdrOutage {
                outage_time: from.to_rfc3339(),
                duration: format!("PT{minutes}M"),
                is_partial: Some(false),
                explanation: "Planned core banking upgrade".into(),
            }],
        );
        say(
            "Nucleus Bank announces maintenance ahead (CDR planned outage): told once, no unattended refresh inside it",
        );
        poll().await;
    }
    tokio::time::sleep_until(at(0.35)).await;
    if let Some(brand) = basiq_sim::cdr_brand_id(CDR_FIRST) {
        sim.set_cdr_status(brand, "UNAVAILABLE", Some("Online banking is unavailable"));
        say(
            "Aviato Bank reports itself UNAVAILABLE (CDR); Basiq's /connectors still says operational",
        );
        poll().await;
        tokio::time::sleep_until(at(0.45)).await;
        sim.set_connector_status(CDR_FIRST, "open-banking", "major-outage");
        say("... and now Basiq's /connectors says major-outage too");
        tokio::time::sleep_until(at(0.55)).await;
        sim.set_cdr_status(brand, "OK", None);
        sim.set_connector_status(CDR_FIRST, "open-banking", "operational");
        poll().await;
        say("Aviato Bank is back (CDR OK, /connectors operational)");
    }
}

/// What the partner's app heard of the second witness.
fn cdr_notices(received: &Received) {
    let all = lock(received).clone();
    println!("\n== the second witness (the banks' own CDR status) ==");
    for (_, n) in &all {
        let data = &n["data"];
        match n["type"].as_str() {
            Some("institution.maintenance_scheduled") => println!(
                "  maintenance announced at {}: {} to {} ({})",
                data["institution_id"].as_str().unwrap_or("-"),
                data["starts_at"].as_str().unwrap_or("-"),
                data["ends_at"].as_str().unwrap_or("-"),
                report::shown(data["explanation"].as_str().unwrap_or("")),
            ),
            Some(t @ ("institution.outage_started" | "institution.outage_ended"))
                if data["institution_id"] == CDR_FIRST =>
            {
                println!(
                    "  {t} at {} {} (source {})",
                    data["institution_id"].as_str().unwrap_or("-"),
                    data["method"].as_str().unwrap_or("-"),
                    data["source"].as_str().unwrap_or("-"),
                );
            }
            _ => {}
        }
    }
}

/// The bank goes down at the simulator, and a connection there is invalidated meanwhile.
/// Returns when it went down.
fn start_outage(sim: &Simulator, started: tokio::time::Instant) -> tokio::time::Instant {
    sim.set_connector_status(DEMO_OUTAGE.0, DEMO_OUTAGE.1, "major-outage");
    let down = tokio::time::Instant::now();
    println!(
        "  [{:>5.1}s] Pied Piper Bank (open banking) goes down",
        started.elapsed().as_secs_f64()
    );
    // A user of that bank changes their password meanwhile: Basiq's webhook says so, but
    // the bank is down, so nobody is asked to act until it is back.
    if let Some((_, c)) = healthy_where(sim, |c| {
        c.institution_id == DEMO_OUTAGE.0 && c.method == DEMO_OUTAGE.1
    }) {
        sim.invalidate_connection(&c);
        println!(
            "  [{:>5.1}s] ... and connection {c} there is invalidated (connection.invalidated sent)",
            started.elapsed().as_secs_f64()
        );
    }
    down
}

/// The report over the database the day left: health per institution, the outages seen,
/// the status table.
async fn final_report(db: &Path, clock: &Clock, total: Duration) -> anyhow::Result<()> {
    let store = Store::open(db).await?;
    let status = report::status(&store, None, None, clock.now()).await?;
    let since = clock.now()
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
    print!("{}", report::render_table(&status, clock.now()));
    store.close().await;
    Ok(())
}

/// When each step of the event flow was seen, from the invalidation on.
#[derive(Default)]
struct Timeline {
    heard: Option<Duration>,
    action: Option<Duration>,
    told: Option<Duration>,
    steps: Vec<(Duration, String)>,
}

/// A healthy connection invalidated at the simulator: Basiq's webhook in, the user swept,
/// `action-required` stored, the notification out, each step timed.
async fn event_flow(sim: &Simulator, store: &Store, received: &Received) {
    let Some((user, connection)) = healthy_where(sim, |c| c.institution_id != DEMO_OUTAGE.0) else {
        println!("\n(no healthy connection to invalidate)");
        return;
    };
    let Ok(connection_id) = crate::domain::ConnectionId::parse(connection.clone()) else {
        return;
    };
    println!("\n== webhook in, notification out ==");
    let t0 = tokio::time::Instant::now();
    let Some(event) = sim.invalidate_connection(&connection) else {
        return;
    };
    println!(
        "  [ 0.000s] the simulator invalidates connection {connection} of user {user} and sends connection.invalidated"
    );
    let timeline = watch_event(store, received, t0, &event.id, &connection_id).await;
    print_timeline(timeline);
}

/// Polls the database and the receiver for up to 20 s, until the notification arrives.
async fn watch_event(
    store: &Store,
    received: &Received,
    t0: tokio::time::Instant,
    event_id: &str,
    connection_id: &crate::domain::ConnectionId,
) -> Timeline {
    let deadline = t0 + Duration::from_secs(20);
    let mut seen = Timeline::default();
    while tokio::time::Instant::now() < deadline && seen.told.is_none() {
        if seen.heard.is_none()
            && store
                .recent_events(50)
                .await
                .is_ok_and(|e| e.iter().any(|e| e.event_id.as_deref() == Some(event_id)))
        {
            seen.heard = Some(t0.elapsed());
        }
        if seen.action.is_none()
            && store
                .connection(connection_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.health == Some(crate::plan::classify::Health::ActionRequired))
        {
            seen.action = Some(t0.elapsed());
        }
        let got = lock(received)
            .iter()
            .find(|(at, n)| *at >= t0 && n["data"]["connection_id"] == connection_id.as_str())
            .map(|(at, n)| (*at - t0, n.clone()));
        if let Some((at, n)) = got {
            seen.told = Some(at);
            seen.steps.push((at, notification_out(&n)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    seen
}

/// A notification as the timeline tells it.
fn notification_out(n: &serde_json::Value) -> String {
    format!(
        "notification out: {} {} -> {}, user_action {}: \"{}\"",
        n["type"].as_str().unwrap_or_default(),
        n["data"]["from"].as_str().unwrap_or("-"),
        n["data"]["to"].as_str().unwrap_or("-"),
        n["data"]["user_action"].as_str().unwrap_or("-"),
        n["data"]["text"].as_str().unwrap_or_default(),
    )
}

fn print_timeline(seen: Timeline) {
    // The receiver stamps its arrival; the others are seen by polling the database, a
    // little late: the notification is written in the health change's own transaction, and
    // the event is stored before it is processed, so neither comes after the next step.
    let action = seen.action.map(|a| seen.told.map_or(a, |t| a.min(t)));
    let heard = seen.heard.map(|h| action.map_or(h, |a| h.min(a)));
    if let Some(h) = heard {
        println!(
            "  [{:>6.3}s] webhook in: verified and stored, answered 200",
            h.as_secs_f64()
        );
    }
    if let Some(a) = action {
        println!(
            "  [{:>6.3}s] user swept (2 requests): health action-required",
            a.as_secs_f64()
        );
    }
    for (at, text) in seen.steps {
        println!("  [{:>6.3}s] {text}", at.as_secs_f64());
    }
    if seen.told.is_none() {
        println!("  (no notification within 20 s)");
    }
}

/// A user and one of their healthy connections that `wanted` accepts.
fn healthy_where(
    sim: &Simulator,
    wanted: impl Fn(&basiq_sim::ScriptedConnection) -> bool,
) -> Option<(String, String)> {
    sim.user_ids().into_iter().find_map(|u| {
        sim.scripted(&u)
            .into_iter()
            .find(|c| sim.case_of(&c.id) == Some(basiq_sim::Case::Healthy) && wanted(c))
            .map(|c| (u, c.id))
    })
}

/// What the receiver kept so far.
fn lock(
    received: &Received,
) -> std::sync::MutexGuard<'_, Vec<(tokio::time::Instant, serde_json::Value)>> {
    received.lock().unwrap_or_else(|e| e.into_inner())
}

/// A notification about the connector in outage (or one of its connections).
fn at_bank(n: &serde_json::Value) -> bool {
    n["data"]["institution_id"] == DEMO_OUTAGE.0 && n["data"]["method"] == DEMO_OUTAGE.1
}

/// The outage's two notices at the receiver, and what was told about its connections
/// while it lasted.
fn outage_notices(received: &Received, window: OutageWindow) {
    let all = lock(received).clone();
    println!(
        "\n== notifications about {} {} ==",
        DEMO_OUTAGE.0, DEMO_OUTAGE.1
    );
    let (start, end) = institution_notices(&all);
    // An ask made in the instant between the bank going down at the simulator and the
    // daemon's next read of /connectors cannot know of it: shown apart.
    if let (Some(flip), Some(known)) = (window.0, start) {
        for (_, n) in all.iter().filter(|(at, n)| {
            *at >= flip && *at < known && at_bank(n) && n["data"]["user_action"] != "none"
        }) {
            println!(
                "  before the daemon could know of the outage: connection {} asked to {}",
                n["data"]["connection_id"].as_str().unwrap_or("-"),
                n["data"]["user_action"].as_str().unwrap_or("-"),
            );
        }
    }
    // From the daemon's outage notice to its end's.
    let (Some(from), to) = (start.or(window.0), end.or(window.1)) else {
        println!("  (the outage was not seen)");
        return;
    };
    let during = health_changes(&all, |at| at >= from && to.is_none_or(|t| at <= t));
    tell_health_changes("during the outage", &during);
    let after = health_changes(&all, |at| to.is_some_and(|t| at > t));
    tell_health_changes("after it", &after);
    let asked = during
        .iter()
        .filter(|n| n["data"]["user_action"] != "none")
        .count();
    println!(
        "  during the outage: {} health notice(s) about its connections, {asked} asking a user to act",
        during.len()
    );
    let by_type = all
        .iter()
        .fold(std::collections::BTreeMap::new(), |mut m, (_, n)| {
            *m.entry(n["type"].as_str().unwrap_or_default().to_owned())
                .or_insert(0u32) += 1;
            m
        });
    let line: Vec<String> = by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "  all notifications verified and received: {}",
        line.join(", ")
    );
}

/// The daemon's `institution.*` notices about the bank, each told; returns when the first
/// outage notice arrived, and the last end notice after it.
fn institution_notices(
    all: &[(tokio::time::Instant, serde_json::Value)],
) -> (Option<tokio::time::Instant>, Option<tokio::time::Instant>) {
    let mut start = None;
    let mut end = None;
    for (at, n) in all.iter().filter(|(_, n)| at_bank(n)) {
        let kind = n["type"].as_str().unwrap_or_default();
        if kind == crate::plan::notices::OUTAGE_STARTED && start.is_none() {
            start = Some(*at);
        }
        if kind == crate::plan::notices::OUTAGE_ENDED && start.is_some() {
            end = Some(*at);
        }
        if kind.starts_with("institution.") {
            println!(
                "  {kind}: source {}, {} connection(s) affected",
                n["data"]["source"].as_str().unwrap_or("-"),
                n["data"]["affected_connections"]
            );
        }
    }
    (start, end)
}

/// The health changes about the bank's connections received at a time `when` accepts.
fn health_changes(
    all: &[(tokio::time::Instant, serde_json::Value)],
    when: impl Fn(tokio::time::Instant) -> bool,
) -> Vec<&serde_json::Value> {
    all.iter()
        .filter(|(at, n)| when(*at) && at_bank(n))
        .filter(|(_, n)| n["type"] == crate::plan::notices::HEALTH_CHANGED)
        .map(|(_, n)| n)
        .collect()
}

fn tell_health_changes(label: &str, changes: &[&serde_json::Value]) {
    for n in changes {
        println!(
            "  {label}: connection {} {} -> {}, user_action {}",
            n["data"]["connection_id"].as_str().unwrap_or("-"),
            n["data"]["from"].as_str().unwrap_or("-"),
            n["data"]["to"].as_str().unwrap_or("-"),
            n["data"]["user_action"].as_str().unwrap_or("-"),
        );
    }
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
