"""Business logic shared by the API, the worker and the CLI, one module per concern.

Postgres is the source of truth; the object store keeps the bytes and Chroma keeps the vectors.

- ``errors``: the errors the API maps to status codes
- ``backends``: the Services bundle (pool, object store, Chroma, embedder) and ``db()``
- ``audit``: one audit row per state change
- ``keys``: API keys (lookup, create, list, revoke)
- ``collections``: collections and their embedding model
- ``documents``: reading, downloading and deleting documents
- ``uploads``: storing a new document (object first, row second)
- ``search``: vector, keyword and hybrid search
- ``indexing``: the worker's claim-extract-embed-store loop body
- ``maintenance``: cleanup that quarantines orphans (and its pause flag), collection rebuilds
- ``reconciliation``: what a restore left to reconcile, the quarantine, adopting objects back
"""
