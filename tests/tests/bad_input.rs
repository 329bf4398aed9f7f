//! Hostile and broken clients on the daemon's socket, spoken to with a raw
//! `UnixStream`: malformed JSON, bad UTF-8, oversized lines, half-written
//! frames, unknown methods, wrong parameter types, non-object messages.
//! Each gets an error reply with the right `data.kind` (or, for a stalled
//! frame, a closed connection), nothing is echoed back, and meanwhile and
//! afterwards well-behaved clients keep being served by the same process.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use latchkey_client::protocol::{MAX_REQUEST_LEN, PROTOCOL_VERSION};
use latchkey_client::ErrorKind;
use latchkey_tests::fixture::{svc, svc_env};
use latchkey_tests::provider::Provider;
use latchkey_tests::{alive, DaemonHandle, DaemonOpts, RawConn, TestEnv};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

/// A planted value: error replies must never quote it.
const ECHO_CANARY: &str = "echo-canary-5f1d";

/// A daemon with a 1 s frame timeout, an unlocked vault and one credential
/// whose token is already cached.
struct Fixture {
    _provider: Provider,
    env: TestEnv,
    daemon: DaemonHandle,
    cached: String,
}

fn fixture() -> Fixture {
    let p = Provider::start(&[svc()]);
    let (env, daemon) = svc_env(
        &p,
        DaemonOpts::new().env("LATCHKEY_FRAME_TIMEOUT", "1s"),
        "svc",
    );
    let cached = env.token("svc");
    Fixture {
        _provider: p,
        env,
        daemon,
        cached,
    }
}

impl Fixture {
    /// A well-behaved client is served: hello, and the cached token.
    #[track_caller]
    fn served(&self, good: &mut RawConn) {
        let hello = good.call(&json!({"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":PROTOCOL_VERSION}}));
        assert_eq!(hello["result"]["pid"], self.daemon.pid, "{hello}");
        let token = good.call(
            &json!({"jsonrpc":"2.0","id":2,"method":"token.get","params":{"credential":"svc"}}),
        );
        assert_eq!(
            token["result"]["access_token"],
            self.cached.as_str(),
            "{token}"
        );
        // And a fresh connection through the client library.
        let reply = self
            .env
            .client()
            .token("svc")
            .expect("a fresh client is served");
        assert_eq!(reply.access_token.expose_secret(), self.cached);
    }
}

/// Asserts an error reply of this kind with a null id (the request could
/// not be read), and that it quotes nothing it was sent.
#[track_caller]
fn assert_error(reply: &Value, kind: ErrorKind, id: Value) {
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
    assert!(reply.get("result").is_none(), "{reply}");
    assert_eq!(reply["error"]["data"]["kind"], kind.as_str(), "{reply}");
    assert_eq!(reply["error"]["code"], kind.code(), "{reply}");
    let message = reply["error"]["message"].as_str().expect("a message");
    assert!(!message.is_empty());
    assert!(
        !message.contains(ECHO_CANARY),
        "the error quotes the request: {message}"
    );
}

#[test]
fn malformed_frames_get_an_error_and_a_closed_connection() {
    let f = fixture();
    let mut good = f.env.raw();
    f.served(&mut good);

    // (bytes sent, expected kind): the connection is closed after the reply.
    let cases: Vec<(Vec<u8>, ErrorKind)> = vec![
        (
            format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"{ECHO_CANARY}\"\n").into_bytes(),
            ErrorKind::ParseError,
        ),
        (b"not json at all\n".to_vec(), ErrorKind::ParseError),
        (
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"hello\",}\n".to_vec(),
            ErrorKind::ParseError,
        ),
        (
            [
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"he\xff\xfello\"}".as_slice(),
                b"\n",
            ]
            .concat(),
            ErrorKind::ParseError,
        ),
        (b"\xc3\x28\xa0\xa1\n".to_vec(), ErrorKind::ParseError),
    ];
    for (bytes, kind) in cases {
        let mut conn = f.env.raw();
        conn.send(&bytes).unwrap();
        let reply = conn
            .read_json()
            .unwrap()
            .expect("an error reply before closing");
        assert_error(&reply, kind, Value::Null);
        conn.expect_closed();
        f.served(&mut good);
    }
    assert!(alive(f.daemon.pid));
}

