-- Keys a credential holds: client keys for private_key_jwt (several while
-- a rotation overlaps) and its DPoP key. Each key is one sealed document
-- (purpose, algorithm, public JWK, private key, creation time); the plain
-- columns only find rows.
CREATE TABLE credential_keys (
    id            TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
    sealed        BLOB NOT NULL,     -- sealed JSON: see vault/keys.rs
    created_at    INTEGER NOT NULL
);
CREATE INDEX credential_keys_by_credential ON credential_keys (credential_id);
