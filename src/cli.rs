//! The command line: clap definitions and one function per command.
//!
//! Exit codes: 0 success, 2 usage or bad input (an id outside the rule, a bad import file),
//! 78 configuration (EX_CONFIG), 74 database (EX_IOERR), 77 Basiq refused the API key
//! (EX_NOPERM), 130 a second signal stopped the daemon at once, 1 anything else (for `sweep`:
//! no user could be swept); each error is one line on stderr. No command ends the process
//! itself: each returns its exit code or an error, and `main` exits with it. Every id
//! argument is parsed by clap into its checked type, so a bad one stops the command before
//! it opens the database or reaches Basiq.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::app::{self, App};
use crate::clock::Clock;
use crate::domain::{ConnectionId, DeliveryRef, IdError, UserId};
use crate::report;
use crate::settings::{self, LogSettings, Settings, SettingsError};
use crate::store::{OpenError, Store};
use crate::telemetry;
use basiq_sim::{SimConfig, Simulator};

/// Exit code for bad usage or bad input (clap's own, and a refused import file).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a configuration error (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code for a database that cannot be opened or migrated (sysexits EX_IOERR).
pub const EXIT_DATABASE: u8 = 74;
/// Exit code when Basiq refused the API key (sysexits EX_NOPERM): wrong or revoked.
pub const EXIT_AUTH: u8 = 77;
/// Exit code when a second SIGINT or SIGTERM stopped the daemon at once (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// A second signal during the daemon's shutdown: stop now, without waiting for in-flight work.
/// Every write is a transaction, so the database stays consistent.
#[derive(Debug, thiserror::Error)]
#[error("second signal: exiting at once")]
pub struct Interrupted;

#[derive(Debug, Parser)]
#[command(
    name = "basiq-health",
    version,
    about = "Watches the health of Basiq bank connections"
)]
pub struct Cli {
    /// The TOML configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "BASIQ_HEALTH_CONFIG",
        default_value = settings::DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the daemon: scheduler, sweep worker and local API, until SIGTERM or SIGINT.
    Run,
    /// One pass now over all registered users (or those named), then exit.
    ///
    /// Prints the pass's counts as JSON ({"users_swept", "users_failed", "users_gone",
    /// "by_health", "aborted": null or {"cause": "auth", "error"}}). Exit 0 when at least one user was swept (or none failed),
    /// 1 when every user it tried failed, 77 when Basiq refused the API key (the pass stops
    /// at the first refusal).
    Sweep(SweepArgs),
    /// The login-time check: sweep one user now (unless swept very recently) and print
    /// its connections' health as JSON.
    Check(CheckArgs),
    /// Refresh one connection now, through every gate (treated as login-triggered).
    /// Prints {"decision": "refreshed" | "denied", "reason", "job_id"}; exit 0 for both.
    Refresh(RefreshArgs),
    /// Delete a connection's accounts and transactions at Basiq (keeps the connection id;
    /// the next refresh fetches the data again). Irreversible: needs --yes.
    Purge(PurgeArgs),
    /// Report connection health: a table, or JSON with --json.
    Status(StatusArgs),
    /// The dry run of the next 24 h: which connections the daemon would refresh, when and
    /// why (trigger), and which it would not and why (reason). Sends nothing to Basiq and
    /// reserves nothing. JSON: one object per connection with either
    /// {"refresh_at", "trigger"} or {"denied": reason}.
    Plan(PlanArgs),
    /// Manage the register of watched users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Notifications to the partner's app (`[[notify.endpoints]]`).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Basiq's events heard (webhooks and the `/events` poll).
    #[command(subcommand)]
    Events(EventsCommand),
    /// A one-time sign-in link to the operator's console (served on `api.listen`): it
    /// works once, for 10 minutes. Prints the link only.
    Console,
    /// The second witness: the banks' own Consumer Data Right status and planned outages
    /// (`[cdr]`).
    #[command(subcommand)]
    Cdr(CdrCommand),
    /// A one-minute tour: the simulator, a temporary database and the real daemon path
    /// over a compressed day with an outage that starts and ends. Needs no config file.
    Demo(DemoArgs),
    /// Serve a Basiq stand-in on a loopback port (for trying the daemon and for tests).
    Simulate(SimulateArgs),
}

