//! The blocking client, for programs without an async runtime (the CLI uses it).
//!
//! A process that makes one call (`latchkey token NAME`) pays for every
//! round trip in its run time, so the protocol check can travel with the
//! first request ([`Client::connect_pipelined`]): one round trip, not two.

use crate::codec::{self, ENCODE_CAPACITY};
use crate::framing::{read_frame_blocking, Frame, SecretBuf, ZeroizingReader, READ_BUFFER};
use crate::protocol::{
    Empty, Hello, HelloParams, HelloResult, Method, Status, StatusResult, TokenGet, TokenParams,
    TokenReply, MAX_REPLY_LEN, PROTOCOL_VERSION,
};
use crate::{trust, Error};
use interprocess::local_socket::{prelude::*, GenericFilePath, Stream};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A blocking connection to `latchkeyd`; same calls as [`crate::Client`].
pub struct Client {
    reader: ZeroizingReader<Stream>,
    next_id: u64,
    buf: SecretBuf,
    /// Where it connected: the daemon closes idle connections, and the
    /// next call connects here again (with the same checks).
    path: PathBuf,
    /// The reply timeout set by [`set_timeout`](Self::set_timeout), kept
    /// for a new connection.
    timeout: Option<Duration>,
    /// Whether the daemon's protocol version was checked. Until it is,
    /// every exchange starts with a `hello` in the same write.
    greeted: bool,
    /// The daemon's answer to that `hello`, once checked.
    greeting: Option<HelloResult>,
}

