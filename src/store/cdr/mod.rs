//! The CDR witness's rows: the Register's brands and its read, each institution's brand
//! (the mapping), each polled brand's last status and due times, the maintenance windows
//! the data holders announced, and the `cdr` outages. Reads rows into plan's types and
//! writes a plan's values; decides nothing.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{Result, Store, WriteTx, from_opt_ts, from_ts, ts};
use crate::domain::ConnectorKey;
use crate::domain::cdr::Brand;
use crate::plan::CdrWitness;
use crate::plan::cdr::{Institution, Mapping};
use crate::plan::witness::{PolledBrand, StatusPlan, StoredWindow, WindowsPlan};

mod shown;

pub use shown::{BrandFigures, BrandLine, WindowLine};

/// The Register read as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterState {
    pub etag: Option<String>,
    pub read_at: Option<DateTime<Utc>>,
    /// `None`: never tried (due now).
    pub due_at: Option<DateTime<Utc>>,
    pub failures: u32,
    pub logged_at: Option<DateTime<Utc>>,
}

impl Store {
    pub async fn cdr_register(&self) -> Result<RegisterState> {
        #[derive(sqlx::FromRow)]
        struct Row {
            etag: Option<String>,
            read_at: Option<i64>,
            due_at: i64,
            failures: i64,
            logged_at: Option<i64>,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT etag, read_at, due_at, failures, logged_at FROM cdr_register WHERE id = 1",
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map_or_else(RegisterState::default, |r| RegisterState {
            etag: r.etag,
            read_at: from_opt_ts(r.read_at),
            due_at: Some(from_ts(r.due_at)),
            failures: u32::try_from(r.failures).unwrap_or(u32::MAX),
            logged_at: from_opt_ts(r.logged_at),
        }))
    }

