"""govstack.shipping without hosts: which images ship, and the save stream (seconds)."""

from __future__ import annotations

import io
import os
import stat

import pytest

from govstack.shipping import DockerSaveStream, archive_digest, images_to_ship

WANTED = {"govstack/base:bookworm": "sha256:aa", "govstack/app:v1": "sha256:bb", "govstack/nginx:1.22": "sha256:cc"}


def test_only_images_whose_id_differs_or_is_absent_ship():
    on_host = {"govstack/base:bookworm": "sha256:aa", "govstack/app:v1": "sha256:old", "govstack/nginx:1.22": None}
    assert images_to_ship(WANTED, on_host) == ["govstack/app:v1", "govstack/nginx:1.22"]
    assert images_to_ship(WANTED, dict(WANTED)) == []


def test_archive_name_follows_the_ids_it_carries():
    one = archive_digest(WANTED, ["govstack/app:v1"])
    assert one == archive_digest(dict(WANTED), ["govstack/app:v1"])
    assert one != archive_digest({**WANTED, "govstack/app:v1": "sha256:new"}, ["govstack/app:v1"])


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    """A `docker` on PATH whose `save` prints its arguments, or fails for an image named 'missing'."""
    script = tmp_path / "docker"
    script.write_text(
        "#!/bin/sh\n"
        'shift\nfor image in "$@"; do [ "$image" = missing ] && { echo "No such image: missing" >&2; exit 1; }; done\n'
        'printf "archive of %s" "$*"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_save_stream_starts_on_first_read_and_cannot_be_rewound(fake_docker):
    stream = DockerSaveStream(["a:1", "b:2"], timeout_s=30)
    assert stream.seek(0) == 0  # pyinfra rewinds every upload source before reading
    assert stream._proc is None  # nothing runs until the upload reads
    assert io.BufferedReader(stream).read() == b"archive of a:1 b:2"
    with pytest.raises(OSError, match="cannot be rewound"):
        stream.seek(0)


def test_a_failed_save_fails_the_upload_with_its_cause(fake_docker):
    stream = DockerSaveStream(["missing"], timeout_s=30)
    with pytest.raises(OSError, match="govstack: docker save on the controller failed: No such image: missing"):
        while stream.read(32768):
            pass
