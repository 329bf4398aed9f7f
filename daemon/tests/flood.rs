//! Floods and login bookkeeping, in-process (see `in_process.rs` for the
//! harness and its paused clock): each peer process's share of the
//! connection cap, idle client connections closed, the cap on concurrent
//! logins, and every login outcome (an error, a timeout, the waiter
//! leaving, success, a failed start) removing its entry and closing its
//! loopback listener.

mod common;

use common::*;
use latchkey_client::protocol::*;
use latchkey_client::Client;
use latchkey_testkit::token_endpoint::UserClientConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// A provider with an authorization endpoint nobody visits (the tests play
/// the browser's part at the callback), and a public authorization-code
/// credential `web` at it.
async fn add_browser_credential(d: &TestDaemon, c: &mut Client) {
    let provider = ProviderAddParams {
        name: "web-idp".into(),
        issuer: None,
        endpoints: Endpoints {
            authorization_endpoint: Some("http://127.0.0.1:9/authorize".into()),
            token_endpoint: Some(d.endpoint.url.clone()),
            ..Endpoints::default()
        },
        oauth1: None,
    };
    c.request::<ProviderAdd>(&provider)
        .await
        .expect("provider.add");
    let credential = CredentialAddParams {
        name: "web".into(),
        provider: "web-idp".into(),
        client_id: "web-client".into(),
        client_secret: None,
        grant: GrantType::AuthorizationCode,
        auth: AuthMethod::None,
        scopes: vec!["read".into()],
        redirect_uri: None,
        access: Some(latchkey_client::protocol::Access::Open),
        exchange: None,
        client_key: None,
        assertion_audience: None,
        dpop: None,
        proof: Some(latchkey_client::protocol::Proof::passphrase(
            secrecy::SecretString::from(PASSPHRASE),
        )),
        signature_method: None,
        private_key: None,
    };
    c.request::<CredentialAdd>(&credential)
        .await
        .expect("credential.add");
}

async fn start_web(
    c: &mut Client,
    timeout_secs: Option<u64>,
) -> Result<LoginStartResult, latchkey_client::Error> {
    c.request::<LoginStart>(&LoginStartParams {
        credential: "web".into(),
        device: false,
        timeout_secs,
    })
    .await
}

/// The callback listener's address, and the callback URL with `query`
/// and the login's own `state`.
fn callback(started: &LoginStartResult, query: &str) -> (SocketAddr, reqwest::Url) {
    let auth = reqwest::Url::parse(
        started
            .authorization_url
            .as_deref()
            .expect("a browser login"),
    )
    .expect("the authorization URL parses");
    let param = |name: &str| {
        auth.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in the authorization URL"))
    };
    let mut url = reqwest::Url::parse(&param("redirect_uri")).expect("the redirect URI parses");
    let state = param("state");
    url.set_query(Some(&format!("{query}&state={state}")));
    let addr = SocketAddr::from(([127, 0, 0, 1], url.port().expect("a port")));
    (addr, url)
}

/// Lets real time pass for the daemon's I/O (the clock stays paused):
/// true once `cond` holds, false after a bounded number of tries.
async fn eventually(mut cond: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..400 {
        if cond().await {
            return true;
        }
        let _ = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(5))).await;
    }
    false
}

async fn listener_closed(addr: SocketAddr) -> bool {
    eventually(async || TcpStream::connect(addr).await.is_err()).await
}

async fn login_gone(c: &mut Client, login_id: &str) -> bool {
    let wait = LoginWaitParams {
        login_id: login_id.into(),
    };
    kind(c.request::<LoginWait>(&wait).await) == ErrorKind::NotFound
}

/// One process holds at most a quarter of the cap; the refused connection
/// gets a `rate_limited` error frame, and a freed place is usable again.
#[tokio::test(start_paused = true)]
async fn one_process_holds_at_most_its_share_of_connections() {
    let d = TestDaemon::start(Opts {
        max_connections: Some(8),
        ..Opts::default()
    })
    .await;
    let first = d.client().await;
    let mut second = d.client().await;
    let refused = Client::connect_to(&d.socket).await;
    assert_eq!(kind(refused), ErrorKind::RateLimited);
    second.status().await.expect("a held connection is served");
    drop(first);
    let mut again = None;
    assert!(
        eventually(async || {
            again = Client::connect_to(&d.socket).await.ok();
            again.is_some()
        })
        .await,
        "a freed place is given again"
    );
    again.unwrap().status().await.expect("served");
    d.stop().await;
}

