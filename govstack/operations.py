"""pyinfra operations for what pyinfra has no operation for, in its own style:
read a fact, compare it with the wish, yield commands only for the difference.
"""

from __future__ import annotations

import hashlib
from io import StringIO
from typing import NamedTuple

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, StringCommand, operation
from pyinfra.facts.files import Directory, FileContents

from govstack.commands import (
    SCHEMA_STAMP_ENV,
    app_role_owned_objects_sql,
    app_role_ownership_moved_sql,
    bucket_configured,
    bucket_versioned,
    compose,
    compose_containers,
    compose_exec,
    compose_run,
    login_role_sql,
    pitr_stanza_checked,
    printf_lines,
    q,
    schema_stamp_cleared_sql,
    service_exec,
)
from govstack.commands import psql as psql_argv
from govstack.facts import (
    AppSchemaPending,
    CertificateState,
    ComposeProject,
    DockerEngine,
    FilesDigest,
    ImageIds,
    ImageLabel,
    InstalledStamp,
    PathState,
    PathStates,
    PgbackrestStanza,
    PostgresLogins,
    PostgresOwnership,
    RunningContainers,
    S3BucketConfig,
    S3BucketVersioning,
    SecretFile,
    SystemdIsInit,
)
from govstack.images import CONTEXT_HASH_LABEL
from govstack.sbom import SbomStage
from govstack.sbom import build_commands as sbom_build_commands
from govstack.secrets import generate_secret_command

# Where the edge container sees its rendered config (a directory mount).
NGINX_CONF = "/etc/nginx/govstack/nginx.conf"


@operation()
def docker_engine_running(restart: bool = False, log_file: str = "/var/log/dockerd.log"):
    """
    Make sure the Docker engine answers, starting (or restarting) it.

    + restart: restart a running engine, to load a new daemon.json
      (``live-restore`` keeps the containers running meanwhile)
    + log_file: where ``dockerd`` logs when started without an init system

    Where systemd is PID 1 the unit is used; elsewhere (containers, chroots,
    minimal VMs) ``dockerd`` is started directly and detached with setsid.
    """
    running = host.get_fact(DockerEngine)
    if running and not restart:
        host.noop("docker engine is running")
        return

    wait = (
        "i=0; until docker info >/dev/null 2>&1; do i=$((i+1)); "
        'if [ $i -gt 60 ]; then echo "govstack: docker engine did not start; see '
        f'{log_file}" >&2; tail -n 5 {log_file} >&2; exit 1; fi; sleep 1; done'
    )
    if host.get_fact(SystemdIsInit):
        yield "systemctl enable docker.service >/dev/null 2>&1 || true"
        yield "systemctl restart docker.service" if running else "systemctl start docker.service"
        yield wait
        return

    if running:
        # SIGTERM lets dockerd save state; live-restore keeps containers running.
        yield (
            "pid=$(cat /var/run/docker.pid 2>/dev/null) && kill $pid && "
            "i=0; while kill -0 $pid 2>/dev/null; do i=$((i+1)); [ $i -gt 60 ] && exit 1; sleep 1; done"
        )
    yield f"setsid dockerd >>{log_file} 2>&1 </dev/null &"
    yield wait


@operation()
def image_built(
    tag: str,
    context_dir: str,
    context_hash: str,
    dockerfile: str = "Dockerfile",
    build_args: dict[str, str] | None = None,
    timeout_s: int = 1800,
    only_if_missing: bool = False,
    sbom: SbomStage | None = None,
    sbom_components: tuple[str, ...] = (),
):
    """
    Build an image on the host when its build inputs changed.

    + tag: image reference to build
    + context_dir: build context on the host
    + context_hash: digest of everything that goes into the image (Dockerfile,
      files, build args, parent image hash); stored as a label and compared
    + dockerfile: Dockerfile path inside the context
    + build_args: ``--build-arg`` values
    + only_if_missing: the tag names an immutable version (app releases):
      an existing image is that version, whatever built it
    + sbom: put a CycloneDX SBOM into the image and label it (govstack/sbom.py);
      ``sbom_components`` are purls the package databases do not know

    A tag that exists with the same context hash is left alone, so a re-run is
    a no-op and a changed Dockerfile or input is always rebuilt.
    """
    current = host.get_fact(ImageLabel, image=tag, label=CONTEXT_HASH_LABEL)
    if current == context_hash or (only_if_missing and current is not None):
        host.noop(f"image {tag} is present")
        return
    if sbom is not None:
        yield from sbom_build_commands(
            tag=tag, context_dir=context_dir, dockerfile=dockerfile, build_args=build_args or {},
            context_hash=context_hash, stage=sbom, components=sbom_components, timeout_s=timeout_s,
        )
        return
    args = " ".join(
        f"--build-arg {q(f'{key}={value}')}" for key, value in sorted((build_args or {}).items())
    )
    log = f"{context_dir}.build.log"
    yield (
        f"timeout {timeout_s} docker build -q --label {CONTEXT_HASH_LABEL}={context_hash} "
        f"-t {q(tag)} -f {q(context_dir + '/' + dockerfile)} {args} "
        f"{q(context_dir)} >{q(log)} 2>&1 "
        f'|| {{ echo "govstack: image build of {tag} failed; last lines of {log}:" >&2; '
        f"tail -n 15 {q(log)} >&2; exit 1; }}"
    )


