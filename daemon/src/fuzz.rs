//! Fuzzing entry points: one function per decoder that takes bytes from
//! outside, each running the daemon's real code on them and asserting its
//! invariants (no panic, errors are errors, bounded output, no secret in
//! an error). `fuzz/` (cargo-fuzz, nightly) and `daemon/tests/fuzz.rs`
//! (stable, part of `cargo test`) both call [`TARGETS`]. Not an API.
//!
//! Each entry point is thin on purpose: it builds the input the way the
//! daemon receives it and calls one stable, high-level function (named in
//! its doc). When such a function's signature changes, only that call
//! changes here.
//!
//! The provider side runs on one loopback HTTP server (`Fixture`) that
//! answers every request with the response the current input describes,
//! so the real `oauth::http` client, the `oauth2`/`openidconnect` parsing
//! and our mapping of their results all run as they do in the daemon.

use crate::callback::{self, Code};
use crate::clock::Clock;
use crate::dispatch::{self, After};
use crate::error::ApiError;
use crate::oauth::client_auth::ClientAuth;
use crate::oauth::http::{check_url, Http};
use crate::oauth::{discovery, grant, user};
use crate::vault::{Credential, CredentialConfig, Provider, ProviderConfig};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use latchkey_client::framing::{read_frame, read_frame_blocking, Frame, SecretBuf};
use latchkey_client::protocol::*;
use openidconnect::core::{
    CoreEdDsaPrivateSigningKey, CoreIdToken, CoreIdTokenClaims, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm,
};
use openidconnect::PrivateSigningKey;
use secrecy::SecretString;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// A fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` it goes with) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order the harnesses run them.
pub const TARGETS: &[Target] = &[
    ("frame", frame),
    ("request", request),
    ("callback", callback_request),
    ("token_response", token_response),
    ("device_response", device_response),
    ("revocation_response", revocation_response),
    ("discovery", discovery_document),
    ("id_token", id_token),
    ("key_file", key_file),
];

/// 1 KiB: the longest error message any input may produce. Ours are a
/// sentence or two plus names; anything longer quotes outside input
/// without a bound.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// The client secret every fuzzed request is sent with; no error may show it.
pub const SECRET_CANARY: &str = "latchkey-fuzz-client-secret";
/// The refresh token refreshes and revocations send; no error may show it.
pub const REFRESH_CANARY: &str = "latchkey-fuzz-refresh-token";
/// A passphrase-like value the request corpus puts into secret parameters;
/// no reply may show it (unless the caller's own `id` holds it, which is echoed).
pub const PARAM_CANARY: &str = "latchkey-fuzz-passphrase";
/// The `state` the callback target's login expects.
pub const CALLBACK_STATE: &str = "latchkey-fuzz-state";
/// The issuer the callback and ID-token targets expect.
pub const ISSUER: &str = "https://as.example";
/// The client id of the fuzzed credential (and the ID token's audience).
pub const CLIENT_ID: &str = "fuzz-client";
/// The nonce the ID-token target expects when its first byte asks for one.
pub const NONCE: &str = "latchkey-fuzz-nonce";
/// In a discovery input, stands for the loopback issuer URL of this run
/// (its port changes), so corpus documents can name the right issuer.
pub const ISSUER_PLACEHOLDER: &str = "$ISSUER";

/// Ed25519 key the ID-token target's JWKS holds (generated for these tests
/// with `openssl genpkey -algorithm ed25519`; it protects nothing).
const TEST_SIGNING_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEdY6wM2KY4RIeHvwe+/ZD4YJOTt9ga+xrJlGAgf7/KP
-----END PRIVATE KEY-----";

/// Statuses a fuzzed provider answers with (an input byte picks one).
const STATUSES: &[u16] = &[
    200, 200, 200, 400, 401, 403, 404, 429, 500, 503, 201, 204, 302,
];
/// Content types a fuzzed provider labels its body with (`None`: no header).
const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/json;charset=UTF-8"),
    Some("text/plain"),
    Some("text/html"),
    None,
];

