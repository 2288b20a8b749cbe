//! basiq-health watches the health of bank connections made through Basiq.
//!
//! ```text
//! settings ──> app (wiring, lifecycle) ──> scheduler tick ──> sweep ──> basiq (HTTP) ──> classify ──> store (SQLite)
//!                                                    └──> policy (may we refresh?) ──> basiq refresh ──> follow job
//! ```
//!
//! - [`settings`]: TOML + environment, validated into typed values.
//! - [`telemetry`]: JSON or pretty logs with ids as top-level keys.
//! - [`domain`]: ids and Basiq's enums, unknown values kept verbatim.
//! - [`basiq`]: the HTTP client: one token, pacing, retries; no decisions.
//! - [`sim`]: a Basiq stand-in on a loopback port for the demo, tests and benchmarks.
//! - [`cli`]: the commands.
#![forbid(unsafe_code)]

pub mod basiq;
pub mod cli;
pub mod domain;
pub mod settings;
// pub mod sim;
pub mod telemetry;
