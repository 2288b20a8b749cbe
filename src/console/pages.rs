//! The console's pages. Each: the session checked, what it shows read from the store (kept
//! counts, indexes, rollups: the same cost at a million users) and the context, a view
//! built, a template rendered. Nothing here decides anything about a connection.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};

use super::PageError;
use super::auth::{self, CsrfForm};
use super::svg::{self, Span};
use crate::api::ApiState;
use crate::domain::ConnectionId;
use crate::plan::classify::Health;
use crate::plan::notices::user_action;

/// How long ago, as a person says it.
fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let d = (now - then).max(chrono::Duration::zero());
    match (d.num_days(), d.num_hours(), d.num_minutes()) {
        (days, _, _) if days >= 2 => format!("{days} days"),
        (_, hours, _) if hours >= 1 => format!("{hours} h {} min", d.num_minutes() % 60),
        (_, _, minutes) => format!("{minutes} min"),
    }
}

fn stamp(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

fn html(page: &impl Template) -> Result<Response, PageError> {
    Ok(Html(page.render()?).into_response())
}

/// The session, or the answer that sends the browser to `/login`.
macro_rules! signed_in {
    ($state:expr, $headers:expr) => {
        match auth::session(&$state, &$headers).await {
            Ok(session) => session,
            Err(redirect) => return Ok(redirect),
        }
    };
}

// ---- who must act ---------------------------------------------------------------------

pub struct Item {
    pub text: String,
    pub link: Option<String>,
}

pub struct Queue {
    pub id: &'static str,
    pub actor: &'static str,
    pub count: i64,
    pub oldest: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Template)]
#[template(path = "home.html", config = "src/console/askama.toml")]
struct Home {
    page: &'static str,
    csrf: String,
    queues: Vec<Queue>,
}

/// What a user is asked, in words.
fn asked(action: &str) -> &'static str {
    match action {
        "reconsent" => "re-consent",
        "clear-bank-message" => "clear a message their bank shows",
        "unlock-bank-account" => "unlock their bank account",
        _ => "re-enter their bank credentials",
    }
}

pub async fn home(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let session = signed_in!(state, headers);
    let now = state.context.clock().now();
    let queues = vec![
        users_queue(&state, now).await?,
        banks_queue(&state, now).await?,
        basiq_queue(&state),
        operators_queue(&state, now).await?,
    ];
    html(&Home {
        page: "home",
        csrf: auth::csrf_for(&session),
        queues,
    })
}

