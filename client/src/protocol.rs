//! The wire protocol between `latchkeyd` and its clients: one JSON-RPC 2.0
//! shaped message per line (NDJSON), the methods (each a [`Method`] type
//! naming its parameters and result), the stable error kinds, and the unit
//! of time ([`unix_now`]). This module is the whole contract.

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

/// Version of this protocol. `hello` returns the daemon's; a client refuses a
/// daemon that speaks another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// 64 KiB: the largest request a daemon accepts on one line. The largest
/// legitimate request (a credential with a long client secret and many
/// scopes) is under 8 KiB.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// 4 MiB: the largest reply a client reads. Listings of many credentials
/// can exceed the request limit; nothing legitimate comes near this.
pub const MAX_REPLY_LEN: usize = 4 * 1024 * 1024;

/// A protocol method: its wire name, parameter and result types, and whether it only looks.
///
/// Each method is a unit type (such as [`TokenGet`]) that is never built; it
/// only names the method in calls like
/// [`Client::request::<TokenGet>`](crate::Client::request).
pub trait Method {
    /// The method's name on the wire, e.g. `"token.get"`.
    const NAME: &'static str;
    /// Read-only methods never reset the daemon's auto-lock clock.
    const READ_ONLY: bool;
    /// What goes in the request's `params`.
    type Params: Serialize + DeserializeOwned;
    /// What comes back in the reply's `result`.
    type Result: Serialize + DeserializeOwned;
}

