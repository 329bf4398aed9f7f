//! What is stored about apps: rules (app → credential → scopes → expiry,
//! allow or deny) and app keys (a name, and a keyed hash of the key), each
//! a sealed document, so a rule cannot be edited or moved to another
//! credential in the file without the vault noticing.

use super::crypto::{self, keyed_hash, keyed_hash_matches};
use super::store::SealedRow;
use super::{Keys, Result, Vault};
use latchkey_client::protocol::{unix_now, RuleEffect};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Which app a rule names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleApp {
    /// A program at this path whose file has this SHA-256 (hex).
    Exe { path: String, sha256: String },
    /// Whoever presents the app key of this name.
    Key { name: String },
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub app: RuleApp,
    pub credential_id: String,
    pub effect: RuleEffect,
    /// The most it allows; `None`: the credential's scopes.
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

impl Rule {
    /// A new rule (a fresh id) made at `now`.
    pub fn new(
        app: RuleApp,
        credential_id: &str,
        effect: RuleEffect,
        scopes: Option<Vec<String>>,
        expires_at: Option<i64>,
        now: i64,
    ) -> Rule {
        Rule {
            id: crypto::random_id(),
            app,
            credential_id: credential_id.to_owned(),
            effect,
            scopes,
            expires_at,
            created_at: now,
        }
    }
}

/// An app key as stored: its name, and HMAC-SHA256 of the key's secret
/// under a random salt. The key itself is never stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct AppKey {
    pub id: String,
    pub name: String,
    salt: String,
    hash: String,
    pub created_at: i64,
}

/// The prefix of every app key: `lkapp_<id>_<secret>`.
const APP_KEY_PREFIX: &str = "lkapp_";

impl AppKey {
    /// A new app key named `name`: what is stored, and the key to show once.
    pub fn generate(name: &str) -> (AppKey, SecretString) {
        let id = crypto::random_id();
        let secret = crypto::random_secret();
        let salt = crypto::random_id();
        let hash = hex::encode(keyed_hash(
            salt.as_bytes(),
            secret.expose_secret().as_bytes(),
        ));
        let key = SecretString::from(format!("{APP_KEY_PREFIX}{id}_{}", secret.expose_secret()));
        let stored = AppKey {
            id,
            name: name.to_owned(),
            salt,
            hash,
            created_at: unix_now(),
        };
        (stored, key)
    }

    /// The id a presented key names, and its secret part; `None` if it is
    /// not shaped like an app key.
    pub fn parse(presented: &str) -> Option<(&str, &str)> {
        let rest = presented.strip_prefix(APP_KEY_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let hexy = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        (id.len() == 32 && hexy(id) && secret.len() == 64 && hexy(secret)).then_some((id, secret))
    }

    /// Whether `secret` is this key's (constant time).
    pub fn matches(&self, secret: &str) -> bool {
        let Ok(stored) = hex::decode(&self.hash) else {
            return false;
        };
        keyed_hash_matches(self.salt.as_bytes(), secret.as_bytes(), &stored)
    }
}

impl Vault {
    /// Reads rules and app keys. A document that fails its integrity check
    /// is left out and reported: a rule that cannot be read never allows.
    pub fn load_rules(&self, keys: &Keys) -> Result<(Vec<Rule>, Vec<AppKey>, Vec<String>)> {
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        for row in self.store.rules()? {
            match keys.open_json::<Rule>("rules", &row.id, "sealed", &row.sealed) {
                Ok(rule) if rule.id == row.id => rules.push(rule),
                _ => problems.push(format!("rule {} failed its integrity check", row.id)),
            }
        }
        let mut app_keys = Vec::new();
        for row in self.store.app_keys()? {
            match keys.open_json::<AppKey>("app_keys", &row.id, "sealed", &row.sealed) {
                Ok(key) if key.id == row.id => app_keys.push(key),
                _ => problems.push(format!("app key {} failed its integrity check", row.id)),
            }
        }
        Ok((rules, app_keys, problems))
    }

    /// Stores `rule`, replacing the rule `replaces` in the same transaction.
    pub fn put_rule(&mut self, keys: &Keys, rule: &Rule, replaces: Option<&str>) -> Result<()> {
        let row = SealedRow {
            sealed: keys.seal_json("rules", &rule.id, "sealed", rule),
            id: rule.id.clone(),
        };
        Ok(self
            .store
            .put_rule(&row, &rule.credential_id, replaces, rule.created_at)?)
    }

    pub fn delete_rules(&mut self, ids: &[&str]) -> Result<bool> {
        Ok(self.store.delete_rules(ids)?)
    }

    pub fn add_app_key(&mut self, keys: &Keys, key: &AppKey) -> Result<()> {
        let row = SealedRow {
            sealed: keys.seal_json("app_keys", &key.id, "sealed", key),
            id: key.id.clone(),
        };
        Ok(self.store.insert_app_key(&row, key.created_at)?)
    }

    pub fn remove_app_key(&mut self, id: &str, rules: &[&str]) -> Result<()> {
        Ok(self.store.delete_app_key(id, rules)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_key_matches_only_itself() {
        let (stored, key) = AppKey::generate("ci");
        let (id, secret) = AppKey::parse(key.expose_secret()).unwrap();
        assert_eq!(id, stored.id);
        assert!(stored.matches(secret));
        let (other, other_key) = AppKey::generate("ci");
        let (_, other_secret) = AppKey::parse(other_key.expose_secret()).unwrap();
        assert!(!stored.matches(other_secret));
        assert!(!other.matches(secret));
        assert!(AppKey::parse("lkapp_zz_00").is_none());
        assert!(AppKey::parse("not a key").is_none());
        // The stored document holds neither the key nor its secret part.
        let json = serde_json::to_string(&stored).unwrap();
        assert!(!json.contains(secret));
    }
}