async fn users_queue(state: &ApiState, now: DateTime<Utc>) -> Result<Queue, PageError> {
    let store = state.context.store();
    let mut by_action: BTreeMap<&'static str, (i64, Option<DateTime<Utc>>)> = BTreeMap::new();
    for (reason, n, oldest) in store.action_queue().await? {
        let action = user_action(Health::ActionRequired, Some(&reason));
        let entry = by_action.entry(action).or_default();
        entry.0 += n;
        entry.1 = match (entry.1, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let mut items: Vec<Item> = by_action
        .iter()
        .map(|(action, (n, oldest))| Item {
            text: format!(
                "{n} to {}{}",
                asked(action),
                oldest
                    .map(|t| format!(" (oldest {})", age(now, t)))
                    .unwrap_or_default()
            ),
            link: Some("/banks".into()),
        })
        .collect();
    let present = store
        .denials_since(now - chrono::Duration::hours(24))
        .await?
        .get("needs-user-present")
        .copied()
        .unwrap_or(0);
    if present > 0 {
        items.push(Item {
            text: format!(
                "{present} refresh(es) in 24 h waited for their user to be present (MFA)"
            ),
            link: Some("/refreshes".into()),
        });
    }
    Ok(Queue {
        id: "users",
        actor: "Users",
        count: by_action.values().map(|(n, _)| n).sum::<i64>() + present,
        oldest: by_action
            .values()
            .filter_map(|(_, t)| *t)
            .min()
            .map(|t| age(now, t)),
        items,
    })
}

async fn banks_queue(state: &ApiState, now: DateTime<Utc>) -> Result<Queue, PageError> {
    let store = state.context.store();
    let down = crate::report::banks_down(&store.open_outages().await?);
    let windows = store.cdr_window_lines(now).await?;
    let mut items: Vec<Item> = down
        .iter()
        .map(|b| Item {
            text: format!(
                "{} ({}) down since {}, says {}",
                b.institution_id,
                b.method,
                age(now, b.started_at),
                b.sources.join(", ")
            ),
            link: Some(bank_link(&b.institution_id, &b.method)),
        })
        .collect();
    items.extend(windows.iter().map(|w| Item {
        text: format!(
            "{} ({}) maintenance {} to {}",
            w.institution_id,
            w.method,
            stamp(Some(w.starts_at)),
            stamp(Some(w.ends_at))
        ),
        link: Some(bank_link(&w.institution_id, &w.method)),
    }));
    Ok(Queue {
        id: "banks",
        actor: "Banks",
        count: i64::try_from(down.len() + windows.len()).unwrap_or(i64::MAX),
        oldest: down.iter().map(|b| b.started_at).min().map(|t| age(now, t)),
        items,
    })
}

fn basiq_queue(state: &ApiState) -> Queue {
    let requests = state.context.client().stats().requests();
    let mut failing: BTreeMap<&str, u64> = BTreeMap::new();
    let mut refused = 0;
    for ((endpoint, status), n) in &requests {
        let server = status == "error" || status.starts_with('5');
        if server {
            *failing.entry(endpoint).or_default() += n;
        }
        if *endpoint == "token" && (status == "401" || status == "403") {
            refused += n;
        }
    }
    let mut items: Vec<Item> = failing
        .iter()
        .map(|(endpoint, n)| Item {
            text: format!("{n} failed request(s) to {endpoint} since the start"),
            link: None,
        })
        .collect();
    if refused > 0 {
        items.insert(
            0,
            Item {
                text: format!("the API key was refused {refused} time(s): check it with Basiq"),
                link: None,
            },
        );
    }
    Queue {
        id: "basiq",
        actor: "Basiq",
        count: i64::try_from(failing.values().sum::<u64>() + refused).unwrap_or(i64::MAX),
        oldest: None,
        items,
    }
}

async fn operators_queue(state: &ApiState, now: DateTime<Utc>) -> Result<Queue, PageError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut items = Vec::new();
    let mut count = 0;
    let mut oldest: Option<DateTime<Utc>> = None;
    for e in state.context.store().endpoint_views().await? {
        if e.dead > 0 || (e.pending > 0 && e.failures > 0) {
            count += 1;
            oldest = oldest.min(e.oldest_pending).or(e.oldest_pending);
            items.push(Item {
                text: format!(
                    "endpoint {}: {} pending, {} dead letter(s), {} failed attempt(s)",
                    e.endpoint, e.pending, e.dead, e.failures
                ),
                link: Some("/notifications".into()),
            });
        }
    }
    let r = &state.receiver;
    let bad = r.bad_signature.load(Relaxed) + r.stale.load(Relaxed) + r.malformed.load(Relaxed);
    if bad > 0 {
        count += 1;
        items.push(Item {
            text: format!("{bad} webhook(s) failed verification since the start"),
            link: Some("/notifications".into()),
        });
    }
    for w in state.warnings.iter() {
        count += 1;
        items.push(Item {
            text: format!("setting: {w}"),
            link: None,
        });
    }
    Ok(Queue {
        id: "operators",
        actor: "Your operators",
        count,
        oldest: oldest.map(|t| age(now, t)),
        items,
    })
}

// ---- banks ------------------------------------------------------------------------------

fn bank_link(institution: &str, method: &str) -> String {
    let safe = |t: &str| -> String {
        t.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    };
    format!("/banks/{}/{}", safe(institution), safe(method))
}

pub struct BankRow {
    pub institution_id: String,
    pub method: String,
    pub name: String,
    pub link: String,
    pub total: i64,
    pub bar: String,
    pub witnesses: String,
    pub disagree: bool,
}

#[derive(Template)]
#[template(path = "banks.html", config = "src/console/askama.toml")]
struct Banks {
    page: &'static str,
    csrf: String,
    banks: Vec<BankRow>,
}

/// Who says each connector is down now.
async fn witnesses(state: &ApiState) -> Result<HashMap<(String, String), Vec<String>>, PageError> {
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    for b in crate::report::banks_down(&state.context.store().open_outages().await?) {
        out.insert((b.institution_id, b.method), b.sources);
    }
    Ok(out)
}

pub async fn banks(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let session = signed_in!(state, headers);
    let store = state.context.store();
    let names = store.connector_names().await?;
    let down = witnesses(&state).await?;
    let banks = store
        .connector_counts()
        .await?
        .into_iter()
        .map(|c| {
            let key = (c.institution_id.clone(), c.method.clone());
            let sources = down.get(&key).cloned().unwrap_or_default();
            BankRow {
                name: names
                    .get(&key)
                    .and_then(|(n, _)| n.clone())
                    .unwrap_or_else(|| c.institution_id.clone()),
                link: bank_link(&c.institution_id, &c.method),
                total: c.total(),
                bar: svg::health_bar(&c.by_health),
                disagree: !sources.is_empty() && !sources.iter().any(|s| s == "connectors"),
                witnesses: sources.join(", "),
                institution_id: c.institution_id,
                method: c.method,
            }
        })
        .collect();
    html(&Banks {
        page: "banks",
        csrf: auth::csrf_for(&session),
        banks,
    })
}

pub struct Episode {
    pub from: String,
    pub until: String,
    pub source: String,
    pub said: String,
}

pub struct ConnectionLine {
    pub connection_id: String,
    pub user_id: String,
    pub health: String,
    pub reason: String,
    pub link: String,
}

#[derive(Template)]
#[template(path = "bank.html", config = "src/console/askama.toml")]
struct Bank {
    page: &'static str,
    csrf: String,
    name: String,
    institution_id: String,
    method: String,
    basiq_status: String,
    witnesses: String,
    timeline: String,
    episodes: Vec<Episode>,
    total: i64,
    listed: i64,
    connections: Vec<ConnectionLine>,
}

/// An id from a path: letters, digits, `-`, `_`, at most 64; else 400.
fn path_id(text: &str, what: &str) -> Result<(), PageError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(PageError(
            StatusCode::BAD_REQUEST,
            format!("{what} must be letters, digits, '-' or '_', at most 64"),
        ))
    }
}

