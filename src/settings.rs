//! Settings: the TOML file, then `BASIQ_HEALTH__<SECTION>__<KEY>` environment overrides,
//! validated once into typed values (`Url`, `Duration`, `NonZeroU32`, `SecretString`).
//!
//! Named `settings`, not `config`, so it does not shadow the `config` crate. Knows nothing
//! about what the values are used for. Every error names the key and what to write instead.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// Where the daemon's configuration lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/basiq-health/basiq-health.toml";
/// The systemd credential name (`LoadCredential=basiq-api-key:...`).
pub const CREDENTIAL_NAME: &str = "basiq-api-key";
/// The environment variable holding the key when no file is used.
pub const API_KEY_ENV: &str = "BASIQ_HEALTH_API_KEY";

/// A configuration problem: exit code 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid configuration in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: String, problem: String },
    #[error(
        "no Basiq API key: set `basiq.api_key_file`, or provide the systemd credential \
         $CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME} (LoadCredential={CREDENTIAL_NAME}:/path), \
         or set {API_KEY_ENV}"
    )]
    MissingApiKey,
}

fn invalid(key: &str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

// ---- raw, as written -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSettings {
    shutdown_grace: Option<String>,
    basiq: RawBasiq,
    database: RawDatabase,
    log: RawLog,
    sweep: RawSweep,
    outage: RawOutage,
    api: RawApi,
    refresh: RawRefresh,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRefresh {
    mode: String,
    login_stale_after: String,
    stale_after: String,
    min_interval: String,
    open_banking_daily_cap: u32,
    web_daily_cap: u32,
    reserved_for_login: u32,
    global_per_minute: u32,
    per_institution_per_minute: u32,
    max_wait: String,
    unattended_window: String,
    timezone: String,
    recovery_window: String,
    transient_retry_base: String,
    transient_max_retries: u32,
    follow_poll_initial: String,
    follow_poll_max: String,
    follow_timeout: String,
}

impl Default for RawRefresh {
    fn default() -> Self {
        Self {
            mode: "smart-cache".into(),
            login_stale_after: "12h".into(),
            stale_after: "20h".into(),
            min_interval: "1h".into(),
            open_banking_daily_cap: 20,
            web_daily_cap: 4,
            reserved_for_login: 5,
            global_per_minute: 30,
            per_institution_per_minute: 10,
            max_wait: "5m".into(),
            unattended_window: crate::policy::window::DEFAULT_WINDOW.into(),
            timezone: crate::policy::window::DEFAULT_TIMEZONE.into(),
            recovery_window: "30m".into(),
            transient_retry_base: "10m".into(),
            transient_max_retries: 2,
            follow_poll_initial: "2s".into(),
            follow_poll_max: "30s".into(),
            follow_timeout: "10m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSweep {
    period: String,
    tick: String,
    concurrency: u32,
    connectors_ttl: String,
    stale_after: String,
    login_min_interval: String,
    retry_after: String,
    batch_size: u32,
}

impl Default for RawSweep {
    fn default() -> Self {
        Self {
            period: "24h".into(),
            tick: "0 * * * * *".into(),
            concurrency: 8,
            connectors_ttl: "5m".into(),
            stale_after: "72h".into(),
            login_min_interval: "10m".into(),
            retry_after: "10m".into(),
            batch_size: 200,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOutage {
    min_users: u32,
    window: String,
}

impl Default for RawOutage {
    fn default() -> Self {
        Self {
            min_users: 3,
            window: "1h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawApi {
    listen: String,
    token_file: Option<PathBuf>,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8088".into(),
            token_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawBasiq {
    base_url: String,
    api_key_file: Option<PathBuf>,
    timeout: String,
    connect_timeout: String,
    max_requests_per_second: u32,
    max_attempts: u32,
    retry_base_delay: String,
    max_retry_delay: String,
}

impl Default for RawBasiq {
    fn default() -> Self {
        Self {
            base_url: "https://au-api.basiq.io".into(),
            api_key_file: None,
            timeout: "30s".into(),
            connect_timeout: "10s".into(),
            max_requests_per_second: 10,
            max_attempts: 3,
            retry_base_delay: "500ms".into(),
            max_retry_delay: "60s".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawDatabase {
    path: Option<PathBuf>,
    retain_days: Option<u32>,
    busy_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

// ---- typed ---------------------------------------------------------------------------------

/// The validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a stop may take: users in flight finish, then the database closes.
    pub shutdown_grace: Duration,
    pub basiq: BasiqSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub sweep: SweepSettings,
    pub outage: OutageSettings,
    pub api: ApiSettings,
    pub refresh: RefreshSettings,
}

/// `[refresh]`: when the daemon may refresh, how fast, and how it follows the job.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub limits: crate::policy::RefreshLimits,
    pub global_per_minute: NonZeroU32,
    pub per_institution_per_minute: NonZeroU32,
    pub max_wait: Duration,
    pub unattended_window: crate::policy::DailyWindow,
    pub recovery_window: Duration,
    pub transient_retry_base: Duration,
    pub transient_max_retries: u32,
    pub follow_poll_initial: Duration,
    pub follow_poll_max: Duration,
    pub follow_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// Each user is swept once per period, at its stable offset.
    pub period: Duration,
    /// 6-field cron (seconds first) for the one periodic tick.
    pub tick: String,
    pub concurrency: NonZeroU32,
    pub connectors_ttl: Duration,
    pub stale_after: Duration,
    pub login_min_interval: Duration,
    pub retry_after: Duration,
    pub batch_size: NonZeroU32,
}

#[derive(Debug, Clone)]
pub struct OutageSettings {
    pub min_users: NonZeroU32,
    pub window: Duration,
}

#[derive(Clone)]
pub struct ApiSettings {
    /// `None`: the local API is disabled (`listen = ""`).
    pub listen: Option<std::net::SocketAddr>,
    pub token_file: Option<PathBuf>,
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("listen", &self.listen)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

#[derive(Clone)]
pub struct BasiqSettings {
    pub base_url: Url,
    pub api_key_file: Option<PathBuf>,
    /// The key and where it came from; `None` when no source holds one.
    pub api_key: Option<ApiKey>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_requests_per_second: NonZeroU32,
    pub max_attempts: u32,
    pub retry_base_delay: Duration,
    pub max_retry_delay: Duration,
}

impl std::fmt::Debug for BasiqSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasiqSettings")
            .field("base_url", &self.base_url.as_str())
            .field("api_key_file", &self.api_key_file)
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_requests_per_second", &self.max_requests_per_second)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// The API key with where it was found. `Debug` never shows the key.
#[derive(Clone)]
pub struct ApiKey {
    pub secret: SecretString,
    pub source: String,
    /// Set when the key file can be read by group or others.
    pub permission_warning: Option<String>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey([redacted] from {})", self.source)
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub path: PathBuf,
    /// Job and health-change history older than this is pruned daily.
    pub retain_days: u32,
    /// How long a write waits for a lock held by another process before it fails.
    pub busy_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: "info".into(),
        }
    }
}

fn default_log_format() -> LogFormat {
    if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    }
}

impl Settings {
    /// Reads `path`, applies the environment, validates.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        if !path.is_file() {
            return Err(SettingsError::File {
                path: path.to_owned(),
                message: "no such file (write one from config/basiq-health.toml, or pass --config)"
                    .into(),
            });
        }
        let source = config::File::from(path).format(config::FileFormat::Toml);
        Self::build(path, source)
    }

    /// Validates a TOML document (tests, `demo`).
    pub fn from_toml(text: &str) -> Result<Self, SettingsError> {
        Self::build(
            Path::new("<inline>"),
            config::File::from_str(text, config::FileFormat::Toml),
        )
    }

    fn build<S>(path: &Path, source: S) -> Result<Self, SettingsError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        // No `try_parsing`: it would turn a key like "0123" into a number. Strings from the
        // environment still deserialize into numeric fields.
        let raw: RawSettings = config::Config::builder()
            .add_source(source)
            .add_source(
                config::Environment::with_prefix("BASIQ_HEALTH")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| SettingsError::Parse {
                path: path.to_owned(),
                message: explain_config_error(&e.to_string()),
            })?;
        Self::validate(raw)
    }

    fn validate(raw: RawSettings) -> Result<Self, SettingsError> {
        let b = raw.basiq;
        let base_url = parse_base_url(&b.base_url)?;
        let api_key = resolve_api_key(
            b.api_key_file.as_deref(),
            std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            std::env::var(API_KEY_ENV).ok(),
        )?;
        let basiq = BasiqSettings {
            base_url,
            api_key_file: b.api_key_file,
            api_key,
            timeout: duration("basiq.timeout", &b.timeout)?,
            connect_timeout: duration("basiq.connect_timeout", &b.connect_timeout)?,
            max_requests_per_second: NonZeroU32::new(b.max_requests_per_second).ok_or_else(
                || {
                    invalid(
                        "basiq.max_requests_per_second",
                        "must be at least 1 (default 10)",
                    )
                },
            )?,
            max_attempts: match b.max_attempts {
                0 => {
                    return Err(invalid(
                        "basiq.max_attempts",
                        "must be at least 1 (default 3)",
                    ));
                }
                n => n,
            },
            retry_base_delay: duration("basiq.retry_base_delay", &b.retry_base_delay)?,
            max_retry_delay: duration("basiq.max_retry_delay", &b.max_retry_delay)?,
        };
        if basiq.timeout.is_zero() {
            return Err(invalid(
                "basiq.timeout",
                "must be more than 0s (default \"30s\")",
            ));
        }
        let database = DatabaseSettings {
            path: raw.database.path.unwrap_or_else(default_database_path),
            retain_days: match raw.database.retain_days.unwrap_or(400) {
                0 => {
                    return Err(invalid(
                        "database.retain_days",
                        "must be at least 1 (default 400)",
                    ));
                }
                n => n,
            },
            busy_timeout: duration(
                "database.busy_timeout",
                raw.database.busy_timeout.as_deref().unwrap_or("10s"),
            )?,
        };
        let shutdown_grace = positive(
            "shutdown_grace",
            raw.shutdown_grace.as_deref().unwrap_or("20s"),
        )?;
        let log = LogSettings {
            format: match raw.log.format.as_deref() {
                None => default_log_format(),
                Some("json") => LogFormat::Json,
                Some("pretty") => LogFormat::Pretty,
                Some(other) => {
                    return Err(invalid(
                        "log.format",
                        format!("must be \"json\" or \"pretty\", not {other:?}"),
                    ));
                }
            },
            level: raw.log.level.unwrap_or_else(|| "info".into()),
        };
        if tracing_subscriber::EnvFilter::try_new(&log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "is not a level or filter (try \"info\" or \"basiq_health=debug\"), got {:?}",
                    log.level
                ),
            ));
        }
        let sw = raw.sweep;
        let sweep = SweepSettings {
            period: positive("sweep.period", &sw.period)?,
            tick: validate_cron("sweep.tick", &sw.tick)?,
            concurrency: NonZeroU32::new(sw.concurrency)
                .ok_or_else(|| invalid("sweep.concurrency", "must be at least 1 (default 8)"))?,
            connectors_ttl: duration("sweep.connectors_ttl", &sw.connectors_ttl)?,
            stale_after: positive("sweep.stale_after", &sw.stale_after)?,
            login_min_interval: duration("sweep.login_min_interval", &sw.login_min_interval)?,
            retry_after: positive("sweep.retry_after", &sw.retry_after)?,
            batch_size: NonZeroU32::new(sw.batch_size)
                .ok_or_else(|| invalid("sweep.batch_size", "must be at least 1 (default 200)"))?,
        };
        let outage = OutageSettings {
            min_users: NonZeroU32::new(raw.outage.min_users)
                .ok_or_else(|| invalid("outage.min_users", "must be at least 1 (default 3)"))?,
            window: positive("outage.window", &raw.outage.window)?,
        };
        let api = parse_api(raw.api)?;
        let refresh = parse_refresh(raw.refresh)?;
        Ok(Self {
            shutdown_grace,
            basiq,
            database,
            log,
            sweep,
            outage,
            api,
            refresh,
        })
    }

    /// The key, or the error that names every place it may come from.
    pub fn api_key(&self) -> Result<&ApiKey, SettingsError> {
        self.basiq
            .api_key
            .as_ref()
            .ok_or(SettingsError::MissingApiKey)
    }

    /// The effective settings as TOML, secrets redacted (`config check`).
    pub fn render(&self) -> String {
        let b = &self.basiq;
        let key = match &b.api_key {
            Some(k) => format!("\"[redacted]\"  # from {}", k.source),
            None => "# none found".to_owned(),
        };
        let mut out = String::new();
        out.push_str(&format!(
            "shutdown_grace = {:?}\n\n",
            fmt_duration(self.shutdown_grace)
        ));
        out.push_str("[basiq]\n");
        out.push_str(&format!("base_url = {:?}\n", b.base_url.as_str()));
        if let Some(file) = &b.api_key_file {
            out.push_str(&format!(
                "api_key_file = {:?}\n",
                file.display().to_string()
            ));
        }
        out.push_str(&format!("api_key = {key}\n"));
        out.push_str(&format!("timeout = {:?}\n", fmt_duration(b.timeout)));
        out.push_str(&format!(
            "connect_timeout = {:?}\n",
            fmt_duration(b.connect_timeout)
        ));
        out.push_str(&format!(
            "max_requests_per_second = {}\n",
            b.max_requests_per_second
        ));
        out.push_str(&format!("max_attempts = {}\n", b.max_attempts));
        out.push_str(&format!(
            "retry_base_delay = {:?}\n",
            fmt_duration(b.retry_base_delay)
        ));
        out.push_str(&format!(
            "max_retry_delay = {:?}\n",
            fmt_duration(b.max_retry_delay)
        ));
        out.push_str("\n[database]\n");
        out.push_str(&format!(
            "path = {:?}\n",
            self.database.path.display().to_string()
        ));
        out.push_str("\n[log]\n");
        let format = match self.log.format {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        };
        out.push_str(&format!("format = {format:?}\n"));
        out.push_str(&format!("level = {:?}\n", self.log.level));
        let sw = &self.sweep;
        out.push_str("\n[sweep]\n");
        out.push_str(&format!("period = {:?}\n", fmt_duration(sw.period)));
        out.push_str(&format!("tick = {:?}\n", sw.tick));
        out.push_str(&format!("concurrency = {}\n", sw.concurrency));
        out.push_str(&format!(
            "connectors_ttl = {:?}\n",
            fmt_duration(sw.connectors_ttl)
        ));
        out.push_str(&format!(
            "stale_after = {:?}\n",
            fmt_duration(sw.stale_after)
        ));
        out.push_str(&format!(
            "login_min_interval = {:?}\n",
            fmt_duration(sw.login_min_interval)
        ));
        out.push_str(&format!(
            "retry_after = {:?}\n",
            fmt_duration(sw.retry_after)
        ));
        out.push_str(&format!("batch_size = {}\n", sw.batch_size));
        out.push_str("\n[outage]\n");
        out.push_str(&format!("min_users = {}\n", self.outage.min_users));
        out.push_str(&format!(
            "window = {:?}\n",
            fmt_duration(self.outage.window)
        ));
        let r = &self.refresh;
        out.push_str("\n[refresh]\n");
        out.push_str(&format!("mode = {:?}\n", r.limits.mode.as_str()));
        out.push_str(&format!(
            "login_stale_after = {:?}\n",
            fmt_duration(r.limits.login_stale_after)
        ));
        out.push_str(&format!(
            "stale_after = {:?}\n",
            fmt_duration(r.limits.stale_after)
        ));
        out.push_str(&format!(
            "min_interval = {:?}\n",
            fmt_duration(r.limits.min_interval)
        ));
        out.push_str(&format!(
            "open_banking_daily_cap = {}\n",
            r.limits.open_banking_daily_cap
        ));
        out.push_str(&format!("web_daily_cap = {}\n", r.limits.web_daily_cap));
        out.push_str(&format!(
            "reserved_for_login = {}\n",
            r.limits.reserved_for_login
        ));
        out.push_str(&format!("global_per_minute = {}\n", r.global_per_minute));
        out.push_str(&format!(
            "per_institution_per_minute = {}\n",
            r.per_institution_per_minute
        ));
        out.push_str(&format!("max_wait = {:?}\n", fmt_duration(r.max_wait)));
        out.push_str(&format!(
            "unattended_window = \"{}-{}\"\n",
            r.unattended_window.start.format("%H:%M"),
            r.unattended_window.end.format("%H:%M")
        ));
        out.push_str(&format!("timezone = {:?}\n", r.unattended_window.tz.name()));
        out.push_str(&format!(
            "recovery_window = {:?}\n",
            fmt_duration(r.recovery_window)
        ));
        out.push_str(&format!(
            "transient_retry_base = {:?}\n",
            fmt_duration(r.transient_retry_base)
        ));
        out.push_str(&format!(
            "transient_max_retries = {}\n",
            r.transient_max_retries
        ));
        out.push_str(&format!(
            "follow_poll_initial = {:?}\n",
            fmt_duration(r.follow_poll_initial)
        ));
        out.push_str(&format!(
            "follow_poll_max = {:?}\n",
            fmt_duration(r.follow_poll_max)
        ));
        out.push_str(&format!(
            "follow_timeout = {:?}\n",
            fmt_duration(r.follow_timeout)
        ));
        out.push_str("\n[api]\n");
        let listen = self.api.listen.map(|a| a.to_string()).unwrap_or_default();
        out.push_str(&format!("listen = {listen:?}\n"));
        if let Some(file) = &self.api.token_file {
            out.push_str(&format!(
                "token_file = {:?}  # token [redacted]\n",
                file.display().to_string()
            ));
        }
        out
    }
}

pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `$STATE_DIRECTORY/basiq-health.db` under systemd, else `/var/lib/basiq-health/basiq-health.db`.
fn default_database_path() -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY")
        .map(|v| {
            // systemd may pass several directories separated by ':'; the first is ours.
            let text = v.to_string_lossy().into_owned();
            PathBuf::from(text.split(':').next().unwrap_or_default())
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("/var/lib/basiq-health"));
    dir.join("basiq-health.db")
}

/// A duration that must be more than zero.
fn positive(key: &str, text: &str) -> Result<Duration, SettingsError> {
    let d = duration(key, text)?;
    if d.is_zero() {
        return Err(invalid(key, format!("must be more than 0s, got {text:?}")));
    }
    Ok(d)
}

/// Six fields, seconds first, as tokio-cron-scheduler wants.
fn validate_cron(key: &str, text: &str) -> Result<String, SettingsError> {
    let fields = text.split_whitespace().count();
    if fields != 6 {
        return Err(invalid(
            key,
            format!(
                "must be a 6-field cron expression, seconds first (e.g. \"0 * * * * *\" for every minute), got {text:?} with {fields} fields"
            ),
        ));
    }
    tokio_cron_scheduler::Job::new_async(text, |_, _| Box::pin(async {})).map_err(|e| {
        invalid(
            key,
            format!("is not a valid cron expression ({e}): {text:?}"),
        )
    })?;
    Ok(text.trim().to_owned())
}

fn parse_refresh(r: RawRefresh) -> Result<RefreshSettings, SettingsError> {
    let mode: crate::policy::RefreshMode = r
        .mode
        .parse()
        .map_err(|e: crate::policy::UnknownRefreshMode| invalid("refresh.mode", e.to_string()))?;
    if r.open_banking_daily_cap > 20 {
        return Err(invalid(
            "refresh.open_banking_daily_cap",
            format!(
                "must be at most 20 (Open Banking allows 20 refreshes a day), got {}",
                r.open_banking_daily_cap
            ),
        ));
    }
    if r.reserved_for_login > r.open_banking_daily_cap {
        return Err(invalid(
            "refresh.reserved_for_login",
            format!(
                "must not exceed refresh.open_banking_daily_cap ({}), got {}",
                r.open_banking_daily_cap, r.reserved_for_login
            ),
        ));
    }
    let per_minute = |key: &str, n: u32, default: u32| {
        NonZeroU32::new(n)
            .ok_or_else(|| invalid(key, format!("must be at least 1 (default {default})")))
    };
    let unattended_window = crate::policy::DailyWindow::parse(&r.unattended_window, &r.timezone)
        .map_err(|e| {
            let key = if matches!(e, crate::policy::WindowError::TimeZone(_)) {
                "refresh.timezone"
            } else {
                "refresh.unattended_window"
            };
            invalid(key, e.to_string())
        })?;
    Ok(RefreshSettings {
        limits: crate::policy::RefreshLimits {
            mode,
            min_interval: duration("refresh.min_interval", &r.min_interval)?,
            login_stale_after: duration("refresh.login_stale_after", &r.login_stale_after)?,
            stale_after: duration("refresh.stale_after", &r.stale_after)?,
            open_banking_daily_cap: r.open_banking_daily_cap,
            web_daily_cap: r.web_daily_cap,
            reserved_for_login: r.reserved_for_login,
        },
        global_per_minute: per_minute("refresh.global_per_minute", r.global_per_minute, 30)?,
        per_institution_per_minute: per_minute(
            "refresh.per_institution_per_minute",
            r.per_institution_per_minute,
            10,
        )?,
        max_wait: duration("refresh.max_wait", &r.max_wait)?,
        unattended_window,
        recovery_window: duration("refresh.recovery_window", &r.recovery_window)?,
        transient_retry_base: positive("refresh.transient_retry_base", &r.transient_retry_base)?,
        transient_max_retries: r.transient_max_retries,
        follow_poll_initial: positive("refresh.follow_poll_initial", &r.follow_poll_initial)?,
        follow_poll_max: positive("refresh.follow_poll_max", &r.follow_poll_max)?,
        follow_timeout: positive("refresh.follow_timeout", &r.follow_timeout)?,
    })
}

fn parse_api(raw: RawApi) -> Result<ApiSettings, SettingsError> {
    let listen = raw.listen.trim();
    if listen.is_empty() {
        return Ok(ApiSettings {
            listen: None,
            token_file: raw.token_file,
            token: None,
        });
    }
    let addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        invalid(
            "api.listen",
            format!(
                "must be an address such as \"127.0.0.1:8088\", or \"\" to disable, got {listen:?}"
            ),
        )
    })?;
    let token = match &raw.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "api.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let text = text.trim();
            if text.is_empty() {
                return Err(invalid(
                    "api.token_file",
                    format!("{} is empty", path.display()),
                ));
            }
            Some(SecretString::from(text.to_owned()))
        }
        None => None,
    };
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(invalid(
            "api.listen",
            format!(
                "{addr} is not a loopback address: set api.token_file (a bearer token) to expose the API"
            ),
        ));
    }
    Ok(ApiSettings {
        listen: Some(addr),
        token_file: raw.token_file,
        token,
    })
}

