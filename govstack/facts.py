"""pyinfra facts that read the running state govstack's operations compare against.

Every command here exits 0 even when the thing it looks for is absent, so
that "absent" is a value (None, empty) rather than a failed deploy.
"""

from __future__ import annotations

import json

from pyinfra.api import FactBase

from govstack.commands import (
    SCHEMA_STAMP_SQL,
    compose,
    compose_hashes,
    last_json,
    login_probes,
    pitr_stanza_checked,
    psql,
    q,
    service_exec,
)
from govstack.tuning import HostResources


class HostResourcesFact(FactBase):
    """CPUs, physical memory and the host's own cgroup memory limit.

    cgroup v2 exposes ``memory.max`` ("max" when unlimited); v1 exposes a
    huge number (≈ 2^63) instead, which counts as no limit.
    """

    def command(self) -> str:
        return (
            "nproc; awk '/^MemTotal:/ {print $2}' /proc/meminfo; "
            "cat /sys/fs/cgroup/memory.max 2>/dev/null "
            "|| cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo max"
        )

    def process(self, output) -> HostResources:
        lines = [line.strip() for line in output]
        cpus, mem_kb, limit = int(lines[0]), int(lines[1]), lines[2]
        memory_mb = mem_kb // 1024
        limit_mb = None
        if limit.isdigit() and int(limit) < 2**60:
            limit_mb = int(limit) // (1024 * 1024)
            if limit_mb >= memory_mb:
                limit_mb = None
        return HostResources(memory_mb=memory_mb, cpus=cpus, cgroup_memory_limit_mb=limit_mb)


class SystemdIsInit(FactBase):
    """True when systemd is PID 1 (the check systemd's own sd_booted() uses)."""

    def command(self) -> str:
        return "test -d /run/systemd/system && echo yes || echo no"

    def process(self, output) -> bool:
        return "".join(output).strip() == "yes"


class DockerEngine(FactBase):
    """The engine's server version when the daemon answers, else None."""

    def command(self) -> str:
        return "docker info --format '{{.ServerVersion}}' 2>/dev/null || true"

    def process(self, output):
        version = "".join(output).strip()
        return version or None


class DockerAppArmor(FactBase):
    """True when the engine confines containers with AppArmor (``docker info``
    lists ``name=apparmor`` among its security options: the kernel has it
    enabled and the engine was built with it). Naming the profile on a host
    without AppArmor would make every container fail to start."""

    def command(self) -> str:
        return "docker info --format '{{json .SecurityOptions}}' 2>/dev/null || echo '[]'"

    def process(self, output) -> bool:
        try:
            options = json.loads("".join(output).strip() or "[]")
        except ValueError:
            return False
        return any(str(option).split(",")[0] == "name=apparmor" for option in options or [])


class ComposePlugin(FactBase):
    """The version of the Compose v2 CLI plugin, else None."""

    def command(self) -> str:
        return "docker compose version --short 2>/dev/null || true"

    def process(self, output):
        version = "".join(output).strip()
        return version.lstrip("v") or None


class ImageLabel(FactBase):
    """One label of a local image, '' when the label is unset, None when the image is absent."""

    def command(self, image: str, label: str) -> str:
        fmt = "{{index .Config.Labels " + json.dumps(label) + "}}"
        return (
            f"docker image inspect --format {q(fmt)} {q(image)} 2>/dev/null "
            "|| echo __absent__"
        )

    def process(self, output):
        value = "".join(output).strip()
        if value == "__absent__":
            return None
        return "" if value == "<no value>" else value


class ImageLabels(FactBase):
    """Image reference -> one label of that local image ('' when unset), None
    when absent: every reference in one ``docker image inspect``."""

    def command(self, images: tuple[str, ...], label: str) -> str:
        if not images:
            return "true"
        fmt = "{{json .RepoTags}}\t{{index .Config.Labels " + json.dumps(label) + "}}"
        return f"docker image inspect --format {q(fmt)} {' '.join(q(image) for image in images)} 2>/dev/null || true"

    def process(self, output) -> dict:
        found = {}
        for line in output:
            tags, _, value = line.rstrip("\n").partition("\t")
            try:
                names = json.loads(tags)
            except ValueError:
                continue
            for name in names or ():
                found[name] = "" if value == "<no value>" else value
        return found


