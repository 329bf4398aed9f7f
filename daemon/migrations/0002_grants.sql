-- What a user login leaves behind: the refresh token and whose account it
-- is. One row per credential; every write (each refresh-token rotation)
-- gets a fresh random id, so an old blob can never be replayed into it.
CREATE TABLE grants (
    id            TEXT PRIMARY KEY,
    credential_id TEXT NOT NULL UNIQUE REFERENCES credentials(id) ON DELETE CASCADE,
    sealed        BLOB NOT NULL,       -- sealed JSON: refresh token, granted scope, subject, credential id
    updated_at    INTEGER NOT NULL
);
