//! A tiny OAuth provider on 127.0.0.1 for the daemon to call: HTTP/1.1 with
//! keep-alive.
//!
//! * Client credentials (parts 2–4): every other `POST` gets a fresh bearer
//!   token valid for an hour; the requests are counted (the cached phase
//!   must cause exactly one), noting whether the client authenticated with
//!   HTTP Basic, as `client_secret_basic` requires.
//! * User grants (parts 5–6), for the public clients registered with
//!   [`TokenEndpoint::add_user_client`]: `POST /device` is the RFC 8628
//!   device authorization endpoint; at the token endpoint the
//!   `device_code` grant is approved at once (access + refresh token) and
//!   the `refresh_token` grant rotates the refresh token and refuses a
//!   reused or unknown one with 400 `invalid_grant`. Each client's access
//!   tokens live as long as it was registered with (one lifetime for the
//!   login, one for refreshes), and every request is counted per client and
//!   grant, with the time each access token was minted.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds on what one request may send.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024;

#[derive(Default)]
pub struct Counters {
    /// Token requests answered with a token.
    pub served: AtomicU64,
    /// Every one of them carried `Authorization: Basic …` and
    /// `grant_type=client_credentials`.
    pub all_basic_cc: AtomicBool,
    /// The user-grant side: registered public clients and their tokens.
    user: Mutex<UserGrants>,
}

#[derive(Clone)]
pub struct TokenEndpoint {
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
    /// Listens on an ephemeral loopback port; serves on the current runtime.
    pub async fn start() -> Result<TokenEndpoint> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to bind the token endpoint")?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}/oauth/token");
        let device_url = format!("http://{addr}/device");
        let counters = Arc::new(Counters {
            all_basic_cc: AtomicBool::new(true),
            ..Counters::default()
        });
        let c = Arc::clone(&counters);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(connection(stream, Arc::clone(&c)));
            }
        });
        Ok(TokenEndpoint {
            url,
            device_url,
            counters,
        })
    }

    pub fn served(&self) -> u64 {
        self.counters.served.load(Ordering::SeqCst)
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
                stats: UserStats::default(),
            },
        );
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

        let ((status, json), delay) = if path == "/device" {
            (device_authorization(&counters, &form), Duration::ZERO)
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
            let json = format!(
                "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\",\"expires_in\":3600}}",
                token_for(n)
            );
            (("200 OK", json), Duration::ZERO)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

type Reply = (&'static str, String);

fn oauth_error(error: &str) -> Reply {
    ("400 Bad Request", format!("{{\"error\":\"{error}\"}}"))
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
    let device_code = format!("dc-{seq:032x}");
    client.device_codes.push(device_code.clone());
    client.stats.device_authorizations += 1;
    (
        "200 OK",
        format!(
            "{{\"device_code\":\"{device_code}\",\"user_code\":\"BENCH-{seq:04}\",\"verification_uri\":\"https://example.invalid/device\",\"expires_in\":600,\"interval\":1}}"
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
    let lifetime = if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
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
        let code = form.get("device_code");
        let Some(i) = client.device_codes.iter().position(|c| Some(c) == code) else {
            return oauth_error("invalid_grant");
        };
        client.device_codes.remove(i);
        client.stats.logins += 1;
        client.config.login_lifetime
    };
    let access = format!("{client_id}-at-{seq:048x}");
    let refresh = format!("{client_id}-rt-{seq:048x}");
    client.refresh_token = Some(refresh.clone());
    client.access_expiry = Some(now + Duration::from_secs(lifetime));
    client.stats.last_access = Some((access.clone(), now));
    user.minted.insert(access.clone(), (now, SystemTime::now()));
    (
        "200 OK",
        format!(
            "{{\"access_token\":\"{access}\",\"token_type\":\"Bearer\",\"expires_in\":{lifetime},\"refresh_token\":\"{refresh}\",\"scope\":\"read\"}}"
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
