//! The audit log end to end, with the real binaries: a real log (init, a
//! provider and two credentials added, tokens, a user login, a lock, a
//! wrong passphrase, an unlock) passes `latchkey audit verify`; then, with
//! the daemon stopped, the real `sqlite3` edits the vault file as an
//! attacker with disk access would — a row edited, a row deleted, two rows
//! swapped, the tail truncated, the sealed head deleted — and after a
//! restart `latchkey audit verify` exits 1 naming the row and what was
//! done. Also: `latchkey audit` filters by credential and age, rows
//! written while locked are chained at the next unlock, retention keeps
//! the log verifiable, and the OIDC subject is sealed (in no row in clear,
//! shown by `latchkey audit` while unlocked).
//!
//! Needs `cargo build --workspace --bins`, `npm ci --prefix tests/provider`
//! and `sqlite3` (`.ci/test` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use latchkey_client::protocol::{AuthMethod, GrantType};
use latchkey_tests::browser::Browser;
use latchkey_tests::fixture::{client_credentials, svc, PUBLIC_ID, SCOPE, SCOPES, TEST_PROVIDER};
use latchkey_tests::provider::{ClientSpec, Provider};
use latchkey_tests::{DaemonHandle, DaemonOpts, TestEnv};
use serde_json::Value;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs the real `sqlite3` on the vault file; panics with its stderr.
#[track_caller]
fn sqlite3(vault: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(vault)
        .arg(sql)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run sqlite3 ({e}): install it (`apt-get install sqlite3`; .ci/test does)"
            )
        });
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `latchkey audit ARGS --json`: one object per line.
fn audit_json(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    all.push("--json");
    let r = env.latchkey(&all);
    r.success();
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn events(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["event"].as_str().unwrap().to_owned())
        .collect()
}

