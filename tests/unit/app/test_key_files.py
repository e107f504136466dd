"""The app's S3 key pair follows a rotation of its two files without a torn pair
(govstack_app.storage.KeyFilesProvider)."""

from __future__ import annotations

import os
from pathlib import Path

from govstack_app.storage import KeyFilesProvider


def rewrite_in_place(path: Path, value: str) -> None:
    """As `govstack secret rotate` does: same inode, same size, mtime within the same tick."""
    stamp = path.stat()
    with path.open("r+") as file:
        file.write(value)
        file.truncate()
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


def pair(provider: KeyFilesProvider) -> tuple[str, str]:
    credentials = provider.retrieve()
    return credentials.access_key, credentials.secret_key


def test_the_old_pair_stays_until_both_files_changed_then_the_new_pair_is_used(tmp_path):
    access, secret = tmp_path / "s3_access_key", tmp_path / "s3_secret_key"
    access.write_text("OLDACCESS")
    secret.write_text("oldsecret")
    provider = KeyFilesProvider(access, secret)
    assert pair(provider) == ("OLDACCESS", "oldsecret")
    rewrite_in_place(access, "NEWACCESS")
    assert pair(provider) == ("OLDACCESS", "oldsecret"), "half a pair was used"
    rewrite_in_place(secret, "newsecret")
    assert pair(provider) == ("NEWACCESS", "newsecret")


def test_one_file_changed_alone_is_used_once_it_has_settled(tmp_path, monkeypatch):
    access, secret = tmp_path / "s3_access_key", tmp_path / "s3_secret_key"
    access.write_text("ACCESS")
    secret.write_text("oldsecret")
    provider = KeyFilesProvider(access, secret)
    assert pair(provider) == ("ACCESS", "oldsecret")
    clock = [1000.0]
    monkeypatch.setattr("govstack_app.storage.time.monotonic", lambda: clock[0])
    rewrite_in_place(secret, "newsecret")
    assert pair(provider) == ("ACCESS", "oldsecret")
    clock[0] += KeyFilesProvider.SETTLE_S
    assert pair(provider) == ("ACCESS", "newsecret")


class _RefusingPool:
    """A database that does not answer yet (the API may start before Postgres does)."""

    def connection(self):
        import psycopg

        raise psycopg.OperationalError("connection refused")


def test_a_database_that_does_not_answer_never_keeps_the_api_from_starting(tmp_path):
    from types import SimpleNamespace

    from govstack_app.api import apply_new_bootstrap_key
    from govstack_app.settings import Settings

    key = tmp_path / "app_admin_api_key"
    key.write_text("k" * 40)
    # Returns (logs a warning): the readiness check reports the database, the next start applies the key.
    apply_new_bootstrap_key(SimpleNamespace(pool=_RefusingPool()), Settings(admin_api_key_file=key))
    # No secret file: nothing to apply, the pool is not touched.
    apply_new_bootstrap_key(SimpleNamespace(pool=None), Settings(admin_api_key_file=None))
