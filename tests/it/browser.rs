//! A real browser for the console's tests: Debian's Chromium, headless, driven over WebDriver
//! (W3C) through chromedriver, with a small client on `reqwest`. It knows nothing of the daemon:
//! a console test starts the daemon, hands this harness a `http://127.0.0.1:<port>/...` address
//! and asserts on what the browser saw.
//!
//! # What a console test calls
//! ```text
//! let Some(browser) = Browser::launch().await? else { return Ok(()) };   // None: skipped
//! browser.set_window(375, 800).await?;                 // errors unless innerWidth is 375
//! browser.goto(&format!("{base}/login")).await?;       // waits for the load event
//! browser.title().await?  browser.current_url().await?  browser.source().await?
//! browser.find_text("table td").await?                 // Vec<String>, whitespace collapsed
//! browser.execute("return arguments[0] + 1", &[json!(41)]).await?   // serde_json::Value
//! browser.fill("input[name=token]", "secret").await?;  // clears, then types
//! browser.submit("form").await?;                       // requestSubmit, waits for the next page
//! browser.click("a.next").await?;
//! browser.cookies().await?  browser.delete_cookies().await?          // Vec<Cookie>
//! browser.has_horizontal_scroll().await?               // scrollWidth > innerWidth
//! browser.console_errors().await?                      // SEVERE entries, since launch
//! browser.requested_urls().await?                      // every request, since launch
//! browser.off_loopback_requests().await?               // those not to 127.0.0.1/localhost/[::1]
//! let folder = screenshot_folder("the_test_s_name")?;  // target/console-screenshots/<test>/
//! browser.screenshot_page(&folder, "login").await?;    // <folder>/login-375.png, whole page
//! browser.screenshot(&path).await?;                    // the whole page, PNG, anywhere
//! ```
//! Every method returns `anyhow::Result`, so a test can be `async fn ...() -> anyhow::Result<()>`
//! and use `?`; errors name the WebDriver command and chromedriver's message.
//!
//! # How the browser is kept off the network
//! Chromium runs with
//! ```text
//! --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --disable-quic
//! --no-first-run --disable-background-networking --disable-component-update --disable-sync
//! --no-proxy-server                      proxy variables in the environment are ignored
//! --hide-scrollbars                      a phone's scrollbars take no width
//! --host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost
//!                                        no name but loopback resolves, even on an open network
//! --user-data-dir=<fresh temp dir>       deleted when the browser drops
//! ```
//! and the profile's startup page set to `about:blank` (`session.restore_on_startup`: 4):
//! otherwise Debian's Chromium opens its new-tab page, which is DuckDuckGo's, and navigates to
//! `https://start.duckduckgo.com/` before the test's first step. The binary is
//! `/usr/lib/chromium/chromium` when present rather than the `/usr/bin/chromium` launcher script,
//! which adds `--enable-remote-extensions`, `--load-extension=...` and Debian's Google API keys.
//! chromedriver listens on a port it picks (`--port=0`) for local connections only; the harness's
//! HTTP client ignores proxy variables and talks to 127.0.0.1 only.
//!
//! # How errors and requests are read
//! chromedriver's log endpoint, `POST /session/{id}/se/log` with `{"type": ...}`, and the
//! session's `goog:loggingPrefs` `{"browser": "ALL", "performance": "ALL"}`. Type `browser` is
//! the console: `SEVERE` is `console.error`, an uncaught exception or a resource that failed to
//! load (a 404 `/favicon.ico` counts: give every page an icon, `<link rel="icon" href="data:,">`
//! will do). Type `performance` is the DevTools event stream: each `Network.requestWillBeSent`
//! and `Network.webSocketCreated` is a request, and so is each `Page.frameStartedNavigating` to
//! another document (a navigation the browser starts before DevTools watches the network, such
//! as its start page, has no `requestWillBeSent`; a navigation's document request is not counted
//! twice). Each read drains chromedriver's buffer, so the harness keeps what it read: both lists
//! run from launch. Screenshots are DevTools' `Page.captureScreenshot` beyond the viewport
//! (through chromedriver's `goog/cdp/execute`): the whole page, not only what the window shows.
//!
//! # When there is no browser
//! Without `chromium` or `chromedriver` a test is skipped with a note on stderr, unless
//! `BASIQ_HEALTH_REQUIRE_BROWSER` is set (`.ci/run` sets it): then it fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

