//! Checkpoints off the writer's path. With SQLite's default the write connection
//! checkpointed in its own COMMIT every 1,000 pages, which a group commit of a hundred users
//! crossed almost every time, paying for the copy back into the database file (and its
//! fsync) while every other writer waited. Here one task with a connection of its own copies
//! the WAL back after commits, at most once per [`EVERY`], so pages written by several
//! commits are copied once: `PRAGMA wal_checkpoint(PASSIVE)`, which never waits for nor
//! blocks the writer or the readers. A WAL starts over only once wholly copied back with no
//! reader in it, which continuous commits never leave by themselves (a long catch-up grew it
//! by gigabytes): past [`RESTART_PAGES`] the task asks for that (`RESTART`) right after its
//! copy, when little is left, waiting [`RESTART_WAIT`] at most for readers and the writer.
//! The writer keeps a checkpoint of its own only far beyond ([`WRITER_PAGES`]), should the
//! task fall behind. The task ends with the store (its last clone dropped or
//! [`super::Store::close`]), closing its connection.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// At most one checkpoint per this long while commits go on.
pub(super) const EVERY: Duration = Duration::from_millis(500);

/// Past this many pages (16 MiB) the task starts the WAL over.
const RESTART_PAGES: i64 = 4096;

/// How long a restart waits for readers and the writer before giving up until next time.
const RESTART_WAIT: Duration = Duration::from_millis(200);

/// The writer's own checkpoint, after a commit that leaves the WAL this many pages long
/// (64 MiB): only if the task falls behind.
pub(super) const WRITER_PAGES: u32 = 16_384;

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
            match SqliteConnection::connect_with(&options.clone().busy_timeout(RESTART_WAIT)).await
            {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::debug!(error = %e, "checkpointer: cannot open the database"),
            }
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = checkpoint(c).await
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

/// Copies the WAL back; past [`RESTART_PAGES`], starts it over.
async fn checkpoint(conn: &mut SqliteConnection) -> sqlx::Result<()> {
    let (_busy, log, _copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await?;
    if log >= RESTART_PAGES {
        // Busy (a reader or the writer held on past the wait) is no error: next time.
        sqlx::query("PRAGMA wal_checkpoint(RESTART)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(path: &std::path::Path) -> SqliteConnection {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .pragma("wal_autocheckpoint", "0");
        SqliteConnection::connect_with(&options).await.unwrap()
    }

    /// The WAL's length in frames (copying it back on the way).
    async fn wal(conn: &mut SqliteConnection) -> (i64, i64) {
        let (_, log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        (log, copied)
    }

    /// Past its bound the checkpointer starts the WAL over: the next commit writes at its
    /// start.
    #[tokio::test]
    async fn past_its_bound_the_wal_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut writer = connect(&path).await;
        let mut task = connect(&path).await;
        sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .execute(&mut writer)
            .await
            .unwrap();
        let write = |k: i64| {
            sqlx::query("INSERT OR REPLACE INTO t VALUES (?, randomblob(1000000))").bind(k % 3)
        };
        // Past the bound: the next commit starts it over.
        for k in 0..20 {
            write(k).execute(&mut writer).await.unwrap();
        }
        let (log, _) = wal(&mut task).await;
        assert!(log >= RESTART_PAGES, "{log}");
        checkpoint(&mut task).await.unwrap();
        write(2).execute(&mut writer).await.unwrap();
        let (log, _) = wal(&mut task).await;
        assert!(log < 300, "the WAL started over: {log} frames");
    }
}
