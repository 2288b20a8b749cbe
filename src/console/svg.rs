//! The console's pictures, drawn on the server as inline SVG (no script, no image request):
//! a bank's health as one bar, its 7-day timeline, refreshes per hour. Pure: numbers in,
//! markup out; any text in them is escaped.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::escape;

const OK: &str = "#1a7f37";
const ACT: &str = "#b42318";
const DOWN: &str = "#6e40c9";
const OTHER: &str = "#8c959f";
const MAINT: &str = "#9a6700";

/// The share of each health as one bar, 360 wide.
pub fn health_bar(by_health: &BTreeMap<String, i64>) -> String {
    let total: i64 = by_health.values().sum();
    let part = |h: &str| by_health.get(h).copied().unwrap_or(0);
    let healthy = part("healthy");
    let act = part("action-required");
    let down = part("institution-outage");
    let other = total - healthy - act - down;
    let mut out = String::from(
        "<svg class=\"health-bar\" viewBox=\"0 0 360 14\" width=\"360\" height=\"14\" role=\"img\">",
    );
    out.push_str(&format!(
        "<title>{healthy} healthy, {act} must act, {down} in an outage, {other} other</title>"
    ));
    let mut x = 0.0;
    for (n, colour) in [(healthy, OK), (act, ACT), (down, DOWN), (other, OTHER)] {
        if n <= 0 || total <= 0 {
            continue;
        }
        let w = 360.0 * n as f64 / total as f64;
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"14\" fill=\"{colour}\"/>"
        ));
        x += w;
    }
    if total <= 0 {
        out.push_str("<rect x=\"0\" y=\"0\" width=\"360\" height=\"14\" fill=\"#eef1f4\"/>");
    }
    out.push_str("</svg>");
    out
}

/// What a bank's timeline shows besides its failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span {
    Outage,
    Maintenance,
}

/// A bank's timeline from `start` to `end` (past `now`: what is announced ahead): outages
/// and announced maintenance as bands, bank-side failures per hour as bars, a tick per day,
/// a line at `now`.
pub fn timeline(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
    spans: &[(DateTime<Utc>, DateTime<Utc>, Span, String)],
    failures: &[(DateTime<Utc>, i64)],
) -> String {
    const W: f64 = 720.0;
    let total = (end - start).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| ((t - start).num_seconds() as f64 / total * W).clamp(0.0, W);
    let mut out = format!(
        "<svg class=\"timeline\" viewBox=\"0 0 {W} 120\" width=\"{W}\" height=\"120\" role=\"img\">\
         <title>From {} to {}: outages, maintenance and failures per hour</title>\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"100\" fill=\"#f6f8fa\"/>",
        start.format("%Y-%m-%d %H:%M UTC"),
        end.format("%Y-%m-%d %H:%M UTC")
    );
    for (from, until, kind, said) in spans {
        let (x0, x1) = (x(*from), x(*until));
        let (y, h, colour) = match kind {
            Span::Outage => (10, 30, DOWN),
            Span::Maintenance => (45, 20, MAINT),
        };
        out.push_str(&format!(
            "<rect x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"{h}\" fill=\"{colour}\"><title>{}</title></rect>",
            (x1 - x0).max(1.0),
            escape(said)
        ));
    }
    let most = failures.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let hour_w = (W / (total / 3600.0)).max(1.0);
    for (at, n) in failures.iter().filter(|(_, n)| *n > 0) {
        let h = 30.0 * *n as f64 / most;
        out.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{hour_w:.1}\" height=\"{h:.1}\" fill=\"{ACT}\"><title>{n} failure(s) in the hour from {}</title></rect>",
            x(*at),
            100.0 - h,
            at.format("%Y-%m-%d %H:00")
        ));
    }
    let mut day = start.date_naive();
    while let Some(next) = day.succ_opt() {
        let at = next.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        let Some(at) = at.filter(|t| *t < end) else {
            break;
        };
        let px = x(at);
        out.push_str(&format!(
            "<line x1=\"{px:.1}\" y1=\"0\" x2=\"{px:.1}\" y2=\"104\" stroke=\"#d8dde3\"/>\
             <text x=\"{:.1}\" y=\"116\" font-size=\"10\" fill=\"#5b6470\">{}</text>",
            px + 2.0,
            at.format("%a %d")
        ));
        day = next;
    }
    let px = x(now);
    out.push_str(&format!(
        "<line x1=\"{px:.1}\" y1=\"0\" x2=\"{px:.1}\" y2=\"104\" stroke=\"#1b1f24\" stroke-dasharray=\"3 2\"><title>now</title></line>"
    ));
    out.push_str("</svg>");
    out
}

/// Refreshes per hour over the last 24 hours (24 values, oldest first), one bar each.
pub fn hourly(values: &[i64]) -> String {
    let most = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut out = String::from(
        "<svg class=\"hourly\" viewBox=\"0 0 480 90\" width=\"480\" height=\"90\" role=\"img\">\
         <title>Refreshes per hour, the last 24 hours (oldest on the left)</title>",
    );
    for (i, n) in values.iter().enumerate() {
        let h = 80.0 * *n as f64 / most;
        out.push_str(&format!(
            "<rect x=\"{}\" y=\"{:.1}\" width=\"18\" height=\"{h:.1}\" fill=\"#0969da\"><title>{n}</title></rect>",
            i * 20,
            80.0 - h
        ));
    }
    out.push_str("<line x1=\"0\" y1=\"80.5\" x2=\"480\" y2=\"80.5\" stroke=\"#d8dde3\"/></svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64) -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::hours(h)
    }

    #[test]
    fn a_bar_divides_its_width_by_health() {
        let bar = health_bar(&[("healthy".into(), 3), ("action-required".into(), 1)].into());
        assert!(bar.contains("width=\"270.0\""), "{bar}");
        assert!(bar.contains("width=\"90.0\""), "{bar}");
        assert!(bar.contains("3 healthy, 1 must act"));
        assert!(health_bar(&BTreeMap::new()).contains("#eef1f4"));
    }

    #[test]
    fn a_timeline_places_its_spans_and_escapes_what_the_bank_said() {
        let svg = timeline(
            at(0),
            at(24 * 7),
            at(24 * 7),
            &[(
                at(24),
                at(48),
                Span::Outage,
                "<script>alert(1)</script>".into(),
            )],
            &[(at(30), 4)],
        );
        // A day of a week is a seventh of the width.
        assert!(svg.contains("x=\"102.9\""), "{svg}");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains("4 failure(s)"));
        assert_eq!(
            svg.matches("<line").count(),
            7,
            "a tick per day inside the week, and now"
        );
    }
}
