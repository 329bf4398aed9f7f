//! One request line in, one reply line out: parse the JSON-RPC envelope,
//! route the method by name to its [`Handler`], and write the result (as
//! the method's protocol type) or the error with its stable kind. Never
//! echoes request content in errors.

use crate::error::ApiError;
use crate::handler::Handler;
use crate::oauth::text::provider_text;
use crate::state::{Daemon, Peer};
use latchkey_client::framing::SecretBuf;
use latchkey_client::protocol::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// What the connection should do after the reply is written.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Close,
}

/// A request's envelope, borrowing from the line.
#[derive(Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(crate) method: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) params: Option<&'a RawValue>,
}

/// Handles one request line, appending exactly one reply line to `out`
/// (the connection does the same in two steps, [`envelope`] and [`route`]).
#[cfg(test)]
pub async fn handle(daemon: &Arc<Daemon>, peer: &Peer, line: &[u8], out: &mut SecretBuf) -> After {
    match envelope(line, out) {
        Ok(request) => route(daemon, peer, request, out).await,
        Err(after) => after,
    }
}

/// Runs a request whose envelope [`envelope`] read, appending exactly one
/// reply line to `out`. A step of its own so the connection can look at
/// the method first (`login.wait`) without parsing the line twice.
pub async fn route(
    daemon: &Arc<Daemon>,
    peer: &Peer,
    request: Incoming<'_>,
    out: &mut SecretBuf,
) -> After {
    let id = request.id;
    let params = request.params;
    let run = Call {
        daemon,
        peer,
        id,
        params,
    };
    // One line per method: its type says its parameters, its result and
    // whether it only looks; its `Handler` impl lives with its verb.
    match request.method.as_ref() {
        Hello::NAME => run.method::<Hello>(out).await,
        Status::NAME => run.method::<Status>(out).await,
        VaultInit::NAME => run.method::<VaultInit>(out).await,
        VaultUnlock::NAME => run.method::<VaultUnlock>(out).await,
        VaultLock::NAME => run.method::<VaultLock>(out).await,
        VaultChangePassphrase::NAME => run.method::<VaultChangePassphrase>(out).await,
        VaultRekey::NAME => run.method::<VaultRekey>(out).await,
        VaultPanic::NAME => run.method::<VaultPanic>(out).await,
        CredentialSet::NAME => run.method::<CredentialSet>(out).await,
        CredentialSetSecret::NAME => run.method::<CredentialSetSecret>(out).await,
        CredentialConfirm::NAME => run.method::<CredentialConfirm>(out).await,
        TotpEnroll::NAME => run.method::<TotpEnroll>(out).await,
        TotpConfirm::NAME => run.method::<TotpConfirm>(out).await,
        TotpRemove::NAME => run.method::<TotpRemove>(out).await,
        TotpStatus::NAME => run.method::<TotpStatus>(out).await,
        AppAdd::NAME => run.method::<AppAdd>(out).await,
        AppList::NAME => run.method::<AppList>(out).await,
        AppAllow::NAME => run.method::<AppAllow>(out).await,
        AppDeny::NAME => run.method::<AppDeny>(out).await,
        AppRemove::NAME => run.method::<AppRemove>(out).await,
        ApprovalAttach::NAME => run.method::<ApprovalAttach>(out).await,
        ApprovalNext::NAME => run.method::<ApprovalNext>(out).await,
        ApprovalDecide::NAME => run.method::<ApprovalDecide>(out).await,
        ProviderAdd::NAME => run.method::<ProviderAdd>(out).await,
        ProviderList::NAME => run.method::<ProviderList>(out).await,
        ProviderShow::NAME => run.method::<ProviderShow>(out).await,
        ProviderRemove::NAME => run.method::<ProviderRemove>(out).await,
        CredentialAdd::NAME => run.method::<CredentialAdd>(out).await,
        CredentialList::NAME => run.method::<CredentialList>(out).await,
        CredentialShow::NAME => run.method::<CredentialShow>(out).await,
        CredentialRemove::NAME => run.method::<CredentialRemove>(out).await,
        TokenGet::NAME => run.method::<TokenGet>(out).await,
        TokenRevoke::NAME => run.method::<TokenRevoke>(out).await,
        LoginStart::NAME => run.method::<LoginStart>(out).await,
        LoginWait::NAME => run.method::<LoginWait>(out).await,
        DaemonStats::NAME => run.method::<DaemonStats>(out).await,
        DaemonShutdown::NAME => run.method::<DaemonShutdown>(out).await,
        AuditList::NAME => run.method::<AuditList>(out).await,
        AuditVerify::NAME => run.method::<AuditVerify>(out).await,
        GitRouteAdd::NAME => run.method::<GitRouteAdd>(out).await,
        GitRouteList::NAME => run.method::<GitRouteList>(out).await,
        GitRouteRemove::NAME => run.method::<GitRouteRemove>(out).await,
        GitGet::NAME => run.method::<GitGet>(out).await,
        GitErase::NAME => run.method::<GitErase>(out).await,
        ProviderCheck::NAME => run.method::<ProviderCheck>(out).await,
        Oauth1ImportToken::NAME => run.method::<Oauth1ImportToken>(out).await,
        Oauth1Sign::NAME => run.method::<Oauth1Sign>(out).await,
        ProxyStart::NAME => run.method::<ProxyStart>(out).await,
        ProxyWait::NAME => run.method::<ProxyWait>(out).await,
        CredentialJwks::NAME => run.method::<CredentialJwks>(out).await,
        CredentialRotateKey::NAME => run.method::<CredentialRotateKey>(out).await,
        DpopProof::NAME => run.method::<DpopProof>(out).await,
        SlotAdd::NAME => run.method::<SlotAdd>(out).await,
        SlotList::NAME => run.method::<SlotList>(out).await,
        SlotRemove::NAME => run.method::<SlotRemove>(out).await,
        other => {
            let shown: String = other.chars().take(64).filter(|c| !c.is_control()).collect();
            write_error(
                out,
                id,
                &ApiError::new(
                    ErrorKind::MethodNotFound,
                    format!("unknown method '{shown}': see the protocol section of the README"),
                ),
            );
        }
    }
    After::Continue
}

