//! Types of the health checks `latchkey doctor` asks the daemon for
//! (`provider.check`): each provider's discovery reachable, and how far the
//! provider's clock is from ours.

use serde::{Deserialize, Serialize};

/// Result of `provider.check`: one entry per provider, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCheckResult {
    /// The providers checked.
    pub providers: Vec<ProviderHealth>,
}

/// What checking one provider found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderHealth {
    /// The provider's name.
    pub name: String,
    /// The URL asked: the issuer's first metadata location, else the token
    /// endpoint (a provider configured without discovery).
    pub url: String,
    /// Whether it answered over HTTP at all (any status).
    pub reachable: bool,
    /// The HTTP status it answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The provider's clock minus ours, in seconds, from its `Date` header
    /// (positive: the provider is ahead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_secs: Option<i64>,
    /// Why it was not reachable, naming the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
