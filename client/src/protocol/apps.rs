//! The types of the methods that say which apps may use which credential:
//! rules (`app.*`), app keys, approvals (`approval.*`) and the proof of a
//! human that allowing needs.

use super::{expose, expose_opt, AppInfo};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Something a same-user program does not have: what allowing an app, or
/// opening a credential to every app, must carry. (Any program of the
/// user can send the request; only a person knows the passphrase, or can
/// answer the system's authentication dialog.) The daemon checks the
/// first one given, in this order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Proof {
    /// The vault passphrase (any passphrase slot's).
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub passphrase: Option<SecretString>,
    /// A code of the enrolled authenticator (RFC 6238), or one of its
    /// unused recovery codes.
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub totp: Option<SecretString>,
    /// Ask polkit instead: the daemon itself asks the system's
    /// authorization service whether the calling process may act
    /// `dev.latchkey.approve` (the authentication dialog, where one
    /// runs); the client's word is never taken for its answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub polkit: bool,
}

impl Proof {
    /// A proof by the vault passphrase.
    pub fn passphrase(passphrase: SecretString) -> Proof {
        Proof {
            passphrase: Some(passphrase),
            ..Proof::default()
        }
    }

    /// A proof by polkit: the daemon asks the system's authorization
    /// service about the calling process.
    pub fn polkit() -> Proof {
        Proof {
            polkit: true,
            ..Proof::default()
        }
    }

    /// A proof by an authenticator code (or a recovery code).
    pub fn totp(code: SecretString) -> Proof {
        Proof {
            totp: Some(code),
            ..Proof::default()
        }
    }
}

/// Whether a credential's tokens need a recent confirmation by the user
/// (`latchkey confirm NAME`), and by what.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum StepUp {
    /// No confirmation (the default).
    #[default]
    Off,
    /// A code of the enrolled authenticator, at most `window_secs` ago.
    Totp {
        /// How long a confirmation holds.
        window_secs: u64,
    },
    /// The vault passphrase (or an authenticator code), at most
    /// `window_secs` ago.
    Passphrase {
        /// How long a confirmation holds.
        window_secs: u64,
    },
}

impl StepUp {
    /// Whether no confirmation is needed.
    pub fn is_off(&self) -> bool {
        matches!(self, StepUp::Off)
    }

    /// How long a confirmation holds (0 when off).
    pub fn window_secs(&self) -> u64 {
        match self {
            StepUp::Off => 0,
            StepUp::Totp { window_secs } | StepUp::Passphrase { window_secs } => *window_secs,
        }
    }

    /// `off`, `totp` or `passphrase`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepUp::Off => "off",
            StepUp::Totp { .. } => "totp",
            StepUp::Passphrase { .. } => "passphrase",
        }
    }
}

/// Parameters of `credential.set`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CredentialSetParams {
    /// Credential name.
    pub name: String,
    /// Who may use it; switching to `open` needs `proof`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<super::Access>,
    /// Step-up confirmation; turning it off or widening its window needs
    /// `proof`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_up: Option<StepUp>,
    /// Proof of a human, for changes that widen access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Parameters of `app.add`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppAddParams {
    /// The app key's name: the identity of whoever presents the key.
    pub name: String,
}

/// Result of `app.add`: the key, shown this once (the vault keeps only a
/// keyed hash of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppKeyCreated {
    /// The app key's name.
    pub name: String,
    /// The key, for `LATCHKEY_APP_KEY`.
    #[serde(serialize_with = "expose")]
    pub key: SecretString,
}

/// An app key as listed: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppKeyInfo {
    /// Its name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleEffect {
    /// The app may use the credential (up to the rule's scopes).
    Allow,
    /// The app is refused without asking.
    Deny,
}

/// A stored rule: app → credential → scopes → expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    /// Its id (for `app.remove`).
    pub id: String,
    /// The app: an executable's path, or `key:NAME`.
    pub app: String,
    /// The executable's SHA-256 (hex) the rule holds for; `None` for app keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Credential name.
    pub credential: String,
    /// Allow or deny.
    pub effect: RuleEffect,
    /// The most it allows; `None`: the credential's scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Unix seconds after which it no longer applies; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Result of `app.list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppListResult {
    /// Stored rules.
    pub rules: Vec<RuleInfo>,
    /// App keys.
    pub keys: Vec<AppKeyInfo>,
}

/// Parameters of `app.allow`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppAllowParams {
    /// The app: an executable's absolute path (hashed by the daemon now),
    /// or `key:NAME` for an app key.
    pub app: String,
    /// Credential name.
    pub credential: String,
    /// The most the app may ask for; `None`: the credential's scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Seconds the rule lasts; `None`: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// Proof of a human: allowing is what malware would do for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Parameters of `app.deny`: no proof needed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppDenyParams {
    /// The app, as for `app.allow`.
    pub app: String,
    /// Credential name.
    pub credential: String,
}

/// Parameters of `app.remove`: no proof needed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppRemoveParams {
    /// A rule id, or `key:NAME` to remove an app key (and its rules).
    pub id: String,
}

/// Parameters of `approval.attach`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttachParams {
    /// Proof of a human: without it the approver can see and deny, not allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Result of `approval.attach`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct AttachResult {
    /// Whether this approver may allow (it gave a proof).
    pub can_allow: bool,
}

/// Parameters of `approval.next`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApprovalNextParams {
    /// Only prompts with a larger id (the last one this approver saw).
    #[serde(default)]
    pub after: u64,
    /// Wait at most this long for a prompt (seconds, at most 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u64>,
}

/// An app waiting for the user's decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingApproval {
    /// Its id, for `approval.decide`.
    pub id: u64,
    /// Who asks.
    pub app: AppInfo,
    /// Credential name.
    pub credential: String,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// Whether a rule allowed this path before with another hash: the
    /// program was changed (updated) since it was approved.
    #[serde(default)]
    pub updated: bool,
    /// Calls waiting on this one prompt.
    pub waiting: u32,
    /// Seconds until the callers give up.
    pub expires_in: u64,
}

/// Result of `approval.next`: a prompt, or none within the wait.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApprovalNextResult {
    /// The oldest undecided prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingApproval>,
}

/// The user's answer to a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "choice", rename_all = "snake_case")]
pub enum Decision {
    /// These waiting calls only.
    Once,
    /// This app in this terminal session (as long as the daemon runs).
    Session,
    /// This app for some hours (a stored rule that expires).
    Hours {
        /// How many (1 to 720).
        hours: u64,
    },
    /// This app from now on (a stored rule).
    Always,
    /// Refuse these calls.
    Deny,
}

impl Decision {
    /// What it does, for people: "allowed once", "denied".
    pub fn describe(self) -> String {
        match self {
            Decision::Once => "allowed once".into(),
            Decision::Session => "allowed for the terminal session".into(),
            Decision::Hours { hours } => format!("allowed for {hours} h"),
            Decision::Always => "allowed from now on".into(),
            Decision::Deny => "denied".into(),
        }
    }
}

/// Parameters of `approval.decide`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecideParams {
    /// The prompt's id.
    pub id: u64,
    /// The answer.
    pub decision: Decision,
}
