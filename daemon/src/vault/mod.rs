//! The vault: what is stored (providers, credentials, tokens, key slots) and
//! how it is sealed. Joins the SQL store with the crypto module; everything
//! above this module sees plaintext configuration and `secrecy` types only.

mod chain;
pub mod crypto;
pub mod fleet;
pub mod git;
pub mod jose;
pub mod keyring;
pub mod keys;
pub mod rules;
mod slots;
pub mod store;
pub mod totp;

pub use chain::{AuditEvent, Retention, VerifyStep, VerifyWalk, TRUNCATED_EVENT, VERIFY_STEP};

#[cfg(feature = "testing")]
pub use slots::test_hooks;
pub use slots::SlotKeks;

use crate::vault::crypto::{AuditKey, CryptoError, Dek, FieldRef};
use crate::vault::store::{
    CredentialRow, GrantRow, Location, ProviderRow, Store, StoreError, TokenRow,
};
use latchkey_client::protocol::{
    Access, AuthMethod, CredentialState, Endpoints, GrantType, TokenReply,
};
use latchkey_client::unix_now;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("the vault has no passphrase slot")]
    NoPassphraseSlot,
    #[error("the vault has no keyring slot")]
    NoKeyringSlot,
    #[error(transparent)]
    Keyring(#[from] keyring::KeyringError),
    #[error("{what} failed its integrity check: the vault file was modified or damaged")]
    Corrupt { what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key slot {slot}: {source}")]
    Slot { slot: String, source: CryptoError },
    /// More slots, or more Argon2id work over them, than one unlock may
    /// spend: a crafted or damaged file.
    #[error("the vault file has too many or too expensive key slots ({slots} slots, Argon2id work {work} KiB·passes)")]
    TooMuchSlotWork { slots: usize, work: u64 },
    /// The key file's public key is no key-file slot's.
    #[error("the key file does not open any key slot of this vault")]
    WrongKeyFile,
    /// A key-file slot of this key file exists already.
    #[error("key slot {id} is this key file's already")]
    SlotExists { id: String },
    #[error("the vault has {max} key-file slots, the most it may have")]
    TooManySlots { max: usize },
    #[error("no key slot {id}")]
    NoSuchSlot { id: String },
    /// Removing it would leave no slot that opens the vault for good.
    #[error("key slot {id} is the last one that opens the vault")]
    LastSlot { id: String },
}

pub type Result<T> = std::result::Result<T, VaultError>;

/// The open data key plus the vault id it belongs to, and the audit
/// chain's key derived from it.
pub struct Keys {
    pub vault_id: String,
    dek: Dek,
    audit: AuditKey,
}

impl Keys {
    fn new(vault_id: String, dek: Dek) -> Keys {
        let audit = dek.audit_key();
        Keys {
            vault_id,
            dek,
            audit,
        }
    }

    fn seal(&self, table: &str, row_id: &str, field: &str, plaintext: &[u8]) -> Vec<u8> {
        self.dek.seal(
            &self.vault_id,
            FieldRef {
                table,
                row_id,
                field,
            },
            plaintext,
        )
    }

    fn open(
        &self,
        table: &str,
        row_id: &str,
        field: &str,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.dek
            .open(
                &self.vault_id,
                FieldRef {
                    table,
                    row_id,
                    field,
                },
                blob,
            )
            .map_err(|_| VaultError::Corrupt {
                what: format!("{table} row {row_id} field {field}"),
            })
    }

    /// Opens a sealed JSON document.
    fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        row_id: &str,
        field: &str,
        blob: &[u8],
    ) -> Result<T> {
        let plain = self.open(table, row_id, field, blob)?;
        serde_json::from_slice(&plain).map_err(|_| VaultError::Corrupt {
            what: format!("{table} row {row_id} field {field}"),
        })
    }

    fn seal_json<T: Serialize>(
        &self,
        table: &str,
        row_id: &str,
        field: &str,
        value: &T,
    ) -> Vec<u8> {
        let plain = Zeroizing::new(serde_json::to_vec(value).expect("vault documents serialize"));
        self.seal(table, row_id, field, &plain)
    }
}

/// A provider's sealed configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: Option<String>,
    pub endpoints: Endpoints,
    /// RFC 9207: the metadata says authorization responses carry `iss`, so
    /// a callback without it is refused. Absent in older documents: false.
    #[serde(default)]
    pub iss_parameter_supported: bool,
    /// An OAuth 1.0a provider's endpoints (then `endpoints` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth1: Option<latchkey_client::protocol::Oauth1Endpoints>,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub id: String,
    pub config: ProviderConfig,
}

/// A credential's sealed configuration (the secret is sealed separately).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialConfig {
    pub name: String,
    pub provider_id: String,
    pub client_id: String,
    pub grant: GrantType,
    pub auth: AuthMethod,
    pub scopes: Vec<String>,
    pub redirect_uri: Option<String>,
    /// Who may use it; documents from before access rules are `open`.
    #[serde(default = "Access::legacy")]
    pub access: Access,
    /// Whether tokens need a recent confirmation (`stepup.rs`).
    #[serde(
        default,
        skip_serializing_if = "latchkey_client::protocol::StepUp::is_off"
    )]
    pub step_up: latchkey_client::protocol::StepUp,
    /// Grant `oauth1`: how requests are signed. Its signing secret (the
    /// consumer secret, or the RSA private key as PKCS#8 PEM) is the
    /// sealed `client_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_method: Option<latchkey_client::protocol::SignatureMethod>,
    /// A token exchange credential's subject-token source and what it asks
    /// for (sealed like the rest: an edited path is detected, not obeyed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<latchkey_client::protocol::TokenExchangeConfig>,
    /// `private_key_jwt`: whom client assertions name as audience.
    #[serde(
        default,
        skip_serializing_if = "latchkey_client::protocol::AssertionAudience::is_default"
    )]
    pub assertion_audience: latchkey_client::protocol::AssertionAudience,
    /// Tokens are requested bound to the credential's DPoP key (RFC 9449).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dpop: bool,
}

