"""``govstack.app``: the document app's first version and its limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from govstack.settings.base import Section


class AppSettings(Section):
    version: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="first release's image tag; null = src-<hash of app/>. Later: govstack deploy --version",
    )
    max_upload_mb: int = Field(50, ge=1, le=4096, description="app limit; nginx client_max_body_size matches")
    max_unpacked_mb: int = Field(200, ge=1, description="zip-bomb limit: unpacked DOCX / extracted text")
    embedding_provider: Literal["minilm-local", "openai-compatible"] = "minilm-local"
    embedding_url: str | None = None
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_backend: Literal["onnx", "numpy"] = Field(
        "onnx",
        description="minilm-local: onnx (ONNX Runtime, threads = the CPU quota) or the numpy fallback; same vectors",
    )
    worker_batch_size: int = Field(16, ge=1, le=1000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # A migration waiting for a table lock queues every later query on that
    # table behind it: better to fail the deploy (rolled back whole, traffic
    # on the old color) than to stall the serving version.
    migration_lock_timeout_s: float = Field(
        5, gt=0, le=3600, description="a migration that waits longer for a lock fails, rolled back whole"
    )
    migration_statement_timeout_s: float = Field(
        600, gt=0, le=86400, description="longest one migration statement may run (Postgres statement_timeout)"
    )
    # An upload writes its object before it commits its row: a younger object without a row may
    # be an upload in flight, so cleanup and adoption leave it alone.
    orphan_min_age_s: int = Field(
        3600, ge=60, description="an object without a document row counts as an orphan once this old (cleanup, adopt)"
    )
    quarantine_retention_days: int = Field(
        30, ge=1, le=3650,
        description="orphans are moved to the bucket's quarantine/ prefix, deleted after this many days",
    )
