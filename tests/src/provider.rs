//! The test authorization server, seen from Rust.
//!
//! Owns: starting `tests/provider/server.mjs` (panva's `oidc-provider`, a real
//! OpenID-certified authorization server, behind our small fault/counting
//! layer) as a `node` child process on 127.0.0.1, waiting for its `READY`
//! line, and talking to its `/__admin/` endpoints. Dropping a [`Provider`]
//! kills and reaps the child; the child also exits by itself when our end of
//! its stdin closes, so even a crashed test run leaves no orphan.
//!
//! Every call is bounded (30 s start-up, 30 s per HTTP request), loopback
//! only, and ignores proxy settings. The methods are blocking but may be
//! called from inside a tokio runtime: the HTTP work then runs on a scoped
//! helper thread (reqwest's blocking client panics inside a runtime).
//!
//! Install the Node side once with `npm ci --prefix tests/provider`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::blocking::off_runtime;

/// How long the server may take to print `READY`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout for admin, discovery and introspection calls.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the server's stderr is kept for failure messages.
const STDERR_KEEP: usize = 64 * 1024;
/// The RFC 8628 grant type, as token requests and client metadata spell it.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The RFC 8693 grant type, as token requests and client metadata spell it.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const INSTALL_HINT: &str = "run `npm ci --prefix tests/provider` (from the workspace root)";

/// One OAuth client registered with the test server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub client_id: String,
    /// `None` for public clients (`auth_method` "none").
    pub client_secret: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub auth_method: String,
    /// e.g. `client_credentials`, `authorization_code`, `refresh_token`,
    /// `urn:ietf:params:oauth:grant-type:device_code`.
    pub grant_types: Vec<String>,
    /// Space-separated scopes the client may request ("" = none).
    pub scope: String,
    /// Exact redirect URIs; `http://127.0.0.1/...` ones match any port (RFC 8252).
    pub redirect_uris: Vec<String>,
}

impl ClientSpec {
    /// A confidential client for the client-credentials grant.
    pub fn client_credentials(
        client_id: &str,
        secret: &str,
        auth_method: &str,
        scope: &str,
    ) -> Self {
        ClientSpec {
            client_id: client_id.into(),
            client_secret: Some(secret.into()),
            auth_method: auth_method.into(),
            grant_types: vec!["client_credentials".into()],
            scope: scope.into(),
            redirect_uris: vec![],
        }
    }

    /// A public client (`none` authentication) for the given grants.
    pub fn public(
        client_id: &str,
        grant_types: &[&str],
        scope: &str,
        redirect_uris: &[&str],
    ) -> Self {
        ClientSpec {
            client_id: client_id.into(),
            client_secret: None,
            auth_method: "none".into(),
            grant_types: grant_types.iter().map(|s| s.to_string()).collect(),
            scope: scope.into(),
            redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A client for user logins: authorization code (+ PKCE), refresh token and
    /// device code grants, redirect URI `http://127.0.0.1/callback` (any
    /// loopback port matches: the server registers it as a native client).
    /// `secret` `None` makes a public client (`auth_method` must be "none").
    pub fn user(client_id: &str, secret: Option<&str>, auth_method: &str, scope: &str) -> Self {
        ClientSpec {
            client_id: client_id.into(),
            client_secret: secret.map(str::to_string),
            auth_method: auth_method.into(),
            grant_types: vec![
                "authorization_code".into(),
                "refresh_token".into(),
                DEVICE_CODE_GRANT.into(),
            ],
            scope: scope.into(),
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
        }
    }

    /// The client's entry in the server's config file (oidc-provider metadata).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "client_id": self.client_id,
            "token_endpoint_auth_method": self.auth_method,
            "grant_types": self.grant_types,
            "redirect_uris": self.redirect_uris,
            "scope": self.scope,
        });
        if let Some(secret) = &self.client_secret {
            v["client_secret"] = json!(secret);
        }
        v
    }
}

