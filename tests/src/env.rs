//! One test's private world ([`TestEnv`]): a temp directory with its own
//! `XDG_RUNTIME_DIR`, `XDG_DATA_HOME` and `HOME` (and `LATCHKEY_SOCKET` /
//! `LATCHKEY_VAULT` set explicitly), the environment every CLI run and
//! daemon gets, the vault file, and cleanup: dropping a [`TestEnv`] kills
//! every daemon it started, and every daemon the CLI started for it, so a
//! test never leaves an orphan.
//!
//! The binaries are found with [`latchkey_testkit::bin_dir`] (the cargo
//! target dir, or `$LATCHKEY_BIN_DIR`); build them first with
//! `cargo build --workspace --bins`. When a test fails, the env prints
//! every daemon log; set `LATCHKEY_TEST_KEEP=1` to keep its temp directory
//! as well.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::cli::CliResult;

/// The proof of a human that opening a credential to every app needs: the
/// test vault's passphrase.
pub fn proof() -> latchkey_client::protocol::Proof {
    latchkey_client::protocol::Proof::passphrase(secrecy::SecretString::from(PASSPHRASE))
}

/// The passphrase [`TestEnv::init`] creates the vault with.
pub const PASSPHRASE: &str = "correct horse battery staple";

pub(crate) const BUILD_HINT: &str = "run `cargo build --workspace --bins` first";

/// One test's private world: temp dirs, environment, daemons. See the module docs.
pub struct TestEnv {
    dir: tempfile::TempDir,
    /// The temp directory everything lives in.
    pub root: PathBuf,
    /// `$LATCHKEY_SOCKET`.
    pub socket: PathBuf,
    /// `$LATCHKEY_VAULT`.
    pub vault: PathBuf,
    bin_dir: PathBuf,
    /// The environment every CLI run and daemon gets (after `env_clear`).
    pub(crate) vars: Mutex<BTreeMap<String, OsString>>,
    /// Daemons started directly: pid, child, log.
    pub(crate) daemons: Mutex<Vec<(u32, Child, PathBuf)>>,
    /// How many daemons were started so far: numbers their log files.
    pub(crate) started: Mutex<u32>,
    /// Every CLI run, in order.
    pub(crate) transcript: Mutex<Vec<CliResult>>,
    /// The uid and gid every daemon and CLI run gets ([`TestEnv::run_as`]);
    /// `None`: the test's own.
    user: Mutex<Option<(u32, u32)>>,
    /// Dropped with the env, which tells its watchdog the test ended.
    _watchdog: std::sync::mpsc::Sender<()>,
}

/// A test whose env is still alive after this is stuck: its watchdog
/// prints what it can and aborts the test binary, so a hang is a failure
/// with a name instead of a CI run that never ends.
const STUCK_AFTER: Duration = Duration::from_secs(300);

/// Starts the watchdog of the env at `root` (see [`STUCK_AFTER`]).
fn watchdog(root: PathBuf, socket: PathBuf) -> std::sync::mpsc::Sender<()> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    std::thread::spawn(move || {
        if rx.recv_timeout(STUCK_AFTER) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            return;
        }
        let mut report = format!(
            "\n=== {test} is stuck: its env {} lived {STUCK_AFTER:?}; aborting ===\n",
            root.display()
        );
        report.push_str(&crate::process::daemon_logs(&root, &socket));
        // Straight to fd 2: the test harness captures `eprintln!`.
        use std::io::Write;
        let _ = std::io::stderr().write_all(report.as_bytes());
        std::process::abort();
    });
    tx
}

impl TestEnv {
    /// A fresh env with `LATCHKEY_INSECURE_TEST_KDF=1` (fast Argon2id).
    pub fn new() -> TestEnv {
        let env = TestEnv::with_real_kdf();
        env.set_env("LATCHKEY_INSECURE_TEST_KDF", "1");
        env
    }

