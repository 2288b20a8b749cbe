//! SQLite through sqlx, and nothing else: plain async functions over one pool, one file per
//! table family. Makes no decisions; every timestamp is unix seconds.
//!
//! WAL, `busy_timeout` and foreign keys are set on every connection. Writes that read then
//! write run in `BEGIN IMMEDIATE` transactions so concurrent writers wait instead of failing
//! with "database is locked".

pub mod connections;
pub mod connectors;
pub mod housekeeping;
pub mod jobs;
pub mod refreshes;
mod sweeps;
mod users;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

pub use connections::{ConnectionRow, HealthChange};
pub use connectors::{ConnectorChange, OutageRow};
pub use jobs::JobRow;
pub use sweeps::{Abort, AbortCause, SweepCounts};
pub use users::UserRow;

/// The database could not be opened or migrated: exit code 74.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the database {path}: {message}")]
pub struct OpenError {
    pub path: PathBuf,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, sqlx::Error>;

/// The daemon's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
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
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| fail(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Several processes opening a fresh database race to migrate it: each migration is
        // one transaction, so the loser's fails ("table already exists") and rolls back;
        // running the migrator again finds it applied.
        let mut tries = 0;
        loop {
            match sqlx::migrate!().run(&pool).await {
                Ok(()) => break,
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "migration raced another process; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => return Err(fail(format!("migration failed: {e}"))),
            }
        }
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`).
    pub async fn write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The installation's seed, made once and kept: it spreads users' sweep offsets
    /// differently on every installation and identically across restarts.
    pub async fn installation_seed(&self) -> Result<u64> {
        let fresh: u64 = rand::random();
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('installation_seed', ?)")
            .bind(fresh.to_string())
            .execute(&self.pool)
            .await?;
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