#[derive(Debug, Subcommand)]
pub enum CdrCommand {
    /// Each Basiq institution (open-banking connector) and its CDR brand: a table, or JSON
    /// with --json: [{"institution_id", "name", "abn", "brand_id", "brand_name", "match"
    /// ("abn" | "abn+name" | "override" | "ambiguous" | "none"), "status",
    /// "status_checked_at", "next_outage"}].
    Brands {
        #[arg(long)]
        json: bool,
    },
    /// Read the CDR Register and every mapped brand's status and planned outages now (what
    /// the daemon does when each is due). Prints what was done as JSON; exit 1 when
    /// `cdr.enabled` is false.
    Poll,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Sweep only this user (repeatable).
    #[arg(long = "user", value_name = "ID")]
    pub users: Vec<UserId>,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// The connection's user.
    #[arg(long = "user", value_name = "USER_ID")]
    pub user: UserId,
    pub connection_id: ConnectionId,
    /// Decide only: pass the gates, reserve nothing, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the job to its end (logs each step) before exiting; exits 1 when the job could
    /// not be read to its end (unreadable, or still running at `refresh.follow_timeout`).
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[arg(long = "user", value_name = "USER_ID")]
    pub user: UserId,
    pub connection_id: ConnectionId,
    /// Confirm: without it, the command says what would be removed and exits 2.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    pub user_id: UserId,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this user's connections.
    #[arg(long = "user", value_name = "ID")]
    pub user: Option<UserId>,
    /// List at most N connections (those needing the user's action first); the counts are
    /// always whole. Ignored with --user (every connection of the user is listed).
    #[arg(long, value_name = "N", default_value_t = crate::report::DEFAULT_LIMIT)]
    pub limit: usize,
    /// List every connection.
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Only this user's connections (repeatable).
    #[arg(long = "user", value_name = "ID")]
    pub users: Vec<UserId>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Register users (idempotent).
    Add {
        #[arg(required = true)]
        ids: Vec<UserId>,
    },
    /// Stop watching users (their history is kept).
    Remove {
        #[arg(required = true)]
        ids: Vec<UserId>,
    },
    /// Register the ids in FILE: one per line, `#` starts a comment (idempotent). A file
    /// with any id outside the rule is refused whole (exit 2, naming each bad line).
    Import { file: PathBuf },
    /// List registered users with their next and last sweep.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// List deliveries, newest first, as JSON lines: {"id", "endpoint", "webhook_id",
    /// "event_type", "user_id", "state" (pending, succeeded, dead, superseded), "attempts", "failures",
    /// "last_status", "last_error", "created_at", "next_at", "done_at"}.
    List {
        /// Only dead-lettered deliveries and pending ones that failed at least once.
        #[arg(long)]
        failed: bool,
        /// At most N deliveries.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Send a delivery again now, with a fresh `notify.max_age`: ID is a delivery id (a
    /// positive integer, from `notify list`) or a webhook id (`msg_` and 32 hex digits: every
    /// endpoint's delivery of it); anything else exits 2. Exit 1 when there is no such
    /// delivery, or it succeeded already. A running daemon sends it.
    Retry { id: DeliveryRef },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List the events heard, newest first, as JSON lines: {"seq", "delivery_id",
    /// "event_id", "event_type", "source" (webhook, poll), "user_id", "received_at",
    /// "processed_at", "outcome"}.
    List {
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Read Basiq's `GET /events` once now and process what was not heard yet (what the
    /// daemon does every `webhooks.poll_interval`). Prints {"listed", "stored", "skipped"
    /// (types that do nothing, not stored), "processed"}.
    Poll,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Users in the simulated population.
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Seed of the population.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The compressed day: every user is swept once in this time.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub day: Duration,
    /// After the tour, keep the daemon, its console and the simulator running until Ctrl-C
    /// (to look around the console).
    #[arg(long)]
    pub serve: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings, secrets redacted.
    /// Exits 0 when valid, 78 when not. Touches neither the database nor the network.
    Check,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on: loopback only, unless `--allow-non-loopback` is given.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// Listen on a non-loopback `--listen` address. The `/_sim/` control routes have no
    /// authentication: anyone who can reach the address can steer the simulator.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// How many users the seeded population has.
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// Seed of the population: the same seed gives the same users and outcomes.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write the population's user ids here, one per line (ready for `users import`).
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// Lifetime of the tokens the simulator issues.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// How long each step of a refresh job takes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub step_duration: Duration,
    /// The API key the simulator accepts (default: one derived from the seed).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Sign and send Basiq's webhooks for every event to this URL (the daemon's
    /// `webhooks.listen` + `/v1/basiq/webhook`); needs --webhook-secret-file.
    #[arg(long, requires = "webhook_secret_file")]
    pub webhook_url: Option<String>,
    /// The file holding the `whsec_...` secret the webhooks are signed with.
    #[arg(long, requires = "webhook_url")]
    pub webhook_secret_file: Option<PathBuf>,
}

/// Runs a parsed command; `Ok(code)` is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => cmd_config_check(&cli.config),
        Command::Simulate(args) => {
            telemetry::init(&LogSettings::default(), std::io::stderr);
            block_on(cmd_simulate(args))
        }
        Command::Demo(args) => block_on(crate::demo::run(
            args.users, args.seed, args.day, args.serve,
        )),
        command => {
            let settings = load_settings(&cli.config)?;
            // Logs go to stdout for the daemon (journald), to stderr for one-shot commands
            // whose stdout is their answer.
            match command {
                Command::Run => telemetry::init(&settings.log, std::io::stdout),
                _ => telemetry::init(&settings.log, std::io::stderr),
            }
            for warning in &settings.warnings {
                tracing::warn!(event = "secret_file_readable", "{warning}");
            }
            block_on(run_with_settings(command, settings))
        }
    }
}

async fn run_with_settings(command: Command, settings: Settings) -> anyhow::Result<u8> {
    // The command's one clock: every `now` below, and the daemon's, comes from it.
    let clock = Clock::system();
    match command {
        Command::Run => cmd_run(settings, clock).await,
        Command::Sweep(args) => cmd_sweep(args, &settings, &clock).await,
        Command::Check(args) => cmd_check(args, &settings, &clock).await,
        Command::Refresh(args) => cmd_refresh(args, &settings, &clock).await,
        Command::Purge(args) => cmd_purge(args, &settings, &clock).await,
        Command::Status(args) => cmd_status(args, &settings, &clock).await,
        Command::Plan(args) => cmd_plan(args, &settings, &clock).await,
        Command::Users(command) => cmd_users(command, &settings, &clock).await,
        Command::Notify(command) => cmd_notify(command, &settings, &clock).await,
        Command::Events(command) => cmd_events(command, &settings, &clock).await,
        Command::Cdr(command) => cmd_cdr(command, &settings, &clock).await,
        Command::Console => cmd_console(&settings, &clock).await,
        Command::Config(_) | Command::Simulate(_) | Command::Demo(_) => Ok(0),
    }
}

/// `run`: the daemon until the first signal; a second one stops it at once ([`Interrupted`]).
async fn cmd_run(settings: Settings, clock: Clock) -> anyhow::Result<u8> {
    let mut signals = Signals::new();
    let key = app::api_key(&settings)?;
    let app = App::build_with_clock(settings, key, clock).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let run = app.run_until_stopped(stop.clone().cancelled_owned());
    // The first signal stops the daemon gracefully; a second one means "now".
    let signalled_twice = async {
        signals.recv().await;
        stop.cancel();
        signals.recv().await;
    };
    tokio::select! {
        stopped = run => stopped.map(|()| 0),
        () = signalled_twice => Err(Interrupted.into()),
    }
}

/// `sweep`: one pass, stopped between users by a signal; prints the counts.
async fn cmd_sweep(args: SweepArgs, settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let context = context(settings, clock).await?;
    // Every user is read page by page inside the pass: memory follows the page, not the
    // register.
    let only = (!args.users.is_empty()).then_some(args.users);
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let mut signals = Signals::new();
    let signal = tokio::spawn(async move {
        signals.recv().await;
        stop.cancel();
    });
    let counts = match only {
        Some(users) => {
            context
                .run_pass(crate::work::PassTrigger::Command, Some(users), &cancel)
                .await?
        }
        None => {
            context
                .run_pass_all(crate::work::PassTrigger::Command, &cancel)
                .await?
        }
    };
    // The reclassifications the pass queued (or found queued) are finished before the
    // command ends, as the daemon would finish them in the background.
    if let Err(e) = context.drain_reclassify(&cancel).await {
        tracing::error!(error = %e, "reclassification failed; it resumes on the next run");
    }
    signal.abort();
    context.close().await;
    println!("{}", serde_json::to_string(&counts)?);
    Ok(sweep_exit_code(&counts))
}

/// `check`: the login-time check of one user, its connections' health as JSON.
async fn cmd_check(args: CheckArgs, settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let refresher = refresher(settings, clock).await?;
    let user = args.user_id;
    let (swept, refreshes) = refresher.login(&user).await?;
    let report =
        report::status(refresher.context().store(), Some(&user), None, clock.now()).await?;
    let body = serde_json::json!({
        "user_id": user,
        "swept": swept,
        "connections": report.connections,
        "refreshes": refreshes,
    });
    println!("{}", serde_json::to_string_pretty(&body)?);
    refresher.context().close().await;
    Ok(0)
}

/// `refresh`: one connection through every gate, after a sweep of its user.
async fn cmd_refresh(args: RefreshArgs, settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let refresher = refresher(settings, clock).await?;
    let (user, connection) = (args.user, args.connection_id);
    // Fresh facts first: the user's connections and jobs as Basiq has them now.
    let context = refresher.context();
    if context.store().get_user(&user).await?.is_none() {
        context.add_users(std::slice::from_ref(&user)).await?;
    }
    context.sweep_user(&user).await?;
    let decision = refresher
        .request(
            &user,
            &connection,
            crate::plan::policy::Trigger::Manual,
            args.dry_run,
            args.follow,
        )
        .await?;
    refresher.wait_for_followers().await;
    println!("{}", serde_json::to_string(&decision)?);
    context.close().await;
    if args.follow && refresher.unfinished_follows() > 0 {
        eprintln!(
            "basiq-health: could not follow the job of connection {connection} of user {user} \
             to its end (unreadable or still running at refresh.follow_timeout); \
             the next sweep reads it"
        );
        return Ok(1);
    }
    Ok(0)
}

/// `purge`: a connection's data deleted at Basiq, only with `--yes`.
async fn cmd_purge(args: PurgeArgs, settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let refresher = refresher(settings, clock).await?;
    let (user, connection) = (args.user, args.connection_id);
    let outcome = refresher.purge(&user, &connection, args.yes).await;
    refresher.context().close().await;
    // Every message names the connection asked about, not an id read from Basiq.
    let outcome =
        outcome.with_context(|| format!("while purging connection {connection} of user {user}"))?;
    tell_purge(outcome, &user, &connection)
}

/// What `purge` says of its outcome, and its exit code.
fn tell_purge(
    outcome: crate::work::refresh::PurgeOutcome,
    user: &UserId,
    connection: &ConnectionId,
) -> anyhow::Result<u8> {
    use crate::work::refresh::PurgeOutcome;
    match outcome {
        PurgeOutcome::WouldPurge(c) => {
            println!(
                "would purge connection {} of user {} at {} ({}): all its accounts and transactions \
                 are deleted at Basiq; the connection id is kept and the next refresh fetches the data again.\n\
                 Irreversible: run again with --yes to purge.",
                connection, user, c.institution_id, c.method
            );
            Ok(2)
        }
        PurgeOutcome::NotActive(c) => {
            anyhow::bail!(
                "refusing to purge connection {} of user {}: its status is {:?}, and Basiq purges only active connections",
                connection,
                user,
                c.status.as_str()
            )
        }
        PurgeOutcome::Purged(c) => {
            println!(
                "{}",
                serde_json::json!({"purged": true, "user_id": user, "connection_id": connection, "institution_id": c.institution_id})
            );
            Ok(0)
        }
    }
}

/// `status`: the health report, a table or JSON.
async fn cmd_status(args: StatusArgs, settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let store = app::open_store(settings, clock).await?;
    let user = args.user;
    let limit = (!args.all).then_some(args.limit);
    let report = report::status(&store, user.as_ref(), limit, clock.now()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::render_table(&report, clock.now()));
    }
    store.close().await;
    Ok(0)
}

