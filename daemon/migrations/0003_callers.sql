-- Who asked: the verified app identity of each audit row.
ALTER TABLE audit ADD COLUMN app TEXT;
