//! Right over many days: the four ways a decision made on one snapshot went wrong later,
//! each replayed on a driven clock through the real sweeper, refresher and store.
//!
//! 1. Told to act about a failure the outage caused, once the outage ended (told by
//!    `/connectors`, or inferred).
//! 2. A recovery refresh sent to a connection Basiq had refreshed successfully since.
//! 3. A scheduled refresh that ignored what a sweep read while the pace held it back.
//! 4. An inferred outage hiding failures from long before it.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use basiq_health::app::App;
use basiq_health::clock::Clock;
use basiq_health::domain::{ConnectionId, UserId};
use basiq_sim::{Outcome, ScriptedConnection, ScriptedJob, SimConfig};
use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::app::*;
use crate::helpers::*;

const NOTIFY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const POPUP: &str = "account-not-accessible-requires-user-action";

/// A daemon and a simulator sharing one driven clock.
struct Scene {
    clock: Clock,
    app: App,
    house: TestApp,
}

fn start() -> DateTime<Utc> {
    "2026-11-02T00:00:00Z".parse().unwrap()
}

impl Scene {
    /// `refresh`: extra lines of the `[refresh]` table. Notifications are kept (an endpoint is
    /// configured; nothing delivers them here).
    async fn new(refresh: &str) -> Self {
        let clock = Clock::manual(start());
        let sim_clock = clock.clone();
        let t = TestApp::builder()
            .sim(SimConfig {
                users: 0,
                step_duration: StdDuration::from_secs(20),
                clock: Arc::new(move || sim_clock.now()),
                ..sim_config()
            })
            .clock(clock.clone())
            .spawn()
            .await;
        let secret = t.path("notify-secret");
        std::fs::write(&secret, NOTIFY_SECRET).unwrap();
        let extra = format!(
            "[refresh]\n{refresh}\n[[notify.endpoints]]\nurl = \"http://127.0.0.1:9/hook\"\n\
             secret_file = {:?}\n",
            secret.display().to_string()
        );
        let app = t.app_with(&extra).await;
        Self {
            clock,
            app,
            house: t,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A registered user with one active connection at `institution`/web that succeeded a
    /// job `hours_ago` (and was used then).
    async fn user(
        &self,
        user: &str,
        connection: &str,
        institution: &str,
        hours_ago: i64,
    ) -> UserId {
        let at = self.now() - Duration::hours(hours_ago);
        let mut c = ScriptedConnection::new_at(institution, "web", self.now());
        c.id = connection.into();
        c.last_used = Some(at + Duration::seconds(40));
        self.house.sim().sim.add_connection(user, c);
        self.job(user, connection, at, Outcome::Success);
        let id = UserId::parse(user).unwrap();
        self.app
            .context()
            .add_users(std::slice::from_ref(&id))
            .await
            .unwrap();
        id
    }

    /// A job of the connection that ran 40 s from `at`, finished.
    fn job(&self, user: &str, connection: &str, at: DateTime<Utc>, outcome: Outcome) {
        self.house.sim().sim.add_job(
            user,
            ScriptedJob {
                id: None,
                connection_id: connection.into(),
                created: at,
                updated: at + Duration::seconds(40),
                outcome,
                running: false,
                with_source: true,
            },
        );
    }

    /// Basiq's own update that succeeded now: a job, and `lastUsed` moves.
    fn basiq_succeeded(&self, user: &str, connection: &str) {
        let at = self.now() - Duration::seconds(40);
        self.job(user, connection, at, Outcome::Success);
        let mut c = self
            .house
            .sim()
            .sim
            .scripted(user)
            .into_iter()
            .find(|c| c.id == connection)
            .unwrap();
        c.last_used = Some(self.now());
        self.house.sim().sim.add_connection(user, c);
    }

    async fn sweep(&self, user: &UserId) {
        self.app.context().sweep_user(user).await.unwrap();
    }

    /// One tick: `/connectors` (at most once per TTL) and the reclassifications it causes.
    async fn tick(&self) {
        let cancel = CancellationToken::new();
        self.app
            .context()
            .run_pass(basiq_health::work::PassTrigger::Tick, None, &cancel)
            .await
            .unwrap();
    }

    /// Moves the clock by `minutes`, a minute at a time, ticking and running owed refreshes
    /// at each (as the daemon's tick does).
    async fn pass_minutes(&self, minutes: i64) {
        for _ in 0..minutes {
            self.clock.advance(StdDuration::from_secs(60));
            self.tick().await;
            let cancel = CancellationToken::new();
            self.app.refresher().run_due(&cancel).await.unwrap();
        }
    }

    async fn row(&self, connection: &str) -> basiq_health::plan::ConnectionRow {
        self.app
            .context()
            .store()
            .connection(&ConnectionId::parse(connection).unwrap())
            .await
            .unwrap()
            .unwrap()
    }

    /// Every health notice about the connection, as written: (to, user_action).
    async fn notices(&self, connection: &str) -> Vec<(String, String)> {
        let payloads: Vec<String> = sqlx::query_scalar(
            "SELECT payload FROM outbox WHERE event_type = 'connection.health_changed' ORDER BY id",
        )
        .fetch_all(self.app.context().store().pool())
        .await
        .unwrap();
        payloads
            .iter()
            .map(|p| serde_json::from_str::<serde_json::Value>(p).unwrap())
            .filter(|v| v["data"]["connection_id"] == connection)
            .map(|v| {
                (
                    v["data"]["to"].as_str().unwrap_or_default().to_owned(),
                    v["data"]["user_action"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }

    fn refreshes_of(&self, connection: &str) -> usize {
        self.house
            .sim()
            .sim
            .counters()
            .refresh_calls
            .get(connection)
            .map_or(0, Vec::len)
    }
}

fn fail(code: &str) -> Outcome {
    Outcome::fail("retrieve-accounts", code, "Failed", "The step failed.")
}

/// Break 1: a failure that looks like the user's, during an outage `/connectors` reported,
/// is re-checked when the outage ends: nobody is asked to act for it, and Basiq's own
/// success afterwards settles it.
#[tokio::test]
async fn a_failure_the_outage_caused_is_not_asked_about_after_the_outage_ends() {
    let s = Scene::new("").await;
    let u1 = s.user("u1", "c1", "AU00004", 3).await;
    s.tick().await;
    s.sweep(&u1).await;
    assert_eq!(
        s.row("c1").await.health.map(|h| h.as_str()),
        Some("healthy")
    );

    s.house
        .sim()
        .sim
        .set_connector_status("AU00004", "web", "major-outage");
    s.pass_minutes(6).await;
    s.job("u1", "c1", s.now() - Duration::minutes(1), fail(POPUP));
    s.sweep(&u1).await;
    assert_eq!(
        s.row("c1").await.health.map(|h| h.as_str()),
        Some("institution-outage"),
        "held while the bank is down"
    );

    s.pass_minutes(90).await;
    s.house
        .sim()
        .sim
        .set_connector_status("AU00004", "web", "operational");
    // Ticks only: the recovery slot falls by the installation's seed, and a recovery sent
    // now would answer the question before it is asked.
    for _ in 0..6 {
        s.clock.advance(StdDuration::from_secs(60));
        s.tick().await;
    }
    s.sweep(&u1).await;
    let row = s.row("c1").await;
    assert_eq!(
        (row.health.map(|h| h.as_str()), row.reason.as_deref()),
        (Some("pending"), Some("recheck-after-outage")),
        "the outage's failure is re-checked, not the user's to act on"
    );
    let asks: Vec<_> = s
        .notices("c1")
        .await
        .into_iter()
        .filter(|(_, action)| action != "none")
        .collect();
    assert!(asks.is_empty(), "nobody is asked to act: {asks:?}");

    // Basiq's own update after the end decides: healthy, told as such. The recovery slot
    // falls by the installation's seed: a recovery refresh sent just before may still be
    // running at the first sweep, so the answer is read once every job has ended.
    s.pass_minutes(3).await;
    s.basiq_succeeded("u1", "c1");
    s.sweep(&u1).await;
    s.pass_minutes(3).await;
    s.sweep(&u1).await;
    assert_eq!(
        s.row("c1").await.health.map(|h| h.as_str()),
        Some("healthy")
    );
    assert!(s.notices("c1").await.iter().all(|(_, a)| a == "none"));
}

/// Break 1, inferred: three users fail bank-side at one bank while `/connectors` says it
/// is up; a fourth meets a failure that looks like theirs. When the failures age out of
/// `outage.window` and the inference closes, the fourth is re-checked, not asked.
#[tokio::test]
async fn a_failure_during_an_inferred_outage_is_not_asked_about_once_the_inference_closes() {
    let s = Scene::new("").await;
    let mut users = Vec::new();
    for n in 1..=4 {
        users.push(
            s.user(&format!("u{n}"), &format!("c{n}"), "AU00005", 3)
                .await,
        );
    }
    s.tick().await;
    for (n, u) in users.iter().enumerate().take(3) {
        let c = format!("c{}", n + 1);
        s.job(
            u.as_str(),
            &c,
            s.now() - Duration::minutes(2),
            fail("service-unavailable"),
        );
        s.sweep(u).await;
    }
    s.job("u4", "c4", s.now() - Duration::minutes(2), fail(POPUP));
    s.sweep(&users[3]).await;
    assert_eq!(
        s.row("c4").await.health.map(|h| h.as_str()),
        Some("institution-outage"),
        "inferred from three users: held"
    );

    // The bank works again: the failures age out of the window and one success closes the
    // inference.
    s.pass_minutes(70).await;
    s.basiq_succeeded("u1", "c1");
    s.sweep(&users[0]).await;
    s.pass_minutes(1).await;
    let row = s.row("c4").await;
    assert_eq!(
        (row.health.map(|h| h.as_str()), row.reason.as_deref()),
        (Some("pending"), Some("recheck-after-outage")),
    );
    s.sweep(&users[3]).await;
    assert_eq!(
        s.row("c4").await.health.map(|h| h.as_str()),
        Some("pending")
    );
    assert!(
        s.notices("c4").await.iter().all(|(_, a)| a == "none"),
        "nobody is asked to act: {:?}",
        s.notices("c4").await
    );
}

/// Break 2: the recovery refresh planned at an outage's end is not sent once Basiq's own
/// update succeeded after the end, neither at its slot nor when the recency floor opens.
#[tokio::test]
async fn a_recovery_is_not_sent_when_basiq_refreshed_the_connection_after_the_outage() {
    let s = Scene::new("").await;
    let u1 = s.user("u1", "c1", "AU00004", 3).await;
    s.tick().await;
    s.house
        .sim()
        .sim
        .set_connector_status("AU00004", "web", "major-outage");
    s.pass_minutes(6).await;
    s.job(
        "u1",
        "c1",
        s.now() - Duration::minutes(1),
        fail("service-unavailable"),
    );
    s.sweep(&u1).await;
    s.pass_minutes(120).await;
    s.house
        .sim()
        .sim
        .set_connector_status("AU00004", "web", "operational");
    // The end is read at the next tick (no owed refresh runs yet: its slot may be early).
    s.clock.advance(StdDuration::from_secs(360));
    s.tick().await;
    let owed = s.row("c1").await.refresh_due;
    assert_eq!(
        owed.map(|o| o.trigger.as_str()),
        Some("recovery"),
        "the outage's end owes a recovery"
    );

    s.basiq_succeeded("u1", "c1");
    s.sweep(&u1).await;
    assert_eq!(
        s.row("c1").await.health.map(|h| h.as_str()),
        Some("healthy")
    );
    // Past the slot, and past an hour after Basiq's success.
    s.pass_minutes(100).await;
    assert_eq!(
        s.refreshes_of("c1"),
        0,
        "no refresh the newest facts make pointless"
    );
    assert_eq!(s.row("c1").await.refresh_due, None, "nothing owed any more");
}

/// Break 3: a scheduled refresh the per-bank pace held back is decided again when its turn
/// comes: Basiq's own update that a sweep read meanwhile makes it pointless.
#[tokio::test]
async fn a_scheduled_refresh_held_by_the_pace_is_decided_again_on_what_a_sweep_read_meanwhile() {
    let s = Scene::new(
        "mode = \"daily\"\nper_institution_per_minute = 1\nmax_wait = \"5m\"\n\
         unattended_window = \"00:00-23:59\"\ntimezone = \"UTC\"",
    )
    .await;
    let u1 = s.user("u1", "c1", "AU00000", 30).await;
    let u2 = s.user("u2", "c2", "AU00000", 30).await;
    s.tick().await;
    s.sweep(&u1).await;
    s.sweep(&u2).await;
    // Both daily slots are now.
    for c in ["c1", "c2"] {
        let id = ConnectionId::parse(c).unwrap();
        let store = s.app.context().store();
        store.set_daily_due(&id, Some(s.now())).await.unwrap();
    }
    let refresher = s.app.refresher().clone();
    let due = tokio::spawn(async move {
        let cancel = CancellationToken::new();
        refresher.run_due(&cancel).await.unwrap()
    });
    // One refresh goes; the other waits a minute for the bank's pace (and the first one's
    // follower polls): two sleepers on the clock.
    while s.clock.parked() < 2 {
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    assert_eq!(s.refreshes_of("c1") + s.refreshes_of("c2"), 1);
    let (waiting, user, waiting_user) = if s.refreshes_of("c1") == 1 {
        ("c2", "u2", &u2)
    } else {
        ("c1", "u1", &u1)
    };
    // Meanwhile Basiq refreshed it and a sweep read that.
    s.clock.advance(StdDuration::from_secs(20));
    s.basiq_succeeded(user, waiting);
    s.sweep(waiting_user).await;
    s.clock.advance(StdDuration::from_secs(45));
    let sent = due.await.unwrap();
    assert_eq!(sent, 1, "only the first went");
    assert_eq!(s.refreshes_of(waiting), 0, "decided again when acting");
    let decision = s.row(waiting).await.last_decision.unwrap();
    assert_eq!(decision.reason.as_deref(), Some("recently-refreshed"));
}

/// Break 4: a user-side failure from before an inferred outage, and a connection invalid
/// for days before it, stay the user's while the outage lasts.
#[tokio::test]
async fn a_failure_from_before_an_inferred_outage_stays_the_user_s() {
    let s = Scene::new("").await;
    let u1 = s.user("u1", "c1", "AU00005", 30).await;
    s.job(
        "u1",
        "c1",
        s.now() - Duration::hours(20),
        fail("invalid-credentials"),
    );
    s.house.sim().sim.set_connection_status("c1", "invalid");
    let u5 = s.user("u5", "c5", "AU00005", 30).await;
    s.house.sim().sim.set_connection_status("c5", "invalid");
    s.tick().await;
    s.sweep(&u1).await;
    s.sweep(&u5).await;
    assert_eq!(
        s.row("c1").await.health.map(|h| h.as_str()),
        Some("action-required")
    );
    assert_eq!(
        s.row("c5").await.health.map(|h| h.as_str()),
        Some("action-required")
    );

    // Nineteen days later the bank fails for three other users: an inferred outage.
    s.clock.advance(StdDuration::from_secs(19 * 86_400));
    let mut others = Vec::new();
    for n in 2..=4 {
        let u = s
            .user(&format!("u{n}"), &format!("c{n}"), "AU00005", 3)
            .await;
        s.job(
            u.as_str(),
            &format!("c{n}"),
            s.now() - Duration::minutes(2),
            fail("service-unavailable"),
        );
        others.push(u);
    }
    s.tick().await;
    for u in &others {
        s.sweep(u).await;
    }
    s.pass_minutes(1).await;
    s.sweep(&u1).await;
    s.sweep(&u5).await;
    // And whatever the background reclassification of the bank made of them.
    reclassified(s.app.context().store()).await;
    for c in ["c1", "c5"] {
        assert_eq!(
            s.row(c).await.health.map(|h| h.as_str()),
            Some("action-required"),
            "{c}: its failure is from long before the outage"
        );
        assert!(
            s.notices(c)
                .await
                .iter()
                .all(|(to, _)| to != "institution-outage"),
            "{c}: never told the bank is why: {:?}",
            s.notices(c).await
        );
    }
    let inferred: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outages WHERE source = 'inferred'")
            .fetch_one(s.app.context().store().pool())
            .await
            .unwrap();
    assert_eq!(inferred, 1, "the outage was inferred");
}

/// An ask about a connection whose bank is one user short of an inferred outage waits;
/// when the outage is inferred, the ask no longer holds and is superseded, never sent.
#[tokio::test]
async fn an_ask_at_a_bank_one_user_short_of_an_inferred_outage_waits_and_is_superseded() {
    let s = Scene::new("").await;
    let mut users = Vec::new();
    for n in 1..=4 {
        users.push(
            s.user(&format!("u{n}"), &format!("c{n}"), "AU00005", 3)
                .await,
        );
    }
    s.tick().await;
    for n in [2, 3] {
        s.job(
            &format!("u{n}"),
            &format!("c{n}"),
            s.now() - Duration::minutes(2),
            fail("service-unavailable"),
        );
        s.sweep(&users[n - 1]).await;
    }
    s.job("u4", "c4", s.now() - Duration::minutes(2), fail(POPUP));
    s.sweep(&users[3]).await;
    assert_eq!(
        s.row("c4").await.health.map(|h| h.as_str()),
        Some("action-required")
    );
    assert_eq!(
        s.notices("c4").await.last().map(|(_, a)| a.as_str()),
        Some("clear-bank-message")
    );
    let deliver = || async {
        let settings = s.app.settings().notify.clone();
        basiq_health::work::delivery::deliver_round(
            s.app.context().store(),
            &settings,
            Some(s.app.context()),
            &settings.endpoints[0],
            &s.clock,
        )
        .await
        .unwrap()
    };
    let state = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT d.state, d.attempts FROM deliveries d JOIN outbox o ON o.id = d.outbox_id
             WHERE o.payload LIKE '%\"c4\"%' AND o.payload LIKE '%clear-bank-message%'",
        )
        .fetch_one(s.app.context().store().pool())
        .await
        .unwrap()
    };
    deliver().await;
    assert_eq!(
        state().await,
        ("pending".to_owned(), 0),
        "held, not attempted"
    );
    // A third user fails: the outage is inferred, the ask no longer holds.
    s.job(
        "u1",
        "c1",
        s.now() - Duration::minutes(1),
        fail("service-unavailable"),
    );
    s.sweep(&users[0]).await;
    // The others at the bank are reclassified in the background.
    reclassified(s.app.context().store()).await;
    assert_eq!(
        s.row("c4").await.health.map(|h| h.as_str()),
        Some("institution-outage")
    );
    deliver().await;
    assert_eq!(state().await.0, "superseded");
}

/// Recovery inside its window: when the per-bank pace cannot send an outage's recoveries
/// within `refresh.recovery_window`, they are spread over the shortest window it allows,
/// `plan` says so, and each goes inside that window.
#[tokio::test]
async fn recoveries_the_bank_s_pace_cannot_fit_are_spread_over_the_window_it_allows() {
    let s =
        Scene::new("recovery_window = \"5m\"\nper_institution_per_minute = 2\nmax_wait = \"0s\"")
            .await;
    let mut users = Vec::new();
    for n in 0..10 {
        users.push(
            s.user(&format!("r{n}"), &format!("rc{n}"), "AU00004", 30)
                .await,
        );
    }
    s.tick().await;
    s.house
        .sim()
        .sim
        .set_connector_status("AU00004", "web", "major-outage");
    s.pass_minutes(6).await;
    for (n, u) in users.iter().enumerate() {
        s.job(
            u.as_str(),
            &format!("rc{n}"),
            s.now() - Duration::minutes(1),
            fail("service-unavailable"),
        );
        s.sweep(u).await;
    }
    s.pass_minutes(120).await;
    s.house
        .sim()
        .sim
        .set_connector_status("AU00004", "web", "operational");
    s.clock.advance(StdDuration::from_secs(360));
    s.tick().await;
    let ended = s.now();
    let plan = s.app.refresher().dry_run(None, s.now()).await.unwrap();
    let recoveries: Vec<_> = plan
        .iter()
        .filter_map(|l| match l.upcoming {
            basiq_health::plan::policy::schedule::Upcoming::Refresh {
                refresh_at,
                trigger,
            } if trigger.as_str() == "recovery" => Some((refresh_at, l.note)),
            _ => None,
        })
        .collect();
    assert_eq!(recoveries.len(), 10, "{plan:?}");
    // Ten at two a minute: 5 minutes, a quarter to spare: 6 min 15 s.
    let stretched = ended + Duration::seconds(375);
    assert!(
        recoveries.iter().all(|(at, _)| *at <= stretched),
        "{recoveries:?}"
    );
    let late: Vec<_> = recoveries
        .iter()
        .filter(|(at, _)| *at > ended + Duration::minutes(5))
        .collect();
    assert!(
        !late.is_empty(),
        "the last slots lie past refresh.recovery_window"
    );
    assert!(
        late.iter().all(|(_, note)| note.is_some()),
        "plan says why: {late:?}"
    );
    // Each is sent within the stretched window. With no wait allowed (`max_wait = "0s"`),
    // a refresh the pace holds back waits for the next tick: ticks every 30 s keep up with
    // two a minute.
    for _ in 0..13 {
        s.clock.advance(StdDuration::from_secs(30));
        s.tick().await;
        let cancel = CancellationToken::new();
        s.app.refresher().run_due(&cancel).await.unwrap();
    }
    let calls = s.house.sim().sim.counters().refresh_calls;
    for n in 0..10 {
        let at = calls.get(&format!("rc{n}")).cloned().unwrap_or_default();
        assert_eq!(at.len(), 1, "rc{n}: {calls:?}");
        assert!(
            at[0] <= stretched + Duration::seconds(30),
            "rc{n} at {}",
            at[0]
        );
    }
}
