//! The Consumer Data Right's public side, over HTTP and nothing else: the CDR Register's
//! list of data holder brands, and each brand's unauthenticated discovery endpoints (its
//! operational status and its planned outages), read into [`crate::domain::cdr`] types.
//!
//! Knows nothing about Basiq, SQLite, schedules or health: it does not decide which brand
//! stands for which bank ([`crate::plan::cdr`] does), nor what a status means for one, nor
//! when to ask again. One request is one attempt; the caller retries.
//!
//! - `client`: [`CdrClient`], its options, the pace, the size caps, [`pollable`].
//! - `wire`: the JSON as it arrives, converted at this edge; private.
//! - `duration`: [`parse_duration`], the ISO 8601 durations of planned outages.
//! - `error`: [`CdrError`].

mod client;
mod duration;
mod error;
mod wire;

pub use client::{
    CdrClient, CdrOptions, DISCOVERY_BODY_LIMIT, MAX_REDIRECTS, REGISTER_BODY_LIMIT, RegisterRead,
    pollable,
};
pub use duration::{MAX_DAYS, parse_duration};
pub use error::CdrError;
