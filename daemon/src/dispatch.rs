//! One request line in, one reply line out: parse the JSON-RPC envelope,
//! route the method to the daemon's verb, and write the result or the
//! error with its stable kind. Never echoes request content in errors.

use crate::error::ApiError;
use crate::state::{Daemon, Peer};
use crate::{lifecycle, login, manage, revoke, token};
use latchkey_client::protocol::{
    method, ErrorKind, HelloParams, HelloResult, NameParams, PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// Methods that only look: they never reset the auto-lock clock.
const READ_ONLY: &[&str] = &[
    method::HELLO,
    method::STATUS,
    method::PROVIDER_LIST,
    method::PROVIDER_SHOW,
    method::CREDENTIAL_LIST,
    method::CREDENTIAL_SHOW,
    method::DAEMON_STATS,
];

/// What the connection should do after the reply is written.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Close,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(default, borrow)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

/// Handles one request line, appending exactly one reply line to `out`.
pub async fn handle(daemon: &Arc<Daemon>, peer: Peer, line: &[u8], out: &mut Vec<u8>) -> After {
    let Ok(text) = std::str::from_utf8(line) else {
        write_error(
            out,
            None,
            &ApiError::new(
                ErrorKind::ParseError,
                "the request is not valid UTF-8; send one UTF-8 JSON object per line",
            ),
        );
        return After::Close;
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
            return After::Continue;
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
            return After::Close;
        }
    };
    let id = request.id;
    if request.jsonrpc.as_deref().is_some_and(|v| v != "2.0") {
        write_error(
            out,
            id,
            &ApiError::new(
                ErrorKind::InvalidRequest,
                "unsupported \"jsonrpc\" version: use \"2.0\"",
            ),
        );
        return After::Continue;
    }
    let params = request.params;
    let name = request.method.as_ref();
    // Read-only calls do not count as use of the vault: a status bar or a
    // script polling them must not keep it unlocked forever. Everything
    // else (above all `token.get`) resets the auto-lock clock.
    if !READ_ONLY.contains(&name) {
        daemon.touch();
    }
    match name {
        method::HELLO => respond(
            out,
            id,
            parse::<HelloParams>(name, params).map(|p| hello(&p)),
        ),
        method::STATUS => respond(out, id, lifecycle::status(daemon)),
        method::TOKEN_GET => match parse(name, params) {
            Ok(p) => respond(out, id, token::get(daemon, p, peer).await.map(Served)),
            Err(e) => write_error(out, id, &e),
        },
        method::VAULT_INIT => match parse(name, params) {
            Ok(p) => respond(out, id, lifecycle::init(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::VAULT_UNLOCK => match parse(name, params) {
            Ok(p) => respond(out, id, lifecycle::unlock(daemon, p, peer).await),
            Err(e) => write_error(out, id, &e),
        },
        method::VAULT_LOCK => respond(out, id, Ok(lifecycle::lock_now(daemon).await)),
        method::VAULT_CHANGE_PASSPHRASE => match parse(name, params) {
            Ok(p) => respond(out, id, lifecycle::change_passphrase(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::VAULT_REKEY => match parse(name, params) {
            Ok(p) => respond(out, id, lifecycle::rekey(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::PROVIDER_ADD => match parse(name, params) {
            Ok(p) => respond(out, id, manage::provider_add(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::PROVIDER_LIST => respond(out, id, manage::provider_list(daemon)),
        method::PROVIDER_SHOW => respond(
            out,
            id,
            parse::<NameParams>(name, params).and_then(|p| manage::provider_show(daemon, &p.name)),
        ),
        method::PROVIDER_REMOVE => respond(
            out,
            id,
            parse::<NameParams>(name, params)
                .and_then(|p| manage::provider_remove(daemon, &p.name)),
        ),
        method::CREDENTIAL_ADD => respond(
            out,
            id,
            parse(name, params).and_then(|p| manage::credential_add(daemon, p)),
        ),
        method::CREDENTIAL_LIST => respond(out, id, manage::credential_list(daemon)),
        method::CREDENTIAL_SHOW => respond(
            out,
            id,
            parse::<NameParams>(name, params)
                .and_then(|p| manage::credential_show(daemon, &p.name)),
        ),
        method::CREDENTIAL_REMOVE => match parse(name, params) {
            Ok(p) => respond(out, id, revoke::credential_remove(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::LOGIN_START => match parse(name, params) {
            Ok(p) => respond(out, id, login::start(daemon, p, peer).await),
            Err(e) => write_error(out, id, &e),
        },
        method::LOGIN_WAIT => match parse(name, params) {
            Ok(p) => respond(out, id, login::wait(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::TOKEN_REVOKE => match parse(name, params) {
            Ok(p) => respond(out, id, revoke::revoke(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::VAULT_PANIC => match parse(name, params) {
            Ok(p) => respond(out, id, revoke::panic(daemon, p).await),
            Err(e) => write_error(out, id, &e),
        },
        method::DAEMON_STATS => respond(out, id, token::stats(daemon)),
        method::DAEMON_SHUTDOWN => {
            daemon
                .audit
                .record("shutdown_requested", None, Some(peer.pid), None);
            daemon.shutdown.notify_one();
            respond(out, id, Ok(latchkey_client::protocol::Empty {}))
        }
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

/// A cached token as the reply to `token.get`: serialized straight from
/// the cache, without a copy of the secret.
struct Served(Arc<crate::vault::Token>);

impl Serialize for Served {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        self.0.reply.serialize(ser)
    }
}

fn hello(params: &HelloParams) -> HelloResult {
    if params.protocol != PROTOCOL_VERSION {
        tracing::info!(
            client = params.protocol,
            ours = PROTOCOL_VERSION,
            "client speaks another protocol version"
        );
    }
    HelloResult {
        protocol: PROTOCOL_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    }
}

/// Parses a method's parameters. serde's messages can quote the offending
/// value, which may be a secret sent in the wrong field: only messages that
/// name fields or variants are passed on.
fn parse<T: DeserializeOwned>(method: &str, params: Option<&RawValue>) -> Result<T, ApiError> {
    let raw = params.map_or("{}", |p| p.get());
    serde_json::from_str(raw).map_err(|e| {
        let text = e.to_string();
        let safe = ["missing field", "unknown field", "unknown variant"]
            .iter()
            .any(|prefix| text.starts_with(prefix));
        let detail = if safe {
            text.split(" at line").next().unwrap_or_default().to_owned()
        } else {
            format!(
                "a parameter has the wrong type or value (column {})",
                e.column()
            )
        };
        ApiError::invalid_params(format!("invalid parameters for {method}: {detail}"))
    })
}

fn respond<T: Serialize>(out: &mut Vec<u8>, id: Option<&RawValue>, result: Result<T, ApiError>) {
    match result {
        Ok(value) => {
            let start = out.len();
            out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
            out.extend_from_slice(id.map_or("null", |i| i.get()).as_bytes());
            out.extend_from_slice(b",\"result\":");
            if let Err(e) = serde_json::to_writer(&mut *out, &value) {
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
        Err(e) => write_error(out, id, &e),
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

fn write_error(out: &mut Vec<u8>, id: Option<&RawValue>, error: &ApiError) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.map_or("null", |i| i.get()).as_bytes());
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

/// The reply for a request line longer than the limit.
pub fn too_large(out: &mut Vec<u8>) {
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
