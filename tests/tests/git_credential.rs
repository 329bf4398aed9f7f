//! `latchkey git-credential` with the real `git` against a tiny HTTP git
//! server on 127.0.0.1 that answers 401 (`WWW-Authenticate: Basic`) unless
//! the Basic password is a token it accepts, then serves a dumb-HTTP
//! `info/refs`. Tokens come from oidc-provider through user logins.
//!
//! Needs `git` (`.ci/test` installs it), `cargo build --workspace --bins`
//! and `npm ci --prefix tests/provider`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use data_encoding::BASE64;
use latchkey_client::protocol::GrantType;
use latchkey_tests::browser::Browser;
use latchkey_tests::desktop::{can_run, on_path};
use latchkey_tests::fixture::*;
use latchkey_tests::provider::Provider;
use latchkey_tests::{CliResult, TestEnv};
use serde_json::json;

/// What the server saw: the path asked for, and the Basic credentials.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    user: String,
    password: String,
}

type Accept = dyn Fn(&str, &str, &str) -> bool + Send + Sync;

/// A git server that accepts a request when `accept(path, user, password)`.
struct GitServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: Arc<Mutex<Box<Accept>>>,
}

impl GitServer {
    fn start() -> GitServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accept: Arc<Mutex<Box<Accept>>> = Arc::new(Mutex::new(Box::new(|_, _, _| false)));
        let (s, a) = (Arc::clone(&seen), Arc::clone(&accept));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let path = first.split(' ').nth(1).unwrap_or("").to_owned();
                let mut auth = None;
                // Headers, bounded.
                for _ in 0..100 {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Authorization: Basic ") {
                        let decoded = BASE64.decode(v.trim().as_bytes()).unwrap_or_default();
                        let text = String::from_utf8_lossy(&decoded).into_owned();
                        if let Some((u, p)) = text.split_once(':') {
                            auth = Some((u.to_owned(), p.to_owned()));
                        }
                    }
                }
                let ok = match &auth {
                    Some((u, p)) => {
                        s.lock().unwrap().push(Seen {
                            path: path.clone(),
                            user: u.clone(),
                            password: p.clone(),
                        });
                        (a.lock().unwrap())(&path, u, p)
                    }
                    None => false,
                };
                let reply = if ok && path.contains("/info/refs") {
                    let body = "1111111111111111111111111111111111111111\trefs/heads/main\n";
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                } else if ok {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        GitServer { port, seen, accept }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.host())
    }

    fn accept(&self, f: impl Fn(&str, &str, &str) -> bool + Send + Sync + 'static) {
        *self.accept.lock().unwrap() = Box::new(f);
    }

    /// What it saw since the last call.
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn git_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("git"))
        .find(|p| p.is_file())
}