@operation()
def secret_file(path: str, owner_uid: int, length: int = 40, value: str | None = None):
    """
    A secret file that exists, is mode 0600 and belongs to its reader.

    + path: the file on the host
    + owner_uid: the one uid that reads it (inside its container)
    + length: characters of a generated secret
    + value: operator-supplied value (inventory or environment); replaces the
      file's content only when it differs. None: generate once, keep forever.

    The value never appears in a command, a diff or pyinfra's output.
    """
    yield from _secret_commands(path, host.get_fact(SecretFile, path=path), owner_uid, length, value)


@operation()
def secret_files(secrets: list[tuple[str, int, int, str | None]]):
    """
    Secret files, each as ``secret_file`` makes one, read in one command (facts.PathStates).

    + secrets: ``(path, owner_uid, length, value)`` of each (see secret_file)

    Only digests leave the host; the values never appear in a command, a diff or pyinfra's output.
    """
    paths = tuple(path for path, *_ in secrets)
    states = host.get_fact(PathStates, paths=paths, digests=paths)
    for path, owner_uid, length, value in secrets:
        state = states.get(path)
        if state is not None and not state["type"].startswith("regular"):
            state = None
        yield from _secret_commands(path, state, owner_uid, length, value)


def _secret_commands(path: str, state: dict | None, owner_uid: int, length: int, value: str | None):
    if value is not None:
        wanted = hashlib.sha256(value.encode()).hexdigest()
        if state is None or state["sha256"] != wanted:
            # FileUploadCommand directly, not files.put: put prints a diff of
            # the content under --diff. The 0700 directory hides the moment
            # before chmod.
            yield FileUploadCommand(StringIO(value), path, remote_temp_filename=host.get_temp_filename(path))
            yield f"chmod 600 {q(path)}"
            # The upload replaces the file (a new inode, owned by the
            # connecting user): the owner is set below, always.
            state = {"mode": "600", "uid": -1, "sha256": wanted}
    elif state is None:
        yield generate_secret_command(path, length)
        state = {"mode": "600", "uid": 0}
    if state["mode"] != "600":
        yield f"chmod 600 {q(path)}"
    if state["uid"] != owner_uid:
        yield f"chown {owner_uid}:{owner_uid} {q(path)}"


@operation()
def compose_project_up(
    project: str,
    compose_file: str,
    service_images: dict[str, str],
    wait_timeout_s: int = 300,
    wait: bool = True,
    hash_cache: str = "",
):
    """
    A Compose project whose every service runs the rendered definition and is healthy.

    + project: Compose project name
    + compose_file: the rendered compose file on the host
    + service_images: service -> image reference, to notice rebuilt images
    + wait_timeout_s: how long ``up --wait`` may take for health checks
    + wait: wait until every service is healthy; False only starts them (a
      release waits in its own step, compose_project_healthy)
    + hash_cache: a file of the deploy's own that keeps ``compose config --hash`` while
      nothing it is computed from changed (commands.compose_hashes); empty: ask Compose

    ``docker compose up`` is run only when the running state differs from the
    rendered one: a missing, stopped or unhealthy container, a config-hash
    label that differs from ``compose config --hash``, a container made from
    an older image, or a container of a service that no longer exists. So a
    no-op deploy reports no change, and a broken stack is repaired.
    """
    state = host.get_fact(ComposeProject, project=project, compose_file=compose_file, hash_cache=hash_cache)
    desired = state["desired"]
    if desired is None:
        raise OperationError(f"compose file {compose_file} is missing or invalid")

    reasons = []
    containers = {c["service"]: c for c in state["containers"]}
    image_ids = host.get_fact(ImageIds, images=tuple(sorted(set(service_images.values()))))
    for service, config_hash in sorted(desired.items()):
        container = containers.get(service)
        if container is None:
            reasons.append(f"{service}: no container")
        elif container["state"] != "running":
            reasons.append(f"{service}: {container['state']}")
        elif container["health"] not in (None, "healthy"):
            reasons.append(f"{service}: {container['health']}")
        elif container["config_hash"] != config_hash:
            reasons.append(f"{service}: definition changed")
        elif service in service_images and container["image_id"] != image_ids.get(service_images[service]):
            reasons.append(f"{service}: image rebuilt")
    orphans = sorted(set(containers) - set(desired))
    reasons.extend(f"{service}: orphaned" for service in orphans)
    if len(state["containers"]) > len(containers):
        reasons.append("duplicate containers")

    if not reasons:
        host.noop(f"compose project {project} is up to date and healthy")
        return

    log = f"/tmp/govstack-compose-{project}.log"
    status_fmt = "{{.Service}}: {{.Status}}"
    if not wait:
        start = compose(project, "up", "-d", "--remove-orphans", files=compose_file)
        yield StringCommand(
            f"echo 'govstack: compose {project}: {'; '.join(reasons)}' >&2; "
            f"{start} >{log} 2>&1 || {{ "
            f"echo \"govstack: compose project {project} did not start: $(grep -iE 'error' {log} | tail -n 1)\" >&2; "
            "exit 1; }"
        )
        return
    # Compose's --wait gives up at once on a container that is already unhealthy, one whose service
    # came back a moment ago (an app host after its data host was rebuilt): then `up -d` alone, and
    # the wait below gives it until the timeout to answer its own healthcheck again.
    already_unhealthy = any(container["health"] == "unhealthy" for container in containers.values())
    wait_flags = () if already_unhealthy else ("--wait", "--wait-timeout", wait_timeout_s)
    up = compose(project, "up", "-d", "--remove-orphans", *wait_flags, files=compose_file)
    # On failure: one "govstack:" line with the most specific cause Compose
    # gave (unhealthy service, port in use, missing image…), then the states.
    yield StringCommand(
        f"echo 'govstack: compose {project}: {'; '.join(reasons)}' >&2; "
        f"{up} >{log} 2>&1 || {{ "
        f"cause=$(grep -iE 'error|unhealthy|exited' {log} | tail -n 1); "
        f"echo \"govstack: compose project {project} did not become healthy: ${{cause:-see {log}}}\" >&2; "
        f"{compose(project, 'ps', '-a', '--format', status_fmt, files=compose_file)} | grep -v '(healthy)' >&2; "
        "exit 1; }; "
        + _all_healthy_or_fail(project, wait_timeout_s)
    )


