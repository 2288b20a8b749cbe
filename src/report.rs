//! The status report: JSON for machines (`status --json`, `/v1/status`), a table for people.
//! Reads the store; decides nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::UserId;
use crate::plan::ConnectionRow;
use crate::plan::classify::Health;
use crate::store::{self, OutageRow, Store, UserRow};

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub user_id: String,
    pub connection_id: String,
    pub institution_id: String,
    pub method: String,
    pub connection_status: String,
    pub health: Option<String>,
    pub reason: Option<String>,
    pub job_id: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub consent_expires_at: Option<DateTime<Utc>>,
    /// A refresh may prompt the user for a one-time code: only with the user present.
    pub needs_user_present: bool,
    /// The last refresh decision: `{"decision", "reason", "trigger", "at"}`.
    pub last_decision: Option<crate::plan::LastDecision>,
    /// The next refresh the daemon has scheduled: `{"at", "trigger"}`.
    pub next_refresh: Option<crate::plan::policy::schedule::Owed>,
    /// Basiq's refresh cap is reached until then.
    pub capped_until: Option<DateTime<Utc>>,
}

impl From<&ConnectionRow> for ConnectionView {
    fn from(r: &ConnectionRow) -> Self {
        Self {
            user_id: r.user_id.to_string(),
            connection_id: r.connection_id.to_string(),
            institution_id: r.institution_id.to_string(),
            method: r.method.as_str().to_owned(),
            connection_status: r.status.as_str().to_owned(),
            health: r.health.map(|h| h.as_str().to_owned()),
            reason: r.reason.clone(),
            job_id: r.newest_job_id.clone(),
            checked_at: r.checked_at,
            consent_expires_at: r
                .expiry_date
                .filter(|_| r.method == crate::domain::Method::OpenBanking),
            needs_user_present: r.needs_user_present,
            last_decision: r.last_decision.clone(),
            next_refresh: next_refresh(r),
            capped_until: r.basiq_capped_until,
        }
    }
}

/// The earlier of the owed refresh and the daily slot.
fn next_refresh(r: &ConnectionRow) -> Option<crate::plan::policy::schedule::Owed> {
    let daily = r
        .daily_due_at
        .map(|at| crate::plan::policy::schedule::Owed {
            at,
            trigger: crate::plan::policy::Trigger::Scheduled,
            since: None,
        });
    [r.refresh_due, daily]
        .into_iter()
        .flatten()
        .min_by_key(|o| o.at)
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub users: i64,
    pub connections: usize,
    pub by_health: BTreeMap<String, u64>,
    pub action_required: u64,
    pub open_outages: usize,
    /// How many connections `connections` lists: all of them, or the first `limit` (those
    /// needing the user's action first).
    pub connections_listed: usize,
    /// `connections` lists fewer than there are (`--all` or `?all=true` lists every one).
    pub truncated: bool,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StatusReport {
    pub connections: Vec<ConnectionView>,
    pub summary: Summary,
    /// Every open outage, one per witness (`source`).
    pub outages: Vec<OutageRow>,
    /// The banks down now, each with every witness that says so.
    pub banks_down: Vec<BankDown>,
    /// Maintenance windows the data holders announced that have not ended.
    pub maintenance: Vec<crate::store::cdr::WindowLine>,
}

/// A bank down, with all the sources of its outage.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BankDown {
    pub institution_id: String,
    pub method: String,
    /// The earliest start any witness gives.
    pub started_at: DateTime<Utc>,
    /// `connectors`, `inferred`, `cdr`: who says so.
    pub sources: Vec<String>,
}

