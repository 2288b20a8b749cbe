//! The life simulation: the real daemon (sweep passes, login checks, owed refreshes and the
//! followers of their jobs, Basiq's webhooks in through its receiver and the `/events` poll,
//! the CDR witness reading the simulator's Register and data holders, notifications out to
//! a receiver that verifies every signature) over days of a scripted world
//! (`basiq_sim::world`), then every promise checked over the whole run (`check`).
//!
//! Time is virtual: one driven clock (`Clock::manual`) is the daemon's and the simulator's.
//! The harness is the scheduler: each step (a minute, as the shipped `sweep.tick`) it makes
//! what the world holds for that minute happen, lets the daemon do one tick of each of its
//! units of work to the end, waits until the followers of refresh jobs are asleep on the
//! clock again, then moves the clock. Virtual rather than compressed time because a week
//! then runs in seconds whatever the machine's load, a run repeats for its seed, the
//! 24-hour cap window and every setting keep their production values, and no result depends
//! on how fast a request happens to be answered on a shared machine.
//!
//! Shared by `tests/it/life.rs` (a short run inside `cargo test`) and `examples/life.rs`
//! (`cargo run --release --example life -- --days 7 --users 300 --seed S`).

#![allow(dead_code)]

#[path = "check.rs"]
pub mod check;
#[path = "receiver.rs"]
pub mod receiver;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use basiq_health::app::App;
use basiq_health::clock::Clock;
use basiq_health::domain::UserId;
use basiq_sim::world::{self, World, WorldConfig, WorldEvent};
use basiq_sim::{RunningSim, SimConfig, Simulator};
use chrono::{DateTime, TimeDelta, Utc};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

/// The secret Basiq signs its webhooks with in the simulated world.
const BASIQ_SECRET: &str = "whsec_bGlmZS1zaW11bGF0aW9uLWJhc2lxLXNlY3JldC0wMQ==";
/// The partner's endpoint secret.
const APP_SECRET: &str = "whsec_bGlmZS1zaW11bGF0aW9uLWFwcC1zZWNyZXQtMDAwMQ==";

/// What to run.
#[derive(Clone, Debug)]
pub struct LifeConfig {
    pub users: usize,
    pub days: u32,
    pub seed: u64,
    /// `smart-cache` or `daily`.
    pub mode: String,
    /// One step of the clock (the shipped tick is a minute).
    pub step: Duration,
    /// After the world's last day: time for deliveries and re-checks to finish.
    pub drain: Duration,
}

impl LifeConfig {
    pub fn new(users: usize, days: u32, seed: u64) -> Self {
        Self {
            users,
            days,
            seed,
            mode: "daily".into(),
            step: Duration::from_secs(60),
            drain: Duration::from_secs(6 * 3600),
        }
    }
}

/// Midnight UTC on a fixed day: runs repeat for their seed.
pub fn start_of_run() -> DateTime<Utc> {
    "2026-11-02T00:00:00Z".parse().expect("a valid start")
}

/// The daemon's settings in the life run: the shipped defaults, but for the addresses (the
/// CDR Register is the simulator's: never the real one), the mode and a pace that defers
/// rather than waits (`max_wait = "0s"`: the harness moves the clock, nothing may wait on it
/// within a tick).
fn settings_toml(
    config: &LifeConfig,
    sim: &RunningSim,
    dir: &std::path::Path,
    hook: &str,
) -> String {
    format!(
        "[basiq]\nbase_url = {base:?}\nmax_requests_per_second = 1000\nretry_base_delay = \"20ms\"\n\
         [database]\npath = {db:?}\n\
         [api]\nlisten = \"\"\n\
         [refresh]\nmode = {mode:?}\nmax_wait = \"0s\"\n\
         [webhooks]\nlisten = \"127.0.0.1:0\"\nsecret_file = {basiq:?}\npoll_interval = \"15m\"\n\
         [[notify.endpoints]]\nurl = {hook:?}\nsecret_file = {app:?}\n\
         [cdr]\nregister_url = {register:?}\nmax_requests_per_second = 1000\n",
        base = sim.base_url(),
        register = sim.cdr_register_url(),
        db = dir.join("life.db").display().to_string(),
        mode = config.mode,
        basiq = dir.join("basiq-secret").display().to_string(),
        app = dir.join("app-secret").display().to_string(),
    )
}