/// An error the daemon would show: bounded, printable, and free of every
/// secret the request carried.
fn check_message(target: &str, error: &ApiError, secrets: &[&str]) {
    let message = &error.message;
    assert!(
        message.chars().count() <= MAX_MESSAGE_CHARS,
        "{target}: an error message of {} chars: {:?}",
        message.chars().count(),
        message.chars().take(200).collect::<String>()
    );
    assert!(
        !message.chars().any(char::is_control),
        "{target}: an error message with control characters: {message:?}"
    );
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !message.contains(secret),
            "{target}: an error message shows a secret: {message:?}"
        );
    }
}

// ---------------------------------------------------------------- frame

/// Hands out its bytes a few at a time, in the sizes it was given.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl Chunked<'_> {
    fn next(&mut self, room: usize) -> &[u8] {
        let size = self.sizes.get(self.turn % self.sizes.len().max(1));
        self.turn += 1;
        let n = size
            .map_or(usize::MAX, |s| usize::from(*s) + 1)
            .min(room)
            .min(self.data.len());
        let (chunk, rest) = self.data.split_at(n);
        self.data = rest;
        chunk
    }
}

impl io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let chunk = self.next(buf.len());
        buf[..chunk.len()].copy_from_slice(chunk);
        Ok(chunk.len())
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let chunk = self.next(buf.remaining());
        buf.put_slice(chunk);
        Poll::Ready(Ok(()))
    }
}

/// What reading a stream frame by frame must give: the lines, then the end.
#[derive(Debug, PartialEq, Eq)]
enum Expected<'a> {
    Line(&'a [u8]),
    TooLong(&'a [u8]),
    Eof,
    Truncated,
}

fn expected_frames(stream: &[u8], max: usize) -> Vec<Expected<'_>> {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) if i > max => return push(frames, Expected::TooLong(&rest[..i])),
            Some(i) => {
                frames.push(Expected::Line(&rest[..i]));
                rest = &rest[i + 1..];
            }
            None if rest.is_empty() => return push(frames, Expected::Eof),
            None if rest.len() > max => return push(frames, Expected::TooLong(rest)),
            None => return push(frames, Expected::Truncated),
        }
    }
}

fn push<T>(mut v: Vec<T>, last: T) -> Vec<T> {
    v.push(last);
    v
}

/// Compares one frame read with what it must be; `true` when the stream ended.
fn matches_expected(got: io::Result<Frame>, buf: &[u8], max: usize, want: &Expected<'_>) -> bool {
    assert!(buf.len() <= max, "frame: a buffer of {} > {max}", buf.len());
    match (got, want) {
        (Ok(Frame::Line), Expected::Line(line)) => {
            assert_eq!(buf, *line, "frame: wrong line");
            false
        }
        (Ok(Frame::TooLong), Expected::TooLong(line)) => {
            assert!(line.starts_with(buf), "frame: not a prefix of the line");
            true
        }
        (Ok(Frame::Eof), Expected::Eof) => true,
        (Err(e), Expected::Truncated) if e.kind() == io::ErrorKind::UnexpectedEof => true,
        (got, want) => panic!("frame: read {got:?} where {want:?} was due"),
    }
}

/// The NDJSON line reader, `latchkey_client::framing::read_frame` (tokio)
/// and `read_frame_blocking`, over one stream in arbitrary chunkings,
/// against a model of what they must return. Input: a byte for the bound
/// (1..=64, or 64 KiB), a count n ≤ 7 and n chunk sizes, then the stream.
pub fn frame(data: &[u8]) {
    let [head, count, rest @ ..] = data else {
        return;
    };
    let max = if head & 0x80 != 0 {
        MAX_REQUEST_LEN
    } else {
        usize::from(head & 0x3f) + 1
    };
    let (sizes, stream) = rest.split_at(usize::from(count % 8).min(rest.len()));
    let capacity = sizes.first().map_or(8 * 1024, |s| usize::from(*s) + 1);
    let expected = expected_frames(stream, max);

    let mut reader = io::BufReader::with_capacity(
        capacity,
        Chunked {
            data: stream,
            sizes,
            turn: 0,
        },
    );
    let mut buf = SecretBuf::with_capacity(0);
    for want in &expected {
        let got = read_frame_blocking(&mut reader, &mut buf, max);
        if matches_expected(got, &buf, max, want) {
            break;
        }
    }

    let mut reader = tokio::io::BufReader::with_capacity(
        capacity,
        Chunked {
            data: stream,
            sizes,
            turn: 0,
        },
    );
    futures::executor::block_on(async {
        for want in &expected {
            let got = read_frame(&mut reader, &mut buf, max).await;
            if matches_expected(got, &buf, max, want) {
                break;
            }
        }
    });
}

