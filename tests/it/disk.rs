//! The database on a file system that fills up: the pass fails cleanly, nothing stored is
//! lost, write health says so, and once space returns the same store works again without a
//! restart (no connection left inside a failed transaction). And the files are private.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basiq_health::store::Store;
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

/// A tmpfs of `size` mounted for the test's lifetime (we run as root here and in CI).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Self {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("the mount command runs");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes a filler file until the file system is full.
pub fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while file
        .write_all(&chunk)
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    // The last bytes, one at a time.
    while file.write_all(&[0]).and_then(|()| file.sync_all()).is_ok() {}
}

#[tokio::test]
async fn a_full_disk_fails_the_pass_cleanly_and_the_store_recovers_when_space_returns() {
    let t = TestApp::builder()
        .users(60)
        .extra("[sweep]\nconcurrency = 4\n")
        .spawn()
        .await;
    let sim = t.sim();
    let dir = t.dir();
    let _mount = Tmpfs::mount(dir.path(), "16m");
    let sweeper = t.context().await;
    let users = sim_users(sim);
    t.register(&users).await;
    let clean = sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(clean.users_swept, users.len() as u64);
    let connections = sweeper.store().all_connections(None).await.unwrap().len();
    assert!(connections >= users.len());

    // The disk fills: passes write until one fails (the WAL may hold a pass or two).
    let filler = t.path("filler");
    fill(&filler);
    let mut failed = None;
    for _ in 0..30 {
        match sweeper
            .run_pass(
                basiq_health::work::PassTrigger::Command,
                Some(users.clone()),
                &CancellationToken::new(),
            )
            .await
        {
            Ok(_) => continue,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let error = failed.expect("a pass fails once the disk is full");
    let text = error.to_string();
    assert!(
        text.contains("full") || text.contains("disk") || text.contains("I/O"),
        "a storage error: {text}"
    );
    let failing = sweeper
        .store()
        .write_health()
        .failing()
        .expect("write health says writes fail");
    assert!(failing.failures >= 1);

    // Space returns: the same store, no restart, writes again.
    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    let again = sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .expect("the next pass works once space is back");
    eprintln!(
        "recovered {} ms after space returned",
        back.elapsed().as_millis()
    );
    assert_eq!(again.users_swept, users.len() as u64, "{again:?}");
    assert_eq!(sweeper.store().write_health().failing(), None);
    assert!(sweeper.store().integrity_ok().await.unwrap());
    assert_eq!(
        sweeper.store().all_connections(None).await.unwrap().len(),
        connections,
        "nothing stored was lost"
    );
}

#[tokio::test]
async fn a_failed_statement_inside_a_write_does_not_poison_the_pool() {
    let t = TestApp::offline();
    let store = Store::open_with(&t.db(), Duration::from_secs(5))
        .await
        .unwrap();
    // More failures than the pool has connections: each must not come back in a transaction.
    for _ in 0..8 {
        let mut tx = store.write().await.unwrap();
        let bad = sqlx::query("INSERT INTO no_such_table VALUES (1)")
            .execute(&mut *tx)
            .await;
        assert!(bad.is_err());
        drop(tx);
    }
    for n in 0..8 {
        let mut tx = store.write().await.expect("a new write begins");
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, 'v')")
            .bind(format!("k{n}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM meta WHERE key LIKE 'k%'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(kept, 8);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[tokio::test]
async fn the_database_and_its_wal_and_shm_are_private() {
    let t = TestApp::offline();
    // A fresh database, whatever the umask (022 here would give 0644).
    let fresh = t.path("fresh.db");
    let store = Store::open(&fresh).await.unwrap();
    store.installation_seed().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(mode(&sidecar(&fresh, suffix)), 0o600, "fresh.db{suffix}");
    }
    store.close().await;

    // An existing one left world-readable is tightened at open.
    let old = t.path("old.db");
    let store = Store::open(&old).await.unwrap();
    store.installation_seed().await.unwrap();
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let path = sidecar(&old, suffix);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
    let store = Store::open(&old).await.unwrap();
    store.installation_seed().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let path = sidecar(&old, suffix);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "old.db{suffix}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_daemon_s_healthz_answers_503_while_the_disk_is_full_and_200_once_it_is_not() {
    let t = TestApp::builder().users(60).spawn().await;
    let sim = t.sim();
    let dir = t.dir();
    let _mount = Tmpfs::mount(dir.path(), "16m");
    let settings = t.settings_with("[sweep]\nconcurrency = 4\n");
    let mut settings = settings;
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let healthz = format!("http://{}/healthz", app.api_addr().unwrap());
    let sweeper = app.context().clone();
    let users = sim_users(sim);
    sweeper.add_users(&users).await.unwrap();
    let daemon = Daemon::start(app);
    let http = reqwest::Client::new();
    let status = || async { http.get(&healthz).send().await.unwrap().status().as_u16() };
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(status().await, 200);
    let filler = t.path("filler");
    fill(&filler);
    let mut failed = false;
    for _ in 0..30 {
        if sweeper
            .run_pass(
                basiq_health::work::PassTrigger::Command,
                Some(users.clone()),
                &CancellationToken::new(),
            )
            .await
            .is_err()
        {
            failed = true;
            break;
        }
    }
    assert!(failed, "a pass fails once the disk is full");
    assert_eq!(
        status().await,
        503,
        "the probe says the database is not writable"
    );
    std::fs::remove_file(&filler).unwrap();
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users.clone()),
            &CancellationToken::new(),
        )
        .await
        .expect("writes work again");
    assert_eq!(status().await, 200);
    daemon.stop().await;
}
