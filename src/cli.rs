//! The command line: clap definitions and one function per command.
//!
//! Exit codes: 0 success, 78 configuration (EX_CONFIG), 74 database (EX_IOERR), 1 anything
//! else; each error is one line on stderr.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::settings::{self, LogSettings, Settings, SettingsError};
use crate::telemetry;

/// Exit code for a configuration error (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code for a database that cannot be opened or migrated (sysexits EX_IOERR).
pub const EXIT_DATABASE: u8 = 74;

#[derive(Debug, Parser)]
#[command(name = "basiq-health", version, about = "Watches the health of Basiq bank connections")]
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
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings, secrets redacted.
    /// Exits 0 when valid, 78 when not. Touches neither the database nor the network.
    Check,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
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
}

/// Runs a parsed command; `Ok(code)` is the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => config_check(&cli.config),
    }
}

/// The exit code an error maps to.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|c| c.is::<SettingsError>()) {
        EXIT_CONFIG
    } else {
        1
    }
}

/// One line for stderr: the error and its causes.
pub fn describe(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads settings; the error keeps its `SettingsError` type for the exit code.
pub fn load_settings(path: &Path) -> anyhow::Result<Settings> {
    Ok(Settings::load(path)?)
}

fn config_check(path: &Path) -> anyhow::Result<u8> {
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
    eprintln!("configuration OK");
    Ok(0)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
