//! The status report: JSON for machines (`status --json`, `/v1/status`), a table for people.
//! Reads the store; decides nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::classify::Health;
use crate::domain::UserId;
use crate::store::{self, ConnectionRow, OutageRow, Store, UserRow};

#[derive(Clone, Debug, Serialize)]
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
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub users: i64,
    pub connections: usize,
    pub by_health: BTreeMap<String, u64>,
    pub action_required: u64,
    pub open_outages: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub connections: Vec<ConnectionView>,
    pub summary: Summary,
    pub outages: Vec<OutageRow>,
}

/// Builds the report, for every user or one.
pub async fn status(store: &Store, user: Option<&UserId>) -> store::Result<StatusReport> {
    let rows = store.all_connections(user).await?;
    let outages = store.open_outages().await?;
    let users = match user {
        Some(_) => 1,
        None => store.count_active_users().await?,
    };
    let mut by_health: BTreeMap<String, u64> = Health::ALL
        .iter()
        .map(|h| (h.as_str().to_owned(), 0))
        .collect();
    for r in &rows {
        if let Some(h) = r.health {
            *by_health.entry(h.as_str().to_owned()).or_default() += 1;
        }
    }
    let action_required = by_health.get("action-required").copied().unwrap_or(0);
    Ok(StatusReport {
        connections: rows.iter().map(ConnectionView::from).collect(),
        summary: Summary {
            users,
            connections: rows.len(),
            by_health,
            action_required,
            open_outages: outages.len(),
        },
        outages,
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

/// A table a person can read: counts, open outages, who must act.
pub fn render_table(report: &StatusReport) -> String {
    let mut out = String::new();
    let s = &report.summary;
    let _ = writeln!(out, "users: {}   connections: {}", s.users, s.connections);
    let _ = writeln!(out, "\nhealth               connections");
    for (health, count) in &s.by_health {
        let _ = writeln!(out, "  {health:<19}{count:>6}");
    }
    let _ = writeln!(out, "\nopen outages: {}", report.outages.len());
    for o in &report.outages {
        let _ = writeln!(
            out,
            "  {} {:<13} since {} ({}{})",
            o.institution_id,
            o.method,
            o.started_at.format("%Y-%m-%d %H:%M:%SZ"),
            o.source,
            o.status
                .as_deref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        );
    }
    let needing: Vec<&ConnectionView> = report
        .connections
        .iter()
        .filter(|c| c.health.as_deref() == Some("action-required"))
        .collect();
    let _ = writeln!(
        out,
        "\nconnections needing the user's action: {}",
        needing.len()
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
    if needing.len() > 50 {
        let _ = writeln!(
            out,
            "  ... and {} more (status --json lists all)",
            needing.len() - 50
        );
    }
    out
}

/// `users list --json` and `GET /v1/users`: `[{"user_id", "next_due_at", "last_swept_at"}]`.
pub fn users_json(users: &[UserRow]) -> serde_json::Value {
    users
        .iter()
        .map(|u| {
            serde_json::json!({
                "user_id": u.user_id,
                "next_due_at": u.next_due_at,
                "last_swept_at": u.last_swept_at,
                "gone": u.gone_at.is_some(),
            })
        })
        .collect()
}
