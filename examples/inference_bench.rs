//! The inferred-outage count at scale: 1,000,000 users, a third at one bank, and the
//! count each swept user's plan reads (`store::connections::inference_at`), timed.
//!
//! `cargo run --release --example inference_bench [users]`
//!
//! Two shapes are measured: every user at the big bank failing bank-side (the count stops
//! at the threshold), and a handful failing (the index range holds only those).

use std::time::Instant;

use basiq_health::domain::{ConnectorKey, Method, UserId};
use basiq_health::store::{Store, connections::inference_at};
use chrono::Utc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let users: i64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("bench.db")).await?;
    let now = Utc::now().timestamp();
    let started = Instant::now();
    let mut tx = store.write().await?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
         INSERT INTO users (user_id, added_at, next_due_at) SELECT 'u' || i, ?2, ?2 FROM n",
    )
    .bind(users)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    // A third at AU00000 (web), the rest spread over five banks.
    sqlx::query(
        "INSERT INTO connections (connection_id, user_id, institution_id, method, status,
             first_seen_at, newest_job_side, bank_failure_at)
         SELECT 'c' || substr(user_id, 2), user_id,
                CASE WHEN CAST(substr(user_id, 2) AS INTEGER) % 3 = 0 THEN 'AU00000'
                     ELSE 'AU0000' || (1 + CAST(substr(user_id, 2) AS INTEGER) % 5) END,
                'web', 'active', ?1,
                CASE WHEN CAST(substr(user_id, 2) AS INTEGER) % 3 = 0 THEN 'bank' END,
                CASE WHEN CAST(substr(user_id, 2) AS INTEGER) % 3 = 0 THEN ?1 - 60 END
         FROM users",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(store.pool()).await?;
    println!(
        "populated {users} users, {} at AU00000, in {:.1} s",
        users / 3 + 1,
        started.elapsed().as_secs_f64()
    );
    let key = ConnectorKey::new("AU00000", &Method::Web);
    let since = Utc::now() - chrono::Duration::hours(1);
    let mut conn = store.pool().acquire().await?;
    for (label, calls) in [("all failing", 2000u32)] {
        let t = Instant::now();
        let mut counted = 0;
        for i in 0..calls {
            let me = UserId::parse(format!("u{}", i * 3)).unwrap();
            counted = inference_at(&mut conn, &key, Some(&me), since, 3)
                .await?
                .other_users_failing;
        }
        let per = t.elapsed().as_secs_f64() * 1e3 / f64::from(calls);
        println!("{label}: {per:.3} ms per call ({calls} calls), counted {counted}");
    }
    // Few failing: clear all but five failures.
    sqlx::query(
        "UPDATE connections SET bank_failure_at = NULL, newest_job_side = NULL
         WHERE institution_id = 'AU00000' AND CAST(substr(user_id, 2) AS INTEGER) > 15",
    )
    .execute(&mut *conn)
    .await?;
    let t = Instant::now();
    let calls = 2000u32;
    let mut counted = 0;
    for i in 0..calls {
        let me = UserId::parse(format!("u{}", i * 3)).unwrap();
        counted = inference_at(&mut conn, &key, Some(&me), since, 3)
            .await?
            .other_users_failing;
    }
    let per = t.elapsed().as_secs_f64() * 1e3 / f64::from(calls);
    println!("five failing: {per:.3} ms per call ({calls} calls), counted {counted}");
    Ok(())
}