// -------------------------------------------------------------- request

/// Parses `params` as method `name`'s parameters the way dispatch does
/// (`dispatch::parse::<M::Params>`); `None` for a name that is no method.
fn params_of(
    name: &str,
    params: Option<&serde_json::value::RawValue>,
) -> Option<Result<(), ApiError>> {
    macro_rules! route {
        ($($m:ty),+ $(,)?) => {
            match name {
                $(<$m>::NAME => Some(dispatch::parse::<<$m as Method>::Params>(<$m>::NAME, params).map(drop)),)+
                _ => None,
            }
        };
    }
    route!(
        Hello,
        Status,
        VaultInit,
        VaultUnlock,
        VaultLock,
        VaultChangePassphrase,
        VaultRekey,
        ProviderAdd,
        ProviderList,
        ProviderShow,
        ProviderRemove,
        CredentialAdd,
        CredentialList,
        CredentialShow,
        CredentialRemove,
        TokenGet,
        DaemonShutdown,
        DaemonStats,
        LoginStart,
        LoginWait,
        TokenRevoke,
        VaultPanic,
        CredentialSet,
        CredentialSetSecret,
        AppAdd,
        AppList,
        AppAllow,
        AppDeny,
        AppRemove,
        ApprovalAttach,
        ApprovalNext,
        ApprovalDecide,
        AuditList,
        AuditVerify,
        CredentialConfirm,
        TotpEnroll,
        TotpConfirm,
        TotpRemove,
        TotpStatus,
        GitRouteAdd,
        GitRouteList,
        GitRouteRemove,
        GitGet,
        GitErase,
        ProviderCheck,
        Oauth1ImportToken,
        Oauth1Sign,
        ProxyStart,
        ProxyWait,
        CredentialJwks,
        CredentialRotateKey,
        DpopProof,
        SlotAdd,
        SlotList,
        SlotRemove,
    )
}

/// Whether the request target parses `name`'s parameters (every entry of
/// `METHODS` must be).
pub fn is_routed(name: &str) -> bool {
    params_of(name, None).is_some()
}

/// One request line through dispatch up to the handler boundary, with no
/// daemon or vault: `dispatch::envelope` (UTF-8, JSON object, JSON-RPC
/// 2.0) and then `dispatch::parse` of the method's parameters, writing
/// the error reply `dispatch::handle` would. Input: the line.
pub fn request(line: &[u8]) {
    let mut out = SecretBuf::with_capacity(0);
    let (id, after) = match dispatch::envelope(line, &mut out) {
        Err(after) => (None, after),
        Ok(request) => {
            if let Some(Err(e)) = params_of(&request.method, request.params) {
                dispatch::write_error(&mut out, request.id, &e);
            }
            (request.id.map(|i| i.get().to_owned()), After::Continue)
        }
    };
    if std::str::from_utf8(line).is_err() {
        assert_eq!(
            after,
            After::Close,
            "request: bad UTF-8 keeps the connection"
        );
    }
    if out.is_empty() {
        return;
    }
    assert_eq!(
        out.iter().filter(|&&b| b == b'\n').count(),
        1,
        "request: not exactly one reply line"
    );
    let reply: serde_json::Value =
        serde_json::from_slice(&out).expect("request: the reply is JSON");
    assert_eq!(reply["jsonrpc"], "2.0", "request: {reply}");
    let error = &reply["error"];
    assert!(error["data"]["kind"].is_string(), "request: {reply}");
    let message = error["message"].as_str().expect("request: a message");
    let error = ApiError::new(ErrorKind::Internal, message);
    let echoed = id.as_deref().is_some_and(|id| id.contains(PARAM_CANARY));
    let secrets: &[&str] = if echoed { &[] } else { &[PARAM_CANARY] };
    check_message("request", &error, secrets);
}

// ------------------------------------------------------------- callback

