//! Credential pools: which credentials may serve an agent, in which order, and which one
//! serves next (SPEC §5).
//!
//! - [`registry`]: the pools per agent, built from the state files and the environment,
//!   reloaded when they change (the I/O);
//! - [`select`] (pure): the next usable candidate given cooldowns, `rpm` and what was
//!   already tried.

pub mod registry;
pub mod select;

pub use registry::{build_pool, explicit_order, AgentPool, Candidate, ProviderPool, Registry};
pub use select::{Limits, Pick, Selector};