/// Declares every method once: a documented unit type with its [`Method`]
/// impl, and its row in [`METHODS`]. Each entry reads
/// `Type = "wire.name", Params => Result, read_only: bool;`.
macro_rules! methods {
    ($(
        $(#[doc = $doc:expr])+
        $ty:ident = $name:literal, $params:ty => $result:ty, read_only: $read_only:literal;
    )+) => {
        $(
            $(#[doc = $doc])+
            #[doc = ""]
            #[doc = concat!("Wire name `", $name, "`: [`", stringify!($params), "`] → `", stringify!($result), "`.")]
            #[derive(Debug, Clone, Copy)]
            pub struct $ty;

            impl Method for $ty {
                const NAME: &'static str = $name;
                const READ_ONLY: bool = $read_only;
                type Params = $params;
                type Result = $result;
            }
        )+

        /// Every method as `(NAME, READ_ONLY)`, in declaration order: for a
        /// server to check that its dispatch covers them all.
        pub const METHODS: &[(&str, bool)] = &[$(($name, $read_only)),+];

        /// Every method as the reference page (`docs/protocol.md`) shows it.
        #[cfg(test)]
        pub(crate) const METHOD_DOCS: &[MethodDoc] = &[$(MethodDoc {
            name: $name,
            read_only: $read_only,
            params: stringify!($params),
            result: stringify!($result),
            doc: &[$($doc),+],
        }),+];
    };
}

methods! {
    /// Protocol handshake; every client sends it first.
    Hello = "hello", HelloParams => HelloResult, read_only: true;
    /// Daemon and vault status.
    Status = "status", Empty => StatusResult, read_only: true;
    /// Create the vault.
    VaultInit = "vault.init", InitParams => InitResult, read_only: false;
    /// Unlock the vault.
    VaultUnlock = "vault.unlock", UnlockParams => UnlockResult, read_only: false;
    /// Lock the vault, zeroizing keys and cached tokens.
    VaultLock = "vault.lock", Empty => Empty, read_only: false;
    /// Rewrap the data key under a new passphrase.
    VaultChangePassphrase = "vault.change_passphrase", ChangePassphraseParams => Empty, read_only: false;
    /// New data key, every field re-encrypted in one transaction.
    VaultRekey = "vault.rekey", RekeyParams => RekeyResult, read_only: false;
    /// Add a provider; the result is the provider as configured (discovery included).
    ProviderAdd = "provider.add", ProviderAddParams => ProviderInfo, read_only: false;
    /// List providers: a bare JSON array.
    ProviderList = "provider.list", Empty => Vec<ProviderInfo>, read_only: true;
    /// Show one provider.
    ProviderShow = "provider.show", NameParams => ProviderInfo, read_only: true;
    /// Remove a provider with no credentials.
    ProviderRemove = "provider.remove", NameParams => Empty, read_only: false;
    /// Add a credential.
    CredentialAdd = "credential.add", CredentialAddParams => CredentialInfo, read_only: false;
    /// List credentials: a bare JSON array.
    CredentialList = "credential.list", Empty => Vec<CredentialInfo>, read_only: true;
    /// Show one credential.
    CredentialShow = "credential.show", NameParams => CredentialInfo, read_only: true;
    /// Revoke a credential's tokens at the provider, then remove it and them.
    CredentialRemove = "credential.remove", RemoveParams => Empty, read_only: false;
    /// Get an access token.
    TokenGet = "token.get", TokenParams => TokenReply, read_only: false;
    /// Ask the daemon to shut down gracefully.
    DaemonShutdown = "daemon.shutdown", Empty => Empty, read_only: false;
    /// Counters of the token cache.
    DaemonStats = "daemon.stats", Empty => StatsResult, read_only: true;
    /// Start a user login.
    LoginStart = "login.start", LoginStartParams => LoginStartResult, read_only: false;
    /// Wait for a started login to finish.
    LoginWait = "login.wait", LoginWaitParams => LoginResult, read_only: false;
    /// Revoke a credential's tokens at the provider and forget them.
    TokenRevoke = "token.revoke", RevokeParams => RevokeResult, read_only: false;
    /// Incident response: revoke everything (or one provider's), drop caches, lock.
    VaultPanic = "vault.panic", PanicParams => PanicResult, read_only: false;
    /// Change a credential's settings (who may use it).
    CredentialSet = "credential.set", CredentialSetParams => CredentialInfo, read_only: false;
    /// Replace a credential's client secret, keeping the previous one until the new one works.
    CredentialSetSecret = "credential.set_secret", SetSecretParams => CredentialInfo, read_only: false;
    /// Create an app key; the key is in the result, once.
    AppAdd = "app.add", AppAddParams => AppKeyCreated, read_only: false;
    /// Rules and app keys.
    AppList = "app.list", Empty => AppListResult, read_only: true;
    /// Store a rule letting an app use a credential (needs a proof).
    AppAllow = "app.allow", AppAllowParams => RuleInfo, read_only: false;
    /// Store a rule refusing an app a credential.
    AppDeny = "app.deny", AppDenyParams => RuleInfo, read_only: false;
    /// Remove a rule, or an app key and its rules.
    AppRemove = "app.remove", AppRemoveParams => Empty, read_only: false;
    /// Become an approver for as long as this connection lasts.
    ApprovalAttach = "approval.attach", AttachParams => AttachResult, read_only: true;
    /// Wait for the next app waiting for a decision (approvers only).
    ApprovalNext = "approval.next", ApprovalNextParams => ApprovalNextResult, read_only: true;
    /// Confirm a step-up credential for its window (needs a fresh proof).
    CredentialConfirm = "credential.confirm", ConfirmParams => ConfirmResult, read_only: false;
    /// Answer a prompt (approvers only; allowing needs the attach proof).
    ApprovalDecide = "approval.decide", DecideParams => Empty, read_only: false;

    // The audit log (issue 9).
    /// Read the audit log, oldest first, a page at a time.
    AuditList = "audit.list", AuditListParams => AuditListResult, read_only: true;
    /// Check the audit log's MAC chain against its sealed head.
    AuditVerify = "audit.verify", Empty => AuditVerifyResult, read_only: true;

    // The authenticator (issue 9: a TOTP code proves a person).
    /// Start enrolling an authenticator (needs a proof): the secret to show.
    TotpEnroll = "totp.enroll", TotpEnrollParams => TotpEnrollResult, read_only: false;
    /// Finish enrolling with a valid code: recovery codes, once.
    TotpConfirm = "totp.confirm", TotpConfirmParams => TotpConfirmResult, read_only: false;
    /// Remove the authenticator (needs a proof).
    TotpRemove = "totp.remove", TotpRemoveParams => Empty, read_only: false;
    /// Whether an authenticator is enrolled.
    TotpStatus = "totp.status", Empty => TotpStatusResult, read_only: true;

    // The git credential helper (issue 10).
    /// Map git requests for a protocol, host, path prefix and username to a credential.
    GitRouteAdd = "git.route_add", GitRouteAddParams => GitRoute, read_only: false;
    /// The git routes: a bare JSON array.
    GitRouteList = "git.route_list", Empty => Vec<GitRoute>, read_only: true;
    /// Remove a git route.
    GitRouteRemove = "git.route_remove", GitRouteRemoveParams => GitRouteRemoveResult, read_only: false;
    /// Answer git's `get`: the most specific route's token, through the `token.get` path.
    GitGet = "git.get", GitRequest => GitGetResult, read_only: false;
    /// Answer git's `erase` (after a 401): drop the route's cached access token.
    GitErase = "git.erase", GitRequest => GitEraseResult, read_only: false;
    // Health checks (`latchkey doctor`, issue 10).
    /// Reach each provider's discovery (or token endpoint) and read its clock.
    ProviderCheck = "provider.check", Empty => ProviderCheckResult, read_only: true;
    /// Store an OAuth 1.0a credential's token credentials (token and token
    /// secret), obtained elsewhere, in place of `latchkey login`.
    Oauth1ImportToken = "oauth1.import_token", Oauth1ImportParams => CredentialInfo, read_only: false;
    /// Sign one request with an OAuth 1.0a credential: the `Authorization`
    /// header for exactly that method, URL and form body (RFC 5849 §3.5.1).
    Oauth1Sign = "oauth1.sign", Oauth1SignParams => Oauth1SignResult, read_only: false;
    // The authenticating proxy (issue 11).
    /// Listen locally and forward requests to one upstream with the credential's authorization added.
    ProxyStart = "proxy.start", ProxyStartParams => ProxyStartResult, read_only: false;
    /// Keep a started proxy running for as long as this call lasts (hanging up stops it).
    ProxyWait = "proxy.wait", ProxyWaitParams => ProxyStopped, read_only: false;

    // Keys that never leave the vault (issue 11).
    /// The public keys of a `private_key_jwt` credential, as a JWKS to register with the provider.
    CredentialJwks = "credential.jwks", NameParams => Jwks, read_only: true;
    /// Add the next client key (the JWKS lists both), or retire all but the newest.
    CredentialRotateKey = "credential.rotate_key", RotateKeyParams => Jwks, read_only: false;
    /// A DPoP proof (RFC 9449) for one request to a resource server, with the bound token.
    DpopProof = "dpop.proof", DpopProofParams => DpopProofResult, read_only: false;

    // Key slots: unlocking on many machines (issue 12).
    /// Add a key-file slot (needs the vault unlocked and a proof): one machine's key file opens the vault.
    SlotAdd = "slot.add", SlotAddParams => SlotInfo, read_only: false;
    /// The key slots (no key material): a bare JSON array.
    SlotList = "slot.list", Empty => Vec<SlotInfo>, read_only: true;
    /// Remove a key slot (needs a proof); the last slot that opens the vault is refused.
    SlotRemove = "slot.remove", SlotRemoveParams => Empty, read_only: false;
}

/// One method as the reference page shows it (see [`METHOD_DOCS`]).
#[cfg(test)]
pub(crate) struct MethodDoc {
    pub name: &'static str,
    pub read_only: bool,
    pub params: &'static str,
    pub result: &'static str,
    pub doc: &'static [&'static str],
}

mod apps;
#[cfg(test)]
mod reference;
pub use apps::*;
mod totp;
pub use totp::*;
mod stepup;
pub use stepup::*;
mod secrets;
pub use secrets::*;
mod git;
pub use git::*;
mod health;
pub use health::*;
mod oauth1;
pub use oauth1::*;
mod proxy;
pub use proxy::*;
mod exchange;
pub use exchange::*;
mod keys;
pub use keys::*;
mod slots;
pub use slots::*;

/// A request as sent by a client.
#[derive(Debug, Serialize)]
pub struct Request<'a, P> {
    /// Always `"2.0"`.
    pub jsonrpc: &'static str,
    /// Chosen by the client, echoed in the reply.
    pub id: u64,
    /// A [`Method::NAME`].
    pub method: &'a str,
    /// The method's parameters.
    pub params: P,
}

