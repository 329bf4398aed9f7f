//! The async (tokio) client.

use crate::codec;
use crate::framing::{read_frame, Frame};
use crate::protocol::{
    method, HelloParams, HelloResult, StatusResult, TokenParams, TokenReply, MAX_REPLY_LEN,
    PROTOCOL_VERSION,
};
use crate::Error;
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use tokio::io::{AsyncWriteExt, BufReader};
use zeroize::Zeroize;

/// A connection to `latchkeyd`. Calls on one `Client` are sequential; open
/// one per task for concurrency (connections are cheap).
pub struct Client {
    reader: BufReader<Stream>,
    next_id: u64,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the daemon at the default socket path
    /// ([`socket_path`](crate::socket_path)) and checks the protocol version.
    pub async fn connect() -> Result<Client, Error> {
        Client::connect_to(&crate::socket_path()).await
    }

    /// Connects to the daemon at `path` and checks the protocol version.
    pub async fn connect_to(path: &Path) -> Result<Client, Error> {
        let connect_err = |source| Error::Connect {
            path: path.to_owned(),
            source,
        };
        let name = path.to_fs_name::<GenericFilePath>().map_err(connect_err)?;
        let stream = Stream::connect(name).await.map_err(connect_err)?;
        let mut client = Client {
            reader: BufReader::new(stream),
            next_id: 1,
            buf: Vec::with_capacity(1024),
        };
        let hello = client.hello().await?;
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "daemon speaks protocol {} but this client speaks {PROTOCOL_VERSION}; restart the daemon with `latchkey daemon stop` so the matching version starts",
                hello.protocol
            )));
        }
        Ok(client)
    }

    /// Sends any method with its parameters and returns its result.
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let line = codec::encode(id, method, params)?;
        self.reader.get_mut().write_all(&line).await?;
        match read_frame(&mut self.reader, &mut self.buf, MAX_REPLY_LEN).await? {
            Frame::Line => {
                let result = codec::decode(id, &self.buf);
                // Replies carry access tokens: do not keep them around.
                self.buf.as_mut_slice().zeroize();
                result
            }
            Frame::Eof => Err(codec::closed()),
            Frame::TooLong => Err(codec::too_long()),
        }
    }

    /// `hello`: the daemon's protocol and version.
    pub async fn hello(&mut self) -> Result<HelloResult, Error> {
        let params = HelloParams {
            protocol: PROTOCOL_VERSION,
        };
        self.call(method::HELLO, &params).await
    }

    /// `status`: vault state, slots, auto-lock timer. Does not reset the idle timer.
    pub async fn status(&mut self) -> Result<StatusResult, Error> {
        self.call(method::STATUS, &crate::protocol::Empty {}).await
    }

    /// An access token for `credential` with all its scopes.
    pub async fn token(&mut self, credential: &str) -> Result<TokenReply, Error> {
        self.token_with(&TokenParams {
            credential: credential.to_owned(),
            ..TokenParams::default()
        })
        .await
    }

    /// An access token with a scope subset and/or a minimum remaining lifetime.
    pub async fn token_with(&mut self, params: &TokenParams) -> Result<TokenReply, Error> {
        self.call(method::TOKEN_GET, params).await
    }
}
