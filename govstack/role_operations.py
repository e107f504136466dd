"""Release steps of a split inventory, where the edge and the app colors run
on different hosts (govstack/roles.py). In pyinfra's style, like
govstack/operations.py; each prints a one-line ``govstack:`` cause on failure.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation


@operation()
def all_hosts_reached(step: str):
    """
    A step every host of the inventory passes, changing nothing.

    + step: what is done on every host once it is reached

    pyinfra orders operations by each host's own sequence, so an operation
    only some hosts run (the app color on app hosts) could run before one
    that only others run (Postgres up on the data host). Every host calls
    this at the same point of a deploy, so everything before it, on every
    host, runs before anything after it.
    """
    host.noop(f"reached: {step}")
    yield from ()


@operation(is_idempotent=False)
def edge_drained(project: str, compose_file: str, drain_timeout_s: int = 30):
    """
    Wait until nginx's old workers (they finish the requests they had when
    the reload came) have exited, so the previous color gets no more traffic.

    + project, compose_file: the project nginx runs in, on the edge host
    + drain_timeout_s: how long to wait at most
    """
    edge = f"-p {shlex.quote(project)} -f {shlex.quote(compose_file)}"
    yield (
        f"i=0; while docker compose {edge} exec -T nginx sh -c "
        "'grep -l \"shutting down\" /proc/[0-9]*/cmdline' >/dev/null 2>&1; "
        f"do i=$((i+1)); [ $i -ge {drain_timeout_s * 2} ] && break; sleep 0.5; done"
    )


@operation(is_idempotent=False)
def app_color_stopped(project: str, compose_file: str, stop_timeout_s: int = 40):
    """
    Stop a color's API and worker on an app host; keep the containers
    (stopped) and the image for a rollback.

    + project, compose_file: the color's project
    + stop_timeout_s: SIGTERM grace for the API to finish in-flight requests
    """
    old = f"-p {shlex.quote(project)} -f {shlex.quote(compose_file)}"
    yield (
        f"docker compose {old} stop -t {stop_timeout_s} api worker >/dev/null 2>&1 "
        f"|| {{ echo 'govstack: could not stop the previous color {project}' >&2; exit 1; }}"
    )
