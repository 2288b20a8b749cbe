//! The made-up part of a register, seeded in bulk by SQL on a connection of the harness's
//! own, while no daemon has the database open: a few statements for any number of users.
//!
//! Ids are random lowercase UUIDs (8-4-4-4-12 hex), as Basiq's are, made by SQLite from
//! `randomblob`, and rows go in in the order they were made, so every B-tree gets its keys
//! in random order, as a register built over months does. Spreads (which bank, which
//! connection fails) come from a row counter, never from an id's text.
//!
//! The seeding connection writes with no journal and no sync, in a large page cache (a
//! bench database need not survive a crash); it hands the file back in WAL mode.

use std::path::Path;

use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection};

/// A random lowercase UUID v4, in SQL.
macro_rules! uuid_sql {
    () => {
        "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
          substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) ||
          substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
    };
}

/// A random lowercase UUID v4.
pub fn random_uuid(rng: &mut impl Rng) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b[..]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

const DAY: i64 = 86_400;

/// Made-up users are due this far ahead: no sweep of due users takes them.
pub const NOT_DUE_FOR: i64 = 365 * DAY;

/// A connector made-up connections are spread over, and its share of them in slots (of
/// all the slots given).
pub struct Slot {
    pub institution_id: String,
    pub method: String,
    pub weight: u32,
}

pub struct Seeder {
    conn: SqliteConnection,
    now: i64,
}

impl Seeder {
    /// Opens the (migrated) database at `db`, which nobody else may have open.
    pub async fn open(db: &Path, now: DateTime<Utc>) -> anyhow::Result<Self> {
        let conn = SqliteConnectOptions::new()
            .filename(db)
            .journal_mode(SqliteJournalMode::Off)
            .synchronous(SqliteSynchronous::Off)
            .foreign_keys(false)
            .pragma("cache_size", "-2097152")
            .pragma("temp_store", "MEMORY")
            .connect()
            .await?;
        Ok(Self {
            conn,
            now: now.timestamp(),
        })
    }