/// The open outages grouped by connector, in order of their first start.
pub fn banks_down(outages: &[OutageRow]) -> Vec<BankDown> {
    let mut out: Vec<BankDown> = Vec::new();
    for o in outages {
        match out
            .iter_mut()
            .find(|b| b.institution_id == o.institution_id && b.method == o.method)
        {
            Some(b) => {
                b.started_at = b.started_at.min(o.started_at);
                if !b.sources.iter().any(|s| s == o.source.as_str()) {
                    b.sources.push(o.source.as_str().to_owned());
                }
            }
            None => out.push(BankDown {
                institution_id: o.institution_id.clone(),
                method: o.method.clone(),
                started_at: o.started_at,
                sources: vec![o.source.as_str().to_owned()],
            }),
        }
    }
    out
}

/// How many connections a report of every user lists unless told otherwise.
pub const DEFAULT_LIMIT: usize = 1000;

/// Builds the report, for every user or one. For one user every connection is listed; for
/// every user at most `limit` (`None`: all), those needing the user's action first. The
/// counts come from the kept tallies, never from a scan, so the report of a register of
/// millions costs what its listing costs.
pub async fn status(
    store: &Store,
    user: Option<&UserId>,
    limit: Option<usize>,
    now: DateTime<Utc>,
) -> store::Result<StatusReport> {
    let outages = store.open_outages().await?;
    let maintenance = store.cdr_window_lines(now).await?;
    let mut by_health: BTreeMap<String, u64> = Health::ALL
        .iter()
        .map(|h| (h.as_str().to_owned(), 0))
        .collect();
    let (rows, users, total) = match user {
        Some(_) => {
            let rows = store.all_connections(user).await?;
            for r in &rows {
                if let Some(h) = r.health {
                    *by_health.entry(h.as_str().to_owned()).or_default() += 1;
                }
            }
            let total = rows.len();
            (rows, 1, total)
        }
        None => {
            let tallies = store.tallies().await?;
            for (health, n) in &tallies.connections {
                if !health.is_empty() {
                    *by_health.entry(health.clone()).or_default() += u64::try_from(*n).unwrap_or(0);
                }
            }
            let total = usize::try_from(tallies.connections_total()).unwrap_or(0);
            let rows = match limit {
                Some(limit) => store.connections_listed(limit).await?,
                None => store.all_connections(None).await?,
            };
            (rows, tallies.users_active, total)
        }
    };
    let action_required = by_health.get("action-required").copied().unwrap_or(0);
    Ok(StatusReport {
        connections: rows.iter().map(ConnectionView::from).collect(),
        summary: Summary {
            users,
            connections: total,
            by_health,
            action_required,
            open_outages: outages.len(),
            connections_listed: rows.len(),
            truncated: rows.len() < total,
        },
        banks_down: banks_down(&outages),
        outages,
        maintenance,
    })
}

/// What the partner's app should tell its user, per health.
pub fn advice(health: &str, reason: Option<&str>) -> &'static str {
    match (health, reason) {
        ("action-required", Some("consent-expired")) => {
            "ask the user to re-consent in the Consent UI"
        }
        ("action-required", Some("invalid-credentials" | "invalid-username-or-password")) => {
            "ask the user to re-enter their bank credentials"
        }
        ("action-required", Some("account-not-accessible-requires-user-action")) => {
            "ask the user to log in to their bank and clear the message it shows"
        }
        ("action-required", _) => "ask the user to reconnect this bank",
        ("institution-outage", _) => "tell the user their bank is having problems; nothing to do",
        ("transient-failure", _) => "nothing to tell the user; it is retried",
        ("pending" | "in-progress", _) => {
            "nothing yet; the connection is being set up or refreshed"
        }
        ("stale", _) => "data may be old; a refresh at next login will update it",
        _ => "",
    }
}

/// A table a person can read: counts, open outages, who must act; a Basiq cap still
/// running at `now` is shown.
pub fn render_table(report: &StatusReport, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    write_counts(&mut out, report);
    write_action_required(&mut out, report);
    // One user (or a small installation): every connection with its refresh story.
    let s = &report.summary;
    if report.connections.len() <= 20 && !report.connections.is_empty() && !s.truncated {
        let _ = writeln!(
            out,
            "
connections:"
        );
        for c in &report.connections {
            write_connection_story(&mut out, c, now);
        }
    }
    out
}

