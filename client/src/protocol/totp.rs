//! The types of the authenticator methods (`totp.*`): enrolling a TOTP
//! secret (RFC 6238) whose codes then prove that a person asks, as the
//! vault passphrase does.

use super::{expose, Proof};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Parameters of `totp.enroll`: enrolling needs a proof (else a same-user
/// program could enroll an authenticator of its own and approve itself).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TotpEnrollParams {
    /// Proof of a human: the passphrase, or a code of the authenticator
    /// enrolled now (re-enrolling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
    /// The account name the authenticator app shows (default: the user's
    /// login name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// Result of `totp.enroll`: the secret to show to the user's authenticator
/// app. Nothing is stored until `totp.confirm` gets a valid code for it on
/// the same connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpEnrollResult {
    /// The `otpauth://totp/…` URI (for a QR code); it holds the secret.
    #[serde(serialize_with = "expose")]
    pub uri: SecretString,
    /// The secret in base32, for typing into an authenticator by hand.
    #[serde(serialize_with = "expose")]
    pub secret: SecretString,
    /// Digits per code.
    pub digits: u32,
    /// Seconds per code.
    pub period: u64,
    /// Seconds left to confirm.
    pub expires_in_secs: u64,
}

/// Parameters of `totp.confirm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpConfirmParams {
    /// A code the authenticator app shows for the secret `totp.enroll` gave.
    #[serde(serialize_with = "expose")]
    pub code: SecretString,
}

/// Result of `totp.confirm`: the authenticator is enrolled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpConfirmResult {
    /// One-time recovery codes, shown this once (the vault keeps only keyed
    /// hashes): each proves a person once, in place of a code.
    #[serde(serialize_with = "expose_all")]
    pub recovery_codes: Vec<SecretString>,
}

/// Parameters of `totp.remove`: removing needs a proof too (a removed
/// authenticator is a step-up gone).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TotpRemoveParams {
    /// Proof of a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Result of `totp.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TotpStatusResult {
    /// Whether an authenticator is enrolled.
    pub enrolled: bool,
    /// Unix seconds of the enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<i64>,
    /// Recovery codes not used yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_codes_left: Option<u32>,
}

fn expose_all<S: serde::Serializer>(secrets: &[SecretString], ser: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    use serde::ser::SerializeSeq;
    let mut seq = ser.serialize_seq(Some(secrets.len()))?;
    for s in secrets {
        seq.serialize_element(s.expose_secret())?;
    }
    seq.end()
}