    /// Hands the database back in WAL mode.
    pub async fn close(mut self) -> anyhow::Result<()> {
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&mut self.conn)
            .await?;
        self.conn.close().await?;
        Ok(())
    }

    /// `n` made-up users, not due, numbered in `bench_users` (0..n) in the order they were
    /// made; each was swept within the last day.
    pub async fn made_up_users(&mut self, n: usize) -> anyhow::Result<()> {
        let mut tx = self.conn.begin().await?;
        sqlx::query("CREATE TEMP TABLE bench_users (i INTEGER PRIMARY KEY, user_id TEXT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(concat!(
            "INSERT INTO bench_users (i, user_id)
             WITH RECURSIVE n(i) AS (SELECT 0 WHERE ?1 > 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
             SELECT i, ",
            uuid_sql!(),
            " FROM n"
        ))
        .bind(i64::try_from(n)?)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO users (user_id, added_at, next_due_at, last_swept_at)
             SELECT user_id, ?1 - 120 * 86400, ?1 + ?2, ?1 - i % 86400 FROM bench_users ORDER BY i",
        )
        .bind(self.now)
        .bind(NOT_DUE_FOR)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// After `users import`: the users `due` become due now, every other one not due, and
    /// the not-due ones are numbered in `bench_users` (in id order: for random ids, a
    /// random order).
    pub async fn number_registered(&mut self, due: &[String]) -> anyhow::Result<()> {
        let mut tx = self.conn.begin().await?;
        sqlx::query("UPDATE users SET next_due_at = ?")
            .bind(self.now + NOT_DUE_FOR)
            .execute(&mut *tx)
            .await?;
        for chunk in due.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("UPDATE users SET next_due_at = ? WHERE user_id IN ({marks})");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(self.now);
            for id in chunk {
                query = query.bind(id.as_str());
            }
            query.execute(&mut *tx).await?;
        }
        sqlx::query("CREATE TEMP TABLE bench_users (i INTEGER PRIMARY KEY, user_id TEXT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO bench_users (user_id)
             SELECT user_id FROM users WHERE next_due_at > ? ORDER BY user_id",
        )
        .bind(self.now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The `--million` register's connections: two per numbered user, open banking, a
    /// third of the users at BENCH-0 with their first connection failing bank-side a minute
    /// ago, the others over BENCH-1..5, one user in 50 needing action.
    pub async fn million_connections(&mut self) -> anyhow::Result<()> {
        sqlx::query(concat!(
            "INSERT INTO connections (connection_id, user_id, institution_id, method, status,
                 first_seen_at, health, reason, checked_at, health_since, newest_job_side,
                 bank_failure_at)
             SELECT ",
            uuid_sql!(),
            ", u.user_id,
                    CASE WHEN u.i % 3 = 0 THEN 'BENCH-0' ELSE 'BENCH-' || (u.i % 5 + 1) END,
                    'open-banking', 'active', ?1,
                    CASE WHEN u.i % 50 = 0 THEN 'action-required' ELSE 'healthy' END,
                    NULL, ?1, ?1,
                    CASE WHEN u.i % 3 = 0 AND k.k = 0 THEN 'bank' END,
                    CASE WHEN u.i % 3 = 0 AND k.k = 0 THEN ?1 - 60 END
             FROM bench_users u, (SELECT 0 AS k UNION ALL SELECT 1) k ORDER BY u.i, k.k"
        ))
        .bind(self.now)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// Two connections per numbered user, as a sweep leaves them: spread over `slots` by a
    /// counter, status `active` and `healthy` after a job that succeeded an hour before
    /// the user's last sweep; one connection in 49 `invalid` and needing action after a
    /// job that failed with `invalid-credentials`. Numbered in `bench_conns`, each with its
    /// newest job's id, for [`Seeder::history`].
    pub async fn connections(&mut self, slots: &[Slot]) -> anyhow::Result<()> {
        let mut tx = self.conn.begin().await?;
        number_connections(&mut tx, slots, self.now).await?;
        sqlx::query(
            "INSERT INTO connections (connection_id, user_id, institution_id, method, status,
                 created_date, last_used, expiry_date, newest_job_id, newest_job_state,
                 newest_job_code, newest_job_side, newest_job_created, newest_job_updated,
                 health, reason, checked_at, health_since, first_seen_at, mfa_enabled,
                 needs_user_present, invalid_from, invalid_seen)
             SELECT connection_id, user_id, institution_id, method,
                    CASE WHEN failed THEN 'invalid' ELSE 'active' END,
                    ?1 - 200 * 86400, swept_at - 3540,
                    CASE WHEN method = 'open-banking' THEN ?1 + 300 * 86400 END,
                    job_id, CASE WHEN failed THEN 'failed' ELSE 'success' END,
                    CASE WHEN failed THEN 'invalid-credentials' END,
                    CASE WHEN failed THEN 'user' END,
                    swept_at - 3600, swept_at - 3540,
                    CASE WHEN failed THEN 'action-required' ELSE 'healthy' END,
                    CASE WHEN failed THEN 'invalid-credentials' END,
                    swept_at, health_since, ?1 - 120 * 86400, 0, 0,
                    CASE WHEN failed THEN swept_at - 86400 END,
                    CASE WHEN failed THEN swept_at END
             FROM bench_conns ORDER BY i",
        )
        .bind(self.now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Each seeded connection's newest job (two per user) with its three steps, and the
    /// connection's one health change (two per user), as the sweeps that saw them wrote.
    pub async fn history(&mut self) -> anyhow::Result<()> {
        let mut tx = self.conn.begin().await?;
        for sql in [
            "INSERT INTO jobs (job_id, user_id, connection_id, institution_id, job_type, state,
                 failure_code, failed_step, created, updated, first_seen_at, last_seen_at)
             SELECT job_id, user_id, connection_id, institution_id, 'connection',
                    CASE WHEN failed THEN 'failed' ELSE 'success' END,
                    CASE WHEN failed THEN 'invalid-credentials' END,
                    CASE WHEN failed THEN 'verify-credentials' END,
                    swept_at - 3600, swept_at - 3540, swept_at - 3000, swept_at
             FROM bench_conns ORDER BY i",
            "INSERT INTO job_steps (job_id, position, title, status, result_code, result_title)
             SELECT c.job_id, s.position, s.title,
                    CASE WHEN NOT c.failed THEN 'success' WHEN s.position = 0 THEN 'failed'
                         ELSE 'pending' END,
                    CASE WHEN c.failed AND s.position = 0 THEN 'invalid-credentials' END,
                    CASE WHEN c.failed AND s.position = 0
                         THEN 'Cannot login to target institution using supplied credentials.' END
             FROM bench_conns c,
                  (SELECT 0 AS position, 'verify-credentials' AS title
                   UNION ALL SELECT 1, 'retrieve-accounts'
                   UNION ALL SELECT 2, 'retrieve-transactions') s
             ORDER BY c.i, s.position",
            "INSERT INTO health_changes (connection_id, user_id, from_health, to_health, reason,
                 job_id, changed_at)
             SELECT connection_id, user_id, NULL,
                    CASE WHEN failed THEN 'action-required' ELSE 'healthy' END,
                    CASE WHEN failed THEN 'invalid-credentials' END, job_id, health_since
             FROM bench_conns ORDER BY i",
        ] {
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// `bench_conns`: two connections per numbered user (`i` = user × 2 + k), each with its
/// connector (slot `i` modulo the slots), its newest job's id, its user's last sweep and
/// its health's start, and whether it failed (one in 49: the failures fall on every slot).
async fn number_connections(
    conn: &mut SqliteConnection,
    slots: &[Slot],
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TEMP TABLE bench_connectors (slot INTEGER PRIMARY KEY, institution_id TEXT NOT NULL,
             method TEXT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let mut slot = 0i64;
    for s in slots {
        for _ in 0..s.weight {
            sqlx::query("INSERT INTO bench_connectors VALUES (?, ?, ?)")
                .bind(slot)
                .bind(&s.institution_id)
                .bind(&s.method)
                .execute(&mut *conn)
                .await?;
            slot += 1;
        }
    }
    anyhow::ensure!(slot > 0, "no connector to spread connections over");
    sqlx::query(
        "CREATE TEMP TABLE bench_conns (i INTEGER PRIMARY KEY, user_id TEXT NOT NULL,
             connection_id TEXT NOT NULL, job_id TEXT NOT NULL, institution_id TEXT NOT NULL,
             method TEXT NOT NULL, swept_at INTEGER NOT NULL, failed INTEGER NOT NULL,
             health_since INTEGER NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(concat!(
        "INSERT INTO bench_conns
         SELECT j, user_id, ",
        uuid_sql!(),
        ", ",
        uuid_sql!(),
        ", c.institution_id, c.method, swept_at, failed,
                CASE WHEN failed THEN swept_at - 3540 ELSE ?1 - 120 * 86400 END
         FROM (SELECT u.i * 2 + k.k AS j, u.user_id, ?1 - u.i % 86400 AS swept_at,
                      (u.i * 2 + k.k) % 49 = 0 AS failed
               FROM bench_users u, (SELECT 0 AS k UNION ALL SELECT 1) k) x
         JOIN bench_connectors c ON c.slot = x.j % ?2
         ORDER BY j"
    ))
    .bind(now)
    .bind(slot)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
