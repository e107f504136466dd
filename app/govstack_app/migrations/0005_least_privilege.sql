-- govstack-app schema v3: the app connects as a role that owns nothing (issue 12). The little
-- the app needs of the owner's rights at run time happens inside these functions, as the
-- owner, and only as far as they check. Migrations run as the owner.

-- Monthly audit partitions are made by the owner: the app may not create tables. The functions'
-- search_path is pinned to public (where CREATE is the owner's alone) and pg_temp last, so a
-- caller's objects can never stand in for ours; new partitions are made in public.
ALTER FUNCTION govstack_ensure_audit_partition(timestamptz)
    SECURITY DEFINER SET search_path = public, pg_temp;

-- The deploy's audit retention floor (compliance.audit_retention_floor_months), written by
-- each migrate run. The app may read it, never change it.
CREATE TABLE audit_retention_floor (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    months     integer NOT NULL CHECK (months >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Detach and drop one audit partition, only when every row it can hold is older than the
-- floor; returns the rows it held. A plain DETACH (a function runs inside a transaction, where
-- CONCURRENTLY cannot): it holds the parent's lock only while the old partition is unlinked,
-- and lock_timeout bounds the wait for it.
CREATE FUNCTION govstack_drop_audit_partition(part text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET lock_timeout = '10s'
AS $$
DECLARE
    rel      regclass := to_regclass(format('public.%I', part));
    floor_m  integer := (SELECT months FROM audit_retention_floor);
    pending  boolean;
    upper_ts timestamptz;
    n        bigint;
BEGIN
    IF floor_m IS NULL THEN
        RAISE EXCEPTION 'no audit retention floor is set; run migrate';
    END IF;
    SELECT i.inhdetachpending INTO pending
      FROM pg_inherits i WHERE i.inhrelid = rel AND i.inhparent = 'audit_logs'::regclass;
    IF rel IS NULL OR NOT FOUND THEN
        RAISE EXCEPTION '% is not a partition of audit_logs', part;
    END IF;
    upper_ts := (regexp_match(pg_get_expr((SELECT relpartbound FROM pg_class WHERE oid = rel), rel),
                              'TO \(''([^'']+)''\)'))[1]::timestamptz;
    IF upper_ts IS NULL OR upper_ts > now() - make_interval(months => floor_m) THEN
        RAISE EXCEPTION 'refusing to drop %: it may hold rows younger than the floor of % months', part, floor_m
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', rel) INTO n;
    EXECUTE format('ALTER TABLE audit_logs DETACH PARTITION %s%s', rel, CASE WHEN pending THEN ' FINALIZE' ELSE '' END);
    EXECUTE format('DROP TABLE %s', rel);
    RETURN n;
END;
$$;