/// What an exchange sends: its lines, and the id of the `hello` that
/// leads them when the protocol is not checked yet.
struct Outgoing {
    lines: SecretBuf,
    hello: Option<u64>,
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
        let mut client = Client::connect_pipelined(path)?;
        client.greet()?;
        Ok(client)
    }

    /// Connects to the daemon at `path` with the same checks as
    /// [`connect_to`](Self::connect_to), but sends the protocol check in the
    /// same write as the first request and reads both replies: one round
    /// trip, not two. A daemon of another protocol version is refused as
    /// [`connect_to`](Self::connect_to) refuses it, before the reply to the
    /// request is used; but it has received the request. So use this for
    /// requests that do no harm at a daemon of another version (`token.get`,
    /// `status`), and [`connect_to`](Self::connect_to) before any other.
    pub fn connect_pipelined(path: &Path) -> Result<Client, Error> {
        let connect_err = |source| Error::Connect {
            path: path.to_owned(),
            source,
        };
        trust::before_connect(path)?;
        let name = path.to_fs_name::<GenericFilePath>().map_err(connect_err)?;
        let stream = Stream::connect(name).map_err(connect_err)?;
        trust::check_peer(path, stream.peer_creds().map(|creds| creds.euid()))?;
        Ok(Client {
            reader: ZeroizingReader::with_capacity(READ_BUFFER, stream),
            next_id: 1,
            buf: SecretBuf::with_capacity(1024),
            path: path.to_owned(),
            timeout: None,
            greeted: false,
            greeting: None,
        })
    }

    /// The protocol check alone, in its own round trip.
    fn greet(&mut self) -> Result<(), Error> {
        let out = self.start()?;
        self.send(&out)?;
        self.receive_hello(out.hello)?
    }

    /// The daemon's answer to the protocol check (its pid, version and,
    /// from newer daemons, the vault it serves), once the check was made:
    /// at once for [`connect_to`](Self::connect_to), with the first call
    /// for [`connect_pipelined`](Self::connect_pipelined).
    pub fn greeting(&self) -> Option<&HelloResult> {
        self.greeting.as_ref()
    }

    /// Bounds how long a call waits for its reply (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        self.reader.get_mut().set_recv_timeout(timeout)?;
        self.timeout = timeout;
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
        self.exchange(method, params)?
    }

    /// Like [`request`](Self::request), but tells the connection's failure
    /// from the call's: the outer error says the exchange failed before
    /// this call's reply (the write, or the protocol check of a
    /// [pipelined](Self::connect_pipelined) client); the inner result is
    /// the call's own (an error reply, or a reply that cannot be read).
    pub fn try_request<M: Method>(
        &mut self,
        params: &M::Params,
    ) -> Result<Result<M::Result, Error>, Error> {
        self.exchange(M::NAME, params)
    }

    /// One call: the `hello` first when not yet greeted, all in one write.
    fn exchange<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<Result<R, Error>, Error> {
        let mut out = self.start()?;
        let id = self.push(&mut out, method, params)?;
        self.send(&out)?;
        let greeted = self.receive_hello(out.hello)?;
        let reply = self.receive(id).and_then(|reply| reply);
        greeted?;
        Ok(reply)
    }

    /// Begins an exchange: reconnects if the daemon closed the connection,
    /// and leads with a `hello` when the protocol is not checked yet.
    fn start(&mut self) -> Result<Outgoing, Error> {
        self.reconnect_if_closed()?;
        let mut out = Outgoing {
            lines: SecretBuf::with_capacity(ENCODE_CAPACITY),
            hello: None,
        };
        if !self.greeted {
            let params = HelloParams {
                protocol: PROTOCOL_VERSION,
                app_key: crate::app_key_from_env(),
            };
            out.hello = Some(self.push(&mut out, Hello::NAME, &params)?);
        }
        Ok(out)
    }

    /// Appends a request line; returns its id.
    fn push<P: Serialize>(
        &mut self,
        out: &mut Outgoing,
        method: &str,
        params: &P,
    ) -> Result<u64, Error> {
        let id = self.next_id;
        self.next_id += 1;
        codec::encode_into(&mut out.lines, id, method, params)?;
        Ok(id)
    }

    /// Writes every line of the exchange at once.
    fn send(&mut self, out: &Outgoing) -> Result<(), Error> {
        self.reader.get_mut().write_all(&out.lines)?;
        Ok(())
    }

    /// Reads the reply to request `id`. The outer error: no reply could be
    /// read (the connection failed, or the reply is too long), so nothing
    /// more can be; the inner result is the reply's.
    fn receive<R: DeserializeOwned>(&mut self, id: u64) -> Result<Result<R, Error>, Error> {
        match read_frame_blocking(&mut self.reader, &mut self.buf, MAX_REPLY_LEN)? {
            Frame::Line => {
                let result = codec::decode(id, &self.buf);
                // Replies carry access tokens: do not keep them around.
                self.buf.clear();
                Ok(result)
            }
            Frame::Eof => Err(codec::closed()),
            Frame::TooLong => Err(codec::too_long()),
        }
    }

    /// Reads the `hello` reply, if one was asked for, and refuses a daemon
    /// that speaks another protocol version (the inner error); the outer
    /// error is as in [`receive`](Self::receive).
    fn receive_hello(&mut self, hello: Option<u64>) -> Result<Result<(), Error>, Error> {
        let Some(id) = hello else {
            return Ok(Ok(()));
        };
        let hello = match self.receive::<HelloResult>(id)? {
            Ok(hello) => hello,
            Err(err) => return Ok(Err(err)),
        };
        if let Err(refused) = codec::check_protocol(&hello) {
            return Ok(Err(refused));
        }
        self.greeted = true;
        self.greeting = Some(hello);
        Ok(Ok(()))
    }

    /// Connects again when the daemon closed this connection while it was
    /// idle. Only a connection that served a call and has ended since is
    /// replaced, before anything is sent on it, so no request is ever sent
    /// twice (and a daemon refusing new connections is not retried forever).
    fn reconnect_if_closed(&mut self) -> Result<(), Error> {
        let served = self.next_id > 1;
        if !served
            || self.reader.has_buffered()
            || !codec::hung_up(stream_fd(self.reader.get_ref()))
        {
            return Ok(());
        }
        let timeout = self.timeout;
        // The protocol is checked again, in the write of the call that follows.
        *self = Client::connect_pipelined(&self.path)?;
        self.set_timeout(timeout)
    }

    /// `hello`: the daemon's protocol and version.
    pub fn hello(&mut self) -> Result<HelloResult, Error> {
        let params = HelloParams {
            protocol: PROTOCOL_VERSION,
            app_key: crate::app_key_from_env(),
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

    /// A DPoP proof (RFC 9449) for one request — `method` and the full
    /// `url` — with the DPoP-bound token of `credential` it is for. Send
    /// `Authorization: DPoP <token>` and `DPoP: <proof>`; when the resource
    /// server answers with a `DPoP-Nonce`, ask again with `nonce`. The key
    /// stays in the daemon.
    pub fn dpop_proof(
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
    }

    /// The `Authorization` header value (`OAuth …`) for one request signed
    /// with the OAuth 1.0a credential `credential`: `method`, the full `url`
    /// (query included) and the decoded form body parameters, if any. The
    /// consumer and token secrets stay in the daemon.
    pub fn oauth1_sign(
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
            .request::<crate::protocol::Oauth1Sign>(&params)?
            .authorization)
    }
}

