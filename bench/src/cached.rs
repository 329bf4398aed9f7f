//! Part 2: `token.get` answered from the daemon's cache, through the
//! async client library exactly as an application calls it
//! (`client.token(name)`), plus the sampling of one real request and reply
//! line whose sizes (and bytes) the raw baseline reuses.

use crate::daemon::CREDENTIAL;
use crate::load::Conn;
use anyhow::{bail, Context, Result};
use latchkey_client::protocol::{Method, Request, TokenGet, TokenParams};
use latchkey_client::Client;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// One client-library connection (it says `hello` when it connects).
pub struct LatchkeyConn {
    client: Client,
}

impl LatchkeyConn {
    pub async fn connect(socket: &Path) -> Result<LatchkeyConn> {
        let client = Client::connect_to(socket)
            .await
            .context("failed to connect to latchkeyd")?;
        Ok(LatchkeyConn { client })
    }
}

impl Conn for LatchkeyConn {
    async fn round_trip(&mut self) -> Result<()> {
        let token = self.client.token(CREDENTIAL).await?;
        drop(token);
        Ok(())
    }
}

/// The request line the client library sends for `token.get` (same
/// serializer, same shape), with a mid-run id, `\n` included.
pub fn request_line(id: u64) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&Request {
        jsonrpc: "2.0",
        id,
        method: TokenGet::NAME,
        params: TokenParams {
            credential: CREDENTIAL.into(),
            ..TokenParams::default()
        },
    })?;
    line.push(b'\n');
    Ok(line)
}

/// Sends `request` to the daemon over a bare socket and returns the reply
/// line, `\n` included.
pub async fn sample_reply(socket: &Path, request: &[u8]) -> Result<Vec<u8>> {
    let stream = UnixStream::connect(socket)
        .await
        .context("failed to connect to latchkeyd")?;
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(request).await?;
    let mut reply = Vec::new();
    reader.read_until(b'\n', &mut reply).await?;
    if !reply.ends_with(b"\n") || !reply.windows(8).any(|w| w == b"\"result\"") {
        bail!(
            "unexpected token.get reply: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(reply)
}
