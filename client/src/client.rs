//! The async (tokio) client.

use crate::codec;
use crate::framing::{read_frame, Frame, SecretBuf, ZeroizingReader, READ_BUFFER};
use crate::protocol::{
    Empty, Hello, HelloParams, HelloResult, Method, Status, StatusResult, TokenGet, TokenParams,
    TokenReply, MAX_REPLY_LEN, PROTOCOL_VERSION,
};
use crate::{trust, Error};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::{GenericFilePath, ToFsName};
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// A connection to `latchkeyd`. Calls on one `Client` are sequential; open
/// one per task for concurrency (connections are cheap).
pub struct Client {
    reader: ZeroizingReader<Stream>,
    next_id: u64,
    buf: SecretBuf,
    /// Where it connected: the daemon closes idle connections, and the
    /// next call connects here again (with the same checks).
    path: PathBuf,
    /// When the last reply arrived: only a connection quiet for
    /// [`IDLE_CHECK`] may have been closed by the daemon's idle timer.
    last_reply: Instant,
}

/// 1 s: a connection used more recently than this is not checked for an
/// idle close before a call (a `recv` per call that a busy client does not
/// need: the daemon's idle close comes after minutes). Should the daemon
/// have closed it anyway (restarted, or a shorter idle timeout), the write
/// fails and the call goes out on a new connection (see [`Client::call`]).
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl Client {
    /// Connects to the daemon at the default socket path
    /// ([`socket_path`](crate::socket_path)) and checks the protocol version.
    pub async fn connect() -> Result<Client, Error> {
        Client::connect_to(&crate::socket_path()).await
    }

    /// Connects to the daemon at `path` and checks the protocol version.
    /// Before any byte is sent, the socket's directory and the server's uid
    /// must be ours ([`crate::trust`]); else [`Error::Untrusted`].
    pub async fn connect_to(path: &Path) -> Result<Client, Error> {
        let connect_err = |source| Error::Connect {
            path: path.to_owned(),
            source,
        };
        trust::before_connect(path)?;
        let name = path.to_fs_name::<GenericFilePath>().map_err(connect_err)?;
        let stream = Stream::connect(name).await.map_err(connect_err)?;
        trust::check_peer(path, stream.peer_creds().map(|creds| creds.euid()))?;
        let mut client = Client {
            reader: ZeroizingReader::with_capacity(READ_BUFFER, stream),
            next_id: 1,
            buf: SecretBuf::with_capacity(1024),
            path: path.to_owned(),
            last_reply: Instant::now(),
        };
        codec::check_protocol(&client.hello().await?)?;
        Ok(client)
    }

    /// Calls method `M`: its parameters in, its result out, both typed by
    /// the [`Method`] it names, e.g. `client.request::<TokenGet>(&params)`.
    pub async fn request<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, Error> {
        self.call(M::NAME, params).await
    }

    /// The escape hatch: sends any method name with any parameters and
    /// reads the result as any type. Prefer [`request`](Self::request); this
    /// is for tools and tests that send what the protocol does not describe.
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, Error> {
        // A connection that served a call (`hello` at least) and then broke.
        let served = self.next_id > 1;
        self.reconnect_if_closed().await?;
        match self.send(method, params).await {
            // Closed by the daemon since: the line did not reach it whole,
            // so sending it on a new connection cannot run it twice.
            Err(e) if served && codec::peer_gone(&e) => {
                *self = Box::pin(Client::connect_to(&self.path)).await?;
                self.send(method, params).await?;
            }
            sent => sent?,
        }
        let id = self.next_id - 1;
        // The request line is gone (wiped); the reply is read into the same buffer.
        match read_frame(&mut self.reader, &mut self.buf, MAX_REPLY_LEN).await? {
            Frame::Line => {
                self.last_reply = Instant::now();
                let result = codec::decode(id, &self.buf);
                // Replies carry access tokens: do not keep them around.
                self.buf.clear();
                result
            }
            Frame::Eof => Err(codec::closed()),
            Frame::TooLong => Err(codec::too_long()),
        }
    }

    /// Writes one request line with the next id, built in (and wiped from)
    /// the connection's buffer: no allocation per call.
    async fn send<P: Serialize>(&mut self, method: &str, params: &P) -> Result<(), Error> {
        let id = self.next_id;
        self.next_id += 1;
        codec::encode_into(&mut self.buf, id, method, params)?;
        let written = self.reader.get_mut().write_all(&self.buf).await;
        self.buf.clear();
        Ok(written?)
    }

    /// Connects again when the daemon closed this connection while it was
    /// idle. Only a connection that served a call, has been quiet for
    /// [`IDLE_CHECK`] and has ended since is replaced, before anything is
    /// sent on it, so no request is ever sent twice (and a daemon refusing
    /// new connections is not retried forever).
    async fn reconnect_if_closed(&mut self) -> Result<(), Error> {
        let served = self.next_id > 1;
        if !served
            || self.last_reply.elapsed() < IDLE_CHECK
            || self.reader.has_buffered()
            || !codec::hung_up(stream_fd(self.reader.get_ref()))
        {
            return Ok(());
        }
        *self = Box::pin(Client::connect_to(&self.path)).await?;
        Ok(())
    }

    /// `hello`: the daemon's protocol and version.
    pub async fn hello(&mut self) -> Result<HelloResult, Error> {
        let params = HelloParams {
            protocol: PROTOCOL_VERSION,
            app_key: crate::app_key_from_env(),
        };
        self.request::<Hello>(&params).await
    }

    /// `status`: vault state, slots, auto-lock timer. Does not reset the idle timer.
    pub async fn status(&mut self) -> Result<StatusResult, Error> {
        self.request::<Status>(&Empty {}).await
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
        self.request::<TokenGet>(params).await
    }

    /// A DPoP proof (RFC 9449) for one request — `method` and the full
    /// `url` — with the DPoP-bound token of `credential` it is for. Send
    /// `Authorization: DPoP <token>` and `DPoP: <proof>`; when the resource
    /// server answers with a `DPoP-Nonce`, ask again with `nonce`. The key
    /// stays in the daemon.
    pub async fn dpop_proof(
        &mut self,
        credential: &str,
        method: &str,
        url: &str,
        nonce: Option<&str>,
    ) -> Result<crate::protocol::DpopProofResult, Error> {
        self.request::<crate::protocol::DpopProof>(&crate::protocol::DpopProofParams {
            credential: credential.to_owned(),
            method: method.to_owned(),
            url: url.to_owned(),
            nonce: nonce.map(str::to_owned),
            scopes: Vec::new(),
            min_ttl: None,
        })
        .await
    }

    /// The `Authorization` header value (`OAuth …`) for one request signed
    /// with the OAuth 1.0a credential `credential`: `method`, the full `url`
    /// (query included) and the decoded form body parameters, if any. The
    /// consumer and token secrets stay in the daemon.
    pub async fn oauth1_sign(
        &mut self,
        credential: &str,
        method: &str,
        url: &str,
        form: &[(String, String)],
    ) -> Result<secrecy::SecretString, Error> {
        let params = crate::protocol::Oauth1SignParams {
            credential: credential.to_owned(),
            method: method.to_owned(),
            url: url.to_owned(),
            form: form.to_vec(),
        };
        Ok(self
            .request::<crate::protocol::Oauth1Sign>(&params)
            .await?
            .authorization)
    }
}

fn stream_fd(stream: &Stream) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    match stream {
        Stream::UdSocket(s) => s.as_fd(),
    }
}
