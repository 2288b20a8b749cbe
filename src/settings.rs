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
use serde::{Deserialize, Serialize};
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

// ---- ranges ----------------------------------------------------------------------------

/// The values a numeric key accepts, inclusive. Checked at load (exit 78 naming the key) and
/// documented beside each key in config/basiq-health.toml as `Range: MIN..=MAX.`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// A whole number.
    Count(i64, i64),
    /// A duration, bounds written the way the file writes durations.
    Span(&'static str, &'static str),
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(min, max) => write!(f, "{min}..={max}"),
            Self::Span(min, max) => write!(f, "{min}..={max}"),
        }
    }
}

/// Every numeric key and its range. A numeric key missing here is refused at load, and a
/// test checks that every numeric key of the defaults is listed and documented.
pub const RANGES: &[(&str, Range)] = &[
    ("shutdown_grace", Range::Span("1s", "10m")),
    ("basiq.timeout", Range::Span("100ms", "10m")),
    ("basiq.connect_timeout", Range::Span("100ms", "5m")),
    ("basiq.max_requests_per_second", Range::Count(1, 100_000)),
    ("basiq.max_attempts", Range::Count(1, 10)),
    ("basiq.retry_base_delay", Range::Span("0s", "1m")),
    ("basiq.max_retry_delay", Range::Span("0s", "1h")),
    ("database.retain_days", Range::Count(1, 3650)),
    ("database.busy_timeout", Range::Span("0s", "10m")),
    ("sweep.period", Range::Span("1s", "31d")),
    ("sweep.concurrency", Range::Count(1, 256)),
    ("sweep.connectors_ttl", Range::Span("0s", "24h")),
    ("sweep.stale_after", Range::Span("1s", "366d")),
    ("sweep.login_min_interval", Range::Span("0s", "7d")),
    ("sweep.retry_after", Range::Span("1s", "7d")),
    ("sweep.batch_size", Range::Count(1, 10_000)),
    ("outage.min_users", Range::Count(1, 1_000_000)),
    ("outage.window", Range::Span("1s", "7d")),
    ("refresh.login_stale_after", Range::Span("0s", "7d")),
    ("refresh.stale_after", Range::Span("0s", "7d")),
    ("refresh.min_interval", Range::Span("0s", "7d")),
    ("refresh.open_banking_daily_cap", Range::Count(0, 20)),
    ("refresh.web_daily_cap", Range::Count(0, 20)),
    ("refresh.reserved_for_login", Range::Count(0, 20)),
    ("refresh.global_per_minute", Range::Count(1, 6000)),
    ("refresh.per_institution_per_minute", Range::Count(1, 6000)),
    ("refresh.max_wait", Range::Span("0s", "1h")),
    ("refresh.recovery_window", Range::Span("0s", "24h")),
    ("refresh.transient_retry_base", Range::Span("1s", "24h")),
    ("refresh.transient_max_retries", Range::Count(0, 10)),
    ("refresh.follow_poll_initial", Range::Span("10ms", "10m")),
    ("refresh.follow_poll_max", Range::Span("10ms", "1h")),
    ("refresh.follow_timeout", Range::Span("1s", "24h")),
    ("api.max_connections", Range::Count(1, 65_536)),
    ("api.header_timeout", Range::Span("1s", "10m")),
    ("api.body_timeout", Range::Span("1s", "1h")),
    ("api.idle_timeout", Range::Span("1s", "1h")),
    ("webhooks.max_body", Range::Count(1024, 1_048_576)),
    ("webhooks.max_connections", Range::Count(1, 65_536)),
    ("webhooks.header_timeout", Range::Span("1s", "10m")),
    ("webhooks.body_timeout", Range::Span("1s", "1h")),
    ("webhooks.idle_timeout", Range::Span("1s", "1h")),
    // Or "0s": off.
    ("webhooks.poll_interval", Range::Span("1m", "24h")),
    ("notify.max_age", Range::Span("1s", "7d")),
    ("notify.backoff_initial", Range::Span("10ms", "1h")),
    ("notify.backoff_max", Range::Span("10ms", "24h")),
    ("notify.timeout", Range::Span("100ms", "5m")),
    ("cdr.status_interval", Range::Span("1m", "24h")),
    ("cdr.outages_interval", Range::Span("5m", "7d")),
    ("cdr.register_interval", Range::Span("1h", "30d")),
    ("cdr.timeout", Range::Span("100ms", "1m")),
    ("cdr.max_requests_per_second", Range::Count(1, 1000)),
];

fn range_of(key: &str) -> Result<Range, SettingsError> {
    RANGES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, r)| *r)
        .ok_or_else(|| invalid(key, "has no documented range (a bug: add it to RANGES)"))
}

/// A whole number inside its key's range.
fn count(key: &str, value: i64) -> Result<u32, SettingsError> {
    let Range::Count(min, max) = range_of(key)? else {
        return Err(invalid(key, "is not a count (a bug in RANGES)"));
    };
    if !(min..=max).contains(&value) {
        return Err(invalid(
            key,
            format!("must be a whole number in {min}..={max}, got {value}"),
        ));
    }
    u32::try_from(value).map_err(|_| invalid(key, format!("is out of range: {value}")))
}

/// A whole number inside its key's range, and at least 1.
fn nonzero(key: &str, value: i64) -> Result<NonZeroU32, SettingsError> {
    NonZeroU32::new(count(key, value)?).ok_or_else(|| invalid(key, "must be at least 1"))
}

/// A duration inside its key's range.
fn span(key: &str, text: &str) -> Result<Duration, SettingsError> {
    let Range::Span(min, max) = range_of(key)? else {
        return Err(invalid(key, "is not a duration (a bug in RANGES)"));
    };
    let d = duration(key, text)?;
    let bound = |b: &str| {
        humantime::parse_duration(b)
            .map_err(|e| invalid(key, format!("has a bad range bound {b:?} ({e})")))
    };
    if d < bound(min)? || d > bound(max)? {
        return Err(invalid(
            key,
            format!("must be a duration in {min}..={max}, got {text:?}"),
        ));
    }
    Ok(d)
}

/// A duration inside its key's range, or `None` for "0s" (off): a key whose every other
/// value must be at least the range's minimum (a poll every nanosecond is not a poll).
fn span_or_off(key: &str, text: &str) -> Result<Option<Duration>, SettingsError> {
    if duration(key, text)?.is_zero() {
        return Ok(None);
    }
    span(key, text).map(Some).map_err(|_| {
        let range = range_of(key).map_or_else(|_| "its range".to_owned(), |r| r.to_string());
        invalid(
            key,
            format!("must be \"0s\" (off) or a duration in {range}, got {text:?}"),
        )
    })
}

// ---- raw, as written (the one place defaults live) ---------------------------------------

/// The file as written. Its `Default` is the single source of every default value;
/// config/basiq-health.toml writes the same values out (a test keeps them equal). Numbers
/// are read as `i64` so an out-of-range value is refused with its range, not a type error;
/// only as whole numbers ([`whole`]): a float or a quoted number is refused.
#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    shutdown_grace: String,
    basiq: RawBasiq,
    database: RawDatabase,
    log: RawLog,
    sweep: RawSweep,
    outage: RawOutage,
    api: RawApi,
    refresh: RawRefresh,
    webhooks: RawWebhooks,
    notify: RawNotify,
    cdr: RawCdr,
}