#[derive(Debug, Clone)]
pub struct Credential {
    pub id: String,
    pub config: CredentialConfig,
    pub has_client_secret: bool,
    /// When its client secrets were set (not secret; `credential set-secret`).
    pub secret_ages: SecretAges,
    /// Set when the row failed its integrity check; such a credential is
    /// listed but never used.
    pub corrupt: bool,
}

/// When a credential's client secrets were set, and whether the newest
/// has worked yet: what rotation (`credential set-secret`) decides by, and
/// what `credential show` and `doctor` report. Never the secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecretAges {
    /// Unix seconds the newest secret was set; `None`: no secret.
    pub set_at: Option<i64>,
    /// The provider has accepted the newest secret once.
    pub worked: bool,
    /// A previous secret is kept (until the newest works): when it was set.
    pub previous: Option<Option<i64>>,
}

impl SecretAges {
    /// What `credential show` gives; `None` for a public client.
    pub fn info(&self) -> Option<latchkey_client::protocol::ClientSecretInfo> {
        self.set_at
            .map(|set_at| latchkey_client::protocol::ClientSecretInfo {
                set_at: Some(set_at),
                worked: self.worked,
                previous_kept: self.previous.is_some(),
                previous_set_at: self.previous.flatten(),
            })
    }

    fn of(row: &CredentialRow) -> SecretAges {
        SecretAges {
            set_at: row.client_secret.as_ref().and(row.secret_set_at),
            worked: row.secret_worked,
            previous: row
                .previous_secret
                .as_ref()
                .map(|_| row.previous_secret_set_at),
        }
    }
}

/// A credential's client secrets, opened for one token request: the
/// newest, and the previous one while it is kept.
pub struct ClientSecrets {
    pub current: Option<SecretString>,
    pub previous: Option<SecretString>,
}

/// Which token: a credential id and the requested scope set (sorted,
/// space-separated). The token cache's key and the `tokens` table's.
pub type TokenKey = (String, String);

/// Providers and credentials in memory while unlocked, by name; providers
/// by id too, since every token request finds its credential's provider by
/// id (a scan over the providers would grow with them).
#[derive(Default)]
pub struct Catalog {
    /// By name; changed only through [`Catalog::add_provider`] and
    /// [`Catalog::remove_provider`], which keep the id index.
    providers: HashMap<String, Arc<Provider>>,
    providers_by_id: HashMap<String, Arc<Provider>>,
    pub credentials: HashMap<String, Arc<Credential>>,
    /// Stored rules: which app may use which credential.
    pub rules: Vec<rules::Rule>,
    /// App keys, by id.
    pub app_keys: HashMap<String, rules::AppKey>,
}

impl Catalog {
    /// Providers by name.
    pub fn providers(&self) -> &HashMap<String, Arc<Provider>> {
        &self.providers
    }

    pub fn provider_by_id(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers_by_id.get(id)
    }

    pub fn add_provider(&mut self, provider: Arc<Provider>) {
        self.providers_by_id
            .insert(provider.id.clone(), Arc::clone(&provider));
        if let Some(old) = self
            .providers
            .insert(provider.config.name.clone(), provider)
        {
            self.providers_by_id.remove(&old.id);
        }
    }

    pub fn remove_provider(&mut self, name: &str) -> Option<Arc<Provider>> {
        let removed = self.providers.remove(name)?;
        self.providers_by_id.remove(&removed.id);
        Some(removed)
    }
}

/// An access token as the daemon holds it: stored sealed, cached, and
/// served. `reply` is exactly what `token.get` returns; dropping the token
/// zeroizes it.
pub struct Token {
    pub reply: TokenReply,
    /// Unix seconds the daemon treats as the end of life (equals
    /// `reply.expires_at`, or a conservative guess when the provider was silent).
    pub effective_expiry: i64,
    /// Unix seconds.
    pub obtained_at: i64,
}

impl Token {
    /// A copy for a task that outlives the borrow (the store thread);
    /// both copies zeroize their secret on drop.
    pub fn copy(&self) -> Token {
        Token {
            reply: TokenReply {
                access_token: copy_secret(&self.reply.access_token),
                token_type: self.reply.token_type.clone(),
                expires_at: self.reply.expires_at,
                scope: self.reply.scope.clone(),
            },
            effective_expiry: self.effective_expiry,
            obtained_at: self.obtained_at,
        }
    }
}

/// A user credential's grant: what a login leaves behind and refreshes
/// rotate. Stored sealed in `grants`; cheap to clone.
#[derive(Clone)]
pub struct Grant {
    pub refresh_token: Option<Arc<SecretString>>,
    /// Space-separated scopes the user granted.
    pub scope: String,
    /// OIDC `sub` of the account, when an ID token was validated.
    pub subject: Option<String>,
    /// An OAuth 1.0a credential's token credentials (in place of a refresh token).
    pub oauth1: Option<Arc<Oauth1Token>>,
}

