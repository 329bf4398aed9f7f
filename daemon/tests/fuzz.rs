//! The fuzz targets on stable, as part of `cargo test`: for every target of
//! `latchkey_daemon::fuzz::TARGETS`, the committed corpus (`fuzz/corpus/`)
//! is replayed, then structured inputs (built from each decoder's grammar
//! with a seeded RNG) and mutated ones (bit flips, truncations, splices of
//! corpus entries, inserted tokens) run until the time budget is spent.
//!
//! `LATCHKEY_FUZZ_SECS` sets the budget per target (default 5 s: CI runs
//! every target on every push); `LATCHKEY_FUZZ_SEED` the RNG seed (default
//! fixed, so a failure reproduces). An input that panics, or that runs
//! longer than `HANG_SECS`, fails the test naming the target and writing
//! the input to `target/tmp/fuzz-failures/`. Each target prints how many
//! inputs it ran.

use latchkey_client::protocol::METHODS;
use latchkey_daemon::fuzz::{self, Target, TARGETS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds per target when `LATCHKEY_FUZZ_SECS` is unset: all nine run
/// within CI's minute and a half, two at a time.
const DEFAULT_SECS: u64 = 5;
/// An input still running after this is a hang. Generous: a debug build on
/// a busy 2-core machine takes a few milliseconds per input.
const HANG_SECS: u64 = 20;
/// The seed when `LATCHKEY_FUZZ_SEED` is unset.
const DEFAULT_SEED: u64 = 0x1a7c_4e7d;
/// Inputs are capped to this length (the daemon's own bounds are larger;
/// longer inputs only slow the search).
const MAX_INPUT: usize = 16 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("the corpus of {target} is readable: {e}"))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    entries.sort();
    entries
        .iter()
        .map(|p| std::fs::read(p).expect("a readable corpus file"))
        .collect()
}

/// Writes a failing input where the report says, and returns the path.
fn save(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).expect("a directory for failing inputs");
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{target}-{hash:016x}"));
    std::fs::write(&path, input).expect("the failing input is written");
    path
}

/// The input running now, and since when; a watchdog thread reads it.
type Current = Arc<Mutex<Option<(Instant, Vec<u8>)>>>;

/// Fails the whole test process when one input runs past `HANG_SECS` (a
/// thread cannot be stopped from outside).
fn watchdog(target: &'static str, current: Current) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let guard = current.lock().unwrap_or_else(|e| e.into_inner());
        match &*guard {
            Some((started, input)) if started.elapsed() > Duration::from_secs(HANG_SECS) => {
                let path = save(target, input);
                let _ = writeln!(
                    std::io::stderr(),
                    "fuzz target {target} hangs: an input ran over {HANG_SECS} s; it is in {}",
                    path.display()
                );
                std::process::exit(70);
            }
            Some(_) => {}
            None if Arc::strong_count(&current) == 1 => return,
            None => {}
        }
    });
}

fn run_one(target: &'static str, entry: fn(&[u8]), input: &[u8], current: &Current) {
    *current.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), input.to_vec()));
    let outcome = std::panic::catch_unwind(|| entry(input));
    *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Err(panic) = outcome {
        let path = save(target, input);
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!(
            "fuzz target {target} failed on the input in {}: {why}",
            path.display()
        );
    }
}

/// Corpus, then structured and mutated inputs until the budget is spent.
fn fuzz_target(name: &str) {
    let &(target, entry): &Target = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a target of that name");
    let budget = Duration::from_secs(env_u64("LATCHKEY_FUZZ_SECS", DEFAULT_SECS));
    let seed = env_u64("LATCHKEY_FUZZ_SEED", DEFAULT_SEED);
    let mut rng =
        StdRng::seed_from_u64(seed ^ target.len() as u64 ^ u64::from(target.as_bytes()[0]));
    let current: Current = Arc::new(Mutex::new(None));
    watchdog(target, Arc::clone(&current));
    let corpus = corpus(target);
    assert!(!corpus.is_empty(), "fuzz/corpus/{target} has seeds");
    for input in &corpus {
        run_one(target, entry, input, &current);
    }
    let started = Instant::now();
    let (mut structured, mut mutated) = (0u64, 0u64);
    while started.elapsed() < budget {
        let input = if rng.random_bool(0.5) {
            structured += 1;
            generate(target, &mut rng)
        } else {
            mutated += 1;
            mutate(&corpus, &mut rng)
        };
        run_one(target, entry, &input, &current);
    }
    let _ = writeln!(
        std::io::stderr(),
        "fuzz target {target}: {} corpus + {structured} structured + {mutated} mutated inputs in {:.1} s (seed {seed:#x}), no failure",
        corpus.len(),
        started.elapsed().as_secs_f64()
    );
}

