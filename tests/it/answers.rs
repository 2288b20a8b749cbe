//! What the world sends: one unreadable item among good ones, 404s that are not Basiq's,
//! error envelopes without `data`, connectors without logos. The sweep keeps what it can
//! read, never drops a user on a gateway's word, and says what it skipped.

use std::process::Output;

use basiq_health::domain::{ConnectionId, JobId, UserId};
use basiq_sim::{Fault, ItemFault, Outcome, Route, RunningSim, ScriptedConnection, ScriptedJob};
use chrono::{Duration, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::cli::bin;
use crate::helpers::*;

const USER: &str = "user-answers";

/// A user with `n` healthy web connections (`conn-0`, ...) and `jobs` succeeded jobs on
/// `conn-0` (`job-0`, ... created a minute apart, newest last).
fn scripted(sim: &RunningSim, n: usize, jobs: usize) -> (UserId, Vec<ConnectionId>, Vec<JobId>) {
    let now = Utc::now();
    sim.sim.add_user(USER);
    let mut conns = Vec::new();
    for i in 0..n {
        let mut c = ScriptedConnection::new("AU00004", "web");
        c.id = format!("conn-{i}");
        sim.sim.add_connection(USER, c);
        conns.push(ConnectionId::parse(format!("conn-{i}")).unwrap());
    }
    let mut job_ids = Vec::new();
    for i in 0..jobs {
        let minutes = i64::try_from(jobs - i).unwrap();
        sim.sim.add_job(
            USER,
            ScriptedJob {
                id: Some(format!("job-{i}")),
                connection_id: "conn-0".into(),
                created: now - Duration::minutes(10 * minutes),
                updated: now - Duration::minutes(10 * minutes - 1),
                outcome: Outcome::Success,
                running: false,
                with_source: true,
            },
        );
        job_ids.push(JobId::parse(format!("job-{i}")).unwrap());
    }
    (UserId::parse(USER).unwrap(), conns, job_ids)
}

async fn sweep(sweeper: &Context, user: &UserId) -> basiq_health::store::SweepCounts {
    sweeper
        .run_pass(
            basiq_health::work::PassTrigger::Command,
            Some(vec![user.clone()]),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
}

/// `/metrics` as the daemon renders it, one sample by its full name and labels.
async fn metric(sweeper: &Context, settings: &basiq_health::settings::Settings, name: &str) -> f64 {
    let refresher = Refresher::new(sweeper.clone(), settings.refresh.clone())
        .await
        .unwrap();
    let text = basiq_health::metrics::render(sweeper, &refresher, &Default::default())
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn unreadable_warnings(logs: &Captured) -> Vec<Value> {
    logs.lines()
        .into_iter()
        .filter(|l| l["event"] == "unreadable_item")
        .collect()
}

#[tokio::test]
async fn one_unreadable_job_does_not_fail_the_user_s_sweep() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let settings = t.settings_at(&db, "");
    let sweeper = t.context().await;
    let (user, _, jobs) = scripted(sim, 1, 3);
    sim.sim.mangle_item("job-1", ItemFault::null("steps"));
    t.register(std::slice::from_ref(&user)).await;
    let (logs, _guard) = capture_logs();

    let counts = sweep(sweeper, &user).await;

    assert_eq!((counts.users_swept, counts.users_failed), (1, 0));
    let store = sweeper.store();
    assert!(store.get_job(&jobs[0]).await.unwrap().is_some());
    assert!(store.get_job(&jobs[1]).await.unwrap().is_none(), "skipped");
    assert!(store.get_job(&jobs[2]).await.unwrap().is_some());
    let row = store
        .connection(&ConnectionId::parse("conn-0").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.newest_job_id.as_deref(), Some("job-2"));
    let warnings = unreadable_warnings(&logs);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["level"], "WARN");
    assert_eq!(warnings[0]["endpoint"], "jobs");
    assert_eq!(warnings[0]["item_id"], "job-1");
    assert_eq!(warnings[0]["field"], "steps");
    assert_eq!(warnings[0]["user_id"], USER);
    assert_eq!(
        metric(
            sweeper,
            &settings,
            "basiq_health_basiq_undecodable_items_total{endpoint=\"jobs\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn every_kind_of_unreadable_job_is_skipped_with_its_id_and_field() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let (user, _, jobs) = scripted(sim, 1, 5);
    sim.sim
        .mangle_item("job-0", ItemFault::bad_timestamp("created"));
    sim.sim.mangle_item("job-1", ItemFault::unknown_shape());
    sim.sim
        .mangle_item("job-2", ItemFault::id("job-2/../../users"));
    sim.sim.mangle_item("job-3", ItemFault::null("steps"));
    t.register(std::slice::from_ref(&user)).await;
    let (logs, _guard) = capture_logs();

    let counts = sweep(sweeper, &user).await;

    assert_eq!((counts.users_swept, counts.users_failed), (1, 0));
    assert!(sweeper.store().get_job(&jobs[4]).await.unwrap().is_some());
    assert_eq!(sweeper.store().count_jobs().await.unwrap(), 1);
    let seen: Vec<(String, String)> = unreadable_warnings(&logs)
        .iter()
        .map(|w| {
            (
                w["item_id"].as_str().unwrap().to_owned(),
                w["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("job-0", "created"),
            ("(unreadable)", "."),
            ("job-2/../../users", "id"),
            ("job-3", "steps"),
        ]
        .map(|(i, f)| (i.to_owned(), f.to_owned()))
    );
    assert_eq!(
        sweeper.client().stats().undecodable_items().get("jobs"),
        Some(&4)
    );
}

#[tokio::test]
async fn one_unreadable_connection_is_skipped_and_not_marked_gone() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let (user, conns, _) = scripted(sim, 2, 1);
    t.register(std::slice::from_ref(&user)).await;
    sweep(sweeper, &user).await;
    let before = sweeper
        .store()
        .connection(&conns[1])
        .await
        .unwrap()
        .unwrap();
    sim.sim
        .mangle_item("conn-1", ItemFault::bad_timestamp("lastUsed"));
    sim.sim.set_connection_status("conn-0", "invalid");
    let (logs, _guard) = capture_logs();

    let counts = sweep(sweeper, &user).await;

    assert_eq!((counts.users_swept, counts.users_failed), (1, 0));
    let read = sweeper
        .store()
        .connection(&conns[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.status.as_str(),
        "invalid",
        "the readable one is updated"
    );
    let skipped = sweeper
        .store()
        .connection(&conns[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(skipped.gone_at, None, "unreadable is not gone");
    assert_eq!(skipped.health, before.health, "and its stored state stays");
    let warnings = unreadable_warnings(&logs);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["endpoint"], "connections");
    assert_eq!(warnings[0]["item_id"], "conn-1");
    assert_eq!(warnings[0]["field"], "lastUsed");

    // Once Basiq sends it readably again and stops listing it, it is gone as usual.
    sim.sim.clear_item_faults();
    sim.sim.remove_user(USER);
    scripted(sim, 1, 0);
    sweep(sweeper, &user).await;
    let gone = sweeper
        .store()
        .connection(&conns[1])
        .await
        .unwrap()
        .unwrap();
    assert!(gone.gone_at.is_some());
}

#[tokio::test]
async fn a_gateway_404_does_not_make_a_user_gone() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let (user, _, _) = scripted(sim, 1, 1);
    t.register(std::slice::from_ref(&user)).await;
    for fault in [
        Fault::GatewayPage { status: 404 },
        Fault::EmptyBody { status: 404 },
        Fault::Error {
            status: 404,
            code: "parameter-not-valid".into(),
        },
    ] {
        sim.sim.reset_counters();
        sim.sim.inject_fault(Route::Connections, fault.clone(), 3);
        let counts = sweep(sweeper, &user).await;
        assert_eq!(
            (counts.users_gone, counts.users_failed),
            (0, 1),
            "{fault:?}"
        );
        let row = sweeper.store().get_user(&user).await.unwrap().unwrap();
        assert_eq!(row.gone_at, None, "{fault:?}");
        assert_eq!(
            sim.sim.counters().requests.get(&Route::Connections),
            Some(&3),
            "retried as a passing fault: {fault:?}"
        );
        assert!(row.next_due_at > Utc::now(), "tried again later");
    }
    // And the next sweep works.
    assert_eq!(sweep(sweeper, &user).await.users_swept, 1);
}

#[tokio::test]
async fn a_resource_not_found_404_makes_a_user_gone_and_a_login_check_clears_it() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let sweeper = t.context().await;
    let (user, _, _) = scripted(sim, 1, 1);
    t.register(std::slice::from_ref(&user)).await;
    assert_eq!(sweep(sweeper, &user).await.users_swept, 1);
    sim.sim.inject_fault(
        Route::Connections,
        Fault::Status {
            status: 404,
            retry_after: None,
        },
        1,
    );
    assert_eq!(sweep(sweeper, &user).await.users_gone, 1);
    let row = sweeper.store().get_user(&user).await.unwrap().unwrap();
    assert!(row.gone_at.is_some());
    assert!(
        !sweeper
            .store()
            .due_users(Utc::now() + Duration::days(3), 10)
            .await
            .unwrap()
            .contains(&user)
    );

    // The user logs in a minute later (well within `login_min_interval`): Basiq is asked
    // again, knows the user, and `gone` is cleared.
    assert!(sweeper.login_check(&user).await.unwrap(), "swept");
    let row = sweeper.store().get_user(&user).await.unwrap().unwrap();
    assert_eq!(row.gone_at, None);
    assert!(
        sweeper
            .store()
            .due_users(Utc::now() + Duration::days(3), 10)
            .await
            .unwrap()
            .contains(&user)
    );
}

/// Runs the binary against `sim` with its database at `db`.
fn run(sim: &RunningSim, db: &std::path::Path, args: &[&str]) -> Output {
    bin()
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/basiq-health.toml"
        ))
        .args(args)
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", db)
        .env("BASIQ_HEALTH__API__LISTEN", "")
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_adding_a_gone_user_clears_gone() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let db = t.db();
    let sweeper = t.context().await;
    let (user, _, _) = scripted(sim, 1, 1);
    t.register(std::slice::from_ref(&user)).await;
    sim.sim.inject_fault(
        Route::Connections,
        Fault::Status {
            status: 404,
            retry_after: None,
        },
        1,
    );
    assert_eq!(sweep(sweeper, &user).await.users_gone, 1);

    let out = run(sim, &db, &["users", "add", USER]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("added 1 user"), "{stdout}");
    let out = run(sim, &db, &["users", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["user_id"], USER);
    assert_eq!(list[0]["gone"], false, "{list}");
    let row = sweeper.store().get_user(&user).await.unwrap().unwrap();
    assert_eq!(row.gone_at, None);
    // Due again, and swept.
    assert!(
        sweeper
            .store()
            .due_users(Utc::now() + Duration::days(3), 10)
            .await
            .unwrap()
            .contains(&user)
    );
    assert_eq!(sweep(sweeper, &user).await.users_swept, 1);
}

#[tokio::test]
async fn connectors_without_a_logo_are_read() {
    let sim = empty_sim().await;
    let client = client(&sim);
    let with_logo = client.list_connectors().await.unwrap();
    sim.sim.set_connectors_without_logo(true);
    let without = client.list_connectors().await.unwrap();
    assert!(!without.is_empty());
    assert_eq!(without, with_logo);
    assert!(client.stats().undecodable_items().is_empty());
}

#[tokio::test]
async fn connections_in_basiq_s_recorded_shape_are_read() {
    let sim = empty_sim().await;
    let client = client(&sim);
    sim.sim.add_user(USER);
    let mut c = ScriptedConnection::new("AU00004", "open-banking");
    c.id = "conn-recorded".into();
    c.expiry = None;
    c.mfa = Some(true);
    c.recorded_shape = true;
    sim.sim.add_connection(USER, c);
    let listed = client
        .list_connections(&UserId::parse(USER).unwrap())
        .await
        .unwrap();
    assert!(listed.is_complete());
    let conn = &listed.items[0];
    assert_eq!(conn.id.as_str(), "conn-recorded");
    assert_eq!(conn.method, basiq_health::domain::Method::Unknown);
    assert_eq!((conn.expiry_date, conn.mfa_enabled), (None, None));
}

// ---- the simulator's side ------------------------------------------------------------------

async fn get(sim: &RunningSim, token: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn token(sim: &RunningSim) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{}/token", sim.base_url()))
        .header("Authorization", format!("Basic {}", sim.sim.api_key()))
        .header("basiq-version", "3.0")
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_simulator_sends_gateway_pages_empty_bodies_and_mangled_items() {
    let sim = empty_sim().await;
    scripted(&sim, 2, 2);
    let token = token(&sim).await;
    let path = format!("/users/{USER}/connections");

    sim.sim
        .inject_fault(Route::Connections, Fault::GatewayPage { status: 404 }, 1);
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["content-type"], "text/html");
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("<h1>404 Not Found</h1>")
    );
    sim.sim
        .inject_fault(Route::Connections, Fault::EmptyBody { status: 404 }, 1);
    let resp = get(&sim, &token, &path).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.text().await.unwrap().is_empty());

    sim.sim.mangle_item("conn-1", ItemFault::id("conn 1'"));
    sim.sim.mangle_item("job-0", ItemFault::null("steps"));
    let conns: Value = get(&sim, &token, &path).await.json().await.unwrap();
    assert_eq!(conns["data"][0]["id"], "conn-0");
    assert_eq!(conns["data"][1]["id"], "conn 1'");
    let jobs: Value = get(&sim, &token, &format!("/users/{USER}/jobs"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["data"][0]["steps"], Value::Null);
    assert!(jobs["data"][1]["steps"].is_array());
    let one: Value = get(&sim, &token, "/jobs/job-0").await.json().await.unwrap();
    assert_eq!(one["steps"], Value::Null, "alone too");

    // Through the control route, as a person with curl would.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/_sim/items/job-1", sim.base_url()))
        .json(&json!({"kind": "replace", "value": "surprise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let one: Value = get(&sim, &token, "/jobs/job-1").await.json().await.unwrap();
    assert_eq!(one, json!("surprise"));
    let resp = http
        .delete(format!("{}/_sim/items", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let one: Value = get(&sim, &token, "/jobs/job-1").await.json().await.unwrap();
    assert_eq!(one["id"], "job-1");
}

#[tokio::test]
async fn connectors_come_with_a_logo_unless_switched_off() {
    let sim = empty_sim().await;
    let token = token(&sim).await;
    let list: Value = get(&sim, &token, "/connectors").await.json().await.unwrap();
    assert_eq!(list["data"][0]["institution"]["logo"]["type"], "image");
    sim.sim.set_connectors_without_logo(true);
    let list: Value = get(&sim, &token, "/connectors").await.json().await.unwrap();
    for entry in list["data"].as_array().unwrap() {
        assert!(entry["institution"].get("logo").is_none(), "{entry}");
        assert!(entry["institution"]["name"].is_string());
    }
}
