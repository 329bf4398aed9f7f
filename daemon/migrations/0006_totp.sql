-- The enrolled authenticator (RFC 6238 TOTP): at most one row. Its secret,
-- the last step used and the keyed hashes of the recovery codes are one
-- sealed document.
CREATE TABLE authenticator (
    id         TEXT PRIMARY KEY,
    sealed     BLOB NOT NULL,        -- sealed JSON: secret, parameters, last step, recovery hashes
    created_at INTEGER NOT NULL
);
