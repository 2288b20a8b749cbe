//! Delivers the outbox to each `[[notify.endpoints]]`: one task per endpoint, so a slow or
//! failing endpoint holds up only itself, never a sweep or another endpoint.
//!
//! Each round makes the endpoint's deliveries from new outbox rows, then posts those due
//! (at most one per user at a time: a user's notifications arrive in order), signed the
//! Standard Webhooks way with the notification's stable `webhook-id`. A failure is retried
//! with exponential backoff and jitter until the delivery's deadline (`notify.max_age`
//! after the notification), then dead-lettered. The endpoint backs off as a whole too: each
//! round sends one delivery first, the rest only once it got through, and a round whose
//! every attempt failed holds the endpoint for its own backoff (kept in the store, so a
//! restart or a round run from outside keeps it), so a receiver that is down gets one
//! attempt per backoff step whatever the number of notifications waiting for it.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::clock::Clock;
use crate::settings::{EndpointSettings, NotifySettings};
use crate::store::events::{DueDelivery, EndpointHold};
use crate::store::{Store, from_ts};

/// How often an idle deliverer looks for due retries (a commit that wrote notifications
/// wakes it at once).
const IDLE: Duration = Duration::from_millis(250);
/// How often a deliverer whose endpoint is held after failing looks at it at least.
const HELD_NAP: Duration = Duration::from_secs(5);
/// Deliveries attempted per round.
const ROUND: u32 = 32;