def image_reference(name: str) -> str:
    """``name`` as the engine lists it among an image's RepoTags: without the
    default registry and ``library/``, with ``:latest`` when it names no tag."""
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


class ImageRefs(dict):
    """Image reference -> local image id; a reference that is absent, or
    spelled as the engine does not list it, reads as None (``[ref]`` too)."""

    def __missing__(self, name: str):
        normal = image_reference(name)
        return dict.get(self, normal) if normal != name else None

    def get(self, name, default=None):
        value = self[name]
        return default if value is None else value


class ImageIds(FactBase):
    """Image reference -> local image id (sha256:…), None when absent: every
    reference in one ``docker image inspect`` (a per-image command each cost
    an engine round trip on every no-op deploy)."""

    def command(self, images: tuple[str, ...]) -> str:
        if not images:
            return "true"
        fmt = "{{.Id}}\t{{json .RepoTags}}\t{{json .RepoDigests}}"
        return f"docker image inspect --format {q(fmt)} {' '.join(q(image) for image in images)} 2>/dev/null || true"

    def process(self, output) -> ImageRefs:
        found = ImageRefs()
        for line in output:
            image_id, _, rest = line.strip().partition("\t")
            tags, _, digests = rest.partition("\t")
            for names in (tags, digests):
                try:
                    for name in json.loads(names) or ():
                        found[name] = image_id
                except ValueError:
                    continue
        return found

    def default(self) -> ImageRefs:
        return ImageRefs()


# docker inspect's State.Health.Status, as `docker ps` words it in its Status column.
_HEALTH = {"": None, "healthy": "healthy", "unhealthy": "unhealthy", "starting": "health: starting"}


class ComposeProject(FactBase):
    """What a Compose project looks like on the host right now.

    Returns ``{"desired": {service: config_hash}, "containers": [...]}`` where
    ``desired`` is what the rendered compose file asks for (``compose config
    --hash``) and each container carries its service, state, health,
    config-hash label, image (as created) and the id of the image it was made
    from: one ``docker inspect`` over all of the project's containers.
    ``desired`` is None when the compose file is missing or invalid. With ``hash_cache``,
    ``desired`` is read from that file while nothing Compose computes it from changed
    (commands.compose_hashes).
    """

    def command(self, project: str, compose_file: str, hash_cache: str = "") -> str:
        fmt = (
            '{{index .Config.Labels "com.docker.compose.service"}}\t{{.State.Status}}\t'
            "{{if .State.Health}}{{.State.Health.Status}}{{end}}\t"
            '{{index .Config.Labels "com.docker.compose.config-hash"}}\t{{.Config.Image}}\t{{.Id}}\t{{.Image}}'
        )
        return (
            f"echo '#desired'; "
            f"{compose_hashes(project, compose_file, hash_cache)}; "
            "echo '#containers'; "
            f"ids=$(docker ps -aq --no-trunc --filter label=com.docker.compose.project={q(project)} 2>/dev/null); "
            f'[ -z "$ids" ] || docker inspect --format {q(fmt)} $ids 2>/dev/null; true'
        )

    def process(self, output) -> dict:
        desired: dict | None = {}
        containers = []
        section = None
        for raw in output:
            line = raw.rstrip("\n")
            if line in ("#desired", "#containers"):
                section = line
                continue
            if not line.strip():
                continue
            if section == "#desired":
                if line.strip() == "__invalid__":
                    desired = None
                elif desired is not None:
                    service, _, config_hash = line.strip().partition(" ")
                    desired[service] = config_hash.strip()
            elif section == "#containers":
                fields = [("" if field == "<no value>" else field) for field in (line.split("\t") + [""] * 7)[:7]]
                service, state, health, config_hash, image, container_id, image_id = fields
                containers.append(
                    {
                        "service": service,
                        "state": state,
                        "health": _HEALTH.get(health, health),
                        "config_hash": config_hash,
                        "image": image,
                        "id": container_id,
                        "image_id": image_id,
                    }
                )
        return {"desired": desired, "containers": containers}


