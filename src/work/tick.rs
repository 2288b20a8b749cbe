//! The scheduler only ticks: tokio-cron-scheduler fires one cron job that `try_send`s into
//! one channel of capacity 1 per worker, so ticks cannot pile up. Each worker
//! ([`spawn_worker`]) owns one kind of work (the sweep's pass, scheduled refreshes,
//! housekeeping) and runs it once per tick it takes, never twice at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use super::pass::PassTrigger;

/// When the sweep's worker last took a tick: for `/healthz` and systemd's watchdog. Sweep
/// progress itself lives in [`super::Progress`].
#[derive(Debug, Default)]
pub struct TickState {
    /// Unix seconds of the last tick the worker took (0: none yet).
    pub last_tick: AtomicI64,
}

/// A worker fed by the tick.
pub struct Worker {
    /// Where the tick is sent (capacity 1: a tick while the work runs waits, a third is
    /// dropped).
    pub tick: mpsc::Sender<()>,
    pub task: JoinHandle<()>,
}

/// Starts a worker that runs `work` once per tick it takes, until `cancel` fires or the
/// scheduler is gone.
pub fn spawn_worker<F, Fut>(cancel: CancellationToken, mut work: F) -> Worker
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tick, mut ticks) = mpsc::channel::<()>(1);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                tick = ticks.recv() => {
                    if tick.is_none() {
                        break;
                    }
                    work().await;
                }
            }
        }
    });
    Worker { tick, task }
}

/// The sweep's worker: takes the tick's time, then a pass over the due users.
pub fn sweep_worker(context: Context, cancel: CancellationToken, state: Arc<TickState>) -> Worker {
    let stop = cancel.clone();
    spawn_worker(cancel, move || {
        let (context, stop, state) = (context.clone(), stop.clone(), state.clone());
        async move {
            state
                .last_tick
                .store(context.clock().now().timestamp(), Ordering::Relaxed);
            if let Err(e) = context.run_pass(PassTrigger::Tick, None, &stop).await {
                tracing::error!(
                    event = "sweep_failed",
                    error = %e,
                    "sweep pass failed (database); the next tick tries again"
                );
            }
        }
    })
}

/// A running scheduler and its workers.
pub struct Running {
    scheduler: JobScheduler,
    workers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the cron job and waits for the workers (each stops at its next safe point once
    /// the cancellation token fired).
    pub async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "scheduler shutdown reported an error");
        }
        for worker in self.workers {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "a tick worker ended abnormally");
            }
        }
    }
}

/// Starts the tick, feeding every worker. `cron` is 6-field, seconds first.
pub async fn run_scheduler(cron: &str, workers: Vec<Worker>) -> anyhow::Result<Running> {
    let (ticks, tasks): (Vec<_>, Vec<_>) = workers.into_iter().map(|w| (w.tick, w.task)).unzip();
    let scheduler = JobScheduler::new()
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
    let job = Job::new_async(cron, move |_id, _scheduler| {
        let ticks = ticks.clone();
        Box::pin(async move {
            // Full channel: the work is running and a tick is already waiting; drop this one.
            for tick in &ticks {
                let _ = tick.try_send(());
            }
        })
    })
    .map_err(|e| anyhow::anyhow!("`sweep.tick` {cron:?} is not a 6-field cron expression: {e}"))?;
    scheduler
        .add(job)
        .await
        .map_err(|e| anyhow::anyhow!("cannot schedule the tick: {e}"))?;
    scheduler
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
    Ok(Running {
        scheduler,
        workers: tasks,
    })
}
