//! The systemd side: the notify protocol (READY, STATUS, WATCHDOG, STOPPING) and
//! [`Liveness`], what `/healthz` and the watchdog judge the daemon's work by (progress made,
//! ticks taken), so both say the same thing.
//!
//! Without `NOTIFY_SOCKET` every notification is a no-op, so the same path runs under
//! systemd, in a terminal and in tests.
//!
//! Ages (of the last tick, of the last progress) are the context's clock's; the watchdog's
//! own beat is systemd's, on tokio's time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::work::{Context, Progress, TickState};

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

/// What the watchdog and `/healthz` judge the daemon's work by: progress, not the calendar.
/// Progress is a user's sweep finished (swept, gone, or a failure handled), a refresh attempt
/// decided, a batch of connections reclassified ([`crate::work::Progress::touch`]).
#[derive(Clone, Debug)]
pub struct Liveness {
    pub ticks: Arc<TickState>,
    /// The cron's longest gap between ticks.
    pub tick_interval: Duration,
    /// Unix seconds the daemon started by its clock (the reference before the first tick).
    pub started: i64,
    /// A pass that finished nothing for this long is stuck: the watchdog's interval, or
    /// [`STALL_WITHOUT_WATCHDOG`].
    pub stall: Duration,
}

/// How long a pass may finish nothing before it is stuck, when systemd asks for no watchdog.
pub const STALL_WITHOUT_WATCHDOG: Duration = Duration::from_secs(600);

impl Liveness {
    /// The stall interval follows systemd's watchdog (`WATCHDOG_USEC`) when there is one.
    pub fn new(ticks: Arc<TickState>, tick_interval: Duration, started: i64) -> Self {
        Self {
            ticks,
            tick_interval,
            started,
            stall: sd_notify::watchdog_enabled().unwrap_or(STALL_WITHOUT_WATCHDOG),
        }
    }

    /// Why the worker is not alive at `now` (Unix seconds by the context's clock), or `None`.
    pub fn problem(&self, progress: &Progress, now: i64) -> Option<String> {
        worker_problem(
            Moves {
                in_pass: progress.in_pass.load(Ordering::Relaxed),
                last_progress: progress.last_progress.load(Ordering::Relaxed),
                last_tick: self.ticks.last_tick.load(Ordering::Relaxed),
                started: self.started,
            },
            now,
            self.tick_interval,
            self.stall,
        )
    }
}

/// The times [`worker_problem`] judges, Unix seconds (0: never).
#[derive(Clone, Copy, Debug)]
pub struct Moves {
    pub in_pass: bool,
    pub last_progress: i64,
    pub last_tick: i64,
    pub started: i64,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Why the worker is not alive at `now`, or `None`. In a pass: nothing finished for
/// `stall`. Idle: no tick and no progress (nor the start) for three tick intervals.
pub fn worker_problem(
    moves: Moves,
    now: i64,
    tick_interval: Duration,
    stall: Duration,
) -> Option<String> {
    if moves.in_pass {
        let age = now - moves.last_progress;
        let limit = secs(stall);
        return (age > limit).then(|| {
            format!("a sweep pass finished nothing for {age}s (limit {limit}s, the stall interval)")
        });
    }
    let reference = moves.last_tick.max(moves.last_progress).max(moves.started);
    let age = now - reference;
    let limit = secs(tick_interval).saturating_mul(3);
    (age > limit).then(|| {
        format!("no tick and no progress for {age}s (limit {limit}s, three tick intervals)")
    })
}

/// One line for `systemctl status`, as of `now`.
pub async fn status_line(store: &Store, now: DateTime<Utc>) -> String {
    let since = now - chrono::Duration::hours(24);
    let swept = store.users_swept_since(since).await.unwrap_or(0);
    let users = store.count_active_users().await.unwrap_or(0);
    let outages = store.open_outages().await.map(|o| o.len()).unwrap_or(0);
    format!("swept {swept}/{users} users in the last 24 h; {outages} outage(s) open")
}

/// Sends WATCHDOG=1 at half the systemd interval while the daemon is alive by `liveness`
/// and its writes succeed, and keeps STATUS= current. Without a watchdog, only the status
/// line is refreshed. The beat does not wait for the status line: a slow read delays the
/// line, never the beat.
pub fn spawn_watchdog(
    context: Context,
    liveness: Liveness,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let watchdog = sd_notify::watchdog_enabled();
    let clock = context.clock().clone();
    let period = watchdog.map_or(Duration::from_secs(30), |w| {
        (w / 2).max(Duration::from_millis(100))
    });
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = beat.tick() => {}
            }
            let now = clock.now();
            if watchdog.is_some() {
                pet_or_withhold(&context, &liveness, now.timestamp());
            }
            if let Ok(line) = tokio::time::timeout(period, status_line(context.store(), now)).await
            {
                send(&[NotifyState::Status(&line)]);
            }
        }
    })
}

/// One beat: WATCHDOG=1, or an error line saying why not.
fn pet_or_withhold(context: &Context, liveness: &Liveness, now: i64) {
    if let Some(f) = context.store().write_health().failing() {
        // Writes keep failing (a full disk, a read-only file system): let systemd restart
        // the service rather than report a healthy daemon that stores nothing.
        tracing::error!(
            event = "watchdog_withheld",
            since = %f.since,
            failures = f.failures,
            error = %f.error,
            "database writes are failing: not petting the watchdog"
        );
    } else if let Some(problem) = liveness.problem(context.progress(), now) {
        tracing::error!(
            event = "watchdog_withheld",
            problem = %problem,
            "the daemon made no progress: not petting the watchdog"
        );
    } else {
        send(&[NotifyState::Watchdog]);
    }
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

    fn moves(in_pass: bool, last_progress: i64, last_tick: i64) -> Moves {
        Moves {
            in_pass,
            last_progress,
            last_tick,
            started: 900,
        }
    }

    #[test]
    fn idle_the_worker_is_alive_while_ticks_or_progress_come_within_three_intervals() {
        let minute = Duration::from_secs(60);
        let stall = Duration::from_secs(6);
        let problem = |m, now| worker_problem(m, now, minute, stall);
        assert_eq!(problem(moves(false, 0, 1000), 1180), None);
        assert!(problem(moves(false, 0, 1000), 1181).is_some());
        // A pass that ended late counts as much as a tick.
        assert_eq!(problem(moves(false, 1150, 1000), 1330), None);
        assert!(problem(moves(false, 1150, 1000), 1331).is_some());
        // Before the first tick, the start time is the reference.
        assert_eq!(problem(moves(false, 0, 0), 1080), None);
        assert!(problem(moves(false, 0, 0), 1081).is_some());
    }

    #[test]
    fn in_a_pass_the_worker_is_alive_while_something_finished_within_the_stall_interval() {
        let minute = Duration::from_secs(60);
        let stall = Duration::from_secs(6);
        let problem = |m, now| worker_problem(m, now, minute, stall);
        // The last tick is long gone: a long pass that keeps finishing users is alive.
        assert_eq!(problem(moves(true, 5000, 1000), 5006), None);
        let stuck = problem(moves(true, 5000, 1000), 5007).expect("stuck");
        assert!(stuck.contains("finished nothing for 7s"), "{stuck}");
    }
}
