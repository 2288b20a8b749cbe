//! Shared test plumbing: a simulator on port 0, a client for it, captured logs.

use std::io::Write;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basiq_health::basiq::{Client, ClientOptions};
use basiq_health::settings::{LogFormat, LogSettings};
use basiq_health::sim::{RunningSim, SimConfig, Simulator};
use secrecy::SecretString;

pub const CANARY_KEY: &str = "Y2FuYXJ5LWtleS1kby1ub3QtbG9nLTdmM2E5";

pub fn sim_config() -> SimConfig {
    SimConfig {
        users: 20,
        seed: 11,
        api_key: CANARY_KEY.into(),
        step_duration: Duration::from_millis(150),
        ..SimConfig::default()
    }
}

pub async fn start_sim(config: SimConfig) -> RunningSim {
    Simulator::new(config)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds a loopback port")
}

pub fn client_options(sim: &RunningSim) -> ClientOptions {
    ClientOptions {
        base_url: sim.base_url().parse().unwrap(),
        api_key: SecretString::from(sim.sim.api_key()),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_requests_per_second: NonZeroU32::new(1000).unwrap(),
        max_attempts: 3,
        retry_base_delay: Duration::from_millis(20),
        max_retry_delay: Duration::from_secs(5),
    }
}

pub fn client(sim: &RunningSim) -> Client {
    Client::new(client_options(sim)).unwrap()
}

/// Everything the subscriber writes, for assertions on log lines.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// Every line, parsed as JSON (a line that is not JSON fails the test).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
            })
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures JSON logs at `level` for the current thread (use with a current-thread runtime).
pub fn capture_logs(level: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let settings = LogSettings {
        format: LogFormat::Json,
        level: level.into(),
    };
    let guard = tracing::subscriber::set_default(basiq_health::telemetry::subscriber(
        &settings,
        captured.clone(),
    ));
    (captured, guard)
}
