//! Checkpoints mostly off the writer's path. With SQLite's default the write connection
//! checkpointed in its own COMMIT every 1,000 pages, which a group commit of a hundred users
//! crossed almost every time, paying for the copy back into the database file before
//! answering. Here one task with a connection of its own copies the WAL back (`PRAGMA
//! wal_checkpoint(PASSIVE)`: it never waits for, nor blocks, the writer or the readers)
//! after commits, at most once per [`EVERY`], so pages written by several commits are copied
//! once. The writer keeps a checkpoint of its own, rarely ([`WRITER_PAGES`]): a WAL starts
//! over only when a writer finds it wholly copied back, which under continuous commits only
//! the writer itself can arrange; without it a long catch-up grew the WAL by gigabytes. By
//! then the task has copied nearly everything, so the writer's share is small. The task
//! ends with the store (its last clone dropped or [`super::Store::close`]), closing its
//! connection.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// At most one checkpoint per this long while commits go on.
pub(super) const EVERY: Duration = Duration::from_millis(500);

/// The writer's own checkpoint, after a commit that leaves the WAL this many pages long
/// (16 MiB): the WAL's bound, and the point where it starts over.
pub(super) const WRITER_PAGES: u32 = 4096;

/// The checkpointer's cue and its stop: cloned with the store; the last clone dropped
/// stops the task.
#[derive(Clone, Debug)]
pub(super) struct Checkpointer {
    committed: Arc<Notify>,
    stop: CancellationToken,
    _guard: Arc<DropGuard>,
    /// The task, awaited by [`Checkpointer::stop`] (its connection closed when it returns).
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Checkpointer {
    /// Starts the task (inside a tokio runtime; without one, nothing checkpoints but
    /// SQLite's close of the last connection).
    pub(super) fn spawn(options: SqliteConnectOptions) -> Self {
        let committed = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.spawn(run(options, committed.clone(), stop.clone())));
        Self {
            committed,
            _guard: Arc::new(stop.clone().drop_guard()),
            stop,
            task: Arc::new(std::sync::Mutex::new(task)),
        }
    }

    /// A transaction committed.
    pub(super) fn committed(&self) {
        self.committed.notify_one();
    }

    /// Stops the task and waits until its connection is closed.
    pub(super) async fn stop(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(options: SqliteConnectOptions, committed: Arc<Notify>, stop: CancellationToken) {
    let mut conn: Option<SqliteConnection> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = committed.notified() => {}
        }
        if conn.is_none() {
            match SqliteConnection::connect_with(&options).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::debug!(error = %e, "checkpointer: cannot open the database"),
            }
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *c)
                .await
        {
            // Tried again after the next commit; a connection in doubt is replaced.
            tracing::debug!(error = %e, "checkpointer: checkpoint failed");
            if let Some(c) = conn.take() {
                let _ = c.close().await;
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
}
