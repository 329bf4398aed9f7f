-- Which apps may use which credential: rules, and app keys (the identity
-- of interpreters and CI jobs). Everything that says who or what is
-- sealed; the plain columns only find rows.
CREATE TABLE rules (
    id            TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
    sealed        BLOB NOT NULL,     -- sealed JSON: app, credential id, effect, scopes, expiry
    created_at    INTEGER NOT NULL
);

CREATE TABLE app_keys (
    id         TEXT PRIMARY KEY,
    sealed     BLOB NOT NULL,        -- sealed JSON: name, salt, keyed hash of the key
    created_at INTEGER NOT NULL
);