fn stream_fd(stream: &Stream) -> std::os::fd::BorrowedFd<'_> {
    use std::os::fd::AsFd;
    match stream {
        Stream::UdSocket(s) => s.as_fd(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    /// One round of a fake daemon: it reads `lines` request lines, all of
    /// them before it answers any (a client that waits for a reply in
    /// between never gets one), then writes `replies`.
    struct Round {
        lines: usize,
        replies: Vec<String>,
    }

    fn hello_reply(id: u64, protocol: u32) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"protocol":{protocol},"daemon_version":"0","pid":1}}}}"#
        )
    }

    fn result_reply(id: u64, value: &str) -> String {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{value}}}"#)
    }

    /// A fake daemon in a private directory playing `rounds` on one
    /// connection; the thread returns the `(id, method)` of every line.
    fn fake_daemon(
        name: &str,
        rounds: Vec<Round>,
    ) -> (PathBuf, std::thread::JoinHandle<Vec<(u64, String)>>) {
        let dir = std::env::temp_dir().join(format!("lk-blocking-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // 0700: the client trusts only a socket directory of our own.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .unwrap();
        let path = dir.join("fake.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            // A client stuck waiting for a reply makes this read fail, not hang.
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            let mut seen = Vec::new();
            for round in rounds {
                for _ in 0..round.lines {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("the next request line");
                    let request: serde_json::Value = serde_json::from_str(&line).unwrap();
                    seen.push((
                        request["id"].as_u64().unwrap(),
                        request["method"].as_str().unwrap().to_owned(),
                    ));
                }
                for reply in round.replies {
                    writer.write_all(reply.as_bytes()).unwrap();
                    writer.write_all(b"\n").unwrap();
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            seen
        });
        (path, server)
    }

    fn seen(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
        pairs.iter().map(|(id, m)| (*id, m.to_string())).collect()
    }

    #[test]
    fn a_pipelined_client_sends_hello_with_its_first_call() {
        let (path, server) = fake_daemon(
            "first",
            vec![
                Round {
                    lines: 2,
                    replies: vec![hello_reply(1, PROTOCOL_VERSION), result_reply(2, "{}")],
                },
                Round {
                    lines: 1,
                    replies: vec![result_reply(3, r#"{"n":3}"#)],
                },
            ],
        );
        let mut client = Client::connect_pipelined(&path).unwrap();
        assert!(client.greeting().is_none());
        let first: serde_json::Value = client.call("x.first", &Empty {}).unwrap();
        assert_eq!(first, serde_json::json!({}));
        let greeting = client.greeting().expect("checked with the first call");
        assert_eq!((greeting.pid, greeting.vault_path.as_deref()), (1, None));
        // Checked once: the next call goes alone.
        let second: serde_json::Value = client.call("x.second", &Empty {}).unwrap();
        assert_eq!(second["n"], 3);
        drop(client);
        assert_eq!(
            server.join().unwrap(),
            seen(&[(1, "hello"), (2, "x.first"), (3, "x.second")])
        );
    }

    #[test]
    fn a_daemon_of_another_protocol_is_refused_as_connect_to_refuses_it() {
        let (path, server) = fake_daemon(
            "mismatch",
            vec![Round {
                lines: 2,
                replies: vec![hello_reply(1, PROTOCOL_VERSION + 1), result_reply(2, "{}")],
            }],
        );
        let mut client = Client::connect_pipelined(&path).unwrap();
        let refused = client
            .try_request::<Status>(&Empty {})
            .map(|_| ())
            .unwrap_err();
        server.join().unwrap();

        let (path, server) = fake_daemon(
            "mismatch-eager",
            vec![Round {
                lines: 1,
                replies: vec![hello_reply(1, PROTOCOL_VERSION + 1)],
            }],
        );
        let eager = Client::connect_to(&path).map(|_| ()).unwrap_err();
        server.join().unwrap();
        assert!(matches!(refused, Error::Protocol(_)), "{refused:?}");
        assert_eq!(refused.to_string(), eager.to_string());
        assert!(
            refused.to_string().contains("latchkey daemon stop"),
            "{refused}"
        );
    }

    #[test]
    fn a_connection_lost_after_the_hello_fails_the_call_not_the_check() {
        let (path, server) = fake_daemon(
            "lost",
            vec![Round {
                lines: 2,
                replies: vec![hello_reply(1, PROTOCOL_VERSION)],
            }],
        );
        let mut client = Client::connect_pipelined(&path).unwrap();
        // The fake hangs up once its round is played.
        let reply = client.try_request::<Status>(&Empty {}).unwrap();
        server.join().unwrap();
        assert!(
            matches!(reply, Err(Error::Io(_))),
            "{:?}",
            reply.map(|_| ())
        );
        assert!(client.greeting().is_some());
    }
}
