//! OAuth: discovery, grants, and the one HTTP client they share.

pub mod discovery;
pub mod grant;
pub mod http;
pub mod user;
