"""The image installs the app with `pip install /src`: a subpackage missing from the pyproject's
package list is left out of the image and the containers fail at import."""

from __future__ import annotations

import tomllib
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[3] / "app"


def test_every_subpackage_is_packaged() -> None:
    listed = set(tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(APP_DIR).parts) for init in (APP_DIR / "govstack_app").rglob("__init__.py")
    }
    assert on_disk == listed, f"unpackaged: {sorted(on_disk - listed)}, missing: {sorted(listed - on_disk)}"
