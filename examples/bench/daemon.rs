//! The product as child processes: this binary again as `--role cli`, which is
//! `basiq-health` itself, in a directory of its own (database, config, API token, log).

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::SimProcess;
use super::procs::wait_with_peak;

/// A daemon's directory: its database, config, API key, notify socket and log.
pub struct DaemonDir {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub config: PathBuf,
    pub api: SocketAddr,
    pub log: PathBuf,
}

impl DaemonDir {
    /// A fresh directory and a config naming the simulator, the database in it, an API on a
    /// free loopback port, the sweep's concurrency 8 and the tick `tick`.
    pub fn new(sim: &SimProcess, name: &str, tick: &str, keep: bool) -> anyhow::Result<Self> {
        let mut dir = tempfile::tempdir()?;
        dir.disable_cleanup(keep);
        let db = dir.path().join(format!("{name}.db"));
        let config = dir.path().join("basiq-health.toml");
        let key_file = dir.path().join("api-key");
        std::fs::write(&key_file, &sim.api_key)?;
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        let api = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        std::fs::write(
            &config,
            format!(
                "[basiq]\nbase_url = {:?}\napi_key_file = {:?}\nmax_requests_per_second = 100000\n\
                 [database]\npath = {:?}\n[sweep]\nconcurrency = 8\ntick = {tick:?}\n\
                 [api]\nlisten = \"{api}\"\n",
                sim.base_url,
                key_file.display().to_string(),
                db.display().to_string()
            ),
        )?;
        let log = dir.path().join("daemon.log");
        Ok(Self {
            dir,
            db,
            config,
            api,
            log,
        })
    }

    /// The local API's token, which the daemon writes beside the database at its start.
    pub fn api_token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("api-token"))?
            .trim()
            .to_owned())
    }

    /// Runs `basiq-health ARGS` with this config and waits: wall time, peak RSS (MiB),
    /// stdout.
    pub fn product(&self, args: &[&str]) -> anyhow::Result<(f64, f64, String)> {
        let started = Instant::now();
        let child = Command::new(std::env::current_exe()?)
            .args(["--role", "cli", "--config"])
            .arg(&self.config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (status, rss, out, err) = wait_with_peak(child)?;
        let took = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("basiq-health {args:?} failed ({status}): {err}");
        }
        Ok((took, rss, out))
    }

    /// Starts `basiq-health run` with a notify socket; its output (the log: JSON lines on
    /// stdout, errors on stderr) goes to [`DaemonDir::log`].
    pub fn spawn(&self) -> anyhow::Result<Daemon> {
        let notify_path = self.dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)?;
        let log = std::fs::File::create(&self.log)?;
        let spawned = Instant::now();
        let child = Command::new(std::env::current_exe()?)
            .args(["--role", "cli", "--config"])
            .arg(&self.config)
            .arg("run")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Daemon {
            child,
            spawned,
            notify,
        })
    }
}

/// A running `basiq-health run`.
pub struct Daemon {
    pub child: Child,
    /// When it was spawned: every time of a first start is measured from here.
    pub spawned: Instant,
    notify: UnixDatagram,
}

impl Daemon {
    /// Waits for `READY=1` on the notify socket until `deadline`: the time from the spawn,
    /// or `None` at the deadline. Fails when the daemon exits first.
    pub async fn ready(&mut self, deadline: Instant) -> anyhow::Result<Option<Duration>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the daemon exited before READY=1 ({status})");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Short reads, so an exit is seen and the runtime is not held for long.
            self.notify
                .set_read_timeout(Some(left.min(Duration::from_millis(20))))?;
            match self.notify.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => {
                    return Ok(Some(self.spawned.elapsed()));
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The sum of the samples of `/metrics` text whose series starts with `series` (a name and,
/// optionally, the first labels): `basiq_health_users_swept_total`, or
/// `basiq_health_basiq_requests_total{endpoint="connectors",`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| l.starts_with(series)) {
        let rest = &line[series.len()..];
        // `name` must not be the prefix of a longer name.
        let labelled = series.ends_with(',') || series.ends_with('{');
        if !(labelled || rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Scrapes `/metrics` of the daemon's API (no token on loopback).
pub async fn scrape(http: &reqwest::Client, api: SocketAddr) -> anyhow::Result<String> {
    Ok(http
        .get(format!("http://{api}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The last lines of a log file, for an error message.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Lines in a log file.
pub fn line_count(log: &Path) -> anyhow::Result<usize> {
    use std::io::BufRead;
    let file =
        std::fs::File::open(log).with_context(|| format!("while reading {}", log.display()))?;
    Ok(std::io::BufReader::new(file).lines().count())
}
