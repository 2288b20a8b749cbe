//! The second witness as a unit of work: the CDR Register read with its ETag (once per
//! `cdr.register_interval`, backing off after failures), each institution mapped to its
//! brand, then each mapped brand that some watched connection uses read when due (its
//! status every `cdr.status_interval`, its planned outages every `cdr.outages_interval`),
//! each read planned ([`crate::plan::witness`]) and committed with the notices it causes,
//! and the connector cache told what the data holders now say. A witness that cannot be
//! read says nothing: its failures are counted and nothing else changes.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Context;
use crate::cdr::{CdrClient, CdrOptions, RegisterRead};
use crate::domain::ConnectorKey;
use crate::plan::OutageSource;
use crate::plan::notices::{self, Notice, Planned};
use crate::plan::witness::{self, PolledBrand, StatusPlan, WindowsPlan};
use crate::settings::CdrSettings;
use crate::store::{self, WriteTx};

/// A Register failure is logged at most this often (the others at debug).
const LOG_EVERY: chrono::Duration = chrono::Duration::hours(1);

/// What one poll did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CdrPolled {
    /// `read`, `not-modified`, `failed` or `not-due`.
    pub register: &'static str,
    pub institutions: usize,
    pub mappings_changed: usize,
    pub status_reads: usize,
    pub outages_reads: usize,
    pub failures: usize,
    pub outages_opened: usize,
    pub outages_closed: usize,
    pub windows_new: usize,
    pub windows_withdrawn: usize,
    pub windows_ended: usize,
}

/// The CDR poller: the context's store, clock and cache, its own HTTP client.
#[derive(Clone)]
pub struct Witness {
    context: Context,
    client: CdrClient,
    settings: CdrSettings,
}

impl Witness {
    pub fn new(context: Context, settings: CdrSettings) -> anyhow::Result<Self> {
        let client = CdrClient::new(CdrOptions {
            register_url: settings.register_url.clone(),
            timeout: settings.timeout,
            max_requests_per_second: settings.max_requests_per_second,
        })?;
        Ok(Self {
            context,
            client,
            settings,
        })
    }

    /// One poll: what is due (everything when `all`: `basiq-health cdr poll`).
    pub async fn poll(&self, all: bool) -> anyhow::Result<CdrPolled> {
        let now = self.context.clock().now();
        let mut polled = CdrPolled {
            register: self.read_register(now, all).await?,
            ..CdrPolled::default()
        };
        let used = self.map(now, &mut polled).await?;
        let store = self.context.store();
        let mut queued = false;
        for brand in store.cdr_polled(now, all, &used).await? {
            if all || brand.status_due_at <= now {
                queued |= self.read_status(&brand, now, &mut polled).await?;
            }
            if all || brand.outages_due_at <= now {
                self.read_windows(&brand, now, &mut polled).await?;
            }
        }
        // Read first: most polls end no window, and open no write for nothing.
        let ended = if store.cdr_windows_to_end(now).await? {
            let mut tx = store.write().await?;
            let ended = store::cdr::end_windows(&mut tx, now).await?;
            tx.commit().await?;
            ended
        } else {
            Vec::new()
        };
        polled.windows_ended = ended.len();
        for key in &ended {
            tracing::info!(event = "maintenance_ended", institution = %key.institution_id, method = %key.method, "an announced maintenance window is over: its connections are checked again");
        }
        self.tell_cache(now, queued || !ended.is_empty()).await?;
        Ok(polled)
    }