class RunningContainers(FactBase):
    """Ids of a Compose project's running containers (one-off ones too): one ``docker ps``,
    without the Compose CLI's ``config --hash``, which reading the project's state needs."""

    def command(self, project: str) -> str:
        return f"docker ps -q --no-trunc --filter label=com.docker.compose.project={q(project)} 2>/dev/null || true"

    def process(self, output) -> list[str]:
        return sorted(line.strip() for line in output if line.strip())

    def default(self) -> list[str]:
        return []


class ContainerImageIds(FactBase):
    """Container id -> id of the image it was created from."""

    def command(self, container_ids: tuple[str, ...]) -> str:
        if not container_ids:
            return "true"
        ids = " ".join(q(cid) for cid in container_ids)
        return f"docker inspect --format '{{{{.Id}}}} {{{{.Image}}}}' {ids} 2>/dev/null || true"

    def process(self, output) -> dict:
        result = {}
        for line in output:
            cid, _, image_id = line.strip().partition(" ")
            if cid:
                result[cid] = image_id
        return result


class SecretFile(FactBase):
    """``{"mode": "600", "uid": 10001, "sha256": …}`` of a secret file, None when absent.

    Only the digest leaves the host, so an operator-supplied value can be
    compared without reading the secret back.
    """

    def command(self, path: str) -> str:
        quoted = q(path)
        return (
            f"if [ -f {quoted} ]; then stat -c '%a %u' {quoted}; "
            f"sha256sum {quoted} | cut -d' ' -f1; else echo __absent__; fi"
        )

    def process(self, output):
        lines = [line.strip() for line in output]
        if not lines or lines[0] == "__absent__":
            return None
        mode, uid = lines[0].split()
        return {"mode": mode, "uid": int(uid), "sha256": lines[1]}


class FilesDigest(FactBase):
    """sha256 over the files a shell glob matches ('' when none): over their
    names and contents, or (``names=False``) their contents only, to compare
    one file with another of a different name."""

    def command(self, pattern: str, names: bool = True) -> str:
        name = 'basename "$f" && ' if names else ""
        return (
            f"for f in {pattern}; do [ -f \"$f\" ] && {name}cat \"$f\"; done 2>/dev/null "
            "| sha256sum | cut -d' ' -f1"
        )

    def process(self, output) -> str:
        return "".join(output).strip()


class PathState(FactBase):
    """``{"type": "directory"|"regular file"|…, "uid", "gid", "mode"}`` by number, None when absent.

    pyinfra's own File/Directory facts report owner *names*, which differ
    between hosts for container uids (999, 10001) and would make a converged
    host look changed.
    """

    def command(self, path: str) -> str:
        quoted = q(path)
        return f"stat -c '%F|%u|%g|%a' {quoted} 2>/dev/null || echo __absent__"

    def process(self, output):
        line = "".join(output).strip()
        if line == "__absent__":
            return None
        kind, uid, gid, mode = line.split("|")
        return {"type": kind, "uid": int(uid), "gid": int(gid), "mode": mode}


class PathStates(FactBase):
    """path -> ``{"type", "uid", "gid", "mode", "sha256"}`` (numbers as in PathState; sha256
    only for the paths in ``digests`` that are regular files, else None), or None when absent:
    every path in one command. pyinfra 3 reads a fact per operation and caches none, so the
    per-path operations of a no-op deploy cost about a hundred commands (a stat, a checksum, a
    parent-directory check each); the batched operations (paths_owned, files_rendered,
    secret_files) read this once."""

    def command(self, paths: tuple[str, ...], digests: tuple[str, ...] = ()) -> str:
        if not paths:
            return "true"
        for path in paths:
            if any(c in path for c in "\t\n"):
                raise ValueError(f"path {path!r} has a tab or a newline")
        wanted = set(digests)
        lines = []
        for path in paths:
            quoted = q(path)
            digest = (f'd=-; [ -f {quoted} ] && d=$(sha256sum < {quoted} | cut -c1-64); ' if path in wanted
                      else "d=-; ")
            lines.append(f"if s=$(stat -c '%F|%u|%g|%a' -- {quoted} 2>/dev/null); then {digest}"
                         f"printf '%s\\t%s|%s\\n' {quoted} \"$s\" \"$d\"; "
                         f"else printf '%s\\t__absent__\\n' {quoted}; fi")
        return "; ".join(lines)

    def process(self, output) -> dict:
        found: dict = {}
        for line in output:
            path, _, state = line.rstrip("\n").partition("\t")
            if not path:
                continue
            if state == "__absent__":
                found[path] = None
                continue
            kind, uid, gid, mode, digest = state.split("|")
            found[path] = {"type": kind, "uid": int(uid), "gid": int(gid), "mode": mode,
                           "sha256": None if digest == "-" else digest}
        return found

    def default(self) -> dict:
        return {}