/// One raw HTTP request to the login's loopback redirect listener: hyper's
/// HTTP/1 server (as `callback::Loopback::wait` runs it) calling
/// `callback::handle` over an in-memory stream. Input: a byte (bit 0: the
/// provider has an issuer to check `iss` against), then the request bytes.
pub fn callback_request(data: &[u8]) {
    let Some((&mode, raw)) = data.split_first() else {
        return;
    };
    let issuer = (mode & 1 == 1).then_some(ISSUER);
    let fixture = fixture();
    let _one_at_a_time = crate::sync::lock(&fixture.lock);
    let (outcome, response) = fixture.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let (tx, mut rx) = oneshot::channel::<Result<Code, ApiError>>();
        let expect = callback::Expect {
            state: CALLBACK_STATE.to_owned(),
            issuer: issuer.map(str::to_owned),
            iss_required: mode & 2 == 2,
            authorization_url: url::Url::parse("https://as.example.com/authorize")
                .expect("a valid URL"),
            credential: "fuzz".to_owned(),
            params: callback::CallbackParams::OAUTH2,
        };
        let shared = Arc::new(callback::Shared::new(
            expect,
            "/callback",
            "/start/fuzz",
            tx,
        ));
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let reply = callback::handle(&req, &shared);
            async move { Ok::<_, std::convert::Infallible>(reply) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(server), service);
        let talk = async {
            let _ = client.write_all(raw).await;
            let _ = client.shutdown().await;
            let mut response = Vec::new();
            let _ = (&mut client)
                .take(1024 * 1024)
                .read_to_end(&mut response)
                .await;
            response
        };
        let (_, response) = tokio::join!(served, talk);
        (rx.try_recv().ok(), response)
    });
    match outcome {
        Some(Ok(Code(code))) => {
            assert!(!code.is_empty(), "callback: an empty code accepted");
            let raw = String::from_utf8_lossy(raw);
            assert!(
                raw.contains(CALLBACK_STATE),
                "callback: a code accepted without the state"
            );
        }
        // `state` is no secret from the user the message goes to.
        Some(Err(e)) => check_message("callback", &e, &[]),
        None => {}
    }
    let response = String::from_utf8_lossy(&response);
    if response.contains("Latchkey") {
        for header in [
            "content-security-policy",
            "referrer-policy",
            "x-frame-options",
            "cache-control: no-store",
        ] {
            assert!(
                response.contains(header),
                "callback: a page without {header}"
            );
        }
    }
}

// ------------------------------------------------------ the fake provider

/// What the fake provider answers with.
#[derive(Clone)]
struct Canned {
    status: u16,
    content_type: Option<&'static str>,
    body: Bytes,
}

/// One runtime, one loopback server playing the provider, one HTTP client
/// (the daemon's), shared by the targets that talk to a provider.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    http: Http,
    /// `http://127.0.0.1:<port>`.
    base: String,
    canned: Arc<Mutex<Canned>>,
    /// Targets sharing the server run one at a time (tests run in threads).
    lock: Mutex<()>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime builds");
        let canned = Arc::new(Mutex::new(Canned {
            status: 200,
            content_type: None,
            body: Bytes::new(),
        }));
        let jwks = Bytes::from(
            serde_json::to_vec(&CoreJsonWebKeySet::new(vec![
                signing_key().as_verification_key()
            ]))
            .expect("a JWKS serializes"),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port for the fake provider");
        let base = format!("http://{}", listener.local_addr().expect("a bound address"));
        let answers = Arc::clone(&canned);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Without it, each exchange waits out a delayed ACK
                // (tens of milliseconds per input on loopback).
                let _ = stream.set_nodelay(true);
                let answers = Arc::clone(&answers);
                let jwks = jwks.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let canned = if req.uri().path() == "/jwks" {
                            Canned {
                                status: 200,
                                content_type: Some("application/json"),
                                body: jwks.clone(),
                            }
                        } else {
                            crate::sync::lock(&answers).clone()
                        };
                        async move {
                            let mut reply = hyper::Response::builder().status(canned.status);
                            if let Some(content_type) = canned.content_type {
                                reply = reply.header("content-type", content_type);
                            }
                            Ok::<_, std::convert::Infallible>(
                                reply
                                    .body(Full::new(canned.body))
                                    .expect("a response from a listed status builds"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Fixture {
            runtime,
            http: Http::new(),
            base,
            canned,
            lock: Mutex::new(()),
        }
    })
}

impl Fixture {
    /// The provider, its endpoints on the fake server.
    fn provider(&self, issuer: Option<String>) -> Provider {
        let at = |path: &str| Some(format!("{}{path}", self.base));
        Provider {
            id: "fuzz-provider-id".into(),
            config: ProviderConfig {
                name: "fuzz-provider".into(),
                issuer,
                endpoints: Endpoints {
                    authorization_endpoint: at("/authorize"),
                    token_endpoint: at("/token"),
                    device_authorization_endpoint: at("/device"),
                    revocation_endpoint: at("/revoke"),
                    introspection_endpoint: None,
                    jwks_uri: at("/jwks"),
                },
                iss_parameter_supported: false,
                oauth1: None,
            },
        }
    }

    /// Answers the next requests with the response `data` describes: a
    /// byte for the status, a byte for the content type (its high bits are
    /// the caller's), then the body. Returns the body and the caller's bits.
    fn answer<'a>(&self, data: &'a [u8]) -> Option<(&'a [u8], u8)> {
        let [status, kind, body @ ..] = data else {
            return None;
        };
        *crate::sync::lock(&self.canned) = Canned {
            status: STATUSES[usize::from(*status) % STATUSES.len()],
            content_type: CONTENT_TYPES[usize::from(kind & 0x0f) % CONTENT_TYPES.len()],
            body: Bytes::copy_from_slice(body),
        };
        Some((body, kind >> 4))
    }
}