/// A reply as sent by the daemon: exactly one of `result` and `error`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response<R> {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The request's id (`null` when the request could not be parsed).
    pub id: Option<u64>,
    /// The method's result on success.
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    /// The error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// A JSON-RPC error object with Latchkey's stable `kind` in `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RpcError {
    /// JSON-RPC numeric code; see [`ErrorKind::code`].
    pub code: i64,
    /// Human message that names the thing and the fix. Never holds a secret.
    pub message: String,
    /// Machine-readable details.
    pub data: ErrorData,
}

/// The machine-readable part of an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorData {
    /// Stable error kind; scripts match on this, not on the message.
    pub kind: ErrorKind,
    /// Seconds after which retrying makes sense (rate limits, backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// Stable error kinds. The spellings (snake_case on the wire) never change;
/// new kinds may be added, and older clients see them as [`ErrorKind::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The line was not valid UTF-8 JSON.
    ParseError,
    /// Valid JSON but not a valid request.
    InvalidRequest,
    /// No such method.
    MethodNotFound,
    /// The method's parameters are wrong.
    InvalidParams,
    /// The request line exceeded [`MAX_REQUEST_LEN`].
    FrameTooLarge,
    /// Client and daemon speak different protocol versions.
    UnsupportedProtocol,
    /// No vault exists yet: run `latchkey init`.
    NotInitialized,
    /// `vault.init` on a vault that exists.
    AlreadyInitialized,
    /// The vault is locked: run `latchkey unlock`.
    Locked,
    /// The passphrase (or key file) did not open any slot, or an
    /// authenticator code was wrong (or used already).
    WrongPassphrase,
    /// No usable OS keyring, or the keyring entry is gone.
    KeyringUnavailable,
    /// The vault file failed an integrity check.
    VaultCorrupt,
    /// No such provider or credential.
    NotFound,
    /// A provider or credential with that name exists.
    AlreadyExists,
    /// The request is not allowed (e.g. scopes never granted).
    Forbidden,
    /// The credential needs a new login.
    ReauthRequired,
    /// Too many attempts, or the provider asked to slow down.
    RateLimited,
    /// The provider is unreachable or failing; retry later.
    ProviderUnavailable,
    /// The provider refused the request (e.g. `invalid_client`).
    ProviderError,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The credential asks before an app may use it and no approver is
    /// reachable: the message names the command that adds a rule.
    ApprovalRequired,
    /// The user, or a stored rule, denied this app the credential.
    ApprovalDenied,
    /// The credential (or a vault-wide change) needs a fresh confirmation
    /// by the user: the message names the command (`latchkey confirm NAME`,
    /// or `--totp`).
    StepUpRequired,
    /// A new passphrase is too short, too guessable, or on a breached-
    /// password list: the message says why and how to choose a better one.
    WeakPassphrase,
    /// A token exchange credential's subject token is missing, empty,
    /// unreadable or expired (the provider was not asked): the message
    /// names the file or environment variable it is read from.
    SubjectTokenUnavailable,
    /// A shared vault's database (PostgreSQL) is unreachable or failing;
    /// retry later. The message names the database; tokens the daemon
    /// holds in memory are still served meanwhile.
    VaultUnavailable,
    /// A bug in the daemon.
    Internal,
    /// A kind this client version does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The JSON-RPC code that goes with this kind.
    pub fn code(self) -> i64 {
        match self {
            ErrorKind::ParseError => -32700,
            ErrorKind::InvalidRequest => -32600,
            ErrorKind::MethodNotFound => -32601,
            ErrorKind::InvalidParams => -32602,
            ErrorKind::Internal | ErrorKind::Unknown => -32603,
            ErrorKind::Locked => -32001,
            ErrorKind::NotInitialized => -32002,
            ErrorKind::AlreadyInitialized => -32003,
            ErrorKind::WrongPassphrase => -32004,
            ErrorKind::NotFound => -32005,
            ErrorKind::AlreadyExists => -32006,
            ErrorKind::Forbidden => -32007,
            ErrorKind::RateLimited => -32008,
            ErrorKind::ProviderUnavailable => -32009,
            ErrorKind::ReauthRequired => -32010,
            ErrorKind::ProviderError => -32011,
            ErrorKind::KeyringUnavailable => -32012,
            ErrorKind::VaultCorrupt => -32013,
            ErrorKind::FrameTooLarge => -32014,
            ErrorKind::UnsupportedProtocol => -32015,
            ErrorKind::ShuttingDown => -32016,
            ErrorKind::ApprovalRequired => -32017,
            ErrorKind::ApprovalDenied => -32018,
            ErrorKind::StepUpRequired => -32019,
            ErrorKind::WeakPassphrase => -32020,
            ErrorKind::SubjectTokenUnavailable => -32021,
            ErrorKind::VaultUnavailable => -32022,
        }
    }

    /// The wire spelling, e.g. `"reauth_required"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ParseError => "parse_error",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::MethodNotFound => "method_not_found",
            ErrorKind::InvalidParams => "invalid_params",
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::UnsupportedProtocol => "unsupported_protocol",
            ErrorKind::NotInitialized => "not_initialized",
            ErrorKind::AlreadyInitialized => "already_initialized",
            ErrorKind::Locked => "locked",
            ErrorKind::WrongPassphrase => "wrong_passphrase",
            ErrorKind::KeyringUnavailable => "keyring_unavailable",
            ErrorKind::VaultCorrupt => "vault_corrupt",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::ReauthRequired => "reauth_required",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::ProviderUnavailable => "provider_unavailable",
            ErrorKind::ProviderError => "provider_error",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::ApprovalRequired => "approval_required",
            ErrorKind::ApprovalDenied => "approval_denied",
            ErrorKind::StepUpRequired => "step_up_required",
            ErrorKind::WeakPassphrase => "weak_passphrase",
            ErrorKind::SubjectTokenUnavailable => "subject_token_unavailable",
            ErrorKind::VaultUnavailable => "vault_unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serializes a secret string as a plain JSON string. Used only for fields
