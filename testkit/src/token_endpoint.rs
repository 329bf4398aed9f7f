//! A tiny OAuth provider on 127.0.0.1 for the daemon to call, in-process:
//! HTTP/1.1 with keep-alive, served on the caller's tokio runtime.
//!
//! * Client credentials: every other `POST` gets a fresh bearer token
//!   ([`token_for`]) valid for [`TokenEndpoint::set_token_lifetime`]
//!   seconds (an hour unless told otherwise); the requests are counted
//!   ([`TokenEndpoint::served`]), noting whether the client authenticated
//!   with HTTP Basic, as `client_secret_basic` requires.
//! * User grants, for the public clients registered with
//!   [`TokenEndpoint::add_user_client`]: `POST /device` is the RFC 8628
//!   device authorization endpoint; at the token endpoint the
//!   `device_code` grant is approved at once (access + refresh token) and
//!   the `refresh_token` grant rotates the refresh token and refuses a
//!   reused or unknown one with 400 `invalid_grant`. Each client's access
//!   tokens live as long as it was registered with (one lifetime for the
//!   login, one for refreshes), and every request is counted per client and
//!   grant, with the time each access token was minted.
//! * A hostile or odd provider's device flow and scopes:
//!   [`TokenEndpoint::set_device_interval`] sets the `interval` `/device`
//!   answers (0 included), [`TokenEndpoint::device_answers`] queues OAuth
//!   errors (`authorization_pending`, `slow_down`) that a client's device
//!   polls get before the login is approved, each poll counted in
//!   [`UserStats::device_polls`]; [`TokenEndpoint::set_scopes`] sets the
//!   `scope` a client's login and refreshes are granted (a provider that
//!   narrows a grant on refresh).
//! * Faults, for tests of backoff and error handling:
//!   [`TokenEndpoint::fail_next`] answers the next N token requests (of any
//!   grant) with a [`Fault`] — a 500 / 503 / 429 with or without
//!   `Retry-After`, or a 400 OAuth error such as `invalid_grant` — before
//!   looking at them, so they change no grant state.
//!   [`TokenEndpoint::requests`] counts every token request, faults included.
//!
//! From an async test in another crate:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use latchkey_testkit::token_endpoint::{Fault, TokenEndpoint};
//! let endpoint = TokenEndpoint::start().await?; // 127.0.0.1, an ephemeral port
//! endpoint.set_token_lifetime(2);
//! endpoint.fail_next(3, Fault::Status { status: 503, retry_after: Some(1) });
//! // ... point a provider's token endpoint at `endpoint.url` ...
//! assert_eq!(endpoint.requests(), 0);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds on what one request may send (a token request is well under 1 KiB).
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024;
/// Lifetime of client-credentials tokens until [`TokenEndpoint::set_token_lifetime`]:
/// an hour, a common provider default.
const DEFAULT_TOKEN_LIFETIME: u64 = 3600;

/// What the endpoint counts, and the switches a test flips; shared with
/// every connection task.
pub struct Counters {
    /// Client-credentials token requests answered with a token.
    pub served: AtomicU64,
    /// Every request to the token endpoint, faults included (not `/device`).
    pub requests: AtomicU64,
    /// Lifetime (s) of the client-credentials tokens issued from now on.
    pub token_lifetime: AtomicU64,
    /// Every one of them carried `Authorization: Basic …` and
    /// `grant_type=client_credentials`.
    pub all_basic_cc: AtomicBool,
    /// The user-grant side: registered public clients and their tokens.
    user: Mutex<UserGrants>,
    /// Faults still to be answered, oldest first, each with how many
    /// requests it still answers.
    faults: Mutex<VecDeque<(Fault, u64)>>,
    /// The `interval` (s) `/device` answers.
    pub device_interval: AtomicU64,
    /// The `token_type` member of client-credentials tokens, as JSON.
    token_type_json: Mutex<String>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            served: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            token_lifetime: AtomicU64::new(DEFAULT_TOKEN_LIFETIME),
            all_basic_cc: AtomicBool::new(true),
            user: Mutex::default(),
            faults: Mutex::default(),
            device_interval: AtomicU64::new(1),
            token_type_json: Mutex::new("\"Bearer\"".into()),
        }
    }
}

