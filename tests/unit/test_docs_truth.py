"""The docs name only commands, flags and settings that exist (issue 18, section 3).

Every `govstack …` command line in the README, docs/, runbooks/ and the
lifecycle documents (inline code and code blocks) is resolved against the
real CLI (its click tree): each subcommand must exist and each flag must be
one of that command's options. Every backticked settings key
(`backup.schedule`, `govstack.edge.tls_cert_path`) must be a field of the
settings model. A renamed flag or setting fails here, not in an operator's
terminal at 3 a.m.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from govstack.cli import main
from govstack.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "runbooks").glob("*.md")]
    + [path for name in ("CHANGELOG.md", "SECURITY.md") if (path := REPO / name).exists()]
)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
# `govstack` as a command word (not govstack.x, govstack-deploy, /opt/govstack, `govstack:` messages).
COMMAND = re.compile(r"(?<![\w./$-])govstack[ \t]+([^\n]*)")
ALTERNATIVE = "\x00"  # a table cell's `a\|b`: either word
FILE_SUFFIXES = {"prom", "json", "jsonl", "md", "yml", "yaml", "py", "conf", "sh", "txt", "j2", "csv", "crt", "key",
                 "log", "sql", "toml", "cfg", "lock", "sha256", "d"}


def code_of(text: str) -> list[str]:
    """The code in a Markdown text: fenced blocks, then inline spans outside them."""
    blocks = FENCE.findall(text)
    return blocks + INLINE.findall(FENCE.sub("", text))


def command_lines(document: Path) -> list[str]:
    found = []
    for code in code_of(document.read_text()):
        code = re.sub(r"(^|\s)#.*", "", code.replace("\\|", ALTERNATIVE), flags=re.M)  # shell comments
        for match in COMMAND.finditer(code):
            # Up to where the shell would start another command.
            found.append(re.split(r"\s(?:\||;|&&|\|\||#)|[|;)`]|\$\(", match.group(1))[0].strip())
    return found


def words(line: str) -> list[list[str]]:
    """Each word of a command line as its alternatives, brackets and quotes gone."""
    out = []
    for word in line.split():
        word = word.strip("[]()'\"{},")
        alternatives = [alt.strip("[]()'\"") for alt in word.split(ALTERNATIVE)]
        alternatives = [alt.split("=", 1)[0] for alt in alternatives if alt and alt not in ("…", "...", "-")]
        if alternatives:
            out.append(alternatives)
    return out


def options_of(command: click.Command) -> set[str]:
    return {opt for param in command.params if isinstance(param, click.Option)
            for opt in (*param.opts, *param.secondary_opts)} | {"--help"}


def problems_of(line: str) -> list[str]:
    """What in one documented command line the CLI does not have."""
    problems = []
    stack: list[click.Command] = [main]
    commands: list[click.Command] = [main]
    for alternatives in words(line):
        current = commands[0]
        if isinstance(current, click.Group) and not alternatives[0].startswith("-"):
            names = current.commands
            if all(alt in names for alt in alternatives):
                commands = [names[alt] for alt in alternatives]
                stack += commands
                continue
            if current.name == "secret":  # `govstack secret NAME`: the hidden show command
                commands = [current.commands["show"]]
                stack += commands
                continue
            if current is main or not current.invoke_without_command:
                problems.append(f"`govstack {line}`: no command {'|'.join(alternatives)!r} under {current.name!r}")
                return problems
            continue
        for alt in alternatives:
            if alt.startswith("-") and not any(alt in options_of(command) for command in (*commands, *stack)):
                problems.append(f"`govstack {line}`: {alt} is not an option of "
                                f"{' | '.join(command.name or '' for command in commands)!r}")
    return problems


def names_code(dotted: str) -> bool:
    """``govstack.monitoring.scrape_targets``: a module attribute, not a setting."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            if not hasattr(target, part):
                return False
            target = getattr(target, part)
        return True
    return False


def database_names() -> set[str]:
    """Names in the database that share a settings section's name (schema ``analytics``, migration
    0006): the schema-qualified objects of the migrations and the audit actions the app writes."""
    app = REPO / "app" / "govstack_app"
    sql = " ".join(path.read_text() for path in (app / "migrations").glob("*.sql"))
    actions = (app / "retention.py").read_text()
    return set(re.findall(r"\b[a-z_]+\.[a-z_]+\b", sql)) | set(re.findall(r'"([a-z_]+\.[a-z_]+)"', actions))


def settings_keys(document: Path) -> list[str]:
    keys = []
    sections = set(Settings.model_fields)
    in_database = database_names()
    for code in INLINE.findall(FENCE.sub("", document.read_text())):
        code = code.strip()
        key = code.removeprefix("govstack.")
        if not re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key) or key.split(".")[0] not in sections:
            continue
        if code.startswith("govstack.") and names_code(code):
            continue
        if key.rsplit(".", 1)[1] in FILE_SUFFIXES or code in in_database:
            continue
        keys.append(key)
    return keys


def model_in(annotation) -> type[BaseModel] | None:
    """The settings model a field holds (``OffsiteSettings | None`` holds OffsiteSettings)."""
    return next((c for c in (annotation, *getattr(annotation, "__args__", ()))
                 if isinstance(c, type) and issubclass(c, BaseModel)), None)


def setting_exists(key: str) -> bool:
    model: type[BaseModel] | None = Settings
    parts = key.split(".")
    while parts and model is not None:
        part = parts.pop(0)
        field = model.model_fields.get(part)
        if field is None:
            return isinstance(getattr(model, part, None), property)
        if getattr(field.annotation, "__origin__", None) is dict:
            # A mapping (resources.<service>): its keys are data; its values' fields are checked.
            parts = parts[1:]
            model = model_in(field.annotation.__args__[1])
        else:
            model = model_in(field.annotation)
    return True  # the rest (if any) is below a plain mapping or value: data, not settings


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(path.relative_to(REPO)) for path in DOCUMENTS])
def test_documented_commands_and_flags_exist(document):
    problems = [problem for line in command_lines(document) for problem in problems_of(line)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(path.relative_to(REPO)) for path in DOCUMENTS])
def test_documented_settings_keys_exist(document):
    missing = [key for key in settings_keys(document) if not setting_exists(key)]
    assert missing == [], f"{document.name} names settings the model does not have: {missing}"


def test_the_checks_can_fail():
    """The checker itself: made-up commands, flags and keys are caught; real ones pass."""
    assert problems_of("up --dry --diff -i INV") == []
    assert problems_of("report residency\x00storage [--apply [--lock-wait S]]\x00counts") == []
    assert problems_of("secret NAME --reason WHY --host H") == []
    assert problems_of("secret --list") == []
    assert problems_of("upp -i INV") and problems_of("up --force") and problems_of("runbook list -i INV")
    assert problems_of("report residency\x00nonsense")
    assert setting_exists("backup.offsite.bucket") and setting_exists("resources.app.memory_mb")
    assert not setting_exists("resources.app.memory")
    assert not setting_exists("backup.offsite.nonsense") and not setting_exists("edge.tls_cert")
    assert any(command_lines(REPO / "README.md")) and any(settings_keys(REPO / "docs" / "operations.md"))


def test_the_license_file_is_the_one_pyproject_declares():
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    text = (REPO / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
