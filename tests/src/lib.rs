//! End-to-end test harness: runs the real binaries against a real authorization server.

pub mod provider;
