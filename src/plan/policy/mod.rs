//! Refresh policy: pure decisions with `now` passed in; no I/O.
//!
//! Every refresh, whatever asked for it, goes through [`decide`]: the refresh mode, then the
//! gates in a fixed order, the first failing one named by a [`Denial`] reason code. The daily
//! cap is enforced atomically in the store's reservation with [`cap_for`]; this module only
//! says what the cap is. Pacing (how fast refreshes leave the daemon) is the refresher's
//! in-memory pacer, which the daily cap never depends on.
//!
//! - [`gates`]: modes, triggers, limits, and the gate order.
//! - [`window`]: the unattended window and each connection's stable slot in it.
//! - [`spread`]: delays for spreading recovery refreshes and for transient retries.
//! - [`schedule`]: when a refresh is owed (daily slot, recovery, transient retry), and the
//!   `plan` dry run.
//!
//! Knows nothing about HTTP, SQLite or the clock: callers pass `now` and an RNG.

pub mod attempt;
pub mod gates;
pub mod schedule;
pub mod spread;
pub mod window;

pub use attempt::{RefreshDecision, Sent, capped_until, owed_after, rejection_denial, reservation};
pub use gates::{
    CAP_WINDOW, DecisionKind, Denial, RefreshFacts, RefreshLimits, RefreshMode, Trigger,
    UnknownRefreshMode, cap_for, decide, not_before,
};
pub use spread::{
    TRANSIENT_MAX_RETRIES, TRANSIENT_RETRY_BASE, recovery_delays, transient_retry_delay,
};
pub use window::{DailyWindow, WindowError};
