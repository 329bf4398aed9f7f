//! End-to-end test harness: runs the real binaries against a real authorization server.

pub mod browser;
pub mod daemon;
pub mod provider;