fn credential(grant: GrantType, auth: AuthMethod) -> Credential {
    Credential {
        id: "fuzz-credential-id".into(),
        config: CredentialConfig {
            name: "fuzz-credential".into(),
            provider_id: "fuzz-provider-id".into(),
            client_id: CLIENT_ID.into(),
            grant,
            auth,
            scopes: vec!["read".into(), "write".into()],
            redirect_uri: None,
            access: latchkey_client::protocol::Access::Open,
            step_up: Default::default(),
            signature_method: None,
            exchange: None,
            assertion_audience: Default::default(),
            dpop: false,
        },
        has_client_secret: true,
        secret_ages: Default::default(),
        corrupt: false,
    }
}

fn auth_method(bits: u8) -> AuthMethod {
    if bits & 1 == 0 {
        AuthMethod::ClientSecretBasic
    } else {
        AuthMethod::ClientSecretPost
    }
}

/// The token values a response body carries, which no error may quote
/// (unless the provider also put them into its error fields).
fn tokens_in(body: &[u8]) -> Vec<String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) else {
        return Vec::new();
    };
    let said = |key: &str| map.get(key).and_then(|v| v.as_str()).unwrap_or_default();
    let (error, description) = (said("error"), said("error_description"));
    ["access_token", "refresh_token", "id_token", "device_code"]
        .iter()
        .map(|key| said(key))
        .filter(|t| t.len() >= 8 && !error.contains(t) && !description.contains(t))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------- provider responses

/// A token endpoint's response to the client credentials grant
/// (`oauth::grant::client_credentials`, then `token::received` as the
/// cache stores it) or to a refresh (`oauth::user::refresh`). Input: see
/// `Fixture::answer`; bit 4 of the second byte picks the refresh, bit 5
/// the client authentication.
pub fn token_response(data: &[u8]) {
    let fixture = fixture();
    let _one_at_a_time = crate::sync::lock(&fixture.lock);
    let Some((body, bits)) = fixture.answer(data) else {
        return;
    };
    let provider = fixture.provider(Some(ISSUER.into()));
    let scopes = vec!["read".to_owned(), "write".to_owned()];
    let secret = SecretString::from(SECRET_CANARY);
    let result = fixture.runtime.block_on(async {
        if bits & 1 == 0 {
            let credential = credential(GrantType::ClientCredentials, auth_method(bits >> 1));
            let auth = ClientAuth::secret_only(Some(secret), Clock::Wall);
            grant::client_credentials(&fixture.http, &provider, &credential, auth, &scopes).await
        } else {
            let credential = credential(GrantType::AuthorizationCode, auth_method(bits >> 1));
            let client = user::client(
                &provider,
                &credential,
                &ClientAuth::secret_only(Some(secret.clone()), Clock::Wall),
            )?;
            let refresh_token = SecretString::from(REFRESH_CANARY);
            user::refresh(
                &fixture.http,
                &provider,
                &credential,
                &client,
                &refresh_token,
                Some(&scopes),
            )
            .await
        }
    });
    match result {
        Ok(granted) => {
            let now = 1_700_000_000;
            let token = crate::token::received(granted.access, &scopes, now);
            assert!(
                token.effective_expiry >= now,
                "token_response: expired on arrival"
            );
            assert!(token.reply.expires_at.is_none_or(|at| at >= now));
        }
        Err(e) => {
            // What this request sent: the client secret with the client
            // credentials grant, the refresh token with a refresh.
            // (`oauth::user` does not hold the client secret to scrub it.)
            let sent = if bits & 1 == 0 {
                SECRET_CANARY
            } else {
                REFRESH_CANARY
            };
            let tokens = tokens_in(body);
            let mut secrets = vec![sent];
            secrets.extend(tokens.iter().map(String::as_str));
            check_message("token_response", &e, &secrets);
        }
    }
}

