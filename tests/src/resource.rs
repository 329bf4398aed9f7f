//! The protected resource of the proxy tests (`tests/provider/resource.mjs`,
//! a `node` child on 127.0.0.1 that checks bearer tokens by introspection
//! at the real test provider), the `latchkey proxy` process in front of
//! it, and `curl` as the app.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::env::TestEnv;
use crate::provider::{find_on_path, Provider};

/// Bound on the resource's start and on reading the proxy's address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one curl run.
const CURL_SECS: &str = "120";

/// The resource server; stopped on drop (its stdin closes).
pub struct Resource {
    child: Child,
    pub url: String,
}

impl Resource {
    /// Starts it, introspecting at `p` as `client_id` / `secret`.
    pub fn start(p: &Provider, client_id: &str, secret: &str) -> Resource {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("provider");
        let node = find_on_path("node").expect("`node` is on PATH (Node >= 20)");
        let introspection = p.discovery()["introspection_endpoint"]
            .as_str()
            .expect("discovery names an introspection endpoint")
            .to_owned();
        let mut child = Command::new(node)
            .arg(dir.join("resource.mjs"))
            .arg(&introspection)
            .arg(client_id)
            .env("RESOURCE_CLIENT_SECRET", secret)
            .env("RESOURCE_EXIT_ON_STDIN_EOF", "1")
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the resource server starts");
        let url = first_line(child.stdout.take().unwrap())
            .and_then(|l| l.strip_prefix("READY ").map(str::to_owned))
            .expect("the resource server prints READY");
        Resource { child, url }
    }

    /// The next `n` requests get 401 whatever their token.
    pub fn fail_next(&self, n: u32) {
        let client = reqwest::blocking::Client::new();
        let status = client
            .post(format!("{}/__resource/fail_next", self.url))
            .body(format!("{{\"count\":{n}}}"))
            .send()
            .expect("the resource answers")
            .status();
        assert!(status.is_success());
    }

    /// `{requests, rejected, tokens}`.
    pub fn stats(&self) -> Value {
        reqwest::blocking::get(format!("{}/__resource/stats", self.url))
            .and_then(|r| r.json())
            .expect("the resource answers its stats")
    }
}

impl Drop for Resource {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line `out` prints, within [`START_TIMEOUT`]; the rest is
/// drained on a thread.
fn first_line(out: impl Read + Send + 'static) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx.recv_timeout(START_TIMEOUT).ok()
}

/// A running `latchkey proxy`.
pub struct ProxyRun {
    child: Child,
    /// What it printed on stdout: `http://127.0.0.1:PORT` or `unix:PATH`.
    pub listen: String,
    stderr: Arc<Mutex<String>>,
}

impl ProxyRun {
    /// Runs `latchkey proxy ARGS…` and waits for its address.
    pub fn start(env: &TestEnv, args: &[&str]) -> ProxyRun {
        let mut all = vec!["proxy"];
        all.extend_from_slice(args);
        let mut child = env.cli(&all).spawn();
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let buf = Arc::clone(&stderr);
            let mut pipe = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    buf.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        let Some(listen) = first_line(child.stdout.take().unwrap()) else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "`latchkey proxy` printed no address; stderr: {}",
                stderr.lock().unwrap()
            );
        };
        ProxyRun {
            child,
            listen,
            stderr,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.listen.strip_prefix("http://").expect("a TCP proxy")
    }

    /// What it said on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Ctrl-C, and its exit; what it said on stderr.
    pub fn interrupt(self) -> String {
        // SAFETY: kill with a pid of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        self.exit().1
    }

    /// Its exit (bounded), with its code and what it said on stderr.
    pub fn exit(mut self) -> (Option<i32>, String) {
        let status = crate::wait_for(
            "`latchkey proxy` to exit",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || self.child.try_wait().ok().flatten(),
        );
        std::thread::sleep(Duration::from_millis(50));
        (status.code(), self.stderr())
    }
}

impl Drop for ProxyRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl got: the status, the response headers (lowercase names) and
/// the body; or curl's own failure (exit code, stderr).
#[derive(Debug)]
pub struct Curl {
    pub code: i32,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl Curl {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Runs `curl -sS -i ARGS…` (as `user` when given, through `setpriv`).
pub fn curl(args: &[&str], user: Option<(u32, u32)>) -> Curl {
    let mut cmd = match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "-i", "--max-time", CURL_SECS])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null());
    let out = cmd.output().expect("curl runs (`.ci/test` installs it)");
    let (status, headers, body) = split_response(&out.stdout);
    Curl {
        code: out.status.code().unwrap_or(-1),
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The last response of curl's `-i` output (after any `100 Continue`).
fn split_response(out: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut rest = out;
    loop {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return (0, Vec::new(), rest.to_vec());
        };
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let body = &rest[end + 4..];
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) && body.starts_with(b"HTTP/") {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        return (status, headers, body.to_vec());
    }
}