    /// A fresh env whose vaults use the production Argon2id parameters.
    pub fn with_real_kdf() -> TestEnv {
        let bin_dir = bin_dir();
        // Short prefix: a Unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("lk-")
            .tempdir()
            .expect("cannot create a temp dir");
        let root = dir.path().to_path_buf();
        let run = root.join("run");
        let data = root.join("data");
        let home = root.join("home");
        for d in [&run, &data, &home] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let socket = run.join("latchkey").join("latchkey.sock");
        let vault = data.join("latchkey").join("vault.db");
        let mut vars = BTreeMap::new();
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        vars.insert("PATH".to_string(), path);
        vars.insert("HOME".to_string(), home.into_os_string());
        vars.insert("XDG_RUNTIME_DIR".to_string(), run.into_os_string());
        vars.insert("XDG_DATA_HOME".to_string(), data.into_os_string());
        vars.insert(
            "LATCHKEY_SOCKET".to_string(),
            socket.clone().into_os_string(),
        );
        vars.insert("LATCHKEY_VAULT".to_string(), vault.clone().into_os_string());
        let env = TestEnv {
            _watchdog: watchdog(root.clone(), socket.clone()),
            dir,
            root,
            socket,
            vault,
            bin_dir,
            vars: Mutex::new(vars),
            daemons: Mutex::new(Vec::new()),
            started: Mutex::new(0),
            transcript: Mutex::new(Vec::new()),
            user: Mutex::new(None),
        };
        env.write_secret_file("passphrase", PASSPHRASE);
        env
    }

    /// Path of a binary in the target dir.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Sets a variable in the environment of every later CLI run and daemon.
    pub fn set_env(&self, key: &str, value: impl Into<OsString>) {
        self.vars.lock().unwrap().insert(key.into(), value.into());
    }

    /// Removes a variable from the environment of later CLI runs and daemons.
    pub fn remove_env(&self, key: &str) {
        self.vars.lock().unwrap().remove(key);
    }

    /// Passes the test process's own value of `key` on, if it has one.
    pub fn pass_env(&self, key: &str) -> bool {
        match std::env::var_os(key) {
            Some(v) => {
                self.set_env(key, v);
                true
            }
            None => false,
        }
    }

    /// Writes a 0600 file in the env's root and returns its path.
    pub fn write_secret_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.root.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = self.user() {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        path
    }

    /// Runs every later daemon, CLI run and program of this env as `uid`
    /// and `gid` (a test running as root that needs an ordinary user: polkit
    /// authorizes root for everything), and gives them the env's files.
    pub fn run_as(&self, uid: u32, gid: u32) {
        fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("cannot chown {}: {e}", path.display()));
            if path.is_dir() && !path.is_symlink() {
                for entry in std::fs::read_dir(path).unwrap() {
                    chown_tree(&entry.unwrap().path(), uid, gid);
                }
            }
        }
        chown_tree(&self.root, uid, gid);
        *self.user.lock().unwrap() = Some((uid, gid));
    }

    /// The uid and gid set by [`TestEnv::run_as`].
    pub fn user(&self) -> Option<(u32, u32)> {
        *self.user.lock().unwrap()
    }

    /// A command for `program` in the env's clean environment, in its
    /// root, as its user.
    pub fn command(&self, program: &std::path::Path) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(program);
        cmd.env_clear()
            .envs(&*self.vars.lock().unwrap())
            .current_dir(&self.root);
        if let Some((uid, gid)) = self.user() {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// The file holding [`PASSPHRASE`].
    pub fn passphrase_file(&self) -> PathBuf {
        self.root.join("passphrase")
    }

    /// Opens the vault file with SQLite, for inspection and tampering. Stop
    /// the daemon before writing: it must not see a file change under it.
    pub fn vault_db(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open(&self.vault)
            .unwrap_or_else(|e| panic!("cannot open the vault {}: {e}", self.vault.display()));
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        db
    }

    /// The Argon2id parameters of the vault's passphrase slots (`kdf` of each slot's params).
    pub fn passphrase_slot_kdf(&self) -> Vec<Value> {
        let db = self.vault_db();
        let mut stmt = db
            .prepare("SELECT params FROM key_slots WHERE kind = 'passphrase'")
            .unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|p| serde_json::from_str::<Value>(&p.unwrap()).unwrap()["kdf"].clone())
            .collect();
        rows
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "=== latchkey test env {} (daemon logs follow) ===\n{}",
                self.root.display(),
                self.all_daemon_logs()
            );
        }
        self.kill_every_daemon();
        if std::env::var_os("LATCHKEY_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// [`latchkey_testkit::bin_dir`], checked to hold both binaries.
fn bin_dir() -> PathBuf {
    let dir = latchkey_testkit::bin_dir().expect("the test knows its own path");
    for name in ["latchkey", "latchkeyd"] {
        if !dir.join(name).is_file() {
            panic!(
                "{} not found in {}: {BUILD_HINT} (or set LATCHKEY_BIN_DIR)",
                name,
                dir.display()
            );
        }
    }
    dir
}
