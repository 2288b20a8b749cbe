//! What production does to a healthy daemon (issue 21): a catch-up longer than the
//! watchdog's interval, `/healthz` probed during it and while another process holds the
//! write lock, and idle or trickling connections by the thousand under a low descriptor
//! limit. The daemon runs as the binary, with a real notify socket and real listeners.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use basiq_sim::{RunningSim, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::TestApp;
use crate::events::BASIQ_SECRET;
use crate::helpers::*;

/// A temporary directory holding the daemon's configuration, database, secret and log.
struct Scene {
    house: TestApp,
}

/// A daemon process started by [`Scene::spawn`]; killed when dropped.
struct Process {
    child: Child,
    notes: mpsc::Receiver<(Instant, String)>,
    stop_notes: Arc<AtomicBool>,
    /// The local API's and the webhook receiver's `host:port`.
    api: String,
    webhooks: String,
    log: PathBuf,
    db: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Scene {
    fn new() -> Self {
        Self {
            house: TestApp::offline(),
        }
    }

    fn db(&self) -> PathBuf {
        self.house.db()
    }

    /// Registers every user of `sim` and makes each overdue: the first pass is a catch-up.
    async fn register_overdue(&self, sim: &RunningSim) {
        let sweeper = sweeper_for(sim, &self.db(), "").await;
        sweeper.add_users(&sim_users(sim)).await.unwrap();
        sqlx::query("UPDATE users SET next_due_at = 0")
            .execute(sweeper.store().write_pool())
            .await
            .unwrap();
        sweeper.store().close().await;
    }

    /// Starts `basiq-health run` against `sim` with both listeners on loopback ports, a
    /// notify socket, `WATCHDOG_USEC` when `watchdog` is set, a descriptor limit when
    /// `nofile` is set, and `envs` (`BASIQ_HEALTH__...` overrides) over the file.
    fn spawn(
        &self,
        sim: &RunningSim,
        envs: &[(&str, &str)],
        watchdog: Option<Duration>,
        nofile: Option<u64>,
    ) -> Process {
        let dir = self.house.dir().path();
        let secret = dir.join("basiq-webhook-secret");
        std::fs::write(&secret, format!("{BASIQ_SECRET}\n")).unwrap();
        let (api, webhooks) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let config = dir.join("bh.toml");
        std::fs::write(
            &config,
            format!(
                "shutdown_grace = \"5s\"\n[basiq]\nbase_url = {:?}\nretry_base_delay = \"20ms\"\n\
                 [database]\npath = {:?}\n[log]\nformat = \"json\"\n[api]\nlisten = {api:?}\n\
                 [refresh]\nmode = \"off\"\n[webhooks]\nlisten = {webhooks:?}\n\
                 secret_file = {:?}\npoll_interval = \"0s\"\n",
                sim.base_url(),
                self.db().display().to_string(),
                secret.display().to_string()
            ),
        )
        .unwrap();
        let socket_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = dir.join("daemon.log");
        let mut cmd = crate::cli::bin();
        cmd.arg("--config")
            .arg(&config)
            .arg("run")
            .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
            .env("NOTIFY_SOCKET", &socket_path)
            .envs(envs.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null());
        if let Some(w) = watchdog {
            cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
        if let Some(n) = nofile {
            limit_descriptors(&mut cmd, n);
        }
        let child = cmd.spawn().unwrap();
        let (tx, notes) = mpsc::channel();
        let stop_notes = Arc::new(AtomicBool::new(false));
        let stop = stop_notes.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send((Instant::now(), msg)).is_err() {
                        break;
                    }
                }
            }
        });
        Process {
            child,
            notes,
            stop_notes,
            api,
            webhooks,
            log,
            db: self.db(),
        }
    }
}