/// Set (to anything) to make a missing browser fail the tests instead of skipping them.
pub const REQUIRE_BROWSER: &str = "BASIQ_HEALTH_REQUIRE_BROWSER";

/// Chromium's own binary on Debian first; the launcher script as a fallback.
const CHROMIUM: &[&str] = &["/usr/lib/chromium/chromium", "/usr/bin/chromium"];

/// W3C's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Page loads and scripts are local and small: anything slower is a failure.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// One headless Chromium with its own chromedriver and profile; both end when it drops.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`
    session: String,
    session_id: String,
    // Dropped after `drop` has quit the browser: the driver, then the profile.
    driver: Driver,
    _profile: tempfile::TempDir,
    seen: Mutex<Seen>,
}

/// What the logs said so far: chromedriver hands each entry out once.
#[derive(Default)]
struct Seen {
    console_errors: Vec<String>,
    requested_urls: Vec<String>,
    /// Frame id → the URL it started navigating to, until its document request shows up.
    navigating: HashMap<String, String>,
}

impl Seen {
    /// Notes the URL of one DevTools event if it starts a request. A navigation counts when it
    /// starts: one the browser begins before DevTools watches the network (its start page)
    /// never gets a `Network.requestWillBeSent`. Its document request, when there is one, is the
    /// same request and is not counted twice.
    fn note_request(&mut self, event: &Value) -> anyhow::Result<()> {
        let params = &event["params"];
        let url = |v: &Value| {
            v.as_str()
                .map(str::to_owned)
                .with_context(|| format!("a request without a URL: {event}"))
        };
        match event["method"].as_str() {
            Some("Page.frameStartedNavigating") => {
                // Within the page (a #fragment, history.pushState): no request.
                if params["navigationType"]
                    .as_str()
                    .is_some_and(|t| t.to_ascii_lowercase().contains("samedocument"))
                {
                    return Ok(());
                }
                let url = url(&params["url"])?;
                if let Some(frame) = params["frameId"].as_str() {
                    self.navigating.insert(frame.to_owned(), url.clone());
                }
                self.requested_urls.push(url);
            }
            Some("Network.requestWillBeSent") => {
                let url = url(&params["request"]["url"])?;
                let started = params["frameId"]
                    .as_str()
                    .filter(|_| params["type"] == "Document")
                    .and_then(|frame| self.navigating.remove(frame));
                if started.as_ref() != Some(&url) {
                    self.requested_urls.push(url);
                }
            }
            Some("Network.webSocketCreated") => self.requested_urls.push(url(&params["url"])?),
            _ => {}
        }
        Ok(())
    }
}