/// A time as the tables show it.
pub fn stamp(at: DateTime<Utc>) -> impl std::fmt::Display {
    at.format("%Y-%m-%d %H:%M:%SZ")
}

/// Users and connections, connections per health, the open outages.
fn write_counts(out: &mut String, report: &StatusReport) {
    let s = &report.summary;
    let _ = writeln!(out, "users: {}   connections: {}", s.users, s.connections);
    let _ = writeln!(out, "\nhealth               connections");
    for (health, count) in &s.by_health {
        let _ = writeln!(out, "  {health:<19}{count:>6}");
    }
    let _ = writeln!(out, "\nopen outages: {}", report.outages.len());
    for b in &report.banks_down {
        let said: Vec<String> = report
            .outages
            .iter()
            .filter(|o| o.institution_id == b.institution_id && o.method == b.method)
            .map(|o| {
                let mut text = o.source.as_str().to_owned();
                if let Some(status) = &o.status {
                    let _ = write!(text, ": {}", shown(status));
                }
                if let Some(why) = &o.explanation {
                    let _ = write!(text, " ({})", shown(why));
                }
                text
            })
            .collect();
        let _ = writeln!(
            out,
            "  {} {:<13} since {} ({})",
            shown(&b.institution_id),
            b.method,
            stamp(b.started_at),
            said.join("; ")
        );
    }
    if !report.maintenance.is_empty() {
        let _ = writeln!(out, "\nmaintenance announced: {}", report.maintenance.len());
        for w in &report.maintenance {
            let _ = writeln!(
                out,
                "  {} {:<13} {} to {}{} ({})",
                shown(&w.institution_id),
                w.method,
                stamp(w.starts_at),
                stamp(w.ends_at),
                if w.partial { ", partial" } else { "" },
                shown(&w.explanation)
            );
        }
    }
}

/// `cdr brands` as a table: each institution, its brand, how it was matched, what it
/// last said.
pub fn render_brands(lines: &[crate::store::cdr::BrandLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<24} {:<11} {:<9} {:<24} {:<17} next maintenance",
        "bank", "name", "abn", "match", "brand", "status"
    );
    for l in lines {
        let cut = |t: &Option<String>, n: usize| -> String {
            shown(t.as_deref().unwrap_or("-")).chars().take(n).collect()
        };
        let next = l.next_outage.as_ref().map_or_else(
            || "-".to_owned(),
            |w| format!("{} to {}", stamp(w.starts_at), stamp(w.ends_at)),
        );
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<11} {:<9} {:<24} {:<17} {}",
            shown(&l.institution_id),
            cut(&l.name, 24),
            cut(&l.abn, 11),
            l.match_kind,
            cut(&l.brand_name, 24),
            cut(&l.status, 17),
            next
        );
    }
    out
}

/// Text from outside (a bank's words, an id) as a terminal shows it: no control
/// characters, no escape sequences.
pub fn shown(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The connections needing the user's action (the first 50), with what to ask of the user.
fn write_action_required(out: &mut String, report: &StatusReport) {
    let s = &report.summary;
    let needing: Vec<&ConnectionView> = report
        .connections
        .iter()
        .filter(|c| c.health.as_deref() == Some("action-required"))
        .collect();
    let _ = writeln!(
        out,
        "\nconnections needing the user's action: {}",
        s.action_required
    );
    for c in needing.iter().take(50) {
        let reason = c.reason.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "  user {} connection {} at {} ({}): {} -> {}",
            c.user_id,
            c.connection_id,
            c.institution_id,
            c.method,
            reason,
            advice("action-required", c.reason.as_deref())
        );
    }
    let shown = needing.len().min(50) as u64;
    if s.action_required > shown {
        let _ = writeln!(
            out,
            "  ... and {} more (status --json --all lists all)",
            s.action_required - shown
        );
    }
}

