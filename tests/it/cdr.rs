//! The second witness against the simulator's CDR Register and data holders: each bank
//! mapped to its brand (by ABN, by name when an ABN is shared, by the operator's word, never
//! when ambiguous), an outage the bank reports itself before Basiq does, maintenance
//! announced ahead, and every way a Register or a data holder fails.

use std::time::Duration as StdDuration;

use basiq_health::domain::{ConnectionId, UserId};
use basiq_health::plan::classify::Health;
use basiq_health::store::cdr::BrandLine;
use basiq_health::work::Context;
use basiq_health::work::cdr::Witness;
use basiq_sim::{CdrFault, CdrOutage, Outcome, RunningSim, ScriptedConnection, ScriptedJob};
use chrono::{DateTime, Duration, Utc};

use crate::app::TestApp;

/// A user with one connection at `institution` by `method`; its newest job as given.
pub fn user_at(
    sim: &RunningSim,
    name: &str,
    institution: &str,
    method: &str,
    outcome: Outcome,
    last_used: Duration,
) -> (UserId, ConnectionId) {
    let (user, conn) = (format!("user-{name}"), format!("conn-{name}"));
    let now = Utc::now();
    sim.sim.add_user(&user);
    let mut c = ScriptedConnection::new(institution, method);
    c.id = conn.clone();
    c.last_used = Some(now - last_used);
    sim.sim.add_connection(&user, c);
    sim.sim.add_job(
        &user,
        ScriptedJob {
            id: Some(format!("job-{name}")),
            connection_id: conn.clone(),
            created: now - Duration::minutes(20),
            updated: now - Duration::minutes(19),
            outcome,
            running: false,
            with_source: true,
        },
    );
    (
        UserId::parse(user).unwrap(),
        ConnectionId::parse(conn).unwrap(),
    )
}

/// A user with one connection at `institution` by `method`, used an hour ago, whose newest
/// job succeeded.
fn healthy_at(
    sim: &RunningSim,
    name: &str,
    institution: &str,
    method: &str,
) -> (UserId, ConnectionId) {
    user_at(
        sim,
        name,
        institution,
        method,
        Outcome::Success,
        Duration::hours(1),
    )
}

fn fail(code: &str) -> Outcome {
    Outcome::fail("verify-credentials", code, "title", "detail")
}

/// A newer job of `conn` that failed with `code` five minutes ago.
fn fails_now(sim: &RunningSim, user: &UserId, conn: &ConnectionId, code: &str) {
    let now = Utc::now();
    sim.sim.add_job(
        user.as_str(),
        ScriptedJob {
            id: Some(format!("job-{conn}-now")),
            connection_id: conn.to_string(),
            created: now - Duration::minutes(5),
            updated: now - Duration::minutes(4),
            outcome: fail(code),
            running: false,
            with_source: true,
        },
    );
}

fn witness(context: &Context, t: &TestApp, extra: &str) -> Witness {
    Witness::new(context.clone(), t.settings_with(extra).cdr).expect("the CDR client builds")
}

fn brand(institution: &str) -> &'static str {
    basiq_sim::cdr_brand_id(institution).expect("the simulator maps it")
}

async fn lines(context: &Context) -> Vec<BrandLine> {
    context
        .store()
        .cdr_brand_lines(context.clock().now())
        .await
        .unwrap()
}

fn line<'a>(lines: &'a [BrandLine], institution: &str) -> &'a BrandLine {
    lines
        .iter()
        .find(|l| l.institution_id == institution)
        .unwrap_or_else(|| panic!("{institution} missing: {lines:?}"))
}

/// A healthy user at each of the simulator's six banks by open banking, registered and
/// swept once (so `/connectors`, with its ABNs, is read).
async fn a_user_at_each_bank(t: &TestApp) -> Vec<UserId> {
    let mut users = Vec::new();
    for n in 0..6 {
        let institution = format!("AU0000{n}");
        let (user, _) = user_at(
            t.sim(),
            &format!("bank{n}"),
            &institution,
            "open-banking",
            Outcome::Success,
            Duration::hours(1),
        );
        users.push(user);
    }
    t.register(&users).await;
    t.sweep(&users).await;
    users
}

