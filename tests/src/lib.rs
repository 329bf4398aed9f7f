//! End-to-end test harness: runs the real binaries against a real authorization server.
//!
//! By concern: [`env`](mod@env) (one test's temp dirs, environment and cleanup),
//! [`cli`] (running `latchkey`), [`process`] (starting and stopping
//! `latchkeyd`, `/proc`), [`raw`] (raw socket connections), [`rpc`] (the
//! protocol through `latchkey_client`), [`provider`] and [`browser`] (the
//! authorization server and a user's browser), [`desktop`] (private D-Bus
//! buses, a notification service, the real polkitd), and [`fixture`] (the
//! set-ups tests share), [`postgres`](mod@postgres) (databases on the tests'
//! PostgreSQL server for the shared vault). The names tests use most are re-exported here.

pub mod app;
mod blocking;
pub mod browser;
pub mod cli;
pub mod desktop;
pub mod env;
pub mod fixture;
pub mod oauth1;
pub mod postgres;
pub mod process;
pub mod provider;
pub mod raw;
pub mod resource;
pub mod rpc;

pub use cli::{Cli, CliResult};
pub use env::TestEnv;
pub use process::{alive, processes, wait_for, DaemonHandle, DaemonOpts};
pub use raw::RawConn;

/// Environment variable naming a file every skipped test appends a line
/// to (`.ci/test` sets it and prints the file at the end), so skips show in
/// the summary and not only in captured output.
pub const SKIP_LOG_ENV: &str = "LATCHKEY_TEST_SKIP_LOG";

/// Records that the calling test skips, and why: a `SKIPPED test: reason`
/// line on stderr and in the file `$LATCHKEY_TEST_SKIP_LOG` names. The
/// caller decides whether a skip is allowed (in CI a missing tool fails).
#[track_caller]
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!("SKIPPED {test}: {reason}\n");
    eprint!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV).filter(|p| !p.is_empty()) {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "cannot append to {SKIP_LOG_ENV} ({}): {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}