/// Counters from `GET /__admin/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Every POST to the token endpoint, including ones answered by a fault.
    pub token_requests: u64,
    /// The same, by `grant_type` ("unknown" when the body had none).
    pub token_requests_by_grant: BTreeMap<String, u64>,
    /// The same, by the client authentication the request carried:
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt`,
    /// `client_secret_jwt`, `none` (client_id only) or `unknown`.
    /// oidc-provider accepts basic and post interchangeably for any secret
    /// client, so this is how a test checks which one the daemon used.
    pub token_requests_by_auth: BTreeMap<String, u64>,
    /// POSTs to the introspection endpoint.
    pub introspections: u64,
    /// POSTs to the revocation endpoint.
    pub revocations: u64,
    /// Token requests still to be answered by queued faults.
    pub faults_pending: u64,
    /// Token requests that carried a `DPoP` proof header.
    pub token_requests_with_dpop: u64,
    /// 401s of `/__admin/resource` demanding its nonce (`resource_nonce`).
    pub resource_nonce_demands: u64,
}

impl Stats {
    /// Token requests seen for one grant type.
    pub fn grant(&self, grant_type: &str) -> u64 {
        self.token_requests_by_grant
            .get(grant_type)
            .copied()
            .unwrap_or(0)
    }

    /// Token requests seen with one client authentication method.
    pub fn auth(&self, method: &str) -> u64 {
        self.token_requests_by_auth
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

/// A refresh token the server issued, from `GET /__admin/refresh_tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RefreshTokenRecord {
    /// The token itself (test server only: it never leaves loopback).
    pub token: String,
    pub client_id: String,
    pub grant_id: String,
    /// Used once with rotation on: it no longer refreshes.
    pub consumed: bool,
    /// Ended by `POST /__admin/revoke_grants`.
    pub revoked: bool,
}

/// A token exchange the server saw, from `GET /__admin/exchanges` (never
/// the subject token itself).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExchangeRecord {
    pub client_id: String,
    /// The verified subject token's `sub` (`None` when it was refused first).
    pub sub: Option<String>,
    pub audience: Vec<String>,
    pub resource: Vec<String>,
    pub scope: Option<String>,
    /// An access token was issued.
    pub ok: bool,
    /// The refusal's error code, when refused.
    pub error: Option<String>,
}

/// A running test authorization server. Dropping it kills the process.
pub struct Provider {
    child: Child,
    /// Held only so that dropping it (EOF) tells the server to exit.
    _stdin: Option<ChildStdin>,
    issuer: String,
    /// `http://127.0.0.1:PORT`, where `/__admin/` lives whatever the issuer path.
    origin: String,
    http: reqwest::blocking::Client,
    discovery: Value,
    /// client_id -> token_endpoint_auth_method, for [`Provider::introspect`].
    auth_methods: BTreeMap<String, String>,
    stderr: Arc<Mutex<String>>,
}

impl Provider {
    /// Starts a server with these clients and default settings (1 h tokens,
    /// issuer at the root). Panics with a clear message on failure.
    pub fn start(clients: &[ClientSpec]) -> Provider {
        Provider::start_with(
            json!({ "clients": clients.iter().map(ClientSpec::to_json).collect::<Vec<_>>() }),
        )
    }

    /// Starts a server from a full config (see `tests/provider/server.mjs`):
    /// `{"clients": [...], "access_token_ttl": s, "issuer_path": "/x", ...}`.
    pub fn start_with(config: Value) -> Provider {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("provider");
        let script = dir.join("server.mjs");
        if !dir
            .join("node_modules")
            .join("oidc-provider")
            .join("package.json")
            .is_file()
        {
            panic!(
                "test provider: oidc-provider is not installed in {}; {INSTALL_HINT}",
                dir.display()
            );
        }
        let node = find_on_path("node")
            .unwrap_or_else(|| panic!("test provider: `node` not found on PATH (Node >= 20 is needed); then {INSTALL_HINT}"));

        let auth_methods = config["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let id = c["client_id"].as_str()?;
                let method = c["token_endpoint_auth_method"]
                    .as_str()
                    .unwrap_or("client_secret_basic");
                Some((id.to_string(), method.to_string()))
            })
            .collect();