impl Default for RawSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: "20s".into(),
            basiq: RawBasiq::default(),
            database: RawDatabase::default(),
            log: RawLog::default(),
            sweep: RawSweep::default(),
            outage: RawOutage::default(),
            api: RawApi::default(),
            refresh: RawRefresh::default(),
            webhooks: RawWebhooks::default(),
            notify: RawNotify::default(),
            cdr: RawCdr::default(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawCdr {
    enabled: bool,
    register_url: String,
    status_interval: String,
    outages_interval: String,
    register_interval: String,
    timeout: String,
    #[serde(deserialize_with = "whole")]
    max_requests_per_second: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    overrides_file: Option<PathBuf>,
}

impl Default for RawCdr {
    fn default() -> Self {
        Self {
            enabled: true,
            register_url: "https://api.cdr.gov.au/cdr-register/v1".into(),
            status_interval: "5m".into(),
            outages_interval: "1h".into(),
            register_interval: "24h".into(),
            timeout: "5s".into(),
            max_requests_per_second: 2,
            overrides_file: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawWebhooks {
    listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
    #[serde(deserialize_with = "whole")]
    max_body: i64,
    poll_interval: String,
    register_new_users: bool,
    #[serde(deserialize_with = "whole")]
    max_connections: i64,
    header_timeout: String,
    body_timeout: String,
    idle_timeout: String,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            listen: String::new(),
            secret_file: None,
            max_body: 65_536,
            poll_interval: "15m".into(),
            register_new_users: false,
            max_connections: 1024,
            header_timeout: DEFAULT_HEADER_TIMEOUT.into(),
            body_timeout: DEFAULT_BODY_TIMEOUT.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT.into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawNotify {
    max_age: String,
    backoff_initial: String,
    backoff_max: String,
    timeout: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    endpoints: Vec<RawEndpoint>,
}

impl Default for RawNotify {
    fn default() -> Self {
        Self {
            max_age: "24h".into(),
            backoff_initial: "5s".into(),
            backoff_max: "1h".into(),
            timeout: "10s".into(),
            endpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_credential: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    events: Option<Vec<String>>,
}

impl RawSettings {
    /// The defaults as TOML (tests compare them with the example file).
    pub fn defaults_toml() -> String {
        toml::to_string(&Self::default()).unwrap_or_default()
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawRefresh {
    mode: String,
    login_stale_after: String,
    stale_after: String,
    min_interval: String,
    #[serde(deserialize_with = "whole")]
    open_banking_daily_cap: i64,
    #[serde(deserialize_with = "whole")]
    web_daily_cap: i64,
    #[serde(deserialize_with = "whole")]
    reserved_for_login: i64,
    #[serde(deserialize_with = "whole")]
    global_per_minute: i64,
    #[serde(deserialize_with = "whole")]
    per_institution_per_minute: i64,
    max_wait: String,
    unattended_window: String,
    timezone: String,
    recovery_window: String,
    transient_retry_base: String,
    #[serde(deserialize_with = "whole")]
    transient_max_retries: i64,
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
            unattended_window: crate::plan::policy::window::DEFAULT_WINDOW.into(),
            timezone: crate::plan::policy::window::DEFAULT_TIMEZONE.into(),
            recovery_window: "30m".into(),
            transient_retry_base: "10m".into(),
            transient_max_retries: 2,
            follow_poll_initial: "2s".into(),
            follow_poll_max: "30s".into(),
            follow_timeout: "10m".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawSweep {
    period: String,
    tick: String,
    #[serde(deserialize_with = "whole")]
    concurrency: i64,
    connectors_ttl: String,
    stale_after: String,
    login_min_interval: String,
    retry_after: String,
    #[serde(deserialize_with = "whole")]
    batch_size: i64,
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

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawOutage {
    #[serde(deserialize_with = "whole")]
    min_users: i64,
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

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawApi {
    listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<PathBuf>,
    #[serde(deserialize_with = "whole")]
    max_connections: i64,
    header_timeout: String,
    body_timeout: String,
    idle_timeout: String,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8088".into(),
            token_file: None,
            max_connections: 256,
            header_timeout: DEFAULT_HEADER_TIMEOUT.into(),
            body_timeout: DEFAULT_BODY_TIMEOUT.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT.into(),
        }
    }
}

/// The listeners' timeouts, alike by default (`[api]` and `[webhooks]` each have their own).
const DEFAULT_HEADER_TIMEOUT: &str = "10s";
const DEFAULT_BODY_TIMEOUT: &str = "10s";
const DEFAULT_IDLE_TIMEOUT: &str = "5s";

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawBasiq {
    base_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_file: Option<PathBuf>,
    timeout: String,
    connect_timeout: String,
    #[serde(deserialize_with = "whole")]
    max_requests_per_second: i64,
    #[serde(deserialize_with = "whole")]
    max_attempts: i64,
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

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawDatabase {
    /// Default: `$STATE_DIRECTORY/basiq-health.db`, else /var/lib/basiq-health/basiq-health.db.
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(deserialize_with = "whole")]
    retain_days: i64,
    busy_timeout: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            path: None,
            retain_days: 400,
            busy_timeout: "10s".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    /// Default: json when stdout is not a terminal, pretty when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: None,
            level: "info".into(),
        }
    }
}

/// A whole number exactly as written: a TOML integer. A float, a quoted number or a
/// boolean is refused naming its key, never rounded or converted (`max_attempts = 1.5` is
/// not 2). Every integer key reads through this; the environment's text is read as a number
/// first by [`EnvOverrides`].
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number (no quotes, no decimal point)")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
        }
    }
    d.deserialize_any(Whole)
}

/// The `BASIQ_HEALTH__<SECTION>__<KEY>` overrides. An environment variable is text, so the
/// value of an integer key (a `Range::Count` of [`RANGES`]) written as plain decimal digits
/// (`-` allowed) is read as that number; anything else stays text and [`whole`] refuses it.
/// Other keys keep their text as written (`try_parsing` would read "0123" as 123).
#[derive(Clone, Debug)]
struct EnvOverrides(config::Environment);

impl EnvOverrides {
    fn new(source: Option<config::Map<String, String>>) -> Self {
        Self(
            config::Environment::with_prefix("BASIQ_HEALTH")
                .prefix_separator("__")
                .separator("__")
                .source(source),
        )
    }
}

impl config::Source for EnvOverrides {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        let mut values = self.0.collect()?;
        for (key, value) in &mut values {
            let integer_key = RANGES
                .iter()
                .any(|(k, r)| k == key && matches!(r, Range::Count(..)));
            if let (true, config::ValueKind::String(text)) = (integer_key, &value.kind)
                && let Some(n) = plain_integer(text)
            {
                let origin = value.origin().map(str::to_owned);
                *value = config::Value::new(origin.as_ref(), n);
            }
        }
        Ok(values)
    }
}

/// `-?[0-9]+` as an `i64`.
fn plain_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

// ---- typed ---------------------------------------------------------------------------------

/// Durations as the file writes them (`"1h 30m"`, `"500ms"`), for `config check`.
pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// A URL as it may be shown or stored: the user name and password (if any) replaced by one
/// `[redacted]`, every query value by `[redacted]` (the keys kept), a fragment too:
/// `https://[redacted]@app.example/hook?token=[redacted]`. Credentials ride in all three.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    let userinfo = !url.username().is_empty() || url.password().is_some();
    // Neither fails on a URL with a host, the only kind that has a user name or password.
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if userinfo {
        text = text.replacen("://", "://[redacted]@", 1);
    }
    if let Some(query) = url.query() {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}=[redacted]"),
                None if pair.is_empty() => String::new(),
                None => "[redacted]".to_owned(),
            })
            .collect();
        text.push('?');
        text.push_str(&pairs.join("&"));
    }
    if url.fragment().is_some() {
        text.push_str("#[redacted]");
    }
    text
}