/// The delay before retry number `failures` (1 for the first retry): `initial * 2^(n-1)`,
/// capped, with up to 25 % of jitter either way, never below 1 ms.
pub fn backoff(initial: Duration, max: Duration, failures: i64, jitter: f64) -> Duration {
    let exp = u32::try_from(failures.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let factor = 1.0 + 0.25 * jitter.clamp(-1.0, 1.0);
    base.mul_f64(factor).max(Duration::from_millis(1))
}

/// Runs every endpoint's deliverer until `cancel`, on `clock`.
/// `context` reads the bank's status before a notice asks a user to act (see
/// [`Deliverer::round`]).
pub async fn run(
    store: Store,
    settings: NotifySettings,
    context: Option<Context>,
    clock: Clock,
    cancel: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for endpoint in settings.endpoints.clone() {
        let name = endpoint.name.clone();
        let deliverer = match Deliverer::new(
            store.clone(),
            settings.clone(),
            context.clone(),
            endpoint,
            clock.clone(),
        ) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(event = "notify_client_failed", endpoint = %name, error = %e, "cannot build the HTTP client for this endpoint");
                continue;
            }
        };
        let cancel = cancel.clone();
        tasks.spawn(async move { deliverer.run(cancel).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// One endpoint's deliverer: what its rounds need, built once.
pub struct Deliverer {
    store: Store,
    settings: NotifySettings,
    context: Option<Context>,
    endpoint: EndpointSettings,
    name: String,
    http: reqwest::Client,
    signer: standardwebhooks::Webhook,
    clock: Clock,
}

impl Deliverer {
    /// The deliverer of `endpoint`; `None` when its secret gives no signer (checked at
    /// load, so not expected); the error when its HTTP client cannot be built.
    pub fn new(
        store: Store,
        settings: NotifySettings,
        context: Option<Context>,
        endpoint: EndpointSettings,
        clock: Clock,
    ) -> Result<Option<Self>, reqwest::Error> {
        let name = endpoint.name.clone();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let Some(signer) = endpoint.secret.webhook() else {
            return Ok(None);
        };
        Ok(Some(Self {
            store,
            settings,
            context,
            endpoint,
            name,
            http,
            signer,
            clock,
        }))
    }

    /// Rounds until `cancel`; between rounds with nothing to do, a nap on the clock until
    /// the next delivery is due (at most [`IDLE`]), or until a commit writes notifications.
    async fn run(self, cancel: CancellationToken) {
        let name = &self.name;
        let url = crate::settings::redacted_url(&self.endpoint.url);
        tracing::info!(event = "notify_started", endpoint = %name, url = %url, events = ?self.endpoint.events, "delivering notifications");
        while !cancel.is_cancelled() {
            let worked = match self.round().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(event = "notify_store_failed", endpoint = %name, error = %e, "cannot read or write deliveries; trying again");
                    false
                }
            };
            if worked {
                continue;
            }
            // Held after failing: looked at again when the hold ends, at least every
            // HELD_NAP (a `notify retry` from another process lifts the hold), or when a
            // commit wrote notifications (a newer one may supersede one waiting).
            let now = self.clock.now();
            let held = self
                .store
                .endpoint_hold(name)
                .await
                .is_ok_and(|h| h.until.is_some_and(|until| until > now));
            let cap = if held { HELD_NAP } else { IDLE };
            let wait = match self.store.next_delivery_at(name).await {
                Ok(Some(at)) => (at - now).to_std().unwrap_or_default().clamp(NAP, cap),
                _ => IDLE,
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.store.outbox_written().notified() => {}
                () = self.clock.sleep(wait) => {}
            }
        }
    }
}

/// One round for `endpoint` on `clock` (see [`Deliverer::round`]), for a caller that runs
/// rounds itself (a test, the life simulation). Returns the deliveries attempted; an
/// endpoint whose secret gives no signer attempts none.
pub async fn deliver_round(
    store: &Store,
    settings: &NotifySettings,
    context: Option<&Context>,
    endpoint: &EndpointSettings,
    clock: &Clock,
) -> anyhow::Result<usize> {
    let deliverer = Deliverer::new(
        store.clone(),
        settings.clone(),
        context.cloned(),
        endpoint.clone(),
        clock.clone(),
    )
    .with_context(|| {
        format!(
            "cannot build the HTTP client for endpoint {}",
            endpoint.name
        )
    })?;
    match deliverer {
        Some(d) => Ok(d.round().await?),
        None => Ok(0),
    }
}

/// Gives each configured endpoint the deliveries and cursor keyed by its URL from before
/// endpoints had names ([`EndpointSettings::legacy_key`]); rows of an endpoint no longer
/// configured keep a key with its credentials redacted (`settings::redacted_url`). Migration
/// 0009 already gave a database that knew one endpoint's rows to `default`. Cheap when
/// there is nothing to do: one read of the cursors.
pub async fn adopt_endpoint_names(
    store: &Store,
    endpoints: &[EndpointSettings],
) -> crate::store::Result<()> {
    let mut renames = Vec::new();
    for key in store.endpoint_keys().await? {
        // A name is a word; only a URL has "://".
        if !key.contains("://") {
            continue;
        }
        let to = match endpoints.iter().find(|e| e.legacy_key() == key) {
            Some(e) => e.name.clone(),
            None => url::Url::parse(&key).map_or_else(
                |_| "[an endpoint no longer configured]".to_owned(),
                |u| crate::settings::redacted_url(&u),
            ),
        };
        if to != key {
            renames.push((key, to));
        }
    }
    if !renames.is_empty() {
        store.rename_endpoints(&renames).await?;
        tracing::info!(
            event = "notify_endpoints_renamed",
            count = renames.len(),
            "deliveries keyed by an endpoint's URL are keyed by its name now"
        );
    }
    Ok(())
}

/// How long a notice asking a user to act waits for the bank's status to be read after it
/// (`/connectors` failing, say) before it is sent on what is known.
const HOLD_MAX: chrono::Duration = chrono::Duration::minutes(5);
/// The shortest sleep of an idle deliverer (a delivery due but held back, or waiting for an
/// older one of its order key, must not make it spin).
const NAP: Duration = Duration::from_millis(50);

/// One endpoint and how to reach it.
struct Target<'a> {
    endpoint: &'a EndpointSettings,
    name: &'a str,
    http: &'a reqwest::Client,
    signer: &'a standardwebhooks::Webhook,
    clock: &'a Clock,
}

impl Deliverer {
    /// One round: enqueue, then attempt what is due (one per order key at most): one first,
    /// the rest concurrently once it got through; nothing while the endpoint is held after
    /// failing (see [`send_due`]). A notice asking a user to act is sent only once the bank's status was read
    /// after it was made (read now if need be, at most once a second for the whole daemon;
    /// held up to [`HOLD_MAX`] while `/connectors` cannot be read): an outage found then
    /// reclassifies the connection, and the notice, no longer true, is superseded instead of
    /// sent. Returns the deliveries attempted.
    ///
    /// The round takes its `now` once, from the clock: what is due, what is held or
    /// superseded, and the `webhook-timestamp` every send signs with. The sends' outcomes
    /// are dated once more, when the sends are over: a send may take up to
    /// `notify.timeout`, and a retry's backoff counts from its failure.
    pub async fn round(&self) -> crate::store::Result<usize> {
        let target = Target {
            endpoint: &self.endpoint,
            name: &self.name,
            http: &self.http,
            signer: &self.signer,
            clock: &self.clock,
        };
        round(&self.store, &self.settings, self.context.as_ref(), &target).await
    }
}