pub(crate) fn duration(key: &str, text: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("expects a duration such as \"30s\", \"5m\" or \"24h\", got {text:?} ({e})"),
        )
    })
}

/// `https://` always; plain `http://` only to a loopback host (the simulator).
fn parse_base_url(text: &str) -> Result<Url, SettingsError> {
    let key = "basiq.base_url";
    let url = Url::parse(text.trim())
        .map_err(|e| invalid(key, format!("is not a URL ({e}): {text:?}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(invalid(
            key,
            format!(
                "must use https:// (plain http is only allowed to a loopback host such as 127.0.0.1): {text:?}"
            ),
        )),
        other => Err(invalid(
            key,
            format!("must be an https:// URL, not {other}://"),
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// In order: `basiq.api_key_file`, `$CREDENTIALS_DIRECTORY/basiq-api-key`, `$BASIQ_HEALTH_API_KEY`.
fn resolve_api_key(
    file: Option<&Path>,
    credentials_dir: Option<PathBuf>,
    env: Option<String>,
) -> Result<Option<ApiKey>, SettingsError> {
    if let Some(path) = file {
        let key = read_key_file(path).map_err(|problem| invalid("basiq.api_key_file", problem))?;
        return Ok(Some(key));
    }
    if let Some(dir) = credentials_dir {
        let path = dir.join(CREDENTIAL_NAME);
        if path.exists() {
            let key = read_key_file(&path)
                .map_err(|problem| invalid("$CREDENTIALS_DIRECTORY", problem))?;
            return Ok(Some(key));
        }
    }
    if let Some(value) = env {
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(invalid(API_KEY_ENV, "is set but empty"));
        }
        return Ok(Some(ApiKey {
            secret: SecretString::from(value),
            source: format!("env {API_KEY_ENV}"),
            permission_warning: None,
        }));
    }
    Ok(None)
}

fn read_key_file(path: &Path) -> Result<ApiKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("the key file {} is empty", path.display()));
    }
    Ok(ApiKey {
        secret: SecretString::from(key.to_owned()),
        source: format!("file {}", path.display()),
        permission_warning: loose_permissions(path),
    })
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "the API key file {} can be read by group or others (mode {:o}): run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_: &Path) -> Option<String> {
    None
}