/// The child starts with `RLIMIT_NOFILE` at `n` (soft and hard), as under systemd's default
/// of 1,024 without `LimitNOFILE=`.
fn limit_descriptors(cmd: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent's memory.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

impl Process {
    /// Waits (up to 30 s) for READY=1; returns when it came.
    fn ready(&self) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((at, msg)) = self.notes.recv_timeout(Duration::from_millis(200))
                && msg.lines().any(|l| l == "READY=1")
            {
                return at;
            }
        }
        panic!("no READY=1 within 30 s: {}", self.log_text());
    }

    /// Every WATCHDOG=1 received since the last call.
    fn beats(&self) -> Vec<Instant> {
        self.notes
            .try_iter()
            .filter(|(_, msg)| msg.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(at, _)| at)
            .collect()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn token(&self) -> String {
        let file = self.db.with_file_name("api-token");
        std::fs::read_to_string(file).unwrap().trim().to_owned()
    }

    /// The first pass the tick started: `Some((started_at, ended_at))` once it ended.
    async fn first_tick_pass(&self) -> Option<(i64, i64)> {
        let store = basiq_health::store::Store::open(&self.db).await.unwrap();
        let row: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT started_at, ended_at FROM sweeps WHERE trigger = 'tick' ORDER BY id LIMIT 1",
        )
        .fetch_optional(store.pool())
        .await
        .unwrap();
        store.close().await;
        row.and_then(|(s, e)| e.map(|e| (s, e)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop_notes.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A catch-up of 240 overdue users at 20 users a second (40 requests a second, two per
/// user, each answered 40 ms late): a pass of about 12 s.
async fn catch_up() -> (RunningSim, Scene) {
    let sim = start_sim(SimConfig {
        users: 240,
        ..sim_config()
    })
    .await;
    sim.sim.set_delay(None, Duration::from_millis(40));
    let scene = Scene::new();
    scene.register_overdue(&sim).await;
    (sim, scene)
}

/// A tick every second; requests paced to 40 a second.
const CATCH_UP_ENV: &[(&str, &str)] = &[
    ("BASIQ_HEALTH__SWEEP__TICK", "* * * * * *"),
    ("BASIQ_HEALTH__BASIQ__MAX_REQUESTS_PER_SECOND", "40"),
];

/// Waits (up to 90 s) for the first tick's pass to end; its start and end (Unix seconds).
async fn pass_end(daemon: &Process) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(pass) = daemon.first_tick_pass().await {
            return pass;
        }
        assert!(
            Instant::now() < deadline,
            "the catch-up did not end: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 21, item 1: progress is a user finished, not a pass ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_longer_than_three_watchdog_intervals_pets_the_watchdog_at_every_interval() {
    let watchdog = Duration::from_secs(2);
    let (sim, scene) = catch_up().await;
    let daemon = scene.spawn(&sim, CATCH_UP_ENV, Some(watchdog), None);
    let ready = daemon.ready();
    let (started, ended) = pass_end(&daemon).await;
    let over = Instant::now();
    assert!(
        ended - started >= 3 * 2,
        "the pass lasted {}s, not three watchdog intervals",
        ended - started
    );
    let mut times = vec![ready];
    times.extend(daemon.beats());
    times.push(over);
    let longest = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let withheld: Vec<String> = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("watchdog_withheld"))
        .map(str::to_owned)
        .collect();
    assert!(
        longest < watchdog,
        "{longest:?} without WATCHDOG=1 during a {}s pass ({} beats): {withheld:?}",
        ended - started,
        times.len() - 2
    );
    assert!(withheld.is_empty(), "{withheld:?}");
}

/// Issue 21, item 2: the tick time stands still during a pass; progress does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_200_through_a_catch_up_longer_than_three_tick_intervals() {
    let (sim, scene) = catch_up().await;
    let daemon = scene.spawn(&sim, CATCH_UP_ENV, None, None);
    daemon.ready();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("http://{}/healthz", daemon.api);
    let mut answers = Vec::new();
    let (started, ended) = loop {
        let response = http.get(&url).send().await.unwrap();
        let status = response.status().as_u16();
        answers.push((status, response.text().await.unwrap()));
        if let Some(pass) = daemon.first_tick_pass().await {
            break pass;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The daemon takes the cron's longest gap over its next 16 ticks as the interval:
    // for a tick a second, 2 s at most.
    assert!(
        ended - started > 3 * 2,
        "the pass lasted {}s, not over three tick intervals",
        ended - started
    );
    assert!(answers.len() >= 10, "{} probes", answers.len());
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "{} of {} probes refused during a {}s pass: {refused:?}",
        refused.len(),
        answers.len(),
        ended - started
    );
}

/// What still holds: a pass that finishes nothing is stuck, and says so both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_that_finishes_nothing_for_the_stall_interval_answers_503_and_withholds_the_watchdog()
 {
    let sim = start_sim(SimConfig {
        users: 5,
        ..sim_config()
    })
    .await;
    let scene = Scene::new();
    scene.register_overdue(&sim).await;
    // Basiq answers nothing for a minute: no user of the pass can finish.
    sim.sim.set_delay(None, Duration::from_secs(60));
    let watchdog = Duration::from_secs(2);
    let daemon = scene.spawn(&sim, CATCH_UP_ENV, Some(watchdog), None);
    daemon.ready();
    let http = reqwest::Client::new();
    let url = format!("http://{}/healthz", daemon.api);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let response = http.get(&url).send().await.unwrap();
        if response.status() == 503 {
            break response.text().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "never 503: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains("finished nothing"), "{body}");
    daemon.beats();
    tokio::time::sleep(watchdog + Duration::from_secs(1)).await;
    let beats = daemon.beats();
    assert!(beats.is_empty(), "{} WATCHDOG=1 while stuck", beats.len());
    assert!(daemon.log_text().contains("watchdog_withheld"));
}

/// Issue 21, item 13: `/healthz` takes no lock; it reports the writer's own outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_at_once_while_another_process_holds_the_write_lock_and_reports_failing_writes()
 {
    use sqlx::Connection;
    let sim = empty_sim().await;
    let scene = Scene::new();
    // A tick a year: no write of the daemon's own comes in between.
    let daemon = scene.spawn(
        &sim,
        &[
            ("BASIQ_HEALTH__SWEEP__TICK", "0 0 0 1 1 *"),
            ("BASIQ_HEALTH__DATABASE__BUSY_TIMEOUT", "1s"),
        ],
        None,
        None,
    );
    daemon.ready();
    let token = daemon.token();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let healthz = format!("http://{}/healthz", daemon.api);
    let probe = || async {
        let asked = Instant::now();
        let response = http.get(&healthz).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap(), asked.elapsed())
    };
    let put = |user: &'static str| {
        http.put(format!("http://{}/v1/users/{user}", daemon.api))
            .bearer_auth(&token)
            .send()
    };
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", daemon.db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let (status, body, took) = probe().await;
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert_eq!(status, 200, "no write has failed yet: {body}");
    // A write of the daemon's waits busy_timeout (1 s) and fails: the probe says so, at once.
    let refused = put("held").await.unwrap();
    assert_eq!(refused.status(), 503);
    let (status, body, took) = probe().await;
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database writes failing"), "{body}");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(put("free").await.unwrap().status(), 201);
    let (status, body, _) = probe().await;
    assert_eq!(status, 200, "the next write succeeded: {body}");
}

// ---- listeners under pressure (issue 21, item 3) ----------------------------------------

/// A signed `user.created` delivery for the receiver.
fn signed_webhook(http: &reqwest::Client, url: &str, n: usize) -> reqwest::RequestBuilder {
    let id = format!("msg_pressure_{n}");
    let body = serde_json::json!({
        "eventTypeId": "user.created",
        "eventId": format!("evt-pressure-{n}"),
        "links": {"eventEntity": format!("https://au-api.basiq.io/users/u-pressure-{n}")}
    })
    .to_string();
    let ts = chrono::Utc::now().timestamp();
    let signature = standardwebhooks::Webhook::new(BASIQ_SECRET)
        .unwrap()
        .sign(&id, ts, body.as_bytes())
        .unwrap();
    http.post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)
}

/// The test's own descriptors must hold its side of every connection.
fn allow_descriptors(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < n {
            limit.rlim_cur = n.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// `n` connections to `addr`: every other one sends the start of a request and then
/// nothing, the others nothing at all. The ones that start are returned apart, to trickle.
async fn pressure(addr: &str, n: usize) -> (Vec<TcpStream>, Vec<TcpStream>, usize) {
    let (mut idle, mut trickling, mut refused) = (Vec::new(), Vec::new(), 0);
    for i in 0..n {
        let connected =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
        let Ok(Ok(mut stream)) = connected else {
            refused += 1;
            continue;
        };
        if i % 2 == 0 {
            let _ = stream
                .write_all(b"POST /v1/basiq/webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            trickling.push(stream);
        } else {
            idle.push(stream);
        }
    }
    (idle, trickling, refused)
}

/// Issue 21, item 3: 1,100 connections that send nothing or trickle their headers, under
/// systemd's default descriptor limit, leave `/healthz`, a login and a signed webhook
/// answering in well under a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_hundred_idle_and_trickling_connections_under_1024_descriptors_leave_every_listener_answering()
 {
    allow_descriptors(4096);
    let sim = start_sim(SimConfig {
        users: 2,
        ..sim_config()
    })
    .await;
    let user = sim_users(&sim).remove(0);
    let scene = Scene::new();
    let daemon = scene.spawn(&sim, &[], None, Some(1024));
    daemon.ready();
    let token = daemon.token();
    // The internet-facing receiver takes most; the local API its share.
    let (idle_w, trickle_w, refused_w) = pressure(&daemon.webhooks, 800).await;
    let (idle_a, trickle_a, refused_a) = pressure(&daemon.api, 300).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let trickler = {
        let stop = stop.clone();
        let mut streams: Vec<TcpStream> = trickle_w.into_iter().chain(trickle_a).collect();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                for s in &mut streams {
                    let _ = tokio::time::timeout(Duration::from_millis(5), s.write_all(b"a")).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new connection for every request, as a probe, a partner's app and Basiq make them.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut took: Vec<(&str, Duration)> = Vec::new();
    for n in 0..3 {
        let asked = Instant::now();
        let healthz = http
            .get(format!("http://{}/healthz", daemon.api))
            .send()
            .await;
        took.push(("healthz", asked.elapsed()));
        assert_eq!(
            healthz.map(|r| r.status().as_u16()).ok(),
            Some(200),
            "healthz"
        );
        let asked = Instant::now();
        let login = http
            .post(format!("http://{}/v1/users/{user}/login", daemon.api))
            .bearer_auth(&token)
            .send()
            .await;
        took.push(("login", asked.elapsed()));
        assert_eq!(login.map(|r| r.status().as_u16()).ok(), Some(200), "login");
        let asked = Instant::now();
        let url = format!("http://{}/v1/basiq/webhook", daemon.webhooks);
        let webhook = signed_webhook(&http, &url, n).send().await;
        took.push(("webhook", asked.elapsed()));
        assert_eq!(
            webhook.map(|r| r.status().as_u16()).ok(),
            Some(200),
            "webhook"
        );
    }
    stop.cancel();
    trickler.await.unwrap();
    eprintln!(
        "under 1,100 idle or trickling connections ({} refused at connect), 1,024 descriptors: {took:?}",
        refused_w + refused_a
    );
    for (what, t) in &took {
        assert!(*t < Duration::from_secs(5), "{what} took {t:?}: {took:?}");
    }
    drop((idle_w, idle_a));
    let log = daemon.log_text();
    assert!(log.contains("connection_limits_lowered"), "{log}");
    for listener in ["api", "webhooks"] {
        let lines = log
            .lines()
            .filter(|l| {
                l.contains("\"event\":\"connection_limit\"")
                    && l.contains(&format!("\"listener\":\"{listener}\""))
            })
            .count();
        assert!(
            (1..=2).contains(&lines),
            "{listener}: {lines} limit lines (one a minute at most)"
        );
    }
    assert!(
        !log.contains("accept_failed"),
        "the limits keep accept within the descriptors"
    );
}

/// Reads `stream` until it closes or `limit` passes, writing one byte every 300 ms when
/// `trickle`; how long it stayed open (`None`: still open) and what it answered.
async fn until_closed(
    stream: &mut TcpStream,
    trickle: bool,
    limit: Duration,
) -> (Option<Duration>, String) {
    let start = Instant::now();
    let mut answered = Vec::new();
    let mut buf = [0u8; 1024];
    let mut beat = tokio::time::interval(Duration::from_millis(300));
    while start.elapsed() < limit {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    return (Some(start.elapsed()), String::from_utf8_lossy(&answered).into_owned());
                }
                Ok(n) => answered.extend_from_slice(&buf[..n]),
            },
            _ = beat.tick(), if trickle => {
                let _ = stream.write_all(b"a").await;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    (None, String::from_utf8_lossy(&answered).into_owned())
}

/// Issue 21, item 3: a connection that sends nothing, one that trickles its headers, one
/// that trickles its body and a kept-alive one between requests are each closed by their
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_header_trickling_and_body_trickling_connections_are_closed_by_their_timeouts() {
    let sim = empty_sim().await;
    let scene = Scene::new();
    let mut envs = Vec::new();
    for section in ["API", "WEBHOOKS"] {
        for (key, value) in [
            ("IDLE_TIMEOUT", "1s"),
            ("HEADER_TIMEOUT", "3s"),
            ("BODY_TIMEOUT", "3s"),
        ] {
            envs.push((format!("BASIQ_HEALTH__{section}__{key}"), value));
        }
    }
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let daemon = scene.spawn(&sim, &envs, None, None);
    daemon.ready();
    let limit = Duration::from_secs(8);
    let idle = async {
        let mut s = TcpStream::connect(&daemon.api).await.unwrap();
        until_closed(&mut s, false, limit).await
    };
    let headers = async {
        let mut s = TcpStream::connect(&daemon.webhooks).await.unwrap();
        s.write_all(b"POST /v1/basiq/webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        until_closed(&mut s, true, limit).await
    };
    let body = async {
        let mut s = TcpStream::connect(&daemon.webhooks).await.unwrap();
        s.write_all(b"POST /v1/basiq/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            .await
            .unwrap();
        until_closed(&mut s, true, limit).await
    };
    let kept_alive = async {
        let mut s = TcpStream::connect(&daemon.api).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        until_closed(&mut s, false, limit).await
    };
    let (idle, headers, body, kept_alive) = tokio::join!(idle, headers, body, kept_alive);
    eprintln!(
        "closed after: idle {idle:?}, headers {headers:?}, body {body:?}, kept alive {kept_alive:?}"
    );
    let open = |what: &str, (t, answer): &(Option<Duration>, String)| {
        t.unwrap_or_else(|| panic!("{what}: still open after {limit:?} ({answer:?})"))
    };
    // Nothing sent: the idle timeout (1 s), well before the header timeout.
    assert!(
        open("idle", &idle) < Duration::from_millis(2500),
        "{idle:?}"
    );
    // A byte every 300 ms is never idle; the head's whole time is 3 s.
    let t = open("headers", &headers);
    assert!(
        t >= Duration::from_millis(2500) && t < Duration::from_secs(6),
        "{headers:?}"
    );
    // The body's whole time is 3 s: 408, then closed.
    let t = open("body", &body);
    assert!(
        t >= Duration::from_millis(2500) && t < Duration::from_secs(6),
        "{body:?}"
    );
    assert!(body.1.starts_with("HTTP/1.1 408"), "{body:?}");
    // Answered, then idle for 1 s between requests.
    let t = open("kept alive", &kept_alive);
    assert!(t < Duration::from_millis(2500), "{kept_alive:?}");
    assert!(kept_alive.1.starts_with("HTTP/1.1 200"), "{kept_alive:?}");
}

/// The unit's `LimitNOFILE=` holds both listeners' default connection limits and what the
/// daemon keeps for the rest, so nothing is lowered under systemd.
#[test]
fn the_unit_s_descriptor_limit_holds_both_default_connection_limits_and_the_reserve() {
    let unit = include_str!("../../systemd/basiq-health.service");
    let nofile: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE=")
        .trim()
        .parse()
        .unwrap();
    let defaults = basiq_health::settings::Settings::from_toml("").unwrap();
    let wanted = [
        u64::from(defaults.api.connections.max_connections.get()),
        u64::from(defaults.webhooks.connections.max_connections.get()),
    ];
    assert_eq!(basiq_health::serve::fit(wanted, Some(nofile)), wanted);
    assert!(wanted.iter().sum::<u64>() + basiq_health::serve::RESERVED_DESCRIPTORS <= nofile);
}