/// A cookie as the browser holds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cookie {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub http_only: bool,
    #[serde(default)]
    pub secure: bool,
    #[serde(default)]
    pub same_site: Option<String>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile. `Ok(None)`, after a
    /// note on stderr, when either is not installed and [`REQUIRE_BROWSER`] is unset.
    pub async fn launch() -> anyhow::Result<Option<Browser>> {
        let (chromium, chromedriver) = match (find_chromium(), find_on_path("chromedriver")) {
            (Some(chromium), Some(chromedriver)) => (chromium, chromedriver),
            (chromium, chromedriver) => {
                let missing = match (chromium, chromedriver) {
                    (None, None) => "chromium and chromedriver are",
                    (None, Some(_)) => "chromium is",
                    _ => "chromedriver is",
                };
                if std::env::var_os(REQUIRE_BROWSER).is_some() {
                    bail!(
                        "{missing} not installed and {REQUIRE_BROWSER} is set: install Debian's \
                         chromium and chromium-driver (.ci/run does)"
                    );
                }
                eprintln!(
                    "skipping a browser test: {missing} not installed (apt-get install chromium \
                     chromium-driver; set {REQUIRE_BROWSER} to fail instead)"
                );
                return Ok(None);
            }
        };

        let profile = tempfile::tempdir().context("while making the browser's profile folder")?;
        let driver = Driver::start(&chromedriver).await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .context("while building the WebDriver client")?;
        let base = format!("http://127.0.0.1:{}", driver.port);
        wait_until_ready(&http, &base).await?;

        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": chromium_args(profile.path()),
                        "prefs": {
                            // 4: open the listed pages; not Debian's (remote) new-tab page.
                            "session.restore_on_startup": 4,
                            "session.startup_urls": ["about:blank"],
                        },
                    },
                    "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
                }
            }
        });
        let created = send(
            &http,
            Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await
        .context("while starting Chromium through chromedriver")?;
        let session_id = created["sessionId"]
            .as_str()
            .context("chromedriver's new session has no sessionId")?
            .to_owned();
        Ok(Some(Browser {
            http,
            session: format!("{base}/session/{session_id}"),
            session_id,
            driver,
            _profile: profile,
            seen: Mutex::default(),
        }))
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command(Method::POST, "/url", json!({ "url": url }))
            .await
            .with_context(|| format!("while opening {url}"))?;
        Ok(())
    }

    /// The current page's HTML as the browser now has it.
    pub async fn source(&self) -> anyhow::Result<String> {
        self.text(self.command(Method::GET, "/source", Value::Null).await?)
    }

    pub async fn title(&self) -> anyhow::Result<String> {
        self.text(self.command(Method::GET, "/title", Value::Null).await?)
    }

    pub async fn current_url(&self) -> anyhow::Result<String> {
        self.text(self.command(Method::GET, "/url", Value::Null).await?)
    }

    /// The text of every element matching `css`, in document order, whitespace collapsed.
    pub async fn find_text(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let texts = self
            .execute(
                "return Array.from(document.querySelectorAll(arguments[0]), \
                 e => e.textContent.replace(/\\s+/g, ' ').trim());",
                &[json!(css)],
            )
            .await
            .with_context(|| format!("while reading the text of {css}"))?;
        serde_json::from_value(texts).with_context(|| format!("the text of {css} is not a list"))
    }

    /// Runs `script` as a function body in the page (`arguments[i]` are `args`) and returns
    /// what it returns.
    pub async fn execute(&self, script: &str, args: &[Value]) -> anyhow::Result<Value> {
        self.command(
            Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Clicks the first element matching `css` as a user would (it must be visible).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command(
            Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await
        .with_context(|| format!("while clicking {css}"))?;
        Ok(())
    }

    /// Empties the field matching `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.command(
            Method::POST,
            &format!("/element/{element}/clear"),
            json!({}),
        )
        .await
        .with_context(|| format!("while clearing {css}"))?;
        self.command(
            Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .with_context(|| format!("while typing into {css}"))?;
        Ok(())
    }

    /// Submits the form matching `css` (or the form of the field matching it) as its submit
    /// button would, and waits until the page it leads to has loaded.
    pub async fn submit(&self, css: &str) -> anyhow::Result<()> {
        let submitted = self
            .execute(
                "const e = document.querySelector(arguments[0]);
                 const form = e && (e.form || e.closest('form'));
                 if (!form) return false;
                 window.__harness_left_behind = true;
                 form.requestSubmit();
                 return true;",
                &[json!(css)],
            )
            .await
            .with_context(|| format!("while submitting {css}"))?;
        if submitted != json!(true) {
            bail!("no form matches {css}");
        }
        // The marker lives on the old page's window: gone once the next page is in.
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            let arrived = self
                .execute(
                    "return window.__harness_left_behind === undefined \
                     && document.readyState === 'complete';",
                    &[],
                )
                .await;
            // A script can fail while the page changes under it; the next try sees the new one.
            if matches!(arrived, Ok(Value::Bool(true))) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("submitting {css} led to no new page within {COMMAND_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sizes the window so the page's viewport is `width` CSS pixels wide (the phone and desktop
    /// widths are 375 and 1280); errors if the browser would not go that narrow.
    pub async fn set_window(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.command(
            Method::POST,
            "/window/rect",
            json!({ "width": width, "height": height }),
        )
        .await
        .with_context(|| format!("while sizing the window to {width}x{height}"))?;
        let inner = self.execute("return window.innerWidth;", &[]).await?;
        if inner != json!(width) {
            bail!("asked for a window {width} px wide, the page sees {inner} px");
        }
        Ok(())
    }

    /// Whether the page is wider than its viewport (a phone user would have to scroll sideways).
    pub async fn has_horizontal_scroll(&self) -> anyhow::Result<bool> {
        let wider = self
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth;",
                &[],
            )
            .await?;
        wider
            .as_bool()
            .with_context(|| format!("the width check returned {wider}"))
    }

    /// A PNG of the whole page (not only the viewport) at the window's width, written to
    /// `path`; its folder is created if missing.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let metrics = self.cdp("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let (Some(width), Some(height)) = (size["width"].as_f64(), size["height"].as_f64()) else {
            bail!("the page's layout metrics have no content size: {metrics}");
        };
        let shot = self
            .cdp(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                }),
            )
            .await?;
        let data = shot["data"]
            .as_str()
            .context("the screenshot came back without data")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("the screenshot is not base64")?;
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("while creating {}", folder.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("while writing {}", path.display()))
    }

    /// [`Browser::screenshot`] to `<folder>/<page>-<viewport width>.png`; returns that path.
    pub async fn screenshot_page(&self, folder: &Path, page: &str) -> anyhow::Result<PathBuf> {
        let width = self.execute("return window.innerWidth;", &[]).await?;
        let path = folder.join(format!("{page}-{width}.png"));
        self.screenshot(&path).await?;
        Ok(path)
    }

    /// The cookies the browser holds for the current page.
    pub async fn cookies(&self) -> anyhow::Result<Vec<Cookie>> {
        let cookies = self.command(Method::GET, "/cookie", Value::Null).await?;
        serde_json::from_value(cookies).context("while reading the browser's cookies")
    }

    /// Forgets the current site's cookies (signs the browser out).
    pub async fn delete_cookies(&self) -> anyhow::Result<()> {
        self.command(Method::DELETE, "/cookie", Value::Null).await?;
        Ok(())
    }

    /// Every console entry at level SEVERE since launch: `console.error`, uncaught exceptions,
    /// failed loads. Each names the page (or resource) it came from.
    pub async fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        let entries = self.read_log("browser").await?;
        let mut seen = self.seen.lock().expect("the harness's log buffer");
        seen.console_errors.extend(
            entries
                .into_iter()
                .filter(|e| e.level == "SEVERE")
                .map(|e| e.message),
        );
        Ok(seen.console_errors.clone())
    }

    /// The URL of every request the browser has started since launch, in order: pages, their
    /// assets, form posts, fetches and WebSockets, whether or not they got an answer.
    pub async fn requested_urls(&self) -> anyhow::Result<Vec<String>> {
        let entries = self.read_log("performance").await?;
        let mut seen = self.seen.lock().expect("the harness's log buffer");
        for entry in entries {
            let event: Value = serde_json::from_str(&entry.message).with_context(|| {
                format!("a performance log entry is not JSON: {}", entry.message)
            })?;
            seen.note_request(&event["message"])?;
        }
        Ok(seen.requested_urls.clone())
    }

    /// [`Browser::requested_urls`] that would leave the machine: anything but `data:`, `blob:`,
    /// `about:` and 127.0.0.1, localhost or [::1]. A console page must have none.
    pub async fn off_loopback_requests(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .requested_urls()
            .await?
            .into_iter()
            .filter(|u| !stays_on_loopback(u))
            .collect())
    }

    async fn read_log(&self, kind: &str) -> anyhow::Result<Vec<LogEntry>> {
        let entries = self
            .command(Method::POST, "/se/log", json!({ "type": kind }))
            .await
            .with_context(|| format!("while reading the {kind} log"))?;
        serde_json::from_value(entries).with_context(|| format!("while reading the {kind} log"))
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .command(
                Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .with_context(|| format!("while finding {css}"))?;
        found[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("finding {css} returned no element: {found}"))
    }

    /// A DevTools command through chromedriver (`goog/cdp/execute`), on the current page.
    async fn cdp(&self, cmd: &str, params: Value) -> anyhow::Result<Value> {
        self.command(
            Method::POST,
            "/goog/cdp/execute",
            json!({ "cmd": cmd, "params": params }),
        )
        .await
        .with_context(|| format!("while running {cmd}"))
    }

    fn text(&self, value: Value) -> anyhow::Result<String> {
        match value {
            Value::String(s) => Ok(s),
            other => bail!("expected text from the browser, got {other}"),
        }
    }

    /// One command on this session; `Value::Null` sends no body.
    async fn command(&self, method: Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let body = (!body.is_null()).then_some(body);
        send(&self.http, method, &format!("{}{path}", self.session), body).await
    }
}

