//! The production service: the unit file, the notify protocol, signals, metrics, retention.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use basiq_health::domain::UserId;
use chrono::{Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::cli::bin;
use crate::helpers::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/basiq-health.service");

fn config() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/basiq-health.toml")
}

#[test]
fn the_unit_file_rates_1_5_or_better_in_systemd_analyze_security() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", UNIT])
        .output()
        .expect("systemd-analyze is installed (.ci/run installs systemd)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for basiq-health.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 1.5, "exposure {score}: {text}");
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for key in [
        "Type=notify",
        "ExecStart=/usr/local/bin/basiq-health --config /etc/basiq-health/basiq-health.toml run",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "WatchdogSec=",
        "DynamicUser=yes",
        "StateDirectory=basiq-health",
        "ConfigurationDirectory=basiq-health",
        "LoadCredential=basiq-api-key:/etc/basiq-health/api-key",
    ] {
        assert!(unit.contains(key), "the unit has {key}");
    }
    // verify checks that the binary exists: point the copy at the one cargo built.
    let t = TestApp::offline();
    let copy = t.path("basiq-health.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/basiq-health",
            env!("CARGO_BIN_EXE_basiq-health"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "verify: {stderr}"
    );
}

#[test]
fn the_timeout_to_stop_is_above_the_shutdown_grace() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let stop: StdDuration = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(|v| humantime::parse_duration(v.trim()).unwrap())
        .unwrap();
    let settings = basiq_health::settings::Settings::from_toml("").unwrap();
    assert!(stop > settings.shutdown_grace);
}

fn daemon(sim: &basiq_sim::RunningSim, db: &std::path::Path, envs: &[(&str, &str)]) -> Command {
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(config())
        .arg("run")
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", db)
        .env("BASIQ_HEALTH__API__LISTEN", "")
        .env("BASIQ_HEALTH__LOG__FORMAT", "json")
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
        .envs(envs.iter().copied());
    cmd
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_speaks_the_notify_protocol_ready_watchdog_stopping() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let socket_path = t.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(StdDuration::from_secs(20)))
        .unwrap();
    let mut child = daemon(sim, &t.db(), &[("WATCHDOG_USEC", "400000")])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = |seen: &mut Vec<String>| -> String {
        let n = socket.recv(&mut buf).expect("a notification within 20 s");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        seen.push(msg.clone());
        msg
    };
    while !next(&mut seen).lines().any(|l| l == "READY=1") {}
    assert!(
        seen.last().unwrap().contains("STATUS="),
        "READY comes with a status line: {seen:?}"
    );
    while !next(&mut seen).lines().any(|l| l == "WATCHDOG=1") {}
    sigterm(child.id());
    while !next(&mut seen).lines().any(|l| l == "STOPPING=1") {}
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_sweep_of_500_users_exits_0_within_the_grace_and_leaves_the_database_intact()
 {
    let t = TestApp::builder().users(500).spawn().await;
    let sim = t.sim();
    // Slow Basiq down: each request takes 40 ms more.
    sim.sim.set_delay(None, StdDuration::from_millis(40));
    let db = t.db();
    {
        let sweeper = t.sweeper_with("[sweep]\nperiod = \"2s\"\n").await;
        let users: Vec<UserId> = t.users();
        sweeper.add_users(&users).await.unwrap();
        sweeper.store().close().await;
    }
    let grace = 10;
    let mut child = daemon(
        sim,
        &db,
        &[
            ("BASIQ_HEALTH__SWEEP__PERIOD", "2s"),
            ("BASIQ_HEALTH__SWEEP__TICK", "* * * * * *"),
            ("BASIQ_HEALTH__BASIQ__MAX_REQUESTS_PER_SECOND", "40"),
            ("BASIQ_HEALTH__SHUTDOWN_GRACE", "10s"),
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // Wait (bounded) until the sweep is under way.
    let store = basiq_health::store::Store::open(&db).await.unwrap();
    let deadline = Instant::now() + StdDuration::from_secs(30);
    loop {
        let swept = swept_count(&store).await;
        if swept >= 20 {
            break;
        }
        assert!(Instant::now() < deadline, "the sweep did not start");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let asked = Instant::now();
    sigterm(child.id());
    let status = child.wait().unwrap();
    let took = asked.elapsed();
    let lines = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{lines:?}");
    assert!(took < StdDuration::from_secs(grace), "stopped in {took:?}");
    assert!(lines.iter().any(|l| l.contains("\"event\":\"stopped\"")));
    let swept = swept_count(&store).await;
    assert!(
        swept < 500,
        "the stop interrupted the sweep ({swept} swept)"
    );
    assert!(store.integrity_ok().await.unwrap());
    let open_sweeps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sweeps WHERE ended_at IS NULL")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(open_sweeps, 0, "no half-written sweep");
}

/// Every sample line of Prometheus/OpenMetrics text: `name{labels} value`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line: {l}"));
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "metric name: {l}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                assert!(
                    labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                    "labels: {l}"
                );
            }
            (
                series.to_owned(),
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("value: {l}")),
            )
        })
        .collect()
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_after_a_sweep() {
    let t = TestApp::builder().users(10).spawn().await;
    let sim = t.sim();
    let mut settings = t.settings_with("");
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().unwrap());
    let users: Vec<UserId> = sim_users(sim);
    app.context().add_users(&users).await.unwrap();
    let sweeper = app.context().clone();
    let daemon = Daemon::start(app);
    let http = reqwest::Client::new();
    let get = || async {
        let response = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        parse_metrics(&response.text().await.unwrap())
    };
    let before = get().await;
    assert_eq!(sample(&before, "basiq_health_users_registered"), 10.0);
    assert_eq!(sample(&before, "basiq_health_users_swept_total"), 0.0);

    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(users),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let after = get().await;
    assert_eq!(sample(&after, "basiq_health_users_swept_total"), 10.0);
    assert_eq!(sample(&after, "basiq_health_sweep_passes_total"), 1.0);
    assert_eq!(sample(&after, "basiq_health_token_fetches_total"), 1.0);
    assert_eq!(
        sample(
            &after,
            "basiq_health_basiq_requests_total{endpoint=\"connections\",status=\"200\"}"
        ),
        10.0
    );
    assert!(sample(&after, "basiq_health_connections{health=\"healthy\"}") > 0.0);
    assert!(
        sample(&after, "basiq_health_write_lock_hold_max_seconds") > 0.0,
        "the sweep's group commits held the write lock"
    );
    assert!(
        after
            .iter()
            .any(|(s, _)| s.starts_with("basiq_health_sweep_duration_seconds_bucket"))
    );
    assert!(
        sample(&after, "basiq_health_outages_open") >= 1.0,
        "the simulator has a connector in outage"
    );

    let healthz = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    daemon.stop().await;
}