/// A device authorization endpoint's response (`oauth::user::device_authorize`,
/// then what `login.rs` takes from it). Input: see `Fixture::answer`; bit 4
/// of the second byte picks the client authentication.
pub fn device_response(data: &[u8]) {
    let fixture = fixture();
    let _one_at_a_time = crate::sync::lock(&fixture.lock);
    let Some((body, bits)) = fixture.answer(data) else {
        return;
    };
    let provider = fixture.provider(Some(ISSUER.into()));
    let credential = credential(GrantType::DeviceCode, auth_method(bits));
    let secret = SecretString::from(SECRET_CANARY);
    let scopes = vec!["read".to_owned()];
    let result = fixture.runtime.block_on(async {
        let client = user::client(
            &provider,
            &credential,
            &ClientAuth::secret_only(Some(secret.clone()), Clock::Wall),
        )?;
        user::device_authorize(&fixture.http, &provider, &credential, &client, &scopes).await
    });
    match result {
        Ok(details) => {
            // What `login.rs` reads from it.
            let _ = details.expires_in().as_secs();
            let _ = details.verification_uri().to_string();
            let _ = details
                .verification_uri_complete()
                .map(|u| u.secret().len());
            let _ = details.user_code().secret().len();
        }
        Err(e) => {
            // (`oauth::user` does not hold the client secret to scrub it.)
            let tokens = tokens_in(body);
            let secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
            check_message("device_response", &e, &secrets);
        }
    }
}

/// A revocation endpoint's response (`oauth::user::revoke`, RFC 7009, over
/// the plain-loopback client). Input: see `Fixture::answer`; bit 4 of the
/// second byte picks the client authentication.
pub fn revocation_response(data: &[u8]) {
    let fixture = fixture();
    let _one_at_a_time = crate::sync::lock(&fixture.lock);
    let Some((_, bits)) = fixture.answer(data) else {
        return;
    };
    let provider = fixture.provider(Some(ISSUER.into()));
    let credential = credential(GrantType::AuthorizationCode, auth_method(bits));
    let secret = SecretString::from(SECRET_CANARY);
    let result = fixture.runtime.block_on(async {
        let client = user::client(
            &provider,
            &credential,
            &ClientAuth::secret_only(Some(secret.clone()), Clock::Wall),
        )?;
        let token = oauth2::StandardRevocableToken::RefreshToken(oauth2::RefreshToken::new(
            REFRESH_CANARY.into(),
        ));
        user::revoke(&fixture.http, &provider, &client, token).await
    });
    if let Err(e) = result {
        // The token being revoked; `oauth::user` does not hold the client
        // secret to scrub it.
        check_message("revocation_response", &e, &[REFRESH_CANARY]);
    }
}

