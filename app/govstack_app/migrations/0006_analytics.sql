-- Privacy-preserving usage analytics (issue 16). Expand-only: a new schema and new objects;
-- nothing that exists changes, so the previous release keeps running beside this one.
--
-- The API writes pseudonymous usage events (govstack_app/analytics/events.py). The analytics
-- service's own role (granted by `migrate`, connected as the owner, once the deploy created the role: db.grant_analytics_privileges)
-- reads them only through analytics.actor_day_events (day granularity, counts), and writes only
-- its release cache and the append-only privacy ledger. It reads no other table (the collection
-- names it reports on come through analytics.collections).
CREATE SCHEMA analytics;

CREATE TABLE analytics.events (
    -- Rounded down to the minute by the writer; the check keeps anything finer out.
    occurred_at    timestamptz NOT NULL CHECK (occurred_at = date_trunc('minute', occurred_at)),
    day            date GENERATED ALWAYS AS ((occurred_at AT TIME ZONE 'UTC')::date) STORED,
    kind           text NOT NULL CHECK (kind IN ('upload', 'search', 'view', 'download', 'delete', 'error')),
    -- HMAC-SHA256 (128 bits, hex) of the API key name or client address: never the name itself.
    actor          text NOT NULL CHECK (actor ~ '^[0-9a-f]{32}$'),
    collection     text CHECK (collection ~ '^[a-z0-9][a-z0-9_-]{0,61}[a-z0-9]$'),
    latency_bucket smallint NOT NULL CHECK (latency_bucket BETWEEN 0 AND 100),
    score_bucket   smallint CHECK (score_bucket BETWEEN 0 AND 3),
    status_class   smallint CHECK (status_class BETWEEN 1 AND 5),
    CHECK ((kind = 'error') = (status_class IS NOT NULL)),
    CHECK (kind <> 'error' OR collection IS NULL),
    CHECK ((kind = 'search') = (score_bucket IS NOT NULL))
);
-- Events arrive in time order: a BRIN index is a few pages for any volume, and serves both the
-- releases' day ranges and the retention job's deletes.
CREATE INDEX events_day_brin ON analytics.events USING brin (day);
CREATE INDEX events_occurred_at_brin ON analytics.events USING brin (occurred_at);

-- What the analytics service reads: events per actor and UTC day, counted. No minute, no row.
CREATE VIEW analytics.actor_day_events AS
SELECT day, actor, kind, collection, latency_bucket, score_bucket, status_class, count(*)::bigint AS events
  FROM analytics.events
 GROUP BY day, actor, kind, collection, latency_bucket, score_bucket, status_class;

-- The public domain of the collection-keyed releases: the names every API reader can list
-- (GET /api/v1/collections). Fixing the domain before any event is read keeps which groups a
-- release has, and how many it suppressed, independent of anyone's activity.
CREATE VIEW analytics.collections AS
SELECT name FROM public.collections;

-- Every release the service made, as it was served; answered again, unchanged and at no cost,
-- for the same query in the same budget period (so noise cannot be averaged away).
CREATE TABLE analytics.releases (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    query_key    char(64) NOT NULL,
    period_start date NOT NULL,
    release      text NOT NULL,
    query        jsonb NOT NULL,
    answer       jsonb NOT NULL,
    epsilon      double precision NOT NULL CHECK (epsilon > 0),
    consumer     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT releases_query_period_key UNIQUE (query_key, period_start)
);

-- The privacy ledger: one row per answer or refusal. Who, what, epsilon charged, when.
CREATE TABLE analytics.privacy_ledger (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    consumer     text NOT NULL,
    period_start date NOT NULL,
    release      text NOT NULL,
    query        jsonb NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('released', 'cached', 'refused')),
    epsilon      double precision NOT NULL CHECK (epsilon >= 0),
    release_id   bigint REFERENCES analytics.releases (id),
    request_id   text,
    CHECK ((outcome = 'released') = (epsilon > 0)),
    CHECK ((outcome = 'refused') = (release_id IS NULL))
);
CREATE INDEX privacy_ledger_period_consumer_idx ON analytics.privacy_ledger (period_start, consumer);

-- Auditors can trust the ledger only if nobody rewrites it.
CREATE FUNCTION analytics.ledger_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'analytics.privacy_ledger is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER privacy_ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON analytics.privacy_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.ledger_append_only();
CREATE TRIGGER releases_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON analytics.releases
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.ledger_append_only();

-- The analytics service authenticates its consumers with the app's API keys, without reading
-- api_keys: this function answers only "which active key has this SHA-256", with its role.
CREATE FUNCTION analytics.consumer_of_key(key_hash text) RETURNS TABLE (name text, role text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.name, k.role FROM public.api_keys k WHERE k.key_hash = $1 AND k.is_active
$$;
REVOKE ALL ON FUNCTION analytics.consumer_of_key(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION analytics.ledger_append_only() FROM PUBLIC;