fn serialize_url<S: serde::Serializer>(url: &Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url))
}

fn serialize_listen<S: serde::Serializer>(
    listen: &Option<std::net::SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match listen {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str(""),
    }
}

/// The validated settings. `config check` prints them through `Serialize`, so what it
/// shows is what the daemon uses; secrets show as `[redacted]`.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// How long a stop may take: users in flight finish, then the database closes.
    #[serde(serialize_with = "serialize_duration")]
    pub shutdown_grace: Duration,
    pub basiq: BasiqSettings,
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub sweep: SweepSettings,
    pub outage: OutageSettings,
    pub api: ApiSettings,
    pub refresh: RefreshSettings,
    pub webhooks: WebhookSettings,
    pub notify: NotifySettings,
    pub cdr: CdrSettings,
    /// What the operator should fix though the daemon can run: secret files (other than the
    /// API key's, see [`ApiKey::permission_warning`]) that group or others can read.
    /// `config check` prints them, the daemon logs them at start.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The systemd credential holding Basiq's webhook secret(s).
pub const WEBHOOK_CREDENTIAL_NAME: &str = "basiq-webhook-secret";

/// The notification types an endpoint can ask for.
pub const NOTIFY_EVENTS: [&str; 5] = [
    "connection.health_changed",
    "connection.consent_expiring",
    "institution.outage_started",
    "institution.outage_ended",
    "institution.maintenance_scheduled",
];

/// A Standard Webhooks secret (`whsec_<base64>`): never printed.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

/// The fewest bytes a secret may decode to: Standard Webhooks secrets are 24 to 64 bytes
/// (Basiq's and Svix's are 24). A shorter one, `whsec_` alone above all (an empty HMAC key
/// anyone can sign with), is refused.
pub const WEBHOOK_SECRET_MIN_BYTES: usize = 24;

impl WebhookSecret {
    /// Checks the secret's shape and length; the error names nothing of the secret.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        // The crate accepts any base64, the empty string included.
        standardwebhooks::Webhook::new(text).map_err(|_| {
            "is not a Standard Webhooks secret (expected whsec_ followed by base64)".to_owned()
        })?;
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        let bytes = decoded_len(encoded);
        if bytes < WEBHOOK_SECRET_MIN_BYTES {
            return Err(format!(
                "is a Standard Webhooks secret of {bytes} bytes: at least \
                 {WEBHOOK_SECRET_MIN_BYTES} are needed (whsec_ followed by the base64 of 24 to \
                 64 random bytes, as the sender's dashboard gives it)"
            ));
        }
        Ok(Self(SecretString::from(text.to_owned())))
    }

    /// The signer/verifier. The secret was checked at load.
    pub fn webhook(&self) -> Option<standardwebhooks::Webhook> {
        use secrecy::ExposeSecret;
        standardwebhooks::Webhook::new(self.0.expose_secret()).ok()
    }
}

/// The length of what padded base64 (as the crate decoded it) decodes to.
fn decoded_len(encoded: &str) -> usize {
    let padding = encoded.bytes().rev().take_while(|b| *b == b'=').count();
    (encoded.len() - padding) * 3 / 4
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// `[webhooks]`: Basiq's webhooks in, and the `/events` poll.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookSettings {
    /// `None`: no receiver (`listen = ""`, the default).
    #[serde(serialize_with = "serialize_listen")]
    pub listen: Option<std::net::SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Every secret accepted (one per line of the file: several during a rotation).
    #[serde(skip)]
    pub secrets: Vec<WebhookSecret>,
    pub max_body: u32,
    /// `None`: no poll (`poll_interval = "0s"`).
    #[serde(serialize_with = "serialize_opt_duration")]
    pub poll_interval: Option<Duration>,
    pub register_new_users: bool,
    /// The receiver's connection limit and timeouts (it faces the internet).
    #[serde(flatten)]
    pub connections: ListenerSettings,
}

/// One listener's connection limit and timeouts (`[api]`, `[webhooks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListenerSettings {
    /// Connections open at once; at the limit, the one waiting longest for a request is
    /// closed to make room.
    pub max_connections: NonZeroU32,
    /// A request's line and headers arrive whole within this of the connection being ready
    /// for them (opened, or its previous answer sent).
    #[serde(serialize_with = "serialize_duration")]
    pub header_timeout: Duration,
    /// A request's body arrives whole within this of its headers (408 after).
    #[serde(serialize_with = "serialize_duration")]
    pub body_timeout: Duration,
    /// Nothing read or written for this long while no request is worked on: closed.
    #[serde(serialize_with = "serialize_duration")]
    pub idle_timeout: Duration,
}

impl ListenerSettings {
    /// `section`'s four keys, each inside its range.
    fn parse(
        section: &str,
        max_connections: i64,
        header_timeout: &str,
        body_timeout: &str,
        idle_timeout: &str,
    ) -> Result<Self, SettingsError> {
        let key = |k: &str| format!("{section}.{k}");
        Ok(Self {
            max_connections: nonzero(&key("max_connections"), max_connections)?,
            header_timeout: span(&key("header_timeout"), header_timeout)?,
            body_timeout: span(&key("body_timeout"), body_timeout)?,
            idle_timeout: span(&key("idle_timeout"), idle_timeout)?,
        })
    }
}

/// `[notify]`: notifications to the partner's app.
#[derive(Debug, Clone, Serialize)]
pub struct NotifySettings {
    #[serde(serialize_with = "serialize_duration")]
    pub max_age: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub backoff_initial: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub backoff_max: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSettings>,
}

/// The name of a lone `[[notify.endpoints]]` that has none.
pub const DEFAULT_ENDPOINT_NAME: &str = "default";
/// The longest endpoint name.
pub const ENDPOINT_NAME_MAX: usize = 32;

/// One `[[notify.endpoints]]`. `Debug` and `Serialize` show the URL redacted.
#[derive(Clone, Serialize)]
pub struct EndpointSettings {
    /// What keys the endpoint's cursor, deliveries, log lines and metric labels: a change
    /// of `url` (a rotated `?token=`) keeps them.
    pub name: String,
    #[serde(serialize_with = "serialize_url")]
    pub url: Url,
    /// Where the secret was read (a file, or the credential's file).
    pub secret_file: PathBuf,
    #[serde(skip)]
    pub secret: WebhookSecret,
    /// The notification types sent there (all when the key is absent).
    pub events: Vec<String>,
}

impl std::fmt::Debug for EndpointSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointSettings")
            .field("name", &self.name)
            .field("url", &redacted_url(&self.url))
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl EndpointSettings {
    /// What the endpoint's rows were keyed by before endpoints had names: its URL with any
    /// password (only) replaced by `[redacted]`. Rows so keyed are given to the endpoint
    /// when it starts (`work::delivery::adopt_endpoint_names`).
    pub fn legacy_key(&self) -> String {
        let mut shown = self.url.clone();
        if self.url.password().is_some() {
            if shown.set_password(Some("REDACTED")).is_ok() {
                return shown.as_str().replacen(":REDACTED@", ":[redacted]@", 1);
            }
            return "[a URL with a password: redacted]".to_owned();
        }
        shown.as_str().to_owned()
    }

    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == event_type)
    }
}