    /// A good Register read: its brands (`None`: not modified, the stored ones stand), its
    /// ETag, and the next read. The brand list is replaced whole, in one transaction.
    pub async fn cdr_register_read(
        &self,
        brands: Option<&[Brand]>,
        etag: Option<&str>,
        now: DateTime<Utc>,
        due_at: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        if let Some(brands) = brands {
            sqlx::query("DELETE FROM cdr_brands")
                .execute(&mut *tx)
                .await?;
            for b in brands {
                sqlx::query(
                    "INSERT OR REPLACE INTO cdr_brands (brand_id, brand_name, abn, public_base_uri, last_updated)
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(b.brand_id.clone())
                .bind(b.brand_name.clone())
                .bind(b.abn.clone())
                .bind(b.public_base_uri.as_ref().map(|u| u.as_str().to_owned()))
                .bind(b.last_updated.map(ts))
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(
            "INSERT INTO cdr_register (id, etag, read_at, due_at, failures, logged_at)
             VALUES (1, ?1, ?2, ?3, 0, NULL)
             ON CONFLICT (id) DO UPDATE SET etag = COALESCE(?1, etag), read_at = ?2,
                 due_at = ?3, failures = 0, logged_at = NULL",
        )
        .bind(etag.map(str::to_owned))
        .bind(ts(now))
        .bind(ts(due_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// A failed Register read: the stored brands stand; `logged`: this failure was logged.
    pub async fn cdr_register_failed(
        &self,
        failures: u32,
        due_at: DateTime<Utc>,
        logged_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO cdr_register (id, due_at, failures, logged_at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET due_at = ?1, failures = ?2,
                 logged_at = COALESCE(?3, logged_at)",
        )
        .bind(ts(due_at))
        .bind(i64::from(failures))
        .bind(logged_at.map(ts))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    pub async fn cdr_brands(&self) -> Result<Vec<Brand>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            brand_id: String,
            brand_name: String,
            abn: Option<String>,
            public_base_uri: Option<String>,
            last_updated: Option<i64>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT brand_id, brand_name, abn, public_base_uri, last_updated FROM cdr_brands
             ORDER BY brand_id",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Brand {
                brand_id: r.brand_id,
                brand_name: r.brand_name,
                abn: r.abn,
                public_base_uri: r.public_base_uri.and_then(|u| url::Url::parse(&u).ok()),
                last_updated: from_opt_ts(r.last_updated),
            })
            .collect())
    }

    /// The institutions behind the open-banking connectors that some watched connection
    /// uses (only their brands are polled), with what `/connectors` says of them.
    pub async fn cdr_institutions(&self) -> Result<Vec<Institution>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            institution_id: String,
            name: Option<String>,
            short_name: Option<String>,
            abn: Option<String>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT k.institution_id, k.name, k.short_name, k.abn FROM connectors k
             WHERE k.method IN ('open-banking', 'openbanking')
               AND EXISTS (SELECT 1 FROM connections c
                           WHERE c.institution_id = k.institution_id AND c.gone_at IS NULL
                             AND c.method != 'web')
             ORDER BY k.institution_id",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| Institution {
                institution_id: r.institution_id,
                name: r.name,
                short_name: r.short_name,
                abn: r.abn,
            })
            .collect())
    }

    /// Stores the mappings that changed, and makes sure each mapped brand has its poll row
    /// (first reads at `first(brand)`). Returns how many changed.
    pub async fn write_cdr_mappings(
        &self,
        mappings: &[Mapping],
        now: DateTime<Utc>,
        first: impl Fn(&str) -> DateTime<Utc>,
    ) -> Result<usize> {
        let stored: HashMap<String, (Option<String>, String)> =
            sqlx::query_as::<_, (String, Option<String>, String)>(
                "SELECT institution_id, brand_id, match FROM cdr_mappings",
            )
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(|(i, b, m)| (i, (b, m)))
            .collect();
        let changed: Vec<&Mapping> = mappings
            .iter()
            .filter(|m| {
                stored.get(&m.institution_id)
                    != Some(&(m.brand_id.clone(), m.kind.as_str().to_owned()))
            })
            .collect();
        let polled: HashSet<String> =
            sqlx::query_scalar::<_, String>("SELECT brand_id FROM cdr_polls")
                .fetch_all(self.pool())
                .await?
                .into_iter()
                .collect();
        let unpolled: HashSet<&str> = mappings
            .iter()
            .filter_map(|m| m.brand_id.as_deref())
            .filter(|b| !polled.contains(*b))
            .collect();
        if changed.is_empty() && unpolled.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        for m in &changed {
            sqlx::query(
                "INSERT INTO cdr_mappings (institution_id, brand_id, match, mapped_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (institution_id) DO UPDATE SET brand_id = excluded.brand_id,
                     match = excluded.match, mapped_at = excluded.mapped_at",
            )
            .bind(m.institution_id.clone())
            .bind(m.brand_id.clone())
            .bind(m.kind.as_str())
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        }
        for brand in unpolled {
            let due = ts(first(brand));
            sqlx::query(
                "INSERT OR IGNORE INTO cdr_polls (brand_id, status_due_at, outages_due_at) VALUES (?, ?, ?)",
            )
            .bind(brand.to_owned())
            .bind(due)
            .bind(due)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(changed.len())
    }

    /// The brands mapped to an institution of `used` (those some watched connection uses),
    /// with their poll state; only those due at `now` unless `all`.
    pub async fn cdr_polled(
        &self,
        now: DateTime<Utc>,
        all: bool,
        used: &HashSet<String>,
    ) -> Result<Vec<PolledBrand>> {
        type Row = (
            String,
            Option<String>,
            String,
            Option<String>,
            Option<i64>,
            i64,
            i64,
            i64,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT p.brand_id, b.public_base_uri, group_concat(m.institution_id, ' '), p.status,
                    p.status_checked_at, p.failures, p.status_due_at, p.outages_due_at
             FROM cdr_polls p
             JOIN cdr_mappings m ON m.brand_id = p.brand_id
             LEFT JOIN cdr_brands b ON b.brand_id = p.brand_id
             WHERE ?1 OR p.status_due_at <= ?2 OR p.outages_due_at <= ?2
             GROUP BY p.brand_id ORDER BY p.brand_id",
        )
        .bind(all)
        .bind(ts(now))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(brand_id, uri, institutions, status, checked, failures, sdue, odue)| {
                    PolledBrand {
                        brand_id,
                        public_base_uri: uri,
                        institutions: institutions
                            .split(' ')
                            .filter(|i| used.contains(*i))
                            .map(str::to_owned)
                            .collect(),
                        status,
                        status_checked_at: from_opt_ts(checked),
                        failures: u32::try_from(failures).unwrap_or(u32::MAX),
                        status_due_at: from_ts(sdue),
                        outages_due_at: from_ts(odue),
                    }
                },
            )
            .filter(|b| !b.institutions.is_empty())
            .collect())
    }

    /// Whether some window ended by `now` and its end was not handled yet.
    pub async fn cdr_windows_to_end(&self, now: DateTime<Utc>) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM cdr_windows
                            WHERE ends_at <= ? AND recovered_at IS NULL AND withdrawn_at IS NULL)",
        )
        .bind(ts(now))
        .fetch_one(self.pool())
        .await
    }

    /// The institutions with a `cdr` outage open.
    pub async fn cdr_open(&self) -> Result<HashSet<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT institution_id FROM outages WHERE source = 'cdr' AND ended_at IS NULL",
        )
        .fetch_all(self.pool())
        .await?
        .into_iter()
        .collect())
    }

    /// The windows stored for `institutions` that have not ended at `now`.
    pub async fn cdr_windows_ahead(
        &self,
        institutions: &[String],
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredWindow>> {
        let mut out = Vec::new();
        for institution in institutions {
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
                "SELECT id, starts_at, ends_at FROM cdr_windows
                 WHERE institution_id = ? AND ends_at > ? AND withdrawn_at IS NULL",
            )
            .bind(institution.clone())
            .bind(ts(now))
            .fetch_all(self.pool())
            .await?;
            out.extend(rows.into_iter().map(|(id, s, e)| StoredWindow {
                id,
                institution_id: institution.clone(),
                starts_at: from_ts(s),
                ends_at: from_ts(e),
            }));
        }
        Ok(out)
    }

    /// What the data holders say of every open-banking connector: the open `cdr` outages
    /// whose brand's last read was good, and the windows that have not ended at `now`.
    pub async fn cdr_witnesses(
        &self,
        now: DateTime<Utc>,
    ) -> Result<HashMap<ConnectorKey, CdrWitness>> {
        let mut conn = self.pool().acquire().await?;
        super::connectors::witnesses(&mut conn, None, now).await
    }
}