/// Everything a run leaves for the checks.
pub struct Run {
    pub config: LifeConfig,
    pub world: World,
    pub sim: Simulator,
    pub app: App,
    pub receiver: receiver::Receiver,
    pub started: DateTime<Utc>,
    pub ended: DateTime<Utc>,
    /// Health notices delivered while the connection no longer had that health.
    pub stale_sends: Vec<String>,
    /// Login checks that failed (a breach of nothing, but reported).
    pub login_errors: u64,
    /// CDR polls that failed, and reads within the polls that did not answer (reported).
    pub cdr_errors: u64,
    pub cdr_read_failures: u64,
    pub steps: u64,
    _dir: tempfile::TempDir,
    _sim: RunningSim,
    _cancel: CancellationToken,
}

/// Runs the world and checks it.
pub async fn run(config: &LifeConfig) -> anyhow::Result<check::Report> {
    let run = simulate(config).await?;
    check::check(&run).await
}

/// Runs the world; the checks are [`check::check`].
pub async fn simulate(config: &LifeConfig) -> anyhow::Result<Run> {
    let start = start_of_run();
    let clock = Clock::manual(start);
    let sim_clock = clock.clone();
    let sim = Simulator::new(SimConfig {
        users: 0,
        seed: config.seed,
        step_duration: Duration::from_secs(20),
        clock: Arc::new(move || sim_clock.now()),
        world: true,
        ..SimConfig::default()
    });
    let world = world::generate(WorldConfig {
        users: config.users,
        days: config.days,
        seed: config.seed,
        start,
    });
    world.install(&sim);
    let running = sim
        .clone()
        .bind("127.0.0.1:0".parse()?)
        .await
        .context("the simulator binds")?;
    // Now and then a webhook is lost (the poll must find it) or sent twice.
    sim.set_webhook_chaos(7, 5);

    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("basiq-secret"), BASIQ_SECRET)?;
    std::fs::write(dir.path().join("app-secret"), APP_SECRET)?;
    let receiver = receiver::Receiver::start(APP_SECRET, clock.clone(), start, config.days).await?;
    let settings = basiq_health::settings::Settings::from_toml(&settings_toml(
        config,
        &running,
        dir.path(),
        &receiver.url(),
    ))
    .context("the life settings are valid")?;
    let mut app = App::build_with_clock(settings, SecretString::from(sim.api_key()), clock.clone())
        .await
        .context("the daemon builds")?;
    let cancel = CancellationToken::new();
    let hook = app
        .serve_webhooks(&cancel)
        .context("the webhook receiver is enabled")?;
    sim.set_webhook_target(&format!("http://{hook}/v1/basiq/webhook"), BASIQ_SECRET);
    let ids: Vec<UserId> = world
        .users
        .iter()
        .map(|u| UserId::parse(&u.id).expect("the world's ids are valid"))
        .collect();
    app.context().add_users(&ids).await?;

    let mut run = Run {
        config: config.clone(),
        world,
        sim,
        app,
        receiver,
        started: start,
        ended: start,
        stale_sends: Vec::new(),
        login_errors: 0,
        cdr_errors: 0,
        cdr_read_failures: 0,
        steps: 0,
        _dir: dir,
        _sim: running,
        _cancel: cancel,
    };
    drive(&mut run, &clock).await?;
    run.ended = clock.now();
    Ok(run)
}

/// Steps the clock from the start to the end of the world plus the drain.
async fn drive(run: &mut Run, clock: &Clock) -> anyhow::Result<()> {
    let end = run.started
        + TimeDelta::days(i64::from(run.config.days))
        + TimeDelta::from_std(run.config.drain)?;
    let poll_every = TimeDelta::minutes(15);
    let mut next_poll = run.started + poll_every;
    let mut next_event = 0;
    let processor = basiq_health::work::event::Processor {
        context: run.app.context().clone(),
        register_new_users: false,
        wake: Arc::default(),
    };
    while clock.now() < end {
        let now = clock.now();
        settle_followers(run, clock).await?;
        while let Some(timed) = run.world.timeline.get(next_event).filter(|t| t.at <= now) {
            let event = timed.event.clone();
            next_event += 1;
            happen(run, &event).await;
        }
        run.sim.tick();
        run.sim.webhooks_settled().await;
        let cancel = CancellationToken::new();
        while processor.process_pending(&cancel).await? > 0 {}
        if now >= next_poll {
            next_poll = now + poll_every;
            let store = run.app.context().store();
            basiq_health::events::poll::poll_once(run.app.context().client(), store, now).await?;
            while processor.process_pending(&cancel).await? > 0 {}
        }
        poll_cdr(run).await?;
        run.app
            .context()
            .run_pass(basiq_health::work::PassTrigger::Tick, None, &cancel)
            .await?;
        run.app.refresher().run_due(&cancel).await?;
        settle_followers(run, clock).await?;
        deliver(run).await?;
        run.steps += 1;
        clock.advance(run.config.step);
    }
    Ok(())
}

