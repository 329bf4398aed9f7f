//! A vault file modified while the daemon is stopped (with SQLite, as an
//! attacker with disk access would): swapped, bit-flipped and replayed
//! blobs, damaged key slots and hostile Argon2id parameters. Each is
//! detected — never decrypted into the wrong place, never sent to the
//! provider — and the rest of the vault keeps working.
//!
//! Needs `cargo build --workspace --bins` and `npm ci --prefix tests/provider`.

use latchkey_client::ErrorKind;
use latchkey_tests::fixture::{client_credentials, TEST_PROVIDER};
use latchkey_tests::provider::{ClientSpec, Provider};
use latchkey_tests::{alive, DaemonHandle, DaemonOpts, TestEnv};
use rusqlite::params;
use secrecy::ExposeSecret;
use serde_json::Value;

/// Two credentials, `a` and `b`, at one provider; the daemon is running.
struct Fixture {
    p: Provider,
    env: TestEnv,
    daemon: DaemonHandle,
}

fn fixture() -> Fixture {
    let a = ClientSpec::client_credentials("svc-a", "secret-a", "client_secret_basic", "api:read");
    let b = ClientSpec::client_credentials("svc-b", "secret-b", "client_secret_basic", "api:read");
    let p = Provider::start(&[a.clone(), b.clone()]);
    let env = TestEnv::new();
    let daemon = env.start_daemon();
    env.init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    client_credentials(&env, TEST_PROVIDER, "a", &a);
    client_credentials(&env, TEST_PROVIDER, "b", &b);
    Fixture { p, env, daemon }
}

impl Fixture {
    /// Stops the daemon, runs `tamper` on the vault file, and starts a new
    /// daemon (unlocked from the passphrase file when `unlock`).
    fn tamper_and_restart(&mut self, unlock: bool, tamper: impl FnOnce(&rusqlite::Connection)) {
        let status = self.env.stop_daemon(&self.daemon);
        assert!(status.success(), "{status}");
        {
            let db = self.env.vault_db();
            tamper(&db);
        }
        let opts = if unlock {
            DaemonOpts::new().unlocked(&self.env)
        } else {
            DaemonOpts::new()
        };
        self.daemon = self.env.start_daemon_with(opts);
    }

    /// `token.get` through the client library: the token or the error kind.
    fn token(&self, name: &str) -> Result<String, (ErrorKind, String)> {
        self.env
            .client()
            .token(name)
            .map(|t| t.access_token.expose_secret().to_string())
            .map_err(|e| (e.kind().unwrap_or(ErrorKind::Unknown), e.to_string()))
    }

    #[track_caller]
    fn assert_corrupt(&self, name: &str) {
        let (kind, message) = self
            .token(name)
            .expect_err("a tampered credential must not serve a token");
        assert_eq!(kind, ErrorKind::VaultCorrupt, "{message}");
        assert!(message.contains("integrity"), "{message}");
        let r = self.env.latchkey(&["token", name]);
        assert_ne!(r.code, 0, "{r:?}");
        assert!(r.stdout.is_empty(), "{}", r.stdout);
        assert!(
            r.stderr.contains("integrity"),
            "the CLI says what is wrong: {}",
            r.stderr
        );
    }
}

fn blob(db: &rusqlite::Connection, sql: &str, key: &str) -> Vec<u8> {
    db.query_row(sql, params![key], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql} [{key}]: {e}"))
}

/// Flips one bit in the middle of a blob (inside the ciphertext).
fn flip(mut bytes: Vec<u8>) -> Vec<u8> {
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    bytes
}

const SECRET_OF: &str = "SELECT client_secret FROM credentials WHERE name = ?1";
const SET_SECRET: &str = "UPDATE credentials SET client_secret = ?2 WHERE name = ?1";
const CONFIG_OF: &str = "SELECT config FROM credentials WHERE name = ?1";
const TOKEN_OF: &str =
    "SELECT t.token FROM tokens t JOIN credentials c ON c.id = t.credential_id WHERE c.name = ?1";