fn serialize_opt_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.map_or_else(|| "0s".to_owned(), fmt_duration))
}

/// `[refresh]`: when the daemon may refresh, how fast, and how it follows the job.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshSettings {
    #[serde(flatten)]
    pub limits: crate::plan::policy::RefreshLimits,
    pub global_per_minute: NonZeroU32,
    pub per_institution_per_minute: NonZeroU32,
    #[serde(serialize_with = "serialize_duration")]
    pub max_wait: Duration,
    #[serde(flatten)]
    pub unattended_window: crate::plan::policy::DailyWindow,
    #[serde(serialize_with = "serialize_duration")]
    pub recovery_window: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub transient_retry_base: Duration,
    pub transient_max_retries: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub follow_poll_initial: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub follow_poll_max: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub follow_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepSettings {
    /// Each user is swept once per period, at its stable offset.
    #[serde(serialize_with = "serialize_duration")]
    pub period: Duration,
    /// 6-field cron (seconds first) for the one periodic tick.
    pub tick: String,
    pub concurrency: NonZeroU32,
    #[serde(serialize_with = "serialize_duration")]
    pub connectors_ttl: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub stale_after: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub login_min_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub retry_after: Duration,
    pub batch_size: NonZeroU32,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutageSettings {
    pub min_users: NonZeroU32,
    #[serde(serialize_with = "serialize_duration")]
    pub window: Duration,
}

/// `[cdr]`: the second witness, the banks' own Consumer Data Right status and planned
/// outages, read from the CDR Register and each data holder's public discovery endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct CdrSettings {
    pub enabled: bool,
    pub register_url: Url,
    #[serde(serialize_with = "serialize_duration")]
    pub status_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub outages_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub register_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Requests to the Register and all data holders together.
    pub max_requests_per_second: NonZeroU32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides_file: Option<PathBuf>,
    /// The overrides file, read and checked at load: Basiq institution id → brand.
    #[serde(skip)]
    pub overrides: std::collections::HashMap<String, crate::plan::cdr::Override>,
}

/// The name of the token file created next to the database when `api.token_file` is unset.
pub const API_TOKEN_FILE_NAME: &str = "api-token";

#[derive(Clone, Serialize)]
pub struct ApiSettings {
    /// `None`: the local API is disabled (`listen = ""`).
    #[serde(serialize_with = "serialize_listen")]
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token's file: `api.token_file`, or `api-token` beside the database,
    /// created (random, 0600) at the daemon's first start.
    pub token_file: PathBuf,
    /// True when `token_file` was not configured (the daemon creates it when missing).
    #[serde(skip)]
    pub token_file_generated: bool,
    /// Read at load from a configured `token_file`; `None` for a generated one until the
    /// daemon starts.
    #[serde(skip)]
    pub token: Option<SecretString>,
    /// The API's connection limit and timeouts.
    #[serde(flatten)]
    pub connections: ListenerSettings,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("listen", &self.listen)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("connections", &self.connections)
            .finish()
    }
}

#[derive(Clone, Serialize)]
pub struct BasiqSettings {
    #[serde(serialize_with = "serialize_url")]
    pub base_url: Url,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// The key and where it came from; `None` when no source holds one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKey>,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub connect_timeout: Duration,
    pub max_requests_per_second: NonZeroU32,
    pub max_attempts: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub retry_base_delay: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub max_retry_delay: Duration,
}

impl std::fmt::Debug for BasiqSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasiqSettings")
            .field("base_url", &redacted_url(&self.base_url))
            .field("api_key_file", &self.api_key_file)
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_requests_per_second", &self.max_requests_per_second)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// The API key with where it was found. `Debug` and `Serialize` never show the key.
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

