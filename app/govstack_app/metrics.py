"""Prometheus metrics (names from the seed)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

REQUESTS = Counter("govstack_requests_total", "HTTP requests served", ["method", "endpoint", "status"])
REQUEST_DURATION = Histogram(
    "govstack_request_duration_seconds",
    "HTTP request duration",
    ["method", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
VECTOR_SEARCH_DURATION = Histogram(
    "govstack_vector_search_duration_seconds",
    "Query embedding plus Chroma nearest-neighbour query",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DOCUMENT_PROCESSING = Histogram(
    "govstack_document_processing_seconds",
    "Worker time to extract, chunk, embed and store one document",
    ["content_type", "outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
ACTIVE_CONNECTIONS = Gauge("govstack_active_connections", "HTTP requests in flight")
UNINDEXED_BACKLOG = Gauge("govstack_unindexed_documents", "Documents waiting to be indexed (not failed permanently)")
FAILED_DOCUMENTS = Gauge("govstack_failed_documents", "Documents whose indexing gave up")
UPLOADS = Counter("govstack_documents_uploaded_total", "Uploads accepted", ["result"])
INDEXED = Counter("govstack_documents_indexed_total", "Documents indexed by the worker", ["outcome"])
QUERY_EMBEDDING_CACHE = Counter(
    "govstack_query_embedding_cache_total", "Search query embeddings answered by the LRU cache or the model", ["result"]
)
CHUNKS = Counter("govstack_chunks_indexed_total", "Chunks embedded and stored by the worker")
DOCUMENTS_FAILED = Counter(
    "govstack_documents_failed_total",
    "Documents the worker gave up on (index_failed set), by cause: rules, attempts, error, or the extraction"
    " sandbox's memory, cpu_time, timeout, killed, crashed, exited, exception",
    ["cause"],
)
EXTRACTION_FAILURES = Counter(
    "govstack_extraction_failures_total",
    "Extractions that ended without text (a rule refused the document, or the sandbox's child died), by cause",
    ["cause"],
)
APP_INFO = Info("govstack_app", "Version and colour of this app instance")
QUARANTINED = Counter("govstack_objects_quarantined_total", "Orphan objects moved to the quarantine by cleanup")
QUARANTINE_EXPIRED = Counter(
    "govstack_quarantine_expired_objects_total", "Quarantine entries deleted after their retention (the only deletion)"
)
ADOPTED = Counter("govstack_documents_adopted_total", "Orphan or quarantined objects registered again as documents")
CLEANUP_PAUSED = Gauge(
    "govstack_cleanup_paused", "1 while automatic cleanup is paused (set by a restore; `govstack cleanup resume`)"
)
# Usage events for the analytics service (analytics/events.py): every event ends written,
# dropped (the bounded queue was full) or failed (its batch could not be inserted).
ANALYTICS_EVENTS = Counter(
    "govstack_analytics_events_total", "Usage events by outcome: written, dropped (queue full) or failed", ["outcome"]
)
ANALYTICS_EVENT_QUEUE = Gauge("govstack_analytics_event_queue", "Usage events waiting to be written")
for _outcome in ("written", "dropped", "failed"):
    ANALYTICS_EVENTS.labels(_outcome)
# The analytics service (its own process and /metrics).
ANALYTICS_RELEASES = Counter(
    "govstack_analytics_releases_total", "Answers of the analytics service by outcome: released, cached, refused",
    ["release", "outcome"],
)
ANALYTICS_EPSILON = Counter("govstack_analytics_epsilon_charged_total", "Privacy budget (epsilon) charged by releases")