impl Drop for Browser {
    /// Quits Chromium through chromedriver first: killing chromedriver alone leaves Chromium
    /// running. Blocking, because a test may be unwinding from a panic; the driver's own drop
    /// then kills whatever is left in its process group.
    fn drop(&mut self) {
        if let Err(error) = delete_session(self.driver.port, &self.session_id) {
            eprintln!("the browser did not quit cleanly ({error}); killing it");
        }
    }
}

#[derive(Deserialize)]
struct LogEntry {
    level: String,
    message: String,
}

/// The chromedriver process, in a process group of its own with the Chromium it starts.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts `chromedriver --port=0` and reads the port it picked from its first lines.
    async fn start(path: &Path) -> anyhow::Result<Driver> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(path)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .with_context(|| format!("while starting {}", path.display()))?;
        let Some(stdout) = child.stdout.take() else {
            bail!("chromedriver's output was not captured");
        };
        let (tell_port, port) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tell_port = Some(tell_port);
            // Read to the end: a full pipe would stall chromedriver.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = started_on_port(&line)
                    && let Some(tell) = tell_port.take()
                {
                    let _ = tell.send(port);
                }
            }
        });
        // Owned before waiting, so a timeout still kills it.
        let mut driver = Driver { child, port: 0 };
        driver.port = match tokio::time::timeout(START_TIMEOUT, port).await {
            Ok(Ok(port)) => port,
            Ok(Err(_)) => bail!("chromedriver stopped before saying which port it listens on"),
            Err(_) => bail!("chromedriver did not say its port within {START_TIMEOUT:?}"),
        };
        Ok(driver)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any Chromium process still there.
        let group = format!("-{}", self.child.id());
        let killed = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        if !killed.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `ChromeDriver was started successfully on port 36687.` → 36687