/// OAuth 1.0a token credentials (RFC 5849 §2.3): what a three-legged
/// login leaves behind, or what `oauth1.import_token` stored.
pub struct Oauth1Token {
    pub token: SecretString,
    pub secret: SecretString,
}

/// A token's sealed document (format v1): the token plus the cache key it
/// belongs to, which must match its row.
#[derive(Serialize, Deserialize)]
struct TokenDoc {
    credential_id: String,
    scope_key: String,
    access_token: Secret,
    token_type: String,
    expires_at: Option<i64>,
    effective_expiry: i64,
    scope: String,
    obtained_at: i64,
}

/// A grant's sealed document (format v1).
#[derive(Serialize, Deserialize)]
struct GrantDoc {
    credential_id: String,
    refresh_token: Option<Secret>,
    scope: String,
    subject: Option<String>,
    obtained_at: i64,
    /// OAuth 1.0a token and token secret (absent in OAuth 2 grants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth1_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth1_token_secret: Option<Secret>,
}

/// A secret inside a sealed document: serialized in clear only into the
/// buffer that is sealed at once (and zeroized).
struct Secret(SecretString);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        ser.serialize_str(self.0.expose_secret())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Secret, D::Error> {
        SecretString::deserialize(de).map(Secret)
    }
}

fn copy_secret(s: &SecretString) -> SecretString {
    SecretString::from(s.expose_secret())
}

/// The vault file, open but not necessarily unlocked.
pub struct Vault {
    store: Store,
}

/// How a new vault's slots are made.
pub struct NewSlots<'a> {
    pub passphrase: Option<&'a SecretString>,
    pub keyring: Option<keyring::Backend>,
}

impl Vault {
    /// Opens the vault at `location`, or `None` when no vault exists there
    /// yet (no file; a database with no vault id).
    pub fn open(location: &Location) -> Result<Option<Vault>> {
        if location.file().is_some_and(|path| !path.exists()) {
            return Ok(None);
        }
        let store = Store::open(location, false)?;
        if store.meta("vault_id")?.is_none() {
            // A file left by an interrupted init holds no key slots: nothing to protect.
            return Ok(None);
        }
        Ok(Some(Vault { store }))
    }

    pub(super) fn vault_id(&self) -> Result<String> {
        self.store
            .meta("vault_id")?
            .ok_or_else(|| VaultError::Corrupt {
                what: "the vault id".into(),
            })
    }

    /// Reads providers and credentials. A row that fails its integrity check
    /// is kept out (providers) or marked corrupt (credentials), never guessed at.
    pub fn load_catalog(&self, keys: &Keys) -> Result<(Catalog, Vec<String>)> {
        let mut catalog = Catalog::default();
        let mut problems = Vec::new();
        for row in self.store.providers()? {
            match keys.open_json::<ProviderConfig>("providers", &row.id, "config", &row.config) {
                Ok(config) if config.name == row.name => {
                    catalog.add_provider(Arc::new(Provider { id: row.id, config }));
                }
                _ => problems.push(format!(
                    "provider '{}' failed its integrity check",
                    row.name
                )),
            }
        }
        for row in self.store.credentials()? {
            let config = keys
                .open_json::<CredentialConfig>("credentials", &row.id, "config", &row.config)
                .ok()
                .filter(|c| c.name == row.name && c.provider_id == row.provider_id);
            let secret_ages = SecretAges::of(&row);
            let credential = match config {
                Some(config) => Credential {
                    secret_ages,
                    id: row.id,
                    config,
                    has_client_secret: row.client_secret.is_some(),
                    corrupt: false,
                },
                None => {
                    problems.push(format!(
                        "credential '{}' failed its integrity check",
                        row.name
                    ));
                    Credential {
                        config: CredentialConfig {
                            name: row.name.clone(),
                            provider_id: row.provider_id,
                            client_id: String::new(),
                            grant: GrantType::ClientCredentials,
                            auth: AuthMethod::None,
                            scopes: Vec::new(),
                            redirect_uri: None,
                            access: Access::Ask,
                            step_up: Default::default(),
                            signature_method: None,
                            exchange: None,
                            assertion_audience: Default::default(),
                            dpop: false,
                        },
                        secret_ages,
                        id: row.id,
                        has_client_secret: row.client_secret.is_some(),
                        corrupt: true,
                    }
                }
            };
            catalog.credentials.insert(row.name, Arc::new(credential));
        }
        let (rules, app_keys, more) = self.load_rules(keys)?;
        catalog.rules = rules;
        catalog.app_keys = app_keys.into_iter().map(|k| (k.id.clone(), k)).collect();
        problems.extend(more);
        Ok((catalog, problems))
    }

    /// Reads stored tokens; one that fails its checks is skipped (the next
    /// request fetches a fresh one and replaces the row).
    pub fn load_tokens(&self, keys: &Keys) -> Result<(Vec<(TokenKey, Token)>, usize)> {
        let mut tokens = Vec::new();
        let mut bad = 0;
        for row in self.store.tokens()? {
            match open_token(keys, &row) {
                Some(token) => tokens.push(token),
                None => bad += 1,
            }
        }
        Ok((tokens, bad))
    }

    /// One credential's stored tokens, and how many failed their checks.
    pub fn load_tokens_of(
        &self,
        keys: &Keys,
        credential_id: &str,
    ) -> Result<(Vec<(TokenKey, Token)>, usize)> {
        let rows = self.store.tokens_of(credential_id)?;
        let n = rows.len();
        let tokens: Vec<_> = rows.iter().filter_map(|r| open_token(keys, r)).collect();
        let bad = n - tokens.len();
        Ok((tokens, bad))
    }

