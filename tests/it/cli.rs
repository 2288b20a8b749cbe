//! The binary from the outside: exit codes, messages, the simulator command.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::app::TestApp;

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basiq-health"));
    for (key, _) in std::env::vars() {
        if key.starts_with("BASIQ_HEALTH")
            || key == "CREDENTIALS_DIRECTORY"
            || key == "STATE_DIRECTORY"
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

fn example_config() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/basiq-health.toml"
    ))
}

fn check(config: &Path, envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = bin()
        .arg("--config")
        .arg(config)
        .args(["config", "check"])
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("basiq-health.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_check_accepts_the_example_and_redacts_the_key() {
    let (code, stdout, stderr) = check(
        example_config(),
        &[("BASIQ_HEALTH_API_KEY", "c2VjcmV0LWNhbmFyeQ==")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("base_url = \"https://au-api.basiq.io/\""),
        "{stdout}"
    );
    assert!(stdout.contains("[redacted]"));
    assert!(!stdout.contains("c2VjcmV0LWNhbmFyeQ==") && !stderr.contains("c2VjcmV0LWNhbmFyeQ=="));
}

#[test]
fn config_check_rejects_an_unknown_key_naming_it() {
    let t = TestApp::offline();
    let dir = t.dir();
    let path = write_config(dir, "[basiq]\ntimeuot = \"5s\"\n");
    let (code, _, stderr) = check(&path, &[]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains("timeuot") && stderr.contains("basiq"),
        "{stderr}"
    );
}

#[test]
fn config_check_rejects_a_bad_duration_naming_the_key() {
    let t = TestApp::offline();
    let dir = t.dir();
    let path = write_config(dir, "[basiq]\ntimeout = \"soon\"\n");
    let (code, _, stderr) = check(&path, &[]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains("basiq.timeout") && stderr.contains("soon"),
        "{stderr}"
    );
}

#[test]
fn config_check_refuses_plain_http_to_a_remote_host() {
    let t = TestApp::offline();
    let dir = t.dir();
    let path = write_config(dir, "[basiq]\nbase_url = \"http://au-api.basiq.io\"\n");
    let (code, _, stderr) = check(&path, &[]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains("basiq.base_url") && stderr.contains("https"),
        "{stderr}"
    );

    let path = write_config(dir, "[basiq]\nbase_url = \"http://127.0.0.1:8787\"\n");
    assert_eq!(check(&path, &[]).0, 0, "loopback http is allowed");
}

#[test]
fn environment_overrides_win_and_are_validated() {
    let (code, stdout, _) = check(
        example_config(),
        &[
            ("BASIQ_HEALTH__DATABASE__PATH", "/tmp/elsewhere.db"),
            ("BASIQ_HEALTH__BASIQ__MAX_ATTEMPTS", "5"),
        ],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("path = \"/tmp/elsewhere.db\""), "{stdout}");
    assert!(stdout.contains("max_attempts = 5"), "{stdout}");
    let (code, _, stderr) = check(
        example_config(),
        &[("BASIQ_HEALTH__BASIQ__TIMEOUT", "later")],
    );
    assert_eq!(code, 78);
    assert!(stderr.contains("basiq.timeout"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let (code, _, stderr) = check(Path::new("/nonexistent/basiq-health.toml"), &[]);
    assert_eq!(code, 78);
    assert!(
        stderr.contains("/nonexistent/basiq-health.toml"),
        "{stderr}"
    );
}

#[test]
fn a_key_file_readable_by_others_draws_a_chmod_warning() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestApp::offline();
    let dir = t.dir();
    let key = t.path("api-key");
    std::fs::write(&key, "a2V5\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = write_config(
        dir,
        &format!("[basiq]\napi_key_file = {:?}\n", key.display().to_string()),
    );
    let (code, stdout, stderr) = check(&path, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("chmod 600") && stderr.contains("api-key"),
        "{stderr}"
    );
    assert!(!stdout.contains("a2V5") && !stderr.contains("a2V5"));
}

/// Starts `basiq-health simulate` on port 0 and reads the address and key it prints.
pub struct SimProcess {
    pub child: std::process::Child,
    pub base_url: String,
    pub api_key: String,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_simulator(extra: &[&str]) -> SimProcess {
    let mut child = bin()
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base_url, mut api_key) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("simulator listening on ") {
            base_url = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("api key: ") {
            api_key = Some(rest.trim().to_owned());
        }
        if base_url.is_some() && api_key.is_some() {
            break;
        }
    }
    // Keep reading: a closed pipe would fail the simulator's next line of output.
    std::thread::spawn(move || for _ in lines {});
    SimProcess {
        child,
        base_url: base_url.expect("the address is printed"),
        api_key: api_key.expect("the key is printed"),
    }
}

fn keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn simulate_serves_connections_and_jobs_in_basiq_shapes_to_the_printed_key() {
    let t = TestApp::offline();
    let users_file = t.path("users.txt");
    let sim = spawn_simulator(&[
        "--users",
        "12",
        "--seed",
        "3",
        "--users-file",
        users_file.to_str().unwrap(),
    ]);
    let users: Vec<String> = std::fs::read_to_string(&users_file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(users.len(), 12);

    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/token", sim.base_url))
        .header("Authorization", format!("Basic {}", sim.api_key))
        .header("basiq-version", "3.0")
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys(&token), ["access_token", "expires_in", "token_type"]);
    let bearer = token["access_token"].as_str().unwrap().to_owned();

    let get = |path: String| {
        let http = http.clone();
        let bearer = bearer.clone();
        async move {
            let response = http.get(path).bearer_auth(bearer).send().await.unwrap();
            assert!(response.status().is_success());
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let connections = get(format!("{}/users/{}/connections", sim.base_url, users[0])).await;
    assert_eq!(connections["type"], "list");
    assert!(connections["links"]["self"].is_string());
    let first = &connections["data"][0];
    for key in [
        "type",
        "id",
        "status",
        "method",
        "createdDate",
        "institution",
        "links",
    ] {
        assert!(first.get(key).is_some(), "connection has `{key}`: {first}");
    }
    assert_eq!(first["type"], "connection");
    assert_eq!(first["institution"]["type"], "institution");

    let mut saw_job = false;
    for user in &users {
        let jobs = get(format!("{}/users/{}/jobs", sim.base_url, user)).await;
        assert_eq!(jobs["type"], "list");
        assert!(jobs["size"].is_u64(), "jobs list has `size`: {jobs}");
        if let Some(job) = jobs["data"].as_array().and_then(|d| d.first()) {
            for key in [
                "type",
                "id",
                "created",
                "updated",
                "steps",
                "institution",
                "links",
            ] {
                assert!(job.get(key).is_some(), "job has `{key}`: {job}");
            }
            let step = &job["steps"][0];
            assert_eq!(keys(step), ["result", "status", "title"]);
            saw_job = true;
        }
    }
    assert!(saw_job);

    let connectors = get(format!("{}/connectors", sim.base_url)).await;
    assert!(connectors["totalCount"].is_u64());
    assert_eq!(connectors["data"][0]["type"], "connector");

    let refused = http
        .get(format!("{}/users/{}/connections", sim.base_url, users[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "no bearer, no data");
}

#[test]
fn simulate_refuses_a_non_loopback_listen_address_unless_told() {
    let out = bin()
        .args(["simulate", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0:0"), "{err}");
    assert!(err.contains("--allow-non-loopback"), "{err}");
    assert!(out.stdout.is_empty(), "nothing was served");
}

/// Every numeric key, through the real binary: out-of-range and extreme values (the
/// largest integers, negatives, durations that overflow) exit 78, never a panic (101), and
/// a value the parser reads names its key.
#[test]
fn config_check_refuses_out_of_range_and_extreme_values_for_every_numeric_key() {
    use basiq_health::settings::{RANGES, Range};
    let t = TestApp::offline();
    let dir = t.dir();
    let mut runs = 0;
    for (key, range) in RANGES {
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
        let named: Vec<String> = match range {
            Range::Count(_, max) => vec![
                (max + 1).to_string(),
                "-1".into(),
                "4294967295".into(),
                "4294967296".into(),
                i64::MAX.to_string(),
                i64::MIN.to_string(),
            ],
            Range::Span(..) => vec![
                "\"18446744073709551615s\"".into(),
                "\"10000000000000d\"".into(),
                "\"-1s\"".into(),
                "\"\"".into(),
                "\"1 fortnight\"".into(),
            ],
        };
        // Beyond what TOML or humantime can read at all: refused, the key not always named.
        let unreadable: Vec<String> = match range {
            Range::Count(..) => vec![
                "9223372036854775808".into(),
                "1e309".into(),
                "\"lots\"".into(),
            ],
            Range::Span(..) => vec![
                "\"99999999999999999999999999h\"".into(),
                "1e309".into(),
                "5".into(),
            ],
        };
        for (value, must_name) in named
            .iter()
            .map(|v| (v, true))
            .chain(unreadable.iter().map(|v| (v, false)))
        {
            let doc = if section.is_empty() {
                format!("{name} = {value}\n")
            } else {
                format!("[{section}]\n{name} = {value}\n")
            };
            let path = write_config(dir, &doc);
            let (code, _, stderr) = check(&path, &[]);
            runs += 1;
            assert_eq!(code, 78, "{key} = {value}: exit {code}\n{stderr}");
            assert!(!stderr.contains("panicked"), "{key} = {value}: {stderr}");
            if must_name {
                assert!(stderr.contains(name), "{key} = {value}: {stderr}");
            }
        }
        // The environment takes the same route.
        let env_key = format!("BASIQ_HEALTH__{}", key.replace('.', "__").to_uppercase());
        let (code, _, stderr) = check(example_config(), &[(env_key.as_str(), "99999999999999")]);
        assert_eq!(code, 78, "{env_key}=99999999999999: {stderr}");
    }
    assert!(runs > 250, "{runs} runs");
}

#[test]
fn config_check_prints_every_key_with_its_value_and_redacts_a_password_in_base_url() {
    let t = TestApp::offline();
    let dir = t.dir();
    let path = write_config(
        dir,
        "[basiq]\nbase_url = \"https://u:pw-canary-77@proxy.example/basiq/\"\n\
         [database]\npath = \"/tmp/bh-check/state.db\"\nretain_days = 31\nbusy_timeout = \"3s\"\n",
    );
    let (code, stdout, stderr) = check(&path, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("pw-canary-77") && !stderr.contains("pw-canary-77"));
    assert!(stdout.contains("://[redacted]@proxy.example"), "{stdout}");
    // The keys the hand-written list used to omit.
    assert!(stdout.contains("retain_days = 31"), "{stdout}");
    assert!(stdout.contains("busy_timeout = \"3s\""), "{stdout}");
    // Where the local API token lives is said.
    assert!(
        stdout.contains("token_file = \"/tmp/bh-check/api-token\""),
        "{stdout}"
    );
    assert!(stderr.contains("/tmp/bh-check/api-token"), "{stderr}");
}

#[test]
fn an_integer_key_from_the_environment_is_read_only_as_a_whole_number() {
    for bad in ["1.5", "2.0", "true", "+3", " 3"] {
        let (code, _, stderr) = check(
            example_config(),
            &[("BASIQ_HEALTH__BASIQ__MAX_ATTEMPTS", bad)],
        );
        assert_eq!(code, 78, "max_attempts={bad:?}: {stderr}");
        assert!(stderr.contains("basiq.max_attempts"), "{stderr}");
    }
    let (code, stdout, stderr) = check(
        example_config(),
        &[("BASIQ_HEALTH__SWEEP__CONCURRENCY", "12")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("concurrency = 12"), "{stdout}");
}

/// A Standard Webhooks secret of 24 bytes.
const GOOD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secret_file(dir: &tempfile::TempDir, name: &str, text: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

#[test]
fn an_empty_or_short_webhook_secret_is_refused_naming_its_key_and_line_never_its_value() {
    let t = TestApp::offline();
    let dir = t.dir();
    let good = secret_file(dir, "good", &format!("{GOOD_SECRET}\n"), 0o600);
    // In: the second line of the file is `whsec_` alone (an empty HMAC key).
    let basiq = secret_file(dir, "basiq", &format!("{GOOD_SECRET}\nwhsec_\n"), 0o600);
    let path = write_config(
        dir,
        &format!("[webhooks]\nlisten = \"127.0.0.1:8089\"\nsecret_file = {basiq:?}\n"),
    );
    let (code, stdout, stderr) = check(&path, &[]);
    assert_eq!(code, 78, "{stdout}{stderr}");
    assert!(
        stderr.contains("webhooks.secret_file") && stderr.contains("line 2"),
        "{stderr}"
    );
    assert!(stderr.contains("24"), "says the least length: {stderr}");
    // Out: 23 bytes.
    let short = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVlc=";
    let app = secret_file(dir, "app", &format!("{short}\n"), 0o600);
    let path = write_config(
        dir,
        &format!(
            "[[notify.endpoints]]\nurl = \"https://app.example.com/hook\"\nsecret_file = {app:?}\n"
        ),
    );
    let (code, stdout, stderr) = check(&path, &[]);
    assert_eq!(code, 78, "{stdout}{stderr}");
    assert!(
        stderr.contains("notify.endpoints[0].secret_file"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("QUJD"),
        "the value is never shown: {stderr}"
    );
    // The systemd credentials: in and out.
    let creds = t.path("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("basiq-webhook-secret"), "whsec_\n").unwrap();
    std::fs::write(creds.join("notify-secret"), "whsec_\n").unwrap();
    let creds_env = creds.display().to_string();
    let path = write_config(dir, "[webhooks]\nlisten = \"127.0.0.1:8089\"\n");
    let (code, _, stderr) = check(&path, &[("CREDENTIALS_DIRECTORY", &creds_env)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("basiq-webhook-secret") && stderr.contains("line 1"),
        "{stderr}"
    );
    let path = write_config(
        dir,
        &format!(
            "[webhooks]\nlisten = \"127.0.0.1:8089\"\nsecret_file = {good:?}\n\
             [[notify.endpoints]]\nurl = \"https://app.example.com/hook\"\nsecret_credential = \"notify-secret\"\n"
        ),
    );
    let (code, _, stderr) = check(&path, &[("CREDENTIALS_DIRECTORY", &creds_env)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("notify.endpoints[0].secret_credential"),
        "{stderr}"
    );
}

#[test]
fn every_secret_file_readable_by_others_is_warned_about_and_a_loose_api_token_file_is_refused_off_loopback()
 {
    let t = TestApp::offline();
    let dir = t.dir();
    let basiq = secret_file(dir, "basiq", &format!("{GOOD_SECRET}\n"), 0o640);
    let app = secret_file(dir, "app", &format!("{GOOD_SECRET}\n"), 0o604);
    let token = secret_file(dir, "token", "token-canary-5150\n", 0o644);
    let config = |listen: &str| {
        write_config(
            dir,
            &format!(
                "[api]\nlisten = {listen:?}\ntoken_file = {token:?}\n\
                 [webhooks]\nlisten = \"127.0.0.1:8089\"\nsecret_file = {basiq:?}\n\
                 [[notify.endpoints]]\nurl = \"https://app.example.com/hook\"\nsecret_file = {app:?}\n"
            ),
        )
    };
    let key = [("BASIQ_HEALTH_API_KEY", "a2V5LWNhbmFyeQ==")];
    let (code, stdout, stderr) = check(&config("127.0.0.1:8088"), &key);
    assert_eq!(code, 0, "{stderr}");
    for (key, file) in [
        ("webhooks.secret_file", &basiq),
        ("notify.endpoints[0].secret_file", &app),
        ("api.token_file", &token),
    ] {
        let warning = stderr
            .lines()
            .find(|l| l.starts_with("warning") && l.contains(key))
            .unwrap_or_else(|| panic!("no warning about {key}: {stderr}"));
        assert!(warning.contains(&format!("chmod 600 {file}")), "{warning}");
    }
    assert!(!stdout.contains("token-canary-5150") && !stderr.contains("token-canary-5150"));
    // Off loopback, a token others can read is refused.
    let (code, _, stderr) = check(&config("0.0.0.0:8088"), &key);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("api.token_file"), "{stderr}");
    assert!(!stderr.contains("token-canary-5150"), "{stderr}");
    // Private files: no warning, and the exposed API starts.
    for file in [&basiq, &app, &token] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, _, stderr) = check(&config("0.0.0.0:8088"), &key);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn notify_retry_takes_only_a_delivery_id_or_a_webhook_id() {
    let t = TestApp::offline();
    let dir = t.dir();
    let db = t.db();
    let path = write_config(
        dir,
        &format!(
            "[database]\npath = {:?}\n[api]\nlisten = \"\"\n",
            db.display().to_string()
        ),
    );
    let retry = |id: &str| {
        let out = bin()
            .arg("--config")
            .arg(&path)
            .args(["notify", "retry", "--", id])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for bad in [
        "../../etc",
        "",
        "0",
        "-1",
        "1.5",
        " 1",
        "9223372036854775808",
        "msg_",
        "msg_nothing",
        "msg_0123456789abcdef0123456789abcde",
        "msg_0123456789abcdef0123456789abcdef0",
        "msg_0123456789ABCDEF0123456789ABCDEF",
        "MSG_0123456789abcdef0123456789abcdef",
    ] {
        let (code, stderr) = retry(bad);
        assert_eq!(code, 2, "notify retry {bad:?}: {stderr}");
        assert!(
            stderr.contains("delivery id") && stderr.contains("msg_"),
            "notify retry {bad:?} states the rule: {stderr}"
        );
        assert!(!db.exists(), "{bad:?}: nothing is opened");
    }
    // Well formed, and none to retry: exit 1.
    for none in ["7", "msg_0123456789abcdef0123456789abcdef"] {
        let (code, stderr) = retry(none);
        assert_eq!(code, 1, "notify retry {none:?}: {stderr}");
    }
}
