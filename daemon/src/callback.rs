//! The loopback redirect of a browser login (RFC 8252 §7.3): a short-lived
//! HTTP listener on loopback that accepts exactly one callback carrying
//! the right `state` (and the right `iss`, RFC 9207), answers with a small
//! page under strict security headers, and then stops listening, so a
//! replayed callback finds nobody. It also serves the login's one-time
//! start page, which redirects to the authorization URL, so the URL with
//! `state` and the PKCE challenge never sits in a browser opener's argv.
//!
//! Any local user can connect to a loopback port, so the listener is
//! bounded: few connections at a time, a header deadline that really
//! fires, every connection task ended with the login, no spinning on
//! accept errors.

use crate::error::ApiError;
use crate::oauth::text::provider_text;
use crate::vault::crypto::random_id;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use latchkey_client::protocol::ErrorKind;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use url::{Host, Url};

/// 16: a browser opens a few connections to an origin (the page, a
/// favicon, a speculative preconnect); anything beyond is someone else's
/// flood, and each connection costs a descriptor and a task.
pub const MAX_CONNECTIONS: usize = 16;
/// 10 s: a browser sends its request line and headers at once after
/// connecting; a connection that has not sent them by then is idle or
/// hostile and gives its slot back. Needs hyper's timer to take effect.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// 30 s: the whole life of one connection (headers, a body nobody should
/// send, our small reply), whatever the peer does.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// 64 KiB: the largest request we read. A callback URL is a few KiB, but a
/// developer's browser may send sizeable cookies to loopback origins.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// 100 ms: after an accept error (out of descriptors, mostly), pause
/// instead of retrying at once: the error would repeat and spin a core.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// 2 s: after the outcome, connections still open may finish writing
/// their page (the one that carried the callback above all); then they
/// are ended. The port is closed at once.
pub const FINISH_GRACE: Duration = Duration::from_secs(2);
/// 8: tries to find an ephemeral port that is free on every loopback
/// address `localhost` names (someone may hold the one the first bind got).
const BIND_ATTEMPTS: usize = 8;
/// The path of the one-time start page, before its random id.
const START_PREFIX: &str = "/start/";

/// What a good callback carried.
pub struct Code(pub String);

/// Bound loopback listeners (one per address the redirect host names), the
/// exact redirect URI that names them, and the login's one-time start page.
pub struct Loopback {
    listeners: Vec<TcpListener>,
    pub redirect_uri: Url,
    /// Open this in the browser: it redirects once to the authorization
    /// URL. Its path is random (128 bits), so it cannot be guessed.
    pub start_url: Url,
}

/// What the listener checks a callback against.
pub struct Expect {
    /// The `state` of the authorization request.
    pub state: String,
    /// The provider's issuer, compared with a callback's `iss` (RFC 9207).
    pub issuer: Option<String>,
    /// The provider's metadata promised `iss` in every authorization
    /// response (`authorization_response_iss_parameter_supported`).
    pub iss_required: bool,
    /// Where the start page redirects to.
    pub authorization_url: Url,
    /// The credential being logged in (a checked name): the pages name it
    /// and the command that retries.
    pub credential: String,
    /// Which callback parameters carry the state and the code.
    pub params: CallbackParams,
}

/// The names of the callback parameters that carry the login's state and
/// its code: OAuth 2's `state` and `code`, or OAuth 1.0a's `oauth_token`
/// (the temporary credentials, which must match) and `oauth_verifier`.
#[derive(Clone, Copy)]
pub struct CallbackParams {
    pub state: &'static str,
    pub code: &'static str,
}

impl CallbackParams {
    pub const OAUTH2: CallbackParams = CallbackParams {
        state: "state",
        code: "code",
    };
    /// RFC 5849 §2.2.
    pub const OAUTH1: CallbackParams = CallbackParams {
        state: "oauth_token",
        code: "oauth_verifier",
    };
}

