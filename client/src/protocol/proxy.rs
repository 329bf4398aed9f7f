//! The types of the authenticating proxy's methods (`proxy.*`): the daemon
//! listens on a loopback address or a Unix socket, adds the credential's
//! authorization to each request an app sends there, and forwards it to
//! one upstream only. The app never holds the token.

use serde::{Deserialize, Serialize};

/// Parameters of `proxy.start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyStartParams {
    /// Credential name whose tokens authorize the forwarded requests.
    pub credential: String,
    /// The one upstream: `https://host[:port][/base/path]` (plain `http`
    /// only for a loopback host). Requests go to its host only.
    pub upstream: String,
    /// Where to listen: `127.0.0.1:PORT`, `[::1]:PORT` or `localhost:PORT`
    /// (port 0: any free one), or an absolute Unix socket path in a
    /// directory of ours that no one else may enter (mode 0700).
    pub listen: String,
    /// Scopes to ask for (a subset of the credential's); default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Bounds; each defaults as documented on [`ProxyLimits`].
    #[serde(default)]
    pub limits: ProxyLimits,
}

/// The proxy's bounds. `None` takes the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyLimits {
    /// Largest request body forwarded (default 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Largest response body passed back (default 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// Seconds one forwarded request may take, its response body
    /// included (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// App connections served at once (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// Result of `proxy.start`: where the proxy listens. It runs until a
/// `proxy.wait` for it ends (its caller hangs up), or stops if none comes
/// within 30 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStartResult {
    /// Random id, for `proxy.wait`.
    pub proxy_id: String,
    /// What apps use: `http://127.0.0.1:PORT` (the port chosen), or
    /// `unix:PATH`.
    pub listen: String,
    /// The upstream, normalized.
    pub upstream: String,
    /// The limits in force.
    pub limits: ProxyLimits,
}

/// Parameters of `proxy.wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyWaitParams {
    /// From `proxy.start`.
    pub proxy_id: String,
}

/// Result of `proxy.wait`, once the proxy stopped by itself (the daemon
/// shutting down). A waiter that hangs up stops the proxy and gets none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStopped {
    /// Requests forwarded.
    pub requests: u64,
    /// App connections refused (another user, over the cap).
    pub refused: u64,
}
