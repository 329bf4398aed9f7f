//! Client library for **Latchkey**, the local credential vault daemon.
//!
//! `latchkeyd` holds OAuth client secrets and refresh tokens and hands out
//! short-lived access tokens over a local socket. This crate is the whole
//! contract with it: the [protocol] (each method a [`Method`] type naming
//! its parameters and result), socket path resolution ([`socket_path`]),
//! NDJSON [framing], the [duration] grammar of the command lines, and a
//! [`Client`] with async (tokio) and [blocking] APIs. Before a client sends
//! a byte it checks that the socket's directory and the server are ours
//! ([trust]).
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
//! Any method is one typed call:
//!
//! ```no_run
//! use latchkey_client::protocol::{CredentialList, Empty};
//!
//! # fn demo() -> Result<(), latchkey_client::Error> {
//! let mut client = latchkey_client::blocking::Client::connect()?;
//! for credential in client.request::<CredentialList>(&Empty {})? {
//!     println!("{} ({})", credential.name, credential.state);
//! }
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
pub mod duration;
mod error;
pub mod framing;
pub mod keyfile;
mod paths;
pub mod protocol;
pub mod trust;

pub use client::Client;
pub use error::Error;
pub use paths::{
    app_key_from_env, database_url_has_password, database_url_shown, is_database_url, socket_path,
    vault_path, APP_KEY_ENV, SOCKET_ENV, VAULT_ENV,
};
pub use protocol::{unix_now, ErrorKind, Method, TokenParams, TokenReply};
pub use secrecy;
