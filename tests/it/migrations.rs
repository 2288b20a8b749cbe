//! A database written by the schema before issue 23 (migrations 1 to 11) is carried over by
//! 0012 and 0013: every connection kept, the indexes the reclassification walks made, and
//! a reclassification left in progress started over in the new order.

use std::path::Path;

use basiq_health::store::Store;

/// A database made by migrations 1 to 11 with 30 users, two connections each at two banks
/// (random ids), and a reclassification in progress with a connection id as its cursor.
async fn database_before_0012(path: &Path) {
    let pool = crate::helpers::database_migrated_before(path, "0012").await;
    for statement in [
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30)
         INSERT INTO users (user_id, added_at, next_due_at) SELECT lower(hex(randomblob(16))), 1000, 2000 + i FROM n",
        "INSERT INTO connections (connection_id, user_id, institution_id, method, status, health, first_seen_at)
         SELECT lower(hex(randomblob(16))), u.user_id, 'AU0000' || k.k, 'open-banking', 'active', 'healthy', 1000
           FROM users u, (SELECT 1 AS k UNION ALL SELECT 2) k",
        "INSERT INTO reclassify_queue (institution_id, method, queued_at, cursor)
         VALUES ('AU00001', 'open-banking', 1500, (SELECT MIN(connection_id) FROM connections))",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

#[tokio::test]
async fn a_database_of_the_schema_before_is_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    database_before_0012(&path).await;
    let store = Store::open(&path).await.unwrap();
    let pool = store.pool();
    let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(ok, "ok");
    let connections: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connections")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(connections, 60);
    assert_eq!(store.all_connections(None).await.unwrap().len(), 60);
    // The walk's index: the institution alone (each entry ends with its rowid).
    let columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_index_info('connections_institution')")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(columns, ["institution_id"]);
    // The reclassification in progress starts over, in storage order.
    let (cursor, rowid): (String, i64) =
        sqlx::query_as("SELECT cursor, cursor_rowid FROM reclassify_queue")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((cursor.as_str(), rowid), ("", 0));
    assert!(store.reclassify_pending(false).await.unwrap());
    store.close().await;
}