/// Reads the envelope of one request line: valid UTF-8, a JSON object, a
/// request, JSON-RPC 2.0. On failure the error reply is already in `out`
/// and the `Err` says what the connection does next.
pub(crate) fn envelope<'a>(line: &'a [u8], out: &mut SecretBuf) -> Result<Incoming<'a>, After> {
    let Ok(text) = std::str::from_utf8(line) else {
        write_error(
            out,
            None,
            &ApiError::new(
                ErrorKind::ParseError,
                "the request is not valid UTF-8; send one UTF-8 JSON object per line",
            ),
        );
        return Err(After::Close);
    };
    // JSON-RPC 2.0 §4: a request is an object. serde would also accept a
    // struct written as a positional array; refuse that shape up front.
    let parsed: Result<Incoming<'_>, serde_json::Error> = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
    } else {
        Err(serde::de::Error::custom("a request must be a JSON object"))
    };
    let request: Incoming<'_> = match parsed {
        Ok(r) => r,
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            write_error(out, None, &ApiError::new(ErrorKind::InvalidRequest, "the message is JSON but not a request: send {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"...\",\"params\":{...}}"));
            return Err(After::Continue);
        }
        Err(_) => {
            write_error(
                out,
                None,
                &ApiError::new(
                    ErrorKind::ParseError,
                    "the request is not valid JSON; send one JSON object per line",
                ),
            );
            return Err(After::Close);
        }
    };
    if request.jsonrpc.as_deref().is_some_and(|v| v != "2.0") {
        write_error(
            out,
            request.id,
            &ApiError::new(
                ErrorKind::InvalidRequest,
                "unsupported \"jsonrpc\" version: use \"2.0\"",
            ),
        );
        return Err(After::Continue);
    }
    Ok(request)
}