/// `git ARGS` in the env (HOME is the env's, so `--global` is its own),
/// never prompting, tracing the commands it runs into `trace`.
fn git(env: &TestEnv, args: &[&str]) -> CliResult {
    let trace = env_trace(env);
    env.program(&git_path().expect("git on PATH"), args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_TRACE", trace.display().to_string())
        .run()
}

/// Where git traces the commands it runs.
fn env_trace(env: &TestEnv) -> PathBuf {
    env.root.join("git-trace")
}

/// A file in the env's `$HOME` (`env.rs`: `root/home`).
fn home_file(env: &TestEnv, name: &str) -> String {
    std::fs::read_to_string(env.root.join("home").join(name)).unwrap_or_default()
}

/// A provider, a daemon, and user credentials `work` and `personal`
/// logged in (1 h access tokens).
fn setup(test: &str) -> Option<(Provider, TestEnv, latchkey_tests::DaemonHandle)> {
    if !can_run(
        test,
        git_path().is_some() && on_path("git"),
        "git is not installed",
    ) {
        return None;
    }
    let p = provider(3600, json!({}));
    let (env, d) = env_with(&p);
    for name in ["work", "personal"] {
        add_public(&env, name, GrantType::AuthorizationCode);
        assert!(env.browser_login(name, &Browser::new()).refresh_token);
    }
    Some((p, env, d))
}

#[test]
fn git_gets_the_routed_token_by_path_and_by_username() {
    let Some((p, env, _d)) = setup("git_gets_the_routed_token_by_path_and_by_username") else {
        return;
    };
    let server = GitServer::start();
    let work = env.token("work");
    let personal = env.token("personal");
    assert_ne!(work, personal);
    let base = format!("http://{}", server.host());
    env.latchkey(&[
        "git-credential",
        "setup",
        &format!("{base}/acme"),
        "--credential",
        "work",
    ])
    .success();
    env.latchkey(&["git-credential", "setup", &base, "--credential", "personal"])
        .success();
    env.latchkey(&[
        "git-credential",
        "setup",
        &format!("http://bob@{}", server.host()),
        "--credential",
        "work",
    ])
    .success();
    // The config gh would write: an empty helper first, then ours; paths sent.
    let config = home_file(&env, ".gitconfig");
    assert!(
        config.contains(&format!("[credential \"http://{}\"]", server.host())),
        "{config}"
    );
    assert!(
        config.contains("helper = \n") || config.contains("helper =\n"),
        "{config}"
    );
    assert!(config.contains("git-credential"), "{config}");
    assert!(
        config.to_lowercase().contains("usehttppath = true"),
        "{config}"
    );
    let routes = env.latchkey(&["git-credential", "routes", "--json"]).json();
    assert_eq!(routes.as_array().unwrap().len(), 3, "{routes}");

    let (w, pe) = (work.clone(), personal.clone());
    server.accept(move |path, _, pass| {
        (path.starts_with("/acme/") && pass == w) || (!path.starts_with("/acme/") && pass == pe)
    });
    // By path: acme's repositories get work's token, others personal's.
    let r = git(&env, &["ls-remote", &server.url("acme/widgets.git")]);
    r.success();
    assert!(r.out().contains("refs/heads/main"), "{r:?}");
    let seen = server.take();
    assert!(
        seen.iter().any(|s| s.path.starts_with("/acme/widgets.git/")
            && s.password == work
            && s.user == "oauth2"),
        "{seen:?}"
    );
    git(&env, &["ls-remote", &server.url("other/thing.git")]).success();
    assert!(server.take().iter().any(|s| s.password == personal));
    // By username: bob's URL gets work's token even outside acme.
    server.accept({
        let w = work.clone();
        move |_, user, pass| user == "bob" && pass == w
    });
    let r = git(
        &env,
        &[
            "ls-remote",
            &format!("http://bob@{}/other/thing.git", server.host()),
        ],
    );
    r.success();
    assert!(server
        .take()
        .iter()
        .any(|s| s.user == "bob" && s.password == work));

    // No token in git's argv (the trace lists every command git runs) or
    // in its config.
    let trace = std::fs::read_to_string(env_trace(&env)).unwrap_or_default();
    assert!(
        trace.contains("git-credential get"),
        "git ran our helper: {trace}"
    );
    for t in [&work, &personal] {
        assert!(!trace.contains(t.as_str()), "a token in git's trace");
        assert!(!home_file(&env, ".gitconfig").contains(t.as_str()));
        assert!(
            !env.all_daemon_logs().contains(t.as_str()),
            "a token in the daemon's log"
        );
    }

    // Removing the last route of the host removes git's helper config.
    env.latchkey(&["git-credential", "remove", &format!("{base}/acme")])
        .success();
    env.latchkey(&["git-credential", "remove", &base]).success();
    assert!(
        home_file(&env, ".gitconfig").contains("git-credential"),
        "bob's route is left"
    );
    env.latchkey(&["git-credential", "remove", &base, "--username", "bob"])
        .success();
    assert!(!home_file(&env, ".gitconfig").contains("git-credential"));
    drop(p);
}

#[test]
fn erase_after_a_401_makes_the_next_get_refresh() {
    let Some((p, env, _d)) = setup("erase_after_a_401_makes_the_next_get_refresh") else {
        return;
    };
    let server = GitServer::start();
    let base = format!("http://{}", server.host());
    env.latchkey(&["git-credential", "setup", &base, "--credential", "work"])
        .success();
    let first = env.token("work");
    // The server no longer takes the first token (as after a revocation).
    let old = first.clone();
    server.accept(move |_, _, pass| pass != old);
    let refreshes = p.stats().grant("refresh_token");
    let r = git(&env, &["ls-remote", &server.url("repo.git")]);
    assert_ne!(r.code, 0, "the server refused: {r:?}");
    assert!(server.take().iter().any(|s| s.password == first));
    // git called erase: the next get refreshes and the provider issues a new token.
    let r = git(&env, &["ls-remote", &server.url("repo.git")]);
    r.success();
    let seen = server.take();
    let second = seen.last().expect("a request").password.clone();
    assert_ne!(second, first);
    assert_eq!(p.stats().grant("refresh_token"), refreshes + 1);
    assert_eq!(
        p.resource(&second),
        200,
        "the new token is good at the provider"
    );
    assert_eq!(
        env.token("work"),
        second,
        "the refreshed token is the cached one now"
    );
}

#[test]
fn no_route_falls_through_and_store_writes_nothing() {
    let Some((_p, env, _d)) = setup("no_route_falls_through_and_store_writes_nothing") else {
        return;
    };
    let server = GitServer::start();
    let base = format!("http://{}", server.host());
    env.latchkey(&[
        "git-credential",
        "setup",
        &format!("{base}/acme"),
        "--credential",
        "work",
    ])
    .success();
    // A second helper after ours answers what we do not.
    let key = format!("credential.{base}.helper");
    git(
        &env,
        &[
            "config",
            "--global",
            "--add",
            &key,
            "!f() { echo username=next; echo password=from-the-next-helper; }; f",
        ],
    )
    .success();
    server.accept(|_, _, pass| pass == "from-the-next-helper");
    git(&env, &["ls-remote", &server.url("elsewhere/repo.git")]).success();
    assert!(server
        .take()
        .iter()
        .all(|s| s.password == "from-the-next-helper"));

    // get directly: the protocol's lines, expiry included; unknown keys,
    // capability[] and wwwauth[] tolerated.
    let input = format!(
        "capability[]=authtype\nprotocol=http\nhost={}\npath=acme/w.git\nwwwauth[]=Basic realm=\"git\"\nsomething_new=1\n\n",
        server.host()
    );
    let r = env.cli(&["git-credential", "get"]).stdin(input).run();
    r.success();
    let lines: HashMap<&str, &str> = r.out().lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(lines["username"], "oauth2");
    assert_eq!(lines["password"], env.token("work"));
    let expiry: i64 = lines["password_expiry_utc"].parse().expect("unix seconds");
    assert!(expiry > 0);
    // No route: nothing on stdout, exit 0.
    let r = env
        .cli(&["git-credential", "get"])
        .stdin(format!(
            "protocol=http\nhost={}\npath=other/x.git\n",
            server.host()
        ))
        .run();
    r.success();
    assert_eq!(r.out(), "");

    // store: exit 0, nothing kept anywhere.
    let canary = "latchkey-canary-git-store-password";
    let r = env
        .cli(&["git-credential", "store"])
        .stdin(format!(
            "protocol=http\nhost={}\nusername=x\npassword={canary}\n",
            server.host()
        ))
        .run();
    r.success();
    assert_eq!(r.out(), "");
    let vault = std::fs::read(env.vault.clone()).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&vault).contains(canary));
    assert!(!home_file(&env, ".gitconfig").contains(canary));
}