/// One connection: its health, its last refresh decision, its next refresh, a running cap,
/// whether a refresh needs the user present.
fn write_connection_story(out: &mut String, c: &ConnectionView, now: DateTime<Utc>) {
    let _ = writeln!(
        out,
        "  {} at {} ({}): {}{}",
        c.connection_id,
        c.institution_id,
        c.method,
        c.health.as_deref().unwrap_or("not classified"),
        c.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    let last = c.last_decision.as_ref().map_or("none".to_owned(), |d| {
        format!(
            "{}{} ({}) at {}",
            d.decision.as_str(),
            d.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            d.trigger.map_or("-", |t| t.as_str()),
            stamp(d.at)
        )
    });
    let _ = writeln!(out, "      last refresh decision: {last}");
    let next = c.next_refresh.map_or("none scheduled".to_owned(), |o| {
        format!("{} ({})", stamp(o.at), o.trigger)
    });
    let _ = writeln!(out, "      next refresh: {next}");
    if let Some(until) = c.capped_until.filter(|t| *t > now) {
        let _ = writeln!(out, "      Basiq's cap reached until {}", stamp(until));
    }
    if c.needs_user_present {
        let _ = writeln!(out, "      MFA: refreshed only with the user present");
    }
}

/// The `plan` dry run as a table: refreshes in time order, then the connections that
/// would not be refreshed, counted by reason.
pub fn render_plan(lines: &[crate::work::refresh::PlanLine]) -> String {
    use crate::plan::policy::schedule::Upcoming;
    let mut out = String::new();
    let mut refreshes: Vec<(&crate::work::refresh::PlanLine, DateTime<Utc>, &str)> = lines
        .iter()
        .filter_map(|l| match &l.upcoming {
            Upcoming::Refresh {
                refresh_at,
                trigger,
            } => Some((l, *refresh_at, trigger.as_str())),
            Upcoming::Denied { .. } => None,
        })
        .collect();
    refreshes.sort_by_key(|(_, at, _)| *at);
    let _ = writeln!(
        out,
        "refreshes in the next 24 h: {} of {} connections",
        refreshes.len(),
        lines.len()
    );
    for (l, at, trigger) in &refreshes {
        let _ = writeln!(
            out,
            "  {}  {:<16} user {} connection {} at {} ({})",
            stamp(*at),
            trigger,
            l.user_id,
            l.connection_id,
            l.institution_id,
            l.method
        );
    }
    let mut denied: BTreeMap<&str, Vec<&crate::work::refresh::PlanLine>> = BTreeMap::new();
    for l in lines {
        if let Upcoming::Denied { denied: d } = &l.upcoming {
            denied.entry(d.as_str()).or_default().push(l);
        }
    }
    let _ = writeln!(
        out,
        "
not refreshed:"
    );
    for (reason, ls) in &denied {
        let _ = writeln!(out, "  {reason:<26}{:>6}", ls.len());
        for l in ls.iter().take(20) {
            let _ = writeln!(
                out,
                "      user {} connection {} at {}",
                l.user_id, l.connection_id, l.institution_id
            );
        }
        if ls.len() > 20 {
            let _ = writeln!(
                out,
                "      ... and {} more (plan --json lists all)",
                ls.len() - 20
            );
        }
    }
    out
}

/// One registered user, as `users list --json` and `GET /v1/users` list it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    #[schema(value_type = String)]
    pub user_id: UserId,
    /// When its next sweep is due.
    pub next_due_at: DateTime<Utc>,
    pub last_swept_at: Option<DateTime<Utc>>,
    /// Basiq answered 404 for it: not swept until re-added.
    pub gone: bool,
}

/// `users list --json` and `GET /v1/users`: `[{"user_id", "next_due_at", "last_swept_at",
/// "gone"}]`.
pub fn users_json(users: &[UserRow]) -> Vec<UserView> {
    users
        .iter()
        .map(|u| UserView {
            user_id: u.user_id.clone(),
            next_due_at: u.next_due_at,
            last_swept_at: u.last_swept_at,
            gone: u.gone_at.is_some(),
        })
        .collect()
}