/// The whole log once every row is chained and `until` holds (the writer
/// is asynchronous; bounded).
#[track_caller]
fn chained_log(env: &TestEnv, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut rows = Vec::new();
    for _ in 0..200 {
        rows = audit_json(env, &[]);
        if rows.iter().all(|r| r["chained"] == true) && until(&rows) {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the audit log never got there: {rows:#?}");
}

/// The vault file and its WAL, as raw bytes.
fn vault_bytes(vault: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for suffix in ["", "-wal"] {
        let mut path = vault.as_os_str().to_owned();
        path.push(suffix);
        if let Ok(b) = std::fs::read(PathBuf::from(path)) {
            bytes.extend(b);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Seq of the first row with this event.
fn seq_of(rows: &[Value], event: &str) -> i64 {
    rows.iter()
        .find(|r| r["event"] == event)
        .unwrap_or_else(|| panic!("no {event} row: {rows:#?}"))["seq"]
        .as_i64()
        .unwrap()
}

struct World {
    env: TestEnv,
    daemon: DaemonHandle,
    _p: Provider,
}

impl World {
    /// Starts the daemon again (stopped), unlocked from the passphrase file.
    fn start(&mut self, opts: DaemonOpts) {
        self.daemon = self.env.start_daemon_with(opts.unlocked(&self.env));
    }

    fn stop(&mut self) {
        let status = self.env.stop_daemon(&self.daemon);
        assert!(status.success(), "{status}");
    }
}

#[test]
fn a_real_log_verifies_and_every_kind_of_tampering_is_named() {
    let subject = format!("subject-canary-{:x}", now());
    let p = Provider::start(&[svc(), ClientSpec::user(PUBLIC_ID, None, "none", SCOPE)]);
    let env = TestEnv::new();
    let daemon = env.start_and_init();
    let mut w = World { env, daemon, _p: p };
    let env = &w.env;
    env.add_provider(TEST_PROVIDER, w._p.issuer());
    client_credentials(env, TEST_PROVIDER, "svc", &svc());
    env.token("svc");
    env.add_user_credential(
        "app",
        TEST_PROVIDER,
        PUBLIC_ID,
        None,
        AuthMethod::None,
        GrantType::AuthorizationCode,
        SCOPES,
    );
    let login = env.browser_login("app", &Browser::as_user(&subject));
    assert_eq!(login.subject.as_deref(), Some(subject.as_str()));
    env.latchkey(&["lock"]).success();
    env.cli(&["unlock", "--passphrase-stdin"])
        .stdin("wrong\n")
        .run()
        .code_is(10);
    let pass = env.passphrase_file();
    env.latchkey(&["unlock", "--passphrase-file", pass.to_str().unwrap()])
        .success();

    // The real log: every row chained, outcomes, the locked-time rows late.
    let rows = chained_log(env, |rows| events(rows).iter().any(|e| e == "unlock"));
    let names = events(&rows);
    for event in [
        "vault_init",
        "unlock",
        "provider_added",
        "credential_added",
        "token_fetched",
        "token_issued",
        "login_started",
        "login",
        "lock",
        "unlock_failed",
    ] {
        assert!(names.iter().any(|e| e == event), "no {event}: {names:?}");
    }
    let failed = &rows[seq_index(&rows, "unlock_failed")];
    assert_eq!(failed["outcome"], "failed");
    assert_eq!(failed["chained_late"], true, "written while locked");
    assert!(
        failed["app_key"]
            .as_str()
            .is_some_and(|a| a.starts_with("exe:/")),
        "the caller is named: {failed}"
    );
    let login_row = &rows[seq_index(&rows, "login")];
    assert_eq!(
        login_row["detail"],
        format!("sub={subject}"),
        "opened for the user"
    );
    let verify = env.latchkey(&["audit", "verify"]);
    verify.success();
    assert!(
        verify.stdout.starts_with(&format!(
            "audit log verified: {} rows (seq 1 to {})",
            rows.len(),
            rows.len()
        )),
        "{}",
        verify.stdout
    );
    assert!(verify
        .stdout
        .contains("chained late (written while the vault was locked"));

    // A rekey re-chains the log under the new data key (and re-seals the
    // subject): it still verifies, and still opens.
    env.latchkey(&["rekey", "--passphrase-file", pass.to_str().unwrap()])
        .success();
    let rows = chained_log(env, |rows| events(rows).iter().any(|e| e == "rekey"));
    let login_row = &rows[seq_index(&rows, "login")];
    assert_eq!(login_row["detail"], format!("sub={subject}"));
    env.latchkey(&["audit", "verify"]).success();

    // Filters.
    let svc_rows = audit_json(env, &["--credential", "svc"]);
    assert!(svc_rows.iter().all(|r| r["credential"] == "svc"));
    let svc_events = events(&svc_rows);
    for event in ["credential_added", "token_fetched", "token_issued"] {
        assert!(svc_events.iter().any(|e| e == event), "{svc_events:?}");
    }
    let table = env.latchkey(&["audit", "--credential", "svc"]);
    let lines: Vec<&str> = table.out().lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("OUTCOME"),
        "{}",
        table.stdout
    );
    assert_eq!(lines.len(), svc_rows.len() + 1, "{}", table.stdout);
    assert!(
        lines[1..].iter().all(|l| l.contains("  svc  ")),
        "{}",
        table.stdout
    );
    env.latchkey(&["audit", "--since", "yesterday"]).code_is(2);
    let none = env.latchkey(&["audit", "--credential", "nope"]);
    assert_eq!(none.out(), "no audit rows match");

    // The subject is sealed: not in any column, nor anywhere in the file.
    let dump = sqlite3(&env.vault, "SELECT * FROM audit; SELECT * FROM audit_head;");
    assert!(
        dump.contains("unlock_failed"),
        "the dump is the log: {dump}"
    );
    assert!(!dump.contains(&subject), "the subject in clear: {dump}");
    let bytes = vault_bytes(&env.vault);
    assert!(contains(&bytes, "credential_added"), "the real file");
    assert!(!contains(&bytes, &subject), "the subject in the vault file");

    // Rows written while the daemon was away, dated three days ago, are
    // chained late at the next unlock; `--since` tells them apart.
    w.stop();
    let old = now() - 3 * 86_400;
    sqlite3(
        &w.env.vault,
        &format!("INSERT INTO audit (at, event, detail) VALUES ({old}, 'imported', 'a'), ({old}, 'imported', 'b');"),
    );
    w.start(DaemonOpts::new());
    let env = &w.env;
    let rows = chained_log(env, |rows| events(rows).iter().any(|e| e == "imported"));
    let imported: Vec<&Value> = rows.iter().filter(|r| r["event"] == "imported").collect();
    assert_eq!(imported.len(), 2);
    assert!(imported.iter().all(|r| r["chained_late"] == true));
    let recent = events(&audit_json(env, &["--since", "1d"]));
    assert!(!recent.iter().any(|e| e == "imported"), "{recent:?}");
    assert!(recent.iter().any(|e| e == "vault_init"), "{recent:?}");
    let older = events(&audit_json(env, &["--since", "4d"]));
    assert_eq!(older.iter().filter(|e| *e == "imported").count(), 2);
    env.latchkey(&["audit", "verify"]).success();

    // A known good copy of the vault to tamper with, case by case.
    w.stop();
    let (rows_before, last_chained): (Vec<(i64, String)>, i64) = {
        let db = w.env.vault_db();
        let mut stmt = db
            .prepare("SELECT seq, event FROM audit ORDER BY seq")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // The shutdown's own `lock` row was written after the keys were
        // gone: it waits, unchained, for the next unlock.
        let chained = db
            .query_row(
                "SELECT max(seq) FROM audit WHERE mac IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (rows, chained)
    };
    let seq = |event: &str| -> i64 {
        rows_before
            .iter()
            .find(|(_, e)| e == event)
            .unwrap_or_else(|| panic!("no {event}: {rows_before:?}"))
            .0
    };
    let last = rows_before.last().unwrap().0;
    assert_eq!(
        (last_chained, rows_before.last().unwrap().1.as_str()),
        (last - 1, "lock"),
        "the shutdown's lock row waits for the next unlock"
    );
    let good = w.env.root.join("good-vault.db");
    sqlite3(&w.env.vault, &format!(".backup '{}'", good.display()));
    let edited = seq("token_fetched");
    let deleted = seq("provider_added");
    let (a, b) = (seq("credential_added"), seq("login_started"));
    let cases: Vec<(String, String, String)> = vec![
        (
            "a row edited".into(),
            format!("UPDATE audit SET detail = 'nothing happened' WHERE seq = {edited};"),
            format!("row {edited} of the audit log was edited"),
        ),
        (
            "a row deleted".into(),
            format!("DELETE FROM audit WHERE seq = {deleted};"),
            format!("row {deleted} of the audit log is missing"),
        ),
        (
            "two rows swapped".into(),
            format!(
                "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN ({a}, {b});
                 UPDATE audit SET (at, event, credential, peer_pid, detail, app, app_key, outcome, sealed_id, sealed_detail, chained_late, mac) =
                   (SELECT at, event, credential, peer_pid, detail, app, app_key, outcome, sealed_id, sealed_detail, chained_late, mac
                    FROM t WHERE t.seq = (CASE audit.seq WHEN {a} THEN {b} ELSE {a} END))
                 WHERE seq IN ({a}, {b});"
            ),
            format!("the audit log is out of order at row {a}"),
        ),
        (
            "the tail truncated".into(),
            format!("DELETE FROM audit WHERE seq > {};", last - 3),
            format!(
                "the audit log was truncated: rows {} to {last} at its end were removed",
                last - 2
            ),
        ),
        (
            "the head deleted".into(),
            "DELETE FROM audit_head;".into(),
            "the audit log's sealed head is missing".into(),
        ),
    ];
    for (what, tamper, expected) in cases {
        restore(&good, &w.env.vault);
        sqlite3(&w.env.vault, &tamper);
        w.daemon = w.env.start_daemon_with(DaemonOpts::new().unlocked(&w.env));
        let r = w.env.latchkey(&["audit", "verify"]);
        r.code_is(1);
        assert!(
            r.stderr.contains(&expected),
            "{what}: expected `{expected}` in: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("modified outside latchkey"),
            "{what}: {}",
            r.stderr
        );
        let json = w.env.cli(&["audit", "verify", "--json"]).run();
        json.code_is(1);
        let verdict: Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(verdict["ok"], false, "{what}: {verdict}");
        // The daemon keeps serving: tokens and the log itself.
        w.env.token("svc");
        w.env.latchkey(&["audit", "--credential", "svc"]).success();
        w.stop();
    }

    // Retention: 1,500 rows from 500 days ago, a daemon that keeps 1,000
    // rows and 400 days. The old rows go, and the log still verifies.
    restore(&good, &w.env.vault);
    let ancient = now() - 500 * 86_400;
    sqlite3(
        &w.env.vault,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
             INSERT INTO audit (at, event) SELECT {ancient}, 'ancient' FROM n;"
        ),
    );
    w.start(DaemonOpts::new().arg("--audit-max-rows").arg("1000"));
    let rows = chained_log(&w.env, |rows| {
        !events(rows).iter().any(|e| e == "ancient") && rows.len() < 1000
    });
    assert!(rows.iter().any(|r| r["event"] == "unlock"), "{rows:#?}");
    let r = w.env.latchkey(&["audit", "verify"]);
    r.success();
    let first = rows[0]["seq"].as_i64().unwrap();
    assert!(
        first > last + 1500,
        "the anchor moved past the pruned rows: {first}"
    );
    assert!(
        r.stdout.contains(&format!("(seq {first} to ")),
        "{}",
        r.stdout
    );
}

/// Puts the good copy back as the vault file, with no WAL of the last
/// run left to replay onto it.
fn restore(good: &Path, vault: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut path = vault.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(path));
    }
    std::fs::copy(good, vault).unwrap();
}

/// Index in `rows` of the first row with this event.
fn seq_index(rows: &[Value], event: &str) -> usize {
    let seq = seq_of(rows, event);
    rows.iter().position(|r| r["seq"] == seq).unwrap()
}

#[test]
fn latchkeyd_refuses_a_retention_too_small_to_mean_anything() {
    let env = TestEnv::new();
    for (flag, value, words) in [
        ("--audit-max-rows", "10", "at least 1000 rows"),
        ("--audit-max-age", "1h", "at least a day"),
        ("--audit-max-age", "soon", "invalid duration"),
    ] {
        let (status, log) = env.run_daemon_expecting_exit(
            DaemonOpts::new().arg(flag).arg(value),
            Duration::from_secs(10),
        );
        assert!(!status.success());
        assert!(log.contains(words), "{flag} {value}: {log}");
    }
}

/// `latchkey audit --follow` prints the log, then each new row as the
/// daemon writes it, until it is stopped; `--app` selects by app key.
#[test]
fn follow_prints_new_rows_as_they_come_and_app_selects() {
    let p = Provider::start(&[svc()]);
    let env = TestEnv::new();
    let _daemon = env.start_and_init();
    env.add_provider(TEST_PROVIDER, p.issuer());
    let mut child = Command::new(env.bin("latchkey"))
        .args(["audit", "--json", "--follow"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LATCHKEY_SOCKET", &env.socket)
        .env("LATCHKEY_VAULT", &env.vault)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("latchkey runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> Value {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no {what} row from --follow: {e}"))
    };
    // What was there already, then what comes.
    assert_eq!(next("first")["event"], "vault_init");
    assert_eq!(next("second")["event"], "provider_added");
    client_credentials(&env, TEST_PROVIDER, "svc", &svc());
    let added = next("new");
    assert_eq!(
        (added["event"].as_str(), added["credential"].as_str()),
        (Some("credential_added"), Some("svc"))
    );
    env.token("svc");
    assert_eq!(next("fetched")["event"], "token_fetched");
    let issued = next("issued");
    assert_eq!(issued["event"], "token_issued");
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();

    let app = issued["app_key"].as_str().expect("an app key").to_owned();
    let rows = audit_json(&env, &["--app", &app]);
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|r| r["app_key"] == app.as_str()),
        "{rows:#?}"
    );
    assert!(audit_json(&env, &["--app", "exe:/no/such/program"]).is_empty());
}