@operation(is_idempotent=False)
def compose_project_healthy(project: str, timeout_s: int = 300):
    """
    Wait until every container of a started Compose project runs and is
    healthy; fail naming those that are not.

    + project: Compose project name
    + timeout_s: how long the services may take
    """
    yield _all_healthy_or_fail(project, timeout_s)


def _all_healthy_or_fail(project: str, timeout_s: int) -> str:
    """
    Shell that waits until every container of ``project`` runs and is healthy
    (or has no healthcheck), else fails naming the ones that are not.

    Checked by us after ``up --wait`` returned 0, because Compose once let a
    release whose API never answered its healthcheck through (CI run of
    2026-11-29: ``up --wait`` returned 0 with the API still "starting").
    The serving color is switched only on this check.

    A container still "starting", or "unhealthy", runs its own healthcheck
    test once per round (``docker exec``, as the engine would): the engine's
    first check comes one ``interval`` after the start (Docker before 25 has
    no ``start_interval``), so a release would otherwise wait up to 10 s for
    an app that answered after 2; and an app whose database came back is
    counted once it answers, not a retry interval later. One passing test is
    what makes the engine call it healthy too.
    """
    fmt = "{{.Id}} {{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}healthy{{end}}"
    # The test as shell words: each element single-quoted, its quotes escaped.
    test_words = "{{range .Config.Healthcheck.Test}}'{{join (split . \"'\") \"'\\\\''\"}}' {{end}}"
    listing = compose_containers(project, running_only=False)
    return (
        f"fmt={q(fmt)}; test_words={q(test_words)}; "
        "own_check() { c=$1; words=$(docker inspect --format \"$test_words\" \"$c\") || return 1; "
        "eval \"set -- $words\"; "
        "kind=$1; shift; case $kind in "
        "CMD) timeout 10 docker exec \"$c\" \"$@\" ;; "
        "CMD-SHELL) timeout 10 docker exec \"$c\" /bin/sh -c \"$1\" ;; "
        "*) return 1 ;; esac >/dev/null 2>&1; }; "
        f"deadline=$(( $(date +%s) + {int(timeout_s)} )); "
        f"while :; do ids=$({listing}); bad=; "
        "if [ -n \"$ids\" ]; then bad=$(docker inspect --format \"$fmt\" $ids | while read -r c name state health; do "
        "[ \"$state $health\" = 'running healthy' ] && continue; "
        "case \"$state $health\" in 'running starting'|'running unhealthy') own_check \"$c\" && continue ;; esac; "
        "printf '%s %s %s;' \"${name#/}\" \"$state\" \"$health\"; done); fi; "
        "[ -n \"$ids\" ] && [ -z \"$bad\" ] && break; "
        f"[ $(date +%s) -ge $deadline ] && {{ echo \"govstack: compose project {project} did not become healthy: "
        f"${{bad:-no containers}}\" >&2; exit 1; }}; "
        "sleep 1; done"
    )


@operation()
def files_mirrored(source_pattern: str, dest_dir: str):
    """
    ``dest_dir`` holds exactly the files that ``source_pattern`` matches on the host.

    + source_pattern: shell glob on the host, e.g. ``/usr/local/share/ca-certificates/*.crt``
    + dest_dir: directory that mirrors them (created, possibly empty)

    Used to put the host's extra CA certificates into build contexts.
    """
    wanted = host.get_fact(FilesDigest, pattern=source_pattern)
    current = host.get_fact(FilesDigest, pattern=f"{q(dest_dir)}/*")
    if wanted == current and host.get_fact(Directory, path=dest_dir):
        host.noop(f"{dest_dir} is up to date")
        return
    yield f"rm -rf {q(dest_dir)} && mkdir -p {q(dest_dir)}"
    yield f"for f in {source_pattern}; do [ -f \"$f\" ] && cp \"$f\" {q(dest_dir)}/; done; true"


@operation()
def base_image_built(tag: str, context_hash: str, script: str, suite: str, mirror: str, timeout_s: int = 900):
    """
    The offline lane's root image, made by debootstrap on the host (no registry).

    + tag: image reference, e.g. ``govstack/base:bookworm``
    + context_hash: digest of the build script and its arguments (stored as a label)
    + script: the rootfs build script on the host
    + suite, mirror: Debian suite and apt mirror for debootstrap
    """
    if host.get_fact(ImageLabel, image=tag, label=CONTEXT_HASH_LABEL) == context_hash:
        host.noop(f"image {tag} is up to date")
        return
    log = f"{script}.log"
    yield (
        f"timeout {timeout_s} sh {q(script)} {q(suite)} {q(mirror)} "
        f"{q(tag)} {context_hash} >{log} 2>&1 "
        f'|| {{ echo "govstack: building the base image {tag} failed; last lines of {log}:" >&2; '
        f"tail -n 15 {log} >&2; exit 1; }}"
    )


