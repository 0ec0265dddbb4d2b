//! Shared support for keygate's integration tests.
//!
//! Each test binary compiles this module on its own and uses only part of it, so unused
//! items are expected here.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cli;
pub mod keygate;
pub mod mock;
pub mod raw;