/// One parsed request on its way to its method.
struct Call<'a> {
    daemon: &'a Arc<Daemon>,
    peer: &'a Peer,
    id: Option<&'a RawValue>,
    params: Option<&'a RawValue>,
}

impl Call<'_> {
    /// Parses the parameters as `M`'s, runs its handler and writes the reply.
    async fn method<M: Handler>(self, out: &mut SecretBuf) {
        // The app's rate limit, before anything else: a refused call does
        // nothing (not even count as use of the vault).
        if !unlimited(M::NAME) {
            if let Err(e) = self.daemon.limits.call(self.peer, M::NAME) {
                write_error(out, self.id, &e);
                return;
            }
        }
        // Read-only calls do not count as use of the vault: a status bar or
        // a script polling them must not keep it unlocked forever.
        // Everything else (above all `token.get`) resets the auto-lock clock.
        if !M::READ_ONLY {
            self.daemon.touch();
        }
        // A connection that presented an app key is that app only once the
        // key checks out; one that presented a wrong key gets nothing.
        let settled = match M::NAME {
            Hello::NAME | Status::NAME => Ok(()),
            _ => crate::apps::settle_key(self.daemon, self.peer),
        };
        let result = match settled.and_then(|()| parse::<M::Params>(M::NAME, self.params)) {
            Ok(params) => M::handle(self.daemon, self.peer.clone(), params).await,
            Err(e) => Err(e),
        };
        if !M::READ_ONLY && self.daemon.fleet.is_some() {
            // A shared vault's other daemons read the catalog again.
            if let Ok(session) = self.daemon.session() {
                if session.take_catalog_change() {
                    self.daemon
                        .tell_fleet(crate::vault::fleet::Change::Catalog)
                        .await;
                }
            }
        }
        match result {
            Ok(reply) => respond::<M>(out, self.id, &reply),
            Err(e) => write_error(out, self.id, &e),
        }
    }
}

/// The methods no rate limit refuses: `hello`, the connection's handshake
/// (answered from memory; refusing it would fail the connect itself, not
/// a call), and `vault.lock` and `vault.panic`, which only take access
/// away and must work in an incident, even from a terminal whose shell is
/// the same app as a runaway script. (A `vault.panic` that finds the vault
/// locked revokes nothing, so repeating it cannot storm a provider.)
fn unlimited(method: &str) -> bool {
    [Hello::NAME, VaultLock::NAME, VaultPanic::NAME].contains(&method)
}

/// Parses a method's parameters. serde's messages can quote the offending
/// value, which may be a secret sent in the wrong field: only messages that
/// name fields or variants are passed on.
pub(crate) fn parse<T: DeserializeOwned>(
    method: &str,
    params: Option<&RawValue>,
) -> Result<T, ApiError> {
    // Absent (or null) parameters are no parameters.
    let raw = params.map_or("{}", |p| p.get());
    let raw = if raw == "null" { "{}" } else { raw };
    serde_json::from_str(raw).map_err(|e| {
        let text = e.to_string();
        let safe = ["missing field", "unknown field", "unknown variant"]
            .iter()
            .any(|prefix| text.starts_with(prefix));
        let detail = if text.starts_with("unknown variant") {
            // serde quotes the value ("unknown variant `VALUE`, expected
            // one of …"), which may be a secret: name only the choices.
            let expected = text.split(" at line").next().unwrap_or_default();
            match expected.rfind(", expected ") {
                Some(i) => format!("unknown variant{}", &expected[i..]),
                None => "unknown variant".to_owned(),
            }
        } else if safe {
            provider_text(text.split(" at line").next().unwrap_or_default(), &[])
        } else {
            format!(
                "a parameter has the wrong type or value (column {})",
                e.column()
            )
        };
        ApiError::invalid_params(format!("invalid parameters for {method}: {detail}"))
    })
}