/// How many connections a bank's page lists.
const BANK_LIST: i64 = 200;

pub async fn bank(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((institution, method)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let session = signed_in!(state, headers);
    path_id(&institution, "a bank id")?;
    path_id(&method, "a method")?;
    let store = state.context.store();
    let now = state.context.clock().now();
    let key = (institution.clone(), method.clone());
    let names = store.connector_names().await?;
    let counts = store
        .connector_counts()
        .await?
        .into_iter()
        .find(|c| c.institution_id == institution && c.method == method);
    let known = names.get(&key);
    if counts.is_none() && known.is_none() {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            format!("no bank {institution} by {method} is known here"),
        ));
    }
    let start = now - chrono::Duration::days(7);
    let (spans, episodes) = episodes(store, &institution, &method, start, now).await?;
    let failures: Vec<(DateTime<Utc>, i64)> = store
        .rollups(&institution, &method, start)
        .await?
        .iter()
        .filter_map(|r| DateTime::from_timestamp(r.hour, 0).map(|t| (t, r.failures)))
        .collect();
    let connections: Vec<ConnectionLine> = store
        .connections_at(&institution, &method, BANK_LIST)
        .await?
        .into_iter()
        .map(|(connection_id, user_id, health, reason)| ConnectionLine {
            link: format!("/connections/{}", urlencode(&connection_id)),
            connection_id,
            user_id,
            health: health.unwrap_or_else(|| "-".into()),
            reason: reason.unwrap_or_default(),
        })
        .collect();
    let total = counts.as_ref().map_or(0, |c| c.total());
    html(&Bank {
        page: "banks",
        csrf: auth::csrf_for(&session),
        name: known
            .and_then(|(n, _)| n.clone())
            .unwrap_or_else(|| institution.clone()),
        basiq_status: known
            .and_then(|(_, s)| s.clone())
            .unwrap_or_else(|| "not listed".into()),
        witnesses: witnesses(&state)
            .await?
            .remove(&key)
            .unwrap_or_default()
            .join(", "),
        timeline: svg::timeline(
            start,
            now + chrono::Duration::days(2),
            now,
            &spans,
            &failures,
        ),
        episodes,
        total,
        listed: i64::try_from(connections.len()).unwrap_or(0),
        connections,
        institution_id: institution,
        method,
    })
}

