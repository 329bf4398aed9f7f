-- The audit log's tamper evidence (DESIGN.md, "Audit log"): each row's
-- outcome, its MAC chained over the previous row's, and details that
-- identify an account sealed rather than in clear. ADD COLUMN rewrites
-- nothing, so this migration is instant whatever the log's size.
ALTER TABLE audit ADD COLUMN app_key TEXT;            -- identity::AppId::key: exe:/usr/bin/curl, key:ci, unknown
ALTER TABLE audit ADD COLUMN outcome TEXT;            -- ok | failed | denied (NULL in rows older than this)
ALTER TABLE audit ADD COLUMN sealed_id TEXT;          -- random 128-bit id, part of sealed_detail's associated data
ALTER TABLE audit ADD COLUMN sealed_detail BLOB;      -- sealed: a detail that identifies an account (the OIDC subject)
ALTER TABLE audit ADD COLUMN chained_late INTEGER NOT NULL DEFAULT 0; -- 1: written while locked, chained at an unlock
ALTER TABLE audit ADD COLUMN mac BLOB;                -- HMAC-SHA256(K_audit, previous mac || row); NULL until chained

-- The chain's sealed head: its first kept row and the MAC before it (the
-- anchor, moved by retention), its last row and that row's MAC. One row;
-- a fresh random id on every write.
CREATE TABLE audit_head (
    id     TEXT PRIMARY KEY,
    sealed BLOB NOT NULL
);
