"""Every image built on the host gets exactly the build-args its Dockerfile
declares and uses, and its tag's version is the version it installs.

The bug this guards against: ``images.seaweedfs_version`` changed the tag
while the Dockerfile pinned 4.48 and never declared the build-arg, so a new
version built the old one under a new name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from govstack import catalog, images
from govstack.catalog import SERVICES, backup_image
from govstack.settings import SettingsError, build_settings

BASE = "govstack/base:bookworm"


@dataclass
class Stage:
    """The ARGs a scope declares (name -> has a default) and the instructions it runs."""

    args: dict[str, bool] = field(default_factory=dict)
    instructions: list[str] = field(default_factory=list)


def dockerfile_scopes(path: Path) -> tuple[Stage, list[Stage]]:
    """The global scope (ARGs before the first FROM, usable in FROM lines) and each stage."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # comment lines, also inside a continued instruction (Docker's rule)
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line.strip()
        if not line.rstrip().endswith("\\"):
            if current.strip():
                logical.append(current.strip())
            current = ""
    glob, stages = Stage(), []
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            glob.instructions.append(instruction)
            stages.append(Stage())
            continue
        scope = stages[-1] if stages else glob
        if keyword == "ARG":
            name, eq, _ = rest.strip().partition("=")
            scope.args[name] = bool(eq)
        else:
            scope.instructions.append(instruction)
    return glob, stages


def uses(instructions: list[str], name: str) -> bool:
    return any(re.search(rf"\$\{{{name}\}}|\${name}\b", text) for text in instructions)


def built_images() -> list[images.OfflineImage]:
    """Every image the catalog builds in either lane (every service enabled), and the app's."""
    out = []
    for lane in ("offline", "upstream"):
        settings = build_settings([{"images": {"lane": lane}}], environ={})
        out += catalog.every_offline_build(settings) + [images.app_image(settings, "1.0.0")]
    return out


def test_every_catalog_service_with_an_image_is_built_in_some_lane():
    built = {image.tag for image in IMAGES}
    settings = build_settings([{"images": {"lane": "offline"}}], environ={})
    for svc in SERVICES.values():
        if svc.own_project:
            continue  # the app colors: images.app_image, above
        # A service may run another's image (the pgbackrest sidecar runs the backup job's).
        runs = svc.offline(settings).tag if svc.offline is not None else None
        assert runs in built or svc.upstream_only, f"{svc.name}: no offline build and not upstream-only"
        assert svc.offline is not None or svc.upstream is not None, svc.name


IMAGES = built_images()


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: f"{i.tag}-{i.dockerfile}")
def test_every_build_arg_is_declared_and_used_and_every_required_one_is_passed(image):
    glob, stages = dockerfile_scopes(image.context / image.dockerfile)
    passed = image.docker_build_args(BASE)
    for name in passed:
        used_in_from = name in glob.args and uses(glob.instructions, name)
        used_in_stage = any(name in stage.args and uses(stage.instructions, name) for stage in stages)
        assert used_in_from or used_in_stage, (
            f"{image.dockerfile} of {image.tag}: build-arg {name} is passed but never declared (ARG) "
            "and used in the scope that declares it")
    for scope in (glob, *stages):
        for name, has_default in scope.args.items():
            if not has_default and name not in glob.args:
                assert name in passed, f"{image.dockerfile} of {image.tag}: ARG {name} has no default and no value"


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: f"{i.tag}-{i.dockerfile}")
def test_the_version_in_the_tag_is_the_version_the_dockerfile_gets(image):
    if image.service == "app":
        assert image.version_arg is None  # its tag is the release version (app/'s hash or a name)
        return
    assert image.version_arg, f"{image.tag} names no build-arg for its version"
    assert image.build_args[image.version_arg] == image.version
    if image.service in images.WHEEL_LOCKS:
        lock = images.wheel_lock(image)
        pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.MULTILINE)
        assert pins == [(images.WHEEL_LOCKS[image.service], image.version)], lock
        assert "--hash=sha256:" in lock.read_text()


def test_a_new_seaweedfs_or_chroma_version_reaches_the_install_command():
    settings = build_settings([{"images": {"seaweedfs_version": "9.9", "chroma_version": "8.8.8"}}], environ={})
    built = {image.service: image for image in catalog.offline_builds(settings)}
    for service, arg, version in (("seaweedfs", "SEAWEEDFS_VERSION", "9.9"), ("chroma", "CHROMA_VERSION", "8.8.8")):
        image = built[service]
        assert image.tag.endswith(f":{version}") and image.build_args[arg] == version
        _, stages = dockerfile_scopes(image.context / image.dockerfile)
        installs = [text for stage in stages if arg in stage.args for text in stage.instructions
                    if "--require-hashes" in text]
        assert installs and all(f"${{{arg}}}" in text for text in installs), service
    # The version has no lock yet: refused before any host is touched, naming the key.
    with pytest.raises(SettingsError, match=r"images\.seaweedfs_version 9\.9: no hash-pinned lock"):
        catalog.require_wheel_locks(settings)
    catalog.require_wheel_locks(build_settings([], environ={}))


def test_a_changed_build_arg_changes_the_context_hash():
    image = SERVICES["seaweedfs"].offline(build_settings([], environ={}))
    other = images.context_hash(image.context, {**image.build_args, "SEAWEEDFS_VERSION": "9.9"}, "base")
    assert images.context_hash(image.context, image.build_args, "base") != other


def test_the_backup_job_package_is_part_of_its_image_context():
    settings = build_settings([], environ={})
    image = backup_image(settings)
    files = {path.relative_to(image.context).as_posix() for path in images.context_files(image.context)}
    assert "govstack_backup/job.py" in files and "Dockerfile" in files
    assert not any(".egg-info" in name or "__pycache__" in name for name in files)