class InstalledStamp(FactBase):
    """``{"size", "mode", "stamp"}`` of a file installed with a stamp file beside it (its
    version and digest, written when it was installed), None when the file is absent: to
    know a large binary is the wanted one without checksumming it on every run."""

    def command(self, path: str, stamp: str) -> str:
        return (f"stat -c '%s %a' -- {q(path)} 2>/dev/null || echo __absent__; "
                f"cat {q(stamp)} 2>/dev/null; true")

    def process(self, output):
        lines = [line.strip() for line in output]
        if not lines or lines[0] == "__absent__":
            return None
        size, mode = lines[0].split()
        return {"size": int(size), "mode": mode, "stamp": "\n".join(lines[1:]).strip()}


class CertificateState(FactBase):
    """Subject alternative names of a PEM certificate and whether it is still
    valid for ``min_days``; None when the file is absent or unreadable."""

    def command(self, path: str, min_days: int = 30) -> str:
        quoted = q(path)
        return (
            f"if [ -f {quoted} ]; then "
            f"openssl x509 -in {quoted} -noout -checkend {min_days * 86400} >/dev/null 2>&1 "
            "&& echo valid || echo expiring; "
            f"openssl x509 -in {quoted} -noout -ext subjectAltName 2>/dev/null | tail -n +2; "
            "else echo __absent__; fi"
        )

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        if not lines or lines[0] == "__absent__":
            return None
        names = []
        for line in lines[1:]:
            for part in line.split(","):
                kind, _, value = part.strip().partition(":")
                if value:
                    names.append(f"{kind.strip()}:{value.strip()}")
        return {"valid": lines[0] == "valid", "sans": sorted(names)}


class PostgresLogins(FactBase):
    """role -> True when it logs in to ``database`` over TCP with the password in its file and
    is a member of every role it should be: every role in one ``docker exec`` (a command and a
    container entry each cost a no-op deploy a fifth of a second). The passwords are read on the
    host and passed on stdin, one per line, never in an argv; a password with a line break in it
    reads as a failed login, so its role is made again (which changes nothing)."""

    def command(self, project: str, database: str, roles: tuple[tuple[str, str, tuple[str, ...]], ...]) -> str:
        if not roles:
            return "true"
        passwords = "; ".join(f"printf '%s\\n' \"$(cat {q(password_file)} 2>/dev/null)\""
                              for _, password_file, _ in roles)
        probes = login_probes(database, [(role, member_of) for role, _, member_of in roles])
        return f"{{ {passwords}; }} | {service_exec(project, 'postgres', 'sh', '-c', probes)} 2>/dev/null || true"

    def process(self, output) -> dict[str, bool]:
        found = {}
        for line in output:
            role, _, answer = line.strip().partition(" ")
            if role:
                found[role] = answer.strip() == "t"
        return found

    def default(self) -> dict[str, bool]:
        return {}


class SecretDigests(FactBase):
    """name -> sha256 of each secret file that exists under ``directory`` (one
    command for all of them; only digests leave the host)."""

    def command(self, directory: str, names: tuple[str, ...]) -> str:
        checks = "; ".join(
            f"[ -f {q(f'{directory}/{name}')} ] && "
            f"echo {name} $(sha256sum < {q(f'{directory}/{name}')} | cut -d' ' -f1)"
            for name in names
        )
        return f"{{ {checks}; }} 2>/dev/null; true" if names else "true"

    def process(self, output) -> dict[str, str]:
        return dict(line.split() for line in output if len(line.split()) == 2)

    def default(self) -> dict[str, str]:
        return {}


