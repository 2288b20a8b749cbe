//! The systemd side: the notify protocol (READY, STATUS, WATCHDOG, STOPPING) and the tick
//! interval `/healthz` and the watchdog judge staleness by.
//!
//! Without `NOTIFY_SOCKET` every notification is a no-op, so the same path runs under
//! systemd, in a terminal and in tests.
//!
//! Ages (of the last tick, of the last progress) are the sweeper's clock's; the watchdog's
//! own beat is systemd's, on tokio's time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::sweep::{Sweeper, TickState};

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: finishing users in flight"),
    ]);
}

/// The longest gap between consecutive ticks of a 6-field cron expression, over the 16
/// ticks after `now`.
pub fn tick_interval(cron: &str, now: DateTime<Utc>) -> Duration {
    use croner::parser::{CronParser, Seconds};
    let parsed = CronParser::builder()
        .seconds(Seconds::Required)
        .build()
        .parse(cron);
    let Ok(cron) = parsed else {
        return Duration::from_secs(60);
    };
    let times: Vec<_> = cron.iter_after(now).take(16).collect();
    times
        .windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .max()
        .unwrap_or(Duration::from_secs(60))
}

/// Whether the worker is alive at `now` (Unix seconds): idle and ticking, or in a pass that
/// made progress lately.
pub fn worker_healthy(
    sweeper: &Sweeper,
    ticks: &TickState,
    tick_interval: Duration,
    started: i64,
    stall: Duration,
    now: i64,
) -> bool {
    let progress = sweeper.progress();
    if progress.in_pass.load(Ordering::Relaxed) {
        let last = progress.last_progress.load(Ordering::Relaxed);
        return now - last <= i64::try_from(stall.as_secs()).unwrap_or(i64::MAX);
    }
    let last_tick = ticks.last_tick.load(Ordering::Relaxed).max(started);
    now - last_tick <= i64::try_from((tick_interval * 3).as_secs()).unwrap_or(i64::MAX)
}

/// Why the daemon is not healthy (empty: healthy): the last tick (or the start, before the
/// first tick) is older than three tick intervals.
pub fn tick_problem(
    last_tick: i64,
    started: i64,
    now: i64,
    tick_interval: Duration,
) -> Option<String> {
    let reference = last_tick.max(started);
    let age = now - reference;
    let limit = i64::try_from((tick_interval * 3).as_secs()).unwrap_or(i64::MAX);
    (age > limit).then(|| format!("last tick {age}s ago (limit {limit}s, three tick intervals)"))
}

/// One line for `systemctl status`, as of `now`.
pub async fn status_line(store: &Store, now: DateTime<Utc>) -> String {
    let since = now - chrono::Duration::hours(24);
    let swept = store.users_swept_since(since).await.unwrap_or(0);
    let users = store.count_active_users().await.unwrap_or(0);
    let outages = store.open_outages().await.map(|o| o.len()).unwrap_or(0);
    format!("swept {swept}/{users} users in the last 24 h; {outages} outage(s) open")
}

/// Sends WATCHDOG=1 at half the systemd interval while the worker is healthy, and keeps
/// STATUS= current. Without a watchdog, only the status line is refreshed.
pub fn spawn_watchdog(
    sweeper: Sweeper,
    ticks: Arc<TickState>,
    tick_interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let watchdog = sd_notify::watchdog_enabled();
    let clock = sweeper.clock().clone();
    let started = clock.now().timestamp();
    let period = watchdog.map_or(Duration::from_secs(30), |w| {
        (w / 2).max(Duration::from_millis(100))
    });
    // A pass is stuck when no user finished for a whole watchdog interval (or 10 minutes).
    let stall = watchdog.unwrap_or(Duration::from_secs(600));
    tokio::spawn(async move {
        loop {
            let now = clock.now();
            let failing = sweeper.store().write_health().failing();
            if watchdog.is_some()
                && let Some(f) = &failing
            {
                // Writes keep failing (a full disk, a read-only file system): let systemd
                // restart the service rather than report a healthy daemon that stores nothing.
                tracing::error!(
                    event = "watchdog_withheld",
                    since = %f.since,
                    failures = f.failures,
                    error = %f.error,
                    "database writes are failing: not petting the watchdog"
                );
            } else if watchdog.is_some()
                && worker_healthy(
                    &sweeper,
                    &ticks,
                    tick_interval,
                    started,
                    stall,
                    now.timestamp(),
                )
            {
                send(&[NotifyState::Watchdog]);
            } else if watchdog.is_some() {
                tracing::error!(
                    event = "watchdog_withheld",
                    "the sweep worker made no progress: not petting the watchdog"
                );
            }
            let line = status_line(sweeper.store(), now).await;
            send(&[NotifyState::Status(&line)]);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_interval_is_the_longest_gap_of_the_cron() {
        let now: DateTime<Utc> = "2026-12-01T10:17:23Z".parse().unwrap();
        assert_eq!(tick_interval("0 * * * * *", now), Duration::from_secs(60));
        assert!(tick_interval("* * * * * *", now) <= Duration::from_secs(2));
        assert_eq!(
            tick_interval("0 */5 * * * *", now),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn a_tick_older_than_three_intervals_is_a_problem() {
        let minute = Duration::from_secs(60);
        assert_eq!(tick_problem(1000, 900, 1100, minute), None);
        assert_eq!(tick_problem(1000, 900, 1180, minute), None);
        assert!(tick_problem(1000, 900, 1181, minute).is_some());
        // Before the first tick, the start time is the reference.
        assert_eq!(tick_problem(0, 1000, 1100, minute), None);
        assert!(tick_problem(0, 1000, 1200, minute).is_some());
    }
}
