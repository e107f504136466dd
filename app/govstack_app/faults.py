"""Fault injection for crash tests: ``GOVSTACK_FAULT_INJECT=point[,point…]`` makes the process die at
the named points, as a kill would (no cleanup, no finally); ``point:subject`` only for that subject
(an object key, say). Unset in every deployment; the e2e tests set it on one ``docker exec`` to
prove that a crash between two steps loses nothing."""

from __future__ import annotations

import os
import sys

FAULT_ENV = "GOVSTACK_FAULT_INJECT"
FAULT_EXIT_CODE = 137  # what a SIGKILL looks like to the caller


def fault_point(name: str, subject: str | None = None) -> None:
    wanted = {part.strip() for part in os.environ.get(FAULT_ENV, "").split(",")}
    if name in wanted or (subject is not None and f"{name}:{subject}" in wanted):
        print(f"govstack-app: fault injected at {name}" + (f" ({subject})" if subject else ""), file=sys.stderr,
              flush=True)
        os._exit(FAULT_EXIT_CODE)