/// A connection with no request for the idle timeout is closed; one in
/// use stays open; the clients connect again on their next call.
#[tokio::test(start_paused = true)]
async fn idle_client_connections_are_closed() {
    let mut d = TestDaemon::start(Opts {
        connection_idle_timeout: Duration::from_secs(60),
        ..Opts::default()
    })
    .await;
    let mut raw = tokio::net::UnixStream::connect(&d.socket)
        .await
        .expect("connects");
    let mut idle = d.client().await;
    let blocking_socket = d.socket.clone();
    let mut blocking = tokio::task::spawn_blocking(move || {
        latchkey_client::blocking::Client::connect_to(&blocking_socket).expect("connects")
    })
    .await
    .expect("the blocking client connects");
    let mut busy = d.client().await;
    d.pass(40).await;
    busy.status().await.expect("status");
    d.pass(30).await;
    busy.status()
        .await
        .expect("40 s + 30 s: used 30 s ago, still open");
    let mut byte = [0u8; 1];
    let read = tokio::io::AsyncReadExt::read(&mut raw, &mut byte).await;
    assert_eq!(read.expect("an orderly close"), 0, "idle 70 s: closed");
    // The client libraries notice the close and connect again, before
    // sending anything on the dead connection.
    idle.status()
        .await
        .expect("the async client reconnects after an idle close");
    tokio::task::spawn_blocking(move || blocking.status().map(|_| ()))
        .await
        .expect("the blocking call ran")
        .expect("the blocking client reconnects after an idle close");
    d.stop().await;
}

/// At most 8 logins run at once; a finished one (here: refused by the
/// provider at the callback) frees its place, its entry and its port.
#[tokio::test(start_paused = true)]
async fn concurrent_logins_are_capped_and_an_error_frees_one() {
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_browser_credential(&d, &mut c).await;
    let mut started = Vec::new();
    for _ in 0..8 {
        started.push(start_web(&mut c, None).await.expect("login.start"));
    }
    let (limited, retry_after) = kind_and_retry(start_web(&mut c, None).await);
    assert_eq!(limited, ErrorKind::RateLimited);
    assert!(retry_after.is_some());

    let first = started.remove(0);
    let (addr, url) = callback(&first, "error=access_denied");
    let waiter = {
        let mut w = d.client().await;
        let id = first.login_id.clone();
        tokio::spawn(async move {
            w.request::<LoginWait>(&LoginWaitParams { login_id: id })
                .await
        })
    };
    let page = reqwest::get(url).await.expect("the callback answers");
    assert_eq!(page.status(), 200);
    assert_eq!(kind(waiter.await.unwrap()), ErrorKind::Forbidden);
    assert!(listener_closed(addr).await, "the error closed the listener");
    assert!(login_gone(&mut c, &first.login_id).await);
    start_web(&mut c, None).await.expect("a place was freed");
    d.stop().await;
}

/// A waiter that disconnects cancels its login: the entry goes at once,
/// the listener closes (with every connection held on it).
#[tokio::test(start_paused = true)]
async fn a_waiter_leaving_cancels_the_login() {
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_browser_credential(&d, &mut c).await;
    let started = start_web(&mut c, None).await.expect("login.start");
    let (addr, _) = callback(&started, "code=c");
    let mut held = TcpStream::connect(addr).await.expect("the listener is up");
    let mut w = d.client().await;
    let id = started.login_id.clone();
    let waiter = tokio::spawn(async move {
        w.request::<LoginWait>(&LoginWaitParams { login_id: id })
            .await
    });
    // Let the daemon take the wait up, then hang up on it.
    let _ = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(50))).await;
    waiter.abort();
    assert!(
        listener_closed(addr).await,
        "the cancel closed the listener"
    );
    let mut buf = [0u8; 1];
    let closed = tokio::io::AsyncReadExt::read(&mut held, &mut buf).await;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "a held callback connection was ended"
    );
    assert!(login_gone(&mut c, &started.login_id).await);
    d.stop().await;
}

