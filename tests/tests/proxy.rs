//! `latchkey proxy` end to end: the real CLI and daemon, curl as the app,
//! and a protected resource (`tests/provider/resource.mjs`) that accepts a
//! bearer token only when the real oidc-provider's introspection says it
//! is active. The app never holds the token.
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`,
//! `curl` and, for the other-uid test, root and `setpriv` (`.ci/test`).

use latchkey_tests::desktop::{can_run, is_root, on_path};
use latchkey_tests::fixture::*;
use latchkey_tests::provider::{ClientSpec, Provider};
use latchkey_tests::resource::{curl, ProxyRun, Resource};
use latchkey_tests::{wait_for, TestEnv};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// The app's own Authorization: it must never reach the upstream.
const APP_CANARY: &str = "app-own-canary-7f3a";

fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The provider (the svc client and the introspecting resource server),
/// the resource, and a vault with credential `api` for svc.
fn world() -> (Provider, Resource, TestEnv) {
    let p = Provider::start_with(json!({ "clients": [
        svc().to_json(),
        ClientSpec::client_credentials(RS_ID, RS_SECRET, "client_secret_basic", "").to_json(),
    ]}));
    let resource = Resource::start(&p, RS_ID, RS_SECRET);
    let env = svc_cli_env(&p, "api");
    (p, resource, env)
}

fn ready(test: &str) -> bool {
    can_run(test, on_path("curl"), "curl is not installed")
}

/// The pattern `/big` streams: byte i is i % 251.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
fn requests_reach_the_resource_with_a_token_the_app_never_saw() {
    if !ready("proxy_get_post") {
        return;
    }
    let (_p, resource, env) = world();
    let proxy = ProxyRun::start(&env, &["api", "--upstream", &resource.url]);
    let base = proxy.listen.clone();

    // GET, with the app's own Authorization and hop-by-hop headers.
    let got = curl(
        &[
            "-H",
            &format!("Authorization: Bearer {APP_CANARY}"),
            "-H",
            "Connection: keep-alive, x-app-hop",
            "-H",
            "X-App-Hop: dropped",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Authorization: Basic dXNlcjpwYXNz",
            "-H",
            "TE: trailers",
            "-H",
            "X-End-To-End: kept",
            &format!("{base}/things?x=1&y=two"),
        ],
        None,
    );
    assert_eq!(got.status, 200, "{got:?}");
    let seen = got.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/things");
    assert_eq!(seen["query"], "?x=1&y=two");
    assert_eq!(seen["auth_scheme"], "Bearer");
    assert_eq!(seen["client_id"], SVC_ID, "introspection names svc: {seen}");
    let headers = &seen["headers"];
    for dropped in ["x-app-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            headers.get(dropped).is_none(),
            "{dropped} was forwarded: {headers}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    assert_ne!(seen["token_sha256"], sha256(APP_CANARY.as_bytes()));

    // POST with a body (buffered: small).
    let body = "k=v&".repeat(25_000);
    let posted = curl(
        &[
            "-X",
            "POST",
            "--data-binary",
            &body,
            &format!("{base}/items"),
        ],
        None,
    );
    assert_eq!(posted.status, 200, "{posted:?}");
    let seen_post = posted.json();
    assert_eq!(seen_post["method"], "POST");
    assert_eq!(seen_post["body_len"], body.len());
    assert_eq!(seen_post["body_sha256"], sha256(body.as_bytes()));

    // The upstream's hop-by-hop response headers are dropped.
    let hop = curl(&[&format!("{base}/hop")], None);
    assert_eq!(hop.status, 200);
    assert_eq!(hop.header("x-upstream-end"), Some("kept"));
    assert_eq!(hop.header("x-upstream-hop"), None, "{:?}", hop.headers);
    assert_eq!(hop.header("keep-alive"), None, "{:?}", hop.headers);

    // The token the resource saw is the credential's, and the app saw it
    // nowhere: not in any response, nor in what the proxy printed.
    let token = env.token("api");
    assert_eq!(seen["token_sha256"], sha256(token.as_bytes()));
    for r in [&got, &posted, &hop] {
        assert!(!r.text().contains(&token), "a response carried the token");
        assert!(!format!("{:?}", r.headers).contains(&token));
    }
    // Each connection is its program, as the token path sees apps: curl
    // was issued the token, not the CLI's caller alone.
    let audit = env.cli(&["audit", "--json"]).run();
    assert!(
        audit
            .stdout
            .lines()
            .any(|l| l.contains("token_issued") && l.contains("curl")),
        "{}",
        audit.stdout
    );
    let said = proxy.interrupt();
    assert!(
        !said.contains(&token),
        "the proxy printed the token: {said}"
    );
    assert!(
        !env.all_daemon_logs().contains(&token),
        "the token is in the daemon's log"
    );
    assert!(!env.all_daemon_logs().contains(APP_CANARY));
}

#[test]
fn big_bodies_stream_both_ways_within_the_limits() {
    if !ready("proxy_streaming") {
        return;
    }
    let (_p, resource, env) = world();
    let proxy = ProxyRun::start(
        &env,
        &[
            "api",
            "--upstream",
            &resource.url,
            "--max-request-size",
            "24M",
            "--max-response-size",
            "48M",
        ],
    );
    let base = proxy.listen.clone();
    // Up: 20 MiB from a file (streamed: past the retry buffer).
    let up = pattern(20 << 20);
    let file = env.root.join("up.bin");
    std::fs::write(&file, &up).unwrap();
    let sent = curl(
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/upload"),
        ],
        None,
    );
    assert_eq!(sent.status, 200, "{}", sent.stderr);
    assert_eq!(sent.json()["body_len"], up.len());
    assert_eq!(sent.json()["body_sha256"], sha256(&up));
    // Down: 40 MiB, chunked.
    let down = curl(&[&format!("{base}/big?bytes={}", 40 << 20)], None);
    assert_eq!(down.status, 200, "{}", down.stderr);
    assert_eq!(down.body.len(), 40 << 20);
    assert_eq!(sha256(&down.body), sha256(&pattern(40 << 20)));
    // Past the limits: a declared body refused at once, a streamed
    // answer cut off.
    let big = pattern(30 << 20);
    std::fs::write(&file, &big).unwrap();
    let before = resource.stats()["requests"].as_u64().unwrap();
    let refused = curl(
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/upload"),
        ],
        None,
    );
    assert_eq!(refused.status, 413, "{refused:?}");
    assert!(
        refused.text().contains("--max-request-size"),
        "{}",
        refused.text()
    );
    assert_eq!(resource.stats()["requests"].as_u64().unwrap(), before);
    let cut = curl(&[&format!("{base}/big?bytes={}", 50 << 20)], None);
    assert!(
        cut.code != 0 && cut.body.len() < 50 << 20,
        "a response past the limit went through"
    );
    drop(proxy);
}

#[test]
fn other_hosts_connect_and_open_addresses_are_refused() {
    if !ready("proxy_no_open_proxy") {
        return;
    }
    let (_p, resource, env) = world();
    let proxy = ProxyRun::start(&env, &["api", "--upstream", &resource.url]);
    let base = proxy.listen.clone();
    let before = resource.stats()["requests"].as_u64().unwrap();
    // Another Host.
    let host = curl(&["-H", "Host: evil.example", &format!("{base}/x")], None);
    assert_eq!(host.status, 421, "{host:?}");
    assert!(host.text().contains("no open proxy"), "{}", host.text());
    // Another host in absolute form (the proxy used as an HTTP proxy).
    let absolute = curl(&["-x", &base, "http://evil.example/x"], None);
    assert_eq!(absolute.status, 421, "{absolute:?}");
    // CONNECT.
    let tunnel = curl(&["-p", "-x", &base, "https://evil.example/"], None);
    assert_ne!(tunnel.code, 0);
    assert!(tunnel.stderr.contains("405"), "{}", tunnel.stderr);
    assert_eq!(
        resource.stats()["requests"].as_u64().unwrap(),
        before,
        "a refused request reached the resource"
    );
    // The upstream itself in absolute form is fine.
    let upstream = curl(&["-x", &base, &format!("{}/ok", resource.url)], None);
    assert_eq!(upstream.status, 200, "{upstream:?}");
    // Listening anywhere but loopback is refused, naming the fix.
    let open = env
        .cli(&[
            "proxy",
            "api",
            "--upstream",
            &resource.url,
            "--listen",
            "0.0.0.0:0",
        ])
        .run();
    assert_ne!(open.code, 0);
    assert!(open.stderr.contains("loopback"), "{}", open.stderr);
    let plain = env
        .cli(&[
            "proxy",
            "api",
            "--upstream",
            "http://api.example.com/",
            "--listen",
            "127.0.0.1:0",
        ])
        .run();
    assert!(plain.stderr.contains("plain http"), "{}", plain.stderr);
    drop(proxy);
}

#[test]
fn a_401_drops_the_token_and_one_retry_with_a_fresh_one_succeeds() {
    if !ready("proxy_401_retry") {
        return;
    }
    let (p, resource, env) = world();
    let proxy = ProxyRun::start(&env, &["api", "--upstream", &resource.url]);
    let base = proxy.listen.clone();
    let first = curl(&[&format!("{base}/warm")], None);
    assert_eq!(first.status, 200);
    let fetched = p.stats().token_requests;
    resource.fail_next(1);
    let retried = curl(
        &["--data-binary", "small body", &format!("{base}/again")],
        None,
    );
    assert_eq!(retried.status, 200, "{retried:?}");
    assert_eq!(retried.json()["body_len"], 10);
    assert_eq!(
        p.stats().token_requests,
        fetched + 1,
        "exactly one new token"
    );
    let tokens = resource.stats()["tokens"].as_array().unwrap().clone();
    let n = tokens.len();
    assert_ne!(
        tokens[n - 1],
        tokens[n - 2],
        "the retry carried a fresh token"
    );
    // A streamed body (past the retry buffer) is not sent twice: its 401
    // goes back to the app.
    let file = env.root.join("two.bin");
    std::fs::write(&file, pattern(2 << 20)).unwrap();
    resource.fail_next(1);
    let streamed = curl(
        &[
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/stream"),
        ],
        None,
    );
    assert_eq!(streamed.status, 401, "{streamed:?}");
    drop(proxy);
}

#[test]
fn a_connection_from_another_uid_is_refused() {
    if !ready("proxy_other_uid")
        || !can_run(
            "proxy_other_uid",
            is_root(),
            "the test must run as root to run curl as nobody",
        )
        || !can_run(
            "proxy_other_uid",
            on_path("setpriv"),
            "setpriv is not installed",
        )
    {
        return;
    }
    let (_p, resource, env) = world();
    let proxy = ProxyRun::start(&env, &["api", "--upstream", &resource.url]);
    let base = proxy.listen.clone();
    let before = resource.stats()["requests"].as_u64().unwrap();
    let theirs = curl(&[&format!("{base}/x")], Some((65534, 65534)));
    assert_eq!(theirs.status, 403, "{theirs:?}");
    assert!(
        theirs.text().contains("only the programs of the user"),
        "{}",
        theirs.text()
    );
    assert_eq!(resource.stats()["requests"].as_u64().unwrap(), before);
    // Ours still works.
    assert_eq!(curl(&[&format!("{base}/x")], None).status, 200);
    let audit = env.cli(&["audit", "--json"]).run();
    assert!(
        audit.stdout.contains("proxy_peer_refused"),
        "{}",
        audit.stdout
    );
    assert!(audit.stdout.contains("uid 65534"), "{}", audit.stdout);
    drop(proxy);
}

#[test]
fn a_unix_socket_in_a_private_directory_serves_and_is_removed_at_the_end() {
    if !ready("proxy_unix") {
        return;
    }
    let (_p, resource, env) = world();
    let dir = env.root.join("sockets");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("api.sock");
    let sock_s = sock.to_str().unwrap().to_owned();
    let shared = env
        .cli(&[
            "proxy",
            "api",
            "--upstream",
            &resource.url,
            "--listen",
            &sock_s,
        ])
        .run();
    assert_ne!(shared.code, 0);
    assert!(shared.stderr.contains("chmod 700"), "{}", shared.stderr);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let proxy = ProxyRun::start(
        &env,
        &["api", "--upstream", &resource.url, "--listen", &sock_s],
    );
    assert_eq!(proxy.listen, format!("unix:{sock_s}"));
    let got = curl(
        &["--unix-socket", &sock_s, "http://localhost/via-unix"],
        None,
    );
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.json()["path"], "/via-unix");
    assert_eq!(got.json()["client_id"], SVC_ID);
    proxy.interrupt();
    wait_for(
        "the socket file to go",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (!sock.exists()).then_some(()),
    );
}

#[test]
fn ending_latchkey_proxy_closes_the_listener() {
    if !ready("proxy_stop") {
        return;
    }
    let (_p, resource, env) = world();
    let proxy = ProxyRun::start(&env, &["api", "--upstream", &resource.url]);
    let addr = proxy.addr().to_owned();
    assert_eq!(curl(&[&format!("http://{addr}/x")], None).status, 200);
    // A connection held open across the end is closed too.
    let held = std::net::TcpStream::connect(&addr).unwrap();
    proxy.interrupt();
    wait_for(
        "the proxy's port to close",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || std::net::TcpStream::connect(&addr).is_err().then_some(()),
    );
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut &held, &mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a held connection stayed open: {read:?}"
    );
    let audit = env.cli(&["audit", "--json"]).run();
    assert!(
        audit.stdout.contains("proxy_started") && audit.stdout.contains("proxy_stopped"),
        "{}",
        audit.stdout
    );
}

#[test]
fn a_daemon_that_stops_ends_the_proxy_and_says_so() {
    if !ready("proxy_daemon_stop") {
        return;
    }
    let (_p, resource, env) = world();
    let proxy = ProxyRun::start(&env, &["api", "--upstream", &resource.url]);
    let addr = proxy.addr().to_owned();
    env.cli(&["daemon", "stop"]).run().success();
    let (code, said) = proxy.exit();
    assert_ne!(code, Some(0));
    assert!(said.contains("proxy stopped"), "{said}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the port is still open"
    );
}

/// A credential added with `--dpop` (RFC 9449): every request through the
/// proxy carries a fresh proof by the vault's key for its own method and
/// URL. The resource (oidc-provider's origin, `/__admin/resource`) demands
/// its own nonce first: the proxy retries once with it, the token kept,
/// and takes the next nonce from the 200, so the next request is not
/// refused. The app never sees the token.
#[test]
fn a_dpop_credential_gets_a_fresh_proof_per_request_and_the_resources_nonce() {
    if !ready("proxy_dpop") {
        return;
    }
    let p = Provider::start_with(json!({
        "clients": [dpop_svc().to_json()],
        "resource_nonce": true,
    }));
    let env = dpop_cli_env(&p, "api", &["--dpop"]);
    let proxy = ProxyRun::start(&env, &["api", "--upstream", p.origin()]);
    let url = format!("{}/__admin/resource", proxy.listen);

    // The app's own Authorization and DPoP are replaced by the vault's.
    let first = curl(
        &[
            "-H",
            &format!("Authorization: Bearer {APP_CANARY}"),
            "-H",
            &format!("DPoP: {APP_CANARY}"),
            &url,
        ],
        None,
    );
    assert_eq!(first.status, 200, "{first:?}");
    let seen = first.json();
    assert!(seen["jkt"].is_string(), "a DPoP-bound token: {seen}");
    assert_eq!(seen["client_id"], DPOP_SVC_ID, "{seen}");
    let stats = p.stats();
    assert_eq!(stats.resource_nonce_demands, 1, "{stats:?}");

    // Fresh proofs (a replayed jti is refused), with the nonce of the 200.
    for _ in 0..2 {
        let next = curl(&[&url], None);
        assert_eq!(next.status, 200, "{next:?}");
        assert!(next.json()["jkt"].is_string());
    }
    let stats = p.stats();
    assert_eq!(stats.resource_nonce_demands, 1, "{stats:?}");
    // One token for all of it: the nonce demand did not drop it.
    assert_eq!(stats.token_requests, 1, "{stats:?}");
    assert_eq!(stats.token_requests_with_dpop, 1, "{stats:?}");
    let audit = env.cli(&["audit", "--json"]).run();
    assert!(
        !audit.stdout.contains("proxy_token_dropped"),
        "{}",
        audit.stdout
    );

    let r = env.latchkey(&["token", "api", "--json"]).json();
    assert_eq!(r["token_type"], "DPoP", "{r}");
    let token = r["access_token"].as_str().expect("a token").to_owned();
    assert!(
        !first.text().contains(&token),
        "a response carried the token"
    );
    assert!(!format!("{:?}", first.headers).contains(&token));
    let said = proxy.interrupt();
    assert!(
        !said.contains(&token),
        "the proxy printed the token: {said}"
    );
    assert!(
        !env.all_daemon_logs().contains(&token),
        "the token is in the daemon's log"
    );
}
