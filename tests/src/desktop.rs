//! D-Bus worlds for the notification and polkit tests, all real and all
//! private to the test: a session bus (`dbus-daemon`) in the env's root,
//! our notification service on it ([`Notifyd`], `src/bin/latchkey-test-notifyd`),
//! and a system bus with the real `polkitd` on it ([`Polkit`]; needs root:
//! it installs Latchkey's action and a rule for the test's duration).
//!
//! A missing tool fails the test in CI (`CI` set: `.ci/test` installs
//! them) and skips it elsewhere with a `SKIPPED …` line ([`can_run`]).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::env::TestEnv;

/// How long a bus, a service or an event may take to appear.
pub const WAIT: Duration = Duration::from_secs(30);

/// Where `polkitd` is installed on Debian.
pub const POLKITD: &str = "/usr/lib/polkit-1/polkitd";
/// Where polkit reads action definitions and JavaScript rules.
const ACTIONS_DIR: &str = "/usr/share/polkit-1/actions";
const RULES_DIR: &str = "/etc/polkit-1/rules.d";

/// Whether test `test` may run: `ready` says what it needs is here. If not,
/// in CI (`CI` set) that is a failure; elsewhere it prints
/// `SKIPPED test: why` ([`crate::skip`]) and the test returns.
pub fn can_run(test: &str, ready: bool, why: &str) -> bool {
    if ready {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {why}, and CI must run it (.ci/test installs what it needs)"
    );
    crate::skip(&format!("{test}: {why}"));
    false
}

/// Whether `tool` is an executable on `$PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Whether this test process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A `dbus-daemon` the test started; killed on drop.
pub struct Bus {
    child: Child,
    /// Its address, for `DBUS_SESSION_BUS_ADDRESS` / `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    _dir: Option<tempfile::TempDir>,
}

impl Bus {
    /// A private session bus in the env's root, run as the env's user, and
    /// `DBUS_SESSION_BUS_ADDRESS` set for the env's later daemons and runs.
    /// No service is activatable on it: only what the test starts.
    pub fn session(env: &TestEnv) -> Bus {
        let socket = env.root.join("session_bus");
        let config = env.root.join("session.conf");
        std::fs::write(&config, bus_config("session", &socket, false)).unwrap();
        let mut cmd = env.command(Path::new("dbus-daemon"));
        cmd.arg(format!("--config-file={}", config.display()));
        let bus = Bus::start(cmd, &socket, None);
        env.set_env("DBUS_SESSION_BUS_ADDRESS", &bus.address);
        bus
    }