/// that must cross the socket (passphrases in, tokens out).
fn expose<S: Serializer>(secret: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(secret.expose_secret())
}

fn expose_opt<S: Serializer>(secret: &Option<SecretString>, ser: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(s) => ser.serialize_some(s.expose_secret()),
        None => ser.serialize_none(),
    }
}

/// Now, in Unix seconds: the unit of every time in this protocol
/// (`expires_at`, `created_at`, …).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // Seconds since 1970 fit an i64 for the next 292 billion years.
        .map(|d| d.as_secs() as i64)
        // A clock before 1970 is broken; treat it as the epoch.
        .unwrap_or(0)
}

/// Parameters of `hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloParams {
    /// The client's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// An app key (`LATCHKEY_APP_KEY`): the connection is then that key's
    /// app. A key the vault does not know makes every later call fail.
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub app_key: Option<SecretString>,
}

/// Result of `hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloResult {
    /// The daemon's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The daemon's crate version.
    pub daemon_version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The vault file the daemon serves, as `status` names it: lets a
    /// client that was told which vault to use check it without a `status`
    /// call. `None` from a daemon that does not say (older ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_path: Option<String>,
}

/// Who may use a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Any program of the user.
    Open,
    /// Only apps with a rule; others wait while the user is asked.
    #[default]
    Ask,
}

impl Access {
    /// What credentials stored before there were access rules have: they
    /// keep working for every app, as they did.
    pub fn legacy() -> Access {
        Access::Open
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Ask => "ask",
        }
    }
}

/// What kind of identity a caller has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// A program, named by its executable's path and hash.
    Exe,
    /// An app that presented an app key (`LATCHKEY_APP_KEY`).
    Key,
    /// The program could not be identified.
    Unknown,
}

/// A caller as the daemon verified it (never as it declared itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    /// A program, an app key, or unknown.
    pub kind: AppKind,
    /// The executable's path, the app key's name, or why it is unknown.
    pub name: String,
    /// The executable's SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The process that connected.
    pub pid: u32,
    /// Whether the `latchkey` CLI connected on this program's behalf.
    #[serde(default)]
    pub via_cli: bool,
    /// The programs above it, nearest first, up to the session leader.
    #[serde(default)]
    pub chain: Vec<ProcessInfo>,
    /// Its systemd unit, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Its terminal session id, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
}

/// One process of a parent chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its process id.
    pub pid: u32,
    /// Its executable's path, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

/// Whether the vault exists and is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaultState {
    /// No vault file yet.
    Uninitialized,
    /// The vault exists; its data key is not in memory.
    Locked,
    /// The data key is in memory; tokens can be served.
    Unlocked,
}

/// A key slot as shown to users (no key material).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Random slot id.
    pub id: String,
    /// `passphrase`, `keyring` or `keyfile`.
    pub kind: String,
    /// Unix seconds.
    pub created_at: i64,
    /// For keyring slots, the backend that holds the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// For key-file slots, the machine it was made for (its label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Result of `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResult {
    /// Vault state.
    pub vault: VaultState,
    /// Path of the vault file.
    pub vault_path: String,
    /// Daemon process id.
    pub pid: u32,
    /// Daemon version.
    pub daemon_version: String,
    /// Key slots (empty when uninitialized).
    pub slots: Vec<SlotInfo>,
    /// Auto-lock after this many idle seconds (0: never).
    pub idle_timeout_secs: u64,
    /// Seconds until auto-lock, when unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks_in_secs: Option<u64>,
    /// Number of providers, when unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<u32>,
    /// Number of credentials, when unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<u32>,
    /// Names of credentials that need a (new) login, when unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_login: Option<Vec<String>>,
    /// Whose account each logged-in credential holds (credential name →
    /// OIDC subject), when unlocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<std::collections::BTreeMap<String, String>>,
    /// Who asked for this status, as the daemon identified the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<AppInfo>,
    /// Approvers attached now (`latchkey approve`).
    #[serde(default)]
    pub approvers: u32,
    /// The file the daemon's own log (its stderr) goes to, as the daemon
    /// sees it; `None` when it logs to a terminal, a pipe or the journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
}

