"""Configuration from GOVSTACK_* variables and *_FILE secrets; the presign endpoint."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from govstack_app.settings import Settings, read_secret_file
from govstack_app.storage import ObjectStore, parse_public_url
from pydantic import ValidationError


def test_full_environment(env: dict[str, str]) -> None:
    s = Settings()
    assert (s.database_host, s.database_port, s.database_name, s.database_user) == (
        "db.internal",
        5432,
        "govstack",
        "govstack_app",
    )
    assert s.database_password() == "pg-pass"
    assert s.s3_access_key() == "access-key"
    assert s.s3_secret_key() == "secret-key-with-trailing-newlines"  # all trailing newlines go
    assert s.admin_api_key() == "gsk_admin_bootstrap_0123456789"
    assert s.s3_secure is False and s.s3_bucket == "documents" and s.s3_region == "us-east-1"
    assert s.chroma_port == 8000
    assert s.trusted_proxy_list == ["172.16.0.0/12", "127.0.0.1/32"]
    assert s.app_color == "green" and s.app_version == "1.2.3"
    assert s.embedding_provider == "minilm-local" and s.embedding_model_name == "all-MiniLM-L6-v2"
    assert "password=pg-pass" in s.conninfo() and "host=db.internal" in s.conninfo()


def test_defaults(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("GOVSTACK_DATABASE_PORT", "GOVSTACK_CHROMA_PORT", "GOVSTACK_S3_BUCKET", "GOVSTACK_S3_REGION"):
        monkeypatch.delenv(k)
    s = Settings()
    assert s.database_port == 5432 and s.chroma_port == 8000
    assert s.s3_bucket == "documents" and s.s3_region == "us-east-1"
    assert s.max_upload_bytes == 52_428_800
    assert s.max_unpacked_bytes > s.max_upload_bytes
    assert s.worker_batch_size >= 1 and s.log_level == "INFO"


def test_numbers_and_booleans(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVSTACK_MAX_UPLOAD_BYTES", "1048576")
    monkeypatch.setenv("GOVSTACK_MAX_UNPACKED_BYTES", "2097152")
    monkeypatch.setenv("GOVSTACK_S3_SECURE", "true")
    monkeypatch.setenv("GOVSTACK_WORKER_BATCH_SIZE", "3")
    monkeypatch.setenv("GOVSTACK_LOG_LEVEL", "debug")
    s = Settings()
    assert (s.max_upload_bytes, s.max_unpacked_bytes, s.s3_secure, s.worker_batch_size, s.log_level) == (
        1048576,
        2097152,
        True,
        3,
        "DEBUG",
    )


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("GOVSTACK_APP_COLOR", "red"),
        ("GOVSTACK_EMBEDDING_PROVIDER", "torch"),
        ("GOVSTACK_DATABASE_PORT", "not-a-port"),
        ("GOVSTACK_DATABASE_PORT", "70000"),
        ("GOVSTACK_TRUSTED_PROXIES", "10.0.0.0/8,not-a-cidr"),
        ("GOVSTACK_S3_ENDPOINT", "http://s3:8333"),
        ("GOVSTACK_S3_PUBLIC_URL", "docs.example.gov/s3"),
        ("GOVSTACK_MAX_UPLOAD_BYTES", "0"),
        ("GOVSTACK_EMBEDDING_MODEL", "text-embedding-3-small"),  # with minilm-local
        ("GOVSTACK_EXTRACT_TIMEOUT_SECONDS", "30"),  # not longer than the CPU cap
        ("GOVSTACK_UPLOAD_SPOOL_BYTES", "52428800"),  # cannot hold one upload and its framing
        ("GOVSTACK_EXTRACT_MEMORY_BYTES", "1048576"),
    ],
)
def test_invalid_values_are_refused(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


def test_openai_compatible_needs_url_and_model(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOVSTACK_EMBEDDING_PROVIDER", "openai-compatible")
    with pytest.raises(ValidationError, match="EMBEDDING_URL"):
        Settings()
    monkeypatch.setenv("GOVSTACK_EMBEDDING_URL", "https://api.openai.com")
    with pytest.raises(ValidationError, match="EMBEDDING_MODEL"):
        Settings()
    monkeypatch.setenv("GOVSTACK_EMBEDDING_MODEL", "text-embedding-3-small")
    (tmp_path / "k").write_text("sk-test\n")
    monkeypatch.setenv("GOVSTACK_EMBEDDING_API_KEY_FILE", str(tmp_path / "k"))
    s = Settings()
    assert s.embedding_model_name == "text-embedding-3-small" and s.embedding_api_key() == "sk-test"


def test_secret_files(tmp_path: Path) -> None:
    (tmp_path / "crlf").write_text("value\r\n")
    assert read_secret_file(tmp_path / "crlf", "x") == "value"
    (tmp_path / "inner").write_text("a\nb\n")
    assert read_secret_file(tmp_path / "inner", "x") == "a\nb"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(RuntimeError, match="empty"):
        read_secret_file(tmp_path / "empty", "x")
    with pytest.raises(RuntimeError, match="cannot read"):
        read_secret_file(tmp_path / "missing", "x")
    with pytest.raises(RuntimeError, match="not configured"):
        read_secret_file(None, "database_password")


def test_no_secret_values_in_plain_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVSTACK_DATABASE_PASSWORD", "ignored")  # only the _FILE form is read
    assert Settings().database_password() == "pg-pass"


@pytest.mark.parametrize(
    ("url", "netloc", "prefix"),
    [
        ("https://docs.example.gov/s3", "docs.example.gov", "/s3"),
        ("https://docs.example.gov:443/s3/", "docs.example.gov", "/s3"),
        ("https://127.0.0.1:8443/s3", "127.0.0.1:8443", "/s3"),
        ("http://files.example.gov", "files.example.gov", ""),
        ("http://[::1]:9000/objects", "[::1]:9000", "/objects"),
    ],
)
def test_parse_public_url(url: str, netloc: str, prefix: str) -> None:
    p = parse_public_url(url)
    assert (p.netloc, p.prefix) == (netloc, prefix)


def test_presigned_url_is_for_the_public_host_and_made_offline(env: dict[str, str]) -> None:
    # the internal and public hosts do not resolve: signing must not touch the network
    store = ObjectStore(Settings())
    url = store.presigned_download_url("c1/abc", filename="Ripoti ya 2024.pdf", content_type="application/pdf")
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "docs.example.gov"
    assert parts.path == "/s3/documents/c1/abc"  # prefix added outside the signed path
    q = parse_qs(parts.query)
    assert q["X-Amz-SignedHeaders"] == ["host"]
    assert q["X-Amz-Expires"] == ["300"]
    assert q["X-Amz-Credential"][0].startswith("access-key/") and q["X-Amz-Credential"][0].endswith(
        "/us-east-1/s3/aws4_request"
    )
    assert q["response-content-disposition"] == ["attachment; filename*=UTF-8''Ripoti%20ya%202024.pdf"]
