//! `--registered N[,N...]`: the cost of sweeping the same due users (the simulator's) with
//! N users registered. Per N, a fresh database: the simulator's users registered (the
//! product's `add_users`) and due; the rest of the N made up by SQL ([`super::seed`]), not
//! due, each with two connections at made-up banks (BENCH-0..4: not among the simulator's
//! connectors, so the first `/connectors` answer reclassifies none), their newest jobs with
//! three steps each and a health change each. Then the daemon's tick pass in this process
//! (`Context::run_pass` on a tick: `/connectors`, then every due user), measured: CPU
//! (this process, user + sys; the simulator is another), wall time, and the write calls
//! and bytes of `/proc/self/io`.

use std::path::Path;
use std::time::Instant;

use basiq_health::domain::UserId;
use basiq_health::work::PassTrigger;
use tokio_util::sync::CancellationToken;

use super::procs::{Io, self_cpu};
use super::seed::{Seeder, Slot};
use super::{SimProcess, mark, raw_loop, sweep_context};

/// One N's figures.
struct Row {
    registered: usize,
    swept: u64,
    failed: u64,
    gone: u64,
    cpu_ms: f64,
    rate: f64,
    io: Io,
}

pub async fn registered(
    sim: &SimProcess,
    sim_users: &[UserId],
    sizes: &[usize],
    concurrency: usize,
    keep: bool,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for &n in sizes {
        let mut dir = tempfile::tempdir()?;
        dir.disable_cleanup(keep);
        let db = dir.path().join("registered.db");
        let seeded = Instant::now();
        let registered = register(sim, sim_users, n, &db).await?;
        let db_mib = std::fs::metadata(&db)?.len() as f64 / (1024.0 * 1024.0);
        println!(
            "{registered} registered ({} due): seeded in {:.1} s, database {db_mib:.1} MiB{}",
            sim_users.len(),
            seeded.elapsed().as_secs_f64(),
            if keep {
                format!(", kept in {}", dir.path().display())
            } else {
                String::new()
            }
        );
        rows.push(sweep_due(sim, &db, registered, concurrency).await?);
    }
    print_table(&rows, sim_users.len());
    let ids: Vec<String> = sim_users.iter().map(|u| u.as_str().to_owned()).collect();
    let before = Io::now();
    raw_loop(sim, &ids, concurrency).await?;
    let raw = Io::now().since(before);
    let per = |v: u64| v as f64 / ids.len().max(1) as f64;
    println!(
        "For scale, the same two GETs per user with no database (the raw HTTP loop): {:.1} write syscalls and {:.1} KB written (wchar) per user; /proc/self/io counts sockets and wake-ups too.",
        per(raw.syscw),
        per(raw.wchar) / 1024.0
    );
    Ok(())
}

/// The register of `n` users; returns how many are registered.
async fn register(
    sim: &SimProcess,
    sim_users: &[UserId],
    n: usize,
    db: &Path,
) -> anyhow::Result<usize> {
    let now = chrono::Utc::now();
    // Due a minute ago: a due time rounds up to the second, and the pass must find them due.
    let due = now - chrono::Duration::minutes(1);
    let context = sweep_context(sim, db, 1).await?;
    context.store().add_users(sim_users, now, |_| due).await?;
    context.store().close().await;
    let made_up = n.saturating_sub(sim_users.len());
    let mut seeder = Seeder::open(db, now).await?;
    seeder.made_up_users(made_up).await?;
    let slots: Vec<Slot> = (0..5)
        .flat_map(|b| {
            ["open-banking", "web"].map(|method| Slot {
                institution_id: format!("BENCH-{b}"),
                method: method.to_owned(),
                weight: 1,
            })
        })
        .collect();
    seeder.connections(&slots).await?;
    seeder.history().await?;
    seeder.close().await?;
    Ok(sim_users.len() + made_up)
}

/// The daemon's tick pass over the due users, measured.
async fn sweep_due(
    sim: &SimProcess,
    db: &Path,
    registered: usize,
    concurrency: usize,
) -> anyhow::Result<Row> {
    let context = sweep_context(sim, db, concurrency).await?;
    context.store().set_notices(false);
    let (cpu0, io0) = (self_cpu(), Io::now());
    let started = Instant::now();
    let counts = context
        .run_pass(PassTrigger::Tick, None, &CancellationToken::new())
        .await?;
    let took = started.elapsed().as_secs_f64();
    let (cpu, io) = (self_cpu() - cpu0, Io::now().since(io0));
    context.store().close().await;
    let swept = counts.users_swept;
    Ok(Row {
        registered,
        swept,
        failed: counts.users_failed,
        gone: counts.users_gone,
        cpu_ms: cpu * 1000.0 / swept.max(1) as f64,
        rate: swept as f64 / took,
        io,
    })
}

fn print_table(rows: &[Row], due: usize) {
    println!();
    println!(
        "| registered | swept | CPU/user | users/s | write syscalls/user | KB written/user (wchar) | KB to disk/user (write_bytes) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let per = |v: u64| v as f64 / r.swept.max(1) as f64;
        println!(
            "| {} | {}{} | {:.3} ms | {:.0} | {:.1} | {:.1} | {:.1} |",
            r.registered,
            r.swept,
            if r.failed + r.gone > 0 {
                format!(" ({} failed, {} gone)", r.failed, r.gone)
            } else {
                String::new()
            },
            r.cpu_ms,
            r.rate,
            per(r.io.syscw),
            per(r.io.wchar) / 1024.0,
            per(r.io.write_bytes) / 1024.0
        );
    }
    // The pass must take the due users, all of them, and no other.
    for r in rows
        .iter()
        .filter(|r| (r.swept + r.failed + r.gone) as usize != due)
    {
        println!(
            "WRONG: with {} registered the pass took {} users, not the {due} due",
            r.registered,
            r.swept + r.failed + r.gone
        );
    }
    let (Some(first), Some(largest)) = (rows.first(), rows.iter().max_by_key(|r| r.registered))
    else {
        return;
    };
    let ratio = largest.cpu_ms / first.cpu_ms;
    println!();
    println!(
        "CPU per user swept with {} registered / with {}: {ratio:.2} (target <= 1.15): {}",
        largest.registered,
        first.registered,
        mark(ratio <= 1.15)
    );
}
