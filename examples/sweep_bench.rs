//! Measures the sweep against the built-in simulator and prints figures.
//!
//! ```sh
//! cargo run --release --example sweep_bench -- 2000
//! ```
//!
//! Figures: users swept per second at several concurrencies (requests paced at 50000/s so
//! the daemon, not the pace, is measured), requests per user, and the process's peak RSS.
//! Speed is measured here, never asserted in tests: the machines are shared and noisy.

use std::time::{Duration, Instant};

use basiq_health::domain::UserId;
use basiq_health::settings::Settings;
use basiq_sim::{SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let sim = Simulator::new(SimConfig {
        users,
        seed: 42,
        step_duration: Duration::from_millis(100),
        ..SimConfig::default()
    });
    let running = sim.clone().bind("127.0.0.1:0".parse()?).await?;
    let ids: Vec<UserId> = sim
        .user_ids()
        .into_iter()
        .map(|id| UserId::parse(id).unwrap())
        .collect();
    println!("sweep benchmark: {users} simulated users, loopback simulator");
    let mut baseline = None;
    for concurrency in [1usize, 8, 32] {
        let dir = tempfile::tempdir()?;
        let toml = format!(
            "[basiq]\nbase_url = {:?}\nmax_requests_per_second = 50000\n[database]\npath = {:?}\n[sweep]\nconcurrency = {concurrency}\n[api]\nlisten = \"\"\n",
            running.base_url(),
            dir.path().join("bench.db").display().to_string()
        );
        let settings = Settings::from_toml(&toml)?;
        let sweeper = basiq_health::app::build_sweeper_with_key(
            &settings,
            secrecy::SecretString::from(sim.api_key()),
        )
        .await?;
        sweeper.add_users(&ids).await?;
        sim.reset_counters();
        let started = Instant::now();
        let counts = sweeper
            .run_pass("bench", Some(ids.clone()), &CancellationToken::new())
            .await?;
        let took = started.elapsed();
        let counters = sim.counters();
        let requests: u64 = counters.requests.values().sum();
        let rate = counts.users_swept as f64 / took.as_secs_f64();
        let ratio = baseline.map(|b: f64| rate / b).unwrap_or(1.0);
        baseline.get_or_insert(rate);
        println!(
            "  concurrency {concurrency:>2}: {} users in {:>6.2} s = {rate:>7.1} users/s ({ratio:.2}x concurrency 1), {:.2} requests/user, {} token call(s), peak in flight at Basiq {}",
            counts.users_swept,
            took.as_secs_f64(),
            requests as f64 / counts.users_swept.max(1) as f64,
            counters.token_calls,
            counters.peak_concurrent,
        );
        sweeper.store().close().await;
    }
    if let Some(kib) = peak_rss_kib() {
        println!(
            "  peak RSS of this process (daemon + simulator): {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
    running.shutdown().await;
    Ok(())
}