@operation()
def path_owned(path: str, uid: int, gid: int, mode: str, directory: bool = True):
    """
    A directory (created when missing) or an existing file with numeric owner and mode.

    + path: the path on the host
    + uid, gid: numeric owner, as the container that uses it sees it
    + mode: octal mode, e.g. ``"700"``
    + directory: create a directory when missing; for files, only fix owner/mode

    Never removes or empties anything: data directories survive every deploy.
    """
    yield from _owned_commands(path, host.get_fact(PathState, path=path), uid, gid, mode, directory)


@operation()
def paths_owned(paths: list[tuple[str, int, int, str]]):
    """
    Directories, each as ``path_owned`` makes one, read in one command (facts.PathStates).

    + paths: ``(path, uid, gid, mode)`` of each, parents before their children

    Never removes or empties anything: data directories survive every deploy.
    """
    states = host.get_fact(PathStates, paths=tuple(path for path, *_ in paths))
    for path, uid, gid, mode in paths:
        yield from _owned_commands(path, states.get(path), uid, gid, mode, True)


def _owned_commands(path: str, state: dict | None, uid: int, gid: int, mode: str, directory: bool):
    quoted = q(path)
    if state is None:
        if not directory:
            raise OperationError(f"{path} does not exist")
        yield f"mkdir -p {quoted}"
        state = {"uid": -1, "gid": -1, "mode": ""}
    if (state["uid"], state["gid"]) != (uid, gid):
        yield f"chown {uid}:{gid} {quoted}"
    if state["mode"] != mode.lstrip("0"):
        yield f"chmod {mode} {quoted}"


@operation()
def files_rendered(files: dict[str, str], mode: str = "644"):
    """
    Files on the host with exactly the given contents and mode, read in one command
    (facts.PathStates: a sha256 of each), uploaded only where they differ.

    + files: path on the host -> its content
    + mode: octal mode of every one of them

    What pyinfra's ``files.put`` does for one file (a stat, its parent, a checksum: three
    commands each), for all of them at once; ``--diff`` shows each change as put does.
    """
    paths = tuple(files)
    states = host.get_fact(PathStates, paths=paths, digests=paths)
    for path, content in files.items():
        state = states.get(path)
        if state is not None and not state["type"].startswith("regular"):
            raise OperationError(f"{path} exists and is not a file ({state['type']})")
        data = content.encode()
        if state is None or state["sha256"] != hashlib.sha256(data).hexdigest():
            if host.state.config.DIFF:
                _log_diff(path, content, state is not None)
            yield f"mkdir -p {q(path.rsplit('/', 1)[0] or '/')}"
            yield FileUploadCommand(StringIO(content), path, remote_temp_filename=host.get_temp_filename(path))
            yield f"chmod {mode} {q(path)}"
        elif state["mode"] != mode.lstrip("0"):
            yield f"chmod {mode} {q(path)}"


def _log_diff(path: str, content: str, exists: bool) -> None:
    from pyinfra import logger
    from pyinfra.operations.util.files import generate_color_diff

    current = [line + "\n" for line in host.get_fact(FileContents, path=path) or []] if exists else []
    host.log(f"Will {'modify' if exists else 'create'} {path}", logger.info)
    for line in generate_color_diff(current, content.splitlines(keepends=True)):
        logger.info("  %s", line)
    logger.info("")


@operation()
def file_installed_once(src: str, dest: str, stamp: str, mode: str = "755"):
    """
    A large file from the controller (a binary) on the host, told apart by a stamp file
    beside it rather than by a checksum of both copies on every run.

    + src: the file on the controller
    + dest: where it goes on the host
    + stamp: what identifies this copy (its version and sha256, toolcache.stamp_of), written
      to ``dest`` + ``.govstack-stamp`` once the upload is done

    Uploaded when the host has no copy, another stamp, another size or another mode. A
    same-size copy changed by hand under an unchanged stamp is not noticed.
    """
    import os

    stamp_path = f"{dest}.govstack-stamp"
    state = host.get_fact(InstalledStamp, path=dest, stamp=stamp_path)
    size = os.path.getsize(src)
    if state is not None and state["stamp"] == stamp and state["size"] == size:
        if state["mode"] != mode.lstrip("0"):
            yield f"chmod {mode} {q(dest)}"
        return
    # Beside it, then renamed over it: a binary that runs (a Compose command elsewhere on the
    # host) cannot be written in place ("Text file busy"), but can be replaced.
    fresh = f"{dest}.govstack-new"
    yield f"mkdir -p {q(dest.rsplit('/', 1)[0] or '/')}"
    yield FileUploadCommand(src, fresh, remote_temp_filename=host.get_temp_filename(fresh))
    yield f"chmod {mode} {q(fresh)} && mv -f {q(fresh)} {q(dest)}"
    yield f"printf '%s\\n' {q(stamp)} > {q(stamp_path)}"


@operation()
def self_signed_certificate(cert_path: str, key_path: str, hostname: str, key_owner_uid: int):
    """
    A self-signed edge certificate for ``hostname`` (ECDSA P-256), renewed when
    its names differ or it expires within 30 days.

    + cert_path, key_path: PEM files on the host; the key is mode 0600
    + hostname: the name clients use; ``localhost`` also gets IP 127.0.0.1
    + key_owner_uid: the uid nginx runs as
    """
    wanted = sans_for(hostname)
    state = host.get_fact(CertificateState, path=cert_path)
    if state and state["valid"] and state["sans"] == sorted(wanted):
        host.noop(f"certificate for {hostname} is valid")
        return
    # openssl prints "IP Address:" but takes "IP:".
    san = ",".join(name.replace("IP Address:", "IP:") for name in wanted)
    yield (
        f"umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
        f"-days 397 -subj /CN={q(hostname)} -addext {q('subjectAltName=' + san)} "
        f"-keyout {q(key_path)} -out {q(cert_path)} 2>/dev/null"
    )
    yield f"chmod 644 {q(cert_path)} && chown {key_owner_uid}:{key_owner_uid} {q(key_path)}"