/// `plan`: the dry run of the next 24 h, a table or JSON.
async fn cmd_plan(args: PlanArgs, settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let refresher = refresher(settings, clock).await?;
    let users = args.users;
    let lines = refresher
        .dry_run((!users.is_empty()).then_some(users.as_slice()), clock.now())
        .await?;
    refresher.context().close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        print!("{}", report::render_plan(&lines));
    }
    Ok(0)
}

/// `notify`: the deliveries to the partner's app.
async fn cmd_notify(
    command: NotifyCommand,
    settings: &Settings,
    clock: &Clock,
) -> anyhow::Result<u8> {
    let store = app::open_store(settings, clock).await?;
    match command {
        NotifyCommand::List { failed, limit } => {
            for d in store.list_deliveries(failed, limit).await? {
                println!("{}", serde_json::to_string(&d)?);
            }
            Ok(0)
        }
        NotifyCommand::Retry { id } => {
            let queued = store
                .retry_delivery(&id.to_string(), settings.notify.max_age, clock.now())
                .await?;
            if queued == 0 {
                eprintln!(
                    "no delivery {:?} to retry (unknown, or delivered already)",
                    id.to_string()
                );
                return Ok(1);
            }
            println!("queued {queued} delivery(ies) again");
            Ok(0)
        }
    }
}

