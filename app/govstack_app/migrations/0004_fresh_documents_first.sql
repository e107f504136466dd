-- The worker's queue order: documents never tried before retries (a retry backs off and waits
-- behind fresh uploads, so no document can starve the queue), each side oldest due first.
-- documents_unindexed_idx stays for the previous release during a blue/green switch.
CREATE INDEX documents_queue_idx ON documents ((index_attempts > 0), next_attempt_at, id)
    WHERE NOT is_indexed AND NOT index_failed;