    /// A private system bus anyone may connect to (polkitd runs as its own
    /// user), in a temp dir of its own.
    pub fn system() -> Bus {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("lk-sysbus-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("system_bus");
        let config = dir.path().join("system.conf");
        std::fs::write(&config, bus_config("system", &socket, true)).unwrap();
        let mut cmd = Command::new("dbus-daemon");
        cmd.arg(format!("--config-file={}", config.display()));
        Bus::start(cmd, &socket, Some(dir))
    }

    fn start(mut cmd: Command, socket: &Path, dir: Option<tempfile::TempDir>) -> Bus {
        cmd.args(["--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dbus-daemon: {e}"));
        let bus = Bus {
            child,
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        };
        crate::wait_for("the bus socket", WAIT, Duration::from_millis(20), || {
            std::os::unix::net::UnixStream::connect(socket).ok()
        });
        bus
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bus configuration: listens on `socket` only, activates nothing, lets
/// everyone who may connect own and call anything (`everyone`: any user may
/// connect, as on a system bus).
fn bus_config(kind: &str, socket: &Path, everyone: bool) -> String {
    let users = if everyone { r#"<allow user="*"/>"# } else { "" };
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{kind}</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    {users}
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

/// Our notification service on the env's session bus: every call it got
/// (as JSON events), and the clicks the test sends through it.
pub struct Notifyd {
    child: Child,
    stdin: Mutex<ChildStdin>,
    lines: Mutex<Receiver<Value>>,
    /// Every event read so far, in order.
    seen: Mutex<Vec<Seen>>,
}

/// An event notifyd printed, and whether a [`Notifyd::wait`] returned it.
struct Seen {
    event: Value,
    taken: bool,
}

impl Notifyd {
    /// Starts `exe` (the test's `CARGO_BIN_EXE_latchkey-test-notifyd`)
    /// with these capabilities (`actions,body`) and waits until it owns
    /// `org.freedesktop.Notifications`.
    pub fn start(env: &TestEnv, exe: &Path, caps: &str) -> Notifyd {
        let mut cmd = env.command(exe);
        cmd.arg(caps)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("notifyd printed no JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let notifyd = Notifyd {
            stdin: Mutex::new(child.stdin.take().expect("stdin is piped")),
            child,
            lines: Mutex::new(rx),
            seen: Mutex::new(Vec::new()),
        };
        notifyd.wait("notifyd to own its name", |e| e["event"] == "ready");
        notifyd
    }

    /// Waits (bounded by [`WAIT`]) for the first event `matches` accepts
    /// that no earlier wait returned, and returns it. Events are matched
    /// whatever order they arrived in: a signal the daemon sends in answer
    /// to a click may come before notifyd's own `sent` for that click.
    #[track_caller]
    pub fn wait(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let mut seen = self.seen.lock().unwrap();
                if let Some(found) = seen.iter_mut().find(|e| !e.taken && matches(&e.event)) {
                    found.taken = true;
                    return found.event.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // The receiver's lock is let go before a panic message
            // (which reads every event, taking it again) is built.
            let next = self.lines.lock().unwrap().recv_timeout(left);
            match next {
                Ok(event) => self.seen.lock().unwrap().push(Seen {
                    event,
                    taken: false,
                }),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "timed out after {WAIT:?} waiting for {what}; notifyd saw {:?}",
                    self.events()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("notifyd exited while waiting for {what}")
                }
            }
        }
    }

    /// Every event so far (those waiting to be read too), whether a wait
    /// returned it or not.
    pub fn events(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        let mut seen = self.seen.lock().unwrap();
        while let Ok(event) = lines.try_recv() {
            seen.push(Seen {
                event,
                taken: false,
            });
        }
        seen.iter().map(|e| e.event.clone()).collect()
    }

    /// The `notify` events so far.
    pub fn notifications(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "notify")
            .collect()
    }

    /// Sends a command (`invoke ID KEY`, `impostor ID KEY`, `closed ID`)
    /// and waits until notifyd sent the signal.
    pub fn send(&self, command: &str) {
        writeln!(self.stdin.lock().unwrap(), "{command}").unwrap();
        self.wait(&format!("notifyd to send `{command}`"), |e| {
            e["event"] == "sent" && e["command"] == command
        });
    }
}

impl Drop for Notifyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the test's polkit rule answers for Latchkey's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Yes,
    No,
}

/// The real polkitd on a private system bus, with Latchkey's action
/// installed and a rule for one user, all removed on drop. Needs root.
pub struct Polkit {
    pub bus: Bus,
    daemon: Option<Child>,
    user: String,
    rules: PathBuf,
    /// The action file this installed (removed on drop); `None` when one
    /// was there already.
    action: Option<PathBuf>,
    log: PathBuf,
}

impl Polkit {
    /// A system bus and polkitd on it, which knows no Latchkey action yet.
    pub fn start(user: &str, log_dir: &Path) -> Polkit {
        let mut polkit = Polkit {
            bus: Bus::system(),
            daemon: None,
            user: user.into(),
            rules: Path::new(RULES_DIR)
                .join(format!("10-latchkey-test-{}.rules", std::process::id())),
            action: None,
            log: log_dir.join("polkitd.log"),
        };
        polkit.restart();
        polkit
    }

    /// Whether Latchkey's action was installed on this machine before.
    pub fn action_preinstalled() -> bool {
        std::fs::read_dir(ACTIONS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| {
                std::fs::read_to_string(entry.path())
                    .is_ok_and(|text| text.contains(r#"id="dev.latchkey.approve""#))
            })
    }

    /// Installs `dist/polkit/dev.latchkey.policy` (if none is there) and a
    /// rule answering `rule` for the user, then restarts polkitd so that it
    /// reads both before it answers anyone.
    pub fn set(&mut self, rule: Rule) {
        let installed = Path::new(ACTIONS_DIR).join("dev.latchkey.policy");
        if !installed.exists() {
            let shipped =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/polkit/dev.latchkey.policy");
            std::fs::create_dir_all(ACTIONS_DIR).unwrap();
            std::fs::copy(&shipped, &installed)
                .unwrap_or_else(|e| panic!("cannot install {}: {e}", shipped.display()));
            self.action = Some(installed);
        }
        let result = match rule {
            Rule::Yes => "YES",
            Rule::No => "NO",
        };
        std::fs::create_dir_all(RULES_DIR).unwrap();
        std::fs::write(
            &self.rules,
            format!(
                "// Written by Latchkey's polkit test, removed when it ends.\n\
                 polkit.addRule(function(action, subject) {{\n\
                 \x20   if (action.id == \"dev.latchkey.approve\" && subject.user == \"{}\") {{\n\
                 \x20       return polkit.Result.{result};\n\
                 \x20   }}\n\
                 }});\n",
                self.user
            ),
        )
        .unwrap();
        self.restart();
    }

    /// Stops polkitd (if it runs) and starts it again on the bus; waits
    /// until it owns its name.
    fn restart(&mut self) {
        if let Some(mut old) = self.daemon.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(POLKITD)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus.address)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {POLKITD}: {e}"));
        self.daemon = Some(child);
        crate::wait_for(
            "polkitd to own its name",
            WAIT,
            Duration::from_millis(50),
            || {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                log.contains("Acquired the name org.freedesktop.PolicyKit1")
                    .then_some(())
            },
        );
    }

    /// polkitd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Polkit {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.rules);
        if let Some(action) = &self.action {
            let _ = std::fs::remove_file(action);
        }
    }
}

/// The uid and gid of user `name`, if it exists.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}
