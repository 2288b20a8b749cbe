//! basiq-health watches the health of bank connections made through Basiq.
//!
//! ```text
//!              app, api, cli (wiring; one function per command; one generic tick worker)
//!                                        │
//!                                        ▼
//!   work: one unit of work each, sharing a Context {store, basiq, clock, /connectors cache, committer}
//!     sweep · pass · connectors · reclassify · refresh · event · delivery
//!     each reads   fetch (basiq, store) ──> plan (pure) ──> commit (store) ──> emit (logs, wake)
//!        │                  │                    │
//!        ▼                  ▼                    ▼
//!   basiq (HTTP only)   plan (pure: facts as     store (sqlx + SQLite: reads rows into plan's
//!                       plain types, classify,   types, writes a plan's values; no rule)
//!                       policy, notices, one
//!                       planner per unit)
//!                             │
//!                             ▼
//!                         domain (ids, Basiq's enums, ConnectorKey)
//! ```
//!
//! Arrows point at what a layer uses: `plan` uses only `domain`; `store` uses `plan`'s
//! types and `domain`; `work` uses all three and `basiq`; nothing below `work` names it.
//! Decisions are enums from the planner to the edges, and become strings only there (the
//! database, JSON, logs).
//!
//! - [`domain`]: ids and Basiq's enums, unknown values kept verbatim.
//! - [`plan`]: pure, no I/O, `now` passed in: the stored and fetched facts, classification
//!   ([`plan::classify`]), the refresh policy ([`plan::policy`]: gates, schedule, window,
//!   spread, what an attempt came to), what to tell ([`plan::notices`]), the stable slots
//!   ([`plan::slots`]) and one planner per unit of work (`plan_user`, `plan_connectors`,
//!   `plan_reclassify`, `plan_consent_*`, `plan_refresh_rejected`).
//! - [`store`]: SQLite through sqlx; reads and writes, no decisions.
//! - [`basiq`]: the HTTP client: one token, pacing, retries; no decisions.
//! - [`cdr`]: the Consumer Data Right's public HTTP side (the Register's brands, each
//!   brand's status and planned outages), paced and size-capped; no decisions. Its types are
//!   in [`domain::cdr`]; which brand stands for which bank is [`plan::cdr`].
//! - [`work`]: the units of work and their [`work::Context`].
//! - [`clock`]: the one clock every `now` comes from (the system's, or a driven one for
//!   tests and the life simulation), taken once per unit of work.
//! - [`events`]: Basiq's events in: the webhook receiver, the `/events` poll, what an event
//!   type does (pure); the inbox is processed by [`work::event`].
//! - [`settings`]: TOML + environment, validated into typed values.
//! - [`telemetry`]: JSON or pretty logs with ids as top-level keys.
//! - [`console`]: the operator's pages on the local API's listener (sign-in, who must act,
//!   banks, a connection, refreshes, notifications); reads, decides nothing.
//! - [`app`]: build, then run until stopped; [`cli`]: the commands; [`api`]: the local
//!   control API; [`serve`]: both listeners' HTTP server (connection limits, header, body
//!   and idle timeouts); [`service`]: systemd's notify and watchdog; [`metrics`],
//!   [`report`]: what the operator reads; [`demo`]: the compressed day.
//! - the simulator (a Basiq stand-in on a loopback port for the demo, tests and benchmarks) is
//!   its own crate, `basiq-sim` in `crates/basiq-sim`, which knows nothing of this one.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod basiq;
pub mod cdr;
pub mod cli;
pub mod clock;
pub mod console;
pub mod demo;
pub mod domain;
pub mod events;
pub mod metrics;
pub mod plan;
pub mod report;
pub mod serve;
pub mod service;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod work;
