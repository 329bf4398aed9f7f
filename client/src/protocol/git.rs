//! The types of the git credential helper's methods (`git.*`): routes that
//! map what git asks about (protocol, host, path prefix, username) to a
//! credential, and the answers `latchkey git-credential` gives git
//! (gitcredentials(7)). A route holds no secret; the token comes through
//! the same path as `token.get`.

use super::{Proof, TokenReply};
use serde::{Deserialize, Serialize};

/// A stored route: requests for `protocol://host/path…` (by `username`,
/// when set) are answered with a token of `credential`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRoute {
    /// Random id (what `git.route_remove` may name).
    pub id: String,
    /// `https` or `http` (plain http only makes sense for a loopback host).
    pub protocol: String,
    /// Host as git sends it, lowercase, with `:port` when not the default.
    pub host: String,
    /// Path prefix, whole segments, without leading or trailing `/` or a
    /// trailing `.git`; `None`: every path on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only when git sends this username (`https://alice@host/…`); it is
    /// also the username answered. `None`: any username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The credential whose access token answers.
    pub credential: String,
    /// Unix seconds of its creation.
    pub created_at: i64,
}

/// Parameters of `git.route_add`. A route with the same protocol, host,
/// path and username is replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitRouteAddParams {
    /// `https` (default) or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host, with `:port` when not the default.
    pub host: String,
    /// Path prefix (e.g. `acme` or `acme/widgets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only for this username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Credential name.
    pub credential: String,
    /// Proof of a human, needed when the credential is `access: ask`: a
    /// route decides where an allowed git sends the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Parameters of `git.route_remove`: a route's id, or exactly its protocol,
/// host, path and username.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitRouteRemoveParams {
    /// The route's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `https` (default) or `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Result of `git.route_remove`: the routes left for the removed route's
/// protocol and host (the CLI removes git's helper config when none are).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitRouteRemoveResult {
    /// The route removed.
    pub removed: Option<GitRoute>,
    /// How many routes are left for its protocol and host.
    pub left_for_host: u32,
}

/// What git asks about (the attributes of gitcredentials(7)), for
/// `git.get` and `git.erase`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitRequest {
    /// `https`, `http`, …
    pub protocol: String,
    /// Host, with `:port` when git sends one.
    pub host: String,
    /// The repository path (git sends it only with `credential.useHttpPath`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The username in the URL or configured, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Result of `git.get`: `token` is `None` when no route matches (git then
/// asks its next helper).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct GitGetResult {
    /// The route that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<GitRoute>,
    /// The username to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The access token (the password git sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenReply>,
}

/// Result of `git.erase`: which credential's cached access token was
/// dropped (its next `git.get` gets a fresh one), if a route matched.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitEraseResult {
    /// The credential whose cached token was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}
