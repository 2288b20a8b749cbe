//! The operator's console over HTTP (the browser's view is `browser`): sign-in by a one-time
//! link or the API token, the session cookie, CSRF on every change, the pages' status codes
//! and headers, outside text shown as text, and counts that equal `status --json`'s.

use std::time::Duration as StdDuration;

use basiq_health::app::App;
use basiq_health::domain::{ConnectionId, UserId};
use basiq_sim::Outcome;
use chrono::Duration;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};

use crate::app::TestApp;
use crate::helpers::Daemon;

/// A user with one open-banking connection at `institution`, used an hour ago, whose newest
/// job ended as `outcome`.
pub fn user_at(
    sim: &basiq_sim::RunningSim,
    name: &str,
    institution: &str,
    outcome: Outcome,
) -> (UserId, ConnectionId) {
    crate::cdr::user_at(
        sim,
        name,
        institution,
        "open-banking",
        outcome,
        Duration::hours(1),
    )
}

/// A browser without a cookie jar or redirects: every step is seen.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A daemon with its API (and so the console) on a loopback port.
pub async fn console_app(t: &TestApp, extra: &str) -> (App, String) {
    let mut settings = t.settings_with(extra);
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    let app = t.app_from(settings).await;
    let base = format!("http://{}", app.api_addr().expect("the API listens"));
    (app, base)
}

/// The session cookie a sign-in answer sets.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("bh_session=") && !v.starts_with("bh_session=;"))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

