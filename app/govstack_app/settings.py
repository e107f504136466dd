"""Typed configuration: environment variables with the GOVSTACK_ prefix, secrets from *_FILE paths."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MINILM_MODEL_NAME = "all-MiniLM-L6-v2"


def read_secret_file(path: Path | None, what: str) -> str:
    """Read a secret file (the *_FILE convention): whole content, trailing newline(s) stripped."""
    if path is None:
        raise RuntimeError(f"{what} is not configured (set GOVSTACK_{what.upper()}_FILE)")
    try:
        value = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RuntimeError(f"cannot read secret file for {what}: {path}: {exc.strerror}") from exc
    value = value.rstrip("\r\n")
    if not value:
        raise RuntimeError(f"secret file for {what} is empty: {path}")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GOVSTACK_", extra="ignore", frozen=True)

    database_host: str = "127.0.0.1"
    database_port: int = Field(5432, ge=1, le=65535)
    database_name: str = "govstack"
    database_user: str = "govstack"
    database_password_file: Path | None = None
    # `migrate` (connected as the owner) grants this role the app's privileges on the schema;
    # unset: the app connects as the owner itself (development with one role).
    app_database_user: str | None = None
    # The API and worker apply migrations at start (development); the stack runs them in a
    # one-off container as the owner instead, and sets this to false.
    migrate_on_start: bool = True
    # Given by the deploy to the one-off migrate run: a digest of what that run was made from
    # (the image, the color's compose file, the secrets it reads). `migrate` records it once it
    # has finished, so the next deploy reads one row instead of starting a container to ask
    # `migrate --check` (govstack.commands.schema_stamp).
    schema_stamp: str | None = None

    s3_endpoint: str = "127.0.0.1:8333"
    s3_secure: bool = False
    s3_access_key_file: Path | None = None
    s3_secret_key_file: Path | None = None
    s3_bucket: str = "documents"
    s3_region: str = "us-east-1"
    s3_public_url: str = "http://127.0.0.1:8333"

    chroma_host: str = "127.0.0.1"
    chroma_port: int = Field(8000, ge=1, le=65535)

    admin_api_key_file: Path | None = None

    max_upload_bytes: int = Field(52_428_800, gt=0)
    max_unpacked_bytes: int = Field(209_715_200, gt=0)
    # The rules every document is held to (extract.ExtractionLimits); the README says why each.
    max_text_bytes: int = Field(5_242_880, gt=0)
    max_zip_entries: int = Field(1000, ge=1)
    max_zip_ratio: int = Field(100, ge=2)
    pdf_max_pages: int = Field(2000, ge=1)
    pdf_max_objects: int = Field(200_000, ge=10)
    pdf_max_stream_bytes: int = Field(33_554_432, gt=0)
    # The extraction sandbox (sandbox.py): one child process per document.
    extract_memory_bytes: int = Field(536_870_912, ge=64 * 1024 * 1024)
    extract_cpu_seconds: int = Field(30, ge=1)
    extract_timeout_seconds: int = Field(40, ge=2)
    index_max_attempts: int = Field(3, ge=1, le=100)
    # Uploads spool to /tmp (a tmpfs of this size): at most size // (max upload + 1 MiB) at once.
    upload_spool_bytes: int = Field(268_435_456, gt=0)

    embedding_provider: Literal["minilm-local", "openai-compatible"] = "minilm-local"
    embedding_url: str = ""
    embedding_model: str = ""
    embedding_api_key_file: Path | None = None
    # minilm-local only: ONNX Runtime (fused kernels, threads = the container's CPU quota) or the
    # numpy forward pass (no onnxruntime needed). Both give the golden vectors.
    embedding_backend: Literal["onnx", "numpy"] = "onnx"

    trusted_proxies: str = "127.0.0.1/32"

    # Usage events for the analytics service (analytics/events.py): the HMAC secret that makes
    # actors pseudonymous (unset: no events are written), the queue between requests and the
    # writer thread, and how long events are kept (the worker's retention job deletes older ones).
    analytics_actor_key_file: Path | None = None
    analytics_event_queue: int = Field(10_000, ge=100, le=1_000_000)
    analytics_events_retention_days: int | None = Field(None, ge=1, le=3650)
    # The analytics service's Postgres role: migrations grant it read access to the events view.
    analytics_role: str = Field("govstack_analytics", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    app_version: str = "dev"
    app_color: Literal["blue", "green"] = "blue"
    worker_batch_size: int = Field(8, ge=1, le=1000)
    # A migration that waits longer than this for a table lock fails (and is
    # rolled back whole) instead of queueing every request behind it.
    migration_lock_timeout_s: float = Field(5.0, gt=0, le=3600)
    migration_statement_timeout_s: float = Field(600.0, gt=0, le=86400)
    # An object without a document row is an orphan only once it is this old: an upload writes its
    # object before it commits its row, so a younger one may be an upload still in flight.
    orphan_min_age_s: float = Field(3600.0, ge=0)
    # Orphans are moved to the quarantine (never deleted); entries older than this are deleted.
    quarantine_retention_days: float = Field(30.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if "://" in v or "/" in v:
            raise ValueError("GOVSTACK_S3_ENDPOINT is host:port, without scheme or path")
        return v

    @field_validator("s3_public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("GOVSTACK_S3_PUBLIC_URL must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("GOVSTACK_S3_PUBLIC_URL must not have a query or fragment")
        return v.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        for item in (x.strip() for x in v.split(",")):
            if item:
                ipaddress.ip_network(item, strict=False)  # raises ValueError
        return v

    @model_validator(mode="after")
    def _limits(self) -> Settings:
        if self.extract_timeout_seconds <= self.extract_cpu_seconds:
            raise ValueError("GOVSTACK_EXTRACT_TIMEOUT_SECONDS must be longer than GOVSTACK_EXTRACT_CPU_SECONDS")
        if self.upload_spool_bytes < self.upload_slot_bytes:
            raise ValueError(
                "GOVSTACK_UPLOAD_SPOOL_BYTES must hold at least one upload (GOVSTACK_MAX_UPLOAD_BYTES + 1 MiB)"
            )
        return self

    @model_validator(mode="after")
    def _embedding(self) -> Settings:
        if self.embedding_provider == "openai-compatible":
            if not self.embedding_url:
                raise ValueError("GOVSTACK_EMBEDDING_URL is required for openai-compatible")
            if not self.embedding_model:
                raise ValueError("GOVSTACK_EMBEDDING_MODEL is required for openai-compatible")
        elif self.embedding_model not in ("", MINILM_MODEL_NAME, f"sentence-transformers/{MINILM_MODEL_NAME}"):
            raise ValueError(
                f"minilm-local only serves {MINILM_MODEL_NAME}; "
                f"GOVSTACK_EMBEDDING_MODEL={self.embedding_model!r} needs provider openai-compatible"
            )
        return self

    # -- derived values -------------------------------------------------------------------------
    @property
    def upload_slot_bytes(self) -> int:
        """Spool space one upload may take: the body limit the API enforces (upload + 1 MiB of
        multipart framing)."""
        return self.max_upload_bytes + 1024 * 1024

    @property
    def max_concurrent_uploads(self) -> int:
        return self.upload_spool_bytes // self.upload_slot_bytes

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [x.strip() for x in self.trusted_proxies.split(",") if x.strip()]

    @property
    def embedding_model_name(self) -> str:
        if self.embedding_provider == "minilm-local":
            return MINILM_MODEL_NAME
        return self.embedding_model

    def database_password(self) -> str:
        return read_secret_file(self.database_password_file, "database_password")

    def s3_access_key(self) -> str:
        return read_secret_file(self.s3_access_key_file, "s3_access_key")

    def s3_secret_key(self) -> str:
        return read_secret_file(self.s3_secret_key_file, "s3_secret_key")

    def admin_api_key(self) -> str:
        return read_secret_file(self.admin_api_key_file, "admin_api_key")

    def analytics_actor_key(self) -> bytes | None:
        if self.analytics_actor_key_file is None:
            return None
        return read_secret_file(self.analytics_actor_key_file, "analytics_actor_key").encode("utf-8")

    def embedding_api_key(self) -> str | None:
        if self.embedding_api_key_file is None:
            return None
        return read_secret_file(self.embedding_api_key_file, "embedding_api_key")

    def conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.database_host,
            port=self.database_port,
            dbname=self.database_name,
            user=self.database_user,
            password=self.database_password() if self.database_password_file else None,
            connect_timeout=5,
            application_name=f"govstack-app-{self.app_color}",
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