#[tokio::test]
async fn history_older_than_retain_days_is_pruned_and_recent_history_kept() {
    let t = TestApp::empty().await;
    let sweeper = t.context().await;
    let store = sweeper.store();
    let now = Utc::now();
    store
        .add_users(&[UserId::parse("old").unwrap()], now, |_| now)
        .await
        .unwrap();
    for (i, age_days) in [500i64, 450, 10, 1].iter().enumerate() {
        let t = (now - Duration::days(*age_days)).timestamp();
        sqlx::query("INSERT INTO jobs (job_id, user_id, state, created, first_seen_at, last_seen_at) VALUES (?, 'old', 'success', ?, ?, ?)")
            .bind(format!("j{i}"))
            .bind(t)
            .bind(t)
            .bind(t)
            .execute(store.write_pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO health_changes (connection_id, user_id, to_health, changed_at) VALUES ('c', 'old', 'healthy', ?)")
            .bind(t)
            .execute(store.write_pool())
            .await
            .unwrap();
    }
    let pruned = store
        .housekeep_if_due(400, now)
        .await
        .unwrap()
        .expect("first run prunes");
    assert_eq!((pruned.jobs, pruned.health_changes), (2, 2));
    assert_eq!(store.count_jobs().await.unwrap(), 2);
    assert!(
        store.housekeep_if_due(400, now).await.unwrap().is_none(),
        "once a day"
    );
    assert!(store.integrity_ok().await.unwrap());
}

/// Starts the real daemon with the local API on a free loopback port and no
/// `api.token_file`, under umask 000; returns it and the API's base URL once it answers.
async fn daemon_with_api(
    sim: &basiq_sim::RunningSim,
    db: &std::path::Path,
    log: &std::path::Path,
) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let inner = daemon(sim, db, &[("BASIQ_HEALTH__API__LISTEN", listen.as_str())]);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_clear()
        .envs(
            inner
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::null());
    let child = cmd.spawn().unwrap();
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + StdDuration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the API did not answer within 20 s"
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_api_needs_the_generated_token_on_every_v1_route_even_on_loopback() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let log = t.path("daemon.log");
    let (mut child, base) = daemon_with_api(sim, &db, &log).await;

    let file = t.path("api-token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file is private whatever the umask");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(token.len(), 64, "32 random bytes as hex");

    let http = reqwest::Client::new();
    let routes = [
        (reqwest::Method::GET, "/v1/users"),
        (reqwest::Method::PUT, "/v1/users/user-a"),
        (reqwest::Method::DELETE, "/v1/users/user-a"),
        (reqwest::Method::POST, "/v1/users/user-a/login"),
        (reqwest::Method::GET, "/v1/users/user-a/health"),
        (reqwest::Method::GET, "/v1/status"),
    ];
    let wrong = format!("{}x", &token[..63]);
    for (method, path) in &routes {
        for auth in [None, Some(wrong.as_str()), Some(""), Some(&token[..10])] {
            let mut request = http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = auth {
                request = request.bearer_auth(t);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
        }
    }
    // Nothing was registered by the refused PUTs.
    let users: serde_json::Value = http
        .get(format!("{base}/v1/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users, serde_json::json!([]));
    let put = http
        .put(format!("{base}/v1/users/user-a"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    // Probes and the local scraper need no token on loopback.
    for open in ["/healthz", "/metrics"] {
        let response = http.get(format!("{base}{open}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{open}");
    }
    sigterm(child.id());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&file.display().to_string()),
        "the log says where the token is"
    );
    assert!(!logged.contains(&token), "the token is never logged");

    // A restart reuses the same token.
    let (mut child, base) = daemon_with_api(sim, &db, &log).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    let users: serde_json::Value = http
        .get(format!("{base}/v1/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users[0]["user_id"], "user-a");
    sigterm(child.id());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn an_empty_token_file_is_refused_at_start_naming_it() {
    let t = TestApp::offline();
    let token = t.path("tok");
    std::fs::write(&token, "  \n").unwrap();
    let out = bin()
        .arg("--config")
        .arg(config())
        .args(["config", "check"])
        .env("BASIQ_HEALTH__API__TOKEN_FILE", &token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api.token_file") && stderr.contains("empty"),
        "{stderr}"
    );
}
