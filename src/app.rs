//! Wiring and lifecycle. `App::build` does every fallible setup step (key, database,
//! migrations, client, API socket) and fails early with a clear message;
//! `run_until_stopped` runs the scheduler, the worker and the local API until the shutdown
//! future resolves, then stops at safe points. The same path serves systemd, the demo and
//! the tests.
//!
//! One [`Clock`] runs through everything built here (store, client, context, refresher,
//! receiver, processor, deliverers): the system clock unless a caller hands in another
//! (`*_with_clock`: tests and the life simulation drive a manual one).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::basiq::{Client, ClientOptions};
use crate::clock::Clock;
use crate::settings::{BasiqSettings, Settings};
use crate::store::Store;
use crate::work::refresh::Refresher;
use crate::work::{self, Context, SweepOptions, TickState};

/// Client options from the settings and a key.
pub fn client_options(b: &BasiqSettings, api_key: secrecy::SecretString) -> ClientOptions {
    ClientOptions {
        base_url: b.base_url.clone(),
        api_key,
        timeout: b.timeout,
        connect_timeout: b.connect_timeout,
        max_requests_per_second: b.max_requests_per_second,
        max_attempts: b.max_attempts,
        retry_base_delay: b.retry_base_delay,
        max_retry_delay: b.max_retry_delay,
        refresh_lookups: crate::basiq::REFRESH_LOOKUPS,
    }
}

pub fn sweep_options(s: &Settings) -> SweepOptions {
    SweepOptions {
        period: s.sweep.period,
        concurrency: usize::try_from(s.sweep.concurrency.get()).unwrap_or(8),
        connectors_ttl: s.sweep.connectors_ttl,
        stale_after: s.sweep.stale_after,
        login_min_interval: s.sweep.login_min_interval,
        retry_after: s.sweep.retry_after,
        batch_size: s.sweep.batch_size.get(),
        outage_min_users: i64::from(s.outage.min_users.get()),
        outage_window: s.outage.window,
        auto_refresh: (s.refresh.limits.mode != crate::plan::policy::RefreshMode::Off).then_some(
            crate::plan::policy::schedule::AutoRefresh {
                recovery_window: s.refresh.recovery_window,
                transient_retry_base: s.refresh.transient_retry_base,
                transient_max_retries: s.refresh.transient_max_retries,
                min_interval: s.refresh.limits.min_interval,
                per_institution_per_minute: s.refresh.per_institution_per_minute,
            },
        ),
    }
}

/// Opens the database named by the settings (exit 74 on failure), and gives each notify
/// endpoint the rows still keyed by its URL from before endpoints had names.
pub async fn open_store(settings: &Settings, clock: &Clock) -> anyhow::Result<Store> {
    let store = Store::open_with_clock(
        &settings.database.path,
        settings.database.busy_timeout,
        clock.clone(),
    )
    .await?;
    crate::work::delivery::adopt_endpoint_names(&store, &settings.notify.endpoints)
        .await
        .context("while keying notification deliveries by endpoint name")?;
    Ok(store)
}

/// The Basiq API key of the settings (exit 78 when missing); a key file others can read is
/// warned about.
pub fn api_key(settings: &Settings) -> anyhow::Result<secrecy::SecretString> {
    let key = settings.api_key()?;
    if let Some(warning) = &key.permission_warning {
        tracing::warn!("{warning}");
    }
    Ok(key.secret.clone())
}

/// Builds the context on the system clock: key (exit 78 when missing), database (74),
/// client.
pub async fn build_sweeper(settings: &Settings) -> anyhow::Result<Context> {
    build_sweeper_with_key(settings, api_key(settings)?).await
}

/// As [`build_sweeper`], with a key handed over in-process (demo, tests).
pub async fn build_sweeper_with_key(
    settings: &Settings,
    key: secrecy::SecretString,
) -> anyhow::Result<Context> {
    build_sweeper_with_clock(settings, key, Clock::system()).await
}

/// As [`build_sweeper_with_key`], on `clock`: the store, the client and the context all
/// take their time from it.
pub async fn build_sweeper_with_clock(
    settings: &Settings,
    key: secrecy::SecretString,
    clock: Clock,
) -> anyhow::Result<Context> {
    let store = open_store(settings, &clock).await?;
    // No endpoint would send a notification: none is kept.
    store.set_notices(!settings.notify.endpoints.is_empty());
    let client = Client::with_clock(client_options(&settings.basiq, key), clock.clone())?;
    Context::new(store, client, sweep_options(settings), clock)
        .await
        .context("while reading the installation seed")
}

