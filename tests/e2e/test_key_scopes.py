"""Scoped API keys, collection creation by role, and the bootstrap admin key rotated and revoked
like any other key without locking the operator out (through the deployed edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_govstack
from tests.e2e.test_app_support import Api, unique

DOCS = "/api/v1/collections/{}/documents"


@pytest.fixture(scope="module")
def admin(stack: Any) -> Api:
    return Api(stack, stack.admin_api_key)


@pytest.fixture(scope="module")
def two_collections(admin: Api) -> dict[str, Any]:
    """Collections X and Y with one document each, made by the admin."""
    made: dict[str, Any] = {}
    for label in ("x", "y"):
        name = unique(f"scope-{label}")
        assert admin.call("POST", "/api/v1/collections", json={"name": name}).status_code == 201
        upload = admin.upload(name, f"{label}.txt", f"Budget notes of collection {label}.".encode())
        assert upload.status_code == 201, upload.text
        made[label] = (name, upload.json()["id"])
    return made


class Key(Api):
    """A client with a key of its own, made by the admin."""

    def __init__(self, stack: Any, admin: Api, role: str, collections: list[str] | None) -> None:
        self.name = unique(f"scoped-{role}")
        r = admin.call("POST", "/api/v1/keys", json={"name": self.name, "role": role, "collections": collections})
        assert r.status_code == 201, r.text
        assert r.json()["collections"] == (sorted(collections) if collections else None)
        super().__init__(stack, r.json()["api_key"])


def test_a_key_confined_to_x_cannot_read_search_download_or_delete_in_y(stack, admin, two_collections):
    (x, x_doc), (y, y_doc) = two_collections["x"], two_collections["y"]
    reader, writer = Key(stack, admin, "reader", [x]), Key(stack, admin, "writer", [x])
    assert reader.call("GET", DOCS.format(x)).status_code == 200
    assert reader.call("GET", f"{DOCS.format(x)}/{x_doc}/download").status_code == 200
    assert reader.call("POST", "/api/v1/search", json={"query": "budget", "collection": x}).status_code == 200
    refused = {
        "list": reader.call("GET", DOCS.format(y)),
        "read": reader.call("GET", f"{DOCS.format(y)}/{y_doc}"),
        "download": reader.call("GET", f"{DOCS.format(y)}/{y_doc}/download"),
        "search": reader.call("POST", "/api/v1/search", json={"query": "budget", "collection": y}),
        "delete": writer.call("DELETE", f"{DOCS.format(y)}/{y_doc}"),
        "upload": writer.upload(y, "into-y.txt", b"not allowed in y"),
        # Outside the scope a missing collection is refused the same way: no existence oracle.
        "missing": reader.call("GET", DOCS.format(unique("nope"))),
    }
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 403)
    assert all(r.json()["request_id"] and "may not access collection" in r.json()["detail"]
               for r in refused.values())
    # Y's document is still there; the listing shows the key's collections only.
    assert admin.call("GET", f"{DOCS.format(y)}/{y_doc}").status_code == 200
    assert [c["name"] for c in reader.call("GET", "/api/v1/collections").json()] == [x]
    # Inside its scope the writer works as before.
    assert writer.call("DELETE", f"{DOCS.format(x)}/{x_doc}").status_code == 204


def test_creating_a_collection_needs_the_curator_role_inside_the_scope(stack, admin):
    fresh, other = unique("scope-new"), unique("scope-other")
    writer = Key(stack, admin, "writer", [fresh])
    curator = Key(stack, admin, "curator", [fresh])
    for attempt in (writer.upload(fresh, "a.txt", b"first document"),
                    writer.call("POST", "/api/v1/collections", json={"name": fresh})):
        assert attempt.status_code == 403 and "curator" in attempt.json()["detail"], attempt.text
    assert curator.call("POST", "/api/v1/collections", json={"name": other}).status_code == 403
    created = curator.upload(fresh, "a.txt", b"first document, creates the collection")
    assert created.status_code == 201, created.text
    assert writer.upload(fresh, "b.txt", b"the writer fills it now").status_code == 201
    assert curator.call("POST", "/api/v1/collections", json={"name": fresh}).status_code == 409
    # An admin key reaches every collection: a scope on one is refused.
    r = admin.call("POST", "/api/v1/keys", json={"name": unique("scoped-admin"), "role": "admin",
                                                 "collections": [fresh]})
    assert r.status_code == 422


def test_rotating_a_key_keeps_its_role_and_scope_and_retires_the_old_secret(stack, admin, two_collections):
    (x, _), (y, _) = two_collections["x"], two_collections["y"]
    reader = Key(stack, admin, "reader", [x])
    rotated = admin.call("POST", f"/api/v1/keys/{reader.name}/rotate")
    assert rotated.status_code == 200 and rotated.json()["collections"] == [x], rotated.text
    assert reader.call("GET", DOCS.format(x)).status_code == 401
    reader.key = rotated.json()["api_key"]
    assert reader.call("GET", DOCS.format(x)).status_code == 200
    assert reader.call("GET", DOCS.format(y)).status_code == 403


def _restart_path(stack: Any) -> None:
    """What a deploy or restart does to keys: the one-off migrate service (the schema owner's;
    the app's own role may not migrate) applies migrations, then the bootstrap key from the
    secret file, once per file value."""
    stack.compose(stack.app_project, "run", "--rm", "-T", "migrate")


def _file_key(stack: Any) -> str:
    return Path(stack.settings.secrets_dir, "app_admin_api_key").read_text().strip()


def test_the_bootstrap_key_is_rotated_and_revoked_like_any_other_and_the_operator_gets_back_in(stack, admin):
    other_admin = Key(stack, admin, "admin", None)
    bootstrap = Api(stack, _file_key(stack))
    try:
        # Rotated through the API: the new secret works, the file's does not, also after a restart.
        rotated = other_admin.call("POST", "/api/v1/keys/bootstrap-admin/rotate")
        assert rotated.status_code == 200, rotated.text
        _restart_path(stack)
        assert bootstrap.call("GET", "/api/v1/keys").status_code == 401
        assert bootstrap.call("GET", "/api/v1/keys", key=rotated.json()["api_key"]).status_code == 200

        # Revoked through the API: it stays revoked across a restart.
        assert other_admin.call("DELETE", "/api/v1/keys/bootstrap-admin").status_code == 204
        _restart_path(stack)
        assert bootstrap.call("GET", "/api/v1/keys", key=rotated.json()["api_key"]).status_code == 401

        # The operator's way back, with no API key at all: a new secret file, set in the database.
        result = run_govstack("admin-key", "rotate", "-i", stack.inventory, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "the old key no longer works" in result.stdout
        new = _file_key(stack)
        assert new not in result.stdout + result.stderr
        assert bootstrap.call("GET", "/api/v1/keys", key=new).status_code == 200
        _restart_path(stack)  # the file is the database's key now: applying it again changes nothing
        assert bootstrap.call("GET", "/api/v1/keys", key=new).status_code == 200
    finally:
        # The rest of the session uses the bootstrap key from the secret file: make it work again
        # whatever step above failed.
        if bootstrap.call("GET", "/api/v1/keys", key=_file_key(stack)).status_code != 200:
            repaired = run_govstack("admin-key", "rotate", "--lock-wait", "300", "-i", stack.inventory, timeout=900)
            assert repaired.returncode == 0, f"could not give the session its key back: {repaired.stderr[-2000:]}"
        stack.admin_api_key = admin.key = _file_key(stack)


def test_the_last_active_admin_key_cannot_be_revoked(stack, admin):
    last = Key(stack, admin, "admin", None)
    # Leave `last` the only active admin for a moment (the others are restored below).
    others = stack.psql(f"UPDATE api_keys SET is_active = false WHERE role = 'admin' AND is_active"
                        f" AND name <> '{last.name}' RETURNING name")
    try:
        refused = last.call("DELETE", f"/api/v1/keys/{last.name}")
        assert refused.status_code == 409 and "last active admin key" in refused.json()["detail"]
    finally:
        names = ",".join(f"'{name}'" for (name,) in others)
        if names:
            stack.psql(f"UPDATE api_keys SET is_active = true WHERE name IN ({names})")
    assert admin.call("DELETE", f"/api/v1/keys/{last.name}").status_code == 204
