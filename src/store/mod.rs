//! SQLite through sqlx, and nothing else: plain async functions, one file per table family.
//! Makes no decisions; every timestamp is unix seconds.
//!
//! **One writer.** Reads use a pool of their own (`query_only`: a write that strays there
//! fails loudly). Every write goes through one connection (a pool of one): in-process
//! writers queue for it instead of fighting over SQLite's lock, so SQLite's busy handler
//! only ever sleeps for another process. Writes that read then write run in `BEGIN
//! IMMEDIATE` transactions ([`Store::write`]). A sweep's per-user plans are committed
//! together, up to [`GROUP_MAX`] per transaction (the sweep's committer, with the
//! multi-row statements of [`plans::write_plans`]): many users cost one commit.
//!
//! WAL, `busy_timeout` and foreign keys are set on every connection; statement journals
//! stay in memory; checkpoints run mostly off the writer's path (`checkpoint`).
//!
//! **Statements prepared once.** Every statement keeps one text (multi-row ones take a few
//! fixed sizes, `shapes`) so sqlx's per-connection cache hits, and a `LIMIT` takes its bound
//! value as `? + 0`: a bare `LIMIT ?` makes SQLite plan with the bound value and prepare the
//! statement again at every new binding, so the cached statement never served.
//!
//! A failed write must not poison the pool: when a statement or the COMMIT fails (a full
//! disk fails the COMMIT), SQLite may or may not have rolled the transaction back, and a
//! connection handed back in that state fails every later `BEGIN`. So a [`WriteTx`] that
//! did not end in a successful COMMIT or ROLLBACK closes its connection instead of
//! returning it, and every write's outcome feeds [`WriteHealth`].
//!
//! The database file is created `0600` before SQLite opens it (SQLite gives the `-wal` and
//! `-shm` files the database file's mode), and tightened to `0600` when it is more open.
//!
//! How long a write transaction holds SQLite's write lock is measured (from its `BEGIN
//! IMMEDIATE` to its end), and the longest since start kept ([`Store::write_lock_hold_max`]):
//! every other writer, in this process or another, waits that long.

pub mod cdr;
mod checkpoint;
pub mod connections;
pub mod connectors;
pub mod console;
pub mod events;
pub mod health;
pub mod housekeeping;
pub mod jobs;
mod monitor;
pub mod plans;
pub mod refreshes;
mod shapes;
mod sweeps;
pub mod tallies;
mod users;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqlitePool};

use crate::clock::Clock;

pub use crate::plan::OutageRow;
pub use connections::HealthChange;
pub use health::{Failing, WriteHealth};
pub use jobs::JobRow;
pub use monitor::ConnectorTally;
pub use sweeps::{Abort, AbortCause, SweepCounts};
pub use tallies::Tallies;
pub use users::UserRow;

/// The database could not be opened or migrated: exit code 74.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the database {path}: {message}")]
pub struct OpenError {
    pub path: PathBuf,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, sqlx::Error>;

/// Plans committed in one group transaction at most.
pub const GROUP_MAX: usize = 128;

/// Prepared statements kept per connection: every statement shape the daemon uses (each
/// multi-row statement in its few fixed sizes, `shapes`) stays prepared.
const STATEMENT_CACHE: usize = 256;

/// The daemon's database.
#[derive(Clone, Debug)]
pub struct Store {
    /// Readers (`query_only`).
    pool: SqlitePool,
    writer: Writer,
}

/// The one write connection (a pool of one, so a connection closed after a failure is
/// replaced by a fresh one) and what every write's outcome feeds.
#[derive(Clone, Debug)]
struct Writer {
    pool: SqlitePool,
    health: Arc<WriteHealth>,
    groups: Arc<GroupStats>,
    /// Notifications are written to the outbox (some `[[notify.endpoints]]` will send
    /// them); off, the outbox is left alone.
    notices: Arc<std::sync::atomic::AtomicBool>,
    /// Woken when a commit wrote notifications (the deliverers wait on it).
    outbox: Arc<tokio::sync::Notify>,
    /// Told of every commit; checkpoints off the writer's path.
    checkpointer: checkpoint::Checkpointer,
    /// The longest write-lock hold since start.
    lock_hold: Arc<LockHold>,
}

/// The longest time one write transaction held the write lock since start, in
/// microseconds. A duration measured with [`Instant`], never a date: nothing is decided by
/// it, and the daemon's clock (which tests drive) stays the one source of `now`.
#[derive(Debug, Default)]
struct LockHold {
    max_micros: AtomicU64,
}

impl LockHold {
    fn note(&self, held: Duration) {
        let micros = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros.load(Ordering::Relaxed))
    }
}

