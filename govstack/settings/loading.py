"""Settings from layers, later ones winning key by key (a deep merge):

    defaults  <-  inventory group data  <-  inventory host data  <-  environment

Inventory data lives under the single key ``govstack`` so that pyinfra's own
keys (``ssh_user``, ``_sudo`` …) never mix with ours and an unknown key can be
refused by name. The environment layer uses ``GOVSTACK__SECTION__KEY=value``
(double underscores separate levels), e.g. ``GOVSTACK__EDGE__HTTPS_PORT=8443``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from govstack.settings.base import SettingsError
from govstack.settings.model import Settings

INVENTORY_KEY = "govstack"
ENV_PREFIX = "GOVSTACK__"


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """``GOVSTACK__EDGE__HTTPS_PORT=8443`` -> ``{"edge": {"https_port": "8443"}}``.

    Values are parsed as JSON when they parse (numbers, booleans, lists), else
    kept as strings; pydantic then validates them like inventory values.
    """
    layer: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _format_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(root)"
    if first["type"] == "extra_forbidden":
        reason = "unknown key"
    else:
        reason = first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    return f"{source}: setting {INVENTORY_KEY}.{key}: {reason}{tail}"


def build_settings(
    layers: Iterable[Mapping[str, Any]],
    environ: Mapping[str, str] | None = None,
    source: str = "settings",
) -> Settings:
    """Deep-merge inventory layers (lowest priority first) and the environment."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise SettingsError(f"{source}: {INVENTORY_KEY} must be a mapping, got {type(layer).__name__}")
        merged = deep_merge(merged, layer)
    merged = deep_merge(merged, env_layer(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(merged)
    except ValidationError as error:
        raise SettingsError(_format_error(error, source)) from None


def settings_for_host(host: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings of a pyinfra host (in a deploy): its data layers, lowest priority first."""
    from pyinfra.api.host import extract_callable_datas

    # HostData.datas is ordered highest priority first (override, host, groups…,
    # global); under the CLI each layer is a callable that returns its dict.
    datas = [data for data in extract_callable_datas(host.data.datas) if isinstance(data, Mapping)]
    layers = [data.get(INVENTORY_KEY) for data in reversed(datas)]
    return build_settings(layers, environ, source=str(host.name))