        // The config holds client secrets: a private temp file, never argv.
        // The server reads it before printing READY, so it is deleted when
        // this function returns.
        let config_file = tempfile::Builder::new()
            .prefix("latchkey-provider-")
            .suffix(".json")
            .tempfile()
            .expect("test provider: cannot create a temp config file");
        std::fs::write(config_file.path(), serde_json::to_vec(&config).unwrap())
            .expect("test provider: cannot write the temp config file");

        let mut child = Command::new(&node)
            .arg(&script)
            .arg(config_file.path())
            .current_dir(&dir)
            .env("PROVIDER_EXIT_ON_STDIN_EOF", "1")
            .env_remove("PROVIDER_CONFIG")
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "test provider: cannot run {} {}: {e}; {INSTALL_HINT}",
                    node.display(),
                    script.display()
                )
            });
        let stdin = child.stdin.take();

        // Keep the tail of stderr for failure messages (echoed live when
        // LATCHKEY_PROVIDER_LOG is set).
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let buf = Arc::clone(&stderr);
            let mut pipe = child.stderr.take().unwrap();
            let echo = std::env::var_os("LATCHKEY_PROVIDER_LOG").is_some();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    let text = String::from_utf8_lossy(&chunk[..n]);
                    if echo {
                        eprint!("{text}");
                    }
                    let mut b = buf.lock().unwrap();
                    b.push_str(&text);
                    if b.len() > STDERR_KEEP {
                        let mut cut = b.len() - STDERR_KEEP;
                        while !b.is_char_boundary(cut) {
                            cut += 1;
                        }
                        b.drain(..cut);
                    }
                }
            });
        }

        // Read stdout on a thread: the first line must be READY; keep
        // draining afterwards so the child can never block on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        {
            let pipe = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }

        let provider_fail = |what: String, child: &mut Child| -> ! {
            let _ = child.kill();
            let _ = child.wait();
            // Give the stderr reader a moment to collect the last words.
            std::thread::sleep(Duration::from_millis(100));
            let log = stderr.lock().unwrap().clone();
            panic!("test provider: {what}; {INSTALL_HINT}\n--- server stderr ---\n{log}");
        };

        let issuer = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => match line.strip_prefix("READY ") {
                Some(issuer) => issuer.trim().to_string(),
                None => provider_fail(
                    format!("expected a READY line on stdout, got {line:?}"),
                    &mut child,
                ),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => provider_fail(
                format!("no READY line within {START_TIMEOUT:?}"),
                &mut child,
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                provider_fail(format!("server exited before READY ({status})"), &mut child)
            }
        };
        drop(config_file);

        let url = reqwest::Url::parse(&issuer)
            .unwrap_or_else(|e| panic!("test provider: bad issuer {issuer:?}: {e}"));
        let origin = url.origin().ascii_serialization();

        let http = off_runtime(|| {
            reqwest::blocking::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("test provider: cannot build an HTTP client: {e}"));

        let mut provider = Provider {
            child,
            _stdin: stdin,
            issuer,
            origin,
            http,
            discovery: Value::Null,
            auth_methods,
            stderr,
        };
        let discovery_url = format!("{}/.well-known/openid-configuration", provider.issuer);
        provider.discovery = provider.get_json(&discovery_url).1;
        provider
    }

    /// The issuer URL, e.g. `http://127.0.0.1:41234` or `.../tenant-a`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The discovery document (fetched once at start).
    pub fn discovery(&self) -> &Value {
        &self.discovery
    }

    /// The discovered token endpoint.
    pub fn token_endpoint(&self) -> &str {
        self.discovery["token_endpoint"]
            .as_str()
            .expect("discovery has no token_endpoint")
    }

    /// `http://127.0.0.1:PORT` (no issuer path): the admin layer's base.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The last part of the server's stderr (for diagnosing a failure).
    pub fn stderr_tail(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Counters since start or the last [`Provider::reset`].
    pub fn stats(&self) -> Stats {
        let (status, body) = self.get_json(&self.admin("stats"));
        assert_eq!(
            status, 200,
            "test provider: /__admin/stats answered {status}: {body}"
        );
        serde_json::from_value(body).expect("test provider: malformed stats")
    }

    /// Zeroes the counters, clears queued faults and `delay_all`.
    pub fn reset(&self) {
        self.admin_post("reset", json!({}));
    }

    /// Queues a fault for the next token requests, e.g.
    /// `json!({"kind":"status","status":503,"retry_after":2,"count":1})`,
    /// `{"kind":"delay","ms":500}`, `{"kind":"drop"}`, `{"kind":"garbage"}`.
    /// Faults apply in the order queued; `count` defaults to 1.
    pub fn inject(&self, fault: Value) {
        self.admin_post("fault", fault);
    }

    /// Delays every token request by `ms` (0 turns it off).
    pub fn delay_all(&self, ms: u64) {
        self.admin_post("delay_all", json!({ "ms": ms }));
    }

    /// RFC 7662 introspection through the discovered endpoint, authenticating
    /// the way the client is registered (basic unless it is registered
    /// `client_secret_post`). Panics unless the endpoint answers 200.
    pub fn introspect(&self, token: &str, client_id: &str, client_secret: &str) -> Value {
        let endpoint = self.discovery["introspection_endpoint"]
            .as_str()
            .expect("discovery has no introspection_endpoint")
            .to_string();
        let post =
            self.auth_methods.get(client_id).map(String::as_str) == Some("client_secret_post");
        let (status, body) = off_runtime(|| {
            let req = self.http.post(&endpoint);
            let req = if post {
                req.form(&[
                    ("token", token),
                    ("client_id", client_id),
                    ("client_secret", client_secret),
                ])
            } else {
                req.basic_auth(form_encode(client_id), Some(form_encode(client_secret)))
                    .form(&[("token", token)])
            };
            read_json(req.send())
        })
        .unwrap_or_else(|e| panic!("test provider: introspection failed: {e}"));
        assert_eq!(
            status, 200,
            "test provider: introspection answered {status}: {body}"
        );
        body
    }

    /// Status code of `GET /__admin/resource` with this bearer token
    /// (200 for a live access token, 401 otherwise).
    pub fn resource(&self, token: &str) -> u16 {
        let url = self.admin("resource");
        off_runtime(|| {
            self.http
                .get(&url)
                .bearer_auth(token)
                .send()
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("test provider: GET {url} failed: {e}"))
    }

    /// `GET /__admin/resource` with this `Authorization` header and, when
    /// given, this `DPoP` proof: the status and the body (a DPoP-bound
    /// token passes only as `DPoP <token>` with a proof by its key).
    pub fn resource_with(&self, authorization: &str, dpop: Option<&str>) -> (u16, Value) {
        let url = self.admin("resource");
        off_runtime(|| {
            let mut req = self.http.get(&url).header("authorization", authorization);
            if let Some(proof) = dpop {
                req = req.header("dpop", proof);
            }
            read_json(req.send())
        })
        .unwrap_or_else(|e| panic!("test provider: GET {url} failed: {e}"))
    }

    /// The resource's URL (what a DPoP proof for it names as `htu`).
    pub fn resource_url(&self) -> String {
        self.admin("resource")
    }

    /// Every refresh token issued to `client_id`, oldest first (rotation
    /// makes the last one the live one).
    pub fn refresh_tokens(&self, client_id: &str) -> Vec<RefreshTokenRecord> {
        let url = format!(
            "{}?client_id={}",
            self.admin("refresh_tokens"),
            form_encode(client_id)
        );
        let (status, body) = self.get_json(&url);
        assert_eq!(
            status, 200,
            "test provider: /__admin/refresh_tokens answered {status}: {body}"
        );
        serde_json::from_value(body["refresh_tokens"].clone())
            .expect("test provider: malformed refresh token list")
    }

    /// Every token exchange since start or the last [`Provider::reset`],
    /// oldest first (the server needs a `token_exchange` config).
    pub fn exchanges(&self) -> Vec<ExchangeRecord> {
        let (status, body) = self.get_json(&self.admin("exchanges"));
        assert_eq!(
            status, 200,
            "test provider: /__admin/exchanges answered {status}: {body}"
        );
        serde_json::from_value(body["exchanges"].clone())
            .expect("test provider: malformed exchange list")
    }

    /// What a user revoking the app's access at the provider does: ends
    /// every grant of `client_id` with all its refresh and access tokens.
    /// Returns how many grants ended.
    pub fn revoke_grants(&self, client_id: &str) -> u64 {
        let body = self.admin_post_json("revoke_grants", json!({ "client_id": client_id }));
        body["grants"]
            .as_u64()
            .expect("test provider: revoke_grants said no count")
    }

    /// Whether RFC 7662 introspection (as the confidential `client_id`)
    /// calls `token` active.
    pub fn is_active(&self, token: &str, client_id: &str, client_secret: &str) -> bool {
        self.introspect(token, client_id, client_secret)["active"] == json!(true)
    }

    /// Sets the lifetime of `client_id`'s access tokens issued from now on.
    pub fn set_access_token_ttl(&self, client_id: &str, seconds: u64) {
        self.admin_post_json(
            "access_token_ttl",
            json!({ "client_id": client_id, "seconds": seconds }),
        );
    }

    /// A refresh-token grant sent straight to the token endpoint (not through
    /// the daemon), as `client_id` — public when `client_secret` is `None`,
    /// else HTTP Basic. Returns the status and the JSON answer. Careful: a
    /// successful call rotates the token, and using a rotated one revokes
    /// the whole grant (oidc-provider's reuse detection).
    pub fn refresh_directly(
        &self,
        refresh_token: &str,
        client_id: &str,
        client_secret: Option<&str>,
    ) -> (u16, Value) {
        let endpoint = self.token_endpoint().to_string();
        off_runtime(|| {
            let req = self.http.post(&endpoint);
            let req = match client_secret {
                Some(secret) => req
                    .basic_auth(form_encode(client_id), Some(form_encode(secret)))
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", refresh_token),
                    ]),
                None => req.form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                    ("client_id", client_id),
                ]),
            };
            read_json(req.send())
        })
        .unwrap_or_else(|e| panic!("test provider: direct refresh failed: {e}"))
    }

    fn admin_post_json(&self, name: &str, body: Value) -> Value {
        let url = self.admin(name);
        let (status, answer) = off_runtime(|| read_json(self.http.post(&url).json(&body).send()))
            .unwrap_or_else(|e| panic!("test provider: POST {url} failed: {e}"));
        assert_eq!(
            status, 200,
            "test provider: POST {url} {body} answered {status}: {answer}"
        );
        answer
    }

    fn admin(&self, name: &str) -> String {
        format!("{}/__admin/{name}", self.origin)
    }

    fn admin_post(&self, name: &str, body: Value) {
        self.admin_post_json(name, body);
    }

    fn get_json(&self, url: &str) -> (u16, Value) {
        off_runtime(|| read_json(self.http.get(url).send())).unwrap_or_else(|e| {
            panic!(
                "test provider: GET {url} failed: {e}\n--- server stderr ---\n{}",
                self.stderr_tail()
            )
        })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        // SIGKILL then wait: the child is reaped, never left a zombie.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("pid", &self.child.id())
            .finish()
    }
}

fn read_json(resp: reqwest::Result<reqwest::blocking::Response>) -> Result<(u16, Value), String> {
    let resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.text().map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text)
        .map_err(|e| format!("HTTP {status}, body is not JSON ({e}): {text}"))?;
    Ok((status, body))
}

/// `application/x-www-form-urlencoded` encoding, which RFC 6749 §2.3.1
/// requires for client_id / client_secret inside HTTP Basic credentials.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