/// `events`: Basiq's events heard.
async fn cmd_events(
    command: EventsCommand,
    settings: &Settings,
    clock: &Clock,
) -> anyhow::Result<u8> {
    match command {
        EventsCommand::List { limit } => {
            let store = app::open_store(settings, clock).await?;
            for e in store.recent_events(limit).await? {
                println!("{}", serde_json::to_string(&e)?);
            }
            Ok(0)
        }
        EventsCommand::Poll => events_poll(settings, clock).await,
    }
}

/// `events poll`: one read of `GET /events`, then every pending event processed.
async fn events_poll(settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let context = context(settings, clock).await?;
    let polled =
        crate::events::poll::poll_once(context.client(), context.store(), clock.now()).await?;
    let processor = crate::work::event::Processor {
        context: context.clone(),
        register_new_users: settings.webhooks.register_new_users,
        wake: std::sync::Arc::default(),
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut processed = 0;
    loop {
        let n = processor.process_pending(&cancel).await?;
        if n == 0 {
            break;
        }
        processed += n;
    }
    context.close().await;
    println!(
        "{}",
        serde_json::json!({"listed": polled.listed, "stored": polled.stored, "skipped": polled.skipped, "processed": processed})
    );
    Ok(0)
}

/// The context on the command's clock: key (exit 78 when missing), database (74), client.
/// `console`: a one-time sign-in link.
async fn cmd_console(settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    let Some(addr) = settings.api.listen else {
        eprintln!(
            "the console is served on api.listen, which is off (\"\"): set it to use the console"
        );
        return Ok(1);
    };
    let store = app::open_store(settings, clock).await?;
    let code = crate::console::auth::create_code(&store, clock.now()).await;
    store.close().await;
    println!("{}", crate::console::auth::sign_in_link(addr, &code?));
    Ok(0)
}

/// `cdr`: the second witness.
async fn cmd_cdr(command: CdrCommand, settings: &Settings, clock: &Clock) -> anyhow::Result<u8> {
    match command {
        CdrCommand::Brands { json } => {
            let store = app::open_store(settings, clock).await?;
            let lines = store.cdr_brand_lines(clock.now()).await?;
            store.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                print!("{}", report::render_brands(&lines));
            }
            Ok(0)
        }
        CdrCommand::Poll => {
            if !settings.cdr.enabled {
                eprintln!("the CDR witness is off (cdr.enabled = false): nothing to poll");
                return Ok(1);
            }
            let context = context(settings, clock).await?;
            let witness = crate::work::cdr::Witness::new(context.clone(), settings.cdr.clone())?;
            let polled = witness.poll(true).await;
            context.close().await;
            println!("{}", serde_json::to_string(&polled?)?);
            Ok(0)
        }
    }
}

