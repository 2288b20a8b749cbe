//! The scheduler only ticks: tokio-cron-scheduler fires one cron job that `try_send`s into a
//! channel of capacity 1, so ticks cannot pile up; one worker owns the sweep and its
//! cancellation, so two passes can never overlap.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::Sweeper;

/// When the worker last took a tick: for `/healthz` and systemd's watchdog. Sweep progress
/// itself lives in [`super::Progress`].
#[derive(Debug, Default)]
pub struct TickState {
    /// Unix seconds of the last tick the worker took (0: none yet).
    pub last_tick: AtomicI64,
}

/// A running scheduler and worker.
pub struct Running {
    scheduler: JobScheduler,
    worker: JoinHandle<()>,
}

impl Running {
    /// Stops the cron job and waits for the worker (which stops at its next safe point once
    /// the cancellation token fired).
    pub async fn stop(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!(error = %e, "scheduler shutdown reported an error");
        }
        if let Err(e) = self.worker.await {
            tracing::error!(error = %e, "sweep worker ended abnormally");
        }
    }
}

/// Starts the tick and the worker. `cron` is 6-field, seconds first.
/// `also_notify`: other workers fed by the same tick (each a channel of capacity 1).
pub async fn run_scheduler(
    sweeper: Sweeper,
    cron: &str,
    cancel: CancellationToken,
    state: Arc<TickState>,
    also_notify: Vec<mpsc::Sender<()>>,
) -> anyhow::Result<Running> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let scheduler = JobScheduler::new()
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
    let job = Job::new_async(cron, move |_id, _scheduler| {
        let tx = tx.clone();
        let others = also_notify.clone();
        Box::pin(async move {
            // Full channel: a pass is running or a tick is already waiting; drop this one.
            let _ = tx.try_send(());
            for other in &others {
                let _ = other.try_send(());
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

    let worker = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                tick = rx.recv() => {
                    if tick.is_none() {
                        break;
                    }
                    state.last_tick.store(sweeper.clock().now().timestamp(), Ordering::Relaxed);
                    if let Err(e) = sweeper.run_pass("tick", None, &cancel).await {
                        tracing::error!(
                            event = "sweep_failed",
                            error = %e,
                            "sweep pass failed (database); the next tick tries again"
                        );
                    }
                }
            }
        }
    });
    Ok(Running { scheduler, worker })
}
