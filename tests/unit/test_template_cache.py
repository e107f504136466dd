"""Compiled templates are kept between processes (govstack/templating.py
bytecode_cache), and used only for the source, Jinja and options they were
compiled from, from a directory only this user can write."""

from __future__ import annotations

import os

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from govstack import templating
from govstack.templating import bytecode_cache


def _env(template_dir, cache_home, **options) -> Environment:
    env = Environment(loader=FileSystemLoader(str(template_dir)), undefined=StrictUndefined,
                      **{"trim_blocks": True, **options})
    env.bytecode_cache = bytecode_cache(env, str(cache_home))
    return env


def test_a_second_process_loads_the_compiled_template_and_a_changed_source_is_compiled_again(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "a.j2").write_text("{% if on %}\nvalue={{ x }}\n{% endif %}\n")
    first = _env(templates, tmp_path / "cache")
    assert first.get_template("a.j2").render(on=True, x=1) == "value=1\n"
    [directory] = (tmp_path / "cache" / "govstack").iterdir()
    assert len(list(directory.iterdir())) == 1
    assert oct(directory.stat().st_mode & 0o777) == oct(0o700)

    # A fresh environment (another process) compiles nothing: a compile would fail.
    second = _env(templates, tmp_path / "cache")
    second.compile = None  # type: ignore[method-assign]
    assert second.get_template("a.j2").render(on=True, x=2) == "value=2\n"

    # The same file with another source is compiled again, never served stale.
    (templates / "a.j2").write_text("other={{ x }}\n")
    third = _env(templates, tmp_path / "cache")
    assert third.get_template("a.j2").render(x=3) == "other=3"


def test_other_compile_options_use_another_directory(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "a.j2").write_text("{% if on %}\nvalue\n{% endif %}\n")
    trimmed = _env(templates, tmp_path / "cache")
    kept = _env(templates, tmp_path / "cache", trim_blocks=False)
    assert trimmed.bytecode_cache.directory != kept.bytecode_cache.directory
    assert trimmed.get_template("a.j2").render(on=True) == "value\n"
    assert kept.get_template("a.j2").render(on=True) == "\nvalue\n"


def test_a_directory_others_can_write_is_not_used(tmp_path):
    env = _env(tmp_path, tmp_path / "cache")
    directory = env.bytecode_cache.directory
    os.chmod(directory, 0o777)
    assert bytecode_cache(env, str(tmp_path / "cache")) is None
    (tmp_path / "file").write_text("")
    assert bytecode_cache(env, str(tmp_path / "file")) is None  # not a directory: compile every time


def test_the_deploys_environment_keeps_its_compiled_templates_in_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        templating.environment.cache_clear()
        compiled = templating.environment()
        assert compiled.bytecode_cache.directory.startswith(str(tmp_path / "govstack" / "jinja-"))
        compiled.get_template("compose/app.yml.j2")
        templating.environment.cache_clear()
        loaded = templating.environment()
        loaded.compile = None  # type: ignore[method-assign]
        loaded.get_template("compose/app.yml.j2")
    finally:
        templating.environment.cache_clear()