#[tokio::test]
async fn each_bank_maps_to_its_brand_by_abn_by_name_when_the_abn_is_shared_and_not_when_ambiguous()
{
    let t = TestApp::empty().await;
    a_user_at_each_bank(&t).await;
    let context = t.context().await;
    let polled = witness(context, &t, "").poll(true).await.unwrap();
    assert_eq!(polled.register, "read");
    assert_eq!(polled.institutions, 6);
    let lines = lines(context).await;
    let hooli = line(&lines, "AU00000");
    assert_eq!(hooli.match_kind, "abn");
    assert_eq!(hooli.brand_id.as_deref(), Some(brand("AU00000")));
    assert_eq!(hooli.abn.as_deref(), Some("11111111111"), "digits only");
    assert_eq!(hooli.status.as_deref(), Some("OK"), "read once mapped");
    let aviato = line(&lines, "AU00001");
    assert_eq!(aviato.match_kind, "abn+name", "two brands share the ABN");
    assert_eq!(aviato.brand_id.as_deref(), Some(brand("AU00001")));
    let pied_piper = line(&lines, "AU00002");
    assert_eq!(pied_piper.match_kind, "ambiguous");
    assert_eq!(pied_piper.brand_id, None, "an ambiguous brand is unused");
    assert_eq!(pied_piper.status, None);
    assert_eq!(
        line(&lines, "AU00005").match_kind,
        "none",
        "no brand has its ABN"
    );
    // Only the brands some watched connection uses are read, and each once.
    let counters = t.sim().sim.cdr_counters();
    let read: Vec<&String> = counters.status.keys().collect();
    assert_eq!(read.len(), 4, "{counters:?}");
    assert!(counters.status.values().all(|n| *n == 1), "{counters:?}");
    let ambiguous: Vec<&str> = basiq_sim::CDR_BRANDS
        .iter()
        .filter(|b| b.institution_id == Some("AU00002"))
        .map(|b| b.brand_id)
        .collect();
    assert!(ambiguous.iter().all(|b| !counters.status.contains_key(*b)));
}

#[tokio::test]
async fn the_overrides_file_wins_over_the_abn_and_none_leaves_a_bank_unmapped() {
    let t = TestApp::empty().await;
    a_user_at_each_bank(&t).await;
    let retail = basiq_sim::cdr_brand_id_named("PP Retail").unwrap();
    let file = t.path("cdr-overrides.toml");
    std::fs::write(
        &file,
        format!("# ours\nAU00002 = {retail:?}\nAU00000 = \"none\"\n"),
    )
    .unwrap();
    let extra = format!(
        "[cdr]\nregister_url = {:?}\noverrides_file = {:?}\n",
        t.sim().cdr_register_url(),
        file.display().to_string()
    );
    let context = t.context().await;
    witness(context, &t, &extra).poll(true).await.unwrap();
    let lines = lines(context).await;
    let pied_piper = line(&lines, "AU00002");
    assert_eq!(pied_piper.match_kind, "override");
    assert_eq!(pied_piper.brand_id.as_deref(), Some(retail));
    assert_eq!(pied_piper.status.as_deref(), Some("OK"));
    let hooli = line(&lines, "AU00000");
    assert_eq!(hooli.match_kind, "override");
    assert_eq!(hooli.brand_id, None);
    assert_eq!(line(&lines, "AU00001").match_kind, "abn+name");
}

#[tokio::test]
async fn a_bad_overrides_file_is_refused_at_load_naming_the_key() {
    let t = TestApp::empty().await;
    let file = t.path("cdr-overrides.toml");
    std::fs::write(&file, "AU00002 = 7\n").unwrap();
    let toml = format!("[cdr]\noverrides_file = {:?}\n", file.display().to_string());
    let err = basiq_health::settings::Settings::from_toml(&toml).unwrap_err();
    assert!(err.to_string().contains("cdr.overrides_file"), "{err}");
    let missing = "[cdr]\noverrides_file = \"/nonexistent/overrides.toml\"\n";
    let err = basiq_health::settings::Settings::from_toml(missing).unwrap_err();
    assert!(err.to_string().contains("cdr.overrides_file"), "{err}");
}

