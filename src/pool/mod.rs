//! Credential pools: which credentials may serve an agent, in which order, and which one
//! serves next (SPEC §5).
//!
//! - [`registry`]: the pools per agent, built from the state files and the environment,
//!   reloaded when they change (the I/O);
//! - [`order`] (pure): the order a provider's credentials are tried in, from the files and
//!   the environment — the one copy the pool and the status view both use;
//! - [`select`] (pure): the next usable candidate given cooldowns, `rpm` and what was
//!   already tried;
//! - [`affinity`]: the bounded map from a conversation to the credential that served it.

pub mod affinity;
pub mod order;
pub mod registry;
pub mod select;

pub use affinity::{Affinity, Session, Stuck};
pub use order::{Inputs, Plan};
pub use registry::{build_pool, AgentPool, Candidate, ProviderPool, Registry};
pub use select::{Caps, Gate, InFlightSlot, Limits, Pick, Selector};