/// The addresses a redirect URI's host names. `localhost` is every
/// loopback address it resolves to, both 127.0.0.1 and ::1 (browsers
/// resolve it to either, RFC 6761 §6.3): we hold the port on both, so no
/// other local user can take it on the one we left free.
fn addresses(configured: Option<&Url>) -> Result<Vec<IpAddr>, ApiError> {
    match configured.and_then(Url::host) {
        None => Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        Some(Host::Ipv4(ip)) if ip.is_loopback() => Ok(vec![IpAddr::V4(ip)]),
        Some(Host::Ipv6(ip)) if ip.is_loopback() => Ok(vec![IpAddr::V6(ip)]),
        Some(Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => Ok(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        Some(other) => Err(ApiError::invalid_params(format!(
            "the credential's redirect URI names host '{other}', not a loopback address: use http://127.0.0.1/callback, http://[::1]/callback or http://localhost/callback (RFC 8252)"
        ))),
    }
}

fn cannot_listen(addr: SocketAddr, e: &io::Error) -> ApiError {
    let port = addr.port();
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!("cannot listen on {addr} for the login callback: {e}; free port {port} (another program or user holds it) or change the credential's redirect URI"),
    )
}

/// Whether a bind error means the machine lacks that address (no IPv6).
fn address_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable
        || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
        || e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

/// Binds `port` (0: any free one) on the first address, then the port the
/// first one got on the others. `Err(None)` means a later address had that
/// port taken (try another ephemeral port).
async fn bind_all(addrs: &[IpAddr], port: u16) -> Result<Vec<TcpListener>, Option<ApiError>> {
    let first = SocketAddr::new(addrs[0], port);
    let listener = TcpListener::bind(first)
        .await
        .map_err(|e| Some(cannot_listen(first, &e)))?;
    let port = listener
        .local_addr()
        .map_err(|e| Some(ApiError::internal(e)))?
        .port();
    let mut listeners = vec![listener];
    for &ip in &addrs[1..] {
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr).await {
            Ok(listener) => listeners.push(listener),
            Err(e) if address_missing(&e) => {
                tracing::debug!(%addr, "not listening there for the login callback: the machine has no such address ({e})");
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(None),
            Err(e) => return Err(Some(cannot_listen(addr, &e))),
        }
    }
    Ok(listeners)
}

/// Binds the redirect listener. `configured` is the credential's redirect
/// URI: its port is used exactly when given (providers that register
/// ports), else any free port (RFC 8252 §7.3); its host and path are kept.
pub async fn bind(configured: Option<&str>) -> Result<Loopback, ApiError> {
    let configured = configured.map(Url::parse).transpose().map_err(|e| {
        ApiError::invalid_params(format!("the credential's redirect URI is invalid: {e}"))
    })?;
    let addrs = addresses(configured.as_ref())?;
    let port = configured.as_ref().and_then(Url::port).unwrap_or(0);
    let mut listeners = None;
    for _ in 0..if port == 0 { BIND_ATTEMPTS } else { 1 } {
        match bind_all(&addrs, port).await {
            Ok(bound) => {
                listeners = Some(bound);
                break;
            }
            Err(Some(e)) => return Err(e),
            Err(None) => continue,
        }
    }
    let Some(listeners) = listeners else {
        let taken = if port == 0 {
            format!("no ephemeral port was free on every loopback address after {BIND_ATTEMPTS} tries; try again")
        } else {
            format!("port {port} is taken on one of the loopback addresses 'localhost' names (127.0.0.1, ::1), by another program or user; free it or change the credential's redirect URI")
        };
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("cannot listen for the login callback: {taken}"),
        ));
    };
    let port = listeners[0]
        .local_addr()
        .map_err(ApiError::internal)?
        .port();
    let mut redirect_uri = configured
        .unwrap_or_else(|| Url::parse("http://127.0.0.1/callback").expect("a constant URL parses"));
    redirect_uri
        .set_port(Some(port))
        .map_err(|()| ApiError::invalid_params("the redirect URI cannot take a port"))?;
    let mut start_url = redirect_uri.clone();
    start_url.set_path(&format!("{START_PREFIX}{}", random_id()));
    start_url.set_query(None);
    start_url.set_fragment(None);
    Ok(Loopback {
        listeners,
        redirect_uri,
        start_url,
    })
}

