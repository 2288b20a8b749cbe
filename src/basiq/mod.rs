//! Talks to Basiq's HTTP API and nothing else: one shared client, one cached token,
//! request pacing, retries with full jitter, typed answers.
//!
//! Knows nothing about SQLite, schedules or health: callers decide what an answer means.

mod actions;
mod client;
mod error;
mod pipeline;
mod reads;
mod token;
mod wire;

#[cfg(test)]
mod fuzz_tests;

pub use client::{
    Client, ClientOptions, Ids, Listed, REFRESH_LOOKUPS, RefreshOutcome, Stats, UserSummary,
};
pub use error::{ApiError, Error};
pub use wire::BadField;
