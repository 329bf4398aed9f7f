//! Which apps may use which credential: the check on the token path
//! ([`authorize`]), app keys (`app.add`, and their use in `hello`) and
//! rules (`app.allow|deny|remove|list`); the approvers' verbs are in
//! `approve.rs`.
//!
//! Allowing is what malware would do for itself, so it needs a proof of a
//! human (`Daemon::prove`): `app.allow`, and an approver's allow, which
//! counts only from an approver that attached with a proof. Denying and
//! removing need none.

use crate::approval::{Answer, Ask, Refusal};
use crate::error::ApiError;
use crate::handler::Handler;
use crate::identity::{AppId, KeyState, Peer};
use crate::policy::{self, check_name, normalize_scopes, Verdict};
use crate::state::{Daemon, Session};
use crate::vault::rules::{AppKey, Rule, RuleApp};
use crate::vault::{Catalog, Credential};
use latchkey_client::protocol::*;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

/// Whether `peer` may use `credential` for `scopes`: at once for `open`
/// credentials and apps with a rule; otherwise the user is asked (the call
/// waits, bounded) or, with nobody to ask, the call fails at once.
pub async fn authorize(
    daemon: &Arc<Daemon>,
    session: &Session,
    peer: &Peer,
    credential: &Credential,
    scopes: &[String],
) -> Result<(), ApiError> {
    let app = peer.caller.app();
    let name = &credential.config.name;
    let updated = {
        let catalog = session.catalog();
        match policy::decide(credential, app, scopes, &catalog.rules, daemon.clock.now()) {
            Verdict::Allow => return Ok(()),
            Verdict::Deny(rule) => {
                let id = rule.id.clone();
                drop(catalog);
                daemon.audit.record(
                    "access_denied",
                    Some(name),
                    Some(peer),
                    Some(format!("rule {id}")),
                );
                return Err(ApiError::new(
                    ErrorKind::ApprovalDenied,
                    format!("a rule denies {} the credential '{name}': see `latchkey app list`, and remove it with `latchkey app remove {id}`", app.label()),
                ));
            }
            Verdict::Ask { updated } => updated,
        }
    };
    let session_of = peer.caller.process.session;
    if daemon
        .approvals
        .granted(app, &credential.id, session_of.as_ref(), scopes)
    {
        return Ok(());
    }
    let no_approver = ApiError::new(
        ErrorKind::ApprovalRequired,
        format!(
            "credential '{name}' asks before an app may use it, and nobody can be asked now: {}",
            how_to_allow(app, name)
        ),
    );
    daemon.audit.record(
        "approval_requested",
        Some(name),
        Some(peer),
        Some(scopes.join(" ")),
    );
    let ask = Ask {
        app: app.clone(),
        info: peer.caller.info(),
        session: session_of,
        credential_id: credential.id.clone(),
        credential: name.clone(),
        scopes: scopes.to_vec(),
        updated,
    };
    let refused = |e: ApiError, why: &str| {
        daemon.audit.record(
            "access_denied",
            Some(name),
            Some(peer),
            Some(why.to_owned()),
        );
        Err(e)
    };
    match daemon.approvals.ask(ask, no_approver).await {
        Err(e) => {
            daemon.approvals.refused(
                app,
                &credential.id,
                Refusal {
                    app: app.label(),
                    credential: name.clone(),
                    fix: how_to_allow(app, name),
                },
            );
            refused(e, "no approver")
        }
        Ok(Answer::Allowed(allowed)) if scopes.iter().all(|s| allowed.contains(s)) => Ok(()),
        Ok(Answer::Allowed(allowed)) => refused(
            ApiError::new(
                ErrorKind::ApprovalDenied,
                format!(
                    "{} was approved for scopes '{}' of '{name}' only; ask for those, or call again to be asked for more",
                    app.label(),
                    allowed.join(" ")
                ),
            ),
            "scopes beyond the approval",
        ),
        Ok(Answer::Denied) => refused(
            ApiError::new(
                ErrorKind::ApprovalDenied,
                format!("the user denied {} the credential '{name}'", app.label()),
            ),
            "denied by the user",
        ),
        Ok(Answer::Unanswered(why)) => refused(
            ApiError::new(
                ErrorKind::ApprovalRequired,
                format!(
                    "credential '{name}' asks before an app may use it, and {why}: {}",
                    how_to_allow(app, name)
                ),
            ),
            why,
        ),
    }
}