macro_rules! targets {
    ($($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz_target(stringify!($name));
            }
        )+

        #[test]
        fn every_target_has_a_test() {
            let tested = [$(stringify!($name)),+];
            for (name, _) in TARGETS {
                assert!(tested.contains(name), "no test runs fuzz target {name}");
            }
        }
    };
}

targets!(
    frame,
    request,
    callback,
    token_response,
    device_response,
    revocation_response,
    discovery,
    id_token,
    key_file,
);

#[test]
fn every_method_is_fuzzed_and_seeded() {
    let seeds: Vec<Vec<u8>> = corpus("request");
    for (name, _) in METHODS {
        assert!(
            fuzz::is_routed(name),
            "the request target does not parse {name}"
        );
        let quoted = format!("\"method\": \"{name}\"");
        let compact = format!("\"method\":\"{name}\"");
        assert!(
            seeds.iter().any(|s| {
                let s = String::from_utf8_lossy(s);
                s.contains(&quoted) || s.contains(&compact)
            }),
            "fuzz/corpus/request has no seed calling {name}"
        );
    }
}

/// The ID-token target's oracle: tokens signed by the trusted key pass
/// exactly when every claim is right.
#[test]
fn id_tokens_pass_exactly_when_every_claim_is_right() {
    let good = good_claims();
    let sign = |claims: &Value| fuzz::sign_id_token(claims).expect("the test key signs");
    assert_eq!(
        fuzz::verify_id_token(&sign(&good), Some(fuzz::NONCE)).map_err(|e| e.message),
        Ok("user-1".to_owned())
    );
    let defects = [
        ("iss", json!("https://evil.example")),
        ("aud", json!(["someone-else"])),
        ("exp", json!(1_600_000_000)),
        ("nonce", json!("another-nonce")),
    ];
    for (claim, bad) in defects {
        let mut claims = good.clone();
        claims[claim] = bad;
        let result = fuzz::verify_id_token(&sign(&claims), Some(fuzz::NONCE));
        assert!(result.is_err(), "a token with a bad {claim} passed");
    }
    let token = sign(&good);
    let (head, _) = token.rsplit_once('.').expect("a compact JWS");
    let forged = format!("{head}.{}", "A".repeat(86));
    assert!(fuzz::verify_id_token(&forged, Some(fuzz::NONCE)).is_err());
}

// ------------------------------------------------------------ mutation

/// Byte strings that matter to some decoder: JSON punctuation, HTTP and
/// URL syntax, the canaries, boundary numbers.
const TOKENS: &[&str] = &[
    "\n",
    "\r\n",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "-1",
    "0",
    "1e400",
    "18446744073709551616",
    "9223372036854775807",
    "%",
    "%0A",
    "%00",
    "%zz",
    "&",
    "=",
    "?",
    "#",
    "/",
    " HTTP/1.1\r\n",
    "\r\n\r\n",
    "$ISSUER",
    "http://",
    "https://",
    "latchkey-fuzz-passphrase",
    "latchkey-fuzz-client-secret",
    "latchkey-fuzz-refresh-token",
    "latchkey-fuzz-state",
    "\u{1b}[31m",
    "\u{feff}",
    "\u{10ffff}",
    ".",
];