/// Writes one status read's plan: the brand's poll row, the `cdr` outages it opens or
/// closes, and the reclassifications. The notices are the caller's.
pub async fn write_status(tx: &mut WriteTx, plan: &StatusPlan, now: DateTime<Utc>) -> Result<()> {
    match &plan.read {
        Ok(status) => {
            sqlx::query(
                "UPDATE cdr_polls SET status = ?, explanation = ?, update_time = ?,
                     status_checked_at = ?, status_due_at = ?, failures = 0, last_error = NULL
                 WHERE brand_id = ?",
            )
            .bind(status.status.as_str().to_owned())
            .bind(status.explanation.clone())
            .bind(status.update_time.map(ts))
            .bind(ts(now))
            .bind(ts(plan.next_due))
            .bind(plan.brand_id.clone())
            .execute(&mut **tx)
            .await?;
        }
        Err(error) => failed(tx, &plan.brand_id, error, "status_due_at", plan.next_due).await?,
    }
    for o in &plan.opened {
        sqlx::query(
            "INSERT INTO outages (institution_id, method, source, status, started_at, since, explanation)
             VALUES (?, ?, 'cdr', ?, ?, ?, ?)
             ON CONFLICT (institution_id, method, source) WHERE ended_at IS NULL
             DO UPDATE SET status = excluded.status, explanation = excluded.explanation",
        )
        .bind(o.key.institution_id.clone())
        .bind(o.key.method.clone())
        .bind(o.status.clone())
        .bind(ts(now))
        .bind(o.since.map(ts))
        .bind(o.explanation.clone())
        .execute(&mut **tx)
        .await?;
    }
    for key in &plan.closed {
        // The bank says it is back: an inference drawn from failures during it is over too.
        super::connectors::close_inferred(tx, key, now).await?;
        sqlx::query(
            "UPDATE outages SET ended_at = ? WHERE institution_id = ? AND method = ?
             AND source = 'cdr' AND ended_at IS NULL",
        )
        .bind(ts(now))
        .bind(key.institution_id.clone())
        .bind(key.method.clone())
        .execute(&mut **tx)
        .await?;
    }
    for r in &plan.requeue {
        super::connectors::queue_reclassify(tx, &r.key, r.ended_after, now).await?;
    }
    Ok(())
}