async fn round(
    store: &Store,
    settings: &NotifySettings,
    context: Option<&Context>,
    t: &Target<'_>,
) -> crate::store::Result<usize> {
    let name = t.name;
    let now = t.clock.now();
    store
        .enqueue_deliveries(name, &t.endpoint.events, settings.max_age, now)
        .await?;
    let hold = store.endpoint_hold(name).await?;
    if hold.failing > 0 {
        let expired = store.expire_deliveries(name, now).await?;
        if expired > 0 {
            tracing::error!(event = "notify_dead_lettered", endpoint = %name, count = expired, "notifications not delivered within notify.max_age, the endpoint failing: dead-lettered unsent (see `basiq-health notify list --failed`)");
        }
    }
    let held = hold.until.is_some_and(|until| now < until);
    let due = due_now(store, context, name, now, held).await?;
    if held {
        return Ok(0);
    }
    send_due(store, settings, t, due, now, hold.failing).await
}

/// The deliveries to send now, in the order they go: a bank's outage notices first, then
/// the users' (an ask held during an outage arrives after the outage's end is told). Health
/// notices that no longer hold are superseded here, and asks that must wait are left. While
/// the endpoint is `held`, only that superseding is done (nothing is read from Basiq) and
/// nothing is returned.
async fn due_now(
    store: &Store,
    context: Option<&Context>,
    name: &str,
    now: DateTime<Utc>,
    held: bool,
) -> crate::store::Result<Vec<DueDelivery>> {
    let candidates: Vec<(DueDelivery, Option<HealthNotice>)> = store
        .due_deliveries(name, now, ROUND)
        .await?
        .into_iter()
        .map(|d| {
            let notice = HealthNotice::of(&d);
            (d, notice)
        })
        .collect();
    let newest_ask = candidates
        .iter()
        .filter(|(_, n)| !held && n.as_ref().is_some_and(HealthNotice::asks))
        .map(|(d, _)| d.outbox_id)
        .max();
    // Open outages before and after the read that confirms: an ask waits while its bank
    // is down in either (the read may open an outage, or close one whose end is told
    // first, next round).
    let mut outages = if newest_ask.is_some() {
        store.open_outages().await?
    } else {
        Vec::new()
    };
    let confirmed = match (context, newest_ask) {
        (Some(context), Some(id)) => context.connectors_confirm(id).await,
        _ => true,
    };
    if newest_ask.is_some() {
        outages.extend(store.open_outages().await?);
    }
    let mut due = Vec::new();
    for (d, notice) in candidates {
        let Some(notice) = notice else {
            if !held {
                due.push(d);
            }
            continue;
        };
        if !notice.current(store, &d, name).await? {
            store.delivery_superseded(d.id, now).await?;
            tracing::info!(event = "notify_superseded", endpoint = %name, webhook_id = %d.webhook_id, "a health notice no longer holds (a newer one about the connection, or its health moved since): not sent");
            continue;
        }
        if held {
            continue;
        }
        let held = now - from_ts(d.created_at) < HOLD_MAX;
        if notice.asks() && ((!confirmed && held) || notice.bank_down(&outages)) {
            // Not yet known whether the bank is up, or it is down (an expired consent
            // cannot be renewed at a bank in outage): tried again next round.
            continue;
        }
        if notice.asks()
            && let Some(context) = context
            && notice.bank_suspect(store, context, &d, now).await?
        {
            // Its bank may be going down: told once an outage is ruled out (or superseded
            // when one is inferred).
            continue;
        }
        due.push(d);
    }
    let (mut banks, users): (Vec<DueDelivery>, Vec<DueDelivery>) = due
        .into_iter()
        .partition(|d| d.order_key.starts_with("institution:"));
    banks.extend(users);
    Ok(banks)
}