class SecretValue(FactBase):
    """The exact bytes of a secret file (base64 on the wire), None when absent.

    Read only to adopt a value the controller lacks (govstack/secret_sources.py);
    callers read it through ``quiet_fact`` so that not even ``-vvv`` prints it.
    """

    def command(self, path: str) -> str:
        quoted = q(path)
        return f"if [ -f {quoted} ]; then echo value; base64 -w0 < {quoted}; echo; else echo __absent__; fi"

    def process(self, output):
        import base64

        lines = [line.strip() for line in output]
        if not lines or lines[0] != "value":
            return None
        return base64.b64decode("".join(lines[1:])).decode()


class DataPresent(FactBase):
    """Which data a secret unlocks is on the host (secrets.DATA_KINDS): an
    initialised Postgres data directory, a restic repository."""

    def command(self, markers: tuple[tuple[str, str], ...]) -> str:
        checks = "; ".join(f"[ -e {q(path)} ] && echo {kind}" for kind, path in markers)
        return f"{{ {checks}; }} 2>/dev/null; true" if markers else "true"

    def process(self, output) -> frozenset[str]:
        return frozenset(line.strip() for line in output if line.strip())

    def default(self) -> frozenset[str]:
        return frozenset()


class PostgresOwnership(FactBase):
    """``(objects app_role owns, owner of the database)`` in ``database``, as
    the superuser sees them; None when Postgres does not answer."""

    def command(self, project: str, compose_file: str, database: str, query: str) -> str:
        in_postgres = service_exec(project, "postgres", *psql(database, rows=True), "-c", query)
        return f"{in_postgres} 2>/dev/null || true"

    def process(self, output):
        words = "".join(output).split()
        if len(words) != 2 or not words[0].isdigit():
            return None
        return int(words[0]), words[1]


class AppSchemaPending(FactBase):
    """What the app's migrate would change: [] when current, None when it gives no answer
    (no compose file or image yet, Postgres down).

    Current when the stamp the last migrate run recorded in the database is the stamp a run
    would be made from now (``stamp``, commands.schema_stamp): one ``psql`` in the running
    Postgres of ``data_project``. Otherwise (another stamp, none, an image from before stamps,
    or Postgres not on this host) the color's ``migrate --check``, run as the owner in a one-off
    container, answers: a container start, about a quarter of a no-op deploy.

    The trade-off: with a matching stamp nothing compares the privileges in the database with
    the wish, so one changed by hand is found by the next real migrate run, not by this check
    (app db.record_schema_stamp)."""

    def command(self, project: str, compose_file: str, stamp: str, data_project: str, database: str) -> str:
        recorded = service_exec(data_project, "postgres", *psql(database, rows=True), "-c", SCHEMA_STAMP_SQL)
        check = compose(project, "run", "--rm", "--no-deps", "--pull", "never", "-T", "migrate", "migrate", "--check",
                        "--wait", "5", files=compose_file)
        return (
            f"[ -f {q(compose_file)} ] || exit 0; "
            f"wanted=$({stamp}); recorded=$({recorded} 2>/dev/null); "
            'if [ "$recorded" = "$wanted" ]; then echo \'{"pending": [], "stamp": "current"}\'; '
            f"else timeout 120 {check} 2>/dev/null; fi; true"
        )

    def process(self, output):
        for line in reversed(list(output)):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return list(json.loads(line)["pending"])
                except (ValueError, KeyError, TypeError):
                    return None
        return None