/// The daemon, built and ready to run.
pub struct App {
    settings: Settings,
    context: Context,
    refresher: Refresher,
    ticks: Arc<TickState>,
    listener: Option<TcpListener>,
    /// The webhook receiver's (`webhooks.listen`).
    webhook_listener: Option<TcpListener>,
    receiver_stats: Arc<crate::events::receiver::ReceiverStats>,
    /// The local API's bearer token (read or created at build when the API is enabled).
    api_token: Option<secrecy::SecretString>,
    /// Both listeners' connection limits and timeouts, fitted under the descriptor limit.
    budget: crate::serve::Budget,
    /// The CDR poller (`cdr.enabled`).
    witness: Option<work::cdr::Witness>,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let context = build_sweeper(&settings).await?;
        Self::assemble(settings, context).await
    }

    /// As [`App::build`], with the key handed over in-process (demo, tests).
    pub async fn build_with_key(
        settings: Settings,
        key: secrecy::SecretString,
    ) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, key, Clock::system()).await
    }

    /// As [`App::build_with_key`], on `clock`: everything the daemon decides, records and
    /// waits for by the world's time follows it.
    pub async fn build_with_clock(
        settings: Settings,
        key: secrecy::SecretString,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let context = build_sweeper_with_clock(&settings, key, clock).await?;
        Self::assemble(settings, context).await
    }

    async fn assemble(settings: Settings, context: Context) -> anyhow::Result<Self> {
        let refresher = Refresher::new(context.clone(), settings.refresh.clone()).await?;
        let listener =
            match settings.api.listen {
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("while binding the local API to {addr} (api.listen)")
                })?),
                None => None,
            };
        let webhook_listener = match settings.webhooks.listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("while binding the webhook receiver to {addr} (webhooks.listen)")
            })?),
            None => None,
        };
        let api_token = match (&listener, &settings.api.token) {
            (None, _) => None,
            (Some(_), Some(token)) => Some(token.clone()),
            (Some(_), None) => {
                let file = &settings.api.token_file;
                let (token, created) = api::load_or_create_token(file)?;
                tracing::info!(
                    event = "api_token",
                    file = %file.display(),
                    created,
                    "the local API's bearer token is in {} (send it as `Authorization: Bearer ...`)",
                    file.display()
                );
                Some(token)
            }
        };
        let witness = settings
            .cdr
            .enabled
            .then(|| work::cdr::Witness::new(context.clone(), settings.cdr.clone()))
            .transpose()
            .context("while building the CDR client ([cdr])")?;
        Ok(Self {
            witness,
            context,
            refresher,
            ticks: Arc::new(TickState::default()),
            listener,
            webhook_listener,
            receiver_stats: Arc::default(),
            api_token,
            budget: crate::serve::Budget::new(&settings),
            settings,
        })
    }

    /// The webhook receiver's bound address (port 0 resolved), if enabled.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn context(&self) -> &Context {
        &self.context
    }

    pub fn refresher(&self) -> &Refresher {
        &self.refresher
    }

    /// The CDR poller, when `cdr.enabled`.
    pub fn witness(&self) -> Option<&work::cdr::Witness> {
        self.witness.as_ref()
    }

    pub fn clock(&self) -> &Clock {
        self.context.clock()
    }

    pub fn ticks(&self) -> Arc<TickState> {
        self.ticks.clone()
    }

    /// The local API's bearer token, if the API is enabled.
    pub fn api_token(&self) -> Option<&secrecy::SecretString> {
        self.api_token.as_ref()
    }

    /// The local API's bound address (port 0 resolved), if enabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Events in and out: the inbox processor, the webhook receiver, the `/events` poll and
    /// the notification deliverers.
    /// The webhook receiver on `listener`, until `cancel`.
    fn spawn_receiver(
        &self,
        listener: TcpListener,
        wake: Arc<tokio::sync::Notify>,
        cancel: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let verifiers: Vec<_> = self
            .settings
            .webhooks
            .secrets
            .iter()
            .filter_map(crate::settings::WebhookSecret::webhook)
            .collect();
        let state = crate::events::receiver::ReceiverState {
            store: self.context.store().clone(),
            verifiers: Arc::new(verifiers),
            wake,
            stats: self.receiver_stats.clone(),
            clock: self.context.clock().clone(),
        };
        let max_body = usize::try_from(self.settings.webhooks.max_body).unwrap_or(65_536);
        let cancel = cancel.clone();
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(event = "webhooks_listening", addr = %addr, path = crate::events::receiver::PATH, "receiving Basiq's webhooks");
        }
        let router = crate::events::receiver::router(state, max_body);
        let limits = self.budget.webhooks;
        tokio::spawn(crate::serve::serve(
            listener, router, "webhooks", limits, cancel,
        ))
    }

    /// Serves the webhook receiver alone until `cancel` (a caller that runs the other units
    /// itself: the life simulation); its address, or `None` when `webhooks.listen` is off.
    /// What it stores waits in the inbox for [`crate::work::event::Processor`].
    pub fn serve_webhooks(&mut self, cancel: &CancellationToken) -> Option<SocketAddr> {
        let listener = self.webhook_listener.take()?;
        let addr = listener.local_addr().ok()?;
        self.spawn_receiver(listener, Arc::default(), cancel);
        Some(addr)
    }

    /// The settings it was built with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn spawn_events(
        &self,
        webhook_listener: Option<TcpListener>,
        cancel: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let wake = Arc::new(tokio::sync::Notify::new());
        let processor = crate::work::event::Processor {
            context: self.context.clone(),
            register_new_users: self.settings.webhooks.register_new_users,
            wake: wake.clone(),
        };
        tasks.push(tokio::spawn(processor.run(cancel.clone())));
        if let Some(listener) = webhook_listener {
            tasks.push(self.spawn_receiver(listener, wake.clone(), cancel));
        }
        if let Some(interval) = self.settings.webhooks.poll_interval {
            let client = self.context.client().clone();
            let store = self.context.store().clone();
            let clock = self.context.clock().clone();
            let cancel = cancel.clone();
            let wake = wake.clone();
            tasks.push(tokio::spawn(async move {
                // The first read one interval after the start: a start asks Basiq nothing.
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = clock.sleep(interval) => {}
                    }
                    match crate::events::poll::poll_once(&client, &store, clock.now()).await {
                        Ok(p) => {
                            if p.stored > 0 {
                                wake.notify_one();
                            }
                            tracing::debug!(event = "events_polled", listed = p.listed, stored = p.stored, "polled /events");
                        }
                        Err(e) => tracing::warn!(event = "events_poll_failed", error = %e, "GET /events failed; tried again at the next interval"),
                    }
                }
            }));
        }
        if !self.settings.notify.endpoints.is_empty() {
            tasks.push(tokio::spawn(crate::work::delivery::run(
                self.context.store().clone(),
                self.settings.notify.clone(),
                Some(self.context.clone()),
                self.context.clock().clone(),
                cancel.clone(),
            )));
        }
        tasks
    }

    /// The workers the tick feeds, first the sweep's: the pass over due users; scheduled
    /// refreshes (recovery, transient retries, daily slots: paced, so they may run long
    /// without holding up a sweep); housekeeping (prunes history once a day).
    fn tick_workers(&self, cancel: &CancellationToken) -> Vec<work::tick::Worker> {
        let sweep =
            work::tick::sweep_worker(self.context.clone(), cancel.clone(), self.ticks.clone());
        let refresher = self.refresher.clone();
        let stop = cancel.clone();
        let refresh = work::tick::spawn_worker(cancel.clone(), move || {
            let (refresher, stop) = (refresher.clone(), stop.clone());
            async move {
                if let Err(e) = refresher.run_due(&stop).await {
                    tracing::error!(event = "refresh_pass_failed", error = %e, "scheduled refreshes failed; the next tick tries again");
                }
            }
        });
        let context = self.context.clone();
        let retain_days = self.settings.database.retain_days;
        let housekeeping = work::tick::spawn_worker(cancel.clone(), move || {
            let context = context.clone();
            async move { housekeep(&context, retain_days).await }
        });
        let mut workers = vec![sweep, refresh, housekeeping];
        if let Some(witness) = self.witness.clone() {
            workers.push(work::tick::spawn_worker(cancel.clone(), move || {
                let witness = witness.clone();
                async move {
                    if let Err(e) = witness.poll(false).await {
                        tracing::error!(event = "cdr_poll_failed", error = %e, "the CDR poll failed; the next tick tries again");
                    }
                }
            }));
        }
        workers
    }

    /// The local API on its listener, if enabled.
    fn spawn_api(
        &mut self,
        liveness: crate::service::Liveness,
        cancel: &CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let listener = self.listener.take()?;
        let token = self.api_token.clone()?;
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        let state = api::ApiState {
            refresher: self.refresher.clone(),
            context: self.context.clone(),
            token,
            loopback,
            liveness,
            receiver: self.receiver_stats.clone(),
            warnings: Arc::new(self.settings.warnings.clone()),
            notify_max_age: self.settings.notify.max_age,
        };
        Some(tokio::spawn(crate::serve::serve(
            listener,
            // The local API and the operator's console, on one listener.
            api::router(state.clone()).merge(crate::console::router().with_state(state)),
            "api",
            self.budget.api,
            cancel.clone(),
        )))
    }

    /// Runs until `shutdown` resolves; then stops taking new users, lets in-flight users
    /// finish, stops the API and closes the database.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let clock = self.context.clock().clone();
        let tick_interval = crate::service::tick_interval(&self.settings.sweep.tick, clock.now());
        let running =
            work::tick::run_scheduler(&self.settings.sweep.tick, self.tick_workers(&cancel))
                .await?;
        let liveness = crate::service::Liveness::new(
            self.ticks.clone(),
            tick_interval,
            clock.now().timestamp(),
        );
        let watchdog =
            crate::service::spawn_watchdog(self.context.clone(), liveness.clone(), cancel.clone());
        let webhook_listener = self.webhook_listener.take();
        let mut tasks = self.spawn_events(webhook_listener, &cancel);
        tasks.push(watchdog);
        tasks.extend(self.spawn_api(liveness, &cancel));
        tracing::info!(
            event = "started",
            api = self.settings.api.listen.map(|a| a.to_string()),
            tick = %self.settings.sweep.tick,
            "basiq-health is running"
        );
        crate::service::ready(
            &crate::service::status_line(self.context.store(), clock.now()).await,
        );
        shutdown.await;
        crate::service::stopping();
        tracing::info!(
            event = "stopping",
            "stopping: finishing the users in flight"
        );
        cancel.cancel();
        self.stop(running, tasks).await;
        Ok(())
    }

    /// Waits (at most `shutdown_grace`) for the background reclassification, the workers, the
    /// refresher's followers and the tasks, then closes the database.
    async fn stop(self, running: work::tick::Running, tasks: Vec<tokio::task::JoinHandle<()>>) {
        let grace = self.settings.shutdown_grace;
        let refresher = self.refresher.clone();
        let context = self.context.clone();
        let stopped = tokio::time::timeout(grace, async move {
            // The background reclassification stops between two batches: the rest stays
            // queued for the next start.
            context.stop_background().await;
            running.stop().await;
            refresher.shutdown().await;
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
        if stopped.is_err() {
            tracing::error!(
                event = "shutdown_grace_exceeded",
                grace_s = grace.as_secs(),
                "work still in flight after the shutdown grace: stopping anyway (every write is a transaction)"
            );
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.context.store().close(),
        )
        .await;
        tracing::info!(event = "stopped", "stopped cleanly");
    }
}

/// Housekeeping's unit of work: prunes history older than `retain_days`, once a day.
async fn housekeep(context: &Context, retain_days: u32) {
    let now = context.clock().now();
    // The console's rollups of the hour that ended (once per hour).
    let hour =
        chrono::DurationRound::duration_trunc(now, chrono::Duration::hours(1)).unwrap_or(now);
    if let Err(e) = context.store().write_rollups(hour).await {
        tracing::error!(event = "rollups_failed", error = %e, "the hourly rollups could not be written; tried again on a later tick");
    }
    match context.store().housekeep_if_due(retain_days, now).await {
        Ok(Some(p)) => tracing::info!(
            event = "history_pruned",
            jobs = p.jobs,
            health_changes = p.health_changes,
            refresh_attempts = p.refresh_attempts,
            refresh_decisions = p.refresh_decisions,
            sweeps = p.sweeps,
            events = p.events,
            notifications = p.notifications,
            retain_days,
            "history pruned"
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(event = "prune_failed", error = %e, "pruning failed; tried again on a later tick")
        }
    }
}