/// The command that lets `app` use credential `name` for good.
fn how_to_allow(app: &AppId, name: &str) -> String {
    match app {
        AppId::Exe { path, .. } => format!(
            "allow this program with `latchkey app allow {} --credential {name}`, or run `latchkey approve` in a terminal and call again",
            shell_word(path)
        ),
        AppId::Key { name: key } => format!(
            "allow this app key with `latchkey app allow key:{key} --credential {name}`, or run `latchkey approve` in a terminal and call again"
        ),
        AppId::Unknown { why } => format!(
            "the calling program could not be identified ({why}); give it an app key (`latchkey app add NAME`, then LATCHKEY_APP_KEY) or run `latchkey approve` in a terminal"
        ),
    }
}

/// A path as a shell word: quoted when it holds anything but plain characters.
fn shell_word(path: &str) -> String {
    if path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@".contains(c))
    {
        path.to_owned()
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

/// Checks an app key a client presented in `hello`: the connection is
/// then that key's app. While the vault is locked the key is kept and
/// checked at the first call after the unlock ([`settle_key`]).
pub fn present_key(daemon: &Daemon, peer: &Peer, key: SecretString) -> Result<(), ApiError> {
    match daemon.session() {
        Ok(session) => check_key(daemon, &session, peer, &key),
        Err(_) => {
            peer.caller.defer_key(key);
            Ok(())
        }
    }
}

/// Before a call: a key presented while locked is checked now that the
/// vault is open; a refused key refuses the call.
pub fn settle_key(daemon: &Daemon, peer: &Peer) -> Result<(), ApiError> {
    match peer.caller.key_state() {
        KeyState::None | KeyState::Verified => Ok(()),
        KeyState::Refused => Err(unknown_key()),
        KeyState::Pending => {
            let Ok(session) = daemon.session() else {
                return Ok(());
            };
            match peer.caller.take_pending_key() {
                Some(key) => check_key(daemon, &session, peer, &key),
                // Another call on this connection is checking it.
                None => Ok(()),
            }
        }
    }
}

fn check_key(
    daemon: &Daemon,
    session: &Session,
    peer: &Peer,
    key: &SecretString,
) -> Result<(), ApiError> {
    let found = AppKey::parse(key.expose_secret()).and_then(|(id, secret)| {
        let catalog = session.catalog();
        catalog
            .app_keys
            .get(id)
            .filter(|k| k.matches(secret))
            .map(|k| k.name.clone())
    });
    match found {
        Some(name) => {
            peer.caller.set_key(name);
            Ok(())
        }
        None => {
            peer.caller.refuse_key();
            daemon
                .audit
                .record("app_key_refused", None, Some(peer), None);
            Err(unknown_key())
        }
    }
}

fn unknown_key() -> ApiError {
    ApiError::new(
        ErrorKind::Forbidden,
        "the app key in LATCHKEY_APP_KEY is not one of this vault's: see `latchkey app list`, or create one with `latchkey app add NAME`",
    )
}

impl Handler for AppAdd {
    type Reply = AppKeyCreated;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: AppAddParams,
    ) -> Result<AppKeyCreated, ApiError> {
        check_name("app key", &params.name)?;
        let session = daemon.session()?;
        if session
            .catalog()
            .app_keys
            .values()
            .any(|k| k.name == params.name)
        {
            return Err(ApiError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "an app key named '{0}' exists: remove it with `latchkey app remove key:{0}` first",
                    params.name
                ),
            ));
        }
        let (stored, key) = AppKey::generate(&params.name);
        let row = stored.clone();
        session
            .with_vault(move |keys, vault| vault.add_app_key(keys, &row))
            .await?;
        session
            .catalog_mut()
            .app_keys
            .insert(stored.id.clone(), stored);
        daemon.audit.record(
            "app_key_added",
            None,
            Some(&peer),
            Some(params.name.clone()),
        );
        Ok(AppKeyCreated {
            name: params.name,
            key,
        })
    }
}

impl Handler for AppList {
    type Reply = AppListResult;

    async fn handle(daemon: &Arc<Daemon>, _: Peer, _: Empty) -> Result<AppListResult, ApiError> {
        let session = daemon.session()?;
        let catalog = session.catalog();
        let mut keys: Vec<AppKeyInfo> = catalog
            .app_keys
            .values()
            .map(|k| AppKeyInfo {
                name: k.name.clone(),
                created_at: k.created_at,
            })
            .collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        let rules = catalog
            .rules
            .iter()
            .map(|r| rule_info(&catalog, r))
            .collect();
        Ok(AppListResult { rules, keys })
    }
}