/// A metadata document (`oauth::discovery::discover`: every well-known
/// location answers with it). Input: a byte (bits 0–1: the issuer's path,
/// the rest: the status), then the document, where `$ISSUER` stands for
/// the issuer URL.
pub fn discovery_document(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let _one_at_a_time = crate::sync::lock(&fixture.lock);
    let path = ["", "/", "/tenant/a", "/tenant/a/"][usize::from(mode & 3)];
    let issuer = format!("{}{path}", fixture.base);
    let body = String::from_utf8_lossy(body).replace(ISSUER_PLACEHOLDER, &issuer);
    *crate::sync::lock(&fixture.canned) = Canned {
        status: STATUSES[usize::from(mode >> 2) % STATUSES.len()],
        content_type: Some("application/json"),
        body: Bytes::from(body),
    };
    match fixture
        .runtime
        .block_on(discovery::discover(&fixture.http, &issuer))
    {
        Ok(discovery::Discovered {
            issuer: found,
            endpoints,
            ..
        }) => {
            assert_eq!(
                found.trim_end_matches('/'),
                issuer.trim_end_matches('/'),
                "discovery: another issuer accepted"
            );
            for url in [
                endpoints.authorization_endpoint,
                endpoints.token_endpoint,
                endpoints.device_authorization_endpoint,
                endpoints.revocation_endpoint,
                endpoints.introspection_endpoint,
                endpoints.jwks_uri,
            ]
            .into_iter()
            .flatten()
            {
                assert!(
                    check_url("endpoint", &url).is_ok(),
                    "discovery: an endpoint the URL policy refuses was accepted"
                );
            }
        }
        Err(e) => check_message("discovery", &e, &[]),
    }
}

// ------------------------------------------------------------- ID tokens

fn signing_key() -> CoreEdDsaPrivateSigningKey {
    CoreEdDsaPrivateSigningKey::from_ed25519_pem(
        TEST_SIGNING_KEY_PEM,
        Some(openidconnect::JsonWebKeyId::new("fuzz".into())),
    )
    .expect("the test key parses")
}

/// Signs `claims` (an ID token's claims as JSON: `iss`, `aud`, `sub`,
/// `exp`, `iat`, `nonce`, …) with the key the ID-token target trusts.
/// For building corpus entries and structured inputs.
pub fn sign_id_token(claims: &serde_json::Value) -> Result<String, String> {
    let claims: CoreIdTokenClaims =
        serde_json::from_value(claims.clone()).map_err(|e| format!("claims: {e}"))?;
    let token = CoreIdToken::new(
        claims,
        &signing_key(),
        CoreJwsSigningAlgorithm::EdDsa,
        None,
        None,
    )
    .map_err(|e| format!("signing: {e}"))?;
    Ok(token.to_string())
}

/// `oauth::user::verify_id_token` against the fake provider's JWKS (the
/// test key), as a login calls it: the subject, or the error message.
pub fn verify_id_token(token: &str, nonce: Option<&str>) -> Result<String, ApiError> {
    let fixture = fixture();
    let _one_at_a_time = crate::sync::lock(&fixture.lock);
    let provider = fixture.provider(Some(ISSUER.into()));
    fixture.runtime.block_on(user::verify_id_token(
        &fixture.http,
        &provider,
        CLIENT_ID,
        token,
        nonce,
    ))
}

/// A compact JWS as an ID token (`oauth::user::verify_id_token` with the
/// test key's JWKS). Input: a byte (bit 0: a nonce is expected), then the
/// token; not UTF-8 is no input (the token arrives in a JSON string).
pub fn id_token(data: &[u8]) {
    let Some((&mode, token)) = data.split_first() else {
        return;
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let nonce = (mode & 1 == 1).then_some(NONCE);
    match verify_id_token(token, nonce) {
        Ok(_) => assert_eq!(
            token.split('.').count(),
            3,
            "id_token: accepted something that is not a compact JWS"
        ),
        Err(e) => check_message("id_token", &e, &[]),
    }
}

/// A key file's bytes, as the daemon reads `$LATCHKEY_KEY_FILE` and the
/// CLI `--key-file` (`latchkey_client::keyfile::parse`), then the key line
/// decoded into a [`FileKey`] and its public key derived, as an unlock
/// does. A refusal never quotes the file.
pub fn key_file(data: &[u8]) {
    use latchkey_client::keyfile;
    match keyfile::parse(data) {
        Ok(key) => {
            let bytes = keyfile::decode(&key).expect("a parsed key line decodes");
            let file = crate::vault::crypto::FileKey::from_bytes(&bytes[..])
                .expect("a decoded key is 32 bytes");
            let _ = file.public_key();
        }
        Err(e) => {
            // Every refusal is one of the fixed sentences: no input in it.
            use keyfile::KeyFileError::*;
            let fixed = [NoKey, Extra, Damaged, NotText].map(|e| e.to_string());
            assert!(
                fixed.contains(&e.to_string()),
                "the refusal is not a fixed sentence"
            );
        }
    }
}