/// How a page looks: a card, its top edge coloured by how things went.
/// Allowed by its hash alone ([`STYLE_SRC`]): no inline style attribute,
/// no script, nothing loaded. Keep it byte-for-byte stable, or the hash
/// changes with it (it is computed, never written by hand).
const STYLE: &str = "body{margin:0;background:#eef1f5;color:#1f2933;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}main{max-width:34em;margin:3em auto;padding:1.5em 2em;background:#fff;border-radius:8px;border-top:6px solid #7b8794;box-shadow:0 1px 3px rgba(0,0,0,.15)}.ok main{border-top-color:#2f9e44}.fail main{border-top-color:#c92a2a}.brand{margin:0;color:#616e7c;font-size:.85em;letter-spacing:.08em;text-transform:uppercase}h1{margin:.2em 0 .6em;font-size:1.6em}.ok h1{color:#2b8a3e}.fail h1{color:#c92a2a}code{background:#eef1f5;border-radius:4px;padding:.1em .35em;font:.95em ui-monospace,monospace}.next{color:#3e4c59}";

/// The CSP's `style-src`: [`STYLE`]'s SHA-256, base64 (CSP Level 3 §8.4).
static STYLE_SRC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(STYLE.as_bytes());
    format!(
        "style-src 'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
});

/// How the listener's page reads: what happened, then what to do next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tone {
    /// The login went through.
    Ok,
    /// The login did not, or this page refused a request.
    Fail,
}