/// Parameters of `vault.init`. At least one of the two slots must be asked for.
#[derive(Serialize, Deserialize)]
pub struct InitParams {
    /// Create a passphrase slot with this passphrase.
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub passphrase: Option<SecretString>,
    /// Create a keyring slot (a random key kept in the OS keyring).
    #[serde(default)]
    pub keyring: bool,
    /// A breached-password list (absolute path) the passphrase must not
    /// be on: one password per line, or Pwned Passwords' `SHA1:count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breached_list: Option<std::path::PathBuf>,
}

/// Result of `vault.init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitResult {
    /// Random vault id.
    pub vault_id: String,
    /// The slots created.
    pub slots: Vec<SlotInfo>,
}

/// Parameters of `vault.unlock`: a passphrase, a key file's key, or
/// neither to use the keyring slot. A wrong passphrase and a wrong key
/// file are both `wrong_passphrase`, and both meet the same waits.
#[derive(Serialize, Deserialize, Default)]
pub struct UnlockParams {
    /// Try the passphrase slots with this passphrase; with neither this
    /// nor `key`, the keyring slots are tried.
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub passphrase: Option<SecretString>,
    /// Try the key-file slots with this key file's key line
    /// (`latchkey-key-file-v1:…`); used when `passphrase` is not given.
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub key: Option<SecretString>,
    /// Sent by an automatic unlock (the CLI's from `$LATCHKEY_KEY_FILE` or `$LATCHKEY_PASSPHRASE_FILE`):
    /// refused with `locked` while a `latchkey lock` or `latchkey panic`
    /// holds, which only an explicit unlock (this `false`) ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unattended: bool,
}

/// Result of `vault.unlock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlockResult {
    /// The slot that opened the vault.
    pub slot: SlotInfo,
    /// True when the vault was already unlocked.
    #[serde(default)]
    pub already_unlocked: bool,
}

/// Parameters of `vault.change_passphrase`.
#[derive(Serialize, Deserialize)]
pub struct ChangePassphraseParams {
    /// The current passphrase.
    #[serde(serialize_with = "expose")]
    pub old: SecretString,
    /// The new passphrase.
    #[serde(serialize_with = "expose")]
    pub new: SecretString,
    /// A breached-password list (absolute path) the new passphrase must
    /// not be on, as in [`InitParams::breached_list`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breached_list: Option<std::path::PathBuf>,
    /// A code of the enrolled authenticator: needed once one is (step-up).
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub totp: Option<SecretString>,
}

/// Parameters of `vault.rekey`. Every key slot is rewrapped under the new
/// data key, so passphrase slots need their passphrase.
#[derive(Serialize, Deserialize, Default)]
pub struct RekeyParams {
    /// The passphrase of the vault's passphrase slot(s).
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub passphrase: Option<SecretString>,
    /// A code of the enrolled authenticator: needed once one is (step-up).
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub totp: Option<SecretString>,
}

/// Result of `vault.rekey`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RekeyResult {
    /// Number of encrypted fields rewritten under the new data key.
    pub fields: u64,
    /// Number of key slots rewrapped.
    pub slots: u64,
}

/// Parameters that only name something.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameParams {
    /// Provider or credential name.
    pub name: String,
}

/// Parameters of `credential.remove`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveParams {
    /// Credential name.
    pub name: String,
    /// Remove without revoking at the provider first.
    #[serde(default)]
    pub local_only: bool,
}

/// Parameters of `provider.add`: an issuer for discovery, or explicit endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderAddParams {
    /// Local name.
    pub name: String,
    /// Issuer URL; the daemon fetches its RFC 8414 / OIDC metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Explicit endpoints; they override discovered ones.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// An OAuth 1.0a provider's endpoints instead (no issuer, no
    /// OAuth 2 endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth1: Option<Oauth1Endpoints>,
}

/// A provider's endpoint URLs. Only `token_endpoint` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// RFC 6749 authorization endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// RFC 6749 token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    /// RFC 8628 device authorization endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_endpoint: Option<String>,
    /// RFC 7009 revocation endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// RFC 7662 introspection endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    /// JWKS for ID-token validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

/// A provider as shown to users.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Local name.
    pub name: String,
    /// Issuer, when configured by discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Endpoints in use.
    pub endpoints: Endpoints,
    /// An OAuth 1.0a provider's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth1: Option<Oauth1Endpoints>,
    /// Names of credentials using this provider.
    #[serde(default)]
    pub credentials: Vec<String>,
}

/// OAuth grant a credential uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// RFC 6749 §4.4: the client acts for itself.
    ClientCredentials,
    /// RFC 6749 §4.1 + PKCE: a user logs in in a browser.
    AuthorizationCode,
    /// RFC 8628: a user logs in on another device.
    DeviceCode,
    /// OAuth 1.0a (RFC 5849): token credentials from a three-legged login
    /// (or imported); the daemon signs requests, there are no access tokens.
    Oauth1,
    /// RFC 8693: a subject token from the environment (such as a CI job's
    /// OIDC token) is exchanged for an access token; no login, and no
    /// client secret needed.
    TokenExchange,
}