    /// One credential's stored grant: `Ok(None)` when it has none, an
    /// error when the row fails its checks.
    pub fn load_grant_of(&self, keys: &Keys, credential_id: &str) -> Result<Option<Grant>> {
        match self.store.grant_of(credential_id)? {
            None => Ok(None),
            Some(row) => match open_grant(keys, &row) {
                Some((_, grant)) => Ok(Some(grant)),
                None => Err(VaultError::Corrupt {
                    what: format!("grants row {}", row.id),
                }),
            },
        }
    }

    pub fn add_provider(&mut self, keys: &Keys, config: ProviderConfig) -> Result<Provider> {
        let id = crypto::random_id();
        let row = ProviderRow {
            config: keys.seal_json("providers", &id, "config", &config),
            name: config.name.clone(),
            id: id.clone(),
        };
        self.store.insert_provider(&row, unix_now())?;
        Ok(Provider { id, config })
    }

    pub fn remove_provider(&mut self, id: &str) -> Result<()> {
        Ok(self.store.delete_provider(id)?)
    }

    /// Seals and stores a new credential with its secret and its keys, in
    /// one transaction.
    pub fn add_credential(
        &mut self,
        keys: &Keys,
        config: CredentialConfig,
        client_secret: Option<&SecretString>,
        new_keys: Vec<(self::keys::KeyPurpose, jose::KeyMaterial)>,
    ) -> Result<Credential> {
        let id = crypto::random_id();
        let key_rows: Vec<_> = new_keys
            .into_iter()
            .map(|(purpose, material)| {
                self::keys::seal_key(keys, &id, purpose, material, self::keys::now_ms()).0
            })
            .collect();
        let config_grant = config.grant;
        let now = unix_now();
        let row = CredentialRow {
            config: keys.seal_json("credentials", &id, "config", &config),
            client_secret: client_secret.map(|s| {
                keys.seal(
                    "credentials",
                    &id,
                    "client_secret",
                    s.expose_secret().as_bytes(),
                )
            }),
            name: config.name.clone(),
            provider_id: config.provider_id.clone(),
            state: CredentialState::initial(config_grant).as_str().into(),
            id: id.clone(),
            secret_set_at: client_secret.map(|_| now),
            // Nothing to fall back on: the first secret counts as working
            // until it is replaced.
            secret_worked: true,
            previous_secret: None,
            previous_secret_set_at: None,
        };
        self.store.insert_credential(&row, &key_rows, now)?;
        Ok(Credential {
            secret_ages: SecretAges::of(&row),
            id,
            config,
            has_client_secret: client_secret.is_some(),
            corrupt: false,
        })
    }

    /// Seals and stores a credential's changed configuration.
    pub fn set_credential_config(
        &mut self,
        keys: &Keys,
        id: &str,
        config: &CredentialConfig,
    ) -> Result<()> {
        let sealed = keys.seal_json("credentials", id, "config", config);
        Ok(self.store.update_credential_config(id, &sealed)?)
    }

    pub fn remove_credential(&mut self, id: &str) -> Result<()> {
        Ok(self.store.delete_credential(id)?)
    }

    /// The client secret, opened just for the request that needs it.
    pub fn client_secret(
        &self,
        keys: &Keys,
        credential: &Credential,
    ) -> Result<Option<SecretString>> {
        let blob = self.store.client_secret(&credential.id)?;
        open_secret(keys, credential, "client_secret", blob)
    }

    /// The newest client secret and the previous one, while it is kept.
    pub fn client_secrets(&self, keys: &Keys, credential: &Credential) -> Result<ClientSecrets> {
        let previous = match credential.secret_ages.previous {
            Some(_) => {
                let blob = self.store.previous_secret(&credential.id)?;
                open_secret(keys, credential, "previous_secret", blob)?
            }
            None => None,
        };
        Ok(ClientSecrets {
            current: self.client_secret(keys, credential)?,
            previous,
        })
    }

    /// Replaces a credential's client secret. The one it replaces is kept
    /// as the previous secret, unless `drop_old`, or unless it never
    /// worked while an older one is kept (then that one stays: it is the
    /// last known to work). Returns the new ages.
    pub fn rotate_client_secret(
        &mut self,
        keys: &Keys,
        credential: &Credential,
        secret: &SecretString,
        drop_old: bool,
    ) -> Result<SecretAges> {
        let id = &credential.id;
        let ages = credential.secret_ages;
        let now = unix_now();
        let previous = if drop_old {
            None
        } else if ages.worked || ages.previous.is_none() {
            self.client_secret(keys, credential)?
                .map(|old| (old, ages.set_at))
        } else {
            let blob = self.store.previous_secret(id)?;
            open_secret(keys, credential, "previous_secret", blob)?
                .map(|old| (old, ages.previous.flatten()))
        };
        let previous = previous.map(|(old, set_at)| {
            let sealed = keys.seal(
                "credentials",
                id,
                "previous_secret",
                old.expose_secret().as_bytes(),
            );
            (sealed, set_at)
        });
        let kept = previous.as_ref().map(|(_, at)| *at);
        self.store.rotate_secret(&store::SecretRotation {
            credential_id: id,
            secret: keys.seal(
                "credentials",
                id,
                "client_secret",
                secret.expose_secret().as_bytes(),
            ),
            set_at: now,
            previous,
        })?;
        Ok(SecretAges {
            set_at: Some(now),
            worked: false,
            previous: kept,
        })
    }

