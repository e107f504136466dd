"""One source of truth for the document limits: govstack.app.* in the inventory, rendered into
the app's environment, read by the app's Settings, handed to the rules and the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from govstack_app.extract import ExtractionLimits
from govstack_app.sandbox import SandboxLimits
from govstack_app.settings import Settings

from govstack.plan import StackPlan
from govstack.render import render_app_compose
from govstack.settings import SettingsError, build_settings
from govstack.tuning import HostResources

MiB = 1 << 20
CUSTOM = {
    "max_upload_mb": 20,
    "max_unpacked_mb": 100,
    "max_text_mb": 3,
    "max_zip_entries": 500,
    "max_zip_ratio": 80,
    "pdf_max_pages": 900,
    "pdf_max_objects": 90_000,
    "pdf_max_stream_mb": 16,
    "extract_memory_mb": 384,
    "extract_cpu_s": 12,
    "extract_timeout_s": 20,
    "index_max_attempts": 4,
    "upload_spool_mb": 105,
}


def app_settings_from_render(layer: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Settings, dict]:
    plan = StackPlan(build_settings([{"app": layer}], environ={}), HostResources(memory_mb=8192, cpus=2))
    compose = yaml.safe_load(render_app_compose(plan, "blue", "v1"))
    worker = compose["services"]["worker"]
    for key in [k for k in __import__("os").environ if k.startswith("GOVSTACK_")]:
        monkeypatch.delenv(key)
    for key, value in worker["environment"].items():
        if key.endswith("_FILE"):
            secret = tmp_path / key
            secret.write_text("x" * 20)
            value = str(secret)
        monkeypatch.setenv(key, str(value))
    return Settings(), compose


def test_every_limit_reaches_the_rules_and_the_sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings, compose = app_settings_from_render(CUSTOM, monkeypatch, tmp_path)
    assert ExtractionLimits.from_settings(settings) == ExtractionLimits(
        max_upload=20 * MiB,
        max_unpacked=100 * MiB,
        max_text=3 * MiB,
        max_zip_entries=500,
        max_zip_ratio=80,
        pdf_max_pages=900,
        pdf_max_objects=90_000,
        pdf_max_stream=16 * MiB,
    )
    assert SandboxLimits.from_settings(settings) == SandboxLimits(384 * MiB, 12, 20.0)
    assert settings.index_max_attempts == 4
    assert settings.max_concurrent_uploads == 5  # 105 MiB of spool, 21 MiB per upload
    api_tmpfs = compose["services"]["api"]["tmpfs"][0]
    worker_tmpfs = compose["services"]["worker"]["tmpfs"][0]
    assert api_tmpfs.endswith(f"size={105 + 16}m") and worker_tmpfs.endswith(f"size={20 + 16}m")


def test_the_defaults_agree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rendered, _ = app_settings_from_render({}, monkeypatch, tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("GOVSTACK_") and not k.endswith("_FILE")]:
        if key not in ("GOVSTACK_APP_VERSION", "GOVSTACK_APP_COLOR"):
            monkeypatch.delenv(key)
    own = Settings()
    assert ExtractionLimits.from_settings(rendered) == ExtractionLimits.from_settings(own)
    assert SandboxLimits.from_settings(rendered) == SandboxLimits.from_settings(own)
    assert (rendered.index_max_attempts, rendered.upload_spool_bytes) == (
        own.index_max_attempts,
        own.upload_spool_bytes,
    )


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"app": {"extract_cpu_s": 40, "extract_timeout_s": 40}}, "extract_timeout_s must be longer"),
        ({"app": {"upload_spool_mb": 50}}, "upload_spool_mb must hold one upload"),
        ({"app": {"max_unpacked_mb": 600}}, "max_unpacked_mb must stay below extract_memory_mb"),
        ({"app": {"extract_memory_mb": 1024}}, "at most half of resources.worker.memory_mb"),
        ({"app": {"upload_spool_mb": 1024}}, "at most half of resources.app.memory_mb"),
    ],
)
def test_incoherent_limits_are_refused_before_a_deploy(layer: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        build_settings([layer], environ={})