/// What group commit did since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Group transactions committed.
    pub commits: std::sync::atomic::AtomicU64,
    /// Per-user plans committed in them.
    pub plans: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`, waiting up to 10 s
    /// for a lock held by another writer.
    pub async fn open(path: &Path) -> std::result::Result<Self, OpenError> {
        Self::open_with(path, Duration::from_secs(10)).await
    }

    /// As [`Store::open`], with the time to wait for a lock (`database.busy_timeout`).
    pub async fn open_with(
        path: &Path,
        busy_timeout: Duration,
    ) -> std::result::Result<Self, OpenError> {
        Self::open_with_clock(path, busy_timeout, Clock::system()).await
    }

    /// As [`Store::open_with`], dating what the store notes by itself (since when writes
    /// fail) by `clock`.
    pub async fn open_with_clock(
        path: &Path,
        busy_timeout: Duration,
        clock: Clock,
    ) -> std::result::Result<Self, OpenError> {
        let fail = |message: String| OpenError {
            path: path.to_owned(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(fail(format!(
                "the directory {} does not exist",
                parent.display()
            )));
        }
        private_file(path).map_err(|e| fail(e.to_string()))?;
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| fail(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            // Statement journals (a multi-row statement's undo) and temporary B-trees stay
            // in memory: spilled to a temp file they were a large share of a sweep's writes.
            .pragma("temp_store", "memory")
            // A WAL left huge by a long catch-up is cut back after a checkpoint.
            .pragma("journal_size_limit", "67108864")
            .statement_cache_capacity(STATEMENT_CACHE);
        // The writer checkpoints in its commit only past `WRITER_PAGES`: the checkpointer
        // does the rest, on a connection of its own, off the writer's path.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", checkpoint::WRITER_PAGES.to_string()),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Several processes opening a fresh database race to migrate it: each migration is
        // one transaction, so the loser's fails ("table already exists") and rolls back;
        // running the migrator again finds it applied.
        let mut tries = 0;
        loop {
            match sqlx::migrate!().run(&writer).await {
                Ok(()) => break,
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "migration raced another process; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => return Err(fail(format!("migration failed: {e}"))),
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().pragma("query_only", "ON"))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let checkpointer = checkpoint::Checkpointer::spawn(options.clone());
        let writer = Writer {
            pool: writer,
            health: Arc::new(WriteHealth::new(clock)),
            groups: Arc::default(),
            notices: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            outbox: Arc::default(),
            checkpointer,
            lock_hold: Arc::default(),
        };
        Ok(Self { pool, writer })
    }

    /// For reads (`query_only`: a write here fails). Writes go through [`Store::write`],
    /// or, for one autocommit statement, [`Store::write_pool`].
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The one write connection, for a single autocommit statement (it cannot leave a
    /// transaction open); its outcome goes through [`Store::note`]. Anything longer is a
    /// [`WriteTx`].
    pub fn write_pool(&self) -> &SqlitePool {
        &self.writer.pool
    }

    /// Whether writes are failing, fed by every write.
    pub fn write_health(&self) -> &WriteHealth {
        &self.writer.health
    }

    /// Whether plans write their notifications to the outbox (on by default; the daemon
    /// turns it off when no `[[notify.endpoints]]` would send them).
    pub fn set_notices(&self, on: bool) {
        self.writer
            .notices
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn notices(&self) -> bool {
        self.writer
            .notices
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notified after every commit that wrote notifications.
    pub fn outbox_written(&self) -> &tokio::sync::Notify {
        &self.writer.outbox
    }

    /// Group commits and the plans they carried, since start.
    pub fn group_stats(&self) -> &GroupStats {
        &self.writer.groups
    }

    /// The longest time one write transaction ([`Store::write`]) held the write lock since
    /// start: from its `BEGIN IMMEDIATE` to its COMMIT, ROLLBACK or drop.
    pub fn write_lock_hold_max(&self) -> Duration {
        self.writer.lock_hold.max()
    }

    /// Records the outcome of a one-statement write made on the write pool.
    pub(crate) fn note<T>(&self, result: Result<T>) -> Result<T> {
        self.writer.health.note(result)
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`) on the
    /// write connection, which it holds alone until it ends. End it with
    /// [`WriteTx::commit`] or [`WriteTx::rollback`]; dropped otherwise (an error returned
    /// early, a cancelled future), its connection is closed, which rolls the transaction
    /// back, and never reused.
    pub async fn write(&self) -> Result<WriteTx> {
        self.writer.write().await
    }

    pub async fn close(&self) {
        self.writer.checkpointer.stop().await;
        self.pool.close().await;
        self.writer.pool.close().await;
    }

    /// The installation's seed, made once and kept: it spreads users' sweep offsets
    /// differently on every installation and identically across restarts.
    pub async fn installation_seed(&self) -> Result<u64> {
        let fresh: u64 = rand::random();
        let inserted =
            sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('installation_seed', ?)")
                .bind(fresh.to_string())
                .execute(self.write_pool())
                .await;
        self.note(inserted)?;
        let value: String =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'installation_seed'")
                .fetch_one(&self.pool)
                .await?;
        value
            .parse()
            .map_err(|e| sqlx::Error::Decode(format!("installation_seed {value:?}: {e}").into()))
    }

    /// `PRAGMA integrity_check` answers `ok`.
    pub async fn integrity_ok(&self) -> Result<bool> {
        let answer: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?;
        Ok(answer == "ok")
    }
}

