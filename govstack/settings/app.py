"""``govstack.app``: the document app's first version and its limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from govstack.settings.base import Section


class AppSettings(Section):
    version: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="first release's image tag; null = src-<hash of app/>. Later: govstack deploy --version",
    )
    max_upload_mb: int = Field(50, ge=1, le=4096, description="app limit; nginx client_max_body_size matches")
    max_unpacked_mb: int = Field(200, ge=1, description="DOCX: most bytes all zip entries may inflate to")
    # The rules every document is held to at upload and in the sandbox (app/README.md, Limits).
    max_text_mb: int = Field(
        5, ge=1, description="most text one document may yield; also the largest text/Markdown/HTML upload"
    )
    max_zip_entries: int = Field(
        1000, ge=10, le=100_000, description="DOCX: most zip entries, checked before the directory is parsed"
    )
    max_zip_ratio: int = Field(
        100, ge=10, description="DOCX: most inflated:compressed bytes of one entry (beyond its first 100 KiB)"
    )
    pdf_max_pages: int = Field(2000, ge=1, description="PDF: most pages")
    pdf_max_objects: int = Field(200_000, ge=100, description="PDF: most indirect objects")
    pdf_max_stream_mb: int = Field(32, ge=1, description="PDF: most bytes one stream may decode to")
    # The extraction sandbox: one child process per document (reused while documents succeed).
    extract_memory_mb: int = Field(
        512, ge=64, description="memory an extraction may allocate (RLIMIT_AS above the preloaded parsers)"
    )
    extract_cpu_s: int = Field(30, ge=1, description="CPU seconds one extraction may use (RLIMIT_CPU)")
    extract_timeout_s: int = Field(40, ge=2, description="wall-clock seconds one extraction may take; > extract_cpu_s")
    index_max_attempts: int = Field(
        3, ge=1, le=20, description="indexing attempts (counted before each one starts) before a document is failed"
    )
    upload_spool_mb: int = Field(
        256,
        ge=2,
        description="the API's upload spool (tmpfs); uploads in flight <= spool / (max_upload_mb + 1), 503 beyond",
    )
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

    @model_validator(mode="after")
    def _coherent_limits(self) -> AppSettings:
        if self.extract_timeout_s <= self.extract_cpu_s:
            raise ValueError("extract_timeout_s must be longer than extract_cpu_s (the CPU cap names the cause)")
        if self.upload_spool_mb < self.max_upload_mb + 1:
            raise ValueError("upload_spool_mb must hold one upload: at least max_upload_mb + 1")
        if self.max_unpacked_mb >= self.extract_memory_mb:
            raise ValueError(
                "max_unpacked_mb must stay below extract_memory_mb: a DOCX within its caps must not die of memory"
            )
        return self

    @property
    def max_concurrent_uploads(self) -> int:
        return self.upload_spool_mb // (self.max_upload_mb + 1)
