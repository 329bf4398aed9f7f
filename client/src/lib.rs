//! Client library for **Latchkey**, the local credential vault daemon.
//!
//! `latchkeyd` holds OAuth client secrets and refresh tokens and hands out
//! short-lived access tokens over a local socket. This crate is the whole
//! contract with it: the [protocol] types, socket path resolution
//! ([`socket_path`]), NDJSON [framing], and a [`Client`] with async (tokio)
//! and [blocking] APIs.
//!
//! ```no_run
//! use secrecy::ExposeSecret;
//!
//! # async fn demo() -> Result<(), latchkey_client::Error> {
//! let mut client = latchkey_client::Client::connect().await?;
//! let token = client.token("github").await?;
//! println!("expires at {:?}", token.expires_at);
//! let header = format!("Bearer {}", token.access_token.expose_secret());
//! # let _ = header;
//! # Ok(())
//! # }
//! ```
//!
//! Errors from the daemon carry a stable [`ErrorKind`]; match on it, not on
//! the message:
//!
//! ```no_run
//! # fn demo() {
//! use latchkey_client::{blocking::Client, ErrorKind};
//! match Client::connect().and_then(|mut c| c.token("github")) {
//!     Ok(token) => { /* use token.access_token */ }
//!     Err(e) if e.kind() == Some(ErrorKind::ReauthRequired) => eprintln!("{e}"),
//!     Err(e) => eprintln!("error: {e}"),
//! }
//! # }
//! ```
#![deny(missing_docs)]

pub mod blocking;
mod client;
mod codec;
mod error;
pub mod framing;
mod paths;
pub mod protocol;

pub use client::Client;
pub use error::Error;
pub use paths::{socket_path, vault_path, SOCKET_ENV, VAULT_ENV};
pub use protocol::{ErrorKind, TokenParams, TokenReply};
pub use secrecy;

/// Unix seconds now: the unit of every time in the protocol.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