    /// The client secret set at `set_at` worked: if it is still the
    /// newest (no rotation came in between), the previous one is dropped.
    pub fn client_secret_worked(&mut self, credential_id: &str, set_at: Option<i64>) -> Result<()> {
        Ok(self.store.secret_worked(credential_id, set_at)?)
    }

    /// Stores a token sealed, under a fresh row id (see the `tokens` table).
    pub fn save_token(&mut self, keys: &Keys, key: &TokenKey, token: &Token) -> Result<()> {
        Ok(self
            .store
            .replace_token(&token_row(keys, key, token), token.reply.expires_at)?)
    }

    /// Reads stored grants by credential id; one that fails its checks is
    /// skipped (its credential then needs a new login).
    pub fn load_grants(&self, keys: &Keys) -> Result<(Vec<(String, Grant)>, usize)> {
        let mut grants = Vec::new();
        let mut bad = 0;
        for row in self.store.grants()? {
            match open_grant(keys, &row) {
                Some(grant) => grants.push(grant),
                None => bad += 1,
            }
        }
        Ok((grants, bad))
    }

    /// Commits a login or refresh durably in one transaction: the grant (a
    /// rotated refresh token above all), the access token, and `state`.
    pub fn commit_grant(
        &mut self,
        keys: &Keys,
        credential_id: &str,
        grant: Option<&Grant>,
        token: Option<(&TokenKey, &Token)>,
        state: CredentialState,
    ) -> Result<()> {
        let now = unix_now();
        let grant_row = grant.map(|g| {
            let id = crypto::random_id();
            let doc = GrantDoc {
                credential_id: credential_id.to_owned(),
                refresh_token: g.refresh_token.as_deref().map(copy_secret).map(Secret),
                scope: g.scope.clone(),
                subject: g.subject.clone(),
                obtained_at: now,
                oauth1_token: g.oauth1.as_ref().map(|t| Secret(copy_secret(&t.token))),
                oauth1_token_secret: g.oauth1.as_ref().map(|t| Secret(copy_secret(&t.secret))),
            };
            GrantRow {
                sealed: keys.seal_json("grants", &id, "sealed", &doc),
                id,
                credential_id: credential_id.to_owned(),
            }
        });
        let token_row = token.map(|(key, t)| (token_row(keys, key, t), t.reply.expires_at));
        Ok(self.store.commit_grant(
            grant_row.as_ref(),
            token_row.as_ref().map(|(row, exp)| (row, *exp)),
            credential_id,
            state.as_str(),
            now,
        )?)
    }

    /// Forgets a credential's refresh token and access tokens.
    pub fn drop_grant(&mut self, credential_id: &str, state: CredentialState) -> Result<()> {
        Ok(self.store.drop_grant(credential_id, state.as_str())?)
    }

    /// Who locked the vault on purpose, if it is held locked (see [`LockHold`]).
    pub fn lock_hold(&self) -> Result<Option<LockHold>> {
        Ok(self
            .store
            .meta(META_LOCK_HOLD)?
            .and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Holds the vault locked (`Some`) or lets unattended unlocks open it again.
    pub fn set_lock_hold(&mut self, hold: Option<&LockHold>) -> Result<()> {
        let value = hold.map(|h| serde_json::to_string(h).expect("a lock hold serializes"));
        Ok(self.store.set_meta(META_LOCK_HOLD, value.as_deref())?)
    }

    /// The unlock limiter's state as last saved (zeroes when never saved).
    pub fn limiter_state(&self) -> Result<LimiterState> {
        Ok(self
            .store
            .meta(META_UNLOCK_LIMITER)?
            .and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default())
    }

    pub fn set_limiter_state(&mut self, state: &LimiterState) -> Result<()> {
        let value = serde_json::to_string(state).expect("the limiter state serializes");
        Ok(self.store.set_meta(META_UNLOCK_LIMITER, Some(&value))?)
    }
}

/// `meta` key of the [`LockHold`] (plaintext: it is not secret, and it
/// must be readable while locked).
const META_LOCK_HOLD: &str = "lock_hold";
/// `meta` key of the [`LimiterState`] (plaintext, read while locked).
const META_UNLOCK_LIMITER: &str = "unlock_limiter";

/// A lock someone asked for (`latchkey lock` or `latchkey panic`), as
/// opposed to the idle auto-lock: while it is held, nothing unlocks the
/// vault without a person (`latchkey unlock`). Kept in the vault file so
/// that a daemon restart does not undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHold {
    /// `"lock"` or `"panic"`: the command that locked it.
    pub by: String,
    /// Unix seconds.
    pub at: i64,
}

/// The unlock limiter's counters, kept in the vault file so that a daemon
/// restart (`daemon.shutdown` is open to any same-user program) does not
/// reset them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterState {
    pub failures: u32,
    /// Unix seconds until which unlock attempts are refused.
    pub blocked_until: i64,
}

/// A token sealed into a row with a fresh random id (see the `tokens` table).
fn token_row(keys: &Keys, key: &TokenKey, token: &Token) -> TokenRow {
    let id = crypto::random_id();
    let doc = TokenDoc {
        credential_id: key.0.clone(),
        scope_key: key.1.clone(),
        access_token: Secret(copy_secret(&token.reply.access_token)),
        token_type: token.reply.token_type.clone(),
        expires_at: token.reply.expires_at,
        effective_expiry: token.effective_expiry,
        scope: token.reply.scope.clone(),
        obtained_at: token.obtained_at,
    };
    TokenRow {
        token: keys.seal_json("tokens", &id, "token", &doc),
        id,
        credential_id: key.0.clone(),
        scope_key: key.1.clone(),
    }
}

