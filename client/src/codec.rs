//! Turning typed calls into request lines and reply lines into results;
//! shared by the async and blocking clients.

use crate::framing::SecretBuf;
use crate::protocol::{HelloResult, RpcError, PROTOCOL_VERSION};
use crate::Error;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// 512 bytes: most requests fit without growing (growth is wiped anyway).
pub(crate) const ENCODE_CAPACITY: usize = 512;

/// Appends a request as one line, `\n` included, to `line`. The line may
/// carry a passphrase or client secret, so it is built in a [`SecretBuf`]:
/// no unwiped copy is left behind as it grows. A connection
/// reuses one buffer for every request instead of allocating and wiping one
/// per call, and several requests (a `hello` and the call it precedes) can
/// go out in one write. On error `line` is as it was.
pub(crate) fn encode_into<P: Serialize>(
    line: &mut SecretBuf,
    id: u64,
    method: &str,
    params: &P,
) -> Result<(), Error> {
    let start = line.len();
    // The bytes serde writes for a `protocol::Request`, with the constant parts
    // written as they are instead of escaped anew for every call.
    line.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    let written = serde_json::to_writer(&mut *line, &id)
        .and_then(|()| {
            line.extend_from_slice(b",\"method\":");
            serde_json::to_writer(&mut *line, method)
        })
        .and_then(|()| {
            line.extend_from_slice(b",\"params\":");
            serde_json::to_writer(&mut *line, params)
        });
    if let Err(e) = written {
        line.truncate(start);
        return Err(Error::Protocol(format!(
            "cannot encode {method} request: {e}"
        )));
    }
    line.extend_from_slice(b"}\n");
    Ok(())
}

/// A reply as [`decode`] reads it: [`Response`](crate::protocol::Response) without its `jsonrpc`
/// member, which the client has no use for (not reading it saves a `String`
/// per call; unknown members are skipped either way).
#[derive(Deserialize)]
struct Reply<R> {
    id: Option<u64>,
    #[serde(default = "Option::default")]
    result: Option<R>,
    #[serde(default)]
    error: Option<RpcError>,
}

/// Parses a reply line and checks it answers request `id`.
pub(crate) fn decode<R: DeserializeOwned>(id: u64, line: &[u8]) -> Result<R, Error> {
    // UTF-8 checked once for the line: parsing bytes would check every
    // string and key on its own, which costs more than the whole line.
    let text =
        std::str::from_utf8(line).map_err(|e| Error::Protocol(format!("malformed reply: {e}")))?;
    let reply: Reply<R> =
        serde_json::from_str(text).map_err(|e| Error::Protocol(format!("malformed reply: {e}")))?;
    if let Some(error) = reply.error {
        return Err(error.into());
    }
    if reply.id != Some(id) {
        return Err(Error::Protocol(format!(
            "reply for request {:?} while waiting for {id}",
            reply.id
        )));
    }
    reply
        .result
        .ok_or_else(|| Error::Protocol("reply has neither result nor error".into()))
}

/// Whether the daemon has closed the connection on `fd` (it closes
/// connections idle for a while): peeks without waiting. Only an end of
/// stream (or a reset) counts, never data that is merely pending.
pub(crate) fn hung_up(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own; MSG_PEEK leaves any data queued,
    // MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Whether a failed write means the daemon had already closed the
/// connection (it closes idle ones): then no whole request line reached it,
/// and a line that is not whole is never run.
pub(crate) fn peer_gone(error: &Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, NotConnected};
    matches!(error, Error::Io(e) if matches!(e.kind(), BrokenPipe | ConnectionReset | NotConnected))
}

pub(crate) fn closed() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the daemon closed the connection",
    ))
}

pub(crate) fn too_long() -> Error {
    Error::Protocol("reply exceeds the size limit".into())
}

/// A daemon that speaks another protocol version is refused, with the fix.
pub(crate) fn check_protocol(hello: &HelloResult) -> Result<(), Error> {
    if hello.protocol == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Error::Protocol(format!(
        "daemon speaks protocol {} but this client speaks {PROTOCOL_VERSION}; restart the daemon with `latchkey daemon stop` so the matching version starts",
        hello.protocol
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, TokenParams};

    /// The hand-assembled envelope is byte for byte what serde writes for
    /// a [`Request`] (the daemon and the bench see the same lines).
    #[test]
    fn requests_are_encoded_as_serde_would() {
        let params = TokenParams {
            credential: "a \"quoted\" \\ name".into(),
            scopes: Some(vec!["read".into()]),
            min_ttl: Some(60),
            confirm_wait_secs: None,
        };
        for (id, method) in [(1, "token.get"), (u64::MAX, "we\"ird\n")] {
            let mut want = serde_json::to_vec(&Request {
                jsonrpc: "2.0",
                id,
                method,
                params: &params,
            })
            .unwrap();
            want.push(b'\n');
            let mut line = SecretBuf::new();
            encode_into(&mut line, id, method, &params).unwrap();
            assert_eq!(&line[..], &want[..]);
            // Appends: a hello and its call go out in one write.
            encode_into(&mut line, id, method, &params).unwrap();
            assert_eq!(&line[..], &[&want[..], &want[..]].concat()[..]);
        }
    }
}