#[tokio::test]
async fn a_bank_that_reports_itself_down_before_basiq_does_holds_every_ask_at_its_open_banking_only()
 {
    let t = TestApp::empty().await;
    let sim = t.sim();
    // Three users at Aviato by open banking and one at the same bank by web, all healthy.
    let (u1, c1) = healthy_at(sim, "ob1", "AU00001", "open-banking");
    let (u2, c2) = healthy_at(sim, "ob2", "AU00001", "open-banking");
    let (u3, c3) = healthy_at(sim, "web", "AU00001", "web");
    let (u4, _) = healthy_at(sim, "ok", "AU00001", "open-banking");
    let users = vec![u1.clone(), u2.clone(), u3.clone(), u4];
    let context = t
        .sweeper_with(&format!(
            "[sweep]\nconnectors_ttl = \"0s\"\n[cdr]\nregister_url = {:?}\n{}",
            sim.cdr_register_url(),
            crate::events::endpoint_toml_all(t.dir(), "http://127.0.0.1:9/hook")
        ))
        .await;
    context.add_users(&users).await.unwrap();
    crate::app::sweep_users(&context, &users).await;
    // The bank says UNAVAILABLE while Basiq's /connectors still says operational (down at
    // the witness's first read: since when is not known), and the users' refreshes fail
    // with codes that would ask them to act.
    assert!(sim.sim.set_cdr_status(
        brand("AU00001"),
        "UNAVAILABLE",
        Some("Core banking\u{1b}[31m down")
    ));
    let w = witness(&context, &t, "");
    let polled = w.poll(true).await.unwrap();
    assert_eq!(polled.outages_opened, 1, "{polled:?}");
    fails_now(sim, &u1, &c1, "invalid-credentials");
    fails_now(sim, &u2, &c2, "account-not-accessible-requires-user-action");
    fails_now(sim, &u3, &c3, "invalid-credentials");
    crate::app::sweep_users(&context, &users).await;
    let store = context.store();
    for conn in [&c1, &c2] {
        assert_eq!(
            crate::app::health_of(store, conn).await.0,
            Some(Health::InstitutionOutage),
            "{conn}: the bank's, not the user's"
        );
    }
    assert_eq!(
        crate::app::health_of(store, &c3).await.0,
        Some(Health::ActionRequired),
        "web is outside the CDR: its failure stays the user's"
    );
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, payload FROM outbox WHERE payload LIKE '%AU00001%' ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let payloads: Vec<serde_json::Value> = rows
        .iter()
        .map(|(_, p)| serde_json::from_str(p).unwrap())
        .collect();
    let started: Vec<&serde_json::Value> = payloads
        .iter()
        .filter(|p| p["type"] == "institution.outage_started")
        .collect();
    assert_eq!(started.len(), 1, "{payloads:?}");
    assert_eq!(started[0]["data"]["source"], "cdr");
    assert_eq!(started[0]["data"]["method"], "open-banking");
    for p in payloads
        .iter()
        .filter(|p| p["type"] == "connection.health_changed")
    {
        let about = p["data"]["connection_id"].as_str().unwrap_or_default();
        if about == c1.as_str() || about == c2.as_str() {
            assert_eq!(
                p["data"]["user_action"], "none",
                "nobody is asked to act: {p}"
            );
        }
    }
    // The outage shows with its source and the bank's words (no escape sequence).
    let report = basiq_health::report::status(store, None, None, context.clock().now())
        .await
        .unwrap();
    let down = report
        .banks_down
        .iter()
        .find(|b| b.institution_id == "AU00001")
        .expect("Aviato is down");
    assert_eq!(down.sources, vec!["cdr".to_owned()]);
    let table = basiq_health::report::render_table(&report, context.clock().now());
    assert!(table.contains("cdr: UNAVAILABLE"), "{table}");
    assert!(!table.contains('\u{1b}'), "{table}");
    // OK again: the outage ends, told once, and the held connections are checked again.
    assert!(sim.sim.set_cdr_status(brand("AU00001"), "OK", None));
    let polled = w.poll(true).await.unwrap();
    assert_eq!(polled.outages_closed, 1);
    let ended: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE event_type = 'institution.outage_ended' AND payload LIKE '%AU00001%'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(ended, 1);
    assert!(
        store
            .open_outages()
            .await
            .unwrap()
            .iter()
            .all(|o| o.institution_id != "AU00001")
    );
}