/// Signs in with a fresh one-time link (the daemon serving); returns the `Cookie` header
/// value.
pub async fn sign_in(
    store: &basiq_health::store::Store,
    clock: &basiq_health::clock::Clock,
    base: &str,
) -> String {
    let code = basiq_health::console::auth::create_code(store, clock.now())
        .await
        .unwrap();
    let r = client()
        .get(format!("{base}/login?code={code}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/");
    session_cookie(&r).expect("a session cookie")
}

async fn get(base: &str, path: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut req = client().get(format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    req.send().await.unwrap()
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    page[at + 19..].split('"').next().unwrap().to_owned()
}

const PAGES: [&str; 5] = [
    "/",
    "/banks",
    "/banks/AU00000/open-banking",
    "/refreshes",
    "/notifications",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_link_signs_in_once_and_every_page_needs_the_session() {
    let t = TestApp::quick().await;
    let (user, _) = user_at(t.sim(), "c1", "AU00000", Outcome::Success);
    let (app, base) = console_app(&t, "").await;
    app.context()
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    crate::app::sweep_users(app.context(), std::slice::from_ref(&user)).await;
    let store = app.context().store().clone();
    let code = basiq_health::console::auth::create_code(&store, app.clock().now())
        .await
        .unwrap();
    let daemon = Daemon::start(app);
    // Without a session: every page sends the browser to /login; probes are unchanged.
    for page in PAGES {
        let r = get(&base, page, None).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(r.headers()[LOCATION], "/login", "{page}");
    }
    assert_eq!(get(&base, "/healthz", None).await.status(), StatusCode::OK);
    assert_eq!(get(&base, "/metrics", None).await.status(), StatusCode::OK);
    let login = get(&base, &format!("/login?code={code}"), None).await;
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let set: Vec<String> = login
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set.iter().find(|v| v.starts_with("bh_session=")).unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"] {
        assert!(session.contains(part), "{session}");
    }
    assert!(!session.contains("Secure"), "plain http on loopback");
    let cookie = session_cookie(&login).unwrap();
    // Used once: the second time it says so.
    let again = get(&base, &format!("/login?code={code}"), None).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert!(again.text().await.unwrap().contains("used already"));
    let unknown = get(&base, &format!("/login?code={}", "ab".repeat(32)), None).await;
    assert!(unknown.text().await.unwrap().contains("not known"));
    for page in PAGES {
        let r = get(&base, page, Some(&cookie)).await;
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let csp = r.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("unsafe"),
            "{csp}"
        );
        let body = r.text().await.unwrap();
        assert!(!body.contains("<script"), "no script on {page}");
        assert!(!body.contains("://"), "no address of any host on {page}");
    }
    // Behind a TLS proxy the cookie is Secure.
    let code = basiq_health::console::auth::create_code(&store, chrono::Utc::now())
        .await
        .unwrap();
    let proxied = client()
        .get(format!("{base}/login?code={code}"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(
        proxied
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .any(|v| v.to_str().unwrap().contains("; Secure")),
        "a cookie over https is Secure"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_session_s_csrf_token_and_signing_out_ends_the_session() {
    let t = TestApp::quick().await;
    let (app, base) = console_app(&t, "").await;
    let (store, clock) = (app.context().store().clone(), app.clock().clone());
    let daemon = Daemon::start(app);
    let cookie = sign_in(&store, &clock, &base).await;
    let home = get(&base, "/", Some(&cookie)).await.text().await.unwrap();
    let csrf = csrf_of(&home);
    // Forged or missing: 403, and the session lives on.
    for forged in ["", "0123456789abcdef0123456789abcdef"] {
        let r = client()
            .post(format!("{base}/logout"))
            .header(COOKIE, &cookie)
            .form(&[("csrf", forged)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let retry = client()
        .post(format!("{base}/notifications/1/retry"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::FORBIDDEN);
    let missing = client()
        .post(format!("{base}/notifications/1/retry"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND, "no such delivery");
    assert_eq!(
        get(&base, "/", Some(&cookie)).await.status(),
        StatusCode::OK
    );
    let out = client()
        .post(format!("{base}/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(out.headers()[LOCATION], "/login");
    let after = get(&base, "/", Some(&cookie)).await;
    assert_eq!(
        after.status(),
        StatusCode::SEE_OTHER,
        "the old cookie is no session"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_pasted_in_signs_in_and_a_wrong_one_does_not() {
    use secrecy::ExposeSecret;
    let t = TestApp::quick().await;
    let (app, base) = console_app(&t, "").await;
    let token = app.api_token().unwrap().expose_secret().to_owned();
    let daemon = Daemon::start(app);
    let form = get(&base, "/login", None).await;
    let pre = form
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|v| v.starts_with("bh_login="))
        .unwrap();
    let csrf = csrf_of(&form.text().await.unwrap());
    let post = |token: String, csrf: String| {
        let (base, pre) = (base.clone(), pre.clone());
        async move {
            client()
                .post(format!("{base}/login"))
                .header(COOKIE, pre)
                .form(&[("csrf", csrf), ("token", token)])
                .send()
                .await
                .unwrap()
        }
    };
    let wrong = post("not-the-token".into(), csrf.clone()).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(session_cookie(&wrong).is_none());
    let forged = post(token.clone(), "0".repeat(32)).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let right = post(token, csrf).await;
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let cookie = session_cookie(&right).unwrap();
    assert_eq!(
        get(&base, "/refreshes", Some(&cookie)).await.status(),
        StatusCode::OK
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_and_an_expired_session_lead_back_to_login() {
    let t = TestApp::builder().quick().driven().spawn().await;
    let (app, base) = console_app(&t, "").await;
    let clock = app.clock().clone();
    let store = app.context().store().clone();
    let daemon = Daemon::start(app);
    let cookie = sign_in(&store, &clock, &base).await;
    let code = basiq_health::console::auth::create_code(&store, clock.now())
        .await
        .unwrap();
    clock.advance(StdDuration::from_secs(11 * 60));
    let late = get(&base, &format!("/login?code={code}"), None).await;
    assert_eq!(late.status(), StatusCode::BAD_REQUEST);
    assert!(late.text().await.unwrap().contains("expired"));
    assert_eq!(
        get(&base, "/", Some(&cookie)).await.status(),
        StatusCode::OK
    );
    clock.advance(StdDuration::from_secs(12 * 3600));
    let r = get(&base, "/", Some(&cookie)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/login");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_answer_404_bad_ones_400_and_a_hostile_bank_name_is_text() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .set_institution_name("AU00001", "<img src=x onerror=alert(1)>");
    let (user, conn) = user_at(sim, "h1", "AU00001", Outcome::Success);
    let (app, base) = console_app(&t, "").await;
    app.context()
        .add_users(std::slice::from_ref(&user))
        .await
        .unwrap();
    crate::app::sweep_users(app.context(), std::slice::from_ref(&user)).await;
    let (store, clock) = (app.context().store().clone(), app.clock().clone());
    let daemon = Daemon::start(app);
    let cookie = sign_in(&store, &clock, &base).await;
    let banks = get(&base, "/banks", Some(&cookie))
        .await
        .text()
        .await
        .unwrap();
    // Escaped (askama writes `<` as `&#60;`): the name is there, as text.
    assert!(
        banks.contains("&#60;img src=x onerror=alert(1)&#62;"),
        "{banks}"
    );
    assert!(!banks.contains("<img"));
    let bank = get(&base, "/banks/AU00001/open-banking", Some(&cookie)).await;
    assert_eq!(bank.status(), StatusCode::OK);
    let bank = bank.text().await.unwrap();
    assert!(
        bank.contains(conn.as_str()),
        "the bank lists its connections"
    );
    assert!(!bank.contains("<img"));
    let page = get(&base, &format!("/connections/{conn}"), Some(&cookie)).await;
    assert_eq!(page.status(), StatusCode::OK);
    for (path, status) in [
        ("/connections/no-such-connection", StatusCode::NOT_FOUND),
        ("/banks/AU77777/web", StatusCode::NOT_FOUND),
        ("/banks/AU0%3Cb%3E/web", StatusCode::BAD_REQUEST),
        ("/connections/%3Cscript%3E", StatusCode::BAD_REQUEST),
        ("/login?code=1&code=2", StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(
            get(&base, path, Some(&cookie)).await.status(),
            status,
            "{path}"
        );
    }
    daemon.stop().await;
}

/// The home page's counts, read from its markup.
pub fn home_count(page: &str, queue: &str) -> i64 {
    let at = page
        .find(&format!("data-count=\"{queue}\">"))
        .unwrap_or_else(|| panic!("queue {queue} missing"));
    page[at..]
        .split('>')
        .nth(1)
        .and_then(|t| t.split('<').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_must_act_counts_what_status_counts() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let mut users = Vec::new();
    for (n, code) in [
        "invalid-credentials",
        "consent-expired",
        "account-not-accessible-requires-user-action",
    ]
    .iter()
    .enumerate()
    {
        let (u, _) = user_at(
            sim,
            &format!("act{n}"),
            "AU00000",
            Outcome::fail("verify-credentials", code, "title", "detail"),
        );
        users.push(u);
    }
    let (u, _) = user_at(sim, "fine", "AU00004", Outcome::Success);
    users.push(u);
    let (app, base) = console_app(&t, "").await;
    app.context().add_users(&users).await.unwrap();
    crate::app::sweep_users(app.context(), &users).await;
    let report = basiq_health::report::status(app.context().store(), None, None, app.clock().now())
        .await
        .unwrap();
    let (store, clock) = (app.context().store().clone(), app.clock().clone());
    let daemon = Daemon::start(app);
    let cookie = sign_in(&store, &clock, &base).await;
    let home = get(&base, "/", Some(&cookie)).await.text().await.unwrap();
    assert_eq!(
        home_count(&home, "users"),
        i64::try_from(report.summary.action_required).unwrap()
    );
    assert_eq!(home_count(&home, "users"), 3);
    assert_eq!(
        home_count(&home, "banks"),
        i64::try_from(report.banks_down.len() + report.maintenance.len()).unwrap()
    );
    assert!(home.contains("to re-consent"), "{home}");
    assert!(
        home.contains("to clear a message their bank shows"),
        "{home}"
    );
    daemon.stop().await;
}

/// The CLI's JSON on the house's database (`args` after the config).
fn cli_json(t: &TestApp, api: &str, args: &[&str]) -> (String, std::process::Output) {
    let sim = t.sim();
    let out = crate::cli::bin()
        .arg("--config")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/basiq-health.toml"
        ))
        .args(args)
        .env("BASIQ_HEALTH__BASIQ__BASE_URL", sim.base_url())
        .env("BASIQ_HEALTH__DATABASE__PATH", t.db())
        .env("BASIQ_HEALTH__API__LISTEN", api)
        .env("BASIQ_HEALTH__API__TOKEN_FILE", t.path("api-token"))
        .env("BASIQ_HEALTH__CDR__REGISTER_URL", sim.cdr_register_url())
        .env("BASIQ_HEALTH_API_KEY", sim.sim.api_key())
        .output()
        .unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), out)
}

/// Every page in a real browser: signed in with the link `basiq-health console` prints, at a
/// phone's width and a desktop's, screenshots kept; counts as `status --json` says; a
/// hostile bank name shown as text; nothing asked of any other host; no console error;
/// signing out (or a session gone) leads to `/login`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_works_in_a_real_browser_at_375_and_1280_pixels() -> anyhow::Result<()> {
    let Some(browser) = crate::browser::Browser::launch().await? else {
        return Ok(());
    };
    let folder = crate::browser::screenshot_folder("every_page_works_in_a_real_browser")?;
    let t = TestApp::quick().await;
    let sim = t.sim();
    sim.sim
        .set_institution_name("AU00001", "<img src=x onerror=alert(1)>");
    let mut users = Vec::new();
    for (n, code) in ["invalid-credentials", "consent-expired"]
        .iter()
        .enumerate()
    {
        let (u, _) = user_at(
            sim,
            &format!("b{n}"),
            "AU00001",
            Outcome::fail("verify-credentials", code, "title", "detail"),
        );
        users.push(u);
    }
    let (u, conn) = user_at(sim, "ok", "AU00004", Outcome::Success);
    users.push(u);
    // A scripted outage: Basiq says Raviga's open banking is down.
    sim.sim
        .set_connector_status("AU00004", "open-banking", "major-outage");
    let mut settings = t.settings_with("");
    settings.api.listen = Some("127.0.0.1:0".parse().unwrap());
    settings.api.token_file = t.path("api-token");
    let app = t.app_from(settings).await;
    let addr = app.api_addr().unwrap();
    let base = format!("http://{addr}");
    app.context().add_users(&users).await.unwrap();
    crate::app::sweep_users(app.context(), &users).await;
    let daemon = Daemon::start(app);
    let (status, _) = cli_json(&t, &addr.to_string(), &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status)?;
    let (link, out) = cli_json(&t, &addr.to_string(), &["console"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = link.trim();
    assert!(link.starts_with(&format!("{base}/login?code=")), "{link}");

    browser.set_window(1280, 900).await?;
    browser.goto(link).await?;
    assert_eq!(browser.current_url().await?, format!("{base}/"));
    let cookies = browser.cookies().await?;
    let session = cookies
        .iter()
        .find(|c| c.name == "bh_session")
        .expect("signed in");
    assert!(session.http_only);
    let pages = [
        ("home", "/".to_owned()),
        ("banks", "/banks".to_owned()),
        ("bank", "/banks/AU00001/open-banking".to_owned()),
        ("bank-outage", "/banks/AU00004/open-banking".to_owned()),
        ("connection", format!("/connections/{conn}")),
        ("refreshes", "/refreshes".to_owned()),
        ("notifications", "/notifications".to_owned()),
    ];
    for width in [1280, 375] {
        browser.set_window(width, 900).await?;
        for (name, path) in &pages {
            browser.goto(&format!("{base}{path}")).await?;
            assert_eq!(
                browser.current_url().await?,
                format!("{base}{path}"),
                "{name}"
            );
            assert!(
                !browser.has_horizontal_scroll().await?,
                "{name} fits {width} px without scrolling sideways"
            );
            browser.screenshot_page(&folder, name).await?;
        }
    }
    // The counts are status --json's.
    browser.goto(&format!("{base}/")).await?;
    let home = browser.source().await?;
    assert_eq!(
        home_count(&home, "users"),
        status["summary"]["action_required"].as_i64().unwrap()
    );
    let banks_down = status["banks_down"].as_array().unwrap().len()
        + status["maintenance"].as_array().unwrap().len();
    assert_eq!(home_count(&home, "banks"), i64::try_from(banks_down)?);
    // The hostile name is text: shown, and nothing made of it.
    browser.goto(&format!("{base}/banks")).await?;
    let names = browser.find_text("td a").await?;
    assert!(
        names.iter().any(|n| n == "<img src=x onerror=alert(1)>"),
        "{names:?}"
    );
    let images = browser
        .execute("return document.querySelectorAll('img').length", &[])
        .await?;
    assert_eq!(images, serde_json::json!(0));
    assert_eq!(browser.off_loopback_requests().await?, Vec::<String>::new());
    assert_eq!(browser.console_errors().await?, Vec::<String>::new());
    // Signing out leads to /login, and so does a session the browser no longer has.
    browser.submit("header form").await?;
    assert_eq!(browser.current_url().await?, format!("{base}/login"));
    browser.goto(&format!("{base}/refreshes")).await?;
    assert_eq!(browser.current_url().await?, format!("{base}/login"));
    browser.screenshot_page(&folder, "login").await?;
    let (link, _) = cli_json(&t, &addr.to_string(), &["console"]);
    browser.goto(link.trim()).await?;
    browser.delete_cookies().await?;
    browser.goto(&format!("{base}/banks")).await?;
    assert_eq!(browser.current_url().await?, format!("{base}/login"));
    daemon.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_hour_is_rolled_up_once_per_bank_from_the_kept_counts_and_pruned_with_the_history() {
    let t = TestApp::quick().await;
    let sim = t.sim();
    let mut users = Vec::new();
    for n in 0..3 {
        let (u, _) = user_at(sim, &format!("r{n}"), "AU00000", Outcome::Success);
        users.push(u);
    }
    let (u, _) = user_at(
        sim,
        "r-act",
        "AU00000",
        Outcome::fail("verify-credentials", "invalid-credentials", "t", "d"),
    );
    users.push(u);
    let store = t.store().await;
    t.register(&users).await;
    t.sweep(&users).await;
    let now = chrono::Utc::now();
    let hour = chrono::DurationRound::duration_trunc(now, Duration::hours(1)).unwrap();
    let written = store.write_rollups(hour).await.unwrap();
    assert!(written >= 1, "a row per connector with connections");
    assert_eq!(store.write_rollups(hour).await.unwrap(), 0, "once per hour");
    let rows = store
        .rollups("AU00000", "open-banking", hour - Duration::hours(2))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].healthy, rows[0].action), (3, 1));
    assert_eq!(rows[0].hour, (hour - Duration::hours(1)).timestamp());
    // The counts behind them are the connections' own.
    let counts = store.connector_counts().await.unwrap();
    let ours = counts
        .iter()
        .find(|c| c.institution_id == "AU00000" && c.method == "open-banking")
        .unwrap();
    assert_eq!(ours.total(), 4);
    assert_eq!(ours.by_health.get("action-required"), Some(&1));
    // Kept `retain_days`, then gone with the rest of the history.
    store.prune(1, hour + Duration::days(3)).await.unwrap();
    assert!(
        store
            .rollups("AU00000", "open-banking", hour - Duration::hours(2))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A bank's week as its page draws it: an outage Basiq reported four days ago, maintenance
/// the bank announced for tomorrow; screenshot kept for the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bank_s_timeline_shows_last_week_s_outage_and_tomorrow_s_maintenance()
-> anyhow::Result<()> {
    let Some(browser) = crate::browser::Browser::launch().await? else {
        return Ok(());
    };
    let folder = crate::browser::screenshot_folder("a_bank_s_timeline")?;
    let t = TestApp::builder().quick().driven().spawn().await;
    let sim = t.sim();
    let clock = t.clock().clone();
    let (u, _) = user_at(sim, "tl", "AU00003", Outcome::Success);
    let (app, base) = console_app(&t, "").await;
    app.context()
        .add_users(std::slice::from_ref(&u))
        .await
        .unwrap();
    // Time goes forward only: the outage now, then four days on.
    crate::app::sweep_users(app.context(), std::slice::from_ref(&u)).await;
    sim.sim
        .set_connector_status("AU00003", "open-banking", "major-outage");
    clock.advance(StdDuration::from_secs(600));
    crate::app::sweep_users(app.context(), std::slice::from_ref(&u)).await;
    clock.advance(StdDuration::from_secs(30 * 3600));
    sim.sim
        .set_connector_status("AU00003", "open-banking", "operational");
    crate::app::sweep_users(app.context(), std::slice::from_ref(&u)).await;
    clock.advance(StdDuration::from_secs(3 * 24 * 3600));
    let today = clock.now();
    let brand = basiq_sim::cdr_brand_id("AU00003").unwrap();
    sim.sim.set_cdr_outages(
        brand,
        vec![basiq_sim::CdrOutage {
            outage_time: (today + Duration::hours(20)).to_rfc3339(),
            duration: "PT3H".into(),
            is_partial: Some(false),
            explanation: "Core banking upgrade".into(),
        }],
    );
    app.witness().unwrap().clone().poll(true).await?;
    let (store, clock2) = (app.context().store().clone(), app.clock().clone());
    let daemon = Daemon::start(app);
    let cookie_link = {
        let code = basiq_health::console::auth::create_code(&store, clock2.now()).await?;
        format!("{base}/login?code={code}")
    };
    browser.set_window(1280, 900).await?;
    browser.goto(&cookie_link).await?;
    browser
        .goto(&format!("{base}/banks/AU00003/open-banking"))
        .await?;
    let bands = browser
        .execute(
            "return [...document.querySelectorAll('svg.timeline rect')].map(r => r.getAttribute('fill') + ' ' + r.getAttribute('width'))",
            &[],
        )
        .await?;
    let bands: Vec<String> = serde_json::from_value(bands)?;
    let wide = |colour: &str| {
        bands.iter().any(|b| {
            b.starts_with(colour)
                && b.split(' ')
                    .nth(1)
                    .and_then(|w| w.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    > 50.0
        })
    };
    assert!(
        wide("#6e40c9"),
        "a day and more of outage is drawn: {bands:?}"
    );
    assert!(
        bands.iter().any(|b| b.starts_with("#9a6700")),
        "tomorrow's maintenance is drawn ahead: {bands:?}"
    );
    let text = browser.find_text("table td").await?;
    assert!(text.iter().any(|t| t == "Core banking upgrade"), "{text:?}");
    browser.screenshot_page(&folder, "bank").await?;
    browser.goto(&format!("{base}/")).await?;
    browser.screenshot_page(&folder, "home").await?;
    assert_eq!(browser.console_errors().await?, Vec::<String>::new());
    daemon.stop().await;
    Ok(())
}