/// How the endpoint answers a token request it has been told to fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// This HTTP status (500, 503, 429, ...) with an OAuth error body
    /// (`temporarily_unavailable` for 503 and 429, else `server_error`) and,
    /// when set, `Retry-After: <seconds>`.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// `400 Bad Request` with this OAuth error code (RFC 6749 §5.2), e.g.
    /// `invalid_grant` or `invalid_client`.
    OAuth(&'static str),
    /// A hostile provider: `400` `invalid_request` whose `error_description`
    /// echoes the whole request body (client secret, refresh token, device
    /// code, ...) between ANSI escapes, followed by 2000 characters.
    Echo,
}

/// A running endpoint (a handle: clones share it). It serves until the
/// runtime it was started on shuts down.
#[derive(Clone)]
pub struct TokenEndpoint {
    /// Where it listens: `127.0.0.1` and an ephemeral port.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/oauth/token`.
    pub url: String,
    /// The RFC 8628 device authorization endpoint.
    pub device_url: String,
    pub counters: Arc<Counters>,
}

/// One refresh request that got a new token.
#[derive(Clone, Copy)]
pub struct RefreshRecord {
    pub at: Instant,
    /// How long the access token it replaced still had to live when the
    /// request arrived (negative: it had expired), in seconds.
    pub lead: f64,
}

/// What one user client did at the provider.
#[derive(Clone, Default)]
pub struct UserStats {
    pub device_authorizations: u64,
    /// `device_code` grant requests (polls), whatever they were answered.
    pub device_polls: u64,
    /// `device_code` grants answered with tokens (logins).
    pub logins: u64,
    /// `refresh_token` grants answered with tokens.
    pub refreshes: u64,
    /// `refresh_token` grants refused (`invalid_grant`: reused or unknown).
    pub refresh_rejected: u64,
    pub refresh_log: Vec<RefreshRecord>,
    /// The access token issued last, and when.
    pub last_access: Option<(String, Instant)>,
}

impl UserStats {
    /// Every `refresh_token` request that reached the endpoint.
    pub fn refresh_requests(&self) -> u64 {
        self.refreshes + self.refresh_rejected
    }
}

/// How the provider treats one user client.
#[derive(Clone, Copy)]
pub struct UserClientConfig {
    /// Lifetime (s) of the access token a login gets.
    pub login_lifetime: u64,
    /// Lifetime (s) of the access tokens refreshes get.
    pub refresh_lifetime: u64,
    /// How long a refresh takes to answer (a remote provider's latency).
    pub refresh_delay: Duration,
}

