//! Another local user's flood, end to end with the real daemon: during a
//! browser login, 1,000 idle TCP connections to the login's loopback port
//! and 1,000 idle connections to the daemon's socket. Other clients are
//! still served, the daemon's descriptors and memory stay within its caps,
//! and when the login ends its listener and every connection on it go.
//!
//! Needs `cargo build --workspace --bins` (no Node: the testkit's token
//! endpoint plays the provider).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use latchkey_client::protocol::{
    AuthMethod, CredentialAdd, CredentialAddParams, Endpoints, GrantType, LoginStartParams,
    ProviderAdd, ProviderAddParams,
};
use latchkey_testkit::token_endpoint::TokenEndpoint;
use latchkey_tests::fixture::runtime;
use latchkey_tests::{wait_for, TestEnv};
use secrecy::SecretString;

/// Idle connections of each kind the flood opens.
const FLOOD: usize = 1000;
/// The test process's descriptor limit, soft and hard, inherited by the
/// daemon: 2,000 flood sockets here plus room, and a daemon cap of
/// 4096 / 2 = 2048 connections, of which one process may hold 512.
const OPEN_FILES: u64 = 4096;
/// What the daemon computes from [`OPEN_FILES`] (daemon `Config::connection_cap`).
const CONNECTION_CAP: usize = 2048;
/// A quarter of the cap: what one process (this test) may hold.
const PEER_SHARE: usize = CONNECTION_CAP / 4;
/// The login listener's connection cap (daemon `callback::MAX_CONNECTIONS`).
const CALLBACK_CAP: usize = 16;
/// Descriptors a daemon has besides client and callback connections
/// (stdio, the vault and its WAL, the lock file, epoll, the runtime's
/// wakers, the HTTP client's pool): generous.
const OTHER_FDS: usize = 64;
/// 64 KiB per held connection: each costs an 8 KiB read buffer, two 1 KiB
/// buffers and a small task (under 16 KiB); four times that is the bound.
const RSS_PER_CONNECTION_KIB: u64 = 64;

#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
fn set_nofile(limit: u64) -> bool {
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || (lim.rlim_max as u64) < limit {
            return false;
        }
        lim.rlim_cur = limit as libc::rlim_t;
        lim.rlim_max = limit as libc::rlim_t;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_idle_connections_leaves_other_clients_served() {
    if !set_nofile(OPEN_FILES) {
        latchkey_tests::skip(&format!("the hard descriptor limit is below {OPEN_FILES}"));
        return;
    }
    let rt = runtime();
    let endpoint = rt
        .block_on(TokenEndpoint::start())
        .expect("the token endpoint binds 127.0.0.1:0");
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.init();
    env.rpc::<ProviderAdd>(&ProviderAddParams {
        name: "idp".into(),
        issuer: None,
        endpoints: Endpoints {
            // Nobody visits it: the login is cancelled, not completed.
            authorization_endpoint: Some("http://127.0.0.1:9/authorize".into()),
            token_endpoint: Some(endpoint.url.clone()),
            ..Endpoints::default()
        },
        oauth1: None,
    })
    .expect("provider.add");
    env.rpc::<CredentialAdd>(&CredentialAddParams {
        name: "svc".into(),
        provider: "idp".into(),
        client_id: "svc".into(),
        client_secret: Some(SecretString::from("s3cret")),
        grant: GrantType::ClientCredentials,
        auth: AuthMethod::ClientSecretBasic,
        scopes: vec!["read".into()],
        redirect_uri: None,
        access: Some(latchkey_client::protocol::Access::Open),
        exchange: None,
        client_key: None,
        assertion_audience: None,
        dpop: None,
        proof: Some(latchkey_client::protocol::Proof::passphrase(
            secrecy::SecretString::from(latchkey_tests::env::PASSPHRASE),
        )),
        signature_method: None,
        private_key: None,
    })
    .expect("credential.add svc");
    env.add_user_credential(
        "web",
        "idp",
        "web-client",
        None,
        AuthMethod::None,
        GrantType::AuthorizationCode,
        &["read"],
    );
    let started = env
        .login_start(&LoginStartParams {
            credential: "web".into(),
            ..Default::default()
        })
        .expect("login.start");
    let start_url =
        reqwest::Url::parse(started.start_url.as_deref().expect("a start URL")).unwrap();
    let port = start_url.port().expect("the start URL names the port");
    let callback = SocketAddr::from(([127, 0, 0, 1], port));

    // The person's `latchkey login` waits on its own connection, opened
    // before the flood.
    let mut waiter = UnixStream::connect(&env.socket).expect("connects");
    writeln!(
        waiter,
        r#"{{"jsonrpc":"2.0","id":1,"method":"login.wait","params":{{"login_id":"{}"}}}}"#,
        started.login_id
    )
    .unwrap();

    let pid = daemon.pid;
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);

    // The flood: connections that send nothing.
    let tcp: Vec<TcpStream> = (0..FLOOD)
        .filter_map(|_| TcpStream::connect_timeout(&callback, Duration::from_secs(2)).ok())
        .collect();
    let unix: Vec<UnixStream> = (0..FLOOD)
        .filter_map(|_| UnixStream::connect(&env.socket).ok())
        .collect();
    assert!(
        !tcp.is_empty() && unix.len() > PEER_SHARE,
        "the flood connected"
    );

    // Past its share, this process's connections were refused with a reason.
    let last = unix.last().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(last).read_line(&mut line);
    assert!(
        line.contains("rate_limited"),
        "refused with a reason: {line:?}"
    );

    // Everyone else is served: the CLI is another process.
    env.latchkey(&["status"]).success();
    assert!(!env.token("svc").is_empty());
    assert_eq!(endpoint.served(), 1);

    let fds = fd_count(pid);
    let bound = fds_before + PEER_SHARE + CALLBACK_CAP + OTHER_FDS;
    assert!(fds <= bound, "daemon holds {fds} descriptors, over {bound}");
    let rss = rss_kib(pid);
    let rss_bound = rss_before + (PEER_SHARE + CALLBACK_CAP) as u64 * RSS_PER_CONNECTION_KIB;
    assert!(
        rss <= rss_bound,
        "daemon RSS {rss} KiB, over {rss_bound} KiB (was {rss_before} KiB)"
    );
    eprintln!("daemon during the flood: {fds} fds (was {fds_before}), RSS {rss} KiB (was {rss_before} KiB)");

    // The person gives up (Ctrl-C): the login ends, and with it the
    // listener and every connection held on it.
    drop(waiter);
    wait_for(
        "the login listener to close",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || TcpStream::connect(callback).is_err().then_some(()),
    );
    for mut stream in tcp {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let read = std::io::Read::read(&mut stream, &mut buf);
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a callback connection outlived the login"
        );
        if let Err(e) = read {
            assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "still open after 10 s"
            );
        }
    }
    drop(unix);
    let settled = wait_for(
        "the daemon to release the flood's descriptors",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let now = fd_count(pid);
            (now <= fds_before + 2).then_some(now)
        },
    );
    eprintln!("daemon after the login ended: {settled} fds");
    env.latchkey(&["status"]).success();
}