def sans_for(hostname: str) -> list[str]:
    import ipaddress

    try:
        ipaddress.ip_address(hostname)
        names = [f"IP Address:{hostname}"]
    except ValueError:
        names = [f"DNS:{hostname}"]
    if hostname == "localhost":
        names.append("IP Address:127.0.0.1")
    return names


@operation()
def file_installed(src: str, dest: str, uid: int, mode: str):
    """
    ``dest`` is a copy of the host file ``src`` with numeric owner and mode.

    + src, dest: paths on the host
    + uid: owner (and group) of the copy
    + mode: octal mode of the copy
    """
    if host.get_fact(PathState, path=src) is None:
        raise OperationError(f"{src} does not exist on the host")
    same = host.get_fact(FilesDigest, pattern=q(src), names=False) == host.get_fact(
        FilesDigest, pattern=q(dest), names=False
    )
    state = host.get_fact(PathState, path=dest)
    if same and state and (state["uid"], state["gid"], state["mode"]) == (uid, uid, mode.lstrip("0")):
        host.noop(f"{dest} is up to date")
        return
    yield f"install -o {uid} -g {uid} -m {mode} {q(src)} {q(dest)}"


@operation()
def grpc_mtls_material(directory: str, prefix: str, owner_uid: int):
    """
    A throw-away CA certificate plus one certificate and key it signed, for
    services whose internal gRPC must use mutual TLS (SeaweedFS in the upstream
    lane, whose image has no openssl to make them at start). The CA key is
    deleted at once, so no further certificate can be issued.

    + directory: where ``<prefix>_ca.crt``, ``<prefix>.crt`` and ``<prefix>.key`` live
    + prefix: file name prefix, e.g. ``seaweedfs_grpc``
    + owner_uid: the uid the service runs as
    """
    names = [f"{directory}/{prefix}_ca.crt", f"{directory}/{prefix}.crt", f"{directory}/{prefix}.key"]
    if all(host.get_fact(PathState, path=name) for name in names):
        host.noop(f"{prefix} mTLS material exists")
        return
    ca, crt, key = (q(name) for name in names)
    ca_key = q(f"{directory}/{prefix}_ca.key")
    curve = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500"
    yield (
        f"umask 077 && openssl req -x509 {curve} -subj /CN={prefix}-ca -keyout {ca_key} -out {ca} 2>/dev/null && "
        f"openssl req -x509 {curve} -subj /CN={prefix} -CA {ca} -CAkey {ca_key} -keyout {key} -out {crt} "
        f"2>/dev/null; rc=$?; rm -f {ca_key}; [ $rc -eq 0 ] && chown {owner_uid}:{owner_uid} {ca} {crt} {key}"
    )


@operation()
def nginx_config_applied(
    project: str, compose_file: str, candidate: str, live: str, service: str = "nginx", test_in_running: bool = False
):
    """
    Make the candidate nginx config the live one, only if nginx accepts it.

    + project, compose_file: the Compose project nginx runs in
    + candidate: the freshly rendered config on the host (kept, so re-runs compare)
    + live: the config nginx runs with (inside the container: ``NGINX_CONF``)
    + test_in_running: test in the running nginx (a release switch reloads
      that very process), not in the service's image

    ``nginx -t`` on the candidate in a one-off container of the Compose
    service, i.e. in the image that will run it (a deploy that rebuilds the
    image with new modules tests the new config against the new image, not
    the running one), or in the running nginx; then, while nginx runs, copy and reload gracefully
    (old workers finish their requests). A rejected candidate fails the
    deploy and leaves the live config, and traffic, as they were. A running
    nginx of an older image that cannot load the new config keeps serving
    the old one until Compose recreates it.
    """
    if host.get_fact(FilesDigest, pattern=q(candidate), names=False) == host.get_fact(
        FilesDigest, pattern=q(live), names=False
    ):
        host.noop("nginx runs the rendered config")
        return
    inside = NGINX_CONF.rsplit("/", 1)[0] + "/" + candidate.rsplit("/", 1)[1]
    log = f"/tmp/govstack-nginx-test-{project}.log"
    running = compose(project, "ps", "-q", "--status", "running", service, files=compose_file)
    test = (compose_exec(project, compose_file, service, "nginx", "-t", "-q", "-c", inside) if test_in_running
            else compose_run(project, compose_file, service, "-t", "-q", "-c", inside, entrypoint="nginx"))
    yield (
        f"{test} >{log} 2>&1 "
        f"|| {{ echo \"govstack: nginx rejected the new config, still serving the previous one: "
        f"$(grep -m1 emerg {log} || tail -n 1 {log})\" >&2; exit 1; }}; "
        f"cp {q(candidate)} {q(live)} && "
        # SIGHUP to the master, not `nginx -s reload`, which parses the new
        # config first and so fails in a container of an older image.
        f"if [ -n \"$({running} 2>/dev/null)\" ]; then "
        f"{compose(project, 'kill', '-s', 'HUP', service, files=compose_file)}; fi"
    )