impl GrantType {
    /// The wire and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::DeviceCode => "device_code",
            GrantType::Oauth1 => "oauth1",
            GrantType::TokenExchange => "token_exchange",
        }
    }
}

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with client id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// Public client: no secret.
    None,
    /// A JWT signed with a key the vault holds (RFC 7523 §2.2, OIDC Core §9).
    PrivateKeyJwt,
}

impl AuthMethod {
    /// The wire and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::None => "none",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// Parameters of `credential.add`.
#[derive(Serialize, Deserialize)]
pub struct CredentialAddParams {
    /// Local name.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (absent for public clients).
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_secret: Option<SecretString>,
    /// Grant type.
    pub grant: GrantType,
    /// Client authentication method.
    pub auth: AuthMethod,
    /// Scopes to request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Loopback redirect URI for the authorization code grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// Who may use it; `None` is `ask`. `open` needs `proof`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Proof of a human, for `open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
    /// Grant `oauth1`: how requests are signed. The consumer key is
    /// `client_id`, the consumer secret `client_secret` (HMAC, PLAINTEXT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_method: Option<SignatureMethod>,
    /// Grant `oauth1` with RSA-SHA256: the client's RSA private key,
    /// PKCS#8, as PEM or the base64 of its DER.
    #[serde(
        default,
        serialize_with = "expose_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<SecretString>,
    /// The subject token's source and what to ask for: required by the
    /// `token_exchange` grant, refused with any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<TokenExchangeConfig>,
    /// The client key, for `auth: private_key_jwt` (required then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<NewKey>,
    /// The audience of client assertions (default: the token endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion_audience: Option<AssertionAudience>,
    /// A DPoP key: tokens are requested bound to it (RFC 9449).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop: Option<NewKey>,
}

/// A credential as shown to users: never a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialInfo {
    /// Local name.
    pub name: String,
    /// Provider name.
    pub provider: String,
    /// OAuth client id (not a secret).
    pub client_id: String,
    /// Grant type.
    pub grant: GrantType,
    /// Client authentication method.
    pub auth: AuthMethod,
    /// Configured scopes.
    pub scopes: Vec<String>,
    /// The scopes the provider granted now (user credentials with a grant;
    /// the provider may have narrowed them on a refresh), sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_scopes: Option<Vec<String>>,
    /// Whether a client secret is stored.
    pub has_client_secret: bool,
    /// When the client secret (and a previous one still kept) was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretInfo>,
    /// Who may use it (vaults from before access rules: `open`).
    #[serde(default = "Access::legacy")]
    pub access: Access,
    /// Whether a token needs a recent confirmation by the user.
    #[serde(default, skip_serializing_if = "StepUp::is_off")]
    pub step_up: StepUp,
    /// Unix seconds until which the last confirmation holds (step-up only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_until: Option<i64>,
    /// Life-cycle state.
    pub state: CredentialState,
    /// Cached access tokens (metadata only).
    #[serde(default)]
    pub tokens: Vec<TokenSummary>,
    /// OIDC subject of the logged-in account, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Whether a refresh token is held.
    #[serde(default)]
    pub has_refresh_token: bool,
    /// Grant `oauth1`: how requests are signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_method: Option<SignatureMethod>,
    /// Grant `oauth1`: whether token credentials (token and token secret) are held.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_token_credentials: bool,
    /// Last error from the provider, when in backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// A token exchange credential's settings (never the subject token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<TokenExchangeConfig>,
    /// Whether its tokens are bound to a DPoP key the vault holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop: bool,
}

/// Where a credential stands in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CredentialState {
    /// Tokens can be served (from memory, or with one request).
    Ready,
    /// A user credential without a usable grant: run `latchkey login NAME`.
    NeedsLogin,
    /// The last token request failed; the daemon waits before the next.
    Backoff,
    /// The stored credential failed its integrity check; it is never used.
    Corrupt,
    /// A state this client version does not know.
    #[serde(other)]
    Unknown,
}

impl CredentialState {
    /// Where a new credential starts: user credentials need a login first.
    pub fn initial(grant: GrantType) -> CredentialState {
        match grant {
            GrantType::ClientCredentials | GrantType::TokenExchange => CredentialState::Ready,
            GrantType::AuthorizationCode | GrantType::DeviceCode | GrantType::Oauth1 => {
                CredentialState::NeedsLogin
            }
        }
    }

    /// The wire spelling, e.g. `"needs_login"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Ready => "ready",
            CredentialState::NeedsLogin => "needs_login",
            CredentialState::Backoff => "backoff",
            CredentialState::Corrupt => "corrupt",
            CredentialState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for CredentialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metadata of a cached token, never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenSummary {
    /// Space-separated granted scopes.
    pub scope: String,
    /// Unix seconds, when the provider said.
    pub expires_at: Option<i64>,
    /// Unix seconds: when the daemon refreshes this token ahead of its
    /// expiry if it is still in use then (absent from older daemons, and for
    /// tokens too short-lived to refresh ahead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_at: Option<i64>,
}

/// The daemon stops handing out a token this many seconds before it
/// expires (clock skew, and the time a caller needs to use it); a quarter
/// of the lifetime for tokens that live under 20 s. `min_ttl` asks for more.
pub const EXPIRY_MARGIN_SECS: i64 = 5;

/// Parameters of `token.get`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenParams {
    /// Credential name.
    pub credential: String,
    /// A subset of the credential's scopes; `None` means all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The token must stay valid at least this many seconds longer, unless
    /// the provider's tokens live shorter (then the fresh token is returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<u64>,
    /// For a step-up credential not confirmed now: wait up to this many
    /// seconds (at most 240) for `latchkey confirm NAME` before answering
    /// `step_up_required`. `None`: answer at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_wait_secs: Option<u64>,
}