/// A failed read of a brand: counted, its next read due, the stored facts kept.
async fn failed(
    tx: &mut WriteTx,
    brand_id: &str,
    error: &str,
    due_column: &str,
    due: DateTime<Utc>,
) -> Result<()> {
    let sql = format!(
        "UPDATE cdr_polls SET failures = failures + 1, failures_total = failures_total + 1,
             last_error = ?, {due_column} = ? WHERE brand_id = ?"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(error.chars().take(200).collect::<String>())
        .bind(ts(due))
        .bind(brand_id.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Writes one planned-outages read's plan: new windows (returned with their ids, to be told
/// once) and withdrawn ones.
pub async fn write_windows(tx: &mut WriteTx, plan: &WindowsPlan, now: DateTime<Utc>) -> Result<()> {
    match &plan.read {
        Ok(_) => {
            sqlx::query("UPDATE cdr_polls SET outages_due_at = ? WHERE brand_id = ?")
                .bind(ts(plan.next_due))
                .bind(plan.brand_id.clone())
                .execute(&mut **tx)
                .await?;
        }
        Err(error) => failed(tx, &plan.brand_id, error, "outages_due_at", plan.next_due).await?,
    }
    for n in &plan.new {
        sqlx::query(
            "INSERT INTO cdr_windows (institution_id, method, brand_id, starts_at, ends_at, partial,
                                      explanation, first_seen_at, notified_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (institution_id, method, starts_at, ends_at) DO UPDATE SET
                 withdrawn_at = NULL, partial = excluded.partial, explanation = excluded.explanation",
        )
        .bind(n.key.institution_id.clone())
        .bind(n.key.method.clone())
        .bind(n.brand_id.clone())
        .bind(ts(n.window.starts_at))
        .bind(ts(n.window.ends_at))
        .bind(n.window.partial)
        .bind(n.window.explanation.clone())
        .bind(ts(now))
        .bind(tx.notices().then(|| ts(now)))
        .execute(&mut **tx)
        .await?;
    }
    for id in &plan.withdrawn {
        sqlx::query("UPDATE cdr_windows SET withdrawn_at = ? WHERE id = ?")
            .bind(ts(now))
            .bind(*id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Windows that ended by `now` and whose end was not handled: each connector's connections
/// are classified again, those the window held with recovery slots after its end.
pub async fn end_windows(tx: &mut WriteTx, now: DateTime<Utc>) -> Result<Vec<ConnectorKey>> {
    let ended: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT id, institution_id, method, ends_at FROM cdr_windows
         WHERE ends_at <= ? AND recovered_at IS NULL AND withdrawn_at IS NULL
         ORDER BY ends_at, id",
    )
    .bind(ts(now))
    .fetch_all(&mut **tx)
    .await?;
    let mut keys = Vec::new();
    for (id, institution, method, ends) in ended {
        let key = ConnectorKey {
            institution_id: institution,
            method,
        };
        super::connectors::queue_reclassify(tx, &key, Some(from_ts(ends)), now).await?;
        sqlx::query("UPDATE cdr_windows SET recovered_at = ? WHERE id = ?")
            .bind(ts(now))
            .bind(id)
            .execute(&mut **tx)
            .await?;
        keys.push(key);
    }
    Ok(keys)
}
