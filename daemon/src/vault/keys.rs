//! What is stored about a credential's keys (`credential_keys`): one sealed
//! document per key — its purpose (client authentication or DPoP), its
//! algorithm, its public JWK, its private key (PEM) and when it was made —
//! so no key can be moved to another credential, or edited, unnoticed.

use super::crypto;
use super::jose::{KeyMaterial, SigningKey};
use super::store::SealedRow;
use super::{Credential, Keys, Result, Secret, Vault, VaultError};
use latchkey_client::protocol::KeyAlg;
use serde::{Deserialize, Serialize};

/// What a key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPurpose {
    /// Client assertions (`private_key_jwt`); several while a rotation overlaps.
    Client,
    /// DPoP proofs; one per credential.
    Dpop,
}

/// A key as stored, opened.
pub struct StoredKey {
    pub purpose: KeyPurpose,
    /// Unix milliseconds (two keys of one rotation are never a tie).
    pub created_at: i64,
    /// `kid` = the row id.
    pub key: SigningKey,
}

#[derive(Serialize, Deserialize)]
struct KeyDoc {
    id: String,
    credential_id: String,
    purpose: KeyPurpose,
    alg: KeyAlg,
    public: jsonwebtoken::jwk::Jwk,
    pem: Secret,
    created_at: i64,
}

/// A new key's row, sealed, and the key as the caller will hold it.
pub(super) fn seal_key(
    keys: &Keys,
    credential_id: &str,
    purpose: KeyPurpose,
    material: KeyMaterial,
    now: i64,
) -> (SealedRow, StoredKey) {
    let id = crypto::random_id();
    let doc = KeyDoc {
        id: id.clone(),
        credential_id: credential_id.to_owned(),
        purpose,
        alg: material.alg,
        public: material.public.clone(),
        pem: Secret(super::copy_secret(&material.pem)),
        created_at: now,
    };
    let row = SealedRow {
        sealed: keys.seal_json("credential_keys", &id, "sealed", &doc),
        id: id.clone(),
    };
    let stored = StoredKey {
        purpose,
        created_at: now,
        key: SigningKey { kid: id, material },
    };
    (row, stored)
}

impl Vault {
    /// A credential's keys, oldest first. A key whose document fails its
    /// checks makes the whole answer an error: signing with a wrong key,
    /// or leaving one out of a JWKS, would not say why.
    pub fn credential_keys(&self, keys: &Keys, credential: &Credential) -> Result<Vec<StoredKey>> {
        let corrupt = || VaultError::Corrupt {
            what: format!("a key of credential '{}'", credential.config.name),
        };
        let mut opened = self
            .store
            .credential_keys(&credential.id)?
            .into_iter()
            .map(|row| {
                let doc = keys
                    .open_json::<KeyDoc>("credential_keys", &row.id, "sealed", &row.sealed)
                    .map_err(|_| corrupt())?;
                if doc.id != row.id || doc.credential_id != credential.id {
                    return Err(corrupt());
                }
                Ok(StoredKey {
                    purpose: doc.purpose,
                    created_at: doc.created_at,
                    key: SigningKey {
                        kid: doc.id,
                        material: KeyMaterial {
                            alg: doc.alg,
                            pem: doc.pem.0,
                            public: doc.public,
                        },
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        opened.sort_by_key(|k| k.created_at);
        Ok(opened)
    }

    /// Adds a client key and/or retires keys (by id), in one transaction.
    /// Returns the added key's id.
    pub fn change_client_keys(
        &mut self,
        keys: &Keys,
        credential: &Credential,
        add: Option<KeyMaterial>,
        retire: &[&str],
    ) -> Result<Option<String>> {
        let now = now_ms();
        let added = add.map(|m| seal_key(keys, &credential.id, KeyPurpose::Client, m, now));
        self.store.change_credential_keys(
            &credential.id,
            added.as_ref().map(|(row, _)| row),
            retire,
            now / 1000,
        )?;
        Ok(added.map(|(row, _)| row.id))
    }
}

/// Unix milliseconds: the order of a credential's keys.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