struct UserClient {
    config: UserClientConfig,
    /// Device codes issued and not yet redeemed.
    device_codes: Vec<String>,
    /// The one refresh token that is honoured (rotation).
    refresh_token: Option<String>,
    /// Expiry of the access token issued last.
    access_expiry: Option<Instant>,
    /// OAuth errors device polls get before approval, oldest first, each
    /// with how many polls it still answers.
    device_answers: VecDeque<(&'static str, u64)>,
    /// `scope` of a login's and of a refresh's token response.
    login_scope: String,
    refresh_scope: String,
    stats: UserStats,
}

#[derive(Default)]
struct UserGrants {
    clients: HashMap<String, UserClient>,
    /// Access token → when it was minted (system time too, for logs).
    minted: HashMap<String, (Instant, SystemTime)>,
    seq: u64,
}

impl TokenEndpoint {
    /// Listens on an ephemeral loopback port; serves on the current runtime
    /// (call it inside one).
    pub async fn start() -> std::io::Result<TokenEndpoint> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}/oauth/token");
        let device_url = format!("http://{addr}/device");
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(connection(stream, Arc::clone(&c)));
            }
        });
        Ok(TokenEndpoint {
            addr,
            url,
            device_url,
            counters,
        })
    }

    /// Client-credentials token requests answered with a token so far.
    pub fn served(&self) -> u64 {
        self.counters.served.load(Ordering::SeqCst)
    }

    /// Every request to the token endpoint so far, faults included.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Client-credentials tokens issued from now on live `secs` seconds
    /// (`expires_in`). User clients keep the lifetimes they were added with.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.counters.token_lifetime.store(secs, Ordering::SeqCst);
    }

    /// Answers the next `count` token requests with `fault`, after any
    /// faults already queued. `/device` is never failed.
    pub fn fail_next(&self, count: u64, fault: Fault) {
        if count > 0 {
            self.counters.faults().push_back((fault, count));
        }
    }

    /// How many token requests queued faults will still answer.
    pub fn faults_pending(&self) -> u64 {
        self.counters.faults().iter().map(|(_, n)| n).sum()
    }

    /// Registers a public client (`client_id`) for the user grants.
    pub fn add_user_client(&self, client_id: &str, config: UserClientConfig) {
        self.counters.user().clients.insert(
            client_id.to_owned(),
            UserClient {
                config,
                device_codes: Vec::new(),
                refresh_token: None,
                access_expiry: None,
                device_answers: VecDeque::new(),
                login_scope: "read".into(),
                refresh_scope: "read".into(),
                stats: UserStats::default(),
            },
        );
    }

    /// `client_id`'s refreshes are answered after `delay` from now on (a
    /// remote provider's latency; the refresh token rotates at once).
    pub fn set_refresh_delay(&self, client_id: &str, delay: Duration) {
        if let Some(client) = self.counters.user().clients.get_mut(client_id) {
            client.config.refresh_delay = delay;
        }
    }

    /// Client-credentials tokens carry this `token_type` from now on,
    /// given as a JSON value (`"\"DPoP\""`, or a hostile `"\"a\\r\\nb\""`).
    pub fn set_token_type_json(&self, json: &str) {
        *self
            .counters
            .token_type_json
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = json.into();
    }

    /// `/device` answers `interval: secs` from now on (1 unless told).
    pub fn set_device_interval(&self, secs: u64) {
        self.counters.device_interval.store(secs, Ordering::SeqCst);
    }

    /// The next `count` device polls of `client_id` are answered with the
    /// OAuth error `error` (`authorization_pending`, `slow_down`, ...)
    /// instead of being approved, after any answers already queued.
    pub fn device_answers(&self, client_id: &str, error: &'static str, count: u64) {
        if let Some(client) = self.counters.user().clients.get_mut(client_id) {
            if count > 0 {
                client.device_answers.push_back((error, count));
            }
        }
    }

    /// The `scope` that `client_id`'s logins and refreshes are granted from
    /// now on (both `read` unless told).
    pub fn set_scopes(&self, client_id: &str, login: &str, refresh: &str) {
        if let Some(client) = self.counters.user().clients.get_mut(client_id) {
            client.login_scope = login.into();
            client.refresh_scope = refresh.into();
        }
    }

    /// What `client_id` did so far (default when unknown).
    pub fn user_stats(&self, client_id: &str) -> UserStats {
        self.counters
            .user()
            .clients
            .get(client_id)
            .map(|c| c.stats.clone())
            .unwrap_or_default()
    }

    /// When this endpoint minted `access_token`, if it did.
    pub fn minted(&self, access_token: &str) -> Option<(Instant, SystemTime)> {
        self.counters.user().minted.get(access_token).copied()
    }
}

impl Counters {
    fn user(&self) -> std::sync::MutexGuard<'_, UserGrants> {
        self.user.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, VecDeque<(Fault, u64)>> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one request's worth of the oldest queued fault, if any.
    fn take_fault(&self) -> Option<Fault> {
        let mut faults = self.faults();
        let (fault, left) = faults.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            faults.pop_front();
        }
        Some(fault)
    }
}

/// The token the n-th request gets: `bench-` and 64 hex digits, a typical
/// opaque-token length.
pub fn token_for(n: u64) -> String {
    format!("bench-{n:064x}")
}