/// A login nobody completes ends at its timeout: the waiter is told, the
/// entry and the listener go.
#[tokio::test(start_paused = true)]
async fn a_timed_out_login_is_removed() {
    let mut d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_browser_credential(&d, &mut c).await;
    let started = start_web(&mut c, Some(5)).await.expect("login.start");
    let (addr, _) = callback(&started, "code=c");
    let wait = LoginWaitParams {
        login_id: started.login_id.clone(),
    };
    let timed_out = d.running(c.request::<LoginWait>(&wait)).await;
    assert_eq!(kind(timed_out), ErrorKind::ReauthRequired);
    assert!(listener_closed(addr).await);
    assert!(login_gone(&mut c, &started.login_id).await);
    d.stop().await;
}

/// Success (a device login) and failed starts leave no entry behind: more
/// than the cap of them in a row, and a login still starts afterwards.
#[tokio::test(start_paused = true)]
async fn finished_and_failed_logins_leave_no_entry() {
    let mut d = TestDaemon::start(Opts::default()).await;
    d.endpoint.add_user_client(
        "app",
        UserClientConfig {
            login_lifetime: 300,
            refresh_lifetime: 300,
            refresh_delay: Duration::ZERO,
        },
    );
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_device_credential(&mut c, "user", "app").await;
    // The endpoint refuses device authorization for an unknown client.
    add_device_credential(&mut c, "stranger", "nobody").await;
    for _ in 0..10 {
        let start = LoginStartParams {
            credential: "stranger".into(),
            device: true,
            timeout_secs: None,
        };
        assert!(c.request::<LoginStart>(&start).await.is_err());
    }
    let start = LoginStartParams {
        credential: "user".into(),
        device: true,
        timeout_secs: None,
    };
    let started = c
        .request::<LoginStart>(&start)
        .await
        .expect("a place is free");
    let wait = LoginWaitParams {
        login_id: started.login_id.clone(),
    };
    d.running(c.request::<LoginWait>(&wait))
        .await
        .expect("the endpoint approves device logins at once");
    assert!(login_gone(&mut c, &started.login_id).await);
    d.stop().await;
}

/// The start page of a login served by the daemon redirects to its
/// authorization URL, once.
#[tokio::test(start_paused = true)]
async fn the_start_page_redirects_to_the_authorization_url_once() {
    let d = TestDaemon::start(Opts::default()).await;
    let mut c = d.client().await;
    d.init(&mut c).await;
    add_browser_credential(&d, &mut c).await;
    let started = start_web(&mut c, None).await.expect("login.start");
    let start = started.start_url.clone().expect("a start URL");
    assert!(!start.contains("state="), "{start}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let first = http.get(&start).send().await.unwrap();
    assert_eq!(first.status(), 303);
    assert_eq!(
        first.headers()["location"].to_str().unwrap(),
        started.authorization_url.as_deref().unwrap()
    );
    assert_eq!(http.get(&start).send().await.unwrap().status(), 410);
    let wait = LoginWaitParams {
        login_id: started.login_id,
    };
    assert_eq!(
        kind(c.request::<LoginWait>(&wait).await),
        ErrorKind::Forbidden
    );
    d.stop().await;
}

/// Requests sent together (the CLI sends `hello` with its call) are all
/// answered, in order — the daemon writes their replies together — even
/// when the peer closes its sending side right after them.
#[tokio::test(start_paused = true)]
async fn pipelined_requests_are_all_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = TestDaemon::start(Opts::default()).await;
    let mut raw = tokio::net::UnixStream::connect(&d.socket)
        .await
        .expect("connects");
    let lines = concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1}}"#,
        "\n",
        r#"{"jsonrpc":"2.0","id":2,"method":"status"}"#,
        "\n",
        r#"{"jsonrpc":"2.0","id":3,"method":"no.such.method"}"#,
        "\n",
    );
    raw.write_all(lines.as_bytes()).await.expect("sent");
    raw.shutdown().await.expect("our side closed");
    let mut text = String::new();
    raw.read_to_string(&mut text).await.expect("UTF-8 replies");
    let replies: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON reply"))
        .collect();
    let ids: Vec<_> = replies.iter().map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids, [Some(1), Some(2), Some(3)], "{text}");
    assert!(replies[0]["result"]["protocol"].is_u64(), "{text}");
    assert!(replies[1]["result"].is_object(), "{text}");
    assert_eq!(replies[2]["error"]["data"]["kind"], "method_not_found");
    d.stop().await;
}