async fn context(settings: &Settings, clock: &Clock) -> anyhow::Result<crate::work::Context> {
    app::build_sweeper_with_clock(settings, app::api_key(settings)?, clock.clone()).await
}

async fn refresher(
    settings: &Settings,
    clock: &Clock,
) -> anyhow::Result<crate::work::refresh::Refresher> {
    let context = context(settings, clock).await?;
    Ok(crate::work::refresh::Refresher::new(context, settings.refresh.clone()).await?)
}

/// `users`: the register of watched users.
async fn cmd_users(
    command: UsersCommand,
    settings: &Settings,
    clock: &Clock,
) -> anyhow::Result<u8> {
    // An import file is read and checked whole before the database is opened: a bad file
    // changes nothing.
    let imported = match &command {
        UsersCommand::Import { file } => {
            // Read as a stream, twice: checked whole first, then imported in batches. Memory
            // follows the batch, not the file.
            let lines = check_user_file(file)
                .with_context(|| format!("refusing {}: nothing imported", file.display()))?;
            Some(lines)
        }
        _ => None,
    };
    let store = app::open_store(settings, clock).await?;
    // Offsets need the installation seed and the period only: no key, no network.
    let seed = store.installation_seed().await?;
    let period = settings.sweep.period;
    let now = clock.now();
    let due = |u: &UserId| crate::plan::slots::next_slot(seed, u.as_str(), period, now);
    match command {
        UsersCommand::Add { ids } => {
            let added = store.add_users(&ids, now, due).await?;
            println!(
                "added {added} user(s), {} already registered",
                ids.len() as u64 - added
            );
        }
        UsersCommand::Remove { ids } => {
            let removed = store.remove_users(&ids, now).await?;
            println!("removed {removed} user(s)");
        }
        UsersCommand::Import { file } => {
            let lines = imported.unwrap_or_default();
            users_import(&store, &file, lines, now, &due).await?;
        }
        UsersCommand::List { json } => users_list(&store, json).await?,
    }
    store.close().await;
    Ok(0)
}