const SET_TOKEN: &str = "UPDATE tokens SET token = ?2 WHERE credential_id = (SELECT id FROM credentials WHERE name = ?1)";

fn swap(db: &rusqlite::Connection, get: &str, set: &str, x: &str, y: &str) {
    let (bx, by) = (blob(db, get, x), blob(db, get, y));
    assert_ne!(bx, by);
    db.execute(set, params![x, by]).unwrap();
    db.execute(set, params![y, bx]).unwrap();
}

#[test]
fn swapped_client_secrets_are_detected_and_never_sent() {
    let mut f = fixture();
    f.tamper_and_restart(true, |db| swap(db, SECRET_OF, SET_SECRET, "a", "b"));
    f.assert_corrupt("a");
    f.assert_corrupt("b");
    assert_eq!(
        f.p.stats().token_requests,
        0,
        "a swapped secret must not be decrypted and sent to the provider"
    );
    // The rest of the vault is intact.
    let shown = f
        .env
        .latchkey(&["credential", "show", "a", "--json"])
        .json();
    assert_eq!(shown["client_id"], "svc-a");

    // Swapped back, both work: the failures were the swap's doing.
    f.tamper_and_restart(true, |db| swap(db, SECRET_OF, SET_SECRET, "a", "b"));
    let ta = f.token("a").expect("restored credential a works");
    let tb = f.token("b").expect("restored credential b works");
    assert_eq!(
        f.p.introspect(&ta, "svc-a", "secret-a")["client_id"],
        "svc-a"
    );
    assert_eq!(
        f.p.introspect(&tb, "svc-b", "secret-b")["client_id"],
        "svc-b"
    );
    assert_eq!(f.p.stats().token_requests, 2);
}

#[test]
fn a_flipped_bit_in_a_credential_config_marks_only_that_credential_corrupt() {
    let mut f = fixture();
    f.tamper_and_restart(true, |db| {
        let bad = flip(blob(db, CONFIG_OF, "a"));
        db.execute(
            "UPDATE credentials SET config = ?2 WHERE name = ?1",
            params!["a", bad],
        )
        .unwrap();
    });
    let shown: Value = f
        .env
        .latchkey(&["credential", "show", "a", "--json"])
        .json();
    assert_eq!(shown["state"], "corrupt", "{shown}");
    f.assert_corrupt("a");
    assert_eq!(f.p.stats().token_requests, 0);
    let tb = f.token("b").expect("the untouched credential still works");
    assert_eq!(f.p.introspect(&tb, "svc-b", "secret-b")["active"], true);
    assert_eq!(f.p.stats().token_requests, 1);
    let log = f.env.daemon_log(&f.daemon);
    assert!(
        log.contains("credential 'a' failed its integrity check"),
        "{log}"
    );
}

#[test]
fn a_tampered_or_replayed_stored_token_is_not_served() {
    let mut f = fixture();
    let (a1, b1) = (f.token("a").unwrap(), f.token("b").unwrap());
    assert_eq!(f.p.stats().token_requests, 2);

    // One flipped bit in a's stored token: a is fetched afresh, b is reused.
    f.tamper_and_restart(true, |db| {
        let bad = flip(blob(db, TOKEN_OF, "a"));
        assert_eq!(db.execute(SET_TOKEN, params!["a", bad]).unwrap(), 1);
    });
    let a2 = f.token("a").unwrap();
    assert_ne!(a2, a1, "the tampered token must not be served");
    assert_eq!(
        f.token("b").unwrap(),
        b1,
        "the intact token is still served from the vault"
    );
    assert_eq!(
        f.p.stats().token_requests,
        3,
        "exactly one new request, for a"
    );
    assert_eq!(
        f.p.resource(&a1),
        200,
        "the old token was live: only the tamper kept it from being served"
    );
    let log = f.env.daemon_log(&f.daemon);
    assert!(log.contains("failed their integrity check"), "{log}");

    // Intact blobs replayed into each other's rows: neither opens there.
    f.tamper_and_restart(true, |db| swap(db, TOKEN_OF, SET_TOKEN, "a", "b"));
    let (a3, b3) = (f.token("a").unwrap(), f.token("b").unwrap());
    assert!(
        a3 != a2 && a3 != b1 && b3 != b1 && b3 != a2,
        "no swapped token was served"
    );
    assert_eq!(f.p.stats().token_requests, 5);
    assert_eq!(
        f.p.introspect(&a3, "svc-a", "secret-a")["client_id"],
        "svc-a"
    );
}

