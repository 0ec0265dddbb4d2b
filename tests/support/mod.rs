//! Shared support for keygate's integration tests.
//!
//! Each test binary compiles this module on its own and uses only part of it, so unused
//! items are expected here.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cli;
pub mod gateway;
pub mod keygate;
pub mod logs;
pub mod mock;
pub mod raw;
pub mod redis;
pub mod served;

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}
