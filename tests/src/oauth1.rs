//! The OAuth 1.0a test provider, seen from Rust: `tests/oauth1/server.py`
//! (oauthlib's endpoints, the reference implementation, on 127.0.0.1) as
//! a child of Debian's `/usr/bin/python3`, its `READY <port>` line, and
//! the calls a test makes to it. Dropping it closes the child's stdin,
//! which ends it; it is also killed and reaped.
//!
//! Needs `python3-oauthlib` and `python3-cryptography` (`.ci/test`
//! installs them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Debian's interpreter, whose packages hold oauthlib.
const PYTHON: &str = "/usr/bin/python3";
/// How long the server may take to print `READY` (it makes RSA keys).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether oauthlib and cryptography are there for `PYTHON`.
pub fn available() -> bool {
    Command::new(PYTHON)
        .args(["-c", "import oauthlib.oauth1, cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A consumer registered with the provider.
pub struct Consumer {
    pub key: String,
    /// HMAC and PLAINTEXT consumers.
    pub secret: Option<String>,
    /// RSA consumers: the provider makes a key pair and writes the private
    /// key (PKCS#8 PEM, 0600) here.
    pub rsa_key_out: Option<PathBuf>,
}

pub struct Oauth1Provider {
    child: Child,
    _stdin: ChildStdin,
    pub port: u16,
}

impl Oauth1Provider {
    /// Starts the provider with these consumers and token credentials
    /// issued beforehand (token, consumer key, token secret); `dir` holds
    /// its config.
    pub fn start(
        dir: &Path,
        consumers: &[Consumer],
        issued: &[(&str, &str, &str)],
    ) -> Oauth1Provider {
        let mut map = serde_json::Map::new();
        for c in consumers {
            let mut entry = serde_json::Map::new();
            if let Some(s) = &c.secret {
                entry.insert("secret".into(), s.clone().into());
            }
            if let Some(p) = &c.rsa_key_out {
                entry.insert("rsa_key_out".into(), p.display().to_string().into());
            }
            map.insert(c.key.clone(), entry.into());
        }
        let tokens: serde_json::Map<String, serde_json::Value> = issued
            .iter()
            .map(|(token, client, secret)| {
                (
                    token.to_string(),
                    serde_json::json!({ "client": client, "secret": secret }),
                )
            })
            .collect();
        let config = dir.join("oauth1-provider.json");
        let body = serde_json::json!({ "consumers": map, "access_tokens": tokens });
        std::fs::write(&config, body.to_string()).expect("write the provider's config");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth1/server.py");
        let mut child = Command::new(PYTHON)
            .arg(&script)
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start /usr/bin/python3 tests/oauth1/server.py");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .expect("the OAuth 1.0a provider printed READY in time");
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OAuth 1.0a provider said {line:?}, not READY <port>"));
        Oauth1Provider {
            child,
            _stdin: stdin,
            port,
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn client() -> reqwest::blocking::Client {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .build()
            .expect("a reqwest client")
    }

    /// Sends the request to the provider's resource endpoint with this
    /// `Authorization` header (and form body): whether oauthlib found the
    /// signature valid.
    pub fn accepts(
        &self,
        method: &str,
        url: &str,
        authorization: &str,
        form: &[(&str, &str)],
    ) -> bool {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = Self::client()
            .request(method, url)
            .header("authorization", authorization);
        if !form.is_empty() {
            request = request.form(form);
        }
        let response = request.send().expect("the provider answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().expect("a JSON answer");
        assert_eq!(body["valid"].as_bool(), Some(status == 200), "{body}");
        status == 200
    }

    /// Replays refused so far (a nonce seen before).
    pub fn replays_refused(&self) -> u64 {
        let stats: serde_json::Value = Self::client()
            .get(self.url("/__admin/stats"))
            .send()
            .and_then(|r| r.json())
            .expect("the provider's stats");
        stats["replays_refused"].as_u64().unwrap_or(0)
    }

    /// What a person's browser does with a login's start URL: follows
    /// the redirects (the daemon's start page, the provider's
    /// authorization page, which approves at once, then the daemon's
    /// callback); the last page's status.
    pub fn browse(&self, start_url: &str) -> u16 {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .expect("a reqwest client")
            .get(start_url)
            .send()
            .expect("the login pages answer")
            .status()
            .as_u16()
    }
}

impl Drop for Oauth1Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
