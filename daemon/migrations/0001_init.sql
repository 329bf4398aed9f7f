-- Crypto format v1 schema. Secret and security-relevant values live in
-- sealed blobs (see vault/crypto.rs); plaintext columns hold only what is
-- needed to find rows: names, ids, and non-secret metadata.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Each slot wraps the data key under its own key-encryption key.
CREATE TABLE key_slots (
    id          TEXT PRIMARY KEY,        -- random 128-bit hex, part of the wrap's associated data
    kind        TEXT NOT NULL,           -- 'passphrase' | 'keyring'
    params      TEXT NOT NULL,           -- JSON: salt + Argon2id parameters, or keyring backend
    wrapped_dek BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE providers (
    id         TEXT PRIMARY KEY,         -- random 128-bit hex (never the rowid)
    name       TEXT NOT NULL UNIQUE,
    config     BLOB NOT NULL,            -- sealed JSON: name, issuer, endpoints
    created_at INTEGER NOT NULL
);

CREATE TABLE credentials (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    provider_id   TEXT NOT NULL REFERENCES providers(id),
    config        BLOB NOT NULL,         -- sealed JSON: name, provider id, client id, grant, auth, scopes
    client_secret BLOB,                  -- sealed, absent for public clients
    state         TEXT NOT NULL DEFAULT 'ready',
    created_at    INTEGER NOT NULL
);

-- One row per cached access token; a new random id on every write, so an
-- old blob can never be replayed into the current row.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
    scope_key     TEXT NOT NULL,
    token         BLOB NOT NULL,         -- sealed JSON: access token, type, expiry, scope, credential id
    expires_at    INTEGER,
    UNIQUE (credential_id, scope_key)
);

-- What happened, never a secret.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL,
    credential TEXT,
    peer_pid   INTEGER,
    detail     TEXT
);
