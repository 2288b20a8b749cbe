//! Table tests of the planner: each rule of the planner as a property of plain data.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::domain::{ConnectorStatus, InstitutionId, JobId, Step, StepResult, StepStatus};
use crate::plan::policy::Trigger;

const BANK: &str = "AU00000";
const OTHER_BANK: &str = "AU00001";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).single().unwrap()
}

fn mins(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

fn user() -> UserId {
    UserId::parse("u1").unwrap()
}

fn settings() -> PlanSettings {
    PlanSettings {
        stale_after: Duration::from_secs(24 * 3600),
        outage_min_users: 3,
        outage_window: Duration::from_secs(3600),
        auto_refresh: Some(AutoRefresh {
            recovery_window: Duration::from_secs(3600),
            transient_retry_base: Duration::from_secs(600),
            transient_max_retries: 2,
            min_interval: Duration::from_secs(3600),
            per_institution_per_minute: std::num::NonZeroU32::new(10).unwrap(),
        }),
    }
}

fn connection(id: &str, method: Method) -> Connection {
    Connection {
        id: ConnectionId::parse(id).unwrap(),
        status: crate::domain::ConnectionStatus::Active,
        method,
        institution_id: InstitutionId::new(BANK),
        created_date: Some(now() - chrono::Duration::days(30)),
        last_used: Some(now() - chrono::Duration::hours(3)),
        expiry_date: None,
        mfa_enabled: None,
    }
}

fn step(title: &str, status: StepStatus, result: StepResult) -> Step {
    Step {
        title: title.into(),
        status,
        result,
    }
}

fn failed_job(id: &str, connection: Option<&str>, code: Option<&str>, ago: i64) -> Job {
    let result = match code {
        Some(code) => StepResult::Failure {
            code: code.into(),
            title: None,
            detail: None,
        },
        None => StepResult::None,
    };
    Job {
        id: JobId::parse(id).unwrap(),
        created: Some(now() - mins(ago)),
        updated: Some(now() - mins(ago) + mins(1)),
        job_type: None,
        institution_id: Some(InstitutionId::new(BANK)),
        connection_id: connection.map(|id| ConnectionId::parse(id).unwrap()),
        has_source: connection.is_some(),
        steps: vec![step("verify-credentials", StepStatus::Failed, result)],
    }
}

fn ok_job(id: &str, connection: &str, ago: i64) -> Job {
    Job {
        id: JobId::parse(id).unwrap(),
        created: Some(now() - mins(ago)),
        updated: Some(now() - mins(ago) + mins(1)),
        job_type: None,
        institution_id: Some(InstitutionId::new(BANK)),
        connection_id: Some(ConnectionId::parse(connection).unwrap()),
        has_source: true,
        steps: vec![
            step("verify-credentials", StepStatus::Success, StepResult::None),
            step("retrieve-accounts", StepStatus::Success, StepResult::None),
        ],
    }
}

fn operational() -> ConnectorStatuses {
    statuses(&[(BANK, Method::Web, ConnectorStatus::Operational)])
}

fn statuses(list: &[(&str, Method, ConnectorStatus)]) -> ConnectorStatuses {
    ConnectorStatuses {
        known: true,
        cdr: Default::default(),
        statuses: list
            .iter()
            .map(|(i, m, s)| (ConnectorKey::new(i, m), s.clone()))
            .collect(),
    }
}

fn plan(fetched: &Fetched, stored: &Stored, connectors: &ConnectorStatuses) -> UserPlan {
    plan_user(
        now(),
        &user(),
        fetched,
        stored,
        connectors,
        &settings(),
        Some(now() + chrono::Duration::hours(24)),
        &mut StdRng::seed_from_u64(7),
    )
}

fn sweep(connections: Vec<Connection>, jobs: Vec<Job>) -> Fetched {
    Fetched {
        connections,
        jobs,
        complete: true,
    }
}

fn only(plan: &UserPlan) -> &ConnectionRow {
    assert_eq!(plan.connections.len(), 1, "{plan:#?}");
    &plan.connections[0]
}

/// Rule 1: `mfaEnabled: true`, or a job showing `mfa-challenge`, marks the connection as
/// needing the user present; once seen, it is not forgotten.
#[test]
fn mfa_connections_are_marked_as_needing_the_user() {
    let mut mfa = connection("c1", Method::Web);
    mfa.mfa_enabled = Some(true);
    let p = plan(
        &sweep(vec![mfa], vec![]),
        &Stored::default(),
        &operational(),
    );
    assert!(only(&p).needs_user_present);

    let mut challenged = ok_job("j1", "c1", 30);
    challenged.steps.insert(
        1,
        step(
            "mfa-challenge",
            StepStatus::Success,
            StepResult::Mfa { method: None },
        ),
    );
    let p = plan(
        &sweep(vec![connection("c1", Method::Web)], vec![challenged]),
        &Stored::default(),
        &operational(),
    );
    assert!(only(&p).needs_user_present);

    // Seen once, kept when a later answer omits `mfaEnabled`.
    let stored = Stored {
        connections: p.connections.clone(),
        ..Stored::default()
    };
    let p = plan(
        &sweep(vec![connection("c1", Method::Web)], vec![]),
        &stored,
        &operational(),
    );
    assert!(only(&p).needs_user_present);

    let p = plan(
        &sweep(
            vec![connection("c1", Method::Web)],
            vec![ok_job("j1", "c1", 30)],
        ),
        &Stored::default(),
        &operational(),
    );
    assert!(!only(&p).needs_user_present);
}

/// Rule 2: a failed step with no result, or a code this version does not know, is
/// `unknown` and schedules no retry.
#[test]
fn a_failure_nobody_can_read_is_unknown_and_never_retried() {
    for code in [None, Some("a-code-from-the-future")] {
        let p = plan(
            &sweep(
                vec![connection("c1", Method::Web)],
                vec![failed_job("j1", Some("c1"), code, 30)],
            ),
            &Stored::default(),
            &operational(),
        );
        let row = only(&p);
        assert_eq!(row.health, Some(Health::Unknown), "{code:?}");
        assert_eq!(
            row.newest_job
                .as_ref()
                .and_then(|j| j.failure_code.as_deref()),
            Some(code.unwrap_or(crate::domain::NO_FAILURE_CODE)),
        );
        assert_eq!(row.refresh_due, None, "{code:?}");
    }
}

/// Rule 3: a job step failing with Basiq's `too-many-requests` sets "capped until" and
/// schedules no transient retry.
#[test]
fn basiq_s_own_cap_in_a_job_stops_attempts() {
    let p = plan(
        &sweep(
            vec![connection("c1", Method::Web)],
            vec![failed_job("j1", Some("c1"), Some("too-many-requests"), 30)],
        ),
        &Stored::default(),
        &operational(),
    );
    let row = only(&p);
    let until = row.basiq_capped_until.expect("capped");
    assert!(until >= now() + chrono::Duration::hours(1), "{until}");
    assert!(until <= now() + chrono::Duration::hours(24), "{until}");
    assert_eq!(row.refresh_due, None);
    assert!(
        p.notes
            .iter()
            .any(|n| matches!(n, Note::CappedByBasiq { .. }))
    );
}

/// Rules 7 and 8: a transient failure schedules a bounded number of retries, decided when
/// the job ends whether or not the health changed; the retry's own job in progress does
/// not reset the count; a scheduled recovery is never replaced by a retry.
#[test]
fn transient_retries_are_bounded_and_never_replace_a_recovery() {
    let stored_after = |p: &UserPlan| Stored {
        connections: p.connections.clone(),
        ..Stored::default()
    };
    let c = || vec![connection("c1", Method::Web)];
    let p1 = plan(
        &sweep(
            c(),
            vec![failed_job(
                "j1",
                Some("c1"),
                Some("institution-not-available"),
                70,
            )],
        ),
        &Stored::default(),
        &operational(),
    );
    let r1 = only(&p1);
    assert_eq!(r1.health, Some(Health::TransientFailure));
    assert_eq!(
        r1.refresh_due.map(|o| o.trigger),
        Some(Trigger::TransientRetry)
    );
    assert_eq!(r1.transient_retries, 1);

    // The same failure seen again is not a new one.
    let again = plan(
        &sweep(
            c(),
            vec![failed_job(
                "j1",
                Some("c1"),
                Some("institution-not-available"),
                70,
            )],
        ),
        &stored_after(&p1),
        &operational(),
    );
    assert_eq!(only(&again).transient_retries, 1);
    assert_eq!(only(&again).refresh_due, r1.refresh_due);

    // The retry's own job in progress keeps the incident.
    let mut running = ok_job("j2", "c1", 5);
    running.steps[1].status = StepStatus::InProgress;
    let p2 = plan(
        &sweep(c(), vec![running]),
        &stored_after(&p1),
        &operational(),
    );
    assert_eq!(only(&p2).transient_retries, 1);

    // It fails too, with the same health: a second retry, then no more.
    let p3 = plan(
        &sweep(
            c(),
            vec![failed_job(
                "j2",
                Some("c1"),
                Some("institution-not-available"),
                5,
            )],
        ),
        &stored_after(&p2),
        &operational(),
    );
    assert_eq!(only(&p3).transient_retries, 2);
    assert_eq!(
        only(&p3).refresh_due.map(|o| o.trigger),
        Some(Trigger::TransientRetry)
    );
    let p4 = plan(
        &sweep(
            c(),
            vec![failed_job(
                "j3",
                Some("c1"),
                Some("institution-not-available"),
                2,
            )],
        ),
        &stored_after(&p3),
        &operational(),
    );
    assert_eq!(only(&p4).transient_retries, 2);
    assert!(
        p4.notes
            .iter()
            .all(|n| !matches!(n, Note::RetryScheduled { .. })),
        "a third retry was scheduled"
    );

    // A recovery slot already owed stays.
    let mut held = Stored::default();
    let mut row = fresh_row(&user(), &connection("c1", Method::Web));
    let slot = now() + mins(40);
    row.refresh_due = Some(Owed {
        at: slot,
        trigger: Trigger::Recovery,
        since: None,
    });
    held.connections = vec![row];
    let p = plan(
        &sweep(
            c(),
            vec![failed_job(
                "j9",
                Some("c1"),
                Some("institution-not-available"),
                3,
            )],
        ),
        &held,
        &operational(),
    );
    assert_eq!(
        only(&p).refresh_due,
        Some(Owed {
            at: slot,
            trigger: Trigger::Recovery,
            since: None,
        })
    );
}

/// Rule 9: an older snapshot of a job never overwrites a newer one, and a finished job
/// never returns to in-progress.
#[test]
fn stored_jobs_never_go_backwards() {
    let done = ok_job("j1", "c1", 30);
    let stored = Stored {
        jobs: [(
            JobId::parse("j1").unwrap(),
            StoredJob {
                state: JobState::Success,
                updated: done.updated,
                matched: true,
            },
        )]
        .into(),
        ..Stored::default()
    };
    let mut reopened = done.clone();
    reopened.steps[1].status = StepStatus::InProgress;
    let p = plan(
        &sweep(vec![connection("c1", Method::Web)], vec![reopened]),
        &stored,
        &operational(),
    );
    assert!(p.jobs.is_empty(), "{:?}", p.jobs);
    assert_ne!(only(&p).health, Some(Health::InProgress));

    let mut older = done.clone();
    older.updated = Some(now() - mins(40));
    let p = plan(
        &sweep(vec![connection("c1", Method::Web)], vec![older]),
        &stored,
        &operational(),
    );
    assert!(p.jobs.is_empty());

    // Seen again as stored: nothing to write. Moved on: written.
    let p = plan(
        &sweep(vec![connection("c1", Method::Web)], vec![done.clone()]),
        &stored,
        &operational(),
    );
    assert!(
        p.jobs.is_empty(),
        "an unchanged finished job is not written again"
    );
    let mut newer = done;
    newer.updated = Some(now() - mins(5));
    let p = plan(
        &sweep(vec![connection("c1", Method::Web)], vec![newer]),
        &stored,
        &operational(),
    );
    assert_eq!(p.jobs.len(), 1);
}

/// Rule 10: Basiq's recorded connections have no `method`. With an `expiryDate` the
/// connection is open banking; without, its connector is its institution's worst status.
#[test]
fn a_missing_method_cannot_turn_an_outage_into_a_user_failure() {
    let bank_down = statuses(&[
        (BANK, Method::Web, ConnectorStatus::Operational),
        (BANK, Method::OpenBanking, ConnectorStatus::MajorOutage),
        (OTHER_BANK, Method::Web, ConnectorStatus::Operational),
    ]);
    let mut recorded = connection("c1", Method::from_wire(None, false));
    assert_eq!(recorded.method, Method::Unknown);
    let p = plan(
        &sweep(
            vec![recorded.clone()],
            vec![failed_job(
                "j1",
                Some("c1"),
                Some("invalid-credentials"),
                10,
            )],
        ),
        &Stored::default(),
        &bank_down,
    );
    assert_eq!(only(&p).health, Some(Health::InstitutionOutage));

    recorded.expiry_date = Some(now() + chrono::Duration::days(200));
    recorded.method = Method::from_wire(None, true);
    assert_eq!(recorded.method, Method::OpenBanking);
    let p = plan(
        &sweep(
            vec![recorded],
            vec![failed_job(
                "j1",
                Some("c1"),
                Some("invalid-credentials"),
                10,
            )],
        ),
        &Stored::default(),
        &bank_down,
    );
    assert_eq!(only(&p).health, Some(Health::InstitutionOutage));
}

/// Rule 11: with no connector status known, a user-side failure is not `action-required`:
/// `unknown` with `connector-status-unknown` on a fresh database, the previous health
/// otherwise; once the status is known, the user is told.
#[test]
fn no_connector_status_no_blame() {
    let fetched = sweep(
        vec![connection("c1", Method::Web)],
        vec![failed_job(
            "j1",
            Some("c1"),
            Some("invalid-credentials"),
            10,
        )],
    );
    let p = plan(&fetched, &Stored::default(), &ConnectorStatuses::default());
    assert_eq!(only(&p).health, Some(Health::Unknown));
    assert_eq!(
        only(&p).reason.as_deref(),
        Some(crate::plan::classify::CONNECTOR_STATUS_UNKNOWN)
    );

    let mut healthy = fresh_row(&user(), &connection("c1", Method::Web));
    healthy.health = Some(Health::Healthy);
    let stored = Stored {
        connections: vec![healthy],
        ..Stored::default()
    };
    let p = plan(&fetched, &stored, &ConnectorStatuses::default());
    assert_eq!(only(&p).health, Some(Health::Healthy));

    let p = plan(&fetched, &stored, &operational());
    assert_eq!(only(&p).health, Some(Health::ActionRequired));
    assert_eq!(only(&p).reason.as_deref(), Some("invalid-credentials"));
}

/// Rule 14: jobs are matched by `links.source`; by institution only when it is absent and
/// the job is a connection job.
#[test]
fn a_statement_job_at_the_same_bank_does_not_hide_a_failing_connection() {
    let connections = vec![connection("c1", Method::Web)];
    let mut statement = ok_job("j2", "c1", 5);
    statement.connection_id = None;
    statement.has_source = true;
    statement.job_type = Some("statement".into());
    let mut no_source = failed_job("j1", None, Some("invalid-credentials"), 30);
    no_source.has_source = false;
    assert_eq!(
        match_jobs(&connections, &[statement.clone(), no_source.clone()]),
        vec![None, Some(ConnectionId::parse("c1").unwrap())]
    );
    let mut typed_statement = statement.clone();
    typed_statement.has_source = false;
    assert_eq!(match_jobs(&connections, &[typed_statement]), vec![None]);

    let p = plan(
        &sweep(connections, vec![statement, no_source]),
        &Stored::default(),
        &operational(),
    );
    assert_eq!(only(&p).health, Some(Health::ActionRequired));
}

/// Inference: this user's bank-side failure plus enough others opens an inferred outage
/// at that connector, and queues its connections for reclassification.
#[test]
fn an_inferred_outage_opens_with_the_threshold_and_blames_the_bank() {
    let key = ConnectorKey::new(BANK, &Method::Web);
    let fetched = sweep(
        vec![connection("c1", Method::Web)],
        vec![failed_job(
            "j1",
            Some("c1"),
            Some("institution-not-available"),
            10,
        )],
    );
    let with = |others| Stored {
        inference: [(
            key.clone(),
            Inference {
                open: false,
                other_users_failing: others,
                counts_since: None,
            },
        )]
        .into(),
        ..Stored::default()
    };
    let p = plan(&fetched, &with(1), &operational());
    assert!(p.outages.is_empty());
    assert_eq!(only(&p).health, Some(Health::TransientFailure));

    let p = plan(&fetched, &with(2), &operational());
    assert_eq!(
        p.outages,
        vec![OutageMove::Open {
            key: key.clone(),
            users: 3
        }]
    );
    // Opening queues its connections' reclassification; nothing ended.
    assert_eq!(
        p.reclassify,
        vec![Requeue {
            key,
            ended_after: None
        }]
    );
    assert_eq!(only(&p).health, Some(Health::InstitutionOutage));
    assert!(only(&p).bank_failure_at.is_some());
}

/// An open inferred outage lasts until a job at its bank succeeds after it was inferred:
/// failures ageing out of the window do not close it.
#[test]
fn an_inferred_outage_lasts_until_a_job_at_its_bank_succeeds() {
    let key = ConnectorKey::new(BANK, &Method::Web);
    let open = |others| Stored {
        inference: [(
            key.clone(),
            Inference {
                open: true,
                other_users_failing: others,
                counts_since: None,
            },
        )]
        .into(),
        periods: [(
            key.clone(),
            KeyPeriods {
                inferred: vec![DownPeriod {
                    from: Some(now() - mins(120)),
                    until: None,
                }],
                ..KeyPeriods::default()
            },
        )]
        .into(),
        ..Stored::default()
    };
    let healthy_before = sweep(
        vec![connection("c1", Method::Web)],
        vec![ok_job("j0", "c1", 600)],
    );
    // One other user still failing, below the threshold: it stays open.
    let p = plan(&healthy_before, &open(1), &operational());
    assert!(p.outages.is_empty(), "{:?}", p.outages);
    // Nobody failing any more, but nothing succeeded there since: still open.
    let p = plan(&healthy_before, &open(0), &operational());
    assert!(p.outages.is_empty(), "{:?}", p.outages);
    // A job at the bank succeeded after it was inferred: it closes.
    let succeeded = sweep(
        vec![connection("c1", Method::Web)],
        vec![ok_job("j1", "c1", 10)],
    );
    let p = plan(&succeeded, &open(1), &operational());
    let [
        OutageMove::Close {
            key: closed,
            inferred_at: Some(at),
        },
    ] = p.outages.as_slice()
    else {
        panic!("{:?}", p.outages)
    };
    assert_eq!(closed, &key);
    // Its connections are classified again as a recovery: what succeeded since it was
    // inferred answers them.
    assert_eq!(
        p.reclassify,
        vec![Requeue {
            key: key.clone(),
            ended_after: Some(*at)
        }]
    );
    // Inferred a day ago and no failure seen in the window since: it ends.
    let mut day_old = open(0);
    day_old.periods.get_mut(&key).unwrap().inferred[0].from = Some(now() - mins(25 * 60));
    let p = plan(&healthy_before, &day_old, &operational());
    assert!(
        matches!(p.outages.as_slice(), [OutageMove::Close { key: k, .. }] if *k == key),
        "{:?}",
        p.outages
    );
}

/// An invalid connection whose failure an ended outage explains waits for a re-check that
/// cannot come (Basiq refreshes no invalid connection): its user is swept again when the
/// wait is over, so that it is then the user's to act on, told within the day.
#[test]
fn an_invalid_connection_waiting_for_a_re_check_is_swept_again_when_the_wait_is_over() {
    let key = ConnectorKey::new(BANK, &Method::Web);
    let mut invalid = connection("c1", Method::Web);
    invalid.status = crate::domain::ConnectionStatus::Invalid;
    let fetched = sweep(
        vec![invalid],
        vec![failed_job(
            "j1",
            Some("c1"),
            Some("invalid-credentials"),
            90,
        )],
    );
    let stored = Stored {
        periods: [(
            key,
            KeyPeriods {
                connectors: vec![DownPeriod {
                    from: Some(now() - mins(120)),
                    until: Some(now() - mins(30)),
                }],
                ..KeyPeriods::default()
            },
        )]
        .into(),
        ..Stored::default()
    };
    let p = plan(&fetched, &stored, &operational());
    assert_eq!(only(&p).reason.as_deref(), Some("recheck-after-outage"));
    assert_eq!(
        p.sweep_by,
        vec![(
            user(),
            now() + crate::plan::classify::RECHECK_LIMIT + mins(1)
        )]
    );
}

/// Rule 4: a refresh refused with a user-side code makes the connection `action-required`
/// at once and ends every automatic attempt; any other code changes nothing.
#[test]
fn a_refresh_rejected_for_the_user_s_reason_is_remembered() {
    let mut row = fresh_row(&user(), &connection("c1", Method::Web));
    row.health = Some(Health::TransientFailure);
    row.refresh_due = Some(Owed {
        at: now() + mins(10),
        trigger: Trigger::TransientRetry,
        since: None,
    });
    let p = plan_refresh_rejected(&row, "invalid-credentials", now()).expect("a plan");
    assert_eq!(only(&p).health, Some(Health::ActionRequired));
    assert_eq!(only(&p).reason.as_deref(), Some("invalid-credentials"));
    assert_eq!(only(&p).refresh_due, None);
    assert_eq!(p.health_changes.len(), 1);
    assert!(plan_refresh_rejected(&row, "institution-not-available", now()).is_none());
    assert!(plan_refresh_rejected(&row, "", now()).is_none());
}

/// A connection Basiq no longer lists is gone; a partial re-read marks nothing gone.
#[test]
fn connections_basiq_no_longer_lists_are_gone_only_after_a_full_list() {
    let stored = Stored {
        connections: vec![
            fresh_row(&user(), &connection("c1", Method::Web)),
            fresh_row(&user(), &connection("c2", Method::Web)),
        ],
        ..Stored::default()
    };
    let p = plan(
        &sweep(vec![connection("c1", Method::Web)], vec![]),
        &stored,
        &operational(),
    );
    assert_eq!(p.gone, vec![ConnectionId::parse("c2").unwrap()]);
    let partial = Fetched {
        complete: false,
        ..sweep(vec![connection("c1", Method::Web)], vec![])
    };
    assert!(plan(&partial, &stored, &operational()).gone.is_empty());
}

/// Group commit: users planned together see each other's failures as if committed one by
/// one. Three users failing bank-side at one bank in one group: the third plan opens the
/// outage and classifies its own connection as the bank's; a user who was failing and no
/// longer is stops being counted by those after it; the last, healthy there, sees it open.
#[test]
fn a_group_of_plans_sees_each_other_as_if_committed_one_by_one() {
    use crate::plan::KeyFacts;
    let key = ConnectorKey::new(BANK, &Method::Web);
    let users: Vec<UserId> = (1..=5)
        .map(|i| UserId::parse(format!("g{i}")).unwrap())
        .collect();
    let failing = |i: usize| {
        sweep(
            vec![connection(&format!("c{i}"), Method::Web)],
            vec![failed_job(
                &format!("j{i}"),
                Some(&format!("c{i}")),
                Some("institution-not-available"),
                10,
            )],
        )
    };
    let healthy = |i: usize| {
        sweep(
            vec![connection(&format!("c{i}"), Method::Web)],
            vec![ok_job(&format!("j{i}"), &format!("c{i}"), 10)],
        )
    };
    // g5 was stored failing; now it succeeds.
    let fetched = [failing(1), failing(2), healthy(5), failing(3), healthy(4)];
    let order = [0usize, 1, 4, 2, 3];
    let connectors = operational();
    let members: Vec<GroupMember<'_>> = order
        .iter()
        .zip(&fetched)
        .map(|(&u, f)| GroupMember {
            user: &users[u],
            fetched: f,
            connectors: &connectors,
            next_due_at: None,
        })
        .collect();
    let facts: HashMap<ConnectorKey, KeyFacts> = [(
        key.clone(),
        KeyFacts {
            open: false,
            counts_since: None,
            from: now() - chrono::Duration::hours(1),
            failing: [users[4].clone()].into(),
            periods: KeyPeriods::default(),
        },
    )]
    .into();
    let plans = plan_group(
        now(),
        &members,
        HashMap::new(),
        &facts,
        &settings(),
        &mut StdRng::seed_from_u64(1),
    );
    // g1: g5 stored failing + g1 = 2. g2: g5, g1, g2 = 3 → opens. Without the group's
    // overlay, g2 would see only g5 and open nothing.
    assert!(plans[0].outages.is_empty(), "{:?}", plans[0].outages);
    assert_eq!(
        plans[1].outages,
        vec![OutageMove::Open {
            key: key.clone(),
            users: 3
        }]
    );
    assert_eq!(only(&plans[1]).health, Some(Health::InstitutionOutage));
    // g5 succeeds: no longer counted, but two still fail and its success is from before
    // the outage was inferred: it stays open. g3 fails: still open, nothing moves.
    assert!(plans[2].outages.is_empty(), "{:?}", plans[2].outages);
    assert!(plans[3].outages.is_empty(), "{:?}", plans[3].outages);
    assert_eq!(only(&plans[3]).health, Some(Health::InstitutionOutage));
    // g4, healthy, sees the outage open and keeps it (three others failing).
    assert!(plans[4].outages.is_empty());
    assert_eq!(only(&plans[4]).health, Some(Health::Healthy));

    // The same users one by one, each seeing the facts as the previous left them, give the
    // same plans' outage moves.
    let mut stored_failing: BTreeSet<UserId> = [users[4].clone()].into();
    let mut open = false;
    for (m, grouped) in members.iter().zip(&plans) {
        let others = stored_failing.iter().filter(|u| *u != m.user).count() as i64;
        let stored = Stored {
            inference: [(
                key.clone(),
                Inference {
                    open,
                    other_users_failing: others.min(3),
                    counts_since: None,
                },
            )]
            .into(),
            // Opened by this group at `now`: its period began a window before.
            periods: [(
                key.clone(),
                KeyPeriods {
                    inferred: open
                        .then(|| DownPeriod {
                            from: Some(now() - chrono::Duration::hours(1)),
                            until: None,
                        })
                        .into_iter()
                        .collect(),
                    ..KeyPeriods::default()
                },
            )]
            .into(),
            ..Stored::default()
        };
        let alone = plan_user(
            now(),
            m.user,
            m.fetched,
            &stored,
            &connectors,
            &settings(),
            None,
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(alone.outages, grouped.outages, "user {}", m.user);
        assert_eq!(only(&alone).health, only(grouped).health, "user {}", m.user);
        if only(&alone).bank_failure_at.is_some() {
            stored_failing.insert(m.user.clone());
        } else {
            stored_failing.remove(m.user);
        }
        for o in &alone.outages {
            open = matches!(o, OutageMove::Open { .. });
        }
    }
}

/// A reclassification writes and tells only what moved: a connection the statuses leave as
/// it was (healthy, waiting for the user, owed a retry) is not in the plan at all; one they
/// move is, with its change recorded and noted.
#[test]
fn a_reclassification_writes_and_tells_only_the_connections_that_moved() {
    let swept = plan(
        &sweep(
            vec![
                connection("c1", Method::Web),
                connection("c2", Method::Web),
                connection("c3", Method::Web),
            ],
            vec![
                ok_job("j1", "c1", 30),
                failed_job("j2", Some("c2"), Some("invalid-credentials"), 30),
                failed_job("j3", Some("c3"), Some("institution-not-available"), 30),
            ],
        ),
        &Stored::default(),
        &operational(),
    );
    let healths: Vec<_> = swept.connections.iter().map(|r| r.health).collect();
    assert_eq!(
        healths,
        [
            Some(Health::Healthy),
            Some(Health::ActionRequired),
            Some(Health::TransientFailure)
        ]
    );
    assert!(
        swept.connections[2].refresh_due.is_some(),
        "a retry is owed"
    );
    let reclassify = |connectors: &ConnectorStatuses| {
        plan_reclassify(
            now() + mins(5),
            swept.connections.clone(),
            connectors,
            false,
            &[],
            &HashMap::new(),
            &settings(),
            std::iter::empty(),
            &mut StdRng::seed_from_u64(8),
        )
    };
    let same = reclassify(&operational());
    assert!(
        same.connections.is_empty() && same.health_changes.is_empty() && same.notes.is_empty(),
        "{same:#?}"
    );
    let down = reclassify(&statuses(&[(
        BANK,
        Method::Web,
        ConnectorStatus::parse("major-outage"),
    )]));
    let moved: Vec<(&str, Option<Health>)> = down
        .connections
        .iter()
        .map(|r| (r.connection_id.as_str(), r.health))
        .collect();
    // A success half an hour ago: the bank answered this one since.
    assert_eq!(
        moved,
        [
            ("c2", Some(Health::InstitutionOutage)),
            ("c3", Some(Health::InstitutionOutage))
        ]
    );
    assert_eq!(down.health_changes.len(), 2, "{down:#?}");
}
