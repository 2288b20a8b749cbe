//! Notifications out: the per-endpoint deliverers ([`deliver`]). What to tell is the
//! planner's ([`crate::plan::notices`]).

pub mod deliver;