impl Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("[redacted] (from {})", self.source))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSettings {
    pub path: PathBuf,
    /// Job and health-change history older than this is pruned daily.
    pub retain_days: u32,
    /// How long a write waits for a lock held by another process before it fails.
    #[serde(serialize_with = "serialize_duration")]
    pub busy_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: RawLog::default().level,
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
        let raw: RawSettings = config::Config::builder()
            .add_source(source)
            .add_source(EnvOverrides::new(None))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| SettingsError::Parse {
                path: path.to_owned(),
                message: explain_config_error(&e.to_string()),
            })?;
        Self::validate(raw)
    }

    fn validate(raw: RawSettings) -> Result<Self, SettingsError> {
        // Section by section, in the file's order: the first error found is the one told.
        let basiq = parse_basiq(raw.basiq)?;
        let database = DatabaseSettings {
            path: raw.database.path.unwrap_or_else(default_database_path),
            retain_days: count("database.retain_days", raw.database.retain_days)?,
            busy_timeout: span("database.busy_timeout", &raw.database.busy_timeout)?,
        };
        let shutdown_grace = span("shutdown_grace", &raw.shutdown_grace)?;
        let log = parse_log(raw.log)?;
        let sweep = parse_sweep(raw.sweep)?;
        let outage = OutageSettings {
            min_users: nonzero("outage.min_users", raw.outage.min_users)?,
            window: span("outage.window", &raw.outage.window)?,
        };
        let mut warnings = Vec::new();
        let api = parse_api(raw.api, &database.path, &mut warnings)?;
        let refresh = parse_refresh(raw.refresh)?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let webhooks = parse_webhooks(raw.webhooks, credentials.as_deref(), &mut warnings)?;
        let notify = parse_notify(raw.notify, credentials.as_deref(), &mut warnings)?;
        let cdr = parse_cdr(raw.cdr)?;
        Ok(Self {
            shutdown_grace,
            basiq,
            database,
            log,
            sweep,
            outage,
            api,
            refresh,
            webhooks,
            notify,
            cdr,
            warnings,
        })
    }

    /// The key, or the error that names every place it may come from.
    pub fn api_key(&self) -> Result<&ApiKey, SettingsError> {
        self.basiq
            .api_key
            .as_ref()
            .ok_or(SettingsError::MissingApiKey)
    }

    /// The effective settings as TOML, secrets redacted (`config check`), derived from the
    /// typed values through `Serialize`.
    pub fn render(&self) -> String {
        match toml::to_string(self) {
            Ok(text) => text,
            Err(e) => format!("# the settings could not be printed: {e}\n"),
        }
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

/// `[basiq]`: the URL, the key (from its file, the systemd credential or the environment),
/// the client's timeouts, pace and retries.
fn parse_basiq(b: RawBasiq) -> Result<BasiqSettings, SettingsError> {
    let base_url = parse_base_url(&b.base_url)?;
    let api_key = resolve_api_key(
        b.api_key_file.as_deref(),
        std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        std::env::var(API_KEY_ENV).ok(),
    )?;
    Ok(BasiqSettings {
        base_url,
        api_key_file: b.api_key_file,
        api_key,
        timeout: span("basiq.timeout", &b.timeout)?,
        connect_timeout: span("basiq.connect_timeout", &b.connect_timeout)?,
        max_requests_per_second: nonzero(
            "basiq.max_requests_per_second",
            b.max_requests_per_second,
        )?,
        max_attempts: count("basiq.max_attempts", b.max_attempts)?,
        retry_base_delay: span("basiq.retry_base_delay", &b.retry_base_delay)?,
        max_retry_delay: span("basiq.max_retry_delay", &b.max_retry_delay)?,
    })
}

/// `[log]`: the format (by default pretty on a terminal, JSON otherwise) and a filter that
/// `EnvFilter` accepts.
fn parse_log(raw: RawLog) -> Result<LogSettings, SettingsError> {
    let log = LogSettings {
        format: match raw.format.as_deref() {
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
        level: raw.level,
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
    Ok(log)
}

/// `[sweep]`: the period, the cron tick, the pace and the freshness rules.
fn parse_sweep(sw: RawSweep) -> Result<SweepSettings, SettingsError> {
    Ok(SweepSettings {
        period: span("sweep.period", &sw.period)?,
        tick: validate_cron("sweep.tick", &sw.tick)?,
        concurrency: nonzero("sweep.concurrency", sw.concurrency)?,
        connectors_ttl: span("sweep.connectors_ttl", &sw.connectors_ttl)?,
        stale_after: span("sweep.stale_after", &sw.stale_after)?,
        login_min_interval: span("sweep.login_min_interval", &sw.login_min_interval)?,
        retry_after: span("sweep.retry_after", &sw.retry_after)?,
        batch_size: nonzero("sweep.batch_size", sw.batch_size)?,
    })
}

/// `[refresh]`: the mode, the caps, the pace and the daily window.
fn parse_refresh(r: RawRefresh) -> Result<RefreshSettings, SettingsError> {
    let mode: crate::plan::policy::RefreshMode =
        r.mode
            .parse()
            .map_err(|e: crate::plan::policy::UnknownRefreshMode| {
                invalid("refresh.mode", e.to_string())
            })?;
    let open_banking_daily_cap = count("refresh.open_banking_daily_cap", r.open_banking_daily_cap)?;
    let reserved_for_login = count("refresh.reserved_for_login", r.reserved_for_login)?;
    if reserved_for_login > open_banking_daily_cap {
        return Err(invalid(
            "refresh.reserved_for_login",
            format!(
                "must not exceed refresh.open_banking_daily_cap ({open_banking_daily_cap}), got {reserved_for_login}"
            ),
        ));
    }
    let unattended_window =
        crate::plan::policy::DailyWindow::parse(&r.unattended_window, &r.timezone).map_err(
            |e| {
                let key = if matches!(e, crate::plan::policy::WindowError::TimeZone(_)) {
                    "refresh.timezone"
                } else {
                    "refresh.unattended_window"
                };
                invalid(key, e.to_string())
            },
        )?;
    Ok(RefreshSettings {
        limits: crate::plan::policy::RefreshLimits {
            mode,
            min_interval: span("refresh.min_interval", &r.min_interval)?,
            login_stale_after: span("refresh.login_stale_after", &r.login_stale_after)?,
            stale_after: span("refresh.stale_after", &r.stale_after)?,
            open_banking_daily_cap,
            web_daily_cap: count("refresh.web_daily_cap", r.web_daily_cap)?,
            reserved_for_login,
        },
        global_per_minute: nonzero("refresh.global_per_minute", r.global_per_minute)?,
        per_institution_per_minute: nonzero(
            "refresh.per_institution_per_minute",
            r.per_institution_per_minute,
        )?,
        max_wait: span("refresh.max_wait", &r.max_wait)?,
        unattended_window,
        recovery_window: span("refresh.recovery_window", &r.recovery_window)?,
        transient_retry_base: span("refresh.transient_retry_base", &r.transient_retry_base)?,
        transient_max_retries: count("refresh.transient_max_retries", r.transient_max_retries)?,
        follow_poll_initial: span("refresh.follow_poll_initial", &r.follow_poll_initial)?,
        follow_poll_max: span("refresh.follow_poll_max", &r.follow_poll_max)?,
        follow_timeout: span("refresh.follow_timeout", &r.follow_timeout)?,
    })
}

/// `api.token_file`, else `api-token` beside the database. A configured file must exist
/// and hold a token; a generated one is created by the daemon at start (`run`).
fn parse_api(
    raw: RawApi,
    database: &Path,
    warnings: &mut Vec<String>,
) -> Result<ApiSettings, SettingsError> {
    let (token_file, token_file_generated) = match raw.token_file {
        Some(path) => (path, false),
        None => (
            database
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(API_TOKEN_FILE_NAME),
            true,
        ),
    };
    let connections = ListenerSettings::parse(
        "api",
        raw.max_connections,
        &raw.header_timeout,
        &raw.body_timeout,
        &raw.idle_timeout,
    )?;
    let listen = raw.listen.trim();
    if listen.is_empty() {
        return Ok(ApiSettings {
            listen: None,
            token_file,
            token_file_generated,
            token: None,
            connections,
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
    if !addr.ip().is_loopback() && token_file_generated {
        return Err(invalid(
            "api.listen",
            format!(
                "{addr} is not a loopback address: set api.token_file (a bearer token) to expose the API"
            ),
        ));
    }
    let token = if token_file_generated {
        None
    } else {
        let token =
            read_token_file(&token_file).map_err(|problem| invalid("api.token_file", problem))?;
        if let Some(loose) = loose_permissions("api.token_file", &token_file) {
            // Anyone on the host who reads it may drive the API from anywhere it reaches.
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    "api.token_file",
                    format!(
                        "{}; refused, since api.listen ({addr}) is not a loopback address",
                        loose.trim_start_matches("api.token_file: ")
                    ),
                ));
            }
            warnings.push(loose);
        }
        Some(token)
    };
    Ok(ApiSettings {
        listen: Some(addr),
        token_file,
        token_file_generated,
        token,
        connections,
    })
}

/// `[webhooks]`: a receiver needs at least one secret, from `secret_file` or the systemd
/// credential `basiq-webhook-secret`; each non-empty line is one secret.
fn parse_webhooks(
    raw: RawWebhooks,
    credentials: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<WebhookSettings, SettingsError> {
    let listen = raw.listen.trim();
    let listen = if listen.is_empty() {
        None
    } else {
        Some(listen.parse::<std::net::SocketAddr>().map_err(|_| {
            invalid(
                "webhooks.listen",
                format!("must be an address such as \"0.0.0.0:8089\", or \"\" to disable, got {listen:?}"),
            )
        })?)
    };
    let (key, path) = match (&raw.secret_file, credentials) {
        (Some(path), _) => ("webhooks.secret_file", Some(path.clone())),
        (None, Some(dir)) if dir.join(WEBHOOK_CREDENTIAL_NAME).exists() => (
            "$CREDENTIALS_DIRECTORY",
            Some(dir.join(WEBHOOK_CREDENTIAL_NAME)),
        ),
        _ => ("webhooks.secret_file", None),
    };
    let mut secrets = Vec::new();
    if let Some(path) = &path {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            secrets.push(WebhookSecret::parse(line).map_err(|problem| {
                invalid(key, format!("{}: line {} {problem}", path.display(), n + 1))
            })?);
        }
        if secrets.is_empty() {
            return Err(invalid(key, format!("{} holds no secret", path.display())));
        }
        warnings.extend(loose_permissions(key, path));
    }
    if listen.is_some() && secrets.is_empty() {
        return Err(invalid(
            "webhooks.listen",
            format!(
                "needs Basiq's signing secret: set webhooks.secret_file, or provide the systemd \
                 credential $CREDENTIALS_DIRECTORY/{WEBHOOK_CREDENTIAL_NAME}"
            ),
        ));
    }
    Ok(WebhookSettings {
        listen,
        secret_file: raw.secret_file,
        secrets,
        max_body: count("webhooks.max_body", raw.max_body)?,
        poll_interval: span_or_off("webhooks.poll_interval", &raw.poll_interval)?,
        register_new_users: raw.register_new_users,
        connections: ListenerSettings::parse(
            "webhooks",
            raw.max_connections,
            &raw.header_timeout,
            &raw.body_timeout,
            &raw.idle_timeout,
        )?,
    })
}

/// `[notify]` and its endpoints.
fn parse_notify(
    raw: RawNotify,
    credentials: Option<&Path>,
    warnings: &mut Vec<String>,
) -> Result<NotifySettings, SettingsError> {
    let several = raw.endpoints.len() > 1;
    let mut endpoints: Vec<EndpointSettings> = Vec::new();
    for (n, e) in raw.endpoints.into_iter().enumerate() {
        let endpoint = parse_endpoint(n, e, credentials, several, warnings)?;
        let key = format!("notify.endpoints[{n}]");
        if endpoints.iter().any(|o| o.name == endpoint.name) {
            return Err(invalid(
                &format!("{key}.name"),
                format!(
                    "{:?} names another endpoint too: each name is its own",
                    endpoint.name
                ),
            ));
        }
        if endpoints.iter().any(|o| o.url == endpoint.url) {
            return Err(invalid(
                &format!("{key}.url"),
                "is another endpoint's URL too",
            ));
        }
        endpoints.push(endpoint);
    }
    let backoff_initial = span("notify.backoff_initial", &raw.backoff_initial)?;
    let backoff_max = span("notify.backoff_max", &raw.backoff_max)?;
    // A cap below the first delay caps every delay at it.
    let backoff_max = backoff_max.max(backoff_initial);
    Ok(NotifySettings {
        max_age: span("notify.max_age", &raw.max_age)?,
        backoff_initial,
        backoff_max,
        timeout: span("notify.timeout", &raw.timeout)?,
        endpoints,
    })
}

/// The `n`-th `[[notify.endpoints]]`: `https://` (plain `http://` only to loopback), a
/// secret from `secret_file` or `secret_credential` (the error names the key used), known
/// event names.
fn parse_endpoint(
    n: usize,
    e: RawEndpoint,
    credentials: Option<&Path>,
    several: bool,
    warnings: &mut Vec<String>,
) -> Result<EndpointSettings, SettingsError> {
    let key = |k: &str| format!("notify.endpoints[{n}].{k}");
    let name = endpoint_name(e.name.as_deref(), several).map_err(|p| invalid(&key("name"), p))?;
    let url = Url::parse(e.url.trim())
        .map_err(|err| invalid(&key("url"), format!("is not a URL ({err})")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        _ => {
            return Err(invalid(
                &key("url"),
                "must use https:// (plain http only to a loopback host)",
            ));
        }
    }
    let (secret_key, path) = match (e.secret_file, e.secret_credential, credentials) {
        (Some(path), None, _) => (key("secret_file"), path),
        (None, Some(name), Some(dir)) => (key("secret_credential"), dir.join(name)),
        (None, Some(_), None) => {
            return Err(invalid(
                &key("secret_credential"),
                "names a systemd credential, but $CREDENTIALS_DIRECTORY is not set",
            ));
        }
        (Some(_), Some(_), _) => {
            return Err(invalid(
                &key("secret_file"),
                "and secret_credential are both set: keep one",
            ));
        }
        (None, None, _) => {
            return Err(invalid(
                &key("secret_file"),
                "is required: the file holding the endpoint's whsec_ signing secret",
            ));
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|err| {
        invalid(
            &secret_key,
            format!("cannot read {}: {err}", path.display()),
        )
    })?;
    let secret = WebhookSecret::parse(&text)
        .map_err(|problem| invalid(&secret_key, format!("{}: {problem}", path.display())))?;
    warnings.extend(loose_permissions(&secret_key, &path));
    let events = match e.events {
        None => NOTIFY_EVENTS.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            if let Some(name) = list.iter().find(|n| !NOTIFY_EVENTS.contains(&n.as_str())) {
                return Err(invalid(
                    &key("events"),
                    format!(
                        "names {name:?}: the events are {}",
                        NOTIFY_EVENTS.join(", ")
                    ),
                ));
            }
            list
        }
    };
    Ok(EndpointSettings {
        name,
        url,
        secret_file: path,
        secret,
        events,
    })
}

/// An endpoint's `name`: 1 to [`ENDPOINT_NAME_MAX`] of `a-z`, `0-9` and `-`, starting with a
/// letter or digit; required when there are several endpoints, [`DEFAULT_ENDPOINT_NAME`]
/// for a lone one without. The error says what to write, never quoting more than the rule.
fn endpoint_name(name: Option<&str>, several: bool) -> Result<String, String> {
    let rule = format!(
        "a short word of a-z, 0-9 and '-' (1 to {ENDPOINT_NAME_MAX}, not starting with '-'), such as \"app\""
    );
    let Some(name) = name else {
        if several {
            return Err(format!(
                "is required when there are several endpoints: {rule}; it keys the endpoint's \
                 deliveries, so its url may change without sending anything twice"
            ));
        }
        return Ok(DEFAULT_ENDPOINT_NAME.to_owned());
    };
    let good = (1..=ENDPOINT_NAME_MAX).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if good {
        Ok(name.to_owned())
    } else {
        Err(format!("must be {rule}"))
    }
}

/// Reads a bearer token file: trimmed, not empty.
pub fn read_token_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(text.to_owned()))
}

pub(crate) fn duration(key: &str, text: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("expects a duration such as \"30s\", \"5m\" or \"24h\", got {text:?} ({e})"),
        )
    })
}