class PgbackrestStanza(FactBase):
    """Where pgBackRest's stanza stands against the running cluster, as the
    pgbackrest sidecar sees it (``govstack-backup pitr state``): a dict with
    ``ok`` (stanza matches the cluster and has a backup), or None when the
    sidecar does not answer.

    With ``key`` (shell, commands.pitr_stanza_key) and ``stamp``: when the key read on the host
    equals the one recorded after the last ok answer, nothing that answer rests on changed since
    (same sidecar, cluster, config and stanza files), and the answer is ``{"ok": True,
    "checked": "stamp"}`` without asking the sidecar: its ``pgbackrest info`` and ``psql`` were
    the largest cost of a no-op deploy (0.6 s on a fresh stack, 2.4 s with a history, against
    0.05 s for the key). Otherwise the sidecar is asked and an ok answer recorded
    (commands.pitr_stanza_checked)."""

    def command(self, project: str, compose_file: str, service: str, key: str = "", stamp: str = "") -> str:
        # docker exec, not compose exec: the Compose CLI parses the whole project first.
        state = service_exec(project, service, "govstack-backup", "pitr", "state")
        if not key or not stamp:
            return f"{state} 2>/dev/null || true"
        current = json.dumps({"ok": True, "checked": "stamp"})
        return (f"key=$({key}); "
                f"if [ -n \"$key\" ] && [ \"$(cat {q(stamp)} 2>/dev/null)\" = \"$key\" ]; then echo {q(current)}; "
                f"else {pitr_stanza_checked(state, stamp)}; fi; true")

    def process(self, output):
        answer = last_json("\n".join(output))
        return answer if isinstance(answer, dict) else None


class S3BucketVersioning(FactBase):
    """A bucket's versioning state in the stack's SeaweedFS, read with ``weed shell`` inside its
    container (the entrypoint's ``bucket-state``): "Enabled", "Suspended", "Unconfigured", or
    None when the bucket is absent or the gateway does not answer."""

    def command(self, project: str, compose_file: str, bucket: str) -> str:
        probe = service_exec(project, "seaweedfs", "/usr/local/bin/seaweedfs-entrypoint", "bucket-state", bucket)
        return f"{probe} 2>/dev/null || true"

    def process(self, output) -> str | None:
        for line in output:
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "versioning" in fields:
                return None if fields["versioning"] == "absent" else fields["versioning"]
        return None


class S3BucketConfig(FactBase):
    """``{"current": bool, "pinned": bool, "versioning": str | None}``: whether the bucket's
    lifecycle rules and encryption are the wanted ones, asked by the backup service's
    ``bucket-config --check`` with the admin key pair on its stdin; whether ``marker``
    (secret_store.sse_marker) exists, mode 0600; and, with ``versioning``, the bucket's
    versioning state as S3BucketVersioning reads it (None: absent, or no answer).

    One command, the two probes concurrently (``&``, ``wait``): the gateway's ``weed shell``
    (0.3 s) runs while the backup service's S3 client (0.5 s) does, where two operations each
    waited for their own."""

    def command(self, project: str, compose_file: str, argv: tuple[str, ...], access_file: str,
                secret_file: str, marker: str = "", versioning: str = "") -> str:
        check = service_exec(project, "backup", *argv, "--check")
        pinned = f"[ \"$(stat -c %a {q(marker)} 2>/dev/null)\" = 600 ] && echo '#pinned'; " if marker else ""
        config = f"{{ cat {q(access_file)}; echo; cat {q(secret_file)}; echo; }} | {check} 2>/dev/null"
        if not versioning:
            return f"{pinned}{config} || true"
        probe = service_exec(project, "seaweedfs", "/usr/local/bin/seaweedfs-entrypoint", "bucket-state", versioning)
        return (f"{pinned}v=$(mktemp) || exit 0; {probe} >\"$v\" 2>/dev/null & {config}; wait; "
                f"sed 's/^/#versioning /' \"$v\"; rm -f \"$v\"; true")

    def process(self, output) -> dict:
        lines = list(output)
        found = {"current": False, "pinned": any(line.strip() == "#pinned" for line in lines), "versioning": None}
        versioning = [line.removeprefix("#versioning ") for line in lines if line.startswith("#versioning ")]
        found["versioning"] = S3BucketVersioning().process(versioning)
        for line in reversed(lines):
            if line.startswith("#"):
                continue
            try:
                found["current"] = bool(json.loads(line).get("current"))
                break
            except (ValueError, AttributeError):
                continue
        return found

    def default(self) -> dict:
        return {"current": False, "pinned": False, "versioning": None}