/// Sends `due` in its order: the first alone, a probe; the rest only once it got through,
/// a bank's outage notices together, then the users' together. Every attempt's outcome is
/// recorded (a failed one is retried after its backoff); a round in which every attempt
/// failed holds the whole endpoint for its own backoff (doubling per such round, from
/// `failing`, the rounds before), so a receiver that is down is probed once per backoff,
/// not hit once per pending notification. Returns the deliveries attempted.
async fn send_due(
    store: &Store,
    settings: &NotifySettings,
    t: &Target<'_>,
    due: Vec<DueDelivery>,
    now: DateTime<Utc>,
    failing: i64,
) -> crate::store::Result<usize> {
    let mut due = due.into_iter();
    let Some(probe) = due.next() else {
        return Ok(0);
    };
    let sent = send(t.http, &t.endpoint.url, t.signer, &probe, now.timestamp()).await;
    let through = sent.is_ok();
    let mut results = vec![(probe, sent)];
    if through {
        let (banks, users): (Vec<DueDelivery>, Vec<DueDelivery>) =
            due.partition(|d| d.order_key.starts_with("institution:"));
        for phase in [banks, users] {
            let sends = phase.into_iter().map(|d| async move {
                let result = send(t.http, &t.endpoint.url, t.signer, &d, now.timestamp()).await;
                (d, result)
            });
            results.extend(futures_util::future::join_all(sends).await);
        }
    }
    let done = t.clock.now();
    let attempted = results.len();
    let delivered = results.iter().any(|(_, r)| r.is_ok());
    for (d, result) in results {
        record(store, settings, t.name, &d, result, done).await?;
    }
    if delivered && failing > 0 {
        store
            .set_endpoint_hold(t.name, EndpointHold::default())
            .await?;
        tracing::info!(event = "notify_endpoint_recovered", endpoint = %t.name, "the endpoint takes notifications again");
    } else if !delivered {
        let failing = failing + 1;
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let wait = backoff(
            settings.backoff_initial,
            settings.backoff_max,
            failing,
            jitter,
        );
        let until = done + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
        store
            .set_endpoint_hold(
                t.name,
                EndpointHold {
                    failing,
                    until: Some(until),
                },
            )
            .await?;
        tracing::warn!(event = "notify_endpoint_held", endpoint = %t.name, failing, until = %until.to_rfc3339(), "every attempt at the endpoint failed: nothing is sent there until then, then one notification probes it");
    }
    Ok(attempted)
}

/// Records one attempt's outcome, dated `done`.
async fn record(
    store: &Store,
    settings: &NotifySettings,
    name: &str,
    d: &DueDelivery,
    result: Result<u16, (Option<u16>, String)>,
    done: DateTime<Utc>,
) -> crate::store::Result<()> {
    match result {
        Ok(status) => {
            store.delivery_succeeded(d.id, status, done).await?;
            tracing::info!(event = "notify_delivered", endpoint = %name, webhook_id = %d.webhook_id, attempts = d.attempts + 1, status, "notification delivered");
        }
        Err((status, error)) => {
            let retry_at = next_try(settings, d, done);
            store
                .delivery_failed(d.id, status, &error, retry_at, done)
                .await?;
            match retry_at {
                Some(at) => {
                    tracing::warn!(event = "notify_failed", endpoint = %name, webhook_id = %d.webhook_id, attempts = d.attempts + 1, status, error = %error, retry_at = %at.to_rfc3339(), "notification not delivered; retrying")
                }
                None => {
                    tracing::error!(event = "notify_dead_lettered", endpoint = %name, webhook_id = %d.webhook_id, attempts = d.attempts + 1, status, error = %error, created_at = %from_ts(d.created_at).to_rfc3339(), "notification not delivered within notify.max_age: dead-lettered (see `basiq-health notify list --failed`)")
                }
            }
        }
    }
    Ok(())
}

/// What the deliverer needs of a health notice, read once from its payload.
struct HealthNotice {
    connection_id: crate::domain::ConnectionId,
    to: String,
    user_action: String,
    institution_id: String,
    method: String,
}

