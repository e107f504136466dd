-- The request that uploaded a document: the worker logs it while indexing, so
-- `govstack report logs --request-id` follows one upload from the edge through
-- the API to the worker. Expand only: nullable, and rows from before have none.
ALTER TABLE documents ADD COLUMN request_id text;