/// `[cdr]`: the intervals in range, the Register's URL safe, the overrides file read.
fn parse_cdr(raw: RawCdr) -> Result<CdrSettings, SettingsError> {
    let overrides = match &raw.overrides_file {
        None => Default::default(),
        Some(path) => {
            let key = "cdr.overrides_file";
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(key, format!("could not be read ({e}): {}", path.display()))
            })?;
            crate::plan::cdr::parse_overrides(&text)
                .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?
        }
    };
    Ok(CdrSettings {
        enabled: raw.enabled,
        register_url: parse_url("cdr.register_url", &raw.register_url)?,
        status_interval: span("cdr.status_interval", &raw.status_interval)?,
        outages_interval: span("cdr.outages_interval", &raw.outages_interval)?,
        register_interval: span("cdr.register_interval", &raw.register_interval)?,
        timeout: span("cdr.timeout", &raw.timeout)?,
        max_requests_per_second: nonzero(
            "cdr.max_requests_per_second",
            raw.max_requests_per_second,
        )?,
        overrides_file: raw.overrides_file,
        overrides,
    })
}

/// `https://` always; plain `http://` only to a loopback host (the simulator).
fn parse_base_url(text: &str) -> Result<Url, SettingsError> {
    parse_url("basiq.base_url", text)
}