/// Text made safe to put in HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Content of every page the listener sends: nothing to load, nothing to
/// frame, nothing to leak in a Referer. `what` says what happened, `next`
/// what to do now; both are HTML already (callers [`escape`] what is not
/// theirs).
fn page(
    status: StatusCode,
    tone: Tone,
    title: &str,
    what: &str,
    next: &str,
) -> Response<Full<Bytes>> {
    let class = match tone {
        Tone::Ok => "ok",
        Tone::Fail => "fail",
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title><style>{STYLE}</style></head><body class=\"{class}\"><main><p class=\"brand\">Latchkey</p><h1>{title}</h1><p>{what}</p><p class=\"next\">{next}</p></main></body></html>"
    );
    secure(Response::builder().status(status))
        .header("content-type", "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(html)))
        .expect("a response from constant parts builds")
}

/// The headers every response carries.
fn secure(builder: hyper::http::response::Builder) -> hyper::http::response::Builder {
    builder
        .header(
            "content-security-policy",
            format!(
                "default-src 'none'; {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                *STYLE_SRC
            ),
        )
        .header("referrer-policy", "no-referrer")
        .header("x-frame-options", "DENY")
        .header("x-content-type-options", "nosniff")
        .header("cache-control", "no-store")
        .header("connection", "close")
}

pub(crate) type Outcome = Result<Code, ApiError>;

/// What every connection of one login shares.
pub(crate) struct Shared {
    expect: Expect,
    callback_path: String,
    start_path: String,
    /// Taken by the request that decides the login.
    slot: Mutex<Option<oneshot::Sender<Outcome>>>,
    /// The start page was served once.
    started: AtomicBool,
}

impl Shared {
    /// What [`handle`] decides with: the expectations, the two paths it
    /// serves, and where the deciding request sends the outcome.
    pub(crate) fn new(
        expect: Expect,
        callback_path: &str,
        start_path: &str,
        decided: oneshot::Sender<Outcome>,
    ) -> Shared {
        Shared {
            expect,
            callback_path: callback_path.to_owned(),
            start_path: start_path.to_owned(),
            slot: Mutex::new(Some(decided)),
            started: AtomicBool::new(false),
        }
    }
}

impl Loopback {
    /// Serves until one callback with the expected `state` arrives (or the
    /// caller drops this future: a timeout, a cancel). A callback with a
    /// wrong or missing `state` is refused and the login goes on waiting:
    /// it is not from this login, and must not be able to cancel it.
    ///
    /// Every connection runs in a task of this future's [`JoinSet`]: when
    /// the future is dropped they are all ended at once; when it returns
    /// an outcome the ports close at once and the connections still open
    /// are ended after [`FINISH_GRACE`].
    pub async fn wait(self, expect: Expect) -> Outcome {
        let (tx, mut rx) = oneshot::channel::<Outcome>();
        let shared = Arc::new(Shared::new(
            expect,
            self.redirect_uri.path(),
            self.start_url.path(),
            tx,
        ));
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut tasks = JoinSet::new();
        let outcome = loop {
            tokio::select! {
                outcome = &mut rx => break outcome.unwrap_or_else(|_| Err(ApiError::internal("the login callback listener stopped"))),
                accepted = accept_any(&self.listeners) => match accepted {
                    Ok(stream) => {
                        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                            tracing::debug!("{MAX_CONNECTIONS} login callback connections are open; closing a new one");
                            continue;
                        };
                        let shared = Arc::clone(&shared);
                        tasks.spawn(async move {
                            serve_connection(stream, shared).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("the login callback listener cannot accept: {e}");
                        // Out of descriptors, mostly: it would fail again at once.
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        // The ports close here: a replay is refused.
        drop(self.listeners);
        if !tasks.is_empty() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(FINISH_GRACE, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                // Dropping the set ends what is left.
            });
        }
        outcome
    }
}

/// The next connection on any of the listeners.
async fn accept_any(listeners: &[TcpListener]) -> io::Result<TcpStream> {
    let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
    let (accepted, _, _) = futures::future::select_all(accepts).await;
    accepted.map(|(stream, _)| stream)
}

/// One connection: HTTP/1 with a header deadline (hyper's timer makes it
/// fire), one request, bounded buffers, and a deadline on the whole.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let reply = handle(&req, &shared);
        async move { Ok::<_, std::convert::Infallible>(reply) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
}

/// Sends the login's outcome, once; `false` when it was already decided.
fn decide(shared: &Shared, outcome: Outcome) -> bool {
    match crate::sync::lock(&shared.slot).take() {
        Some(sender) => {
            let _ = sender.send(outcome);
            true
        }
        None => false,
    }
}

pub(crate) fn handle(
    req: &Request<hyper::body::Incoming>,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == shared.start_path {
        return start_page(req, shared);
    }
    if path != shared.callback_path {
        return page(
            StatusCode::NOT_FOUND,
            Tone::Fail,
            "Not found",
            "This is Latchkey's login callback; there is nothing else here.",
            "You can close this tab.",
        );
    }
    let params: std::collections::HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let expect = &shared.expect;
    let retry = format!("<code>latchkey login {}</code>", escape(&expect.credential));
    let state_ok = params
        .get(expect.params.state)
        .is_some_and(|s| constant_time_eq(s.as_bytes(), expect.state.as_bytes()));
    if !state_ok {
        tracing::warn!("refused a login callback with a wrong or missing state");
        return page(
            StatusCode::BAD_REQUEST,
            Tone::Fail,
            "Login refused",
            "This page was opened with a link that does not belong to the login Latchkey is waiting for (its <code>state</code> does not match), so it was ignored and nothing was signed in.",
            "If you are logging in, go back to the terminal and open the login link it shows, in this browser. Otherwise close this tab.",
        );
    }
    let already = || {
        page(
            StatusCode::BAD_REQUEST,
            Tone::Fail,
            "Login already finished",
            "This login link was already used; it works only once.",
            &format!("The terminal shows how the login ended. To log in again, run {retry}."),
        )
    };
    // RFC 9207: a response from another issuer is a mix-up attack; a
    // response without `iss` from a provider that promised it may be one.
    let iss = params.get("iss");
    let refused_iss = match (expect.issuer.as_deref(), iss) {
        (Some(expected), Some(got)) if got.trim_end_matches('/') != expected.trim_end_matches('/') => Some(format!(
            "the login callback names issuer '{}', not '{expected}' (RFC 9207 mix-up protection); the login was refused",
            provider_text(got, &[])
        )),
        (_, None) if expect.iss_required => Some(
            "the login callback carried no issuer (iss), which the provider's metadata promises (RFC 9207 mix-up protection); the login was refused: run it again, and if it recurs, re-add the provider so its metadata is read afresh".to_owned()
        ),
        _ => None,
    };
    if let Some(message) = refused_iss {
        if !decide(
            shared,
            Err(ApiError::new(ErrorKind::ProviderError, message)),
        ) {
            return already();
        }
        return page(
            StatusCode::BAD_REQUEST,
            Tone::Fail,
            "Login refused",
            "The answer did not name the issuer (the provider) this login was started with, so Latchkey refused it and nothing was signed in.",
            &format!("You can close this tab. To try again, run {retry} in the terminal."),
        );
    }
    if let Some(error) = params.get("error") {
        let shown = provider_text(error, &[]);
        let kind = if shown == "access_denied" {
            ErrorKind::Forbidden
        } else {
            ErrorKind::ProviderError
        };
        let said = match params.get("error_description") {
            Some(description) => format!("'{shown}' ({})", provider_text(description, &[])),
            None => format!("'{shown}'"),
        };
        let error = ApiError::new(
            kind,
            format!("the provider ended the login with {said}; run the login again to retry"),
        );
        if !decide(shared, Err(error)) {
            return already();
        }
        let what = if shown == "access_denied" {
            "The provider did not grant access (<code>access_denied</code>): the sign-in or the consent was cancelled or refused. Nothing was saved.".to_owned()
        } else {
            format!(
                "The provider ended the login with an error (<code>{}</code>). Nothing was saved.",
                escape(&shown)
            )
        };
        return page(
            StatusCode::OK,
            Tone::Fail,
            "Login not completed",
            &what,
            &format!("You can close this tab. To try again, run {retry} in the terminal."),
        );
    }
    let Some(code) = params.get(expect.params.code).filter(|c| !c.is_empty()) else {
        let error = ApiError::new(
            ErrorKind::ProviderError,
            "the login callback carried no code",
        );
        if !decide(shared, Err(error)) {
            return already();
        }
        return page(
            StatusCode::BAD_REQUEST,
            Tone::Fail,
            "Login failed",
            "The provider sent no authorization code, so there is nothing to sign in with.",
            &format!("You can close this tab. To try again, run {retry} in the terminal."),
        );
    };
    if !decide(shared, Ok(Code(code.clone()))) {
        return already();
    }
    page(
        StatusCode::OK,
        Tone::Ok,
        "Login complete",
        &format!(
            "Latchkey received your login for <strong>'{}'</strong> and is finishing it now.",
            escape(&expect.credential)
        ),
        "You can close this tab and go back to the terminal: it shows when the login is done.",
    )
}

/// The one-time start page: the first GET is redirected to the
/// authorization URL. A second GET means someone else saw the start URL
/// (a browser opener's argv is readable by every local user) and may know
/// the `state` now: the login is ended rather than risk completing it
/// into their account.
fn start_page(req: &Request<hyper::body::Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return page(
            StatusCode::METHOD_NOT_ALLOWED,
            Tone::Fail,
            "Not allowed",
            "This login link only opens in a browser.",
            "Open it in your browser, or start the login again from the terminal.",
        );
    }
    if shared.started.swap(true, Ordering::SeqCst) {
        tracing::warn!("the login's start page was opened a second time; ending the login");
        decide(
            shared,
            Err(ApiError::new(
                ErrorKind::Forbidden,
                "the login's start page was opened twice, so another program may have seen it; the login was ended to be safe: run it again",
            )),
        );
        return page(
            StatusCode::GONE,
            Tone::Fail,
            "Login link already used",
            "This one-time login link was already opened, so another program may have seen it: the login was ended to be safe.",
            &format!(
                "Run <code>latchkey login {}</code> again in the terminal.",
                escape(&shared.expect.credential)
            ),
        );
    }
    secure(Response::builder().status(StatusCode::SEE_OTHER))
        .header("location", shared.expect.authorization_url.as_str())
        .body(Full::new(Bytes::new()))
        .expect("a redirect to a parsed URL builds")
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn expect(state: &str, iss_required: bool) -> Expect {
        Expect {
            state: state.into(),
            issuer: Some("https://as.example".into()),
            iss_required,
            authorization_url: Url::parse("https://as.example/authorize?state=s&nonce=n")
                .expect("a constant URL parses"),
            credential: "app".to_owned(),
            params: CallbackParams::OAUTH2,
        }
    }

    fn no_redirects() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a reqwest client builds")
    }

    /// Reads until EOF or error; what arrived.
    async fn read_all(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got).await;
        got
    }

    fn ipv6_loopback_exists() -> bool {
        std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
    }

    #[test]
    fn the_page_is_escaped_and_its_one_style_is_allowed_by_hash() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        // sha256 of STYLE, base64: 32 bytes are 44 characters.
        let src = STYLE_SRC.as_str();
        assert!(
            src.starts_with("style-src 'sha256-") && src.ends_with("='"),
            "{src}"
        );
        assert_eq!(src.len(), "style-src 'sha256-'".len() + 44);
        let response = page(StatusCode::OK, Tone::Ok, "T", "w", "n");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[tokio::test]
    async fn one_good_callback_is_accepted_and_a_replay_is_not() {
        let loopback = bind(None).await.unwrap();
        let base = loopback.redirect_uri.clone();
        assert_eq!(base.host_str(), Some("127.0.0.1"));
        assert_ne!(base.port(), Some(0));
        let waiter = tokio::spawn(loopback.wait(expect("s1", false)));
        let client = reqwest::Client::new();
        let get = |query: &str| {
            let mut url = base.clone();
            url.set_query(Some(query));
            client.get(url).send()
        };
        let wrong = get("code=c&state=nope").await.unwrap();
        assert_eq!(wrong.status(), 400);
        for header in [
            "content-security-policy",
            "referrer-policy",
            "x-frame-options",
            "x-content-type-options",
        ] {
            assert!(wrong.headers().contains_key(header), "{header}");
        }
        // Without a promise of `iss` in the metadata, its absence is fine.
        let good = get("code=the-code&state=s1").await.unwrap();
        assert_eq!(good.status(), 200);
        let Code(code) = waiter.await.unwrap().unwrap();
        assert_eq!(code, "the-code");
        assert!(
            get("code=the-code&state=s1").await.is_err(),
            "the port is closed after the login"
        );
    }

    #[tokio::test]
    async fn a_callback_from_another_issuer_is_refused() {
        let loopback = bind(None).await.unwrap();
        let mut url = loopback.redirect_uri.clone();
        let waiter = tokio::spawn(loopback.wait(expect("s", false)));
        url.set_query(Some("code=c&state=s&iss=https%3A%2F%2Fevil.example"));
        let reply = reqwest::get(url).await.unwrap();
        assert_eq!(reply.status(), 400);
        let err = waiter.await.unwrap().err().unwrap();
        assert!(err.message.contains("mix-up"), "{}", err.message);
    }

    /// RFC 9207 §2.4: when the metadata promised `iss`, a response
    /// without it is refused; with the right one it is accepted.
    #[tokio::test]
    async fn a_callback_without_iss_is_refused_when_the_provider_promised_it() {
        let loopback = bind(None).await.unwrap();
        let mut url = loopback.redirect_uri.clone();
        let waiter = tokio::spawn(loopback.wait(expect("s", true)));
        url.set_query(Some("code=c&state=s"));
        let reply = reqwest::get(url).await.unwrap();
        assert_eq!(reply.status(), 400);
        assert!(reply.text().await.unwrap().contains("issuer"));
        let err = waiter.await.unwrap().err().unwrap();
        assert_eq!(err.kind, ErrorKind::ProviderError);
        assert!(err.message.contains("RFC 9207"), "{}", err.message);

        let loopback = bind(None).await.unwrap();
        let mut url = loopback.redirect_uri.clone();
        let waiter = tokio::spawn(loopback.wait(expect("s", true)));
        url.set_query(Some("code=c&state=s&iss=https%3A%2F%2Fas.example"));
        assert_eq!(reqwest::get(url).await.unwrap().status(), 200);
        assert!(waiter.await.unwrap().is_ok());
    }

    /// hyper's header timeout needs a timer: with it, a connection that
    /// sent half a request line is closed at the timeout, well before the
    /// whole-connection deadline (tokio's clock is paused: virtual time).
    #[tokio::test(start_paused = true)]
    async fn a_half_sent_request_is_closed_at_the_header_timeout() {
        let loopback = bind(None).await.unwrap();
        let addr = loopback.listeners[0].local_addr().unwrap();
        let _waiter = tokio::spawn(loopback.wait(expect("s", false)));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /callb").await.unwrap();
        let began = tokio::time::Instant::now();
        let got = tokio::time::timeout(CONNECTION_DEADLINE * 10, read_all(&mut stream))
            .await
            .expect("the connection is closed");
        let after = began.elapsed();
        assert!(
            after >= HEADER_READ_TIMEOUT && after < CONNECTION_DEADLINE,
            "closed by the header timeout, after {after:?}"
        );
        // hyper answers a header timeout with nothing or a 408: never a page.
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
    }

    /// Beyond the cap a connection is closed unanswered, while the ones
    /// held stay usable: the login still completes on one of them.
    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let loopback = bind(None).await.unwrap();
        let addr = loopback.listeners[0].local_addr().unwrap();
        let waiter = tokio::spawn(loopback.wait(expect("s", false)));
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let request = format!(
            "GET /callback?code=c&state=s HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        );
        let mut extra = TcpStream::connect(addr).await.unwrap();
        // The write may land before the close; no answer comes either way.
        let _ = extra.write_all(request.as_bytes()).await;
        assert!(
            read_all(&mut extra).await.is_empty(),
            "no reply over the cap"
        );
        let first = &mut held[0];
        first.write_all(request.as_bytes()).await.unwrap();
        let reply = String::from_utf8(read_all(first).await).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(waiter.await.unwrap().is_ok());
    }

    /// Every connection task ends with the login: at once when the login
    /// is dropped (cancelled, timed out), within the grace after an outcome.
    #[tokio::test(start_paused = true)]
    async fn connections_end_when_the_login_ends() {
        let loopback = bind(None).await.unwrap();
        let addr = loopback.listeners[0].local_addr().unwrap();
        let waiter = tokio::spawn(loopback.wait(expect("s", false)));
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::task::yield_now().await;
        waiter.abort();
        for stream in &mut idle {
            let closed = tokio::time::timeout(Duration::from_secs(1), read_all(stream)).await;
            assert!(
                closed.is_ok(),
                "an idle connection outlived the dropped login"
            );
        }
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );

        let loopback = bind(None).await.unwrap();
        let addr = loopback.listeners[0].local_addr().unwrap();
        let waiter = tokio::spawn(loopback.wait(expect("s", false)));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut good = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /callback?code=c&state=s HTTP/1.1\r\nhost: {addr}\r\n\r\n");
        good.write_all(request.as_bytes()).await.unwrap();
        let reply = String::from_utf8(read_all(&mut good).await).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(waiter.await.unwrap().is_ok());
        let closed =
            tokio::time::timeout(FINISH_GRACE + Duration::from_secs(1), read_all(&mut idle)).await;
        assert!(
            closed.is_ok(),
            "an idle connection outlived the finished login"
        );
    }

    /// `localhost` holds the port on 127.0.0.1 and on ::1 (when the
    /// machine has IPv6); an IP literal holds only that address.
    #[tokio::test]
    async fn localhost_listens_on_every_loopback_address() {
        let loopback = bind(Some("http://localhost/cb")).await.unwrap();
        assert_eq!(loopback.redirect_uri.host_str(), Some("localhost"));
        let port = loopback.redirect_uri.port().unwrap();
        assert_eq!(loopback.start_url.host_str(), Some("localhost"));
        TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        if ipv6_loopback_exists() {
            TcpStream::connect((Ipv6Addr::LOCALHOST, port))
                .await
                .unwrap();
        } else {
            eprintln!("no IPv6 loopback here: only 127.0.0.1 checked");
        }
        drop(loopback);

        let v4 = bind(Some("http://127.0.0.1/cb")).await.unwrap();
        assert_eq!(v4.listeners.len(), 1);
        let port = v4.redirect_uri.port().unwrap();
        if ipv6_loopback_exists() {
            assert!(TcpStream::connect((Ipv6Addr::LOCALHOST, port))
                .await
                .is_err());
            let v6 = bind(Some("http://[::1]/cb")).await.unwrap();
            assert_eq!(v6.listeners.len(), 1);
            assert!(v6.listeners[0].local_addr().unwrap().is_ipv6());
        }
    }

    /// A fixed `localhost` port that someone else holds on ::1 fails the
    /// login start with an error naming the port.
    #[tokio::test]
    async fn a_localhost_port_taken_on_one_address_is_an_error() {
        if !ipv6_loopback_exists() {
            eprintln!("no IPv6 loopback here: nothing to take");
            return;
        }
        let other = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        let port = other.local_addr().unwrap().port();
        let err = match bind(Some(&format!("http://localhost:{port}/cb"))).await {
            Ok(_) => panic!("bound a port another listener holds on ::1"),
            Err(e) => e,
        };
        assert!(err.message.contains(&port.to_string()), "{}", err.message);
        // An ephemeral port simply moves on to a free one.
        let loopback = bind(Some("http://localhost/cb")).await.unwrap();
        assert_ne!(loopback.redirect_uri.port(), Some(port));
    }

    /// The start page redirects once to the authorization URL; a second
    /// visit is refused and ends the login.
    #[tokio::test]
    async fn the_start_page_redirects_once() {
        let loopback = bind(None).await.unwrap();
        let start = loopback.start_url.clone();
        assert!(start.path().starts_with(START_PREFIX));
        assert!(start.path().len() >= START_PREFIX.len() + 32, "{start}");
        assert!(start.query().is_none());
        let e = expect("s", false);
        let authorization_url = e.authorization_url.clone();
        let waiter = tokio::spawn(loopback.wait(e));
        let client = no_redirects();
        let first = client.get(start.clone()).send().await.unwrap();
        assert_eq!(first.status(), 303);
        assert_eq!(
            first.headers()["location"].to_str().unwrap(),
            authorization_url.as_str()
        );
        assert!(first.headers().contains_key("referrer-policy"));
        let second = client.get(start).send().await.unwrap();
        assert_eq!(second.status(), 410);
        let err = waiter.await.unwrap().err().unwrap();
        assert!(err.message.contains("opened twice"), "{}", err.message);
    }
}
