-- govstack-app schema v1. Applied once, inside a transaction, by `govstack-app migrate`.

CREATE TABLE collections (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    chroma_name     text NOT NULL UNIQUE,
    embedding_model text NOT NULL,
    embedding_dim   integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text
);

CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    key_hash     text NOT NULL UNIQUE,
    key_prefix   text NOT NULL,
    role         text NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    is_active    boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE documents (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    filename        text NOT NULL,
    object_name     text NOT NULL UNIQUE,
    content_type    text NOT NULL,
    size            bigint NOT NULL CHECK (size >= 0),
    sha256          char(64) NOT NULL,
    upload_date     timestamptz NOT NULL DEFAULT now(),
    collection_id   bigint NOT NULL REFERENCES collections (id) ON DELETE RESTRICT,
    created_by      text,
    api_key_name    text,
    is_indexed      boolean NOT NULL DEFAULT false,
    indexed_at      timestamptz,
    chunk_count     integer,
    index_attempts  integer NOT NULL DEFAULT 0,
    index_error     text,
    index_failed    boolean NOT NULL DEFAULT false,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT documents_collection_sha256_key UNIQUE (collection_id, sha256)
);
CREATE INDEX documents_collection_upload_idx ON documents (collection_id, upload_date DESC, id DESC);
CREATE INDEX documents_sha256_idx ON documents (sha256);
CREATE INDEX documents_api_key_name_idx ON documents (api_key_name);
-- the worker's queue: only rows still to index are in this index
CREATE INDEX documents_unindexed_idx ON documents (next_attempt_at, id)
    WHERE NOT is_indexed AND NOT index_failed;

CREATE TABLE chunks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id   bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    collection_id bigint NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
    chunk_index   integer NOT NULL,
    content       text NOT NULL,
    page          integer,
    section       text,
    tsv           tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    CONSTRAINT chunks_document_index_key UNIQUE (document_id, chunk_index)
);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);
CREATE INDEX chunks_collection_idx ON chunks (collection_id);

-- Audit trail, range-partitioned by month; partitions are made by govstack_ensure_audit_partition.
CREATE TABLE audit_logs (
    id            bigserial,
    created_at    timestamptz NOT NULL DEFAULT now(),
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text,
    collection    text,
    api_key_name  text,
    client_ip     inet,
    request_id    text,
    status_code   integer,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX audit_logs_created_at_idx ON audit_logs (created_at);
CREATE INDEX audit_logs_api_key_name_idx ON audit_logs (api_key_name, created_at);
CREATE INDEX audit_logs_action_idx ON audit_logs (action, created_at);
CREATE INDEX audit_logs_resource_idx ON audit_logs (resource_type, resource_id);

-- Create the month partition that holds `ts` (UTC months) if it is missing.
CREATE FUNCTION govstack_ensure_audit_partition(ts timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    month_end   timestamptz := (date_trunc('month', ts AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    part_name   text := 'audit_logs_' || to_char(ts AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(part_name) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('govstack-audit-partition'));
        IF to_regclass(part_name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF audit_logs FOR VALUES FROM (%L) TO (%L)',
                           part_name, month_start, month_end);
        END IF;
    END IF;
    RETURN part_name;
END;
$$;