#[test]
fn a_damaged_key_slot_reads_as_a_wrong_passphrase() {
    let mut f = fixture();
    let original: Vec<u8> = f
        .env
        .vault_db()
        .query_row(
            "SELECT wrapped_dek FROM key_slots WHERE kind = 'passphrase'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let set = "UPDATE key_slots SET wrapped_dek = ?1 WHERE kind = 'passphrase'";
    let bad = flip(original.clone());
    f.tamper_and_restart(true, |db| {
        db.execute(set, params![bad]).unwrap();
    });
    // The start-up unlock failed, and says so in the log.
    let log = f.env.daemon_log(&f.daemon);
    assert!(log.contains("could not unlock the vault at start"), "{log}");
    let status = f.env.latchkey(&["status", "--json"]).json();
    assert_eq!(status["vault"], "locked");
    let file = f.env.passphrase_file();
    let r = f
        .env
        .latchkey(&["unlock", "--passphrase-file", file.to_str().unwrap()]);
    r.code_is(10);
    assert!(r.stderr.contains("wrong passphrase"), "{}", r.stderr);
    assert_eq!(
        f.env.latchkey(&["status", "--json"]).json()["vault"],
        "locked"
    );
    f.env.latchkey(&["token", "a"]).code_is(4);

    // Restored, the same passphrase opens it.
    f.tamper_and_restart(false, |db| {
        db.execute(set, params![original]).unwrap();
    });
    f.env
        .latchkey(&["unlock", "--passphrase-file", file.to_str().unwrap()])
        .success();
    f.token("a").expect("unlocked vault serves tokens");
}

#[test]
fn hostile_argon2_parameters_are_refused_without_running_them() {
    let mut f = fixture();
    let file = f.env.passphrase_file();
    let original: String = f
        .env
        .vault_db()
        .query_row(
            "SELECT params FROM key_slots WHERE kind = 'passphrase'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // 4 GiB of memory (a denial of service), then 8 KiB (a downgrade).
    for (m_kib, expected) in [
        (4u64 * 1024 * 1024, "exceeds the maximum"),
        (8, "below the minimum"),
    ] {
        let mut edited: Value = serde_json::from_str(&original).unwrap();
        edited["kdf"]["m_kib"] = m_kib.into();
        let edited = edited.to_string();
        f.tamper_and_restart(false, |db| {
            db.execute(
                "UPDATE key_slots SET params = ?1 WHERE kind = 'passphrase'",
                params![edited],
            )
            .unwrap();
        });
        // No hang: the CLI run is bounded by the harness (CLI_TIMEOUT), and
        // a daemon that ran a 4 GiB Argon2id would blow well past it or die.
        let r = f
            .env
            .latchkey(&["unlock", "--passphrase-file", file.to_str().unwrap()]);
        assert_ne!(r.code, 0, "{r:?}");
        assert!(
            r.stderr.contains("key slot") && r.stderr.contains(expected),
            "m={m_kib} KiB: the error names the slot and the problem: {}",
            r.stderr
        );
        assert!(alive(f.daemon.pid), "the daemon survived the attempt");
        assert_eq!(
            f.env.latchkey(&["status", "--json"]).json()["vault"],
            "locked"
        );
    }
    // Restored parameters: the vault opens again.
    f.tamper_and_restart(false, |db| {
        db.execute(
            "UPDATE key_slots SET params = ?1 WHERE kind = 'passphrase'",
            params![original],
        )
        .unwrap();
    });
    f.env
        .latchkey(&["unlock", "--passphrase-file", file.to_str().unwrap()])
        .success();
}
