//! What may be asked for: names that can be shown in commands and
//! messages, scope syntax (RFC 6749 §3.3), and which scopes a caller of
//! `token.get` may have. The token path and the management verbs call this;
//! per-app rules will live here too.

use crate::error::ApiError;
use crate::vault::Credential;
use latchkey_client::protocol::ErrorKind;
use std::borrow::Cow;

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
        let credential = Credential {
            id: "c".into(),
            config: CredentialConfig {
                name: "api".into(),
                provider_id: "p".into(),
                client_id: "id".into(),
                grant: GrantType::ClientCredentials,
                auth: AuthMethod::ClientSecretBasic,
                scopes: vec!["read".into(), "write".into()],
                redirect_uri: None,
            },
            has_client_secret: true,
            corrupt: false,
        };
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
}
