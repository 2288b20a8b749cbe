//! `GET /metrics`: Prometheus text, encoded by prometheus-client (never by hand).
//!
//! A registry is built per scrape from the live counters (sweep progress, the client's
//! request counts, refresh decisions) and from the database (users, connections per health,
//! open outages, cap reservations), so every value is current and nothing is counted twice.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::service::Liveness;
use crate::work::Context;
use crate::work::refresh::Refresher;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabel {
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event_type: String,
    source: String,
    processed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    endpoint: String,
    state: String,
}

/// Events heard and notifications delivered.
async fn render_events(
    registry: &mut Registry,
    store: &crate::store::Store,
    receiver: &crate::events::receiver::ReceiverStats,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let events = Family::<EventLabels, Gauge>::default();
    for (event_type, source, processed, n) in store.event_counts().await? {
        events
            .get_or_create(&EventLabels {
                event_type,
                source,
                processed: processed.to_string(),
            })
            .set(n);
    }
    registry.register(
        "events_stored",
        "Basiq events in the inbox (kept history), by type, source (webhook, poll) and whether processed",
        events,
    );
    let answers = Family::<OutcomeLabel, Counter>::default();
    for (outcome, n) in [
        ("stored", &receiver.stored),
        ("duplicate", &receiver.duplicates),
        ("bad_signature", &receiver.bad_signature),
        ("stale_timestamp", &receiver.stale),
        ("malformed", &receiver.malformed),
        ("unreadable", &receiver.unreadable),
        ("store_failed", &receiver.failed),
    ] {
        answers
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc_by(n.load(Relaxed));
    }
    registry.register(
        "webhooks_received",
        "Webhook deliveries answered since start, by outcome",
        answers,
    );
    let counts = store.delivery_counts().await?;
    let deliveries = Family::<DeliveryLabels, Gauge>::default();
    for (endpoint, state, n) in counts.by_state {
        let state = if state == "dead" {
            "dead_lettered".to_owned()
        } else {
            state
        };
        deliveries
            .get_or_create(&DeliveryLabels { endpoint, state })
            .set(n);
    }
    registry.register(
        "notify_deliveries",
        "Notification deliveries (kept history) per endpoint and state: pending, succeeded, dead_lettered",
        deliveries,
    );
    let failed = Family::<EndpointLabel, Gauge>::default();
    for (endpoint, n) in counts.failures {
        failed.get_or_create(&EndpointLabel { endpoint }).set(n);
    }
    registry.register(
        "notify_failed_attempts",
        "Notification delivery attempts that failed (kept history), per endpoint",
        failed,
    );
    let oldest = Family::<EndpointLabel, Gauge>::default();
    for (endpoint, created) in store.oldest_pending_deliveries().await? {
        oldest
            .get_or_create(&EndpointLabel { endpoint })
            .set(seconds_since(created, now));
    }
    registry.register(
        "notify_oldest_pending_seconds",
        "Age of the oldest notification still pending, per endpoint with one pending",
        oldest,
    );
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReservationLabels {
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorHealthLabels {
    institution_id: String,
    method: String,
    health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutageLabels {
    institution_id: String,
    method: String,
    source: String,
}

/// Whole seconds from `then` to `now`, 0 when `then` is later.
fn seconds_since(then: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> i64 {
    (now - then).num_seconds().max(0)
}

fn gauge(value: i64) -> Gauge {
    let g = Gauge::default();
    g.set(value);
    g
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// The freshness objective: every watched connection checked within this long.
pub const FRESHNESS: chrono::Duration = chrono::Duration::hours(26);

/// The current metrics as Prometheus text, without the worker's liveness (a process that
/// runs no scheduler: the commands, tests).
pub async fn render(
    context: &Context,
    refresher: &Refresher,
    receiver: &crate::events::receiver::ReceiverStats,
) -> Result<String, sqlx::Error> {
    render_serving(context, refresher, receiver, None).await
}

/// The current metrics as Prometheus text; with `liveness`, the serving daemon's, also
/// whether its worker is stalled (what `/healthz` and the watchdog judge).
pub async fn render_serving(
    context: &Context,
    refresher: &Refresher,
    receiver: &crate::events::receiver::ReceiverStats,
    liveness: Option<&Liveness>,
) -> Result<String, sqlx::Error> {
    let store = context.store();
    let now = context.clock().now();
    let mut registry = Registry::with_prefix("basiq_health");
    // Registered in this order: the text lists the metrics in it.
    render_sweeps(&mut registry, context, liveness).await?;
    render_connections(&mut registry, store, now).await?;
    render_requests(&mut registry, context.client().stats());
    render_refreshes(&mut registry, store, refresher).await?;
    render_events(&mut registry, store, receiver, now).await?;
    render_cdr(&mut registry, store, context.clock().now()).await?;
    let mut out = String::new();
    encode(&mut out, &registry)
        .map_err(|e| sqlx::Error::Protocol(format!("encoding metrics: {e}")))?;
    Ok(out)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CdrStatusLabels {
    institution_id: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrandLabel {
    brand_id: String,
}

/// The second witness: each institution's CDR status (1 for the status last read, `unknown`
/// before any or while its reads fail), and each polled brand's failed reads.
async fn render_cdr(
    registry: &mut Registry,
    store: &crate::store::Store,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    let figures = store.cdr_figures().await?;
    let statuses = Family::<CdrStatusLabels, Gauge>::default();
    for line in store.cdr_brand_lines(now).await? {
        let Some(brand) = &line.brand_id else {
            continue;
        };
        let failing = figures
            .iter()
            .any(|f| &f.brand_id == brand && f.failures > 0);
        let status = match &line.status {
            Some(s) if !failing => s.clone(),
            _ => "unknown".to_owned(),
        };
        statuses
            .get_or_create(&CdrStatusLabels {
                institution_id: line.institution_id.clone(),
                status,
            })
            .set(1);
    }
    registry.register(
        "cdr_status",
        "The data holder's own CDR status per institution (1 for the status it last said)",
        statuses,
    );
    let failures = Family::<BrandLabel, Counter>::default();
    let failing = Family::<BrandLabel, Gauge>::default();
    for f in &figures {
        let label = BrandLabel {
            brand_id: f.brand_id.clone(),
        };
        failures.get_or_create(&label).inc_by(f.failures_total);
        failing.get_or_create(&label).set(i64::from(f.failures));
    }
    registry.register(
        "cdr_poll_failures",
        "Failed reads of a data holder's discovery endpoints (status or outages)",
        failures,
    );
    registry.register(
        "cdr_poll_failing",
        "Failed reads of a data holder since its last good one (while above 0, it says nothing)",
        failing,
    );
    Ok(())
}

/// Users watched, and the sweep's progress since start: how far behind it is, and (when
/// serving) whether the worker is stalled.
async fn render_sweeps(
    registry: &mut Registry,
    context: &Context,
    liveness: Option<&Liveness>,
) -> Result<(), sqlx::Error> {
    let progress = context.progress();
    let now = context.clock().now();
    registry.register(
        "users_registered",
        "Users watched (not removed, not gone)",
        gauge(context.store().count_active_users().await?),
    );
    for (name, help, counter) in [
        (
            "users_swept",
            "Users swept since start",
            &progress.users_swept,
        ),
        (
            "users_failed",
            "User sweeps that failed since start",
            &progress.users_failed,
        ),
        (
            "users_gone",
            "Users Basiq answered 404 resource-not-found for, since start",
            &progress.users_gone,
        ),
        ("sweep_passes", "Sweep passes since start", &progress.passes),
    ] {
        registry.register(name, help, counter.clone());
    }
    registry.register(
        "sweep_duration_seconds",
        "Duration of sweep passes",
        progress.pass_duration.clone(),
    );
    let lag = context
        .store()
        .earliest_due()
        .await?
        .map_or(0, |due| seconds_since(due, now));
    registry.register(
        "sweep_lag_seconds",
        "How long the most overdue watched user has been due for its sweep (0: none overdue)",
        gauge(lag),
    );
    if let Some(liveness) = liveness {
        let stalled = liveness.problem(progress, now.timestamp()).is_some();
        registry.register(
            "worker_stalled",
            "1 while the worker makes no progress (what /healthz and the watchdog judge), else 0",
            gauge(i64::from(stalled)),
        );
    }
    Ok(())
}

/// Connections per health and open outages, from the kept tallies and an indexed read of the
/// open outages (the same cost at 10 users and 10 million), the one writer's groups and its
/// longest write-lock hold.
async fn render_connections(
    registry: &mut Registry,
    store: &crate::store::Store,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    let by_health = Family::<HealthLabel, Gauge>::default();
    let tallies = store.tallies().await?;
    for health in crate::plan::classify::Health::ALL {
        let count = tallies
            .connections
            .get(health.as_str())
            .copied()
            .unwrap_or(0);
        by_health
            .get_or_create(&HealthLabel {
                health: health.as_str().to_owned(),
            })
            .set(count);
    }
    registry.register("connections", "Watched connections per health", by_health);
    registry.register(
        "connections_stale",
        "Watched connections not checked within the freshness objective (26 h)",
        gauge(store.connections_unchecked_since(now - FRESHNESS).await?),
    );
    let per_connector = Family::<ConnectorHealthLabels, Gauge>::default();
    for t in store.connector_tallies().await? {
        per_connector
            .get_or_create(&ConnectorHealthLabels {
                institution_id: t.institution_id,
                method: t.method,
                health: t.health,
            })
            .set(t.connections);
    }
    registry.register(
        "connector_connections",
        "Watched connections per institution, method and health (health empty: not classified yet)",
        per_connector,
    );
    let open_outages = store.open_outages().await?;
    registry.register(
        "outages_open",
        "Open outages (from /connectors or inferred)",
        gauge(i64::try_from(open_outages.len()).unwrap_or(i64::MAX)),
    );
    let ages = Family::<OutageLabels, Gauge>::default();
    for o in &open_outages {
        let age = ages.get_or_create(&OutageLabels {
            institution_id: o.institution_id.clone(),
            method: o.method.clone(),
            source: o.source.as_str().to_owned(),
        });
        age.set(age.get().max(seconds_since(o.started_at, now)));
    }
    registry.register(
        "outage_open_seconds",
        "How long each open outage has been open, per institution, method and source (the oldest)",
        ages,
    );
    let groups = store.group_stats();
    registry.register(
        "write_group_commits",
        "Group transactions committed by the one writer since start",
        counter(groups.commits.load(std::sync::atomic::Ordering::Relaxed)),
    );
    registry.register(
        "write_group_plans",
        "Per-user plans committed in those group transactions since start",
        counter(groups.plans.load(std::sync::atomic::Ordering::Relaxed)),
    );
    let hold = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    hold.set(store.write_lock_hold_max().as_secs_f64());
    registry.register(
        "write_lock_hold_max_seconds",
        "Longest time one write transaction held the database's write lock since start",
        hold,
    );
    let health = store.write_health();
    registry.register(
        "write_failing",
        "1 while database writes fail (the last write failed for the storage), else 0",
        gauge(i64::from(health.failing().is_some())),
    );
    registry.register(
        "write_failures",
        "Database writes that failed for the storage (disk full, I/O, read-only, busy) since start",
        counter(health.failures_total()),
    );
    Ok(())
}

/// The client's requests to Basiq, the list items it could not read, its token fetches.
fn render_requests(registry: &mut Registry, stats: &crate::basiq::Stats) {
    let requests = Family::<RequestLabels, Counter>::default();
    for ((endpoint, status), n) in stats.requests() {
        requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                status,
            })
            .inc_by(n);
    }
    registry.register(
        "basiq_requests",
        "Requests to Basiq by endpoint and HTTP status",
        requests,
    );
    let undecodable = Family::<EndpointLabel, Counter>::default();
    for (endpoint, n) in stats.undecodable_items() {
        undecodable
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .inc_by(n);
    }
    registry.register(
        "basiq_undecodable_items",
        "List items from Basiq skipped because they could not be read, by endpoint",
        undecodable,
    );
    registry.register(
        "token_fetches",
        "POST /token calls since start",
        counter(stats.token_fetches()),
    );
}

/// Refresh decisions since start, and the reservations against the daily cap.
async fn render_refreshes(
    registry: &mut Registry,
    store: &crate::store::Store,
    refresher: &Refresher,
) -> Result<(), sqlx::Error> {
    let decisions = Family::<DecisionLabels, Counter>::default();
    for ((decision, reason), n) in refresher.decision_counts() {
        decisions
            .get_or_create(&DecisionLabels { decision, reason })
            .inc_by(n);
    }
    registry.register(
        "refresh_decisions",
        "Refresh requests by decision and reason since start",
        decisions,
    );
    let reservations = Family::<ReservationLabels, Counter>::default();
    for (trigger, outcome, n) in store.refresh_attempt_counts().await? {
        reservations
            .get_or_create(&ReservationLabels { trigger, outcome })
            .inc_by(u64::try_from(n).unwrap_or(0));
    }
    registry.register(
        "cap_reservations",
        "Refresh attempts reserved against the daily cap (kept history)",
        reservations,
    );
    Ok(())
}
