//! The monitoring shipped beside the daemon: the alert rules (`deploy/prometheus/alerts.yml`)
//! and their unit tests, the Grafana dashboard, and the `/metrics` they read.
//!
//! promtool checks the rules, runs their unit tests and lints a live scrape; every metric
//! name the rules and the dashboard use must be one a live daemon exports, so renaming a
//! metric in the code fails here.
//!
//! # When there is no promtool
//! `PROMTOOL` names the binary (`.ci/run` extracts it from Debian's `prometheus` package),
//! else `promtool` on the `PATH`. Without one a promtool test is skipped with a note on
//! stderr, unless `BASIQ_HEALTH_REQUIRE_TOOLS` is set (`.ci/run` sets it): then it fails.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::policy::Trigger;
use basiq_health::work::cdr::Witness;
use serde_json::Value;

use crate::app::*;
use crate::helpers::*;

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
const ALERTS_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/alerts_test.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/basiq-health.json"
);
const RUNBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md");

/// Set (to anything) to make a missing promtool fail the tests instead of skipping them.
const REQUIRE_TOOLS: &str = "BASIQ_HEALTH_REQUIRE_TOOLS";

/// promtool: `PROMTOOL`, else on the `PATH`; `None` (after a note) when there is none and
/// [`REQUIRE_TOOLS`] is unset.
fn promtool() -> Option<PathBuf> {
    let named = std::env::var_os("PROMTOOL").map(PathBuf::from);
    let found = named.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("promtool"))
                .find(|p| p.is_file())
        })
    });
    match found {
        Some(p) if p.is_file() => Some(p),
        _ if std::env::var_os(REQUIRE_TOOLS).is_some() => {
            panic!(
                "promtool not found (set PROMTOOL or put it on the PATH; {REQUIRE_TOOLS} is set)"
            )
        }
        _ => {
            eprintln!("skipped: promtool not found (set PROMTOOL, or {REQUIRE_TOOLS}=1 to fail)");
            None
        }
    }
}

/// Runs promtool with `args` (and `stdin`), failing with its output unless it exits 0.
fn run_promtool(promtool: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("stdin written");
        }
    }
    let out = child.wait_with_output().expect("promtool ends");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// A live `/metrics` from a serving daemon on the simulator, with a sample in every family:
/// one sweep of its users, a manual refresh asked of three connections, one CDR witness
/// poll, an event in the inbox and a notification pending (these two written as the store
/// would, the receiver and the endpoints being tested elsewhere).
async fn live_scrape() -> String {
    let t = TestApp::builder().users(10).spawn().await;
    let mut settings = t.settings_with("");
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let cdr = settings.cdr.clone();
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().expect("the API listens"));
    let users = sim_users(t.sim());
    let context = app.context().clone();
    context.add_users(&users).await.unwrap();
    sweep_users(&context, &users).await;
    let pool = context.store().write_pool().clone();
    let some: Vec<(String, String)> = sqlx::query_as(
        "SELECT user_id, connection_id FROM connections ORDER BY connection_id LIMIT 3",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (user, connection) in &some {
        app.refresher()
            .request(
                &UserId::parse(user).unwrap(),
                &ConnectionId::parse(connection).unwrap(),
                Trigger::Manual,
                false,
                false,
            )
            .await
            .unwrap();
    }
    Witness::new(context.clone(), cdr)
        .expect("the CDR client builds")
        .poll(true)
        .await
        .unwrap();
    let now = context.clock().now().timestamp();
    for statement in [
        "INSERT INTO inbox (delivery_id, event_type, source, body, received_at)
         VALUES ('msg_monitoring', 'connection.invalidated', 'webhook', '{}', ?1)",
        "INSERT INTO outbox (webhook_id, event_type, order_key, payload, created_at)
         VALUES ('msg_out_monitoring', 'connection.health_changed', 'u', '{}', ?1 - 600)",
        "INSERT INTO deliveries (endpoint, outbox_id, order_key, state, failures, next_at, deadline)
         SELECT 'default', id, 'u', 'pending', 1, ?1 + 86400, ?1 + 86400 FROM outbox
          WHERE webhook_id = 'msg_out_monitoring'",
    ] {
        sqlx::query(statement).bind(now).execute(&pool).await.unwrap();
    }
    let daemon = Daemon::start(app);
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    daemon.stop().await;
    text
}