#[test]
fn an_oversized_line_is_refused_without_reading_it_all() {
    let f = fixture();
    let mut good = f.env.raw();
    // 1 MiB in one line, written by another thread: the daemon stops
    // reading at its 64 KiB bound, so our writes may fail once it closes.
    for newline in [true, false] {
        let mut conn = f.env.raw();
        let mut writer = conn.stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..16 {
                if writer.write_all(&chunk).is_err() {
                    return;
                }
            }
            if newline {
                let _ = writer.write_all(b"\n");
            }
        });
        let reply = conn.read_json().unwrap().expect("a frame_too_large reply");
        assert_error(&reply, ErrorKind::FrameTooLarge, Value::Null);
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&MAX_REQUEST_LEN.to_string()),
            "the message names the limit: {reply}"
        );
        conn.expect_closed();
        sender.join().unwrap();
        f.served(&mut good);
    }
    // Just under the limit is a normal (if useless) request: answered, not cut.
    let mut conn = f.env.raw();
    let padding = "x".repeat(MAX_REQUEST_LEN - 200);
    let reply = conn.call(
        &json!({"jsonrpc":"2.0","id":7,"method":"hello","params":{"protocol":1},"pad":padding}),
    );
    assert_eq!(reply["result"]["protocol"], PROTOCOL_VERSION, "{reply}");
    assert!(alive(f.daemon.pid));
}

#[test]
fn a_stalled_half_frame_is_dropped_while_others_are_served() {
    let f = fixture();
    let mut good = f.env.raw();
    // Many slow clients, each stuck mid-request.
    let mut stalled: Vec<RawConn> = (0..20)
        .map(|_| {
            let mut conn = f.env.raw();
            conn.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tok")
                .unwrap();
            conn
        })
        .collect();
    // Meanwhile the daemon serves others, on old and new connections.
    f.served(&mut good);
    for _ in 0..5 {
        f.served(&mut f.env.raw());
    }
    // LATCHKEY_FRAME_TIMEOUT=1s: each stalled connection is closed with no
    // reply (well inside the harness's 30 s read bound).
    for conn in &mut stalled {
        conn.expect_closed();
    }
    // A client idle *between* requests is not a stalled one: kept open.
    let mut idle = f.env.raw();
    f.served(&mut idle);
    std::thread::sleep(Duration::from_millis(2500));
    f.served(&mut idle);
    f.served(&mut good);
    assert!(alive(f.daemon.pid));
}

