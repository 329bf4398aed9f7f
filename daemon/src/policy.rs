//! What may be asked for: names that can be shown in commands and
//! messages, scope syntax (RFC 6749 §3.3), which scopes a caller of
//! `token.get` may have, and whether this app may use this credential at
//! all ([`decide`], over the stored rules).

use crate::error::ApiError;
use crate::identity::AppId;
use crate::vault::rules::{Rule, RuleApp};
use crate::vault::Credential;
use latchkey_client::protocol::{Access, ErrorKind, RuleEffect};
use std::borrow::Cow;

/// What the rules say of one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Served without asking.
    Allow,
    /// Refused by this stored rule.
    Deny(&'a Rule),
    /// The user decides. `updated`: a rule allowed this path with another
    /// hash (the program changed since it was approved).
    Ask { updated: bool },
}

/// Whether `app` may use `credential` for `scopes` now. Deny rules name a
/// path whatever its hash; allow rules need the same hash (a changed
/// binary asks again), the scopes within theirs, and not to have expired.
pub fn decide<'a>(
    credential: &Credential,
    app: &AppId,
    scopes: &[String],
    rules: &'a [Rule],
    now: i64,
) -> Verdict<'a> {
    if credential.config.access == Access::Open {
        return Verdict::Allow;
    }
    let mut updated = false;
    let mut allowed = false;
    for rule in rules {
        if rule.credential_id != credential.id || rule.expires_at.is_some_and(|t| t <= now) {
            continue;
        }
        let (named, same_file) = match (&rule.app, app) {
            (RuleApp::Exe { path, sha256 }, AppId::Exe { path: p, sha256: h }) => {
                (path == p, *sha256 == hex::encode(h))
            }
            (RuleApp::Key { name }, AppId::Key { name: n }) => (name == n, true),
            _ => (false, false),
        };
        if !named {
            continue;
        }
        match rule.effect {
            RuleEffect::Deny => return Verdict::Deny(rule),
            RuleEffect::Allow if !same_file => updated = true,
            RuleEffect::Allow => {
                let within = rule
                    .scopes
                    .as_ref()
                    .is_none_or(|max| scopes.iter().all(|s| max.contains(s)));
                allowed |= within;
            }
        }
    }
    if allowed {
        Verdict::Allow
    } else {
        Verdict::Ask { updated }
    }
}

/// Names are shown in commands and messages: keep them plain.
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_params(format!(
            "invalid {what} name '{}': use 1-64 letters, digits, '-', '_', '.', '@', not starting with '-'",
            name.chars().take(64).collect::<String>()
        )))
    }
}

