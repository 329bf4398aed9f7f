//! The types of client-secret rotation (`credential.set_secret`): a new
//! client secret, the previous one kept until the new one has worked once.

use super::expose;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Parameters of `credential.set_secret`.
#[derive(Serialize, Deserialize)]
pub struct SetSecretParams {
    /// The credential.
    pub name: String,
    /// The new client secret.
    #[serde(serialize_with = "expose")]
    pub client_secret: SecretString,
    /// Keep no previous secret to fall back on (the old one leaked, or is
    /// revoked at the provider already).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_old: bool,
}

/// A credential's client secrets as `credential show` gives them: when
/// each was set, never the secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSecretInfo {
    /// Unix seconds the newest secret was set; `None` when the vault does
    /// not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_at: Option<i64>,
    /// The provider has accepted the newest secret at least once (or it
    /// is the credential's first).
    pub worked: bool,
    /// A previous secret is kept, to fall back on while the newest has
    /// not worked yet.
    #[serde(default)]
    pub previous_kept: bool,
    /// Unix seconds the previous secret was set, when one is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_set_at: Option<i64>,
}

/// How old a client secret may grow before `credential show` and
/// `latchkey doctor` say to rotate it: 90 days, as security guides advise.
pub const ROTATION_AGE_SECS: i64 = 90 * 86_400;

impl ClientSecretInfo {
    /// The newest secret's age at `now`, when known.
    pub fn age(&self, now: i64) -> Option<i64> {
        self.set_at.map(|at| (now - at).max(0))
    }

    /// Whether the newest secret is older than `max_age_secs` (a secret of
    /// unknown age is not).
    pub fn due_for_rotation(&self, now: i64, max_age_secs: i64) -> bool {
        self.age(now).is_some_and(|age| age > max_age_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_due_past_its_age() {
        let info = ClientSecretInfo {
            set_at: Some(1_000),
            worked: true,
            previous_kept: false,
            previous_set_at: None,
        };
        assert_eq!(info.age(500), Some(0), "a clock behind is age 0");
        assert!(!info.due_for_rotation(1_000 + ROTATION_AGE_SECS, ROTATION_AGE_SECS));
        assert!(info.due_for_rotation(1_001 + ROTATION_AGE_SECS, ROTATION_AGE_SECS));
        let unknown = ClientSecretInfo {
            set_at: None,
            ..info
        };
        assert!(!unknown.due_for_rotation(i64::MAX, 0));
    }
}