#[test]
fn bad_requests_get_the_right_error_kind_and_the_connection_stays_usable() {
    let f = fixture();
    let mut conn = f.env.raw();
    let secret_in_wrong_place = json!({"nested": ECHO_CANARY});
    // (request line, expected kind, expected id in the reply)
    let cases: Vec<(Value, ErrorKind, Value)> = vec![
        (
            json!({"jsonrpc":"2.0","id":1,"method":"no.such.method","params":{}}),
            ErrorKind::MethodNotFound,
            json!(1),
        ),
        (
            json!({"jsonrpc":"2.0","id":2,"method":"token.get","params":{"credential":42}}),
            ErrorKind::InvalidParams,
            json!(2),
        ),
        (
            json!({"jsonrpc":"2.0","id":3,"method":"token.get","params":{"credential":"svc","min_ttl":"soon"}}),
            ErrorKind::InvalidParams,
            json!(3),
        ),
        (
            json!({"jsonrpc":"2.0","id":4,"method":"token.get","params":{"credential":"svc","scopes":"api:read"}}),
            ErrorKind::InvalidParams,
            json!(4),
        ),
        (
            json!({"jsonrpc":"2.0","id":5,"method":"token.get","params":{}}),
            ErrorKind::InvalidParams,
            json!(5),
        ),
        (
            json!({"jsonrpc":"2.0","id":6,"method":"token.get","params":[42]}),
            ErrorKind::InvalidParams,
            json!(6),
        ),
        (
            json!({"jsonrpc":"2.0","id":7,"method":"token.get","params":{"credential":secret_in_wrong_place}}),
            ErrorKind::InvalidParams,
            json!(7),
        ),
        (
            json!({"jsonrpc":"2.0","id":8,"method":"vault.unlock","params":{"passphrase":[ECHO_CANARY]}}),
            ErrorKind::InvalidParams,
            json!(8),
        ),
        (
            json!({"jsonrpc":"2.0","id":9,"method":"hello","params":{"protocol":"one"}}),
            ErrorKind::InvalidParams,
            json!(9),
        ),
        (
            json!({"jsonrpc":"1.0","id":10,"method":"hello","params":{"protocol":1}}),
            ErrorKind::InvalidRequest,
            json!(10),
        ),
        (
            json!({"jsonrpc":"2.0","id":11}),
            ErrorKind::InvalidRequest,
            Value::Null,
        ),
        (
            json!({"jsonrpc":"2.0","id":12,"method":7}),
            ErrorKind::InvalidRequest,
            Value::Null,
        ),
        (json!([1, 2, 3]), ErrorKind::InvalidRequest, Value::Null),
        (json!([]), ErrorKind::InvalidRequest, Value::Null),
        (json!(42), ErrorKind::InvalidRequest, Value::Null),
        (json!("hello"), ErrorKind::InvalidRequest, Value::Null),
        (json!(null), ErrorKind::InvalidRequest, Value::Null),
        // A JSON-RPC batch: not supported, and not mistaken for a request.
        (
            json!([{"jsonrpc":"2.0","id":13,"method":"hello","params":{"protocol":1}}]),
            ErrorKind::InvalidRequest,
            Value::Null,
        ),
        (
            json!({"jsonrpc":"2.0","id":14,"method":"token.get","params":{"credential":"nope"}}),
            ErrorKind::NotFound,
            json!(14),
        ),
        (
            json!({"jsonrpc":"2.0","id":15,"method":"token.get","params":{"credential":"svc","scopes":["admin"]}}),
            ErrorKind::Forbidden,
            json!(15),
        ),
    ];
    for (request, kind, id) in cases {
        let reply = conn.call(&request);
        assert_error(&reply, kind, id);
        // The same connection is still served.
        f.served(&mut conn);
    }
    // A method name is quoted back only shortened and without control characters.
    let long = format!("x{}\u{7}", "y".repeat(500));
    let reply = conn.call(&json!({"jsonrpc":"2.0","id":16,"method":long}));
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.len() < 200 && !message.contains('\u{7}'),
        "{message}"
    );
    // Blank lines are skipped, not answered.
    conn.send(b"\n  \n").unwrap();
    f.served(&mut conn);
    assert!(alive(f.daemon.pid));
}

/// JSON-RPC 2.0 §4: "A rpc call is represented by sending a Request
/// object". serde also reads a struct from a JSON array (by position), so
/// an array shaped like a request must still be refused, not executed.
#[test]
fn a_request_shaped_array_is_not_executed() {
    let f = fixture();
    let mut conn = f.env.raw();
    let reply = conn.call(&json!(["2.0", 1, "hello", {"protocol": 1}]));
    assert_error(&reply, ErrorKind::InvalidRequest, Value::Null);
    let reply = conn.call(&json!(["2.0", 2, "token.get", {"credential": "svc"}]));
    assert_error(&reply, ErrorKind::InvalidRequest, Value::Null);
    assert!(
        reply["result"].is_null(),
        "a token was handed out for an array: {reply}"
    );
}

#[test]
fn clients_that_vanish_mid_request_do_not_disturb_the_daemon() {
    let f = fixture();
    let mut good = f.env.raw();
    // Connect and close at once; close mid-frame; close without reading a reply.
    for bytes in [&b""[..], b"{\"jsonrpc\":\"2.0\",", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"token.get\",\"params\":{\"credential\":\"svc\"}}\n"] {
        for _ in 0..20 {
            let mut s = UnixStream::connect(&f.env.socket).unwrap();
            let _ = s.write_all(bytes);
            drop(s);
        }
        f.served(&mut good);
    }
    assert!(alive(f.daemon.pid));
    assert!(f.env.daemon_running(&f.daemon));
}
