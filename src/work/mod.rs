//! Units of work: each reads what it needs (fetch), asks the planner (`crate::plan`) what
//! follows, writes the plan in one transaction (commit) and then logs and wakes (emit).
//! [`write`] is the one way a plan is committed: the store writes the plan's values, then
//! the notifications they cause are planned from what the store says moved and written in
//! the same transaction.

pub mod write;