fn respond<M: Handler>(out: &mut SecretBuf, id: Option<&RawValue>, reply: &M::Reply) {
    let start = out.len();
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    write_id(out, id);
    out.extend_from_slice(b",\"result\":");
    if let Err(e) = M::write_result(reply, out) {
        out.truncate(start);
        write_error(
            out,
            id,
            &ApiError::internal(format!("cannot encode the reply: {e}")),
        );
        return;
    }
    out.extend_from_slice(b"}\n");
}

/// The request's id as it came, unless it spans lines (whitespace inside
/// an object or array id): a reply is one line, so that one is written
/// again compactly.
fn write_id(out: &mut SecretBuf, id: Option<&RawValue>) {
    let raw = id.map_or("null", |i| i.get());
    if !raw.contains(['\n', '\r']) {
        out.extend_from_slice(raw.as_bytes());
        return;
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(value) => {
            serde_json::to_writer(&mut *out, &value).expect("a JSON value serializes");
        }
        Err(_) => out.extend_from_slice(b"null"),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i64,
    message: &'a str,
    data: ErrorData,
}

#[derive(Serialize)]
struct ErrorData {
    kind: ErrorKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

pub(crate) fn write_error(out: &mut SecretBuf, id: Option<&RawValue>, error: &ApiError) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    write_id(out, id);
    out.extend_from_slice(b",\"error\":");
    let body = ErrorBody {
        code: error.kind.code(),
        message: &error.message,
        data: ErrorData {
            kind: error.kind,
            retry_after: error.retry_after,
        },
    };
    serde_json::to_writer(&mut *out, &body).expect("an error body always serializes");
    out.extend_from_slice(b"}\n");
}

/// An error reply to no request (`id` null): a connection refused at accept.
pub fn error_frame(out: &mut SecretBuf, error: &ApiError) {
    write_error(out, None, error);
}

/// The reply for a request line longer than the limit.
pub fn too_large(out: &mut SecretBuf) {
    write_error(
        out,
        None,
        &ApiError::new(
            ErrorKind::FrameTooLarge,
            format!(
                "the request exceeds {} bytes; requests are single JSON lines well under that",
                latchkey_client::protocol::MAX_REQUEST_LEN
            ),
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::Config;
    use crate::vault::keyring::BackendChoice;

    /// Every method of the protocol reaches a handler: none answers
    /// `method_not_found`, and an unknown name does.
    #[tokio::test]
    async fn every_protocol_method_is_routed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let daemon = Daemon::new(Config {
            vault: crate::vault::store::Location::File(dir.path().join("vault.db")),
            socket_path: dir.path().join("sock"),
            idle_timeout: std::time::Duration::ZERO,
            frame_timeout: std::time::Duration::from_secs(1),
            max_connections: 8,
            connection_idle_timeout: std::time::Duration::ZERO,
            passphrase_file: None,
            key_file: None,
            keyring: BackendChoice::Auto,
            cli_path: None,
            approval_timeout: std::time::Duration::from_secs(60),
            notify: false,
            audit_retention: crate::vault::Retention::DEFAULT,
            rate_limits: crate::ratelimit::RateLimits::DEFAULT,
            clock: Clock::Wall,
        })
        .expect("no vault yet is fine");
        let peer = Peer::unidentified(1);
        let kind = |out: &[u8]| -> Option<String> {
            let reply: serde_json::Value = serde_json::from_slice(out).expect("a JSON reply");
            reply["error"]["data"]["kind"].as_str().map(str::to_owned)
        };
        for (name, _) in METHODS {
            let mut out = SecretBuf::new();
            let line = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{name}"}}"#);
            handle(&daemon, &peer, line.as_bytes(), &mut out).await;
            assert_ne!(kind(&out).as_deref(), Some("method_not_found"), "{name}");
        }
        let mut out = SecretBuf::new();
        handle(
            &daemon,
            &peer,
            br#"{"jsonrpc":"2.0","id":1,"method":"no.such"}"#,
            &mut out,
        )
        .await;
        assert_eq!(kind(&out).as_deref(), Some("method_not_found"));
    }
}
