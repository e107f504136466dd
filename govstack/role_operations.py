"""Release steps of a split inventory, where the edge and the app colors run
on different hosts (govstack/roles.py). In pyinfra's style, like
govstack/operations.py; each prints a one-line ``govstack:`` cause on failure.
"""

from __future__ import annotations

import hashlib

from pyinfra import host
from pyinfra.api import FactBase, operation

from govstack.operations import color_stop_command, edge_drain_command

FIREWALL_CHAIN = "GOVSTACK"


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
    yield edge_drain_command(project, compose_file, drain_timeout_s)


@operation(is_idempotent=False)
def app_color_stopped(project: str, compose_file: str, stop_timeout_s: int = 40):
    """
    Stop a color's API and worker on an app host; keep the containers
    (stopped) and the image for a rollback.

    + project, compose_file: the color's project
    + stop_timeout_s: SIGTERM grace for the API to finish in-flight requests
    """
    yield color_stop_command(project, compose_file, stop_timeout_s)


class FirewallState(FactBase):
    """The digest govstack tagged its iptables chain with, and whether
    Docker's DOCKER-USER chain jumps to it; None without iptables."""

    def command(self, chain: str) -> str:
        return (
            # A first line always: pyinfra gives no output as None.
            "command -v iptables >/dev/null || { echo none; exit 0; }; echo iptables; "
            f"iptables -w -S {chain} 2>/dev/null | grep -o 'govstack:[0-9a-f]*' | head -n 1; "
            f"iptables -w -C DOCKER-USER -j {chain} 2>/dev/null && echo jump; true"
        )

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        if lines == ["none"]:
            return None
        digest = next((line.split(":", 1)[1] for line in lines if line.startswith("govstack:")), None)
        return {"digest": digest, "jump": "jump" in lines}


def firewall_rules(chain: str, address: str, openings: list[tuple[int, list[str]]]) -> list[str]:
    """iptables rules (arguments of -A) for the chain DOCKER-USER jumps to.

    Docker publishes with DNAT, so the FORWARD chain sees the container's
    address: the published address and port are matched on the connection's
    original destination. Only new connections are filtered (replies and
    established ones pass); connections from the host itself never cross
    FORWARD, and those of its own containers (roles sharing the host) come
    in through a Docker bridge and pass.
    """
    rules = [f"{chain} -i docker0 -j RETURN", f"{chain} -i br-+ -j RETURN"] if openings else []
    for port, sources in openings:
        match = f"-p tcp -m conntrack --ctstate NEW --ctorigdst {address} --ctorigdstport {port}"
        rules += [f"{chain} -s {source}/32 {match} -j RETURN" for source in sources]
        rules.append(f"{chain} {match} -j DROP")
    return rules


@operation()
def published_ports_firewalled(address: str, openings: list[tuple[int, list[str]]], chain: str = FIREWALL_CHAIN):
    """
    Only the listed hosts may connect to the ports published on ``address``.

    + address: the host's private address the ports are published on
    + openings: (port, [source addresses allowed]) pairs
    + chain: govstack's own chain, jumped to from Docker's DOCKER-USER (rules
      an operator keeps in DOCKER-USER are left alone)

    The chain is rebuilt only when its rules differ from the wished ones (a
    digest of them is carried in a rule comment).
    """
    rules = firewall_rules(chain, address, openings)
    digest = hashlib.sha256("\n".join(rules).encode()).hexdigest()[:16]
    state = host.get_fact(FirewallState, chain=chain)
    if state is None:
        host.noop("no iptables on this host: published ports are not firewalled")
        return
    if state["digest"] == digest and state["jump"]:
        host.noop(f"{len(rules)} firewall rules in place")
        return
    tagged = [rule.replace(" -j DROP", f" -m comment --comment govstack:{digest} -j DROP") for rule in rules]
    script = [f"iptables -w -N {chain} 2>/dev/null || true", f"iptables -w -F {chain}"]
    script += [f"iptables -w -A {rule}" for rule in tagged]
    script.append(f"iptables -w -C DOCKER-USER -j {chain} 2>/dev/null || iptables -w -I DOCKER-USER -j {chain}")
    yield " && ".join(script)
