//! The blocking client, for programs without an async runtime (the CLI uses it).

use crate::codec;
use crate::framing::{read_frame_blocking, Frame, SecretBuf, ZeroizingReader, READ_BUFFER};
use crate::protocol::{
    Empty, Hello, HelloParams, HelloResult, Method, Status, StatusResult, TokenGet, TokenParams,
    TokenReply, MAX_REPLY_LEN, PROTOCOL_VERSION,
};
use crate::{trust, Error};
use interprocess::local_socket::{prelude::*, GenericFilePath, Stream};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// A blocking connection to `latchkeyd`; same calls as [`crate::Client`].
pub struct Client {
    reader: ZeroizingReader<Stream>,
    next_id: u64,
    buf: SecretBuf,
}

impl Client {
    /// Connects to the daemon at the default socket path and checks the protocol version.
    pub fn connect() -> Result<Client, Error> {
        Client::connect_to(&crate::socket_path())
    }

    /// Connects to the daemon at `path` and checks the protocol version.
    /// Before any byte is sent, the socket's directory and the server's uid
    /// must be ours ([`crate::trust`]); else [`Error::Untrusted`].
    pub fn connect_to(path: &Path) -> Result<Client, Error> {
        let connect_err = |source| Error::Connect {
            path: path.to_owned(),
            source,
        };
        trust::before_connect(path)?;
        let name = path.to_fs_name::<GenericFilePath>().map_err(connect_err)?;
        let stream = Stream::connect(name).map_err(connect_err)?;
        trust::check_peer(path, stream.peer_creds().map(|creds| creds.euid()))?;
        let mut client = Client {
            reader: ZeroizingReader::with_capacity(READ_BUFFER, stream),
            next_id: 1,
            buf: SecretBuf::with_capacity(1024),
        };
        codec::check_protocol(&client.hello()?)?;
        Ok(client)
    }

    /// Bounds how long a call waits for its reply (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.reader.get_mut().set_recv_timeout(timeout)?;
        Ok(())
    }

    /// Calls method `M`: its parameters in, its result out, both typed by
    /// the [`Method`] it names, e.g. `client.request::<TokenGet>(&params)`.
    pub fn request<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, Error> {
        self.call(M::NAME, params)
    }

    /// The escape hatch: sends any method name with any parameters and
    /// reads the result as any type. Prefer [`request`](Self::request); this
    /// is for tools and tests that send what the protocol does not describe.
    pub fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let line = codec::encode(id, method, params)?;
        self.reader.get_mut().write_all(&line)?;
        match read_frame_blocking(&mut self.reader, &mut self.buf, MAX_REPLY_LEN)? {
            Frame::Line => {
                let result = codec::decode(id, &self.buf);
                // Replies carry access tokens: do not keep them around.
                self.buf.clear();
                result
            }
            Frame::Eof => Err(codec::closed()),
            Frame::TooLong => Err(codec::too_long()),
        }
    }

    /// `hello`: the daemon's protocol and version.
    pub fn hello(&mut self) -> Result<HelloResult, Error> {
        let params = HelloParams {
            protocol: PROTOCOL_VERSION,
        };
        self.request::<Hello>(&params)
    }

    /// `status`: vault state, slots, auto-lock timer. Does not reset the idle timer.
    pub fn status(&mut self) -> Result<StatusResult, Error> {
        self.request::<Status>(&Empty {})
    }

    /// An access token for `credential` with all its scopes.
    pub fn token(&mut self, credential: &str) -> Result<TokenReply, Error> {
        self.token_with(&TokenParams {
            credential: credential.to_owned(),
            ..TokenParams::default()
        })
    }

    /// An access token with a scope subset and/or a minimum remaining lifetime.
    pub fn token_with(&mut self, params: &TokenParams) -> Result<TokenReply, Error> {
        self.request::<TokenGet>(params)
    }
}
