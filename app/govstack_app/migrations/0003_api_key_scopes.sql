-- Scoped API keys. Expand-only: the previous release keeps running against
-- this schema (it reads name, role, key_hash and is_active only).
--
-- collections: the collections a key may touch; NULL = every collection.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS collections text[];

-- curator: a writer that may also create collections (writers upload into
-- existing ones). A wider CHECK only: every row the previous release writes
-- still passes, and it refuses a curator key (unknown role: 403) rather than
-- granting it anything.
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('admin', 'curator', 'writer', 'reader'));

-- A scoped key is stored under 'scoped:' || sha256(key): the previous
-- release looks keys up by the bare hash, so after a rollback a scoped key
-- stops working (401) instead of reaching every collection.
ALTER TABLE api_keys ADD CONSTRAINT api_keys_scope_hash_check
    CHECK ((collections IS NULL) = (key_hash NOT LIKE 'scoped:%'));

-- Every secret-file key the bootstrap admin key was ever set from (by hash): a
-- file value is applied once, so neither a restart nor a container that still
-- sees the file as it was when it was created (a bind mount keeps the replaced
-- inode) brings back a key that was rotated or revoked since.
CREATE TABLE IF NOT EXISTS bootstrap_key_seeds (
    key_hash   text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