impl Writer {
    async fn write(&self) -> Result<WriteTx> {
        // Only failures are noted here: a BEGIN succeeds on a full disk, and only a COMMIT
        // that succeeded says writes work again.
        let conn = self.pool.acquire().await.inspect_err(|e| {
            self.health.failed(e);
        })?;
        let mut tx = WriteTx {
            conn: Some(conn),
            health: self.health.clone(),
            notices: self.notices.load(std::sync::atomic::Ordering::Relaxed),
            outbox: self.outbox.clone(),
            checkpointer: self.checkpointer.clone(),
            wrote_notices: false,
            lock_hold: self.lock_hold.clone(),
            locked_at: None,
        };
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *tx).await {
            tx.health.failed(&e);
            tx.discard().await;
            return Err(e);
        }
        tx.locked_at = Some(Instant::now());
        Ok(tx)
    }
}

/// An error for every member of a group that failed as a whole: the same words, and the
/// same class (a storage failure stays one).
pub(crate) fn copy_error(e: &sqlx::Error) -> sqlx::Error {
    let message = format!("the group transaction failed: {e}");
    if health::is_storage_failure(e) {
        sqlx::Error::Io(std::io::Error::other(message))
    } else {
        sqlx::Error::Protocol(message)
    }
}

/// One `BEGIN IMMEDIATE` transaction on the write connection; derefs to the connection for
/// the statements inside it.
///
/// Its connection goes back to the pool only after a COMMIT or ROLLBACK that succeeded;
/// after any failure, and when dropped unfinished, it is closed instead: SQLite may have
/// rolled the transaction back by itself or not, and a connection in an unknown state would
/// fail every later write ("cannot start a transaction within a transaction").
pub struct WriteTx {
    /// `None` once finished.
    conn: Option<PoolConnection<Sqlite>>,
    health: Arc<WriteHealth>,
    notices: bool,
    outbox: Arc<tokio::sync::Notify>,
    checkpointer: checkpoint::Checkpointer,
    /// Notifications were written: the deliverers are woken after the COMMIT.
    wrote_notices: bool,
    lock_hold: Arc<LockHold>,
    /// When `BEGIN IMMEDIATE` took the write lock; `None` before, and once the hold is noted.
    locked_at: Option<Instant>,
}

impl WriteTx {
    /// Says notifications were written in this transaction.
    pub fn wrote_notices(&mut self) {
        self.wrote_notices = true;
    }

    /// Notifications go to the outbox in this transaction ([`Store::set_notices`]).
    pub fn notices(&self) -> bool {
        self.notices
    }

    /// Commits; the whole transaction or, on error, none of it.
    pub async fn commit(mut self) -> Result<()> {
        let result = sqlx::query("COMMIT").execute(&mut *self).await.map(drop);
        self.unlocked();
        self.end(result).await
    }

    /// Rolls back (nothing was written, so write health is unchanged unless it fails).
    pub async fn rollback(mut self) -> Result<()> {
        let result = sqlx::query("ROLLBACK").execute(&mut *self).await.map(drop);
        self.unlocked();
        if let Err(e) = &result {
            self.health.failed(e);
            self.discard().await;
        }
        result
    }