/// One world event: the simulator's to make, or a login the daemon checks.
async fn happen(run: &mut Run, event: &WorldEvent) {
    match event {
        WorldEvent::Login { user_id } => {
            let user = UserId::parse(user_id).expect("the world's ids are valid");
            if let Err(e) = run.app.refresher().login(&user).await {
                tracing::warn!(error = %e, user_id, "life: login check failed");
                run.login_errors += 1;
            }
        }
        other => run.sim.apply(other),
    }
}

/// One poll of the CDR witness (the daemon's tick runs one): whatever is due of the Register
/// and each data holder's status and planned outages.
async fn poll_cdr(run: &mut Run) -> anyhow::Result<()> {
    let witness = run
        .app
        .witness()
        .context("the CDR witness is enabled (cdr.enabled)")?;
    match witness.poll(false).await {
        Ok(polled) => run.cdr_read_failures += polled.failures as u64,
        Err(e) => {
            tracing::warn!(error = %e, "life: CDR poll failed");
            run.cdr_errors += 1;
        }
    }
    Ok(())
}

/// Waits until every follower of a refresh job is asleep on the clock (none due to wake):
/// the daemon has nothing left to do at this instant.
async fn settle_followers(run: &Run, clock: &Clock) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let quiet =
            clock.overdue() == 0 && clock.parked() >= run.app.refresher().followers_in_flight();
        if quiet {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "followers did not settle at {} ({} in flight, {} asleep, {} overdue)",
            clock.now(),
            run.app.refresher().followers_in_flight(),
            clock.parked(),
            clock.overdue()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Delivery rounds until one attempts nothing; each health notice delivered must still be
/// the connection's health.
async fn deliver(run: &mut Run) -> anyhow::Result<()> {
    let settings = run.app.settings().notify.clone();
    let endpoint = settings.endpoints[0].clone();
    let store = run.app.context().store().clone();
    for _ in 0..20 {
        let seen = run.receiver.count();
        let attempted = basiq_health::work::delivery::deliver_round(
            &store,
            &settings,
            Some(run.app.context()),
            &endpoint,
            run.app.clock(),
        )
        .await?;
        for receipt in run.receiver.since(seen) {
            if let Some(stale) = stale_send(&store, &receipt).await? {
                run.stale_sends.push(stale);
            }
        }
        if attempted == 0 {
            break;
        }
    }
    Ok(())
}

/// A health notice delivered while its connection has another health.
async fn stale_send(
    store: &basiq_health::store::Store,
    receipt: &receiver::Receipt,
) -> anyhow::Result<Option<String>> {
    let body = &receipt.body;
    if body["type"] != "connection.health_changed" {
        return Ok(None);
    }
    let connection = body["data"]["connection_id"].as_str().unwrap_or_default();
    let health: Option<String> =
        sqlx::query_scalar("SELECT health FROM connections WHERE connection_id = ?")
            .bind(connection)
            .fetch_optional(store.pool())
            .await?
            .flatten();
    let told = body["data"]["to"].as_str();
    // A health not told (a refresh in progress, a re-check pending) leaves the last told
    // one standing.
    let untold = matches!(health.as_deref(), Some("in-progress" | "pending"));
    Ok((health.as_deref() != told && !untold).then(|| {
        format!(
            "{} at {}: told {:?}, the connection is {:?}",
            connection, receipt.at, told, health
        )
    }))
}

/// The connection's facts in the world: its user, connector and whether it asks for a code.
pub fn connections_of(world: &World) -> HashMap<String, check::WorldConnection> {
    world
        .users
        .iter()
        .flat_map(|u| {
            u.connections.iter().map(|c| {
                (
                    c.id.clone(),
                    check::WorldConnection {
                        user_id: u.id.clone(),
                        institution_id: c.institution_id.clone(),
                        method: c.method.clone(),
                        mfa: world::asks_code(c),
                    },
                )
            })
        })
        .collect()
}