    /// The Register, when due: its brands replace the stored ones; a 304 keeps them; a
    /// failure keeps them and backs off (logged once an hour).
    async fn read_register(&self, now: DateTime<Utc>, all: bool) -> anyhow::Result<&'static str> {
        let store = self.context.store();
        let state = store.cdr_register().await?;
        if !all && state.due_at.is_some_and(|d| d > now) {
            return Ok("not-due");
        }
        let every = self.settings.register_interval;
        match self.client.register(state.etag.as_deref()).await {
            Ok(RegisterRead::NotModified) => {
                store
                    .cdr_register_read(None, None, now, witness::register_next(now, 0, every))
                    .await?;
                tracing::debug!(
                    event = "cdr_register_not_modified",
                    "the CDR Register has not changed"
                );
                Ok("not-modified")
            }
            Ok(RegisterRead::Fresh {
                brands,
                etag,
                skipped,
            }) => {
                store
                    .cdr_register_read(
                        Some(&brands),
                        etag.as_deref(),
                        now,
                        witness::register_next(now, 0, every),
                    )
                    .await?;
                tracing::info!(
                    event = "cdr_register_read",
                    brands = brands.len(),
                    skipped,
                    "read the CDR Register"
                );
                Ok("read")
            }
            Err(e) => {
                let failures = state.failures.saturating_add(1);
                let log = state.logged_at.is_none_or(|t| now - t >= LOG_EVERY);
                let due = witness::register_next(now, failures, every);
                if log {
                    tracing::warn!(event = "cdr_register_failed", error = %e, failures, next = %due, "could not read the CDR Register; the brands known stand (none: no bank is mapped, nobody is blamed)");
                } else {
                    tracing::debug!(event = "cdr_register_failed", error = %e, failures, "could not read the CDR Register");
                }
                store
                    .cdr_register_failed(failures, due, log.then_some(now))
                    .await?;
                Ok("failed")
            }
        }
    }

    /// Each institution some watched connection uses, mapped to its brand (from the brands
    /// stored: none known yet maps nothing, and a mapping stored stands). Returns those
    /// institutions: only their brands are read.
    async fn map(
        &self,
        now: DateTime<Utc>,
        polled: &mut CdrPolled,
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        let store = self.context.store();
        let brands = store.cdr_brands().await?;
        let institutions = store.cdr_institutions().await?;
        polled.institutions = institutions.len();
        let used = institutions
            .iter()
            .map(|i| i.institution_id.clone())
            .collect();
        if brands.is_empty() {
            return Ok(used);
        }
        let mappings =
            crate::plan::cdr::map_institutions(&institutions, &brands, &self.settings.overrides);
        let spread = self.settings.status_interval;
        polled.mappings_changed = store
            .write_cdr_mappings(&mappings, now, |b| witness::first_read(b, now, spread))
            .await?;
        for m in &mappings {
            tracing::debug!(event = "cdr_mapped", institution = %m.institution_id, brand = m.brand_id.as_deref().unwrap_or(""), r#match = m.kind.as_str(), "institution mapped");
        }
        Ok(used)
    }

    /// The base to read a brand at, or why it is not read.
    fn base(brand: &PolledBrand) -> Result<url::Url, String> {
        let text = brand
            .public_base_uri
            .as_deref()
            .ok_or_else(|| "not-pollable: the Register gives no publicBaseUri".to_owned())?;
        let url = url::Url::parse(text)
            .map_err(|_| "not-pollable: publicBaseUri is not a URL".to_owned())?;
        if !crate::cdr::pollable(&url) {
            return Err("not-pollable: publicBaseUri is not https".to_owned());
        }
        Ok(url)
    }

    /// A brand's status read, planned and committed; whether reclassifications were queued.
    async fn read_status(
        &self,
        brand: &PolledBrand,
        now: DateTime<Utc>,
        polled: &mut CdrPolled,
    ) -> anyhow::Result<bool> {
        let read = match Self::base(brand) {
            Ok(base) => {
                polled.status_reads += 1;
                self.client
                    .status(&base)
                    .await
                    .map_err(|e| format!("{}: {e}", e.kind()))
            }
            Err(why) => Err(why),
        };
        let store = self.context.store();
        let open = store.cdr_open().await?;
        let next = witness::next_read(&brand.brand_id, now, self.settings.status_interval);
        let plan = witness::plan_status(brand, &open, read, now, next);
        let mut tx = store.write().await?;
        store::cdr::write_status(&mut tx, &plan, now).await?;
        let mut told = Vec::new();
        for o in &plan.opened {
            told.push((o.key.clone(), true));
        }
        for key in &plan.closed {
            told.push((key.clone(), false));
        }
        let mut planned = Vec::new();
        for (key, down) in &told {
            let count = affected(&mut tx, key).await?;
            planned.push(notices::outage_notice(key, *down, OutageSource::Cdr, count));
        }
        write_notices(&mut tx, planned, now).await?;
        tx.commit().await?;
        emit_status(&plan, polled);
        Ok(!plan.requeue.is_empty())
    }

    /// A brand's planned outages read, planned and committed.
    async fn read_windows(
        &self,
        brand: &PolledBrand,
        now: DateTime<Utc>,
        polled: &mut CdrPolled,
    ) -> anyhow::Result<()> {
        let read = match Self::base(brand) {
            Ok(base) => {
                polled.outages_reads += 1;
                self.client
                    .outages(&base)
                    .await
                    .map_err(|e| format!("{}: {e}", e.kind()))
            }
            Err(why) => Err(why),
        };
        let store = self.context.store();
        let stored = store.cdr_windows_ahead(&brand.institutions, now).await?;
        let next = witness::next_read(&brand.brand_id, now, self.settings.outages_interval);
        let plan = witness::plan_windows(brand, &stored, read, now, next);
        let mut tx = store.write().await?;
        store::cdr::write_windows(&mut tx, &plan, now).await?;
        let mut planned = Vec::new();
        for n in &plan.new {
            let count = affected(&mut tx, &n.key).await?;
            planned.push(notices::maintenance_notice(&n.key, &n.window, count));
        }
        write_notices(&mut tx, planned, now).await?;
        tx.commit().await?;
        emit_windows(&plan, polled);
        Ok(())
    }

    /// The cache learns what the data holders now say; the connections that an outage's or
    /// a window's end holds get their recovery slots before anyone sees it, the rest are
    /// reclassified in the background.
    async fn tell_cache(&self, now: DateTime<Utc>, queued: bool) -> anyhow::Result<()> {
        let witnesses = self.context.store().cdr_witnesses(now).await?;
        let mut cache = self.context.connector_cache().await;
        cache.set_witnesses(witnesses);
        if queued {
            self.context.drain_recoveries().await?;
        }
        drop(cache);
        if queued {
            self.context.wake_reclassify();
        }
        Ok(())
    }
}