async fn connection(mut stream: TcpStream, counters: Arc<Counters>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        // Head: up to the blank line.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD || !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let body_len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if body_len > MAX_BODY {
            return;
        }
        while buf.len() < head_end + body_len {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + body_len]).into_owned();
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let basic = header("authorization").is_some_and(|v| v.starts_with("Basic "));
        buf.drain(..head_end + body_len);
        let form = parse_form(&body);
        let grant = form.get("grant_type").map(String::as_str);

        let device = path == "/device";
        if !device {
            counters.requests.fetch_add(1, Ordering::SeqCst);
        }
        let fault = if device { None } else { counters.take_fault() };

        let ((status, json), delay) = if device {
            (device_authorization(&counters, &form), Duration::ZERO)
        } else if let Some(fault) = fault {
            (fault_reply(&fault, &body), Duration::ZERO)
        } else if matches!(
            grant,
            Some("refresh_token" | "urn:ietf:params:oauth:grant-type:device_code")
        ) {
            user_token(&counters, &form)
        } else {
            if !basic || grant != Some("client_credentials") {
                counters.all_basic_cc.store(false, Ordering::SeqCst);
            }
            let n = counters.served.fetch_add(1, Ordering::SeqCst) + 1;
            let lifetime = counters.token_lifetime.load(Ordering::SeqCst);
            let token_type = counters
                .token_type_json
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let json = format!(
                "{{\"access_token\":\"{}\",\"token_type\":{token_type},\"expires_in\":{lifetime}}}",
                token_for(n)
            );
            (ok(json), Duration::ZERO)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let retry_after = status
            .retry_after
            .map(|s| format!("Retry-After: {s}\r\n"))
            .unwrap_or_default();
        let response = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n{retry_after}Content-Length: {}\r\n\r\n{json}",
            status.code,
            reason(status.code),
            json.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The status part of an answer, and its JSON body.
type Reply = (Status, String);

/// An answer's status code and `Retry-After` (s), if any.
struct Status {
    code: u16,
    retry_after: Option<u64>,
}

fn ok(json: String) -> Reply {
    (
        Status {
            code: 200,
            retry_after: None,
        },
        json,
    )
}

fn oauth_error(error: &str) -> Reply {
    (
        Status {
            code: 400,
            retry_after: None,
        },
        format!("{{\"error\":\"{error}\"}}"),
    )
}

fn fault_reply(fault: &Fault, body: &str) -> Reply {
    match fault {
        Fault::OAuth(error) => oauth_error(error),
        Fault::Echo => {
            let echoed: String = body.chars().filter(|c| *c != '"' && *c != '\\').collect();
            (
                Status {
                    code: 400,
                    retry_after: None,
                },
                format!(
                    "{{\"error\":\"invalid_request\",\"error_description\":\"\\u001b[2J\\u001b[31myou sent: {echoed}\\r\\n{}\"}}",
                    "x".repeat(2000)
                ),
            )
        }
        Fault::Status {
            status,
            retry_after,
        } => {
            let error = match status {
                429 | 503 => "temporarily_unavailable",
                _ => "server_error",
            };
            (
                Status {
                    code: *status,
                    retry_after: *retry_after,
                },
                format!("{{\"error\":\"{error}\"}}"),
            )
        }
    }
}

/// The reason phrase of the statuses this endpoint sends.
fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// `POST /device`: a device code for a registered client (RFC 8628 §3.2).
fn device_authorization(counters: &Counters, form: &HashMap<String, String>) -> Reply {
    let mut user = counters.user();
    user.seq += 1;
    let seq = user.seq;
    let Some(client) = form
        .get("client_id")
        .and_then(|id| user.clients.get_mut(id))
    else {
        return oauth_error("invalid_client");
    };
    let interval = counters.device_interval.load(Ordering::SeqCst);
    let device_code = format!("dc-{seq:032x}");
    client.device_codes.push(device_code.clone());
    client.stats.device_authorizations += 1;
    ok(
        format!(
            "{{\"device_code\":\"{device_code}\",\"user_code\":\"BENCH-{seq:04}\",\"verification_uri\":\"https://example.invalid/device\",\"expires_in\":600,\"interval\":{interval}}}"
        ),
    )
}

/// The `device_code` grant (approved at once) and the `refresh_token`
/// grant (rotating) of a registered client.
/// Also returns how long to wait before answering.
fn user_token(counters: &Counters, form: &HashMap<String, String>) -> (Reply, Duration) {
    let mut delay = Duration::ZERO;
    let reply = user_token_reply(counters, form, &mut delay);
    (reply, delay)
}

fn user_token_reply(
    counters: &Counters,
    form: &HashMap<String, String>,
    delay: &mut Duration,
) -> Reply {
    let now = Instant::now();
    let mut guard = counters.user();
    let user = &mut *guard;
    user.seq += 1;
    let seq = user.seq;
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(client) = user.clients.get_mut(&client_id) else {
        return oauth_error("invalid_client");
    };
    let refreshing = form.get("grant_type").map(String::as_str) == Some("refresh_token");
    let lifetime = if refreshing {
        let presented = form.get("refresh_token");
        if presented.is_none() || presented != client.refresh_token.as_ref() {
            client.stats.refresh_rejected += 1;
            return oauth_error("invalid_grant");
        }
        let lead = client.access_expiry.map_or(f64::NAN, |e| {
            if e >= now {
                (e - now).as_secs_f64()
            } else {
                -(now - e).as_secs_f64()
            }
        });
        client.stats.refreshes += 1;
        client
            .stats
            .refresh_log
            .push(RefreshRecord { at: now, lead });
        *delay = client.config.refresh_delay;
        client.config.refresh_lifetime
    } else {
        client.stats.device_polls += 1;
        let code = form.get("device_code");
        let Some(i) = client.device_codes.iter().position(|c| Some(c) == code) else {
            return oauth_error("invalid_grant");
        };
        if let Some((error, left)) = client.device_answers.front_mut() {
            let error = *error;
            *left -= 1;
            if *left == 0 {
                client.device_answers.pop_front();
            }
            return oauth_error(error);
        }
        client.device_codes.remove(i);
        client.stats.logins += 1;
        client.config.login_lifetime
    };
    let scope = if refreshing {
        client.refresh_scope.clone()
    } else {
        client.login_scope.clone()
    };
    let access = format!("{client_id}-at-{seq:048x}");
    let refresh = format!("{client_id}-rt-{seq:048x}");
    client.refresh_token = Some(refresh.clone());
    client.access_expiry = Some(now + Duration::from_secs(lifetime));
    client.stats.last_access = Some((access.clone(), now));
    user.minted.insert(access.clone(), (now, SystemTime::now()));
    ok(
        format!(
            "{{\"access_token\":\"{access}\",\"token_type\":\"Bearer\",\"expires_in\":{lifetime},\"refresh_token\":\"{refresh}\",\"scope\":\"{scope}\"}}"
        ),
    )
}

/// An `application/x-www-form-urlencoded` body as a map.
fn parse_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request on its own connection: `(status, headers, body)`.
    async fn post(
        endpoint: &TokenEndpoint,
        path: &str,
        form: &str,
        basic: bool,
    ) -> (u16, String, String) {
        let mut stream = TcpStream::connect(endpoint.addr).await.unwrap();
        let auth = if basic {
            "Authorization: Basic Y2xpZW50OnNlY3JldA==\r\n"
        } else {
            ""
        };
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            endpoint.addr,
            form.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Our end closing makes the endpoint close its end after answering.
        stream.shutdown().await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    const CC: &str = "grant_type=client_credentials&scope=read";

    #[tokio::test]
    async fn client_credentials_tokens_are_counted_and_live_as_long_as_told() {
        let endpoint = TokenEndpoint::start().await.unwrap();
        let (status, _, body) = post(&endpoint, "/oauth/token", CC, true).await;
        assert_eq!(status, 200);
        assert!(
            body.contains(&token_for(1)) && body.contains("\"expires_in\":3600"),
            "{body}"
        );
        endpoint.set_token_lifetime(2);
        let (_, _, body) = post(&endpoint, "/oauth/token", CC, true).await;
        assert!(
            body.contains(&token_for(2)) && body.contains("\"expires_in\":2"),
            "{body}"
        );
        assert_eq!((endpoint.served(), endpoint.requests()), (2, 2));
        assert!(endpoint.counters.all_basic_cc.load(Ordering::SeqCst));
        post(&endpoint, "/oauth/token", CC, false).await;
        assert!(!endpoint.counters.all_basic_cc.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn queued_faults_answer_the_next_requests_in_order_then_tokens_again() {
        let endpoint = TokenEndpoint::start().await.unwrap();
        endpoint.fail_next(
            2,
            Fault::Status {
                status: 503,
                retry_after: Some(7),
            },
        );
        endpoint.fail_next(
            1,
            Fault::Status {
                status: 500,
                retry_after: None,
            },
        );
        endpoint.fail_next(1, Fault::OAuth("invalid_grant"));
        endpoint.fail_next(0, Fault::OAuth("ignored"));
        assert_eq!(endpoint.faults_pending(), 4);

        let mut seen = Vec::new();
        for _ in 0..5 {
            let (status, head, body) = post(&endpoint, "/oauth/token", CC, true).await;
            let retry_after = head
                .lines()
                .find_map(|l| l.strip_prefix("Retry-After: "))
                .map(str::to_owned);
            seen.push((status, retry_after, body));
        }
        let e = |error: &str| format!("{{\"error\":\"{error}\"}}");
        assert_eq!(
            seen[..4],
            [
                (503, Some("7".into()), e("temporarily_unavailable")),
                (503, Some("7".into()), e("temporarily_unavailable")),
                (500, None, e("server_error")),
                (400, None, e("invalid_grant")),
            ]
        );
        assert_eq!(seen[4].0, 200, "{:?}", seen[4]);
        assert_eq!(endpoint.faults_pending(), 0);
        assert_eq!((endpoint.requests(), endpoint.served()), (5, 1));
    }

    #[tokio::test]
    async fn a_fault_does_not_consume_a_refresh_token_and_device_is_never_failed() {
        let endpoint = TokenEndpoint::start().await.unwrap();
        endpoint.add_user_client(
            "app",
            UserClientConfig {
                login_lifetime: 30,
                refresh_lifetime: 60,
                refresh_delay: Duration::ZERO,
            },
        );
        endpoint.fail_next(1, Fault::OAuth("invalid_grant"));
        let (status, _, body) = post(&endpoint, "/device", "client_id=app", false).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(endpoint.faults_pending(), 1, "/device took no fault");
        let device_code = body.split('"').nth(3).unwrap().to_owned();
        let login = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&client_id=app&device_code={device_code}"
        );
        assert_eq!(post(&endpoint, "/oauth/token", &login, false).await.0, 400);
        let (status, _, body) = post(&endpoint, "/oauth/token", &login, false).await;
        assert_eq!(status, 200, "the fault left the device code usable: {body}");
        assert!(body.contains("\"expires_in\":30"), "{body}");
        let refresh_token = body
            .split("\"refresh_token\":\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let refresh =
            format!("grant_type=refresh_token&client_id=app&refresh_token={refresh_token}");
        endpoint.fail_next(
            1,
            Fault::Status {
                status: 429,
                retry_after: Some(1),
            },
        );
        assert_eq!(
            post(&endpoint, "/oauth/token", &refresh, false).await.0,
            429
        );
        let (status, _, body) = post(&endpoint, "/oauth/token", &refresh, false).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"expires_in\":60"), "{body}");
        let stats = endpoint.user_stats("app");
        assert_eq!(
            (stats.logins, stats.refreshes, stats.refresh_rejected),
            (1, 1, 0)
        );
        assert_eq!(endpoint.requests(), 4);
    }
}