fn mutate(corpus: &[Vec<u8>], rng: &mut StdRng) -> Vec<u8> {
    let mut input = corpus[rng.random_range(0..corpus.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        let len = input.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..=len)
        };
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
            2 => input.truncate(at),
            3 if len > 0 => {
                let end = rng.random_range(at..=len);
                input.drain(at.min(end)..end);
            }
            4 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                input.splice(at..at, token.bytes());
            }
            5 => {
                // Splice: this entry's head, another's tail.
                let other = &corpus[rng.random_range(0..corpus.len())];
                let from = rng.random_range(0..=other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => {
                // Repeat a piece (deep nesting, long lines).
                let end = rng.random_range(at..=len);
                let piece = input[at.min(end)..end].to_vec();
                for _ in 0..rng.random_range(1..64) {
                    input.splice(at..at, piece.iter().copied());
                }
            }
            _ => {
                let junk: Vec<u8> = (0..rng.random_range(1..8)).map(|_| rng.random()).collect();
                input.splice(at..at, junk);
            }
        }
        input.truncate(MAX_INPUT);
    }
    input
}

// ---------------------------------------------------------- structure

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn random_string(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => String::new(),
        1 => pick(rng, TOKENS).to_string(),
        2 => "x".repeat(rng.random_range(0..3000)),
        3 => (0..rng.random_range(0..24))
            .map(|_| char::from_u32(rng.random_range(0..0x11_0000)).unwrap_or('\u{fffd}'))
            .collect(),
        _ => (0..rng.random_range(1..16))
            .map(|_| char::from(rng.random_range(b' '..=b'~')))
            .collect(),
    }
}

/// Parameter names of every method (and the envelope's).
const FIELDS: &[&str] = &[
    "protocol",
    "passphrase",
    "keyring",
    "old",
    "new",
    "name",
    "issuer",
    "endpoints",
    "token_endpoint",
    "authorization_endpoint",
    "provider",
    "client_id",
    "client_secret",
    "grant",
    "auth",
    "scopes",
    "redirect_uri",
    "credential",
    "min_ttl",
    "device",
    "timeout_secs",
    "login_id",
    "local_only",
    "jsonrpc",
    "id",
    "method",
    "params",
];
/// Values of the protocol's enums, and a canary where a secret may go.
const WORDS: &[&str] = &[
    "client_credentials",
    "authorization_code",
    "device_code",
    "client_secret_basic",
    "client_secret_post",
    "none",
    "openid",
    "read write",
    "https://as.example/token",
    "http://127.0.0.1:1/x",
    "latchkey-fuzz-passphrase",
];

fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.random_bool(0.4);
    match rng.random_range(0..if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<i64>() >> rng.random_range(0..64)),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => Value::String(random_string(rng)),
        5 => Value::String(pick(rng, WORDS).to_string()),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..6))
                .map(|_| (pick(rng, FIELDS).to_string(), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

fn generate(target: &str, rng: &mut StdRng) -> Vec<u8> {
    let mut input = match target {
        "frame" => frame_input(rng),
        "request" => request_input(rng),
        "callback" => callback_input(rng),
        "token_response" => response_input(rng, &TOKEN_FIELDS),
        "device_response" => response_input(rng, &DEVICE_FIELDS),
        "revocation_response" => response_input(rng, &["error", "error_description"]),
        "discovery" => discovery_input(rng),
        "id_token" => id_token_input(rng),
        "key_file" => key_file_input(rng),
        other => panic!("no generator for {other}"),
    };
    input.truncate(MAX_INPUT);
    input
}

fn frame_input(rng: &mut StdRng) -> Vec<u8> {
    let mut input = vec![rng.random(), rng.random_range(0..8)];
    for _ in 0..input[1] {
        input.push(rng.random());
    }
    for _ in 0..rng.random_range(0..6) {
        let line = match rng.random_range(0..3) {
            0 => random_json(rng, 3).to_string().into_bytes(),
            1 => vec![b'x'; rng.random_range(0..200)],
            _ => (0..rng.random_range(0..40)).map(|_| rng.random()).collect(),
        };
        input.extend_from_slice(&line);
        if rng.random_bool(0.9) {
            input.push(b'\n');
        }
    }
    input
}

fn request_input(rng: &mut StdRng) -> Vec<u8> {
    let mut envelope = serde_json::Map::new();
    if rng.random_bool(0.9) {
        envelope.insert(
            "jsonrpc".into(),
            json!(if rng.random_bool(0.9) { "2.0" } else { "1.0" }),
        );
    }
    if rng.random_bool(0.9) {
        envelope.insert(
            "id".into(),
            if rng.random_bool(0.8) {
                json!(rng.random::<u32>())
            } else {
                random_json(rng, 2)
            },
        );
    }
    let method = if rng.random_bool(0.9) {
        pick(rng, METHODS).0.to_owned()
    } else {
        random_string(rng)
    };
    envelope.insert("method".into(), json!(method));
    if rng.random_bool(0.9) {
        let params = random_json(rng, 3);
        // Secrets, often in the wrong place or of the wrong type.
        let params = match params {
            Value::Object(mut map) => {
                for _ in 0..rng.random_range(0..3) {
                    let field = pick(rng, FIELDS).to_string();
                    map.insert(field, json!(fuzz::PARAM_CANARY));
                }
                Value::Object(map)
            }
            other => other,
        };
        envelope.insert("params".into(), params);
    }
    Value::Object(envelope).to_string().into_bytes()
}

fn callback_input(rng: &mut StdRng) -> Vec<u8> {
    let mut query = Vec::new();
    let value = |rng: &mut StdRng, right: &str| -> String {
        match rng.random_range(0..4) {
            0 => right.to_owned(),
            1 => url_encode(right),
            2 => url_encode(&random_string(rng)),
            _ => random_string(rng).replace([' ', '\r', '\n'], "+"),
        }
    };
    for _ in 0..rng.random_range(0..6) {
        let (key, right) = *pick(
            rng,
            &[
                ("state", fuzz::CALLBACK_STATE),
                ("code", "the-code"),
                ("iss", fuzz::ISSUER),
                ("error", "access_denied"),
                ("error_description", "denied"),
            ],
        );
        let v = value(rng, right);
        query.push(format!("{key}={v}"));
    }
    let path = if rng.random_bool(0.9) {
        "/callback"
    } else {
        "/elsewhere"
    };
    let method = *pick(rng, &["GET", "GET", "POST", "HEAD", "OPTIONS"]);
    let mut text = format!(
        "{method} {path}?{} HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        query.join("&")
    );
    if rng.random_bool(0.2) {
        text.push_str(&format!(
            "X-Junk: {}\r\n",
            random_string(rng).replace(['\r', '\n'], "")
        ));
    }
    text.push_str("\r\n");
    let mut input = vec![rng.random()];
    input.extend_from_slice(text.as_bytes());
    input
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

const TOKEN_FIELDS: [&str; 8] = [
    "access_token",
    "token_type",
    "expires_in",
    "refresh_token",
    "scope",
    "id_token",
    "error",
    "error_description",
];
const DEVICE_FIELDS: [&str; 9] = [
    "device_code",
    "user_code",
    "verification_uri",
    "verification_uri_complete",
    "expires_in",
    "interval",
    "error",
    "error_description",
    "verification_url",
];

fn response_input(rng: &mut StdRng, fields: &[&str]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    for field in fields {
        if rng.random_bool(0.6) {
            let value = match rng.random_range(0..5) {
                0 => random_json(rng, 2),
                1 => json!(rng.random::<u32>()),
                2 => json!(pick(
                    rng,
                    &[
                        "bearer",
                        "Bearer",
                        "invalid_grant",
                        "invalid_client",
                        "slow_down",
                        "authorization_pending",
                        "https://as.example/device",
                        fuzz::SECRET_CANARY,
                        fuzz::REFRESH_CANARY,
                    ]
                )),
                3 => json!(format!("{} {}", random_string(rng), fuzz::SECRET_CANARY)),
                _ => json!(random_string(rng)),
            };
            map.insert((*field).to_owned(), value);
        }
    }
    let mut input = vec![rng.random(), rng.random()];
    input.extend_from_slice(Value::Object(map).to_string().as_bytes());
    input
}

fn discovery_input(rng: &mut StdRng) -> Vec<u8> {
    let urls = [
        "$ISSUER",
        "$ISSUER/token",
        "$ISSUER/",
        "https://as.example/x",
        "http://example.com/t",
        "http://127.0.0.1:9/t",
        "ftp://x/",
        "https://u:p@h/",
        "https://h/#f",
        "not a url",
    ];
    let mut map = serde_json::Map::new();
    for field in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "device_authorization_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "jwks_uri",
    ] {
        if rng.random_bool(0.7) {
            let value = if rng.random_bool(0.8) {
                json!(pick(rng, &urls))
            } else {
                random_json(rng, 1)
            };
            map.insert(field.to_owned(), value);
        }
    }
    let mut input = vec![
        rng.random_range(0..4)
            | if rng.random_bool(0.8) {
                0
            } else {
                rng.random::<u8>() & !3
            },
    ];
    input.extend_from_slice(Value::Object(map).to_string().as_bytes());
    input
}

fn good_claims() -> Value {
    json!({
        "iss": fuzz::ISSUER,
        "aud": [fuzz::CLIENT_ID],
        "sub": "user-1",
        "exp": 4_102_444_800_i64,
        "iat": 1_700_000_000_i64,
        "nonce": fuzz::NONCE,
    })
}

/// A key file: comment and blank lines, key lines (good, short, long,
/// other alphabets, a wrong prefix), CRLF or LF, in any order.
fn key_file_input(rng: &mut StdRng) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = Vec::new();
    for _ in 0..rng.random_range(0..5) {
        match rng.random_range(0..5) {
            0 => text.extend_from_slice(b"# Latchkey key file"),
            1 => {}
            2 => {
                let prefix: &[u8] = if rng.random_bool(0.8) {
                    b"latchkey-key-file-v1:"
                } else {
                    b"latchkey-key-file-v2:"
                };
                text.extend_from_slice(prefix);
                let len = if rng.random_bool(0.7) {
                    43
                } else {
                    rng.random_range(0..60)
                };
                for _ in 0..len {
                    text.push(if rng.random_bool(0.95) {
                        B64[rng.random_range(0..B64.len())]
                    } else {
                        rng.random()
                    });
                }
            }
            3 => text.extend((0..rng.random_range(0..30)).map(|_| rng.random::<u8>())),
            _ => text.extend_from_slice(b"  \t "),
        }
        text.extend_from_slice(if rng.random_bool(0.8) { b"\n" } else { b"\r\n" });
    }
    text
}

fn id_token_input(rng: &mut StdRng) -> Vec<u8> {
    let mut claims = good_claims();
    for _ in 0..rng.random_range(0..3) {
        let claim = *pick(
            rng,
            &[
                "iss",
                "aud",
                "sub",
                "exp",
                "iat",
                "nonce",
                "azp",
                "auth_time",
            ],
        );
        claims[claim] = random_json(rng, 1);
    }
    let token = fuzz::sign_id_token(&claims)
        .unwrap_or_else(|_| fuzz::sign_id_token(&good_claims()).expect("the good claims sign"));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    match rng.random_range(0..4) {
        0 => {}
        1 => {
            // Another header, unsigned or with another algorithm.
            let alg = *pick(rng, &["none", "HS256", "RS256", "ES256", "EdDSA"]);
            parts[0] = b64url(format!("{{\"alg\":\"{alg}\",\"kid\":\"fuzz\"}}").as_bytes());
        }
        2 => {
            let part = rng.random_range(0..3);
            let mut bytes = parts[part].clone().into_bytes();
            if !bytes.is_empty() {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = *pick(rng, b"AZaz09-_=.+/");
            }
            parts[part] = String::from_utf8_lossy(&bytes).into_owned();
        }
        _ => parts.truncate(rng.random_range(0..3)),
    }
    let mut input = vec![rng.random()];
    input.extend_from_slice(parts.join(".").as_bytes());
    input
}

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}