fn rule_info(catalog: &Catalog, rule: &Rule) -> RuleInfo {
    let (app, sha256) = match &rule.app {
        RuleApp::Exe { path, sha256 } => (path.clone(), Some(sha256.clone())),
        RuleApp::Key { name } => (format!("key:{name}"), None),
    };
    RuleInfo {
        id: rule.id.clone(),
        app,
        sha256,
        credential: catalog
            .credentials
            .values()
            .find(|c| c.id == rule.credential_id)
            .map_or_else(|| "?".into(), |c| c.config.name.clone()),
        effect: rule.effect,
        scopes: rule.scopes.clone(),
        expires_at: rule.expires_at,
        created_at: rule.created_at,
    }
}

/// The app a command names: `key:NAME` (an app key of this vault), or an
/// executable's absolute path, resolved and hashed now.
async fn named_app(
    daemon: &Arc<Daemon>,
    session: &Session,
    app: &str,
) -> Result<RuleApp, ApiError> {
    if let Some(name) = app.strip_prefix("key:") {
        let known = session.catalog().app_keys.values().any(|k| k.name == name);
        if !known {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no app key named '{name}': see `latchkey app list`, or create it with `latchkey app add {name}`"),
            ));
        }
        return Ok(RuleApp::Key {
            name: name.to_owned(),
        });
    }
    let given = std::path::PathBuf::from(app);
    if !given.is_absolute() {
        return Err(ApiError::invalid_params(
            "name the app by its executable's absolute path (e.g. /usr/bin/curl), or as key:NAME for an app key",
        ));
    }
    let d = Arc::clone(daemon);
    tokio::task::spawn_blocking(move || {
        // The path a running program shows in /proc/PID/exe: links resolved.
        let real = std::fs::canonicalize(&given).map_err(|e| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("cannot read the program {}: {e}", given.display()),
            )
        })?;
        if !real.is_file() {
            return Err(ApiError::invalid_params(format!(
                "{} is not a program file",
                real.display()
            )));
        }
        let sha256 = d.identities.hashes.of_path(&real).map_err(|e| {
            ApiError::new(
                ErrorKind::NotFound,
                format!("cannot read the program {}: {e}", real.display()),
            )
        })?;
        Ok(RuleApp::Exe {
            path: real.to_string_lossy().into_owned(),
            sha256: hex::encode(sha256),
        })
    })
    .await
    .map_err(ApiError::internal)?
}

/// Stores a rule for (app, credential), replacing the one it had; `peer`
/// asked for it (`None`: a desktop notification's click).
pub(crate) async fn store_rule(
    daemon: &Arc<Daemon>,
    session: &Session,
    peer: Option<&Peer>,
    rule: Rule,
) -> Result<RuleInfo, ApiError> {
    let same = |r: &Rule| r.credential_id == rule.credential_id && same_app(&r.app, &rule.app);
    let replaces: Vec<String> = session
        .catalog()
        .rules
        .iter()
        .filter(|r| same(r))
        .map(|r| r.id.clone())
        .collect();
    let row = rule.clone();
    let old = replaces.clone();
    session
        .with_vault(move |keys, vault| {
            let old: Vec<&str> = old.iter().map(String::as_str).collect();
            vault.delete_rules(&old)?;
            vault.put_rule(keys, &row, None)
        })
        .await?;
    let mut catalog = session.catalog_mut();
    catalog.rules.retain(|r| !replaces.contains(&r.id));
    catalog.rules.push(rule.clone());
    let info = rule_info(&catalog, &rule);
    drop(catalog);
    daemon.audit.record(
        "rule_added",
        Some(&info.credential),
        peer,
        Some(format!(
            "{} {} scopes={} expires_at={}",
            match info.effect {
                RuleEffect::Allow => "allow",
                RuleEffect::Deny => "deny",
            },
            info.app,
            info.scopes.as_ref().map_or("all".into(), |s| s.join(" ")),
            info.expires_at.map_or("never".into(), |t| t.to_string()),
        )),
    );
    Ok(info)
}

/// Deny rules and allow rules name an app by path (whatever its hash) or key.
fn same_app(a: &RuleApp, b: &RuleApp) -> bool {
    match (a, b) {
        (RuleApp::Exe { path: p, .. }, RuleApp::Exe { path: q, .. }) => p == q,
        (RuleApp::Key { name: n }, RuleApp::Key { name: m }) => n == m,
        _ => false,
    }
}