/// A connector's outages and announced windows since `start`: bands for the timeline and
/// rows for the table.
async fn episodes(
    store: &crate::store::Store,
    institution: &str,
    method: &str,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<
    (
        Vec<(DateTime<Utc>, DateTime<Utc>, Span, String)>,
        Vec<Episode>,
    ),
    PageError,
> {
    let mut spans = Vec::new();
    let mut episodes = Vec::new();
    for o in store.outages_since(start).await? {
        if o.institution_id != institution || o.method != method {
            continue;
        }
        let said = [o.status.clone(), o.explanation.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        spans.push((
            o.started_at,
            o.ended_at.unwrap_or(now),
            Span::Outage,
            format!("{}: {said}", o.source),
        ));
        episodes.push(Episode {
            from: stamp(Some(o.started_at)),
            until: o
                .ended_at
                .map_or_else(|| "open".to_owned(), |t| stamp(Some(t))),
            source: o.source.as_str().to_owned(),
            said,
        });
    }
    for w in store.cdr_window_lines(start).await? {
        if w.institution_id != institution || w.method != method {
            continue;
        }
        spans.push((
            w.starts_at,
            w.ends_at,
            Span::Maintenance,
            w.explanation.clone(),
        ));
        episodes.push(Episode {
            from: stamp(Some(w.starts_at)),
            until: stamp(Some(w.ends_at)),
            source: "maintenance announced (cdr)".into(),
            said: w.explanation,
        });
    }
    Ok((spans, episodes))
}

/// A path segment made safe for a link (ids are `[A-Za-z0-9_-]`, but a stored one is
/// outside text).
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---- a connection ------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "connection.html", config = "src/console/askama.toml")]
struct Connection {
    page: &'static str,
    csrf: String,
    connection_id: String,
    user_id: String,
    institution_id: String,
    method: String,
    bank_link: String,
    health: String,
    reason: String,
    advice: String,
    status: String,
    next_refresh: String,
    checked_at: String,
    history: Vec<(String, String, String, String, String)>,
    jobs: Vec<(String, String, String, String)>,
    decisions: Vec<(String, String, String, String)>,
    notices: Vec<(String, String, String)>,
}

pub async fn connection(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let session = signed_in!(state, headers);
    let id =
        ConnectionId::parse(id).map_err(|e| PageError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let store = state.context.store();
    let Some(row) = store.connection(&id).await? else {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            format!("no connection {id} is watched here"),
        ));
    };
    let view = crate::report::ConnectionView::from(&row);
    let health = view.health.clone().unwrap_or_else(|| "-".into());
    let reason = view.reason.clone().unwrap_or_default();
    let story = story(store, &id, row.user_id.as_str()).await?;
    html(&Connection {
        page: "banks",
        csrf: auth::csrf_for(&session),
        advice: crate::report::advice(&health, view.reason.as_deref()).to_owned(),
        bank_link: bank_link(&view.institution_id, &view.method),
        next_refresh: view.next_refresh.map_or_else(
            || "none scheduled".to_owned(),
            |o| format!("{} ({})", stamp(Some(o.at)), o.trigger.as_str()),
        ),
        checked_at: stamp(view.checked_at),
        status: view.connection_status.clone(),
        connection_id: view.connection_id,
        user_id: view.user_id,
        institution_id: view.institution_id,
        method: view.method,
        health,
        reason,
        history: story.history,
        jobs: story.jobs,
        decisions: story.decisions,
        notices: story.notices,
    })
}

