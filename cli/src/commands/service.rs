//! `latchkey service install`: latchkeyd as a user service. On systemd a
//! socket unit at the path clients connect to (the daemon starts on the
//! first connection) and a hardened `Type=notify` service; on macOS a
//! launchd agent. Existing files that differ are kept unless `--force`.

use crate::context::Ctx;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the service files and print the commands that enable them
    Install(InstallArgs),
}

#[derive(clap::Args)]
pub struct InstallArgs {
    /// Only print the files that would be written, and where
    #[arg(long)]
    print: bool,
    /// Replace existing files that differ
    #[arg(long)]
    force: bool,
    /// The service manager [default: launchd on macOS, else systemd]
    #[arg(long, value_enum)]
    manager: Option<Manager>,
}

/// Which service manager's files to write.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

/// One file to write.
#[derive(Debug, PartialEq, Eq)]
pub struct Unit {
    pub path: PathBuf,
    pub text: String,
}

/// Where the files go and what they name.
pub struct Setup {
    /// The absolute path of `latchkeyd`.
    pub daemon: PathBuf,
    /// The socket clients connect to.
    pub socket: PathBuf,
    /// The vault file the daemon serves.
    pub vault: PathBuf,
    /// `$XDG_RUNTIME_DIR`, if set: a socket below it is written as `%t/…`.
    pub runtime_dir: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`, else `~/.config`.
    pub config_home: PathBuf,
    /// `$HOME`.
    pub home: PathBuf,
}

pub fn run(ctx: &Ctx, command: Command) -> Result<()> {
    let Command::Install(args) = command;
    let setup = Setup::from_env(ctx)?;
    let manager = args.manager.unwrap_or_else(Manager::native);
    let units = match manager {
        Manager::Systemd => systemd_units(&setup),
        Manager::Launchd => vec![launchd_plist(&setup)],
    };
    if args.print {
        for unit in &units {
            crate::output::print(&format!("# {}\n{}\n", unit.path.display(), unit.text))?;
        }
        return Ok(());
    }
    for unit in &units {
        if let Ok(existing) = std::fs::read_to_string(&unit.path) {
            if existing != unit.text && !args.force {
                return Err(crate::exit::usage(format!(
                    "{} exists and differs from what latchkey would write; compare with `latchkey service install --print`, then rerun with --force to replace it",
                    unit.path.display()
                )));
            }
        }
    }
    if manager == Manager::Systemd {
        // ProtectSystem=strict makes every other path read-only, and a
        // ReadWritePaths= that does not exist yet is skipped: the vault's
        // directory must be there before the service starts.
        if let Some(dir) = setup.vault.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| {
                    format!("failed to create the vault directory {}", dir.display())
                })?;
        }
    }
    for unit in &units {
        let dir = unit.path.parent().expect("a unit path has a directory");
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        std::fs::write(&unit.path, &unit.text)
            .with_context(|| format!("failed to write {}", unit.path.display()))?;
        ctx.done(format!("wrote {}", unit.path.display()))?;
    }
    let next = match manager {
        Manager::Systemd => {
            "systemctl --user daemon-reload && systemctl --user enable --now latchkey.socket"
                .to_owned()
        }
        Manager::Launchd => format!(
            "launchctl bootstrap gui/$(id -u) {}",
            units[0].path.display()
        ),
    };
    // The next step is the point of the command: printed even with -q.
    crate::output::print(&format!("next: {next}\n"))
}

impl Setup {
    fn from_env(ctx: &Ctx) -> Result<Setup> {
        let daemon = absolute_daemon()?;
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .context("HOME is not set: set it to your home directory")?;
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"));
        Ok(Setup {
            daemon,
            socket: ctx.socket.clone(),
            vault: ctx
                .vault
                .clone()
                .unwrap_or_else(latchkey_client::vault_path),
            runtime_dir: std::env::var_os("XDG_RUNTIME_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            config_home,
            home,
        })
    }
}

/// `latchkeyd` beside this executable, else on PATH, as an absolute path:
/// a service manager runs it with no PATH of ours.
fn absolute_daemon() -> Result<PathBuf> {
    let found = crate::spawn::daemon_binary();
    if found.is_absolute() {
        return Ok(found);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(&found))
        .find(|candidate| candidate.is_absolute() && candidate.is_file())
        .with_context(|| {
            "cannot find latchkeyd beside latchkey or on PATH: install it (cargo install --path daemon) and rerun".to_owned()
        })
}

/// The socket path as systemd should write it: `%t/…` below the runtime
/// directory (the path `latchkey_client::socket_path` computes), else as is.
fn socket_spec(setup: &Setup) -> String {
    if let Some(rest) = setup
        .runtime_dir
        .as_deref()
        .and_then(|run| setup.socket.strip_prefix(run).ok())
    {
        return format!("%t/{}", rest.display());
    }
    setup.socket.display().to_string()
}

/// A path as one word of a unit file: `%` doubled (systemd expands
/// specifiers), quoted when it holds white space.
fn unit_word(path: &Path) -> String {
    let text = path.display().to_string().replace('%', "%%");
    if text.chars().any(char::is_whitespace) {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        text
    }
}

/// `latchkey.socket` and `latchkey.service` for the user's systemd.
pub fn systemd_units(setup: &Setup) -> Vec<Unit> {
    let dir = setup.config_home.join("systemd/user");
    let socket = format!(
        "\
# Written by `latchkey service install`.
[Unit]
Description=Latchkey credential vault socket
Documentation=man:latchkey(1)

[Socket]
ListenStream={socket}
SocketMode=0600
DirectoryMode=0700
Accept=no

[Install]
WantedBy=sockets.target
",
        socket = socket_spec(setup)
    );
    let data_dir = unit_word(setup.vault.parent().unwrap_or(Path::new("/")));
    let service = format!(
        "\
# Written by `latchkey service install`.
[Unit]
Description=Latchkey credential vault daemon
Documentation=man:latchkey(1)
Requires=latchkey.socket
After=latchkey.socket

[Service]
Type=notify
ExecStart={daemon}
Environment={vault}
Restart=on-failure
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ReadWritePaths=-{data_dir}
LockPersonality=yes
MemoryDenyWriteExecute=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
# The keys live in one mlock'd page.
LimitMEMLOCK=8M
LimitCORE=0

[Install]
Also=latchkey.socket
",
        daemon = unit_word(&setup.daemon),
        vault = unit_word(Path::new(&format!(
            "LATCHKEY_VAULT={}",
            setup.vault.display()
        ))),
    );
    vec![
        Unit {
            path: dir.join("latchkey.socket"),
            text: socket,
        },
        Unit {
            path: dir.join("latchkey.service"),
            text: service,
        },
    ]
}

/// The launchd agent: runs latchkeyd at login and keeps it running (it
/// binds its own socket there).
pub fn launchd_plist(setup: &Setup) -> Unit {
    let escape = |p: &Path| {
        p.display()
            .to_string()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let text = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `latchkey service install`. -->
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>dev.latchkey.latchkeyd</string>
  <key>ProgramArguments</key>
  <array>
    <string>{daemon}</string>
    <string>--socket</string>
    <string>{socket}</string>
    <string>--vault</string>
    <string>{vault}</string>
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>KeepAlive</key>
  <dict>
    <key>SuccessfulExit</key>
    <false/>
  </dict>
  <key>ProcessType</key>
  <string>Background</string>
  <key>StandardErrorPath</key>
  <string>{log}</string>
</dict>
</plist>
"#,
        daemon = escape(&setup.daemon),
        socket = escape(&setup.socket),
        vault = escape(&setup.vault),
        log = escape(&setup.home.join("Library/Logs/latchkeyd.log")),
    );
    Unit {
        path: setup
            .home
            .join("Library/LaunchAgents/dev.latchkey.latchkeyd.plist"),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            daemon: "/opt/latchkey/bin/latchkeyd".into(),
            socket: "/run/user/1000/latchkey/latchkey.sock".into(),
            vault: "/home/u/.local/share/latchkey/vault.db".into(),
            runtime_dir: Some("/run/user/1000".into()),
            config_home: "/home/u/.config".into(),
            home: "/home/u".into(),
        }
    }

    #[test]
    fn systemd_units_activate_the_socket_clients_use_and_harden_the_service() {
        let units = systemd_units(&setup());
        assert_eq!(
            units[0].path,
            Path::new("/home/u/.config/systemd/user/latchkey.socket")
        );
        for line in [
            "ListenStream=%t/latchkey/latchkey.sock",
            "SocketMode=0600",
            "DirectoryMode=0700",
        ] {
            assert!(units[0].text.contains(line), "{line}: {}", units[0].text);
        }
        for line in [
            "Type=notify",
            "ExecStart=/opt/latchkey/bin/latchkeyd\n",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=-/home/u/.local/share/latchkey\n",
            "MemoryDenyWriteExecute=yes",
            "LimitMEMLOCK=",
        ] {
            assert!(units[1].text.contains(line), "{line}: {}", units[1].text);
        }
    }

    #[test]
    fn paths_are_one_word_of_a_unit_file() {
        assert_eq!(unit_word(Path::new("/a/b")), "/a/b");
        assert_eq!(unit_word(Path::new("/a/100%")), "/a/100%%");
        assert_eq!(unit_word(Path::new("/my dir/x")), "\"/my dir/x\"");
    }

    #[test]
    fn a_socket_outside_the_runtime_dir_is_written_as_is() {
        let mut s = setup();
        s.socket = "/tmp/elsewhere/l.sock".into();
        assert!(systemd_units(&s)[0]
            .text
            .contains("ListenStream=/tmp/elsewhere/l.sock\n"));
    }

    #[test]
    fn the_launchd_agent_runs_the_daemon_on_the_same_paths() {
        let unit = launchd_plist(&setup());
        assert_eq!(
            unit.path,
            Path::new("/home/u/Library/LaunchAgents/dev.latchkey.latchkeyd.plist")
        );
        for part in [
            "<string>/opt/latchkey/bin/latchkeyd</string>",
            "<string>/run/user/1000/latchkey/latchkey.sock</string>",
            "<string>/home/u/.local/share/latchkey/vault.db</string>",
            "<key>RunAtLoad</key>",
        ] {
            assert!(unit.text.contains(part), "{part}: {}", unit.text);
        }
    }
}
