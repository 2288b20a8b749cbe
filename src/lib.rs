//! basiq-health watches the health of bank connections made through Basiq.
//!
//! ```text
//! settings ──> app (wiring, lifecycle) ──> scheduler tick ──> sweep ──> basiq (HTTP) ──> classify ──> store (SQLite)
//!                                                    └──> policy (may we refresh?) ──> basiq refresh ──> follow job
//! Basiq's webhooks, /events poll ──> inbox ──> events processor ──> sweep / planner ──> store
//! store's outbox (written in the plan's commit) ──> notify deliverers ──> the partner's endpoints
//! ```
//!
//! - [`settings`]: TOML + environment, validated into typed values.
//! - [`clock`]: the one clock: the wall clock, or a driven one for tests and the life
//!   simulation; `now` is taken from it once per unit of work.
//! - [`clock`]: the one clock every `now` comes from (the system's, or a driven one), handed
//!   down from `app` and the commands to everything built on the context.
//! - [`telemetry`]: JSON or pretty logs with ids as top-level keys.
//! - [`domain`]: ids and Basiq's enums, unknown values kept verbatim.
//! - [`basiq`]: the HTTP client: one token, pacing, retries; no decisions.
//! - [`classify`]: pure health classification.
//! - [`plan`]: the pure planner: everything one unit of work decides, written in one transaction.
//! - [`store`]: SQLite through sqlx; no decisions.
//! - [`policy`]: pure refresh decisions (gates, window, spreading) and the pacer.
//! - [`sweep`]: one pass over due users, one user's sweep, the ticking scheduler.
//! - [`report`]: the status report (JSON and table).
//! - [`app`]: build, then run until stopped.
//! - [`api`]: the local control API.
//! - [`serve`]: both listeners' HTTP server: connection limits, header, body and idle
//!   timeouts, descriptors kept for the rest.
//! - [`events`]: Basiq's events in: the webhook receiver, the `/events` poll, the inbox
//!   processor.
//! - [`notify`]: notifications out: what to tell (pure), and the per-endpoint deliverers.
//! - the simulator (a Basiq stand-in on a loopback port for the demo, tests and benchmarks) is
//!   its own crate, `basiq-sim` in `crates/basiq-sim`, which knows nothing of this one.
//! - [`cli`]: the commands.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod basiq;
pub mod cli;
pub mod clock;
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