/// `https://` always; plain `http://` only to a loopback host (a simulator).
fn parse_url(key: &str, text: &str) -> Result<Url, SettingsError> {
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
        let key = read_key_file("basiq.api_key_file", path)
            .map_err(|problem| invalid("basiq.api_key_file", problem))?;
        return Ok(Some(key));
    }
    if let Some(dir) = credentials_dir {
        let path = dir.join(CREDENTIAL_NAME);
        if path.exists() {
            let key = read_key_file("$CREDENTIALS_DIRECTORY", &path)
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

fn read_key_file(key_name: &str, path: &Path) -> Result<ApiKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the key file {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("the key file {} is empty", path.display()));
    }
    Ok(ApiKey {
        secret: SecretString::from(key.to_owned()),
        source: format!("file {}", path.display()),
        permission_warning: loose_permissions(key_name, path),
    })
}

/// A secret file that group or others can read: the warning, naming the key it was read
/// for (never its content), else `None`.
#[cfg(unix)]
fn loose_permissions(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{key}: the secret file {} can be read by group or others (mode {:o}): run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_: &str, _: &Path) -> Option<String> {
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

    /// `section.key` → value for every leaf of a TOML table.
    fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => leaves(t, &key, out),
                other => out.push((key, other.clone())),
            }
        }
    }

    fn is_numeric(v: &toml::Value) -> bool {
        match v {
            toml::Value::Integer(_) => true,
            toml::Value::String(s) => humantime::parse_duration(s).is_ok(),
            _ => false,
        }
    }

    #[test]
    fn every_numeric_key_has_a_range_and_the_example_file_documents_it() {
        let defaults: toml::Table = toml::from_str(&RawSettings::defaults_toml()).unwrap();
        let mut all = Vec::new();
        leaves(&defaults, "", &mut all);
        let numeric: Vec<&str> = all
            .iter()
            .filter(|(_, v)| is_numeric(v))
            .map(|(k, _)| k.as_str())
            .collect();
        assert!(numeric.len() >= 33, "{numeric:?}");
        for key in &numeric {
            assert!(
                RANGES.iter().any(|(k, _)| k == key),
                "numeric key {key} has no range in RANGES"
            );
        }
        for (key, _) in RANGES {
            assert!(
                numeric.contains(key),
                "RANGES names {key}, not a numeric key"
            );
        }
        // The example file writes `# Range: MIN..=MAX.` in the comment block above each key.
        let file = include_str!("../config/basiq-health.toml");
        for (key, range) in RANGES {
            let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
            let mut current = "";
            let mut last_range = None;
            let mut found = None;
            for line in file.lines() {
                if let Some(s) = line.strip_prefix('[') {
                    current = s.trim_end_matches(']');
                    last_range = None;
                } else if let Some(r) = line.strip_prefix("# Range: ") {
                    last_range = Some(r.trim_end_matches('.'));
                } else if current == section
                    && line
                        .trim_start_matches("# ")
                        .starts_with(&format!("{name} = "))
                {
                    found = Some(last_range);
                    break;
                } else if !line.starts_with('#') {
                    last_range = None;
                }
            }
            let documented = found.unwrap_or_else(|| panic!("{key} is not in the example file"));
            assert_eq!(
                documented,
                Some(range.to_string().as_str()),
                "the example file documents {key}'s range"
            );
        }
    }

    /// A document setting `key` (as `section.name`) to the raw TOML `value`.
    fn with(key: &str, value: &str) -> String {
        match key.rsplit_once('.') {
            Some((section, name)) => format!("[{section}]\n{name} = {value}\n"),
            None => format!("{key} = {value}\n"),
        }
    }

    #[test]
    fn every_numeric_key_accepts_its_bounds_and_refuses_one_step_outside_naming_itself() {
        for (key, range) in RANGES {
            let (lo, hi, below, above) = match *range {
                Range::Count(min, max) => (
                    min.to_string(),
                    max.to_string(),
                    (min - 1).to_string(),
                    (max + 1).to_string(),
                ),
                Range::Span(min, max) => {
                    let min_d = humantime::parse_duration(min).unwrap();
                    let max_d = humantime::parse_duration(max).unwrap();
                    let below = min_d
                        .checked_sub(Duration::from_millis(1))
                        .map(|d| format!("\"{}ms\"", d.as_millis()))
                        .unwrap_or_else(|| "\"-1s\"".into());
                    (
                        format!("\"{min}\""),
                        format!("\"{max}\""),
                        below,
                        format!("\"{}ms\"", (max_d + Duration::from_millis(1)).as_millis()),
                    )
                }
            };
            // The cap bounds the reservation: test the cap's own range with none reserved.
            let extra = if *key == "refresh.open_banking_daily_cap" {
                "reserved_for_login = 0\n"
            } else {
                ""
            };
            for ok in [&lo, &hi] {
                let doc = with(key, ok) + extra;
                if let Err(e) = Settings::from_toml(&doc) {
                    panic!("{key} = {ok} is inside {range} and refused: {e}");
                }
            }
            for bad in [&below, &above] {
                let err = Settings::from_toml(&(with(key, bad) + extra))
                    .err()
                    .unwrap_or_else(|| panic!("{key} = {bad} is outside {range} and accepted"));
                let text = err.to_string();
                assert!(text.contains(key), "{key} = {bad}: {text}");
            }
        }
    }

    #[test]
    fn the_example_file_holds_exactly_the_defaults() {
        let example = Settings::from_toml(include_str!("../config/basiq-health.toml")).unwrap();
        let defaults = Settings::from_toml("").unwrap();
        assert_eq!(example.render(), defaults.render());
    }

    #[test]
    fn config_check_output_reads_back_as_the_same_settings() {
        let doc = "shutdown_grace = \"45s\"\n[basiq]\nbase_url = \"http://127.0.0.1:9/p/\"\nmax_attempts = 7\n\
                   retry_base_delay = \"1s 500ms\"\n[database]\npath = \"/tmp/x/bh.db\"\nretain_days = 9\n\
                   busy_timeout = \"250ms\"\n[log]\nformat = \"pretty\"\nlevel = \"debug\"\n\
                   [sweep]\nperiod = \"36h\"\ntick = \"*/5 * * * * *\"\nbatch_size = 17\n\
                   [outage]\nmin_users = 9\n[api]\nlisten = \"\"\n\
                   [refresh]\nmode = \"daily\"\nweb_daily_cap = 2\nunattended_window = \"22:30-05:00\"\n\
                   timezone = \"Australia/Perth\"\nfollow_timeout = \"2h\"\n";
        let first = Settings::from_toml(doc).unwrap().render();
        for line in [
            "retain_days = 9",
            "busy_timeout = \"250ms\"",
            "web_daily_cap = 2",
            "unattended_window = \"22:30-05:00\"",
            "timezone = \"Australia/Perth\"",
            "format = \"pretty\"",
            "listen = \"\"",
            "period = \"1day 12h\"",
        ] {
            assert!(first.contains(line), "{line} missing from:\n{first}");
        }
        // The printed key is a note, not a key the file takes.
        let back: String = first
            .lines()
            .filter(|l| !l.starts_with("api_key = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let second = Settings::from_toml(&back).unwrap().render();
        assert_eq!(first, second);
    }

    #[test]
    fn a_url_is_shown_without_its_user_name_password_query_values_or_fragment() {
        let shown = |text: &str| redacted_url(&Url::parse(text).unwrap());
        assert_eq!(
            shown("https://app.example/hook"),
            "https://app.example/hook"
        );
        assert_eq!(
            shown(
                "https://user-canary:pw-canary@app.example:8443/a/b?token=tok-canary&v=1&flag&#frag-canary"
            ),
            "https://[redacted]@app.example:8443/a/b?token=[redacted]&v=[redacted]&[redacted]&#[redacted]"
        );
        assert_eq!(
            shown("http://user-canary@127.0.0.1:9/?sig=a%3Db"),
            "http://[redacted]@127.0.0.1:9/?sig=[redacted]"
        );
        assert_eq!(shown("https://h/?"), "https://h/?");
    }

    #[test]
    fn a_password_in_base_url_is_redacted_everywhere_it_is_shown() {
        let s = Settings::from_toml(
            "[basiq]\nbase_url = \"https://proxy-user:hunter2-canary@proxy.example/basiq/\"\n",
        )
        .unwrap();
        let rendered = s.render();
        let debug = format!("{s:?}");
        for shown in [&rendered, &debug] {
            assert!(!shown.contains("hunter2-canary"), "{shown}");
            assert!(!shown.contains("proxy-user"), "{shown}");
            assert!(shown.contains("[redacted]@proxy.example"), "{shown}");
        }
        // The URL used for requests keeps it.
        assert_eq!(s.basiq.base_url.password(), Some("hunter2-canary"));
    }

    #[test]
    fn every_integer_key_refuses_a_float_a_quoted_number_or_a_boolean_naming_itself() {
        let mut checked = 0;
        for (key, range) in RANGES {
            let Range::Count(min, _) = *range else {
                continue;
            };
            let extra = if *key == "refresh.open_banking_daily_cap" {
                "reserved_for_login = 0\n"
            } else {
                ""
            };
            // The whole number itself is read.
            if let Err(e) = Settings::from_toml(&(with(key, &min.to_string()) + extra)) {
                panic!("{key} = {min} is refused: {e}");
            }
            for bad in [
                format!("{min}.0"),
                format!("{min}.4"),
                format!("\"{min}\""),
                "true".to_owned(),
                "false".to_owned(),
            ] {
                let err = Settings::from_toml(&(with(key, &bad) + extra))
                    .err()
                    .unwrap_or_else(|| panic!("{key} = {bad} is not a whole number and accepted"));
                let text = err.to_string();
                assert!(text.contains(key), "{key} = {bad}: {text}");
            }
            checked += 1;
        }
        assert!(checked >= 13, "{checked} integer keys");
    }

    #[test]
    fn the_environment_s_digits_are_numbers_for_integer_keys_only() {
        use config::Source;
        let vars: config::Map<String, String> = [
            ("BASIQ_HEALTH__BASIQ__MAX_ATTEMPTS", "5"),
            ("BASIQ_HEALTH__SWEEP__BATCH_SIZE", "1.5"),
            ("BASIQ_HEALTH__LOG__LEVEL", "0123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let values = EnvOverrides::new(Some(vars)).collect().unwrap();
        let kind = |k: &str| values[k].kind.clone();
        assert_eq!(kind("basiq.max_attempts"), config::ValueKind::I64(5));
        assert_eq!(
            kind("sweep.batch_size"),
            config::ValueKind::String("1.5".into())
        );
        assert_eq!(kind("log.level"), config::ValueKind::String("0123".into()));
        assert_eq!(plain_integer("-7"), Some(-7));
        for text in [
            "",
            "-",
            "+7",
            " 7",
            "7 ",
            "1e3",
            "0x10",
            "99999999999999999999",
        ] {
            assert_eq!(plain_integer(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_poll_interval_under_a_minute_is_refused_and_0s_stays_off() {
        for bad in ["1ns", "1ms", "30s", "59s 999ms"] {
            let err = Settings::from_toml(&with("webhooks.poll_interval", &format!("{bad:?}")))
                .err()
                .unwrap_or_else(|| panic!("poll_interval = {bad:?} is accepted"));
            let text = err.to_string();
            assert!(text.contains("webhooks.poll_interval"), "{bad}: {text}");
            assert!(text.contains("0s"), "says how to turn it off: {text}");
        }
        let off = Settings::from_toml(&with("webhooks.poll_interval", "\"0s\"")).unwrap();
        assert_eq!(off.webhooks.poll_interval, None);
        let minute = Settings::from_toml(&with("webhooks.poll_interval", "\"1m\"")).unwrap();
        assert_eq!(minute.webhooks.poll_interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_webhook_secret_that_decodes_to_fewer_than_24_bytes_is_refused() {
        for short in [
            "whsec_",
            "whsec_QQ==",
            // 23 bytes.
            "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVlc=",
        ] {
            let err = WebhookSecret::parse(short).err().unwrap_or_else(|| {
                panic!("a secret of fewer than 24 bytes is accepted: {short:?}")
            });
            assert!(err.contains("24"), "{err}");
            assert!(!err.contains("QUJD"), "the value is never shown: {err}");
        }
        // 24 and 64 bytes.
        assert!(WebhookSecret::parse("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY").is_ok());
        assert!(
            WebhookSecret::parse(
                "whsec_a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2traw=="
            )
            .is_ok()
        );
    }

    #[test]
    fn endpoint_names_are_short_words_required_when_several_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let endpoint = |name: Option<&str>, path: &str| {
            let name = name.map_or_else(String::new, |n| format!("name = {n:?}\n"));
            format!(
                "[[notify.endpoints]]\n{name}url = \"https://app.example.com/{path}\"\nsecret_file = {:?}\n",
                secret.display().to_string()
            )
        };
        let lone = Settings::from_toml(&endpoint(None, "a")).unwrap();
        assert_eq!(lone.notify.endpoints[0].name, DEFAULT_ENDPOINT_NAME);
        let named =
            Settings::from_toml(&(endpoint(Some("app"), "a") + &endpoint(Some("crm-2"), "b")))
                .unwrap();
        let names: Vec<&str> = named
            .notify
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["app", "crm-2"]);
        assert!(
            named.render().contains("name = \"crm-2\""),
            "{}",
            named.render()
        );
        let refused = |doc: String, key: &str| {
            let err = Settings::from_toml(&doc)
                .err()
                .unwrap_or_else(|| panic!("accepted: {doc}"));
            assert!(err.to_string().contains(key), "{key}: {err}");
        };
        refused(
            endpoint(None, "a") + &endpoint(Some("crm"), "b"),
            "notify.endpoints[0].name",
        );
        refused(
            endpoint(Some("app"), "a") + &endpoint(Some("app"), "b"),
            "notify.endpoints[1].name",
        );
        refused(
            endpoint(Some("app"), "a") + &endpoint(Some("crm"), "a"),
            "notify.endpoints[1].url",
        );
        let long = "a".repeat(ENDPOINT_NAME_MAX + 1);
        for bad in ["", "App", "-app", "a b", "app_1", "ünï", long.as_str()] {
            refused(endpoint(Some(bad), "a"), "notify.endpoints[0].name");
        }
    }

    #[test]
    fn the_api_token_file_defaults_to_beside_the_database() {
        let s = Settings::from_toml("[database]\npath = \"/srv/bh/state.db\"\n").unwrap();
        assert_eq!(s.api.token_file, Path::new("/srv/bh/api-token"));
        assert!(s.api.token_file_generated && s.api.token.is_none());
        let err = Settings::from_toml("[api]\nlisten = \"0.0.0.0:8088\"\n").unwrap_err();
        assert!(err.to_string().contains("api.listen"), "{err}");
        let err = Settings::from_toml("[api]\ntoken_file = \"/nonexistent/t\"\n").unwrap_err();
        assert!(err.to_string().contains("api.token_file"), "{err}");
    }
}
