//! `latchkey status`: the vault's state, key slots, auto-lock timer and
//! counts; `--watch` is the live view of [`crate::watch`].

use crate::commands::init::slot_label;
use crate::context::Ctx;
use crate::output::{self, Fields};
use anyhow::Result;
use latchkey_client::protocol::{StatusResult, VaultState};

#[derive(clap::Args)]
pub struct Args {
    /// Print the daemon's status reply as JSON
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// A live view of the credentials (state, token expiry, next refresh, last refresh, apps), redrawn every second; q quits. Plain lines when stdout is not a terminal
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many snapshots
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// With --watch: seconds between snapshots (1 to 3600)
    #[arg(long, value_name = "SECS", default_value = "1", requires = "watch", value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
}

pub fn run(ctx: &Ctx, args: Args) -> Result<()> {
    if args.watch {
        return crate::watch::run(
            ctx,
            std::time::Duration::from_secs(args.interval),
            args.count,
        );
    }
    let status = ctx.connect()?.status()?;
    if args.json {
        return output::print_json(&status);
    }
    output::print(&render(&status, &ctx.socket.display().to_string()))
}

fn render(status: &StatusResult, socket: &str) -> String {
    let mut f = Fields::default();
    f.add(
        "vault",
        match status.vault {
            VaultState::Uninitialized => "not initialized: create it with `latchkey init`",
            VaultState::Locked => "locked: unlock it with `latchkey unlock`",
            VaultState::Unlocked => "unlocked",
        },
    );
    f.add("path", &status.vault_path);
    if status.vault != VaultState::Uninitialized {
        let slots: Vec<String> = status.slots.iter().map(slot_label).collect();
        f.add(
            "slots",
            if slots.is_empty() {
                "none".into()
            } else {
                slots.join(", ")
            },
        );
    }
    let idle = status.idle_timeout_secs;
    let auto_lock = match (idle, status.locks_in_secs) {
        (0, _) => "off".to_owned(),
        (_, Some(left)) if status.vault == VaultState::Unlocked => format!(
            "in {} (after {} idle)",
            output::span(left),
            output::span(idle)
        ),
        _ => format!("after {} idle", output::span(idle)),
    };
    f.add("auto-lock", auto_lock);
    if let Some(n) = status.providers {
        f.add("providers", n.to_string());
    }
    if let Some(n) = status.credentials {
        f.add("credentials", n.to_string());
    }
    for (name, subject) in status.accounts.iter().flatten() {
        f.add("account", format!("{name}: {subject}"));
    }
    for name in status.needs_login.iter().flatten() {
        f.add(
            "needs login",
            format!("{name} (run `latchkey login {name}`)"),
        );
    }
    f.add(
        "daemon",
        format!("latchkeyd {} (pid {})", status.daemon_version, status.pid),
    );
    f.add("socket", socket);
    if status.approvers > 0 {
        f.add("approvers", status.approvers.to_string());
    }
    if let Some(caller) = &status.caller {
        f.add("you are", output::app_label(caller));
    }
    f.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_client::protocol::SlotInfo;

    fn status(vault: VaultState) -> StatusResult {
        StatusResult {
            vault,
            vault_path: "/v.db".into(),
            pid: 42,
            daemon_version: "0.1.0".into(),
            slots: vec![
                SlotInfo {
                    id: "a".into(),
                    kind: "passphrase".into(),
                    created_at: 0,
                    backend: None,
                    label: None,
                },
                SlotInfo {
                    id: "b".into(),
                    kind: "keyring".into(),
                    created_at: 0,
                    backend: Some("keyutils".into()),
                    label: None,
                },
            ],
            idle_timeout_secs: 900,
            locks_in_secs: Some(872),
            providers: Some(2),
            credentials: Some(3),
            needs_login: Some(Vec::new()),
            accounts: None,
            caller: None,
            approvers: 0,
            log_file: None,
        }
    }

    #[test]
    fn unlocked_status_reads_well() {
        assert_eq!(
            render(&status(VaultState::Unlocked), "/s.sock"),
            "\
vault:       unlocked
path:        /v.db
slots:       passphrase, keyring (keyutils)
auto-lock:   in 14m 32s (after 15m idle)
providers:   2
credentials: 3
daemon:      latchkeyd 0.1.0 (pid 42)
socket:      /s.sock
"
        );
    }

    #[test]
    fn locked_and_uninitialized_say_the_fix() {
        let mut s = status(VaultState::Locked);
        s.locks_in_secs = None;
        s.providers = None;
        s.credentials = None;
        let text = render(&s, "/s.sock");
        assert!(
            text.contains("locked: unlock it with `latchkey unlock`"),
            "{text}"
        );
        assert!(text.contains("auto-lock: after 15m idle"), "{text}");
        s.vault = VaultState::Uninitialized;
        s.idle_timeout_secs = 0;
        let text = render(&s, "/s.sock");
        assert!(
            text.contains("`latchkey init`")
                && !text.contains("slots")
                && text.contains("auto-lock: off"),
            "{text}"
        );
    }
}