/// Result of `token.get`: a short-lived access token.
#[derive(Deserialize, Serialize)]
pub struct TokenReply {
    /// The access token. Hand it to the resource server only.
    #[serde(serialize_with = "expose")]
    pub access_token: SecretString,
    /// Usually `Bearer`.
    pub token_type: String,
    /// Unix seconds; `None` when the provider did not say.
    pub expires_at: Option<i64>,
    /// Space-separated granted scopes.
    pub scope: String,
}

impl std::fmt::Debug for TokenReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReply")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Result of `daemon.stats`: what the token cache did since unlock.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatsResult {
    /// `token.get` calls answered from memory.
    pub hits: u64,
    /// `token.get` calls that waited on a token request.
    pub waits: u64,
    /// Token requests made to providers (all grants, refreshes included).
    pub fetches: u64,
}

/// Parameters of `login.start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoginStartParams {
    /// Credential name (grant `authorization_code` or `device_code`).
    pub credential: String,
    /// Use the device authorization grant (RFC 8628) instead of a browser redirect.
    #[serde(default)]
    pub device: bool,
    /// Give up after this many seconds (default 300; the daemon keeps it
    /// within 5 to 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Result of `login.start`: what the user must do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginStartResult {
    /// Pass to `login.wait`.
    pub login_id: String,
    /// Browser login: the authorization URL, to show the person (copy and
    /// paste). It holds `state` and the PKCE challenge: give a browser
    /// opener `start_url` instead, since argv is visible to every local user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    /// Browser login: a one-time loopback URL of the daemon that redirects
    /// to `authorization_url`; this is the one to pass to a browser opener.
    /// Absent from daemons older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_url: Option<String>,
    /// Device login: the page where the user enters the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri: Option<String>,
    /// Device login: the page with the code already filled in, when the provider gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    /// Device login: the code to enter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_code: Option<String>,
    /// Seconds until the login expires.
    pub expires_in: u64,
}

/// Parameters of `login.wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginWaitParams {
    /// From `login.start`.
    pub login_id: String,
}

/// Result of `login.wait`: the credential is ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResult {
    /// Credential name.
    pub credential: String,
    /// The OIDC subject (`sub`) whose account this is, when `openid` was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Space-separated granted scopes.
    pub scope: String,
    /// Whether the provider issued a refresh token.
    pub refresh_token: bool,
    /// OAuth 1.0a: token credentials were stored (they do not expire;
    /// there is no refresh token).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_credentials: bool,
}

/// Parameters of `token.revoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevokeParams {
    /// Credential name.
    pub credential: String,
    /// Only forget the tokens locally (for providers without a revocation endpoint).
    #[serde(default)]
    pub local_only: bool,
}

/// Result of `token.revoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevokeResult {
    /// Tokens revoked at the provider, e.g. `["refresh_token", "access_token"]`.
    pub revoked: Vec<String>,
    /// Tokens forgotten locally.
    pub forgotten: u32,
}

/// Parameters of `vault.panic`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PanicParams {
    /// Only this provider's credentials; all when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// One credential's outcome in `vault.panic`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PanicEntry {
    /// Credential name.
    pub credential: String,
    /// Tokens revoked at the provider.
    pub revoked: Vec<String>,
    /// Why revocation at the provider failed or was impossible, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Result of `vault.panic`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PanicResult {
    /// Per credential.
    pub credentials: Vec<PanicEntry>,
    /// The vault was locked afterwards.
    pub locked: bool,
}

/// An empty result or empty parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

/// The most rows one `audit.list` call returns.
pub const AUDIT_LIST_MAX: u32 = 1000;

/// Parameters of `audit.list`. Rows come oldest first; each call looks at a
/// bounded stretch of the log, so a page may hold fewer than `limit` rows
/// (even none) while `more` is true: call again with `after_seq = next`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditListParams {
    /// Only rows at or after this Unix time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Only rows about this credential (its exact name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Only rows of this app: its exact key (`exe:/usr/bin/curl`,
    /// `key:ci`, `unknown`) or a part of its label (`curl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Only rows after this seq (a previous result's `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<i64>,
    /// At most this many rows (default 100, at most [`AUDIT_LIST_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One row of the audit log. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the log: increasing, never reused.
    pub seq: i64,
    /// Unix seconds.
    pub at: i64,
    /// What happened: `unlock`, `unlock_failed`, `login`, `token_issued`, …
    pub event: String,
    /// The credential it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The verified app identity, as people read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The app's stable key (`exe:/usr/bin/curl`, `key:ci`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_key: Option<String>,
    /// The process that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `ok`, `failed` or `denied`; absent in rows older than outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Details (names, scopes, kinds, counts), with the sealed ones
    /// (whose account) opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Chained after it was written: written while the vault was locked
    /// (or queued behind such rows), chained at a later unlock.
    #[serde(default)]
    pub chained_late: bool,
    /// Covered by the MAC chain (false only until the writer chains it).
    #[serde(default)]
    pub chained: bool,
}

/// Result of `audit.list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditListResult {
    /// The rows, oldest first.
    pub rows: Vec<AuditEntry>,
    /// Pass as `after_seq` to continue (or, with `more` false, to follow).
    pub next: i64,
    /// Whether the log goes on after `next`.
    pub more: bool,
}