/// Splits, de-duplicates and sorts scopes; refuses characters RFC 6749
/// §3.3 does not allow in a scope token.
pub fn normalize_scopes(scopes: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for s in scopes.iter().flat_map(|s| s.split_whitespace()) {
        if !s
            .chars()
            .all(|c| c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c))
        {
            return Err(ApiError::invalid_params(format!(
                "invalid scope '{s}' (RFC 6749 §3.3)"
            )));
        }
        out.push(s.to_owned());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The scopes a `token.get` caller gets: all the credential's, or the
/// subset it `asked` for. `granted` is the scope the user granted at login
/// (user credentials), which may be narrower than the configured one; it
/// is read only when scopes were asked for. All the credential's is the
/// common call and is borrowed, not copied.
pub fn allowed_scopes<'a>(
    credential: &'a Credential,
    granted: impl FnOnce() -> Option<String>,
    asked: Option<&[String]>,
) -> Result<Cow<'a, [String]>, ApiError> {
    let Some(asked) = asked else {
        return Ok(Cow::Borrowed(&credential.config.scopes));
    };
    let granted = granted();
    let granted = granted.as_deref();
    let asked = normalize_scopes(asked)?;
    let allowed: Vec<&str> = match granted {
        Some(g) => g.split_whitespace().collect(),
        None => credential
            .config
            .scopes
            .iter()
            .map(String::as_str)
            .collect(),
    };
    let extra: Vec<&str> = asked
        .iter()
        .map(String::as_str)
        .filter(|s| !allowed.contains(s))
        .collect();
    if !extra.is_empty() {
        let name = &credential.config.name;
        let extra = extra.join(" ");
        let allowed = allowed.join(" ");
        let configured = |s: &str| credential.config.scopes.iter().any(|c| c == s);
        let message = if granted.is_some() && asked.iter().all(|s| configured(s)) {
            // Configured, but not (or no longer) granted: the provider
            // narrowed the grant (at login or on a refresh).
            format!(
                "credential '{name}' was granted only '{allowed}' now, not scope(s) {extra}: the provider narrowed the grant; ask for a subset, or run `latchkey login {name}` to ask the provider for the rest"
            )
        } else {
            let what = if granted.is_some() {
                "was not granted"
            } else {
                "is not configured for"
            };
            format!(
                "credential '{name}' {what} scope(s) {extra}: its scopes are '{allowed}'; ask for a subset, or add a credential with the scopes you need"
            )
        };
        return Err(ApiError::new(ErrorKind::Forbidden, message));
    }
    Ok(Cow::Owned(asked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::CredentialConfig;
    use latchkey_client::protocol::{AuthMethod, GrantType};

    #[test]
    fn names_are_plain() {
        for ok in ["github", "deploy-api", "a.b_c@d", "x"] {
            assert!(check_name("credential", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-rf", "a b", "a/b", "ü", &"x".repeat(65)] {
            assert!(check_name("credential", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_are_normalized_and_checked() {
        let s = normalize_scopes(&["b a".into(), "a".into(), "c".into()]).unwrap();
        assert_eq!(s, ["a", "b", "c"]);
        assert!(normalize_scopes(&["a\"b".into()]).is_err());
        assert!(normalize_scopes(&["a\\b".into()]).is_err());
    }

    #[test]
    fn callers_get_a_subset_of_the_configured_or_granted_scopes_only() {
        let credential = ask_credential();
        assert_eq!(
            *allowed_scopes(&credential, || None, None).unwrap(),
            ["read", "write"]
        );
        assert_eq!(
            *allowed_scopes(&credential, || None, Some(&["write read read".into()])).unwrap(),
            ["read", "write"]
        );
        let err = allowed_scopes(&credential, || None, Some(&["admin".into()])).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert!(err.message.contains("admin"));
        let err = allowed_scopes(&credential, || Some("read".into()), Some(&["admin".into()]))
            .unwrap_err();
        assert!(err.message.contains("was not granted"), "{err}");
        // Configured but granted no longer: the truth, and the fix.
        let err = allowed_scopes(&credential, || Some("read".into()), Some(&["write".into()]))
            .unwrap_err();
        assert!(err.message.contains("was granted only 'read' now"), "{err}");
        assert!(err.message.contains("`latchkey login api`"), "{err}");
    }

    fn ask_credential() -> Credential {
        Credential {
            id: "c".into(),
            config: CredentialConfig {
                name: "api".into(),
                provider_id: "p".into(),
                client_id: "id".into(),
                grant: GrantType::ClientCredentials,
                auth: AuthMethod::ClientSecretBasic,
                scopes: vec!["read".into(), "write".into()],
                redirect_uri: None,
                access: Access::Ask,
                step_up: Default::default(),
                signature_method: None,
                exchange: None,
                assertion_audience: Default::default(),
                dpop: false,
            },
            has_client_secret: true,
            secret_ages: Default::default(),
            corrupt: false,
        }
    }

    fn exe(path: &str, byte: u8) -> AppId {
        AppId::Exe {
            path: path.into(),
            sha256: [byte; 32],
        }
    }

    fn rule(
        app: RuleApp,
        effect: RuleEffect,
        scopes: Option<&[&str]>,
        expires_at: Option<i64>,
    ) -> Rule {
        Rule {
            id: "r".into(),
            app,
            credential_id: "c".into(),
            effect,
            scopes: scopes.map(|s| s.iter().map(|x| x.to_string()).collect()),
            expires_at,
            created_at: 0,
        }
    }

    #[test]
    fn rules_decide_by_path_hash_scopes_and_expiry() {
        let c = ask_credential();
        let app = exe("/usr/bin/tool", 1);
        let read = ["read".to_string()];
        let both = ["read".to_string(), "write".to_string()];
        let allow = |byte: u8, scopes: Option<&[&str]>, exp: Option<i64>| {
            rule(
                RuleApp::Exe {
                    path: "/usr/bin/tool".into(),
                    sha256: hex::encode([byte; 32]),
                },
                RuleEffect::Allow,
                scopes,
                exp,
            )
        };
        assert_eq!(
            decide(&c, &app, &read, &[], 100),
            Verdict::Ask { updated: false }
        );
        assert_eq!(
            decide(&c, &app, &read, &[allow(1, None, None)], 100),
            Verdict::Allow
        );
        // Another hash at the same path: asked again, and told why.
        assert_eq!(
            decide(&c, &app, &read, &[allow(2, None, None)], 100),
            Verdict::Ask { updated: true }
        );
        // Scopes beyond the rule's, and an expired rule, ask.
        let narrow = [allow(1, Some(&["read"]), None)];
        assert_eq!(decide(&c, &app, &read, &narrow, 100), Verdict::Allow);
        assert_eq!(
            decide(&c, &app, &both, &narrow, 100),
            Verdict::Ask { updated: false }
        );
        let expired = [allow(1, None, Some(100))];
        assert_eq!(
            decide(&c, &app, &read, &expired, 100),
            Verdict::Ask { updated: false }
        );
        assert_eq!(decide(&c, &app, &read, &expired, 99), Verdict::Allow);
        // A deny rule names the path whatever the hash, and wins.
        let deny = rule(
            RuleApp::Exe {
                path: "/usr/bin/tool".into(),
                sha256: hex::encode([9; 32]),
            },
            RuleEffect::Deny,
            None,
            None,
        );
        let rules = [allow(1, None, None), deny];
        assert!(matches!(
            decide(&c, &app, &read, &rules, 100),
            Verdict::Deny(_)
        ));
        // Other apps, other credentials, unknown programs: no rule applies.
        assert_eq!(
            decide(
                &c,
                &exe("/usr/bin/other", 1),
                &read,
                &[allow(1, None, None)],
                100
            ),
            Verdict::Ask { updated: false }
        );
        let mut elsewhere = allow(1, None, None);
        elsewhere.credential_id = "d".into();
        assert_eq!(
            decide(&c, &app, &read, &[elsewhere], 100),
            Verdict::Ask { updated: false }
        );
        let unknown = AppId::Unknown { why: "gone" };
        assert_eq!(
            decide(&c, &unknown, &read, &[allow(1, None, None)], 100),
            Verdict::Ask { updated: false }
        );
        // App keys by name.
        let key = AppId::Key { name: "ci".into() };
        let by_key = rule(
            RuleApp::Key { name: "ci".into() },
            RuleEffect::Allow,
            None,
            None,
        );
        assert_eq!(decide(&c, &key, &read, &[by_key], 100), Verdict::Allow);
        // An open credential needs no rule.
        let mut open = ask_credential();
        open.config.access = Access::Open;
        assert_eq!(decide(&open, &app, &read, &[], 100), Verdict::Allow);
    }

    #[test]
    fn credentials_stored_before_access_rules_stay_open() {
        let old = r#"{"name":"api","provider_id":"p","client_id":"id","grant":"client_credentials","auth":"client_secret_basic","scopes":[],"redirect_uri":null}"#;
        let config: CredentialConfig = serde_json::from_str(old).unwrap();
        assert_eq!(config.access, Access::Open);
        let new = serde_json::to_string(&ask_credential().config).unwrap();
        let back: CredentialConfig = serde_json::from_str(&new).unwrap();
        assert_eq!(back.access, Access::Ask);
    }
}
