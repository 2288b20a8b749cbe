//! The CDR witness as shown: each institution and its brand (`cdr brands`, `/metrics`),
//! the maintenance windows announced (`status`), each polled brand's failed reads.

use chrono::{DateTime, Utc};

use super::super::{Result, Store, from_opt_ts, from_ts, ts};

/// One institution as `cdr brands` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BrandLine {
    pub institution_id: String,
    pub name: Option<String>,
    pub abn: Option<String>,
    pub brand_id: Option<String>,
    pub brand_name: Option<String>,
    #[serde(rename = "match")]
    pub match_kind: String,
    pub status: Option<String>,
    pub status_checked_at: Option<DateTime<Utc>>,
    pub next_outage: Option<WindowLine>,
}

/// An announced maintenance window as shown (`cdr brands`, `status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct WindowLine {
    pub institution_id: String,
    pub method: String,
    pub brand_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub partial: bool,
    pub explanation: String,
}

/// One polled brand's figures for `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrandFigures {
    pub brand_id: String,
    pub failures: u32,
    pub failures_total: u64,
}

impl Store {
    /// Each institution, its brand and what was last read of it (`cdr brands`).
    pub async fn cdr_brand_lines(&self, now: DateTime<Utc>) -> Result<Vec<BrandLine>> {
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
            Option<String>,
            Option<i64>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT k.institution_id, k.name, k.abn, m.brand_id, b.brand_name,
                    COALESCE(m.match, 'none'), p.status, p.status_checked_at
             FROM connectors k
             LEFT JOIN cdr_mappings m ON m.institution_id = k.institution_id
             LEFT JOIN cdr_brands b ON b.brand_id = m.brand_id
             LEFT JOIN cdr_polls p ON p.brand_id = m.brand_id
             WHERE k.method IN ('open-banking', 'openbanking')
             ORDER BY k.institution_id",
        )
        .fetch_all(self.pool())
        .await?;
        let windows = self.cdr_window_lines(now).await?;
        Ok(rows
            .into_iter()
            .map(
                |(institution_id, name, abn, brand_id, brand_name, kind, status, checked)| {
                    BrandLine {
                        next_outage: windows
                            .iter()
                            .find(|w| w.institution_id == institution_id)
                            .cloned(),
                        institution_id,
                        name,
                        abn,
                        brand_id,
                        brand_name,
                        match_kind: kind,
                        status,
                        status_checked_at: from_opt_ts(checked),
                    }
                },
            )
            .collect())
    }

    /// The windows that have not ended at `now`, earliest first.
    pub async fn cdr_window_lines(&self, now: DateTime<Utc>) -> Result<Vec<WindowLine>> {
        let rows: Vec<(String, String, String, i64, i64, bool, String)> = sqlx::query_as(
            "SELECT institution_id, method, brand_id, starts_at, ends_at, partial, explanation
             FROM cdr_windows WHERE ends_at > ? AND withdrawn_at IS NULL
             ORDER BY starts_at, id",
        )
        .bind(ts(now))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(institution_id, method, brand_id, s, e, partial, explanation)| WindowLine {
                    institution_id,
                    method,
                    brand_id,
                    starts_at: from_ts(s),
                    ends_at: from_ts(e),
                    partial,
                    explanation,
                },
            )
            .collect())
    }

    /// Every polled brand's failures (`/metrics`).
    pub async fn cdr_figures(&self) -> Result<Vec<BrandFigures>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT brand_id, failures, failures_total FROM cdr_polls ORDER BY brand_id",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(brand_id, failures, total)| BrandFigures {
                brand_id,
                failures: u32::try_from(failures).unwrap_or(u32::MAX),
                failures_total: u64::try_from(total).unwrap_or(0),
            })
            .collect())
    }
}