/// Opens a sealed client secret (`field`: `client_secret` or `previous_secret`).
fn open_secret(
    keys: &Keys,
    credential: &Credential,
    field: &str,
    blob: Option<Vec<u8>>,
) -> Result<Option<SecretString>> {
    let Some(blob) = blob else {
        return Ok(None);
    };
    let plain = keys.open("credentials", &credential.id, field, &blob)?;
    let text = std::str::from_utf8(&plain).map_err(|_| VaultError::Corrupt {
        what: format!(
            "the client secret of credential '{}'",
            credential.config.name
        ),
    })?;
    Ok(Some(SecretString::from(text)))
}

/// A stored token, if it opens and names the row it is in.
fn open_token(keys: &Keys, row: &TokenRow) -> Option<(TokenKey, Token)> {
    let t = keys
        .open_json::<TokenDoc>("tokens", &row.id, "token", &row.token)
        .ok()?;
    if t.credential_id != row.credential_id || t.scope_key != row.scope_key {
        return None;
    }
    let token = Token {
        reply: TokenReply {
            access_token: t.access_token.0,
            token_type: t.token_type,
            expires_at: t.expires_at,
            scope: t.scope,
        },
        effective_expiry: t.effective_expiry,
        obtained_at: t.obtained_at,
    };
    Some(((t.credential_id, t.scope_key), token))
}

