"""Unit tests of the app package: no services, seconds to run.

The package is imported from app/ (added to sys.path here when it is not installed), so
`pip install -r app/requirements-test.txt` is all the test venv needs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[3] / "app"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir()
    for name, value in {
        "db_password": "pg-pass\n",
        "s3_access": "access-key\n",
        "s3_secret": "secret-key-with-trailing-newlines\n\n",
        "admin_key": "gsk_admin_bootstrap_0123456789\n",
    }.items():
        (d / name).write_text(value)
    return d


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, secrets_dir: Path) -> dict[str, str]:
    for key in list(__import__("os").environ):
        if key.startswith("GOVSTACK_"):
            monkeypatch.delenv(key)
    values = {
        "GOVSTACK_DATABASE_HOST": "db.internal",
        "GOVSTACK_DATABASE_PORT": "5432",
        "GOVSTACK_DATABASE_NAME": "govstack",
        "GOVSTACK_DATABASE_USER": "govstack_app",
        "GOVSTACK_DATABASE_PASSWORD_FILE": str(secrets_dir / "db_password"),
        "GOVSTACK_S3_ENDPOINT": "s3.internal:8333",
        "GOVSTACK_S3_SECURE": "false",
        "GOVSTACK_S3_ACCESS_KEY_FILE": str(secrets_dir / "s3_access"),
        "GOVSTACK_S3_SECRET_KEY_FILE": str(secrets_dir / "s3_secret"),
        "GOVSTACK_S3_BUCKET": "documents",
        "GOVSTACK_S3_REGION": "us-east-1",
        "GOVSTACK_S3_PUBLIC_URL": "https://docs.example.gov/s3",
        "GOVSTACK_CHROMA_HOST": "chroma.internal",
        "GOVSTACK_CHROMA_PORT": "8000",
        "GOVSTACK_ADMIN_API_KEY_FILE": str(secrets_dir / "admin_key"),
        "GOVSTACK_TRUSTED_PROXIES": "172.16.0.0/12, 127.0.0.1/32",
        "GOVSTACK_APP_VERSION": "1.2.3",
        "GOVSTACK_APP_COLOR": "green",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values