/// The OpenMetrics text `/metrics` serves, as the classic Prometheus text `promtool check
/// metrics` reads (it knows no other): a counter family `x` is named `x_total` there, and
/// the `# EOF` and `_created` lines have no classic form. What a Prometheus server stores
/// from either is the same.
fn classic_text(open_metrics: &str) -> String {
    let counters: BTreeSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE ", "# UNIT "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None if counters
                .iter()
                .any(|c| line.starts_with(&format!("{c}_created"))) =>
            {
                continue;
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Every sample name a scrape can hold: each family's name (from its `# TYPE` line) with
/// the suffixes of its type.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
        names.insert(name.to_owned());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    names
}

/// Every `basiq_health_…` metric name in `text` (recording rules, `basiq_health:…`, are
/// not metrics the daemon exports and are not matched).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("basiq_health_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        if !before.is_some_and(|c| is_name(c) || c == ':') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("the dashboard is there");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every string under a key named `key`, anywhere in `value`.
fn strings_under(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key => out.push(s.clone()),
                    _ => strings_under(v, key, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| strings_under(v, key, out)),
        _ => {}
    }
}

/// The alert names in the rules file (`- alert: Name` lines).
fn alert_names() -> Vec<String> {
    std::fs::read_to_string(ALERTS)
        .expect("the rules are there")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let Some(promtool) = promtool() else { return };
    let out = run_promtool(&promtool, &["check", "rules", ALERTS], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_alert_rules_unit_tests_pass_promtool_test_rules() {
    let Some(promtool) = promtool() else { return };
    let out = run_promtool(&promtool, &["test", "rules", ALERTS_TEST], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_case_that_fires_and_one_that_does_not_and_a_runbook_section() {
    let tests = std::fs::read_to_string(ALERTS_TEST).unwrap();
    let rules = std::fs::read_to_string(ALERTS).unwrap();
    let runbook = std::fs::read_to_string(RUNBOOK).expect("the runbook is there");
    let names = alert_names();
    assert!(names.len() >= 12, "{names:?}");
    for name in &names {
        let cases = tests
            .split("- eval_time:")
            .skip(1)
            .filter(|case| case.contains(&format!("alertname: {name}\n")))
            .collect::<Vec<_>>();
        assert!(
            cases.iter().any(|c| c.contains("exp_labels")),
            "{name}: no case where it fires"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name}: no case where it does not fire"
        );
        let anchor = name.to_lowercase();
        assert!(
            runbook.contains(&format!("## {name}")),
            "{name}: no runbook section"
        );
        assert!(
            rules.contains(&format!("docs/runbook.md#{anchor}")),
            "{name}: no runbook_url to #{anchor}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_passes_promtool_check_metrics_and_holds_every_name_the_rules_and_dashboard_use()
 {
    let text = live_scrape().await;
    let exported = exported_names(&text);
    let mut used = metric_names_in(&std::fs::read_to_string(ALERTS).unwrap());
    let board = dashboard();
    let mut exprs = Vec::new();
    strings_under(&board, "expr", &mut exprs);
    strings_under(&board, "query", &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    for e in &exprs {
        used.extend(metric_names_in(e));
    }
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by the rules or the dashboard but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The pending notification made 10 minutes ago is the oldest.
    let oldest = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("basiq_health_notify_oldest_pending_seconds{endpoint=\"default\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the oldest pending notification's age");
    assert!((600.0..610.0).contains(&oldest), "{oldest}");
    let Some(promtool) = promtool() else { return };
    let classic = classic_text(&text);
    let out = run_promtool(&promtool, &["check", "metrics"], Some(&classic));
    assert!(out.trim().is_empty(), "promtool check metrics: {out}");
}

#[test]
fn the_dashboard_has_the_variables_and_a_panel_for_each_view() {
    let board = dashboard();
    assert!(board["schemaVersion"].as_i64().unwrap() >= 36);
    let vars = board["templating"]["list"].as_array().expect("variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["institution", "method"] {
        let v = var(name);
        assert_eq!(v["type"], "query");
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        assert!(query.starts_with("label_values("), "{name}: {query}");
    }
    let mut titles = Vec::new();
    strings_under(&board, "title", &mut titles);
    for wanted in [
        "Sweep progress",
        "Health per bank",
        "Who must act",
        "Outages by source",
        "Refreshes by trigger",
        "Refresh denials",
        "Cap use",
        "Basiq requests",
        "Basiq errors",
        "Notification delivery",
        "Notification lag",
        "Webhooks in",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(wanted)),
            "no panel {wanted:?} in {titles:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_readings_follow_the_clock_the_sweep_and_the_store() {
    let t = TestApp::builder().users(4).driven().spawn().await;
    let mut settings = t.settings_with("");
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().expect("the API listens"));
    let users = sim_users(t.sim());
    let context = app.context().clone();
    context.add_users(&users).await.unwrap();
    let daemon = Daemon::start(app);
    let scrape = || async {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        move |series: &str| -> Option<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        }
    };
    // Registered, never swept: due now, not behind.
    let m = scrape().await;
    assert_eq!(m("basiq_health_sweep_lag_seconds"), Some(0.0));
    assert_eq!(m("basiq_health_worker_stalled"), Some(0.0));
    assert_eq!(m("basiq_health_write_failing"), Some(0.0));
    assert_eq!(m("basiq_health_write_failures_total"), Some(0.0));

    sweep_users(&context, &users).await;
    let m = scrape().await;
    let store = t.store().await;
    let tallies = store.tallies().await.unwrap();
    let watched = tallies.connections_total();
    assert!(watched > 0);
    assert_eq!(m("basiq_health_connections_stale"), Some(0.0));
    // Per connector, the tallies add up to the connections per health.
    let healthy: f64 = store
        .connector_tallies()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.health == "healthy")
        .map(|c| {
            let series = format!(
                "basiq_health_connector_connections{{institution_id=\"{}\",method=\"{}\",health=\"healthy\"}}",
                c.institution_id, c.method
            );
            let value = m(&series).unwrap_or_else(|| panic!("{series}"));
            assert_eq!(value, c.connections as f64);
            value
        })
        .sum();
    assert_eq!(
        Some(healthy),
        m("basiq_health_connections{health=\"healthy\"}")
    );
    // An open outage is as old as the clock says.
    let outages = store.open_outages().await.unwrap();
    let outage = outages
        .first()
        .expect("the simulator has a connector in outage");
    let age = |m: &dyn Fn(&str) -> Option<f64>| {
        m(&format!(
            "basiq_health_outage_open_seconds{{institution_id=\"{}\",method=\"{}\",source=\"{}\"}}",
            outage.institution_id,
            outage.method,
            outage.source.as_str()
        ))
        .expect("the outage's age")
    };
    let before = age(&m);

    // 27 hours later, nothing swept: every connection is stale, every user overdue.
    t.clock().advance(std::time::Duration::from_secs(27 * 3600));
    let m = scrape().await;
    assert_eq!(m("basiq_health_connections_stale"), Some(watched as f64));
    let due = store.earliest_due().await.unwrap().expect("users");
    let lag = (t.clock().now() - due).num_seconds() as f64;
    assert!(lag > 0.0);
    let got = m("basiq_health_sweep_lag_seconds").unwrap();
    assert!((got - lag).abs() <= 2.0, "lag {got}, expected {lag}");
    assert!(
        age(&m) - before >= 27.0 * 3600.0 - 2.0,
        "the outage aged 27 h"
    );
    // No tick and no progress for far more than three tick intervals: stalled.
    assert_eq!(m("basiq_health_worker_stalled"), Some(1.0));
    daemon.stop().await;
}
