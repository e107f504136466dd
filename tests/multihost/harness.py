"""Containers as hosts: the multi-host test lane's machines.

Each test host is a container of ``templates/images/testhost`` on the
private network ``mh-net``: Debian with sshd and its *own* Docker engine
(started by the engine deploy, as on a real host), reached only over SSH
with a key pair made for this run. Everything this module creates is named
``mh-…`` (containers, volumes, the network, cgroups), so teardown never
touches anything else.

    harness = Harness(workdir)
    hosts = harness.start(DEFAULT_LAYOUT)       # 4 hosts, SSH ready
    harness.write_inventory(path, hosts, settings)
    ...
    harness.teardown()                          # bounded in time

Run ``python -m tests.multihost.harness up|down`` to keep hosts around
while developing (``down`` removes every ``mh-`` object this lane made).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pprint
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFIX = "mh-"
NETWORK = f"{PREFIX}net"
IMAGE_CONTEXT = REPO_ROOT / "templates" / "images" / "testhost"
IMAGE_REPO = "govstack/testhost"
LABEL = "org.govstack.multihost"

# host name -> inventory groups. Any group may share a host (issue 7).
DEFAULT_LAYOUT: dict[str, tuple[str, ...]] = {
    "host1": ("edge", "monitoring"),
    "host2": ("app",),
    "host3": ("app",),
    "host4": ("data",),
}

# What works on these machines instead of --privileged (issue 7). --cgroupns
# host: the inner engine's cgroupfs driver needs the real hierarchy; each
# inner engine then nests its containers under /mh-<host> (cgroup-parent).
HOST_RUN_FLAGS = (
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run",
)
HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")


def docker(*args: str, timeout: float = 120, check: bool = True, input: bytes | None = None,
           ) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}…: {result.stderr.decode(errors='replace')[-800:]}")
    return result


@dataclass
class TestHost:
    name: str
    groups: tuple[str, ...]
    container: str
    ip: str = ""
    host_keys: list[str] = field(default_factory=list)

    @property
    def cgroup_parent(self) -> str:
        return f"/{self.container}"

    @property
    def volume(self) -> str:
        return f"{self.container}-docker"


class Harness:
    def __init__(self, workdir: Path, prefix: str = PREFIX):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.network = f"{prefix}net"
        self.key_path = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.hosts: dict[str, TestHost] = {}
        self.timings: dict[str, float] = {}

    # --- the image ---------------------------------------------------------------------------
    def ensure_image(self, base_image: str = "govstack/base:bookworm") -> str:
        """The test-host image, rebuilt when its context or the base image changes."""
        from govstack.images import context_hash

        base_id = docker("image", "inspect", "--format", "{{.Id}}", base_image, check=False).stdout.decode().strip()
        if not base_id:
            raise RuntimeError(f"{base_image} is missing on this engine: build the offline base first "
                               "(tests/multihost/conftest.py does, through deploys/images.py)")
        digest = context_hash(IMAGE_CONTEXT, {"BASE_IMAGE": base_image}, base_id)
        tag = f"{IMAGE_REPO}:{digest[:12]}"
        present = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag,
                         check=False)
        if present.returncode != 0:
            started = time.monotonic()
            docker("build", "-q", "--build-arg", f"BASE_IMAGE={base_image}", "--label", f"{LABEL}={digest}",
                   "-t", tag, str(IMAGE_CONTEXT), timeout=900)
            self.timings["image_build_s"] = round(time.monotonic() - started, 1)
        return tag

    # --- keys --------------------------------------------------------------------------------
    def make_key_pair(self) -> str:
        """A fresh ed25519 key pair for this run; returns the public key line."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        self.key_path.write_bytes(private)
        self.key_path.chmod(0o600)
        line = public.decode() + " govstack-multihost\n"
        Path(f"{self.key_path}.pub").write_text(line)
        return line

    # --- hosts -------------------------------------------------------------------------------
    def start(self, layout: dict[str, tuple[str, ...]] | None = None, image: str | None = None,
              ssh_timeout_s: float = 60, offline: bool = True) -> list[TestHost]:
        """Start the hosts and wait until each answers SSH with the run's key.

        ``offline``: each host loses its default route, so it reaches mh-net
        and nothing else, like an air-gapped site: an image the deploy would
        build (or a package it would fetch) fails at once instead of quietly
        downloading. Controller and hosts still reach each other on mh-net.
        """
        started = time.monotonic()
        layout = layout or DEFAULT_LAYOUT
        image = image or self.ensure_image()
        public_key = self.make_key_pair()
        self.teardown()  # leftovers of an interrupted run
        docker("network", "create", "--label", f"{LABEL}=1", self.network)
        for name, groups in layout.items():
            host = TestHost(name, tuple(groups), f"{self.prefix}{name}")
            docker("volume", "create", "--label", f"{LABEL}=1", host.volume)
            docker("run", "-d", "--name", host.container, "--hostname", name, "--network", self.network,
                   "--label", f"{LABEL}=1", *HOST_RUN_FLAGS, "-v", f"{host.volume}:/var/lib/docker", image)
            self.hosts[name] = host
        for host in self.hosts.values():
            self._authorize(host, public_key, ssh_timeout_s)
            if offline:
                docker("exec", host.container, "ip", "route", "del", "default", check=False)
        self.known_hosts.write_text("".join(
            f"{host.ip} {key}\n" for host in self.hosts.values() for key in host.host_keys))
        for host in self.hosts.values():
            self.wait_ssh(host, ssh_timeout_s)
        self.timings["hosts_start_s"] = round(time.monotonic() - started, 1)
        return list(self.hosts.values())

    def _authorize(self, host: TestHost, public_key: str, timeout_s: float) -> None:
        """Authorize the run's key; learn the host's address and keys out of band (docker exec)."""
        fmt = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        host.ip = docker("inspect", "--format", fmt, host.container).stdout.decode().strip()
        deadline = time.monotonic() + timeout_s
        script = (
            "set -e; test -s /etc/ssh/ssh_host_ed25519_key.pub; "
            "install -d -m 700 /root/.ssh; cat > /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys; "
            + "; ".join(f"cut -d' ' -f1,2 /etc/ssh/ssh_host_{kind}_key.pub" for kind in HOST_KEY_TYPES)
        )
        while True:
            result = docker("exec", "-i", host.container, "sh", "-c", script, check=False,
                            input=public_key.encode())
            if result.returncode == 0:
                host.host_keys = result.stdout.decode().split("\n")[:-1]
                return
            if time.monotonic() > deadline:
                logs = docker("logs", "--tail", "20", host.container, check=False).stderr.decode()
                raise RuntimeError(f"{host.container}: sshd never made its host keys: {logs}")
            time.sleep(0.3)

    def wait_ssh(self, host: TestHost, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection((host.ip, 22), timeout=2) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.container} ({host.ip}): sshd does not answer")
            time.sleep(0.3)
        result = self.ssh(host, "true", timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{host.container}: ssh with the run's key fails: {result.stderr[-500:]}")

    # --- reaching hosts ----------------------------------------------------------------------
    def ssh_args(self, host: TestHost) -> list[str]:
        return ["ssh", "-i", str(self.key_path), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "LogLevel=ERROR", f"root@{host.ip}"]

    def ssh(self, host: TestHost | str, command: str, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run a shell command on a host over SSH (as an operator would)."""
        target = self.hosts[host] if isinstance(host, str) else host
        result = subprocess.run([*self.ssh_args(target), command], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{target.name}: {command!r} exited {result.returncode}: {result.stderr[-1500:]}")
        return result

    def host_data(self, host: TestHost) -> dict[str, Any]:
        """pyinfra 3 connector data for one host (see pyinfra/connectors/ssh.py)."""
        return {
            "ssh_hostname": host.ip,
            "ssh_user": "root",
            "ssh_key": str(self.key_path),
            "ssh_known_hosts_file": str(self.known_hosts),
            "ssh_strict_host_key_checking": "yes",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
            "ssh_connect_retries": 2,
        }

    def testinfra_spec(self, host: TestHost) -> str:
        from govstack.remote import testinfra_spec

        return testinfra_spec(host.name, self.host_data(host))

    # --- inventory ---------------------------------------------------------------------------
    def write_inventory(self, path: Path, hosts: list[TestHost] | None = None,
                        shared: dict[str, Any] | None = None,
                        group_settings: dict[str, dict[str, Any]] | None = None,
                        host_settings: dict[str, dict[str, Any]] | None = None,
                        host_data: dict[str, dict[str, Any]] | None = None,
                        groups: bool = True) -> Path:
        """A pyinfra inventory file for the hosts: host data (ssh_* and per-host
        ``govstack`` settings, plus any extra ``host_data``) in ``all``; groups
        edge/app/data/monitoring list names only, with their group settings.
        ``groups=False`` writes only ``all`` (for an all-in-one deploy)."""
        hosts = hosts if hosts is not None else list(self.hosts.values())
        host_settings = host_settings or {}
        all_hosts = []
        for host in hosts:
            data = {**self.host_data(host), **(host_data or {}).get(host.name, {})}
            per_host = host_settings.get(host.name, {})
            if host.cgroup_parent and engine_has_cgroup_parent():
                per_host = _merge({"engine": {"cgroup_parent": host.cgroup_parent}}, per_host)
            if per_host:
                data["govstack"] = per_host
            all_hosts.append((host.name, data))
        lines = [
            '"""Generated by tests/multihost/harness.py for one test run; do not edit."""',
            "",
            f"all = ({pprint.pformat(all_hosts, width=110, sort_dicts=True)},",
            f"       {pprint.pformat({'govstack': shared or {}}, width=110, sort_dicts=True)})",
        ]
        if groups:
            names: dict[str, list[str]] = {}
            for host in hosts:
                for group in host.groups:
                    names.setdefault(group, []).append(host.name)
            for group, members in sorted(names.items()):
                data = (group_settings or {}).get(group)
                value = (members, {"govstack": data}) if data else members
                lines.append(f"{group} = {pprint.pformat(value, width=110, sort_dicts=True)}")
        path = Path(path)
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- teardown ----------------------------------------------------------------------------
    def teardown(self, timeout_s: float = 120) -> None:
        """Remove every mh- container, volume and network this lane made, and
        the cgroups the inner engines left; bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s

        def left() -> float:
            return max(5.0, deadline - time.monotonic())

        containers = docker("ps", "-aq", "--filter", f"label={LABEL}", "--filter", f"name=^{self.prefix}",
                            check=False, timeout=left()).stdout.decode().split()
        names = []
        if containers:
            names = docker("inspect", "--format", "{{.Name}}", *containers, check=False,
                           timeout=left()).stdout.decode().split()
            # Nested containers live in the host's PID namespace and die with it.
            docker("rm", "-f", "-v", *containers, check=False, timeout=left())
        volumes = docker("volume", "ls", "-q", "--filter", f"label={LABEL}", check=False,
                         timeout=left()).stdout.decode().split()
        volumes = [volume for volume in volumes if volume.startswith(self.prefix)]
        if volumes:
            docker("volume", "rm", "-f", *volumes, check=False, timeout=left())
        networks = docker("network", "ls", "-q", "--filter", f"label={LABEL}", "--filter",
                          f"name=^{self.prefix}", check=False, timeout=left()).stdout.decode().split()
        if networks:
            docker("network", "rm", *networks, check=False, timeout=left())
        for name in {n.lstrip("/") for n in names} | {h.container for h in self.hosts.values()}:
            remove_cgroups(name)
        self.hosts = {}


def remove_cgroups(container_name: str) -> None:
    """rmdir the (empty, once the host is gone) cgroups an inner engine made under /<container>."""
    if not container_name.startswith(PREFIX):
        return
    for controller in Path("/sys/fs/cgroup").iterdir():
        top = controller / container_name
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                try:
                    path.rmdir()
                except OSError:
                    pass
        try:
            top.rmdir()
        except OSError:
            pass


def engine_has_cgroup_parent() -> bool:
    """Whether the settings model has ``engine.cgroup_parent`` yet (asked of the lead)."""
    from govstack.settings import EngineSettings

    return "cgroup_parent" in EngineSettings.model_fields


def _merge(base: dict, override: dict) -> dict:
    from govstack.settings import deep_merge

    return deep_merge(base, override)


def parallel(fn, items, timeout: float | None = None) -> list:
    """fn over items in threads; re-raises the first error."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return [future.result(timeout=timeout) for future in [pool.submit(fn, item) for item in items]]


def _main(argv: list[str]) -> int:
    workdir = Path(os.environ.get("MH_WORKDIR", "/tmp/mh-dev"))
    harness = Harness(workdir)
    if argv[:1] == ["down"]:
        harness.teardown()
        return 0
    hosts = harness.start()
    harness.write_inventory(workdir / "inventory.py", hosts)
    print(json.dumps({h.name: {"ip": h.ip, "groups": h.groups} for h in hosts}, indent=1))
    print(f"inventory: {workdir / 'inventory.py'}; ssh: {shlex.join(harness.ssh_args(hosts[0]))}")
    print(json.dumps(harness.timings))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