#[tokio::test]
async fn a_witness_that_cannot_be_read_says_nothing_and_is_counted() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let (u1, c1) = user_at(
        sim,
        "f1",
        "AU00000",
        "open-banking",
        fail("invalid-credentials"),
        Duration::hours(1),
    );
    let context = t.context().await;
    context.add_users(std::slice::from_ref(&u1)).await.unwrap();
    crate::app::sweep_users(context, std::slice::from_ref(&u1)).await;
    let w = witness(
        context,
        &t,
        &format!(
            "[cdr]\nregister_url = {:?}\ntimeout = \"300ms\"\n",
            sim.cdr_register_url()
        ),
    );
    // Mapped while the Register answers.
    assert_eq!(w.poll(true).await.unwrap().institutions, 1);
    let hooli = brand("AU00000");
    for fault in ["down", "slow", "406", "malformed", "html-404"] {
        sim.sim.clear_cdr_faults();
        let fault: CdrFault = CdrFault::from_name(fault, Some(StdDuration::from_secs(3))).unwrap();
        sim.sim.inject_cdr_fault(hooli, fault, None);
        let polled = w.poll(true).await.unwrap();
        assert_eq!(
            polled.failures, 2,
            "{fault}: status and outages both failed: {polled:?}"
        );
        assert_eq!(polled.outages_opened, 0, "{fault}");
    }
    sim.sim.clear_cdr_faults();
    // A bank that says UNAVAILABLE without the explanation the standard requires is still down.
    sim.sim.inject_cdr_fault(
        hooli,
        CdrFault::from_name("missing-explanation", None).unwrap(),
        Some(1),
    );
    let polled = w.poll(true).await.unwrap();
    assert_eq!(polled.outages_opened, 1, "{polled:?}");
    // Its next read fails: the witness says nothing (not down), the user is judged on Basiq.
    sim.sim
        .inject_cdr_fault(hooli, CdrFault::from_name("down", None).unwrap(), None);
    w.poll(true).await.unwrap();
    crate::app::sweep_users(context, std::slice::from_ref(&u1)).await;
    assert_eq!(
        crate::app::health_of(context.store(), &c1).await.0,
        Some(Health::ActionRequired),
        "an unreadable witness is never \"down\""
    );
    let metrics = context.store().cdr_figures().await.unwrap();
    let figure = metrics.iter().find(|f| f.brand_id == hooli).unwrap();
    assert!(
        figure.failures > 0 && figure.failures_total >= 11,
        "{figure:?}"
    );
}

#[tokio::test]
async fn the_register_down_at_the_first_start_maps_nothing_blames_nobody_and_backs_off() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let (u1, c1) = user_at(
        sim,
        "r1",
        "AU00000",
        "open-banking",
        fail("invalid-credentials"),
        Duration::hours(1),
    );
    let context = t.context().await;
    context.add_users(std::slice::from_ref(&u1)).await.unwrap();
    sim.sim.inject_cdr_fault(
        basiq_sim::CDR_REGISTER_TARGET,
        CdrFault::from_name("down", None).unwrap(),
        None,
    );
    let w = witness(context, &t, "");
    let polled = w.poll(false).await.unwrap();
    assert_eq!(polled.register, "failed");
    assert_eq!(polled.status_reads, 0);
    // Backing off: the next poll a second later does not ask again.
    let again = w.poll(false).await.unwrap();
    assert_eq!(again.register, "not-due");
    assert_eq!(sim.sim.cdr_counters().register, 1);
    crate::app::sweep_users(context, std::slice::from_ref(&u1)).await;
    assert_eq!(
        crate::app::health_of(context.store(), &c1).await.0,
        Some(Health::ActionRequired),
        "no CDR: Basiq alone decides"
    );
    assert!(lines(context).await.iter().all(|l| l.brand_id.is_none()));
}

#[tokio::test]
async fn the_second_register_read_is_a_304_and_keeps_the_brands() {
    let t = TestApp::empty().await;
    a_user_at_each_bank(&t).await;
    let context = t.context().await;
    let w = witness(context, &t, "");
    assert_eq!(w.poll(true).await.unwrap().register, "read");
    assert_eq!(w.poll(true).await.unwrap().register, "not-modified");
    let counters = t.sim().sim.cdr_counters();
    assert_eq!((counters.register, counters.register_not_modified), (2, 1));
    assert_eq!(line(&lines(context).await, "AU00000").match_kind, "abn");
    // Not due: nothing is asked of anyone (each brand once per interval).
    let quiet = w.poll(false).await.unwrap();
    assert_eq!(
        (quiet.register, quiet.status_reads, quiet.outages_reads),
        ("not-due", 0, 0)
    );
}

