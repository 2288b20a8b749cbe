//! The life simulation: the real daemon over days of a scripted world on a driven clock, and
//! a table of every promise with its breaches (see `tests/life`).
//!
//! ```sh
//! cargo run --release --example life -- --days 7 --users 300 --seed 1 [--mode smart-cache]
//! ```
//! Exit 0 when every promise held, 1 when one did not.

#[path = "../tests/life/mod.rs"]
mod life;

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 7)]
    days: u32,
    #[arg(long, default_value_t = 300)]
    users: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `daily` or `smart-cache`.
    #[arg(long, default_value = "daily")]
    mode: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let config = life::LifeConfig {
        mode: args.mode.clone(),
        ..life::LifeConfig::new(args.users, args.days, args.seed)
    };
    let started = std::time::Instant::now();
    let report = life::run(&config).await?;
    println!(
        "life: {} days, {} users, seed {}, mode {}: {:.1} s of wall time\n",
        args.days,
        args.users,
        args.seed,
        args.mode,
        started.elapsed().as_secs_f64()
    );
    println!("{}", report.table());
    let ok = report.breaches() == 0;
    println!(
        "{}",
        if ok {
            "every promise held"
        } else {
            "BREACHES above"
        }
    );
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