fn started_on_port(line: &str) -> Option<u16> {
    let (_, rest) = line.split_once("started successfully on port ")?;
    rest.trim_end_matches('.').trim().parse().ok()
}

fn chromium_args(profile: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        // A phone's scrollbars take no width; shots are as wide as the window.
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(format!("--user-data-dir={}", profile.display()));
    args
}

fn find_chromium() -> Option<PathBuf> {
    CHROMIUM.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether a request stays on this machine (or never touches the network).
fn stays_on_loopback(url: &str) -> bool {
    let Ok(url) = url::Url::parse(url) else {
        return false;
    };
    match url.scheme() {
        "data" | "blob" | "about" => true,
        _ => {
            matches!(
                url.host(),
                Some(url::Host::Ipv4(ip)) if ip.is_loopback()
            ) || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
                || url.host_str() == Some("localhost")
        }
    }
}

/// Polls chromedriver's `/status` until it says it is ready for a session.
async fn wait_until_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(status) = send(http, Method::GET, &format!("{base}/status"), None).await
            && status["ready"] == json!(true)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("chromedriver at {base} was not ready within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One WebDriver request; the answer's `value`, or chromedriver's error as an error.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let what = format!("{method} {url}");
    let request = match body {
        Some(body) => http.request(method, url).json(&body),
        None => http.request(method, url),
    };
    let response = request
        .send()
        .await
        .with_context(|| format!("while sending {what}"))?;
    let status = response.status();
    let mut answer: Value = response
        .json()
        .await
        .with_context(|| format!("while reading the answer to {what}"))?;
    let value = answer["value"].take();
    if !status.is_success() {
        bail!(
            "{what} failed ({status}): {}: {}",
            value["error"].as_str().unwrap_or("no error code"),
            value["message"].as_str().unwrap_or("no message")
        );
    }
    Ok(value)
}

/// `DELETE /session/{id}` over a plain socket: drop cannot await.
fn delete_session(port: u16, id: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    // chromedriver answers once Chromium has quit, and keeps the connection open after: the
    // status line is all there is to wait for.
    let mut answer = Vec::new();
    let mut chunk = [0; 256];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..read]);
    }
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or("no answer");
    if status.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "chromedriver said {status:?}"
        )))
    }
}