@operation()
def nginx_certificate_loaded(
    project: str, compose_file: str, tls_files: str, stamp: str, renewed: bool = False, service: str = "nginx"
):
    """
    nginx serves the certificate and key on disk: a reload when they differ from
    the pair it was last loaded with.

    + project, compose_file: the Compose project nginx runs in
    + tls_files: shell glob of the certificate and key on the host
    + stamp: file holding the sha256 of the pair nginx loaded
    + renewed: an earlier operation of this deploy replaces the pair (the facts
      were read before it runs)

    nginx reads certificates only at start and on reload, so a renewed or
    swapped file alone changes nothing that clients see. ``nginx -t`` in the
    running nginx first: a key that does not match its certificate fails the
    deploy and nginx keeps serving the previous pair. A stopped nginx loads
    the files when Compose starts it; the stamp is written all the same.
    """
    if not renewed and [host.get_fact(FilesDigest, pattern=tls_files)] == host.get_fact(FileContents, path=stamp):
        host.noop("nginx serves the certificate on disk")
        return
    running = compose(project, "ps", "-q", "--status", "running", service, files=compose_file)
    test = compose_exec(project, compose_file, service, "nginx", "-t", "-q", "-c", NGINX_CONF)
    digest = FilesDigest().command(tls_files)
    yield (
        f"mkdir -p {q(stamp.rsplit('/', 1)[0])} && "
        f"if [ -n \"$({running} 2>/dev/null)\" ]; then "
        f"{test} >/dev/null 2>&1 || {{ echo \"govstack: nginx rejects the certificate or key on disk "
        f"({tls_files}), still serving the previous pair: $({test} 2>&1 | grep -m1 emerg)\" >&2; exit 1; }}; "
        f"{compose(project, 'kill', '-s', 'HUP', service, files=compose_file)} >/dev/null; fi && "
        f"{digest} > {q(stamp)}"
    )


class LoginRole(NamedTuple):
    """A login role of the app's database (postgres_login_roles)."""

    role: str
    password_file: str
    attributes: tuple[str, ...] = ()
    member_of: tuple[str, ...] = ()
    connect: bool = False
    owns_database: bool = False


@operation()
def postgres_login_roles(project: str, compose_file: str, database: str, roles: list[LoginRole]):
    """
    Login roles of ``database``, checked in one
    command (facts.PostgresLogins): every role logs in with its password file's and holds its
    memberships, or is created or updated, in the order given.

    + project, compose_file: the Compose project Postgres runs in
    + database: the database they log in to (and connect to, or own)
    + roles: ``LoginRole`` of each: role name; its secret on the host; ALTER ROLE attributes
      besides LOGIN, e.g. ``("NOSUPERUSER", "BYPASSRLS")``; roles it is granted, e.g.
      ``("pg_monitor",)``; GRANT CONNECT on ``database``; or create ``database`` owned by it
      (PUBLIC loses its rights)

    When a role does not log in, it is created or updated (commands.login_role_sql). The
    passwords go to psql on stdin, never on a command line.
    """
    logins = host.get_fact(PostgresLogins, project=project, database=database,
                           roles=tuple((r.role, r.password_file, tuple(r.member_of)) for r in roles))
    changed = False
    for r in roles:
        if logins.get(r.role):
            continue
        sql = login_role_sql(r.role, r.password_file, attributes=r.attributes, member_of=r.member_of,
                             connect=database if r.connect else None,
                             owns_database=database if r.owns_database else None)
        yield f"{{ {sql}; }} | {compose_exec(project, compose_file, 'postgres', *psql_argv('postgres'))}"
        changed = True
    if changed:
        # A role made or changed here may lack what the app's migrate grants it.
        yield schema_stamp_cleared(project, compose_file, database)
    else:
        host.noop(f"roles {', '.join(r.role for r in roles)} log in to {database}")


def schema_stamp_cleared(project: str, compose_file: str, database: str) -> str:
    """Shell that forgets the schema stamp in ``database``, so the next app_schema_current asks
    ``migrate --check`` (a deploy step that changed a role whose privileges migrate grants)."""
    return (f"{printf_lines(schema_stamp_cleared_sql())} | "
            f"{compose_exec(project, compose_file, 'postgres', *psql_argv(database))} >/dev/null")


@operation()
def s3_bucket_versioned(project: str, compose_file: str, bucket: str):
    """
    The bucket exists in the stack's SeaweedFS with versioning enabled.

    + project, compose_file: the Compose project SeaweedFS runs in
    + bucket: the bucket's name

    Made with ``weed shell`` inside the gateway's container (its entrypoint's ``bucket``), not
    through S3: creating a bucket takes the Admin action, which no client of the stack holds.
    An overwritten or deleted object then keeps its earlier versions (the lifecycle rules
    say for how long).
    """
    if host.get_fact(S3BucketVersioning, project=project, compose_file=compose_file, bucket=bucket) == "Enabled":
        host.noop(f"bucket {bucket} exists, versioning enabled")
        return
    yield bucket_versioned(project, compose_file, bucket)


