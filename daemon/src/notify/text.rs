//! What a notification says: a prompt (who asks, for which credential and
//! scopes, whether the program changed) with its actions, and a refusal
//! with the command that allows the app. Every outside text (paths, app
//! key names, scopes) goes through `oauth::text::provider_text` (controls
//! gone, length bounded), and is escaped where the server reads markup.
//! Nothing secret is ever in a prompt: it holds no token, key or secret.

use crate::approval::Refusal;
use crate::oauth::text::provider_text;
use latchkey_client::protocol::{AppKind, PendingApproval};

/// Action keys (the spec's `actions` list pairs each with its label).
pub const ALLOW_ONCE: &str = "allow-once";
pub const ALLOW_ALWAYS: &str = "allow-always";
pub const DENY: &str = "deny";

/// One notification to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub summary: String,
    pub body: String,
    /// Key, label, key, label, …
    pub actions: Vec<&'static str>,
}

/// How much of an executable's hash a notification shows: enough to tell
/// two builds apart at a glance (`latchkey approve` shows all of it).
const HASH_PREFIX: usize = 16;

/// `raw` made safe to show, escaped when the server reads `body-markup`.
fn shown(raw: &str, markup: bool) -> String {
    let text = provider_text(raw, &[]);
    if !markup {
        return text;
    }
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The notification for prompt `p`. With `allow` (polkit can prove the
/// click was a person's), Allow once / Allow always (not for a program
/// that could not be identified: no rule can name it) / Deny; without,
/// Deny only, and the body says where to allow.
pub fn prompt(p: &PendingApproval, allow: bool, markup: bool) -> Text {
    let credential = shown(&p.credential, markup);
    let mut lines = vec![match p.app.kind {
        AppKind::Exe => format!("program: {}", shown(&p.app.name, markup)),
        AppKind::Key => format!("app key: {}", shown(&p.app.name, markup)),
        AppKind::Unknown => format!("an unidentified program ({})", shown(&p.app.name, markup)),
    }];
    if let Some(hash) = &p.app.sha256 {
        let prefix: String = hash.chars().take(HASH_PREFIX).collect();
        lines.push(format!("sha256: {}…", shown(&prefix, markup)));
    }
    if let Some(parent) = p.app.chain.first() {
        let exe = parent.exe.as_deref().unwrap_or("?");
        lines.push(format!(
            "started by: {} (pid {})",
            shown(exe, markup),
            parent.pid
        ));
    }
    lines.push(format!("credential: {credential}"));
    lines.push(format!(
        "scopes: {}",
        if p.scopes.is_empty() {
            "the credential's".to_owned()
        } else {
            shown(&p.scopes.join(" "), markup)
        }
    ));
    if p.updated {
        lines.push("NOTE: this program was changed (updated?) since you approved it".into());
    }
    let actions = if allow {
        let mut actions = vec![ALLOW_ONCE, "Allow once"];
        if p.app.kind != AppKind::Unknown {
            actions.extend([ALLOW_ALWAYS, "Allow always"]);
        }
        actions.extend([DENY, "Deny"]);
        actions
    } else {
        lines.push(
            "To allow it, run `latchkey approve` in a terminal (here it can only be denied)."
                .into(),
        );
        vec![DENY, "Deny"]
    };
    Text {
        summary: format!("An app asks to use the credential '{credential}'"),
        body: lines.join("\n"),
        actions,
    }
}

/// The notification that replaces a prompt's when polkit did not confirm
/// an Allow click: why, and Deny only.
pub fn unconfirmed(p: &PendingApproval, why: &str, markup: bool) -> Text {
    let mut text = prompt(p, false, markup);
    text.body = format!(
        "{}\n\nAllowing was not confirmed: {}",
        text.body,
        shown(why, markup)
    );
    text
}

/// The notice of a call refused because nobody could be asked.
pub fn refusal(r: &Refusal, markup: bool) -> Text {
    Text {
        summary: format!(
            "Latchkey refused an app the credential '{}'",
            shown(&r.credential, markup)
        ),
        body: format!(
            "{} asked for it, and nobody could be asked. To let it in, {}.",
            shown(&r.app, markup),
            shown(&r.fix, markup)
        ),
        actions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_client::protocol::{AppInfo, ProcessInfo};

    fn pending(kind: AppKind, name: &str) -> PendingApproval {
        PendingApproval {
            id: 3,
            app: AppInfo {
                kind,
                name: name.into(),
                sha256: Some("0123456789abcdef0123456789abcdef".into()),
                pid: 42,
                via_cli: false,
                chain: vec![ProcessInfo {
                    pid: 41,
                    exe: Some("/usr/bin/bash".into()),
                }],
                unit: None,
                session: None,
            },
            credential: "api".into(),
            scopes: vec!["repo".into(), "read:<org>".into()],
            updated: true,
            waiting: 5,
            expires_in: 60,
        }
    }

    #[test]
    fn a_prompt_names_the_app_its_hash_credential_scopes_and_a_change() {
        let t = prompt(&pending(AppKind::Exe, "/opt/tool"), true, false);
        assert_eq!(t.summary, "An app asks to use the credential 'api'");
        for part in [
            "program: /opt/tool",
            "sha256: 0123456789abcdef…",
            "started by: /usr/bin/bash (pid 41)",
            "credential: api",
            "scopes: repo read:<org>",
            "changed (updated?) since you approved it",
        ] {
            assert!(t.body.contains(part), "{part} in {}", t.body);
        }
        assert_eq!(
            t.actions,
            [
                ALLOW_ONCE,
                "Allow once",
                ALLOW_ALWAYS,
                "Allow always",
                DENY,
                "Deny"
            ]
        );
    }

    #[test]
    fn without_polkit_a_prompt_offers_deny_only_and_says_where_to_allow() {
        let t = prompt(&pending(AppKind::Exe, "/opt/tool"), false, false);
        assert_eq!(t.actions, [DENY, "Deny"]);
        assert!(t.body.contains("run `latchkey approve`"), "{}", t.body);
        // An unidentified program can be allowed once, never always.
        let t = prompt(&pending(AppKind::Unknown, "it exited"), true, false);
        assert_eq!(t.actions, [ALLOW_ONCE, "Allow once", DENY, "Deny"]);
    }

    #[test]
    fn outside_text_cannot_add_lines_or_markup() {
        let t = prompt(
            &pending(AppKind::Exe, "/tmp/x\n\nprogram: /usr/bin/firefox<b>"),
            true,
            true,
        );
        let first = t.body.lines().next().unwrap();
        assert_eq!(first, "program: /tmp/x  program: /usr/bin/firefox&lt;b&gt;");
        assert!(t.body.contains("read:&lt;org&gt;"), "{}", t.body);
    }

    #[test]
    fn a_refusal_names_the_app_and_the_command_that_allows_it() {
        let t = refusal(
            &Refusal {
                app: "/opt/tool (sha256 0123…)".into(),
                credential: "api".into(),
                fix: "allow this program with `latchkey app allow /opt/tool --credential api`"
                    .into(),
            },
            false,
        );
        assert!(t.summary.contains("'api'"), "{}", t.summary);
        assert!(t.body.starts_with("/opt/tool"), "{}", t.body);
        assert!(
            t.body
                .contains("latchkey app allow /opt/tool --credential api"),
            "{}",
            t.body
        );
        assert!(t.actions.is_empty());
    }
}
