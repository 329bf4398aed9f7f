//! End-to-end test harness: runs the real binaries against a real authorization server.
//!
//! By concern: [`env`](mod@env) (one test's temp dirs, environment and cleanup),
//! [`cli`] (running `latchkey`), [`process`] (starting and stopping
//! `latchkeyd`, `/proc`), [`raw`] (raw socket connections), [`rpc`] (the
//! protocol through `latchkey_client`), [`provider`] and [`browser`] (the
//! authorization server and a user's browser), [`desktop`] (private D-Bus
//! buses, a notification service, the real polkitd), and [`fixture`] (the
//! set-ups tests share). The names tests use most are re-exported here.

pub mod app;
mod blocking;
pub mod browser;
pub mod cli;
pub mod desktop;
pub mod env;
pub mod fixture;
pub mod process;
pub mod provider;
pub mod raw;
pub mod rpc;

pub use cli::{Cli, CliResult};
pub use env::TestEnv;
pub use process::{alive, processes, wait_for, DaemonHandle, DaemonOpts};
pub use raw::RawConn;
