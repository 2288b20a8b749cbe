//! The planner: every decision a unit of work makes, as pure functions of what was fetched,
//! what is stored, the settings and `now`. No I/O: nothing of the store, Basiq, sqlx, tokio
//! or reqwest.
//!
//! - [`facts`]: what the planners read: stored rows, attempts, outage facts, fetches.
//! - [`classify`]: a connection's health from its facts.
//! - [`policy`]: may a refresh go now (the gates), when one is owed (the schedule, the
//!   unattended window, the spread of recoveries and retries).
//! - [`notices`]: what to tell the partner's app.
//! - [`connectors`]: a `/connectors` answer: status changes, outages, recoveries, notices.
//! - [`cdr`]: which CDR brand stands for which Basiq institution, and the overrides file.
//! - [`user`]: one user's sweep, a group of them, a connector's reclassification, a
//!   consent's end, a refused refresh.
//! - [`cdr`]: each Basiq institution's CDR brand (by ABN, name, or the operator's word).
//! - [`witness`]: what a data holder's own status and planned outages change.

pub mod cdr;
pub mod classify;
pub mod connectors;
pub mod facts;
pub mod notices;
pub mod policy;
pub mod slots;
pub mod user;
pub mod witness;

pub use facts::*;
pub use user::*;
