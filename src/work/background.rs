//! A worker woken on demand: one task that, each time it is woken, runs a unit of work again
//! and again while it says more is left, stopped between two units (never inside one). It
//! knows nothing of the work: the background reclassification ([`super::reclassify`]) is
//! what the context runs in it.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The handle of a worker woken on demand.
pub struct Background {
    /// Capacity 1: a wake while the work runs makes it look once more; more are dropped.
    wake: mpsc::Sender<()>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Background {
    /// Starts the worker. `unit` gives the next unit of work (`None`: whatever it worked for
    /// is gone, and the worker ends), whose answer says whether more is left.
    pub fn start<F, Fut>(unit: F) -> Self
    where
        F: Fn() -> Option<Fut> + Send + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let (wake, wakes) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(run(unit, wakes, stop.clone()));
        tasks.close();
        Self { wake, stop, tasks }
    }

    /// Wakes the worker (a wake already waiting is enough; once stopped, nothing).
    pub fn wake(&self) {
        let _ = self.wake.try_send(());
    }

    /// Stops the worker once its unit in flight (if any) is done, and waits for it.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// The worker's loop: on each wake, units until none is left or `stop` fires.
async fn run<F, Fut>(unit: F, mut wakes: mpsc::Receiver<()>, stop: CancellationToken)
where
    F: Fn() -> Option<Fut>,
    Fut: Future<Output = bool>,
{
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            woken = wakes.recv() => if woken.is_none() { return },
        }
        while !stop.is_cancelled() {
            let Some(next) = unit() else { return };
            if !next.await {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Each wake runs the work until it says nothing is left; a stop waits for the unit in
    /// flight and ends the worker.
    #[tokio::test]
    async fn a_wake_runs_the_work_until_none_is_left_and_a_stop_ends_it() {
        let left = Arc::new(AtomicU32::new(3));
        let done = Arc::new(AtomicU32::new(0));
        let (l, d) = (left.clone(), done.clone());
        let worker = Background::start(move || {
            let (l, d) = (l.clone(), d.clone());
            Some(async move {
                if l.load(Ordering::SeqCst) == 0 {
                    return false;
                }
                l.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
                true
            })
        });
        worker.wake();
        while left.load(Ordering::SeqCst) > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 3);
        left.store(2, Ordering::SeqCst);
        worker.wake();
        while left.load(Ordering::SeqCst) > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 5);
        worker.stop().await;
        left.store(2, Ordering::SeqCst);
        worker.wake();
        tokio::task::yield_now().await;
        assert_eq!(done.load(Ordering::SeqCst), 5, "stopped: no more work");
    }
}