#[tokio::test]
async fn a_brand_whose_base_is_not_https_is_never_polled() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    a_user_at_each_bank(&t).await;
    let hooli = brand("AU00000");
    sim.sim.add_cdr_brand(basiq_sim::CdrBrand {
        brand_id: hooli.to_owned(),
        brand_name: "Hooli Bank".into(),
        abn: Some("11111111111".into()),
        acn: None,
        public_base_uri: Some("http://hooli.example.com/cds".into()),
    });
    let context = t.context().await;
    let polled = witness(context, &t, "").poll(true).await.unwrap();
    assert!(polled.failures >= 2, "{polled:?}");
    assert!(!sim.sim.cdr_counters().status.contains_key(hooli));
    let figures = context.store().cdr_figures().await.unwrap();
    assert!(
        figures
            .iter()
            .any(|f| f.brand_id == hooli && f.failures > 0)
    );
}

/// The `plan --json` of the house's database as the CLI prints it.
fn plan_json(t: &TestApp, mode: &str) -> Vec<serde_json::Value> {
    let sim = t.sim();
    let out = crate::cli::bin()
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/basiq-health.toml"
        ))
        .args(["plan", "--json"])
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", t.db())
        .env("BASIQ_HEALTH__API__LISTEN", "")
        .env("BASIQ_HEALTH__REFRESH__MODE", mode)
        .env("BASIQ_HEALTH__CDR__REGISTER_URL", sim.cdr_register_url())
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn at(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    v["refresh_at"].as_str().map(|t| t.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_announced_ahead_moves_the_daily_refresh_past_it_and_is_told_once_verified() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let dir = t.dir();
    let receiver = crate::events::Receiver::start(dir, "app", 0);
    // Stale (used two days ago): the daily mode refreshes it in its slot.
    let (user, conn) = user_at(
        sim,
        "daily",
        "AU00003",
        "open-banking",
        Outcome::Success,
        Duration::days(2),
    );
    let extra = format!(
        "[refresh]\nmode = \"daily\"\n[cdr]\nregister_url = {:?}\n{}",
        sim.cdr_register_url(),
        crate::events::endpoint_toml_all(dir, &receiver.url())
    );
    let app = t.app_with(&extra).await;
    app.context()
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    crate::app::sweep_users(app.context(), std::slice::from_ref(&user)).await;
    let before = plan_json(&t, "daily");
    let slot = at(&before[0]).unwrap_or_else(|| panic!("a daily slot: {before:?}"));
    // The bank announces maintenance over the slot (at least a minute ahead), in Sydney time.
    let now = Utc::now();
    let starts = (slot - Duration::minutes(30)).max(now + Duration::minutes(1));
    let ends = slot + Duration::minutes(45);
    let minutes = (ends - starts).num_minutes();
    assert!(sim.sim.set_cdr_outages(
        brand("AU00003"),
        vec![CdrOutage {
            outage_time: starts.to_rfc3339(),
            duration: format!("PT{}H{}M", minutes / 60, minutes % 60),
            is_partial: Some(true),
            explanation: "Core upgrade <b>tonight</b>".into(),
        }],
    ));
    let w = app.witness().expect("cdr is enabled").clone();
    let polled = w.poll(true).await.unwrap();
    assert_eq!(polled.windows_new, 1, "{polled:?}");
    // Seen again: not new, not told again.
    assert_eq!(w.poll(true).await.unwrap().windows_new, 0);
    let after = plan_json(&t, "daily");
    let line = &after[0];
    assert_eq!(line["connection_id"], conn.as_str());
    match at(line) {
        Some(refresh_at) => assert!(
            refresh_at >= ends,
            "no unattended refresh inside the window ({starts}..{ends}): {line}"
        ),
        None => assert_eq!(line["denied"], "scheduled-outage", "{line}"),
    }
    let daemon = crate::helpers::Daemon::start(app);
    crate::helpers::eventually(
        "the maintenance notice delivered",
        StdDuration::from_secs(20),
        || async {
            receiver
                .seen()
                .iter()
                .any(|s| s["body"]["type"] == "institution.maintenance_scheduled")
        },
    )
    .await;
    daemon.stop().await;
    let told: Vec<serde_json::Value> = receiver
        .seen()
        .into_iter()
        .filter(|s| s["body"]["type"] == "institution.maintenance_scheduled")
        .collect();
    assert_eq!(told.len(), 1, "once per window: {told:?}");
    assert_eq!(told[0]["verified"], true);
    let data = &told[0]["body"]["data"];
    assert_eq!(data["institution_id"], "AU00003");
    assert_eq!(data["method"], "open-banking");
    assert_eq!(data["partial"], true);
    assert_eq!(
        data["explanation"], "Core upgrade <b>tonight</b>",
        "data, kept as sent"
    );
    assert_eq!(data["affected_connections"], 1);
    let told_starts: DateTime<Utc> = data["starts_at"].as_str().unwrap().parse().unwrap();
    let told_ends: DateTime<Utc> = data["ends_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(told_starts.timestamp(), starts.timestamp());
    assert_eq!(told_ends.timestamp(), ends.timestamp());
}

#[tokio::test]
async fn a_failure_inside_announced_maintenance_is_the_bank_s_until_the_window_ends() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    let now = Utc::now();
    // The window began 40 minutes ago and ends in 20: the job 20 minutes ago failed inside.
    let (user, conn) = user_at(
        sim,
        "in",
        "AU00004",
        "open-banking",
        fail("invalid-credentials"),
        Duration::hours(1),
    );
    assert!(sim.sim.set_cdr_outages(
        brand("AU00004"),
        vec![CdrOutage {
            outage_time: (now - Duration::minutes(40)).to_rfc3339(),
            duration: "PT1H".into(),
            is_partial: None,
            explanation: "Planned".into(),
        }],
    ));
    let context = t.context().await;
    context
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    // The first sweep reads /connectors (and asks: nothing was known of the window yet).
    crate::app::sweep_users(context, std::slice::from_ref(&user)).await;
    assert_eq!(
        crate::app::health_of(context.store(), &conn).await.0,
        Some(Health::ActionRequired)
    );
    let w = witness(context, &t, "");
    assert_eq!(w.poll(true).await.unwrap().windows_new, 1);
    crate::app::sweep_users(context, std::slice::from_ref(&user)).await;
    assert_eq!(
        crate::app::health_of(context.store(), &conn).await.0,
        Some(Health::InstitutionOutage),
        "it failed inside the window the bank announced"
    );
}

#[tokio::test]
async fn metrics_show_each_bank_s_cdr_status_and_each_brand_s_failed_reads() {
    let t = TestApp::empty().await;
    let sim = t.sim();
    a_user_at_each_bank(&t).await;
    let context = t.context().await;
    let w = witness(context, &t, "");
    assert!(
        sim.sim
            .set_cdr_status(brand("AU00001"), "PARTIAL_FAILURE", Some("Slow"))
    );
    w.poll(true).await.unwrap();
    sim.sim.inject_cdr_fault(
        brand("AU00004"),
        CdrFault::from_name("malformed", None).unwrap(),
        None,
    );
    w.poll(true).await.unwrap();
    let refresher = t.refresher(context, &t.settings()).await;
    let text = crate::app::metrics_text(context, &refresher).await;
    assert!(
        text.contains(
            "basiq_health_cdr_status{institution_id=\"AU00001\",status=\"PARTIAL_FAILURE\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("basiq_health_cdr_status{institution_id=\"AU00000\",status=\"OK\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("basiq_health_cdr_status{institution_id=\"AU00004\",status=\"unknown\"} 1"),
        "a witness that cannot be read is unknown: {text}"
    );
    let raviga = brand("AU00004");
    assert!(
        text.contains(&format!(
            "basiq_health_cdr_poll_failures_total{{brand_id=\"{raviga}\"}} 2"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "basiq_health_cdr_poll_failing{{brand_id=\"{raviga}\"}} 2"
        )),
        "{text}"
    );
}

/// The CLI on the house's database, the simulator's Register, `args`; its exit code and
/// standard output.
fn cli(t: &TestApp, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let sim = t.sim();
    let mut cmd = crate::cli::bin();
    cmd.arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/basiq-health.toml"
        ))
        .args(args)
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", t.db())
        .env("BASIQ_HEALTH__API__LISTEN", "")
        .env("BASIQ_HEALTH__CDR__REGISTER_URL", sim.cdr_register_url())
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdr_poll_and_cdr_brands_work_from_the_command_line() {
    let t = TestApp::empty().await;
    a_user_at_each_bank(&t).await;
    let (code, out) = cli(&t, &[], &["cdr", "poll"]);
    assert_eq!(code, 0, "{out}");
    let polled: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(polled["register"], "read", "{polled}");
    assert_eq!(polled["institutions"], 6);
    let (code, out) = cli(&t, &[], &["cdr", "brands", "--json"]);
    assert_eq!(code, 0);
    let brands: serde_json::Value = serde_json::from_str(&out).unwrap();
    let aviato = brands
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["institution_id"] == "AU00001")
        .unwrap();
    for key in [
        "institution_id",
        "name",
        "abn",
        "brand_id",
        "brand_name",
        "match",
        "status",
        "status_checked_at",
        "next_outage",
    ] {
        assert!(aviato.get(key).is_some(), "{key} in {aviato}");
    }
    assert_eq!(aviato["match"], "abn+name");
    assert_eq!(aviato["brand_name"], "Aviato");
    assert_eq!(aviato["status"], "OK");
    let (code, table) = cli(&t, &[], &["cdr", "brands"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("AU00002") && table.contains("ambiguous"),
        "{table}"
    );
    // Off: `cdr poll` says so and exits 1.
    let (code, _) = cli(
        &t,
        &[("BASIQ_HEALTH__CDR__ENABLED", "false")],
        &["cdr", "poll"],
    );
    assert_eq!(code, 1);
    // A key out of its range: exit 78 naming it.
    let (code, _) = cli(
        &t,
        &[("BASIQ_HEALTH__CDR__STATUS_INTERVAL", "5s")],
        &["cdr", "poll"],
    );
    assert_eq!(code, 78);
}

#[tokio::test(flavor = "current_thread")]
async fn a_register_that_stays_down_is_retried_from_a_minute_doubling_and_logged_once_an_hour() {
    let (logs, _guard) = crate::helpers::capture_logs();
    let t = TestApp::builder().users(0).driven().spawn().await;
    let sim = t.sim();
    a_user_at_each_bank(&t).await;
    let context = t.context().await;
    // The data holders are read seldom here: only the Register's retries are counted.
    let w = witness(
        context,
        &t,
        &format!(
            "[cdr]\nregister_url = {:?}\nstatus_interval = \"24h\"\noutages_interval = \"7d\"\n",
            sim.cdr_register_url()
        ),
    );
    // Mapped first; then the Register goes down for good.
    w.poll(true).await.unwrap();
    let mapped = lines(context).await;
    sim.sim.inject_cdr_fault(
        basiq_sim::CDR_REGISTER_TARGET,
        CdrFault::from_name("down", None).unwrap(),
        None,
    );
    let clock = t.clock();
    clock.advance(StdDuration::from_secs(25 * 3600));
    let mut reads = Vec::new();
    // Two hours in steps of a minute: due after 1, 2, 4, 8, 16, 32, 64 minutes.
    for _ in 0..120 {
        let polled = w.poll(false).await.unwrap();
        if polled.register == "failed" {
            reads.push(clock.now());
        }
        clock.advance(StdDuration::from_secs(60));
    }
    let gaps: Vec<i64> = reads
        .windows(2)
        .map(|p| (p[1] - p[0]).num_minutes())
        .collect();
    assert_eq!(&gaps[..6], &[1, 2, 4, 8, 16, 32], "{gaps:?}");
    let warned = logs
        .lines()
        .into_iter()
        .filter(|l| l["event"] == "cdr_register_failed" && l["level"] == "WARN")
        .count();
    assert_eq!(warned, 2, "once an hour over two hours of failures");
    // The brands known stand: every mapping kept.
    let kept = lines(context).await;
    for (a, b) in mapped.iter().zip(&kept) {
        assert_eq!((&a.brand_id, &a.match_kind), (&b.brand_id, &b.match_kind));
    }
}
