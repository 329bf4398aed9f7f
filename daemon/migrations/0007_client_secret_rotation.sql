-- Client-secret rotation (`credential set-secret`): the previous secret is
-- kept, sealed, until the newest has worked once; when each was set, so
-- `credential show` and `doctor` can give their ages. Secrets stored before
-- this migration date from their credential and count as working.
ALTER TABLE credentials ADD COLUMN secret_set_at INTEGER;
ALTER TABLE credentials ADD COLUMN secret_worked INTEGER NOT NULL DEFAULT 1;
ALTER TABLE credentials ADD COLUMN previous_secret BLOB;      -- sealed, field 'previous_secret'
ALTER TABLE credentials ADD COLUMN previous_secret_set_at INTEGER;
UPDATE credentials SET secret_set_at = created_at WHERE client_secret IS NOT NULL;