    /// Notes how long the write lock was held (once; a failed COMMIT or ROLLBACK ends the
    /// hold too, as its connection is closed).
    fn unlocked(&mut self) {
        if let Some(at) = self.locked_at.take() {
            self.lock_hold.note(at.elapsed());
        }
    }

    async fn end(&mut self, result: Result<()>) -> Result<()> {
        match &result {
            Ok(()) => {
                self.health.succeeded();
                // Back to the pool, outside any transaction.
                drop(self.conn.take());
                self.checkpointer.committed();
                if self.wrote_notices {
                    self.outbox.notify_waiters();
                }
            }
            Err(e) => {
                self.health.failed(e);
                self.discard().await;
            }
        }
        result
    }

    /// Closes the connection (SQLite rolls back whatever is open) instead of returning it.
    async fn discard(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Err(e) = conn.close().await
        {
            tracing::debug!(error = %e, "closing a failed write's connection");
        }
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        // Some until finished, and finishing consumes the WriteTx.
        self.conn
            .as_deref()
            .expect("an unfinished write transaction")
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
            .as_deref_mut()
            .expect("an unfinished write transaction")
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        self.unlocked();
        if let Some(mut conn) = self.conn.take() {
            // Dropped unfinished: an error returned early or a cancelled future. Closed in
            // the background, which rolls back; never handed to another writer.
            conn.close_on_drop();
        }
    }
}

/// Creates the database file `0600` if it is missing, and takes group and other access
/// away from it and its `-wal` and `-shm` files when they have any, whatever the umask.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let mut names = vec![path.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        names.push(PathBuf::from(name));
    }
    for name in names {
        let mode = match std::fs::metadata(&name) {
            Ok(m) => m.permissions().mode(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&name, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

pub(crate) fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

/// Due times round up: a slot inside the current second must not read as already due.
pub(crate) fn ts_ceil(t: DateTime<Utc>) -> i64 {
    let secs = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

pub(crate) fn opt_ts(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ts)
}

pub fn from_ts(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

pub fn from_opt_ts(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.map(from_ts)
}

/// Basiq spells open banking two ways; both name the same connector.
pub(crate) fn method_spellings(method: &str) -> (String, String) {
    use crate::domain::Method;
    match Method::parse(method) {
        Method::OpenBanking => ("open-banking".into(), "openbanking".into()),
        other => (other.as_str().to_owned(), other.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer does not checkpoint in its commits; the checkpointer copies what they wrote
    /// back into the database file soon after.
    #[tokio::test]
    async fn commits_reach_the_database_file_through_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = Store::open(&path).await.unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let mut tx = store.write().await.unwrap();
        sqlx::query("INSERT INTO meta (key, value) VALUES ('big', hex(randomblob(500000)))")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + 900_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit never reached the database file"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.close().await;
    }

    /// Under commits that never pause, the WAL stays bounded: the checkpointer starts it
    /// over (with copies back alone it only grew, by gigabytes in a long catch-up).
    #[tokio::test]
    async fn commits_that_never_pause_keep_the_wal_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let store = Store::open(&path).await.unwrap();
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let mut longest = 0;
        // 100 MB written, more than the writer's own bound.
        for i in 0..200 {
            let mut tx = store.write().await.unwrap();
            sqlx::query(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, hex(randomblob(250000)))",
            )
            .bind(format!("k{}", i % 4))
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            longest = longest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        assert!(
            longest < 48 * 1024 * 1024,
            "the WAL grew to {longest} bytes"
        );
        store.close().await;
    }

    /// A write that strays onto the readers' pool fails instead of competing with the writer.
    #[tokio::test]
    async fn the_readers_pool_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.db")).await.unwrap();
        let e = sqlx::query("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("readonly"), "{e}");
        sqlx::query("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            .execute(store.write_pool())
            .await
            .unwrap();
    }

    /// The longest write-lock hold is kept: a longer transaction raises it, a shorter one
    /// leaves it, and one dropped unfinished counts too.
    #[tokio::test]
    async fn the_longest_write_lock_hold_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("h.db")).await.unwrap();
        assert_eq!(store.write_lock_hold_max(), Duration::ZERO);
        let tx = store.write().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        tx.commit().await.unwrap();
        let long = store.write_lock_hold_max();
        assert!(long >= Duration::from_millis(30), "{long:?}");
        store.write().await.unwrap().rollback().await.unwrap();
        assert_eq!(store.write_lock_hold_max(), long);
        let tx = store.write().await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(tx);
        assert!(store.write_lock_hold_max() >= Duration::from_millis(60));
    }
}
