"""Command-line tools the quick tier runs, installed into the venv as dev
dependencies (pyproject.toml [dev]): a missing one is a broken install, so
the test fails saying so instead of skipping."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def dev_tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is missing: it comes with the dev dependency {package} (`make venv` installs it)"
    return path