/// `users import`: the checked file's `lines` ids registered batch by batch.
async fn users_import(
    store: &Store,
    file: &Path,
    lines: u64,
    now: DateTime<Utc>,
    due: &impl Fn(&UserId) -> DateTime<Utc>,
) -> anyhow::Result<()> {
    let mut added = 0;
    let mut read = 0u64;
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut ids = UserFile::open(file)?;
    loop {
        let next = ids.next_id()?;
        let end = next.is_none();
        if let Some(id) = next {
            batch.push(id);
            read += 1;
        }
        if batch.len() == IMPORT_BATCH || (end && !batch.is_empty()) {
            // One short transaction per batch: a running daemon's writes wait for one batch
            // at most, never for the whole file.
            added += store.add_users(&batch, now, due).await?;
            batch.clear();
        }
        if end {
            break;
        }
    }
    debug_assert_eq!(read, lines);
    println!(
        "imported {read} id(s) from {}: {added} new, {} already registered or repeated",
        file.display(),
        read - added
    );
    Ok(())
}

/// `users list`: the register, a table or JSON.
async fn users_list(store: &Store, json: bool) -> anyhow::Result<()> {
    let users = store.list_users().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::users_json(&users))?
        );
        return Ok(());
    }
    println!(
        "{:<40} {:<22} {:<22}",
        "user_id", "next_due_at", "last_swept_at"
    );
    for u in &users {
        let last = u
            .last_swept_at
            .map(|t| report::stamp(t).to_string())
            .unwrap_or_else(|| "-".into());
        let gone = if u.gone_at.is_some() {
            "  (gone: 404 at Basiq)"
        } else {
            ""
        };
        println!(
            "{:<40} {:<22} {:<22}{gone}",
            u.user_id,
            report::stamp(u.next_due_at),
            last
        );
    }
    Ok(())
}