/// How the audit log was found broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditBreak {
    /// A row's content or MAC was changed.
    Edited,
    /// Rows were deleted from the log.
    Missing,
    /// Rows were moved or swapped.
    OutOfOrder,
    /// The log's last rows were removed.
    Truncated,
    /// The sealed head of the chain was deleted.
    HeadMissing,
    /// The sealed head failed its integrity check.
    HeadCorrupt,
    /// A kind this client version does not know.
    #[serde(other)]
    Unknown,
}

/// Where and how the audit log was found broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProblem {
    /// What kind of change.
    pub kind: AuditBreak,
    /// The first row it concerns, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// What was found and what to do, for people.
    pub message: String,
}

/// Result of `audit.verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerifyResult {
    /// The chain holds: no row was edited, deleted, reordered or cut off.
    pub ok: bool,
    /// Rows whose MAC was checked.
    pub checked: u64,
    /// Of those, rows chained late (written while locked, chained at an unlock).
    pub chained_late: u64,
    /// Rows not chained yet (written while locked; chained at the next
    /// unlock), not checked.
    pub unchained: u64,
    /// The first row the chain keeps (older ones went by retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<i64>,
    /// The last row the chain covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<i64>,
    /// The first break found, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<AuditProblem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_round_trip_and_codes_are_unique() {
        let kinds = [
            ErrorKind::ParseError,
            ErrorKind::InvalidRequest,
            ErrorKind::MethodNotFound,
            ErrorKind::InvalidParams,
            ErrorKind::FrameTooLarge,
            ErrorKind::UnsupportedProtocol,
            ErrorKind::NotInitialized,
            ErrorKind::AlreadyInitialized,
            ErrorKind::Locked,
            ErrorKind::WrongPassphrase,
            ErrorKind::KeyringUnavailable,
            ErrorKind::VaultCorrupt,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::Forbidden,
            ErrorKind::ReauthRequired,
            ErrorKind::RateLimited,
            ErrorKind::ProviderUnavailable,
            ErrorKind::ProviderError,
            ErrorKind::ShuttingDown,
            ErrorKind::VaultUnavailable,
            ErrorKind::Internal,
        ];
        let mut codes = std::collections::HashSet::new();
        for kind in kinds {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), kind);
            assert!(codes.insert(kind.code()), "duplicate code for {kind}");
        }
        assert_eq!(ErrorKind::ReauthRequired.code(), -32010);
        let unknown: ErrorKind = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(unknown, ErrorKind::Unknown);
    }

    #[test]
    fn token_reply_debug_hides_the_token() {
        let reply = TokenReply {
            access_token: SecretString::from("canary-token-123"),
            token_type: "Bearer".into(),
            expires_at: Some(1),
            scope: "a b".into(),
        };
        assert!(!format!("{reply:?}").contains("canary-token-123"));
        assert!(serde_json::to_string(&reply)
            .unwrap()
            .contains("canary-token-123"));
    }

    #[test]
    fn token_reply_round_trips() {
        let reply = TokenReply {
            access_token: SecretString::from("canary-token-123"),
            token_type: "Bearer".into(),
            expires_at: None,
            scope: "a b".into(),
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            json,
            r#"{"access_token":"canary-token-123","token_type":"Bearer","expires_at":null,"scope":"a b"}"#
        );
        let back: TokenReply = serde_json::from_str(&json).unwrap();
        assert_eq!(back.access_token.expose_secret(), "canary-token-123");
        assert_eq!(back.token_type, reply.token_type);
        assert_eq!(back.expires_at, reply.expires_at);
        assert_eq!(back.scope, reply.scope);
    }

    #[test]
    fn method_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for (name, _) in METHODS {
            assert!(names.insert(*name), "duplicate method name {name}");
        }
        assert_eq!(METHODS.len(), 55);
    }

    #[test]
    fn exactly_the_looking_methods_are_read_only() {
        let mut read_only: Vec<&str> = METHODS
            .iter()
            .filter(|(_, read_only)| *read_only)
            .map(|(name, _)| *name)
            .collect();
        read_only.sort_unstable();
        assert_eq!(
            read_only,
            [
                "app.list",
                "approval.attach",
                "approval.next",
                "audit.list",
                "audit.verify",
                "credential.jwks",
                "credential.list",
                "credential.show",
                "daemon.stats",
                "git.route_list",
                "hello",
                "provider.check",
                "provider.list",
                "provider.show",
                "slot.list",
                "status",
                "totp.status",
            ]
        );
        assert_eq!((Status::READ_ONLY, TokenGet::READ_ONLY), (true, false));
        assert_eq!(TokenGet::NAME, "token.get");
    }

    #[test]
    fn empty_results_and_lists_keep_their_wire_shape() {
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
        let list: <ProviderList as Method>::Result = serde_json::from_str("[]").unwrap();
        assert!(list.is_empty());
    }

    #[test]
    fn unix_now_is_in_seconds() {
        // 2023-11-14 and 2100-01-01: seconds, not milliseconds.
        assert!((1_700_000_000..4_102_444_800).contains(&unix_now()));
    }

    #[test]
    fn request_matches_the_documented_shape() {
        let req = Request {
            jsonrpc: "2.0",
            id: 1,
            method: TokenGet::NAME,
            params: TokenParams {
                credential: "github".into(),
                scopes: None,
                min_ttl: Some(60),
                confirm_wait_secs: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"jsonrpc":"2.0","id":1,"method":"token.get","params":{"credential":"github","min_ttl":60}}"#
        );
    }
}
