//! Step-up confirmation for privileged credentials: a token for such a
//! credential is handed out only within a window after the user confirmed
//! with `credential.confirm` (an authenticator code, or the passphrase).

use super::{Proof, StepUp};
use serde::{Deserialize, Serialize};

/// Parameters of `credential.confirm`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfirmParams {
    /// Credential name.
    pub name: String,
    /// The confirmation: an authenticator code for `totp` step-up, the
    /// passphrase (or a code) for `passphrase` step-up. Checked every time:
    /// a connection that proved a person before is not enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Result of `credential.confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmResult {
    /// The credential's step-up setting.
    pub step_up: StepUp,
    /// Unix seconds until which tokens are handed out without asking again.
    pub until: i64,
}