/// The watched connections at a connector (a notice's count).
async fn affected(tx: &mut WriteTx, key: &ConnectorKey) -> store::Result<i64> {
    store::events::connections_at(tx, key).await
}

async fn write_notices(
    tx: &mut WriteTx,
    notices: Vec<Notice>,
    now: DateTime<Utc>,
) -> store::Result<()> {
    if !tx.notices() || notices.is_empty() {
        return Ok(());
    }
    let planned = Planned {
        notices,
        told: Vec::new(),
    };
    store::events::write_planned(tx, &planned, now).await
}

fn emit_status(plan: &StatusPlan, polled: &mut CdrPolled) {
    match &plan.read {
        Ok(status) => {
            tracing::debug!(event = "cdr_status_read", brand = %plan.brand_id, status = status.status.as_str(), "read a data holder's status")
        }
        Err(error) => {
            polled.failures += 1;
            tracing::warn!(event = "cdr_status_failed", brand = %plan.brand_id, error = %error, "could not read a data holder's status: that witness says nothing");
        }
    }
    for o in &plan.opened {
        polled.outages_opened += 1;
        tracing::warn!(event = "cdr_outage_started", institution = %o.key.institution_id, status = %o.status, explanation = o.explanation.as_deref().unwrap_or(""), "the bank itself reports an outage (CDR): its failures are the bank's");
    }
    for key in &plan.closed {
        polled.outages_closed += 1;
        tracing::info!(event = "cdr_outage_ended", institution = %key.institution_id, "the bank itself reports it is working again (CDR)");
    }
}

fn emit_windows(plan: &WindowsPlan, polled: &mut CdrPolled) {
    if let Err(error) = &plan.read {
        polled.failures += 1;
        tracing::warn!(event = "cdr_outages_failed", brand = %plan.brand_id, error = %error, "could not read a data holder's planned outages: the windows known stand");
    }
    for n in &plan.new {
        polled.windows_new += 1;
        tracing::info!(event = "maintenance_scheduled", institution = %n.key.institution_id, starts_at = %n.window.starts_at, ends_at = %n.window.ends_at, partial = n.window.partial, "a bank announced maintenance (CDR): no unattended refresh inside it");
    }
    polled.windows_withdrawn += plan.withdrawn.len();
}