fn credential_named(session: &Session, name: &str) -> Result<Arc<Credential>, ApiError> {
    session
        .catalog()
        .credentials
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::no_credential(name))
}

impl Handler for AppAllow {
    type Reply = RuleInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: AppAllowParams,
    ) -> Result<RuleInfo, ApiError> {
        let session = daemon.session()?;
        let credential = credential_named(&session, &params.credential)?;
        let app = named_app(daemon, &session, &params.app).await?;
        let scopes = match &params.scopes {
            Some(s) => {
                let s = normalize_scopes(s)?;
                if let Some(extra) = s.iter().find(|x| !credential.config.scopes.contains(x)) {
                    return Err(ApiError::invalid_params(format!(
                        "credential '{}' has no scope '{extra}': its scopes are '{}'",
                        credential.config.name,
                        credential.config.scopes.join(" ")
                    )));
                }
                Some(s)
            }
            None => None,
        };
        daemon
            .prove(params.proof.as_ref(), &peer, "allowing an app")
            .await?;
        let now = daemon.clock.now();
        let expires_at = params
            .expires_in
            .map(|s| now.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
        let rule = Rule::new(
            app,
            &credential.id,
            RuleEffect::Allow,
            scopes,
            expires_at,
            now,
        );
        store_rule(daemon, &session, Some(&peer), rule).await
    }
}

impl Handler for AppDeny {
    type Reply = RuleInfo;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: AppDenyParams,
    ) -> Result<RuleInfo, ApiError> {
        let session = daemon.session()?;
        let credential = credential_named(&session, &params.credential)?;
        let app = named_app(daemon, &session, &params.app).await?;
        let now = daemon.clock.now();
        let rule = Rule::new(app, &credential.id, RuleEffect::Deny, None, None, now);
        store_rule(daemon, &session, Some(&peer), rule).await
    }
}

impl Handler for AppRemove {
    type Reply = Empty;

    async fn handle(
        daemon: &Arc<Daemon>,
        peer: Peer,
        params: AppRemoveParams,
    ) -> Result<Empty, ApiError> {
        let session = daemon.session()?;
        if let Some(name) = params.id.strip_prefix("key:") {
            let (key_id, rules) = {
                let catalog = session.catalog();
                let key = catalog
                    .app_keys
                    .values()
                    .find(|k| k.name == name)
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorKind::NotFound,
                            format!("no app key named '{name}': see `latchkey app list`"),
                        )
                    })?;
                let rules: Vec<String> = catalog
                    .rules
                    .iter()
                    .filter(|r| matches!(&r.app, RuleApp::Key { name: n } if n == name))
                    .map(|r| r.id.clone())
                    .collect();
                (key.id.clone(), rules)
            };
            let (id, gone) = (key_id.clone(), rules.clone());
            session
                .with_vault(move |_, vault| {
                    let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
                    vault.remove_app_key(&id, &gone)
                })
                .await?;
            let mut catalog = session.catalog_mut();
            catalog.app_keys.remove(&key_id);
            catalog.rules.retain(|r| !rules.contains(&r.id));
            drop(catalog);
            daemon
                .audit
                .record("app_key_removed", None, Some(&peer), Some(name.to_owned()));
            return Ok(Empty {});
        }
        let info = {
            let catalog = session.catalog();
            let rule = catalog
                .rules
                .iter()
                .find(|r| r.id == params.id)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::NotFound,
                        "no rule with that id: see `latchkey app list`",
                    )
                })?;
            rule_info(&catalog, rule)
        };
        let id = info.id.clone();
        session
            .with_vault(move |_, vault| vault.delete_rules(&[id.as_str()]).map(drop))
            .await?;
        session.catalog_mut().rules.retain(|r| r.id != info.id);
        daemon.audit.record(
            "rule_removed",
            Some(&info.credential),
            Some(&peer),
            Some(format!("{} ({})", info.app, info.id)),
        );
        Ok(Empty {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_commands_are_quoted_when_they_need_it() {
        assert_eq!(shell_word("/usr/bin/curl"), "/usr/bin/curl");
        assert_eq!(shell_word("/tmp/my app"), "'/tmp/my app'");
        assert_eq!(shell_word("/tmp/it's"), r"'/tmp/it'\''s'");
    }
}