/// The `config` crate says "unknown field `x`, expected one of ..."; say which key to remove.
fn explain_config_error(message: &str) -> String {
    if message.contains("unknown field") {
        format!(
            "{message} (remove the key or fix its spelling; config/basiq-health.toml lists every key)"
        )
    } else {
        message.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_refused_unless_loopback() {
        assert!(parse_base_url("http://127.0.0.1:8787").is_ok());
        assert!(parse_base_url("http://127.3.4.5").is_ok());
        assert!(parse_base_url("http://localhost:1").is_ok());
        assert!(parse_base_url("http://[::1]:9").is_ok());
        assert!(parse_base_url("https://au-api.basiq.io").is_ok());
        let err = parse_base_url("http://au-api.basiq.io")
            .unwrap_err()
            .to_string();
        assert!(err.contains("basiq.base_url"), "{err}");
        assert!(parse_base_url("ftp://x").is_err());
    }

    #[test]
    fn api_key_sources_are_tried_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k");
        std::fs::write(&file, "from-file\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join(CREDENTIAL_NAME), "from-creds").unwrap();

        let k = resolve_api_key(Some(&file), Some(creds.clone()), Some("env".into()))
            .unwrap()
            .unwrap();
        assert!(k.source.contains("file"));
        let k = resolve_api_key(None, Some(creds), Some("env".into()))
            .unwrap()
            .unwrap();
        assert!(k.source.contains(CREDENTIAL_NAME) || k.source.contains("creds"));
        let k = resolve_api_key(None, None, Some("0123456".into()))
            .unwrap()
            .unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&k.secret), "0123456");
        assert!(resolve_api_key(None, None, None).unwrap().is_none());
        let missing = resolve_api_key(Some(&dir.path().join("nope")), None, None).unwrap_err();
        assert!(missing.to_string().contains("basiq.api_key_file"));
    }

    #[test]
    fn debug_output_redacts_the_key() {
        let key = ApiKey {
            secret: SecretString::from("canary-secret-123".to_owned()),
            source: "env".into(),
            permission_warning: None,
        };
        assert!(!format!("{key:?}").contains("canary-secret-123"));
    }

    #[test]
    fn durations_name_the_key() {
        let err = duration("sweep.period", "soon").unwrap_err().to_string();
        assert!(
            err.contains("sweep.period") && err.contains("soon"),
            "{err}"
        );
        assert_eq!(duration("k", "90s").unwrap(), Duration::from_secs(90));
    }
}