/// An import file with ids outside the rule: every bad line, by number.
#[derive(Debug, thiserror::Error)]
pub struct ImportError {
    /// The first bad lines, by number.
    pub bad: Vec<(usize, IdError)>,
    /// Bad lines beyond those.
    pub more: usize,
}

/// How many bad lines an [`ImportError`] spells out; the rest are counted.
const IMPORT_ERRORS_SHOWN: usize = 10;

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line(s) with a bad id", self.bad.len() + self.more)?;
        for (line, err) in &self.bad {
            write!(f, "; line {line}: {err}")?;
        }
        if self.more > 0 {
            write!(f, "; and {} more", self.more)?;
        }
        Ok(())
    }
}

/// Ids registered per transaction by `users import`.
const IMPORT_BATCH: usize = 10_000;

/// An import file read line by line: one id per line; blank lines and `#` comments
/// (whole-line or trailing) are ignored. Bytes that are not UTF-8 become U+FFFD, which
/// the id rule then refuses by line.
pub struct UserFile {
    reader: std::io::BufReader<std::fs::File>,
    line: Vec<u8>,
    number: usize,
}

impl UserFile {
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("while reading {}", path.display()))?;
        Ok(Self {
            reader: std::io::BufReader::with_capacity(1 << 16, file),
            line: Vec::new(),
            number: 0,
        })
    }

    /// The next line holding an id: its number and the id as written.
    fn next_raw(&mut self) -> std::io::Result<Option<(usize, String)>> {
        use std::io::BufRead;
        loop {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(None);
            }
            self.number += 1;
            let text = String::from_utf8_lossy(&self.line);
            let id = text.split('#').next().unwrap_or("").trim();
            if !id.is_empty() {
                return Ok(Some((self.number, id.to_owned())));
            }
        }
    }

    /// The next id; a bad one is an error naming its line (the file changed since it
    /// was checked).
    pub fn next_id(&mut self) -> anyhow::Result<Option<UserId>> {
        match self.next_raw()? {
            None => Ok(None),
            Some((number, id)) => UserId::parse(id).map(Some).map_err(|e| {
                ImportError {
                    bad: vec![(number, e)],
                    more: 0,
                }
                .into()
            }),
        }
    }
}

/// Checks a whole import file as a stream: the number of ids in it, or every bad line (the
/// first few spelled out, the rest counted). Any id outside the rule refuses the file.
pub fn check_user_file(path: &std::path::Path) -> anyhow::Result<u64> {
    let mut file = UserFile::open(path)?;
    let mut ids = 0u64;
    let mut bad = Vec::new();
    let mut more = 0;
    while let Some((number, id)) = file
        .next_raw()
        .with_context(|| format!("while reading {}", path.display()))?
    {
        match UserId::parse(id) {
            Ok(_) => ids += 1,
            Err(e) if bad.len() < IMPORT_ERRORS_SHOWN => bad.push((number, e)),
            Err(_) => more += 1,
        }
    }
    if bad.is_empty() {
        Ok(ids)
    } else {
        Err(ImportError { bad, more }.into())
    }
}

/// What `sweep` exits with: 77 when the pass stopped because Basiq refused the API key,
/// 1 when every user it tried failed, 0 otherwise (some swept, or none to sweep).
pub fn sweep_exit_code(counts: &crate::store::SweepCounts) -> u8 {
    if let Some(abort) = counts
        .aborted
        .as_ref()
        .filter(|a| a.cause == crate::store::AbortCause::Auth)
    {
        eprintln!("basiq-health: the sweep stopped: {}", abort.error);
        EXIT_AUTH
    } else if counts.users_failed > 0 && counts.users_swept + counts.users_gone == 0 {
        eprintln!(
            "basiq-health: no user could be swept ({} failed; see the log)",
            counts.users_failed
        );
        1
    } else {
        0
    }
}

