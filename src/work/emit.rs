//! The emit step of every unit of work: a plan's notes become log lines, after its commit.

use crate::plan::Note;
use crate::plan::classify::Health;

/// Logs a plan's notes, after its commit.
pub fn emit_notes(notes: Vec<Note>) {
    for note in notes {
        match note {
            Note::HealthChanged { row, from, verdict } => {
                let level_warn = matches!(
                    verdict.health,
                    Health::ActionRequired | Health::InstitutionOutage | Health::Unknown
                );
                macro_rules! changed {
                    ($level:ident) => {
                        tracing::$level!(
                            event = "health_changed",
                            user_id = %row.user_id,
                            connection_id = %row.connection_id,
                            job_id = row.newest_job_id.as_deref(),
                            institution_id = %row.institution_id,
                            method = %row.method,
                            from = from.map(Health::as_str),
                            to = verdict.health.as_str(),
                            reason = verdict.reason.as_deref(),
                            "connection health changed"
                        )
                    };
                }
                if level_warn {
                    changed!(warn);
                } else {
                    changed!(info);
                }
            }
            Note::ConsentExpiring { row, days } => tracing::warn!(
                event = "consent_expiring",
                user_id = %row.user_id,
                connection_id = %row.connection_id,
                institution_id = %row.institution_id,
                days,
                expires_at = row.expiry_date.map(|e| e.to_rfc3339()),
                "open-banking consent expires within {days} day(s): the user must re-consent"
            ),
            Note::OutageInferred { key, users } => tracing::warn!(
                event = "outage_inferred",
                institution_id = %key.institution_id,
                method = %key.method,
                users,
                "several users fail bank-side at this connector: treating it as an outage"
            ),
            Note::OutageCleared { key } => tracing::info!(
                event = "outage_cleared",
                institution_id = %key.institution_id,
                method = %key.method,
                "inferred outage is over"
            ),
            Note::RetryScheduled { row, attempt, at } => tracing::info!(
                event = "retry_scheduled",
                user_id = %row.user_id,
                connection_id = %row.connection_id,
                attempt,
                at = %at.to_rfc3339(),
                "transient failure: refresh retry scheduled"
            ),
            Note::CappedByBasiq { row, until } => tracing::warn!(
                event = "capped_by_basiq",
                user_id = %row.user_id,
                connection_id = %row.connection_id,
                job_id = row.newest_job_id.as_deref(),
                until = %until.to_rfc3339(),
                "Basiq's refresh cap is reached for this connection: no attempt until the window has room"
            ),
        }
    }
}
