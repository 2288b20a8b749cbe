//! Checkpoints off the writer's path. The write connection never checkpoints in its own
//! COMMIT (`wal_autocheckpoint = 0`): with SQLite's default, a group commit of a hundred
//! users crossed the 1,000-page mark almost every time and paid for the copy back into the
//! database file before answering. Here one task with a connection of its own copies the
//! WAL back (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for, nor blocks, the writer
//! or the readers) after commits, at most once per [`EVERY`], so pages written by several
//! commits are copied once. The task ends with the store (its last clone dropped or
//! [`super::Store::close`]), closing its connection.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// At most one checkpoint per this long while commits go on.
pub(super) const EVERY: Duration = Duration::from_millis(500);

/// The checkpointer's cue and its stop: cloned with the store; the last clone dropped
/// stops the task.
#[derive(Clone, Debug)]
pub(super) struct Checkpointer {
    committed: Arc<Notify>,
    stop: CancellationToken,
    _guard: Arc<DropGuard>,
}

impl Checkpointer {
    /// Starts the task (inside a tokio runtime; without one, nothing checkpoints but
    /// SQLite's close of the last connection).
    pub(super) fn spawn(options: SqliteConnectOptions) -> Self {
        let committed = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(options, committed.clone(), stop.clone()));
        }
        Self {
            committed,
            _guard: Arc::new(stop.clone().drop_guard()),
            stop,
        }
    }

    /// A transaction committed.
    pub(super) fn committed(&self) {
        self.committed.notify_one();
    }

    pub(super) fn stop(&self) {
        self.stop.cancel();
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