/// A stored grant by its credential's id, if it opens and names its row's credential.
fn open_grant(keys: &Keys, row: &GrantRow) -> Option<(String, Grant)> {
    let g = keys
        .open_json::<GrantDoc>("grants", &row.id, "sealed", &row.sealed)
        .ok()?;
    if g.credential_id != row.credential_id {
        return None;
    }
    Some((
        g.credential_id,
        Grant {
            refresh_token: g.refresh_token.map(|t| Arc::new(t.0)),
            scope: g.scope,
            subject: g.subject,
            oauth1: g
                .oauth1_token
                .zip(g.oauth1_token_secret)
                .map(|(token, secret)| {
                    Arc::new(Oauth1Token {
                        token: token.0,
                        secret: secret.0,
                    })
                }),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Format v1's sealed token and grant documents, as the first daemon
    /// wrote them: they read back and are written again byte for byte.
    #[test]
    fn sealed_documents_keep_format_v1() {
        let token = r#"{"credential_id":"c1","scope_key":"a b","access_token":"tok","token_type":"Bearer","expires_at":1700000300,"effective_expiry":1700000300,"scope":"a b","obtained_at":1700000000}"#;
        let doc: TokenDoc = serde_json::from_str(token).unwrap();
        assert_eq!(doc.access_token.0.expose_secret(), "tok");
        assert_eq!(serde_json::to_string(&doc).unwrap(), token);
        let grant = r#"{"credential_id":"c1","refresh_token":"rt","scope":"openid api","subject":"alice","obtained_at":1700000000}"#;
        let doc: GrantDoc = serde_json::from_str(grant).unwrap();
        assert_eq!(serde_json::to_string(&doc).unwrap(), grant);
        let no_refresh = r#"{"credential_id":"c1","refresh_token":null,"scope":"","subject":null,"obtained_at":1}"#;
        let doc: GrantDoc = serde_json::from_str(no_refresh).unwrap();
        assert_eq!(serde_json::to_string(&doc).unwrap(), no_refresh);
    }

    fn config(name: &str, provider_id: &str) -> CredentialConfig {
        CredentialConfig {
            name: name.into(),
            provider_id: provider_id.into(),
            client_id: format!("{name}-id"),
            grant: GrantType::ClientCredentials,
            auth: AuthMethod::ClientSecretBasic,
            scopes: vec!["read".into()],
            redirect_uri: None,
            access: Access::Open,
            step_up: Default::default(),
            signature_method: None,
            exchange: None,
            assertion_audience: Default::default(),
            dpop: false,
        }
    }

    /// A provider configuration for tests here and in `slots.rs`.
    pub(in crate::vault) fn provider() -> ProviderConfig {
        ProviderConfig {
            name: "prov".into(),
            issuer: None,
            endpoints: Endpoints {
                token_endpoint: Some("https://as.example.com/token".into()),
                ..Endpoints::default()
            },
            iss_parameter_supported: false,
            oauth1: None,
        }
    }

    fn new_vault(dir: &std::path::Path, pass: &str) -> (Vault, Keys) {
        let pass = SecretString::from(pass);
        Vault::create(
            &Location::File(dir.join("vault.db")),
            NewSlots {
                passphrase: Some(&pass),
                keyring: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn the_lock_hold_and_the_limiter_state_are_kept_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, _) = new_vault(dir.path(), "pass");
        assert_eq!(vault.lock_hold().unwrap(), None);
        assert_eq!(vault.limiter_state().unwrap(), LimiterState::default());
        let hold = LockHold {
            by: "panic".into(),
            at: 1_700_000_000,
        };
        vault.set_lock_hold(Some(&hold)).unwrap();
        let limiter = LimiterState {
            failures: 5,
            blocked_until: 1_700_000_004,
        };
        vault.set_limiter_state(&limiter).unwrap();
        drop(vault);
        let mut vault = Vault::open(&Location::File(dir.path().join("vault.db")))
            .unwrap()
            .unwrap();
        assert_eq!(vault.lock_hold().unwrap(), Some(hold));
        assert_eq!(vault.limiter_state().unwrap(), limiter);
        vault.set_lock_hold(None).unwrap();
        assert_eq!(vault.lock_hold().unwrap(), None);
    }

    #[test]
    fn passphrase_change_rewraps_only_and_rekey_reencrypts_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path(), "old pass");
        let p = vault.add_provider(&keys, provider()).unwrap();
        let c = vault
            .add_credential(
                &keys,
                config("api", &p.id),
                Some(&SecretString::from("s3cret")),
                // A key too: rekey re-seals `credential_keys`.
                vec![(
                    keys::KeyPurpose::Dpop,
                    super::jose::generate(latchkey_client::protocol::KeyAlg::ES256).unwrap(),
                )],
            )
            .unwrap();
        let before: Vec<Vec<u8>> = vault
            .store
            .sealed_fields()
            .unwrap()
            .into_iter()
            .map(|f| f.blob)
            .collect();

        vault
            .change_passphrase(
                &SecretString::from("old pass"),
                &SecretString::from("new pass"),
            )
            .unwrap();
        assert!(matches!(
            vault.unlock_with_passphrase(&SecretString::from("old pass")),
            Err(VaultError::WrongPassphrase)
        ));
        let (keys, _) = vault
            .unlock_with_passphrase(&SecretString::from("new pass"))
            .unwrap();
        let after: Vec<Vec<u8>> = vault
            .store
            .sealed_fields()
            .unwrap()
            .into_iter()
            .map(|f| f.blob)
            .collect();
        assert_eq!(before, after, "a passphrase change touches no field");

        assert!(matches!(
            vault.rekey(&keys, Some(&SecretString::from("wrong"))),
            Err(VaultError::WrongPassphrase)
        ));
        let (new_keys, fields, slots) = vault
            .rekey(&keys, Some(&SecretString::from("new pass")))
            .unwrap();
        assert_eq!(
            (fields, slots),
            (4, 1),
            "provider, credential config, secret, key"
        );
        let rekeyed: Vec<Vec<u8>> = vault
            .store
            .sealed_fields()
            .unwrap()
            .into_iter()
            .map(|f| f.blob)
            .collect();
        assert!(
            before.iter().zip(&rekeyed).all(|(a, b)| a != b),
            "every field is re-encrypted"
        );
        assert!(
            vault.client_secret(&keys, &c).is_err(),
            "the old key opens nothing"
        );
        let (reopened, _) = vault
            .unlock_with_passphrase(&SecretString::from("new pass"))
            .unwrap();
        let secret = vault.client_secret(&reopened, &c).unwrap().unwrap();
        assert_eq!(secret.expose_secret(), "s3cret");
        assert!(vault.client_secret(&new_keys, &c).is_ok());
    }

    /// A rotation keeps the secret it replaces (sealed under its own field)
    /// until the new one works; a new secret that never worked is not
    /// kept over the older, working one; rekey re-encrypts the previous
    /// secret too; a stale "worked" (a rotation came in between) changes
    /// nothing.
    #[test]
    fn rotation_keeps_the_last_working_secret_and_survives_rekey() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path(), "a pass");
        let p = vault.add_provider(&keys, provider()).unwrap();
        let mut c = vault
            .add_credential(
                &keys,
                config("api", &p.id),
                Some(&SecretString::from("one")),
                Vec::new(),
            )
            .unwrap();
        assert!(c.secret_ages.worked && c.secret_ages.previous.is_none());
        let secrets = |vault: &Vault, keys: &Keys, c: &Credential| {
            let s = vault.client_secrets(keys, c).unwrap();
            let text = |s: Option<SecretString>| s.map(|s| s.expose_secret().to_owned());
            (text(s.current), text(s.previous))
        };
        c.secret_ages = vault
            .rotate_client_secret(&keys, &c, &SecretString::from("two"), false)
            .unwrap();
        assert_eq!(
            secrets(&vault, &keys, &c),
            (Some("two".into()), Some("one".into()))
        );
        // "two" never worked: "three" replaces it, "one" stays the fallback.
        c.secret_ages = vault
            .rotate_client_secret(&keys, &c, &SecretString::from("three"), false)
            .unwrap();
        assert_eq!(
            secrets(&vault, &keys, &c),
            (Some("three".into()), Some("one".into()))
        );
        // The previous blob is bound to its field: swapped in as the
        // current one it fails its integrity check.
        let previous = vault.store.previous_secret(&c.id).unwrap().unwrap();
        let (reopened, _) = vault
            .unlock_with_passphrase(&SecretString::from("a pass"))
            .unwrap();
        assert!(reopened
            .open("credentials", &c.id, "client_secret", &previous)
            .is_err());

        let (new_keys, fields, _) = vault
            .rekey(&keys, Some(&SecretString::from("a pass")))
            .unwrap();
        assert_eq!(fields, 4, "provider, config, secret, previous secret");
        assert_eq!(
            secrets(&vault, &new_keys, &c),
            (Some("three".into()), Some("one".into()))
        );
        // Worked, but for a secret set at another time: nothing is dropped.
        vault.client_secret_worked(&c.id, Some(0)).unwrap();
        assert_eq!(secrets(&vault, &new_keys, &c).1, Some("one".into()));
        vault
            .client_secret_worked(&c.id, c.secret_ages.set_at)
            .unwrap();
        c.secret_ages.previous = None;
        assert_eq!(secrets(&vault, &new_keys, &c), (Some("three".into()), None));
        let (catalog, _) = vault.load_catalog(&new_keys).unwrap();
        let loaded = catalog.credentials["api"].secret_ages;
        assert!(loaded.worked && loaded.previous.is_none() && loaded.set_at.is_some());
        // --drop-old keeps nothing.
        let ages = vault
            .rotate_client_secret(&new_keys, &c, &SecretString::from("four"), true)
            .unwrap();
        assert!(ages.previous.is_none() && !ages.worked);
    }

    /// A crafted file with many slots, or slots that together ask for more
    /// Argon2id work than one slot at the ceiling, is refused before any
    /// derivation (at these parameters, deriving them would take minutes).
    #[test]
    fn unlock_work_is_bounded_over_all_slots() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, _) = new_vault(dir.path(), "pass");
        let add_slot = |id: String, m_kib: u32, t: u32| {
            let params = serde_json::json!({
                "salt": "00112233445566778899aabbccddeeff",
                "kdf": {"m_kib": m_kib, "t": t, "p": 1},
            });
            vault
                .store
                .conn_for_tests()
                .execute(
                    "INSERT INTO key_slots (id, kind, params, wrapped_dek, created_at) VALUES (?1, 'passphrase', ?2, x'00', 0)",
                    rusqlite::params![id, params.to_string()],
                )
                .unwrap();
        };
        // Each within the per-slot ceiling (1 GiB, 30 passes); two exceed the total.
        add_slot("big1".into(), 1024 * 1024, 30);
        add_slot("big2".into(), 1024 * 1024, 30);
        let refused = vault.unlock_with_passphrase(&SecretString::from("pass"));
        assert!(
            matches!(refused, Err(VaultError::TooMuchSlotWork { slots: 3, .. })),
            "{:?}",
            refused.err()
        );
        let message = crate::error::ApiError::from(refused.err().unwrap()).message;
        assert!(
            message.starts_with("the vault file has too many or too expensive key slots"),
            "{message}"
        );

        let dir = tempfile::tempdir().unwrap();
        let (vault, _) = new_vault(dir.path(), "pass");
        let add_cheap = |i: usize| {
            let params = serde_json::json!({
                "salt": "00112233445566778899aabbccddeeff",
                "kdf": {"m_kib": 19 * 1024, "t": 2, "p": 1},
            });
            vault
                .store
                .conn_for_tests()
                .execute(
                    "INSERT INTO key_slots (id, kind, params, wrapped_dek, created_at) VALUES (?1, 'passphrase', ?2, x'00', 0)",
                    rusqlite::params![format!("cheap{i}"), params.to_string()],
                )
                .unwrap();
        };
        for i in 0..16 {
            add_cheap(i);
        }
        assert!(matches!(
            vault.unlock_with_passphrase(&SecretString::from("pass")),
            Err(VaultError::TooMuchSlotWork { slots: 17, .. })
        ));
    }

    /// The id index follows every change of the providers by name: a
    /// removed provider is gone from it, one replaced under its name (a
    /// reload) leaves no stale id behind.
    #[test]
    fn the_catalog_finds_providers_by_id_through_every_change() {
        let provider = |id: &str, name: &str| {
            Arc::new(Provider {
                id: id.into(),
                config: ProviderConfig {
                    name: name.into(),
                    ..self::provider()
                },
            })
        };
        let mut catalog = Catalog::default();
        catalog.add_provider(provider("id-a", "a"));
        catalog.add_provider(provider("id-b", "b"));
        assert_eq!(catalog.provider_by_id("id-a").unwrap().config.name, "a");
        assert_eq!(catalog.provider_by_id("id-b").unwrap().config.name, "b");
        assert!(catalog.provider_by_id("id-c").is_none());

        assert_eq!(catalog.remove_provider("a").unwrap().id, "id-a");
        assert!(catalog.remove_provider("a").is_none());
        assert!(catalog.provider_by_id("id-a").is_none());

        catalog.add_provider(provider("id-b2", "b"));
        assert!(catalog.provider_by_id("id-b").is_none(), "no stale id");
        assert_eq!(catalog.provider_by_id("id-b2").unwrap().config.name, "b");
        assert_eq!(catalog.providers().len(), 1);
    }

    #[test]
    fn a_swapped_secret_is_detected_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let (mut vault, keys) = new_vault(dir.path(), "pass");
        let p = vault.add_provider(&keys, provider()).unwrap();
        let a = vault
            .add_credential(
                &keys,
                config("a", &p.id),
                Some(&SecretString::from("secret-a")),
                Vec::new(),
            )
            .unwrap();
        let b = vault
            .add_credential(
                &keys,
                config("b", &p.id),
                Some(&SecretString::from("secret-b")),
                Vec::new(),
            )
            .unwrap();
        let blob_a = vault.store.client_secret(&a.id).unwrap().unwrap();
        let blob_b = vault.store.client_secret(&b.id).unwrap().unwrap();
        vault
            .store
            .conn_for_tests()
            .execute(
                "UPDATE credentials SET client_secret = ?1 WHERE id = ?2",
                rusqlite::params![blob_b, a.id],
            )
            .unwrap();
        vault
            .store
            .conn_for_tests()
            .execute(
                "UPDATE credentials SET client_secret = ?1 WHERE id = ?2",
                rusqlite::params![blob_a, b.id],
            )
            .unwrap();
        assert!(matches!(
            vault.client_secret(&keys, &a),
            Err(VaultError::Corrupt { .. })
        ));
        assert!(matches!(
            vault.client_secret(&keys, &b),
            Err(VaultError::Corrupt { .. })
        ));
        // Swapping whole configs is caught by the name/id binding too.
        let (catalog, problems) = vault.load_catalog(&keys).unwrap();
        assert!(problems.is_empty());
        assert!(!catalog.credentials["a"].corrupt);
    }
}