impl HealthNotice {
    /// `None` for the other types (and a payload we did not write, which is just sent).
    fn of(d: &DueDelivery) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(&d.payload).ok()?;
        if v["type"] != crate::plan::notices::HEALTH_CHANGED {
            return None;
        }
        let data = &v["data"];
        let text = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
        Some(Self {
            connection_id: crate::domain::ConnectionId::parse(data["connection_id"].as_str()?)
                .ok()?,
            to: text("to"),
            user_action: data["user_action"].as_str().unwrap_or("none").to_owned(),
            institution_id: text("institution_id"),
            method: text("method"),
        })
    }

    /// It asks the user to act.
    fn asks(&self) -> bool {
        self.user_action != "none"
    }

    /// Its bank (institution and method; any method when Basiq did not say) has an open
    /// outage.
    fn bank_down(&self, outages: &[crate::store::OutageRow]) -> bool {
        outages.iter().any(|o| {
            o.institution_id == self.institution_id
                && (o.method == self.method
                    || self.method == crate::domain::Method::Unknown.as_str())
        })
    }

    /// Its bank is one user short of an inferred outage: other users failed there bank-side
    /// within `outage.window` (at least `outage.min_users` - 1 of them, and one). An ask
    /// waits for the inference (which supersedes it: the outage explains the failure) or
    /// for those failures to age out, at most `outage.window` after it was made.
    async fn bank_suspect(
        &self,
        store: &Store,
        context: &Context,
        d: &DueDelivery,
        now: chrono::DateTime<Utc>,
    ) -> crate::store::Result<bool> {
        let options = context.options();
        let window =
            chrono::Duration::from_std(options.outage_window).unwrap_or(chrono::Duration::MAX);
        if now - from_ts(d.created_at) >= window {
            return Ok(false);
        }
        let threshold = options.outage_min_users.saturating_sub(1).max(1);
        let key = crate::domain::ConnectorKey::new(
            &self.institution_id,
            &crate::domain::Method::parse(&self.method),
        );
        let user = crate::domain::UserId::parse(&d.order_key).ok();
        let since = now.checked_sub_signed(window).unwrap_or(now);
        let failing = store
            .others_failing(&key, user.as_ref(), since, threshold)
            .await?;
        Ok(failing >= threshold)
    }

    /// Still worth sending when its turn comes: no newer health notice about the
    /// connection exists (the app is told the latest, not the history it missed), it is not
    /// what the endpoint last got about it (a notice between them superseded), and one
    /// asking a user to act still holds: the connection still has that health and asks the
    /// same (an outage found since, or a re-consent, makes it moot).
    async fn current(
        &self,
        store: &Store,
        d: &DueDelivery,
        endpoint: &str,
    ) -> crate::store::Result<bool> {
        let connection = self.connection_id.as_str();
        if store
            .newer_health_notice(d.outbox_id, &d.order_key, connection)
            .await?
        {
            return Ok(false);
        }
        // What this endpoint last got about the connection says the same (a notice between
        // them was superseded): nothing new to tell.
        let last = store
            .last_delivered_health(endpoint, &d.order_key, connection, d.outbox_id)
            .await?
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok());
        if last.is_some_and(|v| {
            v["data"]["to"] == self.to.as_str()
                && v["data"]["user_action"] == self.user_action.as_str()
        }) {
            return Ok(false);
        }
        Ok(match store.connection(&self.connection_id).await? {
            Some(row) if self.asks() => {
                let health = row.health.unwrap_or(crate::plan::classify::Health::Unknown);
                row.gone_at.is_none()
                    && self.to == health.as_str()
                    && crate::plan::notices::user_action(health, row.reason.as_deref())
                        == self.user_action
            }
            // A notice that asks nothing holds while the connection has that health, or one
            // not told (in progress, pending a re-check): the app's last word is still it.
            Some(row) => row
                .health
                .is_none_or(|h| self.to == h.as_str() || !crate::plan::notices::settled(h)),
            None => !self.asks(),
        })
    }
}

/// When to try again, or `None` past the deadline (dead-lettered).
fn next_try(
    settings: &NotifySettings,
    d: &DueDelivery,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let jitter = rand::rng().random_range(-1.0..=1.0);
    let wait = backoff(
        settings.backoff_initial,
        settings.backoff_max,
        d.attempts + 1,
        jitter,
    );
    let at = now + chrono::Duration::from_std(wait).ok()?;
    // Due times are whole seconds, rounded up (never before the backoff).
    (crate::store::ts_ceil(at) <= d.deadline).then_some(at)
}

/// Posts one notification; the HTTP status on success, or the status and error.
async fn send(
    http: &reqwest::Client,
    url: &url::Url,
    signer: &standardwebhooks::Webhook,
    d: &DueDelivery,
    ts: i64,
) -> Result<u16, (Option<u16>, String)> {
    let signature = signer
        .sign(&d.webhook_id, ts, d.payload.as_bytes())
        .map_err(|e| (None, format!("cannot sign: {e}")))?;
    let answer = http
        .post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &d.webhook_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(d.payload.clone())
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
        Ok(r) => Err((
            Some(r.status().as_u16()),
            format!("answered {}", r.status()),
        )),
        // No URL in the error: it may carry credentials.
        Err(e) => Err((None, transport_error(&e))),
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), s(3600), 1, 0.0), s(5));
        assert_eq!(backoff(s(5), s(3600), 2, 0.0), s(10));
        assert_eq!(backoff(s(5), s(3600), 4, 0.0), s(40));
        assert_eq!(backoff(s(5), s(3600), 40, 0.0), s(3600));
        assert_eq!(backoff(s(4), s(3600), 1, 1.0), s(5));
        assert_eq!(backoff(s(4), s(3600), 1, -1.0), s(3));
        assert_eq!(backoff(s(4), s(3600), i64::MAX, 0.0), s(3600));
    }
}