/// A connection's history as its page lists it: health changes, jobs, refresh decisions,
/// the notices told about it.
struct Story {
    history: Vec<(String, String, String, String, String)>,
    jobs: Vec<(String, String, String, String)>,
    decisions: Vec<(String, String, String, String)>,
    notices: Vec<(String, String, String)>,
}

async fn story(
    store: &crate::store::Store,
    id: &ConnectionId,
    user_id: &str,
) -> Result<Story, PageError> {
    let history = store
        .health_entries(id, 50)
        .await?
        .into_iter()
        .map(|h| {
            (
                stamp(Some(h.at)),
                h.from.unwrap_or_else(|| "-".into()),
                h.to,
                h.reason.unwrap_or_default(),
                h.job_id.unwrap_or_default(),
            )
        })
        .collect();
    let jobs = store
        .jobs_for_connection(id, 20)
        .await?
        .into_iter()
        .map(|j| {
            (
                j.job_id.clone(),
                stamp(j.created_at()),
                j.state.clone(),
                j.failure_code.clone().unwrap_or_default(),
            )
        })
        .collect();
    let decisions = store
        .decision_history(id, 50)
        .await?
        .into_iter()
        .map(|d| {
            (
                stamp(Some(d.at)),
                d.trigger,
                d.decision,
                d.reason.unwrap_or_default(),
            )
        })
        .collect();
    let notices = store
        .notices_about(user_id, 200)
        .await?
        .into_iter()
        .filter_map(|n| {
            let payload: serde_json::Value = serde_json::from_str(&n.payload).ok()?;
            let data = &payload["data"];
            (data["connection_id"] == id.as_str()).then(|| {
                let told = [data["to"].as_str(), data["user_action"].as_str()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ask: ");
                (stamp(Some(n.at)), n.event_type, told)
            })
        })
        .take(50)
        .collect();
    Ok(Story {
        history,
        jobs,
        decisions,
        notices,
    })
}

// ---- refreshes ---------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "refreshes.html", config = "src/console/askama.toml")]
struct Refreshes {
    page: &'static str,
    csrf: String,
    cap: u32,
    reserve: u32,
    into_reserve: i64,
    buckets: Vec<(&'static str, i64)>,
    per_hour: String,
    by_trigger: Vec<(String, i64)>,
    denials: Vec<(String, i64)>,
}

pub async fn refreshes(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let session = signed_in!(state, headers);
    let now = state.context.clock().now();
    let store = state.context.store();
    let day = store.day_of_refreshes(now).await?;
    let settings = state.refresher.settings();
    let cap = settings.limits.open_banking_daily_cap;
    let reserve = settings.limits.reserved_for_login;
    let watched = store.tallies().await?.connections_total();
    let mut buckets = vec![("0-5", 0), ("6-15", 0), ("16-19", 0), ("20", 0)];
    for n in &day.attempts_per_connection {
        let i = match n {
            0..=5 => 0,
            6..=15 => 1,
            16..=19 => 2,
            _ => 3,
        };
        buckets[i].1 += 1;
    }
    // Connections with no refresh in the day are in the first bucket too.
    let refreshed = i64::try_from(day.attempts_per_connection.len()).unwrap_or(0);
    buckets[0].1 += (watched - refreshed).max(0);
    let into_reserve = day
        .attempts_per_connection
        .iter()
        .filter(|n| **n >= i64::from(cap.saturating_sub(reserve)))
        .count();
    let mut hours = vec![0i64; 24];
    let mut by_trigger: BTreeMap<String, i64> = BTreeMap::new();
    for ((ago, trigger), n) in &day.per_hour {
        if let Some(slot) = usize::try_from(23 - ago.clamp(&0, &23))
            .ok()
            .and_then(|i| hours.get_mut(i))
        {
            *slot += n;
        }
        *by_trigger.entry(trigger.clone()).or_default() += n;
    }
    html(&Refreshes {
        page: "refreshes",
        csrf: auth::csrf_for(&session),
        cap,
        reserve,
        into_reserve: i64::try_from(into_reserve).unwrap_or(0),
        buckets,
        per_hour: svg::hourly(&hours),
        by_trigger: by_trigger.into_iter().collect(),
        denials: day.denials.into_iter().collect(),
    })
}

// ---- notifications and events -------------------------------------------------------------

pub struct EndpointLine {
    pub endpoint: String,
    pub pending: i64,
    pub oldest: String,
    pub last_success: String,
    pub failures: i64,
    pub dead: i64,
}

#[derive(Template)]
#[template(path = "notifications.html", config = "src/console/askama.toml")]
struct Notifications {
    page: &'static str,
    csrf: String,
    endpoints: Vec<EndpointLine>,
    dead: Vec<(i64, String, String, String)>,
    events: Vec<(String, String, String, i64)>,
    webhooks: Vec<(&'static str, u64)>,
    cursor: String,
}

pub async fn notifications(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    use std::sync::atomic::Ordering::Relaxed;
    let session = signed_in!(state, headers);
    let now = state.context.clock().now();
    let store = state.context.store();
    let endpoints = store
        .endpoint_views()
        .await?
        .into_iter()
        .map(|e| EndpointLine {
            oldest: e
                .oldest_pending
                .map_or_else(|| "-".to_owned(), |t| format!("{} ago", age(now, t))),
            last_success: stamp(e.last_success),
            endpoint: e.endpoint,
            pending: e.pending,
            failures: e.failures,
            dead: e.dead,
        })
        .collect();
    let dead = store
        .list_deliveries(true, 50)
        .await?
        .into_iter()
        .filter(|d| d.state == "dead")
        .map(|d| {
            (
                d.id,
                d.endpoint,
                d.event_type,
                d.last_error.unwrap_or_default(),
            )
        })
        .collect();
    let events = store
        .event_counts()
        .await?
        .into_iter()
        .map(|(t, s, processed, n)| {
            (
                t,
                s,
                if processed { "yes" } else { "not yet" }.to_owned(),
                n,
            )
        })
        .collect();
    let r = &state.receiver;
    let webhooks = vec![
        ("stored", r.stored.load(Relaxed)),
        ("duplicates", r.duplicates.load(Relaxed)),
        ("bad signature", r.bad_signature.load(Relaxed)),
        ("stale timestamp", r.stale.load(Relaxed)),
        ("malformed", r.malformed.load(Relaxed)),
        ("unreadable", r.unreadable.load(Relaxed)),
        ("failed to store", r.failed.load(Relaxed)),
    ];
    html(&Notifications {
        page: "notifications",
        csrf: auth::csrf_for(&session),
        endpoints,
        dead,
        events,
        webhooks,
        cursor: stamp(store.events_cursor().await?),
    })
}

/// The retry button: a dead letter sent again (a fresh `notify.max_age`).
pub async fn retry(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let session = signed_in!(state, headers);
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    auth::check_csrf(&session, &csrf)?;
    let id: i64 = id.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        PageError(
            StatusCode::BAD_REQUEST,
            "a delivery id is a positive integer".into(),
        )
    })?;
    let now = state.context.clock().now();
    let queued = state
        .context
        .store()
        .retry_delivery(&id.to_string(), state.notify_max_age, now)
        .await?;
    if queued == 0 {
        return Err(PageError(
            StatusCode::NOT_FOUND,
            format!("no delivery {id} to retry"),
        ));
    }
    tracing::info!(
        event = "console_retry",
        delivery = id,
        "a dead letter was queued again from the console"
    );
    Ok(Redirect::to("/notifications").into_response())
}
