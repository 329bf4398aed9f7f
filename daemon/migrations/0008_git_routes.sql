-- The git credential helper's routes: protocol, host, path prefix and
-- username to a credential. The route itself is sealed (an edited host
-- must not send a token elsewhere); the plain columns only find rows.
CREATE TABLE git_routes (
    id            TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL REFERENCES credentials(id) ON DELETE CASCADE,
    sealed        BLOB NOT NULL,     -- sealed JSON: protocol, host, path, username, credential id
    created_at    INTEGER NOT NULL
);