/// The exit code an error maps to.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let refused_key = |c: &(dyn std::error::Error + 'static)| {
        c.downcast_ref::<crate::basiq::Error>()
            .is_some_and(crate::basiq::Error::is_auth)
            || c.downcast_ref::<crate::work::SweepError>()
                .is_some_and(crate::work::SweepError::is_auth)
            || c.downcast_ref::<crate::work::refresh::RefreshError>()
                .is_some_and(crate::work::refresh::RefreshError::is_auth)
    };
    if err.is::<Interrupted>() {
        EXIT_INTERRUPTED
    } else if err
        .chain()
        .any(|c| c.is::<ImportError>() || c.is::<IdError>())
    {
        EXIT_USAGE
    } else if err.chain().any(|c| c.is::<SettingsError>()) {
        EXIT_CONFIG
    } else if err.chain().any(|c| c.is::<OpenError>()) {
        EXIT_DATABASE
    } else if err.chain().any(refused_key) {
        EXIT_AUTH
    } else {
        1
    }
}

/// One line for stderr: the error and its causes.
pub fn describe(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

/// Runs `command` on a fresh runtime. After an [`Interrupted`] the runtime is left behind
/// without waiting for its tasks: the process is about to exit.
fn block_on(command: impl Future<Output = anyhow::Result<u8>>) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(command);
    if outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        runtime.shutdown_background();
    }
    outcome
}

/// Loads settings; the error keeps its `SettingsError` type for the exit code.
pub fn load_settings(path: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(path)?)
}

fn cmd_config_check(path: &Path) -> anyhow::Result<u8> {
    let settings = load_settings(path)?;
    println!("# effective settings from {}", path.display());
    print!("{}", settings.render());
    match &settings.basiq.api_key {
        Some(key) => {
            if let Some(warning) = &key.permission_warning {
                eprintln!("warning: {warning}");
            }
        }
        None => eprintln!("warning: {}", SettingsError::MissingApiKey),
    }
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    if settings.api.listen.is_some() {
        let file = settings.api.token_file.display();
        if settings.api.token_file_generated && !settings.api.token_file.exists() {
            eprintln!(
                "note: the local API's bearer token will be created in {file} at the daemon's first start"
            );
        } else {
            eprintln!("note: the local API's bearer token is read from {file}");
        }
    }
    eprintln!("configuration OK");
    Ok(0)
}

async fn cmd_simulate(args: SimulateArgs) -> anyhow::Result<u8> {
    if !args.listen.ip().is_loopback() && !args.allow_non_loopback {
        eprintln!(
            "basiq-health: refusing --listen {}: not a loopback address, and the simulator's \
             /_sim/ control routes have no authentication (add --allow-non-loopback to mean it)",
            args.listen
        );
        return Ok(2);
    }
    let mut signals = Signals::new();
    let mut config = SimConfig {
        users: args.users,
        seed: args.seed,
        token_ttl: args.token_ttl,
        step_duration: args.step_duration,
        ..SimConfig::default()
    };
    if let Some(key) = args.api_key {
        config.api_key = key;
    } else {
        config.api_key = basiq_sim::default_api_key(args.seed);
    }
    let sim = Simulator::new(config);
    if let (Some(url), Some(file)) = (&args.webhook_url, &args.webhook_secret_file) {
        let secret = std::fs::read_to_string(file)
            .with_context(|| format!("while reading the webhook secret {}", file.display()))?;
        crate::settings::WebhookSecret::parse(&secret).map_err(|problem| {
            anyhow::anyhow!("--webhook-secret-file {}: {problem}", file.display())
        })?;
        sim.set_webhook_target(url, secret.trim());
        println!("webhooks: every event is signed and sent to {url}");
    }
    if let Some(path) = &args.users_file {
        let mut text = sim.user_ids().join("\n");
        text.push('\n');
        std::fs::write(path, text)
            .with_context(|| format!("while writing the users file {}", path.display()))?;
    }
    let running = sim
        .clone()
        .bind_exposed(args.listen)
        .await
        .with_context(|| format!("while binding {}", args.listen))?;
    println!("simulator listening on {}", running.base_url());
    println!("api key: {}", sim.api_key());
    match &args.users_file {
        Some(path) => println!("users: {} (ids written to {})", args.users, path.display()),
        None => println!("users: {}", args.users),
    }
    println!("stop with Ctrl-C");
    signals.recv().await;
    running.shutdown().await;
    Ok(0)
}

/// SIGINT and SIGTERM, listened to from the moment this is made (a signal that arrives
/// during startup is not lost, and does not kill the process with the default action).
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => {}
                () = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}