@operation()
def s3_bucket_configured(project: str, compose_file: str, bucket: str, noncurrent_days: int, abort_days: int,
                         access_file: str, secret_file: str, encrypt: bool, marker: str):
    """
    The bucket exists in the stack's SeaweedFS with versioning enabled (as s3_bucket_versioned
    makes it), its lifecycle rules (noncurrent versions expire after ``noncurrent_days``,
    incomplete multipart uploads are aborted after ``abort_days``) and, with ``encrypt``, its
    default encryption SSE-S3: every object written from then on is encrypted by the gateway.

    + project, compose_file: the Compose project the backup service and SeaweedFS run in
    + bucket: the bucket's name
    + noncurrent_days, abort_days: the rules' days (object_store settings)
    + access_file, secret_file: the admin identity's key pair on the host
    + encrypt: default encryption SSE-S3 (the gateway has the key s3_sse_key)
    + marker: written once encryption is on (secret_store.sse_marker): the key is pinned

    Rules and encryption are set through S3 by the backup service's ``govstack-backup
    bucket-lifecycle`` (its image has the S3 client), with the admin pair on its stdin for that
    one call: no container mounts it. Both states are read in one command (facts.S3BucketConfig).
    """
    argv, apply = bucket_configured(project, compose_file, bucket, noncurrent_days, abort_days,
                                    access_file, secret_file, encrypt)
    pin = f"touch {q(marker)} && chmod 600 {q(marker)}" if encrypt else "true"
    state = host.get_fact(S3BucketConfig, project=project, compose_file=compose_file, argv=argv,
                          access_file=access_file, secret_file=secret_file, marker=marker if encrypt else "",
                          versioning=bucket)
    versioned = state["versioning"] == "Enabled"
    if not versioned:
        yield bucket_versioned(project, compose_file, bucket)
    if versioned and state["current"]:
        if encrypt and not state["pinned"]:
            yield pin  # a stack whose encryption was set before the marker existed
        else:
            host.noop(f"bucket {bucket}: versioned, lifecycle rules and encryption current")
        return
    # A bucket just made (or whose versioning was off) is configured whatever the check said.
    yield f"{apply}; {pin}"


@operation()
def postgres_ownership_moved(project: str, compose_file: str, database: str, owner: str, app_role: str):
    """
    ``app_role`` owns nothing in ``database``, which ``owner`` owns.

    + project, compose_file: the Compose project Postgres runs in
    + database: the app's database
    + owner: the role that owns the database and schema (migrations run as it)
    + app_role: the role the app connects as

    Stacks from before the owner role existed let the app's role own
    everything; this hands it all to the owner in one transaction (REASSIGN
    OWNED), keeping the app's DML meanwhile. A second run changes nothing.
    """
    state = host.get_fact(PostgresOwnership, project=project, compose_file=compose_file, database=database,
                          query=app_role_owned_objects_sql(app_role))
    if state == (0, owner):
        host.noop(f"{owner} owns {database}; {app_role} owns nothing")
        return
    sql = app_role_ownership_moved_sql(database, owner, app_role)
    yield f"{{ {sql}; }} | {compose_exec(project, compose_file, 'postgres', *psql_argv(database))}"
    yield schema_stamp_cleared(project, compose_file, database)


@operation()
def app_schema_current(project: str, compose_file: str, stamp: str, data_project: str, database: str,
                       timeout_s: int = 300):
    """
    The app's schema, audit retention floor and role privileges are what this
    version's migrations make: the stamp the last migrate run recorded is this
    run's, or else ``migrate --check`` finds nothing to do.

    + project, compose_file: the serving color's Compose project (its migrate service)
    + stamp: shell printing the stamp of a migrate run now (commands.schema_stamp)
    + data_project, database: where Postgres runs, and the app's database in it

    A migrate run records the stamp it was made from; privileges changed by hand
    since are found by the next migrate run, not here (facts.AppSchemaPending).
    """
    pending = host.get_fact(AppSchemaPending, project=project, compose_file=compose_file, stamp=stamp,
                            data_project=data_project, database=database)
    if pending == []:
        host.noop(f"{project}: schema current")
        return
    yield migrate_command(project, compose_file, timeout_s, stamp)


def migrate_command(project: str, compose_file: str, timeout_s: int, stamp: str) -> str:
    """Shell that runs the app's migrations in the color's one-off migrate service, as the
    schema's owner (the only container that mounts its password); the run records ``stamp``
    (shell, commands.schema_stamp), worked out just before it starts."""
    log = f"/tmp/govstack-migrate-{project}.log"
    run = compose_run(project, compose_file, "migrate", pass_env=(SCHEMA_STAMP_ENV,))
    return (
        f"{SCHEMA_STAMP_ENV}=$({stamp}) timeout {timeout_s} {run} >{log} 2>&1 "
        f"|| {{ echo \"govstack: migrations of the new version failed: "
        f"$(grep -v '^[[:space:]]*$' {log} | tail -n 1)\" >&2; exit 1; }}"
    )


@operation()
def pgbackrest_stanza_ready(project: str, compose_file: str, service: str = "pgbackrest", key: str = "",
                            stamp: str = ""):
    """
    pgBackRest's stanza exists and describes the running cluster, WAL archiving
    works, and the cluster has a base backup to recover from.

    + project, compose_file: the Compose project Postgres and the sidecar run in
    + service: the pgbackrest sidecar
    + key, stamp: shell printing what the sidecar's answer rests on (commands.pitr_stanza_key)
      and the file that holds the key of the last ok answer; empty: ask the sidecar every time

    Read with ``govstack-backup pitr state`` in the sidecar, unless the key equals the stamp
    (facts.PgbackrestStanza); when it is not ok, ``pitr ensure`` creates the stanza (or upgrades
    it after a restore into a new cluster), runs ``pgbackrest check`` and takes the first full
    backup, and the sidecar's answer after it is recorded.
    """
    state = host.get_fact(PgbackrestStanza, project=project, compose_file=compose_file, service=service,
                          key=key, stamp=stamp)
    if state and state.get("ok"):
        if state.get("checked") == "stamp":
            host.noop(f"stanza {project}: unchanged since the sidecar found it matching the cluster")
        else:
            host.noop(f"stanza {state.get('stanza')} matches the cluster, {state.get('backups')} base backups")
        return
    ensure = compose_exec(project, compose_file, service, "govstack-backup", "pitr", "ensure")
    if not key or not stamp:
        yield ensure
        return
    probe = service_exec(project, service, "govstack-backup", "pitr", "state")
    yield f"{ensure} && key=$({key}) && {pitr_stanza_checked(probe, stamp)} >/dev/null"