/// The folder for one test's screenshots, `target/console-screenshots/<test>/`, created if
/// missing and emptied of an earlier run's PNGs so it shows this run only.
pub fn screenshot_folder(test: &str) -> anyhow::Result<PathBuf> {
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`: this follows CARGO_TARGET_DIR.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .context("the target folder")?;
    let folder = target.join("console-screenshots").join(test);
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("while creating {}", folder.display()))?;
    for entry in std::fs::read_dir(&folder)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "png") {
            std::fs::remove_file(&path)
                .with_context(|| format!("while removing {}", path.display()))?;
        }
    }
    Ok(folder)
}

#[cfg(test)]
mod tests {
    //! The harness against a few tiny pages served on 127.0.0.1:0: each test shows the harness
    //! can see the thing a console test will assert on.

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{Html, IntoResponse, Redirect};
    use axum::routing::get;

    use super::*;

    /// An icon that is not a request: without one Chromium asks for /favicon.ico, and a 404
    /// there is a console error.
    const HEAD: &str = r#"<meta charset="utf-8"><meta name="viewport" content="width=device-width"><link rel="icon" href="data:,">"#;

    fn page(title: &str, body: &str) -> Html<String> {
        Html(format!(
            "<!doctype html><html><head>{HEAD}<title>{title}</title></head><body>{body}</body></html>"
        ))
    }

    async fn form() -> Html<String> {
        page(
            "Sign in",
            r#"<h1>Sign in</h1>
            <form method="post" action="/signed-in">
              <label>Name <input name="name" value="typed over"></label>
              <button>Go</button>
            </form>"#,
        )
    }

    /// Keeps the posted name in a cookie and sends the browser on, as a sign-in would.
    async fn signed_in(body: String) -> impl IntoResponse {
        let name: String = url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.chars().filter(char::is_ascii_alphanumeric).collect())
            .unwrap_or_default();
        (
            StatusCode::SEE_OTHER,
            [(
                header::SET_COOKIE,
                format!("visitor={name}; Path=/; HttpOnly; SameSite=Strict"),
            )],
            Redirect::to("/hello"),
        )
    }

    async fn hello(headers: HeaderMap) -> Html<String> {
        let visitor = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("visitor="))
            .unwrap_or("stranger")
            .to_owned();
        page(
            "Hello",
            &format!(r#"<p id="greeting">Hello, {visitor}</p><a href="/form">Sign in again</a>"#),
        )
    }

    async fn boom() -> Html<String> {
        page(
            "Boom",
            r#"<p>fine</p><script>console.error("boom")</script>"#,
        )
    }

    async fn leak() -> Html<String> {
        page(
            "Leak",
            r#"<img src="http://example.invalid/x.png" alt="from elsewhere">"#,
        )
    }

    async fn tall() -> Html<String> {
        page(
            "Tall",
            r#"<div style="height: 2000px">a long list</div><p>the end</p>"#,
        )
    }

    async fn wide() -> Html<String> {
        page(
            "Wide",
            r#"<div style="width: 600px">a table too wide</div>"#,
        )
    }

    /// Serves the pages on a loopback port; returns `http://127.0.0.1:<port>`.
    async fn serve_pages() -> String {
        let app = Router::new()
            .route("/form", get(form))
            .route("/signed-in", axum::routing::post(signed_in))
            .route("/hello", get(hello))
            .route("/boom", get(boom))
            .route("/leak", get(leak))
            .route("/tall", get(tall))
            .route("/wide", get(wide));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    #[tokio::test]
    async fn the_harness_reads_a_page_fills_a_form_and_keeps_its_cookie() -> anyhow::Result<()> {
        let base = serve_pages().await;
        let Some(browser) = Browser::launch().await? else {
            return Ok(());
        };

        browser.goto(&format!("{base}/form")).await?;
        assert_eq!(browser.title().await?, "Sign in");
        assert_eq!(browser.find_text("h1").await?, ["Sign in"]);
        assert!(browser.source().await?.contains(r#"action="/signed-in""#));
        assert_eq!(
            browser
                .execute("return arguments[0] + 1;", &[json!(41)])
                .await?,
            json!(42)
        );

        browser.fill("input[name=name]", "Ada").await?;
        browser.submit("form").await?;
        assert_eq!(browser.current_url().await?, format!("{base}/hello"));
        assert_eq!(browser.find_text("#greeting").await?, ["Hello, Ada"]);
        let cookies = browser.cookies().await?;
        let visitor = cookies
            .iter()
            .find(|c| c.name == "visitor")
            .unwrap_or_else(|| panic!("the visitor cookie is kept: {cookies:?}"));
        assert_eq!(visitor.value, "Ada");
        assert!(visitor.http_only, "{visitor:?}");
        assert!(!visitor.secure, "plain http: {visitor:?}");
        assert_eq!(visitor.same_site.as_deref(), Some("Strict"));
        assert_eq!(visitor.path.as_deref(), Some("/"));

        // The cookie is sent again on the next visit, until it is deleted.
        browser.click("a").await?;
        assert_eq!(browser.current_url().await?, format!("{base}/form"));
        browser.goto(&format!("{base}/hello")).await?;
        assert_eq!(browser.find_text("#greeting").await?, ["Hello, Ada"]);
        browser.delete_cookies().await?;
        assert!(browser.cookies().await?.is_empty());
        browser.goto(&format!("{base}/hello")).await?;
        assert_eq!(browser.find_text("#greeting").await?, ["Hello, stranger"]);

        // A clean visit: nothing on the console, nothing but loopback, and the post was seen.
        assert_eq!(browser.console_errors().await?, Vec::<String>::new());
        assert_eq!(browser.off_loopback_requests().await?, Vec::<String>::new());
        // Each request once: a navigation and its document request are one.
        assert_eq!(
            browser.requested_urls().await?,
            ["form", "signed-in", "hello", "form", "hello", "hello"].map(|p| format!("{base}/{p}"))
        );
        Ok(())
    }

    #[test]
    fn only_loopback_data_blob_and_about_urls_stay_on_the_machine() {
        for local in [
            "http://127.0.0.1:8080/login",
            "http://localhost/x",
            "http://[::1]:9/x",
            "ws://127.0.0.1:1/socket",
            "data:image/png;base64,AAAA",
            "blob:http://127.0.0.1:8080/0b7c",
            "about:blank",
        ] {
            assert!(stays_on_loopback(local), "{local}");
        }
        for leaving in [
            "http://example.invalid/x.png",
            "https://start.duckduckgo.com/",
            "http://192.0.2.1/",
            "http://127.0.0.1.example.com/",
            "chrome://new-tab-page-third-party/",
            "not a url",
        ] {
            assert!(!stays_on_loopback(leaving), "{leaving}");
        }
    }

    #[tokio::test]
    async fn the_harness_sees_console_errors() -> anyhow::Result<()> {
        let base = serve_pages().await;
        let Some(browser) = Browser::launch().await? else {
            return Ok(());
        };
        browser.goto(&format!("{base}/form")).await?;
        assert_eq!(browser.console_errors().await?, Vec::<String>::new());

        browser.goto(&format!("{base}/boom")).await?;
        let errors = browser.console_errors().await?;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains(&format!("{base}/boom")) && errors[0].contains("\"boom\""),
            "the error names its page and says what was logged: {errors:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_harness_sees_a_request_that_leaves_loopback() -> anyhow::Result<()> {
        let base = serve_pages().await;
        let Some(browser) = Browser::launch().await? else {
            return Ok(());
        };
        browser.goto(&format!("{base}/form")).await?;
        assert_eq!(browser.off_loopback_requests().await?, Vec::<String>::new());
        assert_eq!(browser.requested_urls().await?, [format!("{base}/form")]);

        browser.goto(&format!("{base}/leak")).await?;
        assert_eq!(
            browser.off_loopback_requests().await?,
            ["http://example.invalid/x.png"]
        );
        // The closed network refuses it, and that failure is on the console too.
        let errors = browser.console_errors().await?;
        assert!(
            errors
                .iter()
                .any(|e| e.contains("http://example.invalid/x.png")
                    && e.contains("ERR_NAME_NOT_RESOLVED")),
            "{errors:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn the_harness_sees_a_page_too_wide_for_a_phone() -> anyhow::Result<()> {
        let base = serve_pages().await;
        let Some(browser) = Browser::launch().await? else {
            return Ok(());
        };
        browser.set_window(375, 800).await?;
        browser.goto(&format!("{base}/wide")).await?;
        assert!(browser.has_horizontal_scroll().await?, "600 px at 375");
        browser.goto(&format!("{base}/form")).await?;
        assert!(!browser.has_horizontal_scroll().await?, "the form fits");

        browser.set_window(1280, 800).await?;
        browser.goto(&format!("{base}/wide")).await?;
        assert!(!browser.has_horizontal_scroll().await?, "600 px at 1280");
        Ok(())
    }

    #[tokio::test]
    async fn screenshots_land_in_the_test_s_folder() -> anyhow::Result<()> {
        let base = serve_pages().await;
        let Some(browser) = Browser::launch().await? else {
            return Ok(());
        };
        let test = "screenshots_land_in_the_test_s_folder";
        // A stale shot from an earlier run is cleared away.
        let earlier = screenshot_folder(test)?.join("gone-1.png");
        std::fs::write(&earlier, b"old")?;
        let folder = screenshot_folder(test)?;
        assert!(!earlier.exists());
        assert!(folder.ends_with(Path::new("console-screenshots").join(test)));

        // The whole page, not the 700 px window: a tall page gives a tall shot.
        for (width, page, at_least) in
            [(375, "form", 100), (1280, "form", 100), (375, "tall", 2000)]
        {
            browser.set_window(width, 700).await?;
            browser.goto(&format!("{base}/{page}")).await?;
            let path = browser.screenshot_page(&folder, page).await?;
            assert_eq!(path, folder.join(format!("{page}-{width}.png")));
            let png = std::fs::read(&path)?;
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
            // IHDR: width then height, big-endian, right after the signature and chunk header.
            let shot_width = u32::from_be_bytes(png[16..20].try_into()?);
            let shot_height = u32::from_be_bytes(png[20..24].try_into()?);
            assert_eq!(shot_width, width, "{}", path.display());
            assert!(
                shot_height >= at_least,
                "{}: {shot_height} px high",
                path.display()
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(&folder)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        assert_eq!(names, ["form-1280.png", "form-375.png", "tall-375.png"]);
        Ok(())
    }
}
