//! Units of work. Each reads **fetch → plan → commit → emit**: it reads what it needs (from
//! Basiq, from the store), asks the planner ([`crate::plan`]) what follows, writes the plan
//! in one transaction, then logs and wakes. They share one [`Context`] (store, Basiq client,
//! clock, `/connectors` cache, the group committer's handle):
//!
//! - [`sweep`]: one user's sweep, a followed job's end, the login check;
//! - [`pass`]: the loop that takes due (or named) users and sweeps them;
//! - [`connectors`]: the `/connectors` read, at most once per TTL ([`cache`] is its state);
//! - [`cdr`]: the second witness, the data holders' own status and planned outages;
//! - [`reclassify`]: the connections at a connector that moved, a batch per transaction,
//!   outages' ends before anyone sees them, the rest in the [`background`];
//! - [`commit`]: the group committer (many users' plans per transaction) and [`write`], the
//!   one way a plan is written: the store writes the plan's values, then the notifications
//!   they cause are planned from what the store says moved, in the same transaction;
//! - [`refresh`]: a refresh through the gates, the pace and the reservation; the ones owed;
//!   the dry run; purge; a sent refresh's job followed to its end;
//! - [`event`]: one event of the inbox (a webhook or the `/events` poll) done;
//! - [`delivery`]: a delivery round of the outbox to one endpoint;
//! - [`emit`]: a plan's notes as log lines, after the commit;
//! - [`tick`]: the scheduler's one tick and the generic worker each kind of work runs in.

pub mod background;
pub mod cache;
pub mod cdr;
mod commit;
pub mod connectors;
pub mod context;
pub mod delivery;
pub mod emit;
pub mod event;
pub mod pass;
mod reads;
pub mod reclassify;
pub mod refresh;
pub mod sweep;
pub mod tick;
pub mod write;

pub use context::{Context, Progress, SweepError, SweepOptions};
pub use emit::emit_notes;
pub use pass::PassTrigger;
pub use sweep::UserOutcome;
pub use tick::TickState;