# Release steps (blue/green). Each runs once per release: not idempotent by
# design, and each prints a one-line "govstack:" cause when it fails.


@operation(is_idempotent=False)
def postgres_safety_copy(project: str, compose_file: str, label: str, record: str, timeout_s: int = 1800,
                         service: str = "backup"):
    """
    A safety copy of Postgres in the restic repository (encrypted), taken by
    the backup job's ``pre-deploy`` command before a release migrates: the
    job's own Postgres path (``pg_dump --snapshot`` and the roles, verified by
    reading back, with a manifest), so ``govstack restore --snapshot <run>
    --component postgres`` restores and verifies it like any backup run.

    + project, compose_file: the Compose project the backup service runs in
    + label: what is about to be deployed (the version), kept as a tag
    + record: file on the host that receives the job's JSON summary (its run
      id), for the ledger
    + timeout_s: longest the copy may take

    A stopped backup service (a drill stops it) is run as a one-off container.
    """
    log = f"/tmp/govstack-pre-deploy-{project}.log"
    out, target = q(f"{record}.new"), q(record)
    running = f"{compose(project, 'ps', '-q', '--status', 'running', service, files=compose_file)} 2>/dev/null"
    in_service = compose_exec(project, compose_file, service, "govstack-backup", "pre-deploy", "--label", label)
    one_off = compose_run(project, compose_file, service, "pre-deploy", "--label", label)
    yield (
        f"if [ -n \"$({running})\" ]; then job={q(in_service)}; else job={q(one_off)}; fi; "
        f"(umask 077; timeout {timeout_s} sh -c \"$job\" >{out} 2>{log}) && mv -f {out} {target} "
        f"|| {{ echo \"govstack: pre-deploy copy of Postgres into restic failed: $(tail -n 1 {log})\" >&2; exit 1; }}"
    )


@operation(is_idempotent=False)
def app_migrated(project: str, compose_file: str, stamp: str, timeout_s: int = 300):
    """
    Run the app's migrations with the new version's image before it serves,
    as the schema's owner (the color's one-off migrate service).

    + project, compose_file: the new color's Compose project
    + stamp: shell printing what the run is made from (commands.schema_stamp), which it records
    """
    yield migrate_command(project, compose_file, timeout_s, stamp)


@operation(is_idempotent=False)
def indexing_color_set(project: str, compose_file: str, database: str, color: str):
    """
    Hand indexing to ``color``'s workers (the others idle; see app_state).

    + project, compose_file: the Compose project Postgres runs in
    + color: blue or green
    """
    if color not in ("blue", "green"):
        raise OperationError(f"color must be blue or green, not {color!r}")
    sql = (
        "INSERT INTO app_state (key, value) VALUES ('indexing_color', '" + color + "') "  # noqa: S608 - checked above
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
    )
    yield f"{printf_lines(sql)} | {compose_exec(project, compose_file, 'postgres', *psql_argv(database))}"


def edge_drain_command(edge_project: str, edge_compose_file: str, drain_timeout_s: int) -> str:
    """Shell that waits (bounded) until nginx's old workers, which finish the
    requests they had when the reload came, have exited."""
    # "dow[n]": the probe's own `sh -c` carries its pattern in its cmdline;
    # a literal "shutting down" found itself, so every drain waited the full timeout.
    workers = compose_exec(edge_project, edge_compose_file, "nginx", "sh", "-c",
                           'grep -l "shutting dow[n]" /proc/[0-9]*/cmdline')
    return (
        f"i=0; while {workers} >/dev/null 2>&1; "
        f"do i=$((i+1)); [ $i -ge {drain_timeout_s * 2} ] && break; sleep 0.5; done"
    )


@operation()
def app_color_idle(project: str, compose_file: str, stop_timeout_s: int = 40):
    """
    The color that does not serve runs nothing; its containers are kept,
    stopped, with their image, for a rollback.

    + project, compose_file: the idle color's project
    + stop_timeout_s: SIGTERM grace for the API to finish in-flight requests

    Only a release starts the idle color, and it stops the old one at its
    end: one that runs was left by an interrupted release.
    """
    running = host.get_fact(RunningContainers, project=project)
    if not running:
        host.noop(f"{project} runs nothing")
        return
    yield (f"echo 'govstack: {project} does not serve but runs (an interrupted release?): stopping it' >&2; "
           f"docker stop -t {stop_timeout_s} {' '.join(running)} >/dev/null")


def color_stop_command(project: str, compose_file: str, stop_timeout_s: int) -> str:
    """Shell that stops every service of a color (API, worker, analytics), keeping the
    containers for a rollback."""
    return (
        f"{compose(project, 'stop', '-t', stop_timeout_s, files=compose_file)} >/dev/null 2>&1 "
        f"|| {{ echo 'govstack: could not stop the previous color {project}' >&2; exit 1; }}"
    )
