//! The API described: `docs/openapi.json` is the description the handlers generate, the
//! daemon serves it (with the token), every route the routers answer is in it, and the
//! live daemon keeps to it (`openapi-spec-validator`, then `schemathesis` against a daemon
//! on the simulator).
//!
//! Regenerate the committed file with
//! `BASIQ_HEALTH_WRITE_OPENAPI=1 cargo test --test it openapi::`.
//!
//! # When the Python tools are missing
//! The live check is skipped with a note on stderr, unless `BASIQ_HEALTH_REQUIRE_TOOLS` is
//! set (`.ci/run` sets it and installs them): then it fails.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use secrecy::ExposeSecret;

use crate::app::TestApp;
use crate::helpers::{Daemon, api_client, sim_users};

/// Set to write `docs/openapi.json` instead of comparing it.
const WRITE: &str = "BASIQ_HEALTH_WRITE_OPENAPI";

/// Set (to anything) to make missing Python tools fail the live check instead of skipping it.
const REQUIRE_TOOLS: &str = "BASIQ_HEALTH_REQUIRE_TOOLS";

/// The most the schemathesis run may take, whatever it is told.
const SCHEMATHESIS_TIMEOUT: Duration = Duration::from_secs(180);

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")
}

fn committed() -> String {
    std::fs::read_to_string(committed_path()).unwrap_or_default()
}

#[test]
fn docs_openapi_json_is_the_description_the_handlers_generate() {
    let generated = basiq_health::api::openapi_text();
    if std::env::var_os(WRITE).is_some() {
        std::fs::write(committed_path(), &generated).unwrap();
        return;
    }
    assert!(
        committed() == generated,
        "docs/openapi.json differs from the description the handlers generate; \
         regenerate it with `{WRITE}=1 cargo test --test it openapi::` and commit it"
    );
}

#[test]
fn the_description_is_openapi_3_1_with_every_error_shape() {
    let spec: serde_json::Value = serde_json::from_str(&basiq_health::api::openapi_text()).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(
        spec["components"]["schemas"]["ErrorBody"]["required"],
        serde_json::json!(["error"])
    );
    // Every `/v1` route but the receiver's needs the bearer token and says so: 401.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            if path.starts_with("/v1/") && path != "/v1/basiq/webhook" {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{method} {path}"
                );
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
            for (code, response) in responses {
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    // A 413 comes from the body limit before any handler, with no body.
                    if code != "413" && path != "/healthz" {
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
    }
}

/// The paths in axum's route table of `router`, as its `Debug` shows it: axum has no other
/// way to list them. A change of that format fails here, not silently.
fn routed_paths(router: &impl std::fmt::Debug) -> BTreeSet<String> {
    let text = format!("{router:?}");
    let start = text
        .find("Node { paths: {")
        .expect("axum's Router Debug shows its route table (did axum change it?)");
    // `RouteId(0): "/v1/users", ...}`: a path may hold braces, never a quote.
    let mut rest = &text[start + "Node { paths: {".len()..];
    let mut paths = BTreeSet::new();
    while let Some(at) = rest.find(['"', '}']) {
        if rest[at..].starts_with('}') {
            break;
        }
        let path = &rest[at + 1..];
        let end = path.find('"').expect("a quoted path ends");
        paths.insert(path[..end].to_owned());
        rest = &path[end + 1..];
    }
    paths
}

#[test]
fn every_route_the_routers_answer_is_described() {
    let spec = basiq_health::api::openapi();
    let described: BTreeSet<String> = spec.paths.paths.keys().cloned().collect();
    let mut routed = routed_paths(&basiq_health::api::routed());
    routed.extend(routed_paths(&basiq_health::events::receiver::routed(1024)));
    assert!(routed.contains("/v1/users/{id}/login"), "{routed:?}");
    assert_eq!(
        routed, described,
        "the routes answered and the routes described differ: describe the new route \
         with #[utoipa::path] and mount it with routes!(...)"
    );
}

#[tokio::test]
async fn the_served_description_is_the_committed_one_and_needs_the_token() {
    let t = TestApp::quick().await;
    let mut settings = t.settings();
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().unwrap());
    let api = api_client(&app);
    let daemon = Daemon::start(app);

    let r = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bearer token"));

    let r = api
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), basiq_health::api::openapi_text());
    if std::env::var_os(WRITE).is_none() {
        assert_eq!(
            basiq_health::api::openapi_text(),
            committed(),
            "regenerate docs/openapi.json: `{WRITE}=1 cargo test --test it openapi::`"
        );
    }
    daemon.stop().await;
}

/// `program` runs (`--version`), or the check is skipped (false) unless the tools are
/// required.
fn tool_present(program: &str, args: &[&str]) -> bool {
    let ran = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ran {
        assert!(
            std::env::var_os(REQUIRE_TOOLS).is_none(),
            "{program} is required ({REQUIRE_TOOLS} is set): \
             python3 -m pip install --user openapi-spec-validator schemathesis"
        );
        eprintln!("skipped: {program} is not installed (python3 -m pip install --user {program})");
    }
    ran
}

/// `command`'s output, killed after `timeout`.
fn run_bounded(mut command: Command, timeout: Duration) -> (Option<i32>, String) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    (
        code,
        std::fs::read_to_string(log.path()).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_validates_and_schemathesis_finds_no_5xx_and_no_schema_break() {
    if !tool_present("openapi-spec-validator", &["--version"])
        || !tool_present("schemathesis", &["--version"])
    {
        return;
    }
    let spec = committed_path();
    let (code, out) = run_bounded(
        {
            let mut c = Command::new("openapi-spec-validator");
            c.arg(&spec);
            c
        },
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "openapi-spec-validator: {out}");

    // A daemon on the simulator with its users registered: some answers have connections.
    let t = TestApp::spawn().await;
    let mut settings = t.settings();
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().unwrap());
    let token = app.api_token().unwrap().expose_secret().to_owned();
    let api = api_client(&app);
    let daemon = Daemon::start(app);
    for user in sim_users(t.sim()).iter().take(3) {
        let r = api
            .post(format!("{base}/v1/users/{user}/login"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    let reports = tempfile::tempdir().unwrap();
    let mut st = Command::new("schemathesis");
    st.arg("run")
        .arg(&spec)
        .args(["--url", &base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        // The receiver listens on its own address (`webhooks.listen`), not this one.
        .args(["--exclude-tag", "webhooks"])
        .args(["--max-examples", "50", "--seed", "26"])
        .args(["--workers", "2", "--request-timeout", "10"])
        .args(["--report-dir"])
        .arg(reports.path())
        .env("NO_COLOR", "1")
        // Its cache (`.schemathesis/`) goes there too, not into the worktree.
        .current_dir(reports.path());
    let started = Instant::now();
    let (code, out) = tokio::task::spawn_blocking(move || run_bounded(st, SCHEMATHESIS_TIMEOUT))
        .await
        .unwrap();
    let tail: Vec<&str> = out.lines().rev().take(12).collect::<Vec<_>>();
    eprintln!(
        "schemathesis ran {:.1?}:\n{}",
        started.elapsed(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    daemon.stop().await;
    assert_eq!(code, Some(0), "schemathesis found problems:\n{out}");
}
