//! Turning typed calls into request lines and reply lines into results;
//! shared by the async and blocking clients.

use crate::framing::SecretBuf;
use crate::protocol::{HelloResult, Request, RpcError, PROTOCOL_VERSION};
use crate::Error;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// 512 bytes: most requests fit without growing (growth is wiped anyway).
const ENCODE_CAPACITY: usize = 512;

/// Serializes a request as one line, `\n` included. The line may carry a
/// passphrase or client secret, so it is built in a [`SecretBuf`]: no
/// unwiped copy is left behind as it grows, and it is zeroized when dropped.
pub(crate) fn encode<P: Serialize>(id: u64, method: &str, params: &P) -> Result<SecretBuf, Error> {
    let mut line = SecretBuf::with_capacity(ENCODE_CAPACITY);
    encode_into(&mut line, id, method, params)?;
    Ok(line)
}

/// [`encode`] into `line` (cleared first), so a connection can reuse one
/// buffer for every request instead of allocating and wiping one per call.
pub(crate) fn encode_into<P: Serialize>(
    line: &mut SecretBuf,
    id: u64,
    method: &str,
    params: &P,
) -> Result<(), Error> {
    line.clear();
    serde_json::to_writer(
        &mut *line,
        &Request {
            jsonrpc: "2.0",
            id,
            method,
            params,
        },
    )
    .map_err(|e| {
        line.clear();
        Error::Protocol(format!("cannot encode {method} request: {e}"))
    })?;
    line.push(b'\n');
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
    let reply: Reply<R> = serde_json::from_slice(line)
        .map_err(|e| Error::Protocol(format!("malformed reply: {e}")))?;
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
