//! The Basiq simulator over real HTTP on port 0.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use basiq_sim::{
    Case, Counters, DEGRADED_CONNECTOR, Fault, OUTAGE_CONNECTOR, Outcome, Route, RunningSim,
    ScriptedConnection, ScriptedJob, SimConfig, Simulator,
};
use chrono::{DateTime, TimeDelta, Utc};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

struct Harness {
    running: RunningSim,
    client: Client,
    base: String,
    token: String,
}

impl Harness {
    async fn start(cfg: SimConfig) -> Self {
        let running = Simulator::new(cfg).bind(LOOPBACK).await.unwrap();
        let base = running.base_url();
        let client = Client::new();
        let key = running.sim.api_key();
        let token = fetch_token(&client, &base, &key).await;
        Self {
            running,
            client,
            base,
            token,
        }
    }

    fn sim(&self) -> &Simulator {
        &self.running.sim
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn jobs(&self, user: &str, connection: Option<&str>) -> Value {
        let mut req = self
            .client
            .get(format!("{}/users/{user}/jobs", self.base))
            .bearer_auth(&self.token);
        if let Some(c) = connection {
            req = req.query(&[("filter", format!("connection.id.eq('{c}')"))]);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    /// Polls a job until it stops changing state or `within` passes.
    async fn wait_finished(&self, job_id: &str, within: Duration) -> Value {
        let until = Instant::now() + within;
        loop {
            let (status, job) = self.get(&format!("/jobs/{job_id}")).await;
            assert_eq!(status, StatusCode::OK);
            if job_state(&job) != "in-progress" || Instant::now() > until {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn fetch_token(client: &Client, base: &str, key: &str) -> String {
    let resp = client
        .post(format!("{base}/token"))
        .header("Authorization", format!("Basic {key}"))
        .header("basiq-version", "3.0")
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn quick(users: usize, step: Duration) -> SimConfig {
    SimConfig {
        users,
        step_duration: step,
        ..SimConfig::default()
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Failed, success or in-progress, derived from the steps as the daemon must.
fn job_state(job: &Value) -> &'static str {
    let steps = job["steps"].as_array().unwrap();
    if steps.iter().any(|s| s["status"] == "failed") {
        "failed"
    } else if steps.iter().all(|s| s["status"] == "success") {
        "success"
    } else {
        "in-progress"
    }
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["type"], "list");
    let correlation = body["correlationId"].as_str().unwrap();
    assert_eq!(correlation.len(), 36, "{correlation}");
    assert_eq!(body["data"][0]["type"], "error");
    assert_eq!(body["data"][0]["code"], code, "{body}");
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// A user with one connection made by hand, for tests that need a known outcome.
fn scripted_user(sim: &Simulator, method: &str, outcome: Outcome) -> (String, String) {
    let user = format!("user-{}", rand_suffix());
    let mut conn = ScriptedConnection::new("AU00000", method);
    conn.outcome = outcome;
    let id = conn.id.clone();
    sim.add_connection(&user, conn);
    (user, id)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

// ---- token --------------------------------------------------------------------------------

#[tokio::test]
async fn token_is_issued_for_the_api_key_and_counted() {
    let h = Harness::start(quick(3, Duration::from_secs(2))).await;
    let resp = h
        .client
        .post(format!("{}/token", h.base))
        .header("Authorization", format!("Basic {}", h.sim().api_key()))
        .header("basiq-version", "3.0")
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        keys(&body),
        set(&["access_token", "token_type", "expires_in"])
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert!(token.starts_with("eyJ"));
    let c = h.sim().counters();
    assert_eq!(c.token_calls, 2);
    assert_eq!(c.issued_tokens.len(), 2);
    assert!(c.issued_tokens.iter().any(|t| t == token));
    assert!(h.sim().api_key().starts_with("c2ltLWtleS03"));
}

#[tokio::test]
async fn token_errors_follow_basiq() {
    let h = Harness::start(quick(1, Duration::from_secs(2))).await;
    let url = format!("{}/token", h.base);
    let key = format!("Basic {}", h.sim().api_key());

    let resp = h
        .client
        .post(&url)
        .header("Authorization", &key)
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, "parameter-not-valid");
    assert_eq!(
        body["data"][0]["detail"],
        "Basiq-version must be specified in HTTP request header"
    );
    assert_eq!(body["data"][0]["source"]["parameter"], "basiq-version");
    assert_eq!(body["data"][0]["source"]["pointer"], "header/basiq-version");

    let resp = h
        .client
        .post(&url)
        .header("Authorization", "Basic bm90LXRoZS1rZXk=")
        .header("basiq-version", "3.0")
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, "parameter-not-valid");
    assert_eq!(
        body["data"][0]["detail"],
        "Unable to authenticate. Please, check your API key"
    );

    let resp = h
        .client
        .post(&url)
        .header("Authorization", &key)
        .header("basiq-version", "3.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_error(&resp.json().await.unwrap(), "parameter-not-supplied");

    // Every call counts, failed ones too (plus the harness's own).
    assert_eq!(h.sim().counters().token_calls, 4);
}

#[tokio::test]
async fn missing_or_unknown_bearer_is_401() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    let user = &h.sim().user_ids()[0];
    let url = format!("{}/users/{user}", h.base);
    for req in [
        h.client.get(&url),
        h.client.get(&url).bearer_auth("eyJnot.a.token"),
        h.client.get(&url).header("Authorization", "Token abc"),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_error(&resp.json().await.unwrap(), "invalid-authorization-token");
    }
}

#[tokio::test]
async fn expired_tokens_answer_403_access_denied() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    let user = h.sim().user_ids()[0].clone();
    assert_eq!(h.get(&format!("/users/{user}")).await.0, StatusCode::OK);
    h.sim().expire_tokens();
    let (status, body) = h.get(&format!("/users/{user}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "access-denied");
    assert_eq!(body["data"][0]["detail"], "Token has expired");
    assert!(body["data"][0]["source"].is_null());
    assert!(body["data"][0].as_object().unwrap().contains_key("source"));

    // A fresh token works again.
    let fresh = fetch_token(&h.client, &h.base, &h.sim().api_key()).await;
    let resp = h
        .client
        .get(format!("{}/users/{user}", h.base))
        .bearer_auth(fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let cfg = SimConfig {
        users: 1,
        token_ttl: Duration::from_millis(150),
        ..SimConfig::default()
    };
    let h = Harness::start(cfg).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = h.get("/connectors").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["data"][0]["detail"], "Token has expired");
}

// ---- access: a revoked key, faults about one user ----------------------------------------

async fn post_token(h: &Harness, key: &str) -> (StatusCode, Value) {
    let resp = h
        .client
        .post(format!("{}/token", h.base))
        .header("Authorization", format!("Basic {key}"))
        .header("basiq-version", "3.0")
        .form(&[("scope", "SERVER_ACCESS")])
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_token_until_restored() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    let key = h.sim().api_key();
    let user = h.sim().user_ids()[0].clone();
    for (status, code) in [
        (401, "unauthorized-access"),
        (403, "access-denied"),
        (404, "parameter-not-valid"),
    ] {
        h.sim().revoke_api_key(status);
        let (got, body) = post_token(&h, &key).await;
        assert_eq!(got.as_u16(), status);
        assert_error(&body, code);
    }
    // Tokens issued before the revocation live on until they expire.
    assert_eq!(h.get(&format!("/users/{user}")).await.0, StatusCode::OK);

    let ctl = |p: &str| format!("{}/_sim/{p}", h.base);
    let resp = h.client.post(ctl("restore-key")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(post_token(&h, &key).await.0, StatusCode::OK);
    // The control route; without a body it answers 403, as the default revocation.
    let resp = h.client.post(ctl("revoke-key")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(post_token(&h, &key).await.0, StatusCode::FORBIDDEN);
    let resp = h
        .client
        .post(ctl("revoke-key"))
        .json(&serde_json::json!({"status": 401}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(post_token(&h, &key).await.0, StatusCode::UNAUTHORIZED);
    h.sim().restore_api_key();
    assert_eq!(post_token(&h, &key).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_unauthorized_access_fault_hits_only_the_users_routes() {
    let h = Harness::start(quick(3, Duration::from_secs(2))).await;
    let users = h.sim().user_ids();
    let (denied, other) = (&users[0], &users[1]);
    h.sim()
        .inject_user_fault(denied, Fault::UnauthorizedAccess { status: 401 }, 2);
    assert_eq!(
        h.get(&format!("/users/{other}/connections")).await.0,
        StatusCode::OK,
        "another user's route is untouched"
    );
    assert_eq!(h.get("/connectors").await.0, StatusCode::OK);
    let (status, body) = h.get(&format!("/users/{denied}/connections")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "unauthorized-access");
    assert_eq!(
        h.get(&format!("/users/{denied}/jobs")).await.0,
        StatusCode::UNAUTHORIZED,
        "every route of the user"
    );
    assert_eq!(
        h.get(&format!("/users/{denied}/jobs")).await.0,
        StatusCode::OK,
        "used up after `times`"
    );

    let resp = h
        .client
        .post(format!("{}/_sim/user-faults", h.base))
        .json(&serde_json::json!({
            "user_id": denied,
            "fault": {"kind": "unauthorized-access", "status": 403},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (status, body) = h.get(&format!("/users/{denied}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_error(&body, "unauthorized-access");
    assert_eq!(h.get(&format!("/users/{denied}")).await.0, StatusCode::OK);
}

// ---- shapes -------------------------------------------------------------------------------

#[tokio::test]
async fn users_connections_jobs_and_connectors_have_basiq_shapes() {
    let h = Harness::start(quick(20, Duration::from_secs(2))).await;
    let mut saw_web = false;
    let mut saw_open_banking = false;
    for user in h.sim().user_ids() {
        let (status, u) = h.get(&format!("/users/{user}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(u["type"], "user");
        assert_eq!(u["id"], user.as_str());
        for k in ["email", "mobile", "connections", "accounts", "links"] {
            assert!(u.get(k).is_some(), "{k}");
        }
        let stubs = u["connections"]["data"].as_array().unwrap();
        assert_eq!(u["connections"]["count"], stubs.len());

        let (status, list) = h.get(&format!("/users/{user}/connections")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(keys(&list), set(&["type", "data", "links"]));
        assert_eq!(
            list["links"]["self"],
            format!("{}/users/{user}/connections", h.base)
        );
        let conns = list["data"].as_array().unwrap();
        assert_eq!(conns.len(), stubs.len());
        for c in conns {
            assert_eq!(c["type"], "connection");
            for k in [
                "id",
                "status",
                "method",
                "createdDate",
                "expiryDate",
                "mfaEnabled",
            ] {
                assert!(c.get(k).is_some(), "{k} in {c}");
            }
            assert_eq!(c["institution"]["type"], "institution");
            assert!(c["links"]["self"].as_str().unwrap().starts_with(&h.base));
            match c["method"].as_str().unwrap() {
                "web" => {
                    saw_web = true;
                    assert_eq!(c["expiryDate"], "");
                }
                "open-banking" | "openbanking" => saw_open_banking = true,
                other => panic!("method {other}"),
            }
            let pending = matches!(c["status"].as_str().unwrap(), "pending" | "pre-init");
            assert_eq!(c.get("lastUsed").is_none(), pending, "{c}");
            let id = c["id"].as_str().unwrap();
            let (status, one) = h.get(&format!("/users/{user}/connections/{id}")).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&one, c);
        }

        let jobs = h.jobs(&user, None).await;
        assert_eq!(keys(&jobs), set(&["type", "size", "data", "links"]));
        assert_eq!(jobs["size"], jobs["data"].as_array().unwrap().len());
        for j in jobs["data"].as_array().unwrap() {
            assert_eq!(j["type"], "job");
            assert!(Utc::now() - time(&j["created"]) < TimeDelta::days(7));
            assert_eq!(j["institution"]["type"], "institution");
            assert!(j["links"]["self"].as_str().unwrap().starts_with(&h.base));
            let steps = j["steps"].as_array().unwrap();
            assert_eq!(steps[0]["title"], "verify-credentials");
            let mut failed = false;
            for s in steps {
                if failed {
                    assert_eq!(s["status"], "pending");
                    assert!(s["result"].is_null());
                }
                match s["status"].as_str().unwrap() {
                    "failed" => failed = true,
                    "success" => {
                        assert_eq!(s["result"]["type"], "link");
                        assert!(s["result"]["url"].as_str().unwrap().starts_with("/users/"));
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(saw_web && saw_open_banking);

    let (status, connectors) = h.get("/connectors").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        keys(&connectors),
        set(&["type", "totalCount", "data", "links"])
    );
    let data = connectors["data"].as_array().unwrap();
    assert_eq!(connectors["totalCount"], data.len());
    assert_eq!(data.len(), 12);
    let statuses: Vec<&str> = data.iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "major-outage").count(), 1);
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == "degraded-performance")
            .count(),
        1
    );
    let outage = data.iter().find(|c| c["status"] == "major-outage").unwrap();
    assert_eq!(outage["id"], OUTAGE_CONNECTOR.0);
    assert_eq!(outage["method"], OUTAGE_CONNECTOR.1);
    for c in data {
        assert_eq!(c["type"], "connector");
        assert_eq!(c["stage"], "live");
        assert_eq!(c["institution"]["country"], "Australia");
        assert!(c["stats"]["averageDurationMs"]["total"].is_u64());
        assert!(c["scopes"].is_array());
        assert!(c["authorization"]["type"].is_string());
    }
    let (status, one) = h
        .get(&format!(
            "/connectors/{}/{}",
            DEGRADED_CONNECTOR.0, DEGRADED_CONNECTOR.1
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["status"], "degraded-performance");
}

#[tokio::test]
async fn unknown_users_jobs_and_connections_are_404() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    let user = h.sim().user_ids()[0].clone();
    for path in [
        "/users/nobody".to_owned(),
        "/users/nobody/connections".to_owned(),
        "/users/nobody/jobs".to_owned(),
        format!("/users/{user}/connections/nothing"),
        "/jobs/nothing".to_owned(),
    ] {
        let (status, body) = h.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_error(&body, "resource-not-found");
    }
    let (_, body) = h.get("/users/nobody").await;
    assert_eq!(body["data"][0]["detail"], "Requested user does not exist.");

    h.sim().remove_user(&user);
    assert_eq!(
        h.get(&format!("/users/{user}")).await.0,
        StatusCode::NOT_FOUND
    );
    h.sim().add_user("fresh-user");
    let (status, body) = h.get("/users/fresh-user/connections").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 0);
    let jobs = h.jobs("fresh-user", None).await;
    assert_eq!(jobs["size"], 0);
}

#[tokio::test]
async fn jobs_filter_by_connection_id() {
    let h = Harness::start(quick(30, Duration::from_secs(2))).await;
    let sim = h.sim();
    let (user, conns) = sim
        .user_ids()
        .into_iter()
        .map(|u| (u.clone(), sim.connection_ids(&u)))
        .find(|(_, ids)| {
            ids.len() >= 2 && ids.iter().all(|c| sim.case_of(c) == Some(Case::Healthy))
        })
        .expect("a user with two healthy connections");
    let all = h.jobs(&user, None).await;
    let total = all["size"].as_u64().unwrap();
    let mut sum = 0;
    for c in &conns {
        let filtered = h.jobs(&user, Some(c)).await;
        let data = filtered["data"].as_array().unwrap();
        assert!(!data.is_empty());
        assert_eq!(filtered["size"], data.len());
        let institution = sim
            .scripted(&user)
            .into_iter()
            .find(|s| s.id == *c)
            .unwrap()
            .institution_id;
        for j in data {
            // A running job may lack `links.source`; its institution still tells.
            match j["links"]["source"].as_str() {
                Some(source) => assert!(source.ends_with(&format!("/connections/{c}"))),
                None => assert_eq!(j["institution"]["id"], institution.as_str()),
            }
        }
        sum += data.len() as u64;
    }
    assert_eq!(sum, total);

    // Double quotes and no quotes work too; anything else is a 400.
    for f in [
        format!("connection.id.eq(\"{}\")", conns[0]),
        format!("connection.id.eq({})", conns[0]),
    ] {
        let resp = h
            .client
            .get(format!("{}/users/{user}/jobs", h.base))
            .query(&[("filter", f)])
            .bearer_auth(&h.token)
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        assert!(body["size"].as_u64().unwrap() >= 1);
    }
    let resp = h
        .client
        .get(format!(
            "{}/users/{user}/jobs?filter=account.id.eq('x')",
            h.base
        ))
        .bearer_auth(&h.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_error(&body, "parameter-not-valid");
    assert_eq!(body["data"][0]["source"]["parameter"], "filter");
}

// ---- refresh and job progression ------------------------------------------------------------

#[tokio::test]
async fn a_refresh_job_progresses_to_its_scripted_failure() {
    let h = Harness::start(quick(1, Duration::from_millis(150))).await;
    let outcome = Outcome::fail(
        "retrieve-accounts",
        "service-unavailable",
        "Service unavailable",
        "Bank is down",
    );
    let (user, cid) = scripted_user(h.sim(), "web", outcome);
    let (status, stub) = h
        .post(&format!("/users/{user}/connections/{cid}/refresh"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(keys(&stub), set(&["type", "id", "links"]));
    assert_eq!(stub["type"], "job");
    let id = stub["id"].as_str().unwrap().to_owned();
    assert_eq!(stub["links"]["self"], format!("{}/jobs/{id}", h.base));

    let (_, job) = h.get(&format!("/jobs/{id}")).await;
    assert_eq!(job["steps"][0]["status"], "in-progress");
    assert_eq!(job["steps"][1]["status"], "pending");
    assert!(job["steps"][0]["result"].is_null());
    assert!(job["links"]["source"].as_str().unwrap().ends_with(&cid));

    let job = h.wait_finished(&id, Duration::from_secs(5)).await;
    let steps = job["steps"].as_array().unwrap();
    assert_eq!(steps[0]["status"], "success");
    assert_eq!(steps[0]["result"]["type"], "link");
    assert_eq!(steps[1]["status"], "failed");
    assert_eq!(steps[1]["result"]["code"], "service-unavailable");
    assert_eq!(steps[1]["result"]["detail"], "Bank is down");
    assert!(steps[1]["result"].get("type").is_none());
    assert_eq!(steps[2]["status"], "pending");
    assert!(steps[2]["result"].is_null());
    let created = time(&job["created"]);
    let updated = time(&job["updated"]);
    assert!(updated >= created);

    // A bank-side failure leaves the connection active, and it shows in the jobs list.
    let (_, conn) = h.get(&format!("/users/{user}/connections/{cid}")).await;
    assert_eq!(conn["status"], "active");
    let listed = h.jobs(&user, Some(&cid)).await;
    assert_eq!(listed["size"], 1);
    assert_eq!(listed["data"][0]["id"], id.as_str());
}

#[tokio::test]
async fn success_updates_last_used_and_user_side_failure_invalidates() {
    let h = Harness::start(quick(1, Duration::from_millis(20))).await;
    let (user, ok) = scripted_user(h.sim(), "web", Outcome::Success);
    let before = h.sim().scripted(&user)[0].last_used.unwrap();
    let (_, stub) = h
        .post(&format!("/users/{user}/connections/{ok}/refresh"))
        .await;
    let job = h
        .wait_finished(stub["id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    assert_eq!(job_state(&job), "success");
    let (_, conn) = h.get(&format!("/users/{user}/connections/{ok}")).await;
    assert!(time(&conn["lastUsed"]) > before);
    assert_eq!(time(&conn["lastUsed"]), time(&job["updated"]));

    let locked = Outcome::fail(
        "verify-credentials",
        "invalid-credentials",
        "Invalid credentials",
        "Account is locked",
    );
    let (user, bad) = scripted_user(h.sim(), "web", locked);
    let (_, stub) = h
        .post(&format!("/users/{user}/connections/{bad}/refresh"))
        .await;
    let job = h
        .wait_finished(stub["id"].as_str().unwrap(), Duration::from_secs(5))
        .await;
    assert_eq!(job["steps"][0]["status"], "failed");
    assert_eq!(job["steps"][0]["result"]["detail"], "Account is locked");
    let (_, conn) = h.get(&format!("/users/{user}/connections/{bad}")).await;
    assert_eq!(conn["status"], "invalid");
    let (status, body) = h
        .post(&format!("/users/{user}/connections/{bad}/refresh"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "parameter-not-valid");
}

#[tokio::test]
async fn refresh_while_a_job_runs_answers_200_with_that_job() {
    let h = Harness::start(quick(1, Duration::from_secs(5))).await;
    let (user, cid) = scripted_user(h.sim(), "open-banking", Outcome::Success);
    let path = format!("/users/{user}/connections/{cid}/refresh");
    let (status, first) = h.post(&path).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, second) = h.post(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(h.sim().counters().refresh_calls[&cid].len(), 2);
}

#[tokio::test]
async fn refreshing_a_connection_that_is_not_active_is_400() {
    let h = Harness::start(quick(1, Duration::from_secs(2))).await;
    let mut conn = ScriptedConnection::new("AU00001", "web");
    conn.status = "pending".to_owned();
    conn.last_used = None;
    let cid = conn.id.clone();
    h.sim().add_connection("u-pending", conn);
    let (status, body) = h
        .post(&format!("/users/u-pending/connections/{cid}/refresh"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "parameter-not-valid");
    assert!(
        body["data"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not active")
    );
    let (_, c) = h.get(&format!("/users/u-pending/connections/{cid}")).await;
    assert!(c.get("lastUsed").is_none());
    assert_eq!(h.sim().counters().refresh_calls[&cid].len(), 1);
    assert_eq!(h.jobs("u-pending", None).await["size"], 0);
}

#[tokio::test]
async fn the_21st_open_banking_refresh_in_a_day_is_429() {
    let h = Harness::start(quick(1, Duration::from_millis(1))).await;
    let (user, cid) = scripted_user(h.sim(), "open-banking", Outcome::Success);
    let web_conn = ScriptedConnection::new("AU00002", "web");
    let web = web_conn.id.clone();
    h.sim().add_connection(&user, web_conn);
    for target in [&cid, &web] {
        let path = format!("/users/{user}/connections/{target}/refresh");
        for n in 1..=20 {
            let (status, stub) = h.post(&path).await;
            assert_eq!(status, StatusCode::ACCEPTED, "refresh {n}");
            h.wait_finished(stub["id"].as_str().unwrap(), Duration::from_secs(5))
                .await;
        }
    }
    let (status, body) = h
        .post(&format!("/users/{user}/connections/{cid}/refresh"))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_error(&body, "too-many-requests");
    assert_eq!(body["data"][0]["detail"], "Query limit reached.");
    // Web connections have no daily cap.
    let (status, _) = h
        .post(&format!("/users/{user}/connections/{web}/refresh"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(h.sim().counters().refresh_calls[&cid].len(), 21);
}

#[tokio::test]
async fn mfa_and_hanging_jobs_stay_in_progress() {
    let h = Harness::start(quick(1, Duration::from_millis(20))).await;
    let (user, mfa) = scripted_user(h.sim(), "web", Outcome::MfaPending);
    let (_, stub) = h
        .post(&format!("/users/{user}/connections/{mfa}/refresh"))
        .await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let (_, job) = h
        .get(&format!("/jobs/{}", stub["id"].as_str().unwrap()))
        .await;
    assert_eq!(job_state(&job), "in-progress");
    assert_eq!(job["steps"][1]["title"], "mfa-challenge");
    assert_eq!(job["steps"][1]["status"], "in-progress");
    assert_eq!(job["steps"][1]["result"]["type"], "mfa");
    assert_eq!(job["steps"][1]["result"]["expiryMs"], 120000);
    let (status, again) = h
        .post(&format!("/users/{user}/connections/{mfa}/refresh"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], stub["id"]);

    let (user, hang) = scripted_user(h.sim(), "web", Outcome::Hang);
    let (_, stub) = h
        .post(&format!("/users/{user}/connections/{hang}/refresh"))
        .await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let (_, job) = h
        .get(&format!("/jobs/{}", stub["id"].as_str().unwrap()))
        .await;
    assert_eq!(job_state(&job), "in-progress");
    assert_eq!(job["steps"][1]["status"], "in-progress");
}

#[tokio::test]
async fn scripted_jobs_keep_their_times_and_quirks() {
    let h = Harness::start(quick(1, Duration::from_millis(20))).await;
    let (user, cid) = scripted_user(h.sim(), "web", Outcome::Success);
    let now = Utc::now();
    let running = ScriptedJob {
        id: Some("job-running".to_owned()),
        connection_id: cid.clone(),
        created: now - TimeDelta::minutes(3),
        updated: now - TimeDelta::minutes(2),
        outcome: Outcome::Success,
        running: true,
        with_source: false,
    };
    let old = ScriptedJob {
        id: Some("job-old".to_owned()),
        created: now - TimeDelta::days(9),
        updated: now - TimeDelta::days(9),
        running: false,
        with_source: true,
        ..running.clone()
    };
    h.sim().add_job(&user, running);
    h.sim().add_job(&user, old);
    let list = h.jobs(&user, None).await;
    assert_eq!(list["size"], 1, "the 9-day-old job is past Basiq's 7 days");
    let job = &list["data"][0];
    assert_eq!(job["id"], "job-running");
    assert!(job["links"].get("source").is_none());
    assert_eq!(job_state(job), "in-progress");
    assert_eq!(
        time(&job["updated"]),
        (now - TimeDelta::minutes(2)).trunc_subsecs_secs()
    );
    let (status, stub) = h
        .post(&format!("/users/{user}/connections/{cid}/refresh"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stub["id"], "job-running");
    let (status, old) = h.get("/jobs/job-old").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job_state(&old), "success");
}

trait TruncSecs {
    fn trunc_subsecs_secs(self) -> Self;
}

impl TruncSecs for DateTime<Utc> {
    fn trunc_subsecs_secs(self) -> Self {
        use chrono::SubsecRound;
        self.trunc_subsecs(0)
    }
}

#[tokio::test]
async fn bulk_refresh_is_counted() {
    let h = Harness::start(quick(5, Duration::from_secs(2))).await;
    let user = h.sim().user_ids()[0].clone();
    let (status, body) = h.post(&format!("/users/{user}/connections/refresh")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["type"], "list");
    assert!(body["data"].is_array());
    let c = h.sim().counters();
    assert_eq!(c.bulk_refresh_calls, 1);
    assert_eq!(c.requests[&Route::BulkRefresh], 1);
}

#[tokio::test]
async fn purge_needs_an_active_connection() {
    let h = Harness::start(quick(1, Duration::from_secs(2))).await;
    let (user, cid) = scripted_user(h.sim(), "web", Outcome::Success);
    let (status, _) = h
        .post(&format!("/users/{user}/connections/{cid}/purge"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    h.sim().set_connection_status(&cid, "invalid");
    let (status, body) = h
        .post(&format!("/users/{user}/connections/{cid}/purge"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "parameter-not-valid");
    assert_eq!(h.sim().counters().purge_calls, 2);
}

// ---- faults, delays, counters ----------------------------------------------------------------

#[tokio::test]
async fn status_faults_answer_the_error_envelope_then_stop() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    let user = h.sim().user_ids()[0].clone();
    let path = format!("/users/{user}/jobs");
    h.sim().inject_fault(
        Route::Jobs,
        Fault::Status {
            status: 429,
            retry_after: Some(2),
        },
        1,
    );
    h.sim().inject_fault(
        Route::Jobs,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        2,
    );
    h.sim().inject_fault(
        Route::Jobs,
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        1,
    );
    let url = format!("{}{path}", h.base);
    let send = || h.client.get(&url).bearer_auth(&h.token).send();

    let resp = send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_error(&resp.json().await.unwrap(), "too-many-requests");
    let mut correlations = HashSet::new();
    for _ in 0..2 {
        let resp = send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().get("retry-after").is_none());
        let body: Value = resp.json().await.unwrap();
        assert_error(&body, "service-unavailable");
        correlations.insert(body["correlationId"].as_str().unwrap().to_owned());
    }
    assert_eq!(correlations.len(), 2, "a fresh correlationId each time");
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_error(&resp.json().await.unwrap(), "internal-server-error");
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(h.sim().counters().requests[&Route::Jobs], 5);
}

#[tokio::test]
async fn delay_malformed_and_drop_faults() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    let url = format!("{}/connectors", h.base);
    let send = || h.client.get(&url).bearer_auth(&h.token).send();

    h.sim()
        .inject_fault(Route::Connectors, Fault::Delay { ms: 300 }, 1);
    let started = Instant::now();
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    h.sim().inject_fault(Route::Connectors, Fault::Malformed, 1);
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    h.sim().inject_fault(Route::Connectors, Fault::Drop, 1);
    let err = send()
        .await
        .expect_err("a dropped connection has no response");
    assert!(err.is_request(), "{err:?}");

    // The server is still fine afterwards.
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(h.sim().counters().requests[&Route::Connectors], 4);
}

#[tokio::test]
async fn persistent_delay_and_peak_concurrency() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    h.sim().set_delay(None, Duration::from_millis(250));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let client = h.client.clone();
        let url = format!("{}/connectors", h.base);
        let token = h.token.clone();
        tasks.push(tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(h.sim().counters().peak_concurrent, 5);

    h.sim().set_delay(None, Duration::ZERO);
    h.sim()
        .set_delay(Some(Route::Job), Duration::from_millis(200));
    let started = Instant::now();
    h.get("/connectors").await;
    assert!(started.elapsed() < Duration::from_millis(200));
    let started = Instant::now();
    h.get("/jobs/unknown").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    h.sim().set_delay(None, Duration::ZERO);
    let started = Instant::now();
    h.get("/jobs/unknown").await;
    assert!(started.elapsed() < Duration::from_millis(200));

    h.sim().reset_counters();
    let c: Counters = h.sim().counters();
    assert_eq!(c.peak_concurrent, 0);
    assert!(c.requests.is_empty());
    assert_eq!(c.issued_tokens.len(), 1, "issued tokens survive a reset");
}

#[tokio::test]
async fn connector_status_can_change_live() {
    let h = Harness::start(quick(2, Duration::from_secs(2))).await;
    h.sim()
        .set_connector_status("AU00000", "web", "major-outage");
    h.sim()
        .set_connector_status(OUTAGE_CONNECTOR.0, OUTAGE_CONNECTOR.1, "operational");
    let (_, list) = h.get("/connectors").await;
    let status_of = |id: &str, method: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id && c["method"] == method)
            .map(|c| c["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status_of("AU00000", "web").unwrap(), "major-outage");
    assert_eq!(
        status_of(OUTAGE_CONNECTOR.0, OUTAGE_CONNECTOR.1).unwrap(),
        "operational"
    );
    assert_eq!(h.sim().counters().connector_changes.len(), 2);
}

#[tokio::test]
async fn control_routes_drive_the_simulator() {
    let h = Harness::start(quick(3, Duration::from_secs(2))).await;
    let ctl = |p: &str| format!("{}/_sim/{p}", h.base);

    let resp = h
        .client
        .post(ctl("faults"))
        .json(&serde_json::json!({
            "route": "jobs",
            "fault": {"kind": "status", "status": 429, "retry_after": 1},
            "times": 1
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let user = h.sim().user_ids()[0].clone();
    assert_eq!(
        h.get(&format!("/users/{user}/jobs")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    let resp = h
        .client
        .post(ctl("connectors/AU00000/web"))
        .json(&serde_json::json!({"status": "partial-outage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (_, one) = h.get("/connectors/AU00000/web").await;
    assert_eq!(one["status"], "partial-outage");

    let counters: Value = h
        .client
        .get(ctl("counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["requests"]["jobs"], 1);
    assert_eq!(counters["token_calls"], 1);

    let users: Vec<String> = h
        .client
        .get(ctl("users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users, h.sim().user_ids());
    let detail: Value = h
        .client
        .get(ctl(&format!("users/{user}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(detail["connections"][0]["case"].is_string());

    let resp = h.client.put(ctl("users/added")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(h.get("/users/added").await.0, StatusCode::OK);
    let resp = h.client.delete(ctl("users/added")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(h.get("/users/added").await.0, StatusCode::NOT_FOUND);

    let resp = h.client.post(ctl("reset-counters")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(h.sim().counters().token_calls, 0);

    let resp = h.client.post(ctl("expire-tokens")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(h.get("/connectors").await.0, StatusCode::FORBIDDEN);
}

#[test]
fn routes_and_faults_have_kebab_names() {
    for r in Route::ALL {
        assert_eq!(r.as_str().parse::<Route>().unwrap(), r);
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
    assert_eq!("bulk-refresh".parse::<Route>().unwrap(), Route::BulkRefresh);
    assert!("nope".parse::<Route>().is_err());
    let f: Fault =
        serde_json::from_str(r#"{"kind":"status","status":429,"retry_after":1}"#).unwrap();
    assert_eq!(
        f,
        Fault::Status {
            status: 429,
            retry_after: Some(1)
        }
    );
    let f: Fault = serde_json::from_str(r#"{"kind":"delay","ms":5}"#).unwrap();
    assert_eq!(f, Fault::Delay { ms: 5 });
    let f: Fault = serde_json::from_str(r#"{"kind":"drop"}"#).unwrap();
    assert_eq!(f, Fault::Drop);
    let f: Fault = serde_json::from_str(r#"{"kind":"malformed"}"#).unwrap();
    assert_eq!(f, Fault::Malformed);
    let secret = format!("{:?}", SimConfig::default());
    assert!(!secret.contains(&SimConfig::default().api_key));
}

// ---- population ---------------------------------------------------------------------------

type Shape = (String, String, String, String, Outcome);

fn shape(sim: &Simulator) -> Vec<(String, Vec<Shape>)> {
    sim.user_ids()
        .into_iter()
        .map(|u| {
            let conns = sim
                .scripted(&u)
                .into_iter()
                .map(|c| (c.id, c.institution_id, c.method, c.status, c.outcome))
                .collect();
            (u, conns)
        })
        .collect()
}

#[test]
fn the_population_is_deterministic_for_a_seed() {
    let a = Simulator::new(quick(40, Duration::from_secs(2)));
    let b = Simulator::new(quick(40, Duration::from_secs(2)));
    assert_eq!(shape(&a), shape(&b));
    assert_eq!(a.api_key(), b.api_key());
    let c = Simulator::new(SimConfig {
        seed: 8,
        api_key: String::new(),
        ..quick(40, Duration::from_secs(2))
    });
    assert_ne!(shape(&a), shape(&c));
    assert_ne!(a.api_key(), c.api_key());
    let id = &a.user_ids()[0];
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!(
        id.chars()
            .all(|ch| ch == '-' || ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase())
    );
}

#[test]
fn a_tiny_population_still_has_a_healthy_connection() {
    for seed in 0..20 {
        let sim = Simulator::new(SimConfig {
            users: 3,
            seed,
            ..SimConfig::default()
        });
        let healthy = sim
            .user_ids()
            .iter()
            .flat_map(|u| sim.connection_ids(u))
            .filter(|c| sim.case_of(c) == Some(Case::Healthy))
            .count();
        assert!(healthy >= 1, "seed {seed}");
    }
}

#[tokio::test]
async fn a_large_population_has_every_case_and_the_quirks() {
    let h = Harness::start(quick(200, Duration::from_secs(2))).await;
    let sim = h.sim();
    let now = Utc::now();
    let mut by_case: HashMap<Case, Vec<(String, ScriptedConnection)>> = HashMap::new();
    let mut total = 0;
    for user in sim.user_ids() {
        let conns = sim.scripted(&user);
        assert!((1..=3).contains(&conns.len()));
        let institutions: HashSet<&str> = conns.iter().map(|c| c.institution_id.as_str()).collect();
        assert_eq!(
            institutions.len(),
            conns.len(),
            "one connection per institution"
        );
        for c in conns {
            total += 1;
            let case = sim.case_of(&c.id).unwrap();
            by_case.entry(case).or_default().push((user.clone(), c));
        }
    }
    for case in [
        Case::Healthy,
        Case::InvalidCredentials,
        Case::BankPopup,
        Case::ServiceUnavailable,
        Case::ConsentExpiringSoon,
        Case::ConsentExpired,
        Case::ConnectionInvalid,
        Case::NotYetActive,
        Case::Stale,
        Case::Transient,
    ] {
        assert!(by_case.contains_key(&case), "{case:?}");
    }
    let healthy = by_case[&Case::Healthy].len() as f64 / total as f64;
    assert!((0.45..0.65).contains(&healthy), "{healthy}");

    let outage_users: HashSet<&str> = by_case[&Case::ServiceUnavailable]
        .iter()
        .filter(|(_, c)| (c.institution_id.as_str(), c.method.as_str()) == OUTAGE_CONNECTOR)
        .map(|(u, _)| u.as_str())
        .collect();
    assert!(outage_users.len() >= 3);
    assert!(outage_users.len() * 2 > by_case[&Case::ServiceUnavailable].len());

    for (_, c) in &by_case[&Case::InvalidCredentials] {
        assert_eq!(c.status, "invalid");
        assert!(matches!(&c.outcome, Outcome::Fail { code, detail, .. }
            if code == "invalid-credentials" && detail == "Account is locked"));
    }
    for (_, c) in &by_case[&Case::ConsentExpiringSoon] {
        let left = c.expiry.unwrap() - now;
        assert!(left > TimeDelta::hours(23) && left < TimeDelta::days(26));
        assert_eq!(c.method, "open-banking");
    }
    for (_, c) in &by_case[&Case::ConsentExpired] {
        assert!(c.expiry.unwrap() < now);
        assert_eq!(c.status, "invalid");
    }
    for (u, c) in &by_case[&Case::NotYetActive] {
        assert!(c.status == "pending" || c.status == "pre-init");
        assert_eq!(h.jobs(u, Some(&c.id)).await["size"], 0);
    }
    for (u, c) in &by_case[&Case::Stale] {
        assert_eq!(c.status, "active");
        let age = now - c.last_used.unwrap();
        assert!(age > TimeDelta::days(4) && age < TimeDelta::days(6));
        assert_eq!(h.jobs(u, Some(&c.id)).await["size"], 0);
    }

    // Over HTTP: the array result, the running job without source, `openbanking`, old jobs.
    let mut array_results = 0;
    let mut running_without_source = 0;
    let mut untyped_failures = 0;
    let mut listed = HashSet::new();
    let mut openbanking = 0;
    for user in sim.user_ids() {
        let jobs = h.jobs(&user, None).await;
        for j in jobs["data"].as_array().unwrap() {
            listed.insert(j["id"].as_str().unwrap().to_owned());
            for s in j["steps"].as_array().unwrap() {
                if s["status"] == "failed" {
                    if s["result"].is_array() {
                        array_results += 1;
                        assert!(s["result"][0]["code"].is_string());
                    } else if s["result"].get("type").is_none() {
                        untyped_failures += 1;
                    }
                }
            }
            if job_state(j) == "in-progress" && j["links"].get("source").is_none() {
                running_without_source += 1;
            }
        }
        let (_, conns) = h.get(&format!("/users/{user}/connections")).await;
        openbanking += conns["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["method"] == "openbanking")
            .count();
        // Jobs older than 7 days are not listed but still answer on /jobs/{id}.
        for id in sim.job_ids(&user) {
            if !listed.contains(&id) {
                let (status, old) = h.get(&format!("/jobs/{id}")).await;
                assert_eq!(status, StatusCode::OK);
                assert!(now - time(&old["created"]) > TimeDelta::days(7));
            }
        }
    }
    assert_eq!(array_results, 1);
    assert!(untyped_failures > 10);
    assert_eq!(running_without_source, 1);
    assert!(openbanking > 0);
    let all_jobs: usize = sim.user_ids().iter().map(|u| sim.job_ids(u).len()).sum();
    assert!(all_jobs > listed.len(), "some jobs are older than 7 days");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let running = Simulator::new(quick(1, Duration::from_secs(2)))
        .bind(LOOPBACK)
        .await
        .unwrap();
    let base = running.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    running.shutdown().await;
    let client = Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(
        client
            .get(format!("{base}/connectors"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_simulator_binds_only_loopback_unless_exposed_on_purpose() {
    let Err(refused) = Simulator::new(crate::helpers::sim_config())
        .bind("0.0.0.0:0".parse().unwrap())
        .await
    else {
        panic!("a non-loopback bind is refused");
    };
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(refused.to_string().contains("loopback"), "{refused}");
    let exposed = Simulator::new(crate::helpers::sim_config())
        .bind_exposed("0.0.0.0:0".parse().unwrap())
        .await
        .expect("bind_exposed binds any address");
    assert!(exposed.addr.ip().is_unspecified());
}
