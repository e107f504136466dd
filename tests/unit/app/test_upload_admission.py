"""The upload spool's admission: with N slots, N uploads are in flight at once and the next one is
answered 503 with a JSON reason and Retry-After before its body is read; a finished or failed
upload gives its slot back; an upload without a key that may upload never takes a slot. A real
FastAPI app with a multipart endpoint, driven concurrently (keys: a table of roles)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, File, UploadFile
from govstack_app.middleware import RequestContextMiddleware
from govstack_app.services.errors import Unavailable
from govstack_app.upload_admission import UploadAdmissionMiddleware, UploadSlots

ROLES = {"writer-key": "writer", "reader-key": "reader"}
WRITER = {"X-API-Key": "writer-key"}


def key_role(key: str) -> str | None:
    if key == "while-postgres-is-down":
        raise Unavailable("postgres", "postgres is unavailable: connection refused")
    return ROLES.get(key)


def make_app(slots: UploadSlots, gate: asyncio.Event, entered: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.post("/api/v1/collections/{collection}/documents")
    async def upload(collection: str, file: UploadFile = File(...)) -> dict:  # noqa: B008 - FastAPI's idiom
        entered.set()
        await gate.wait()  # holds the slot, as a slow object-store write would
        if collection == "boom":
            raise RuntimeError("failure inside the upload")
        return {"size": len(await file.read())}

    @app.post("/api/v1/search")
    async def search() -> dict:
        return {"results": []}

    app.add_middleware(UploadAdmissionMiddleware, slots=slots, key_role=key_role)
    app.add_middleware(RequestContextMiddleware, max_body=1 << 20)  # outermost, as in create_app
    return app


async def scenario() -> None:
    slots = UploadSlots(1)
    gate, entered = asyncio.Event(), asyncio.Event()
    app = make_app(slots, gate, entered)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        files = {"file": ("a.txt", b"x" * 100_000)}
        first = asyncio.create_task(client.post("/api/v1/collections/c/documents", files=files, headers=WRITER))
        await asyncio.wait_for(entered.wait(), 10)
        assert slots.in_flight == 1

        refused = await client.post(
            "/api/v1/collections/c/documents", files=files, headers={"X-Request-ID": "req-1", **WRITER}
        )
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json() == {
            "detail": "too many uploads in progress (1 at once fill the upload spool); retry in 5 s",
            "request_id": "req-1",
        }
        # Other endpoints are not uploads: never refused for the spool.
        assert (await client.post("/api/v1/search")).status_code == 200

        gate.set()
        assert (await first).json() == {"size": 100_000}
        assert slots.in_flight == 0
        assert (await client.post("/api/v1/collections/c/documents", files=files, headers=WRITER)).status_code == 200

        failed = await client.post("/api/v1/collections/boom/documents", files=files, headers=WRITER)
        assert failed.status_code == 500
        assert slots.in_flight == 0  # a failed upload gives its slot back


def test_uploads_beyond_the_spool_are_refused_with_503() -> None:
    asyncio.run(scenario())


async def unauthorised_scenario() -> None:
    slots = UploadSlots(1)
    gate, entered = asyncio.Event(), asyncio.Event()
    transport = httpx.ASGITransport(app=make_app(slots, gate, entered), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        files = {"file": ("a.txt", b"x" * 1000)}
        for headers, status, detail in [
            ({}, 401, "missing API key (X-API-Key header)"),
            ({"X-API-Key": "nobody"}, 401, "invalid API key"),
            ({"X-API-Key": "reader-key"}, 403, "role 'reader' may not do this (needs 'writer')"),
            ({"X-API-Key": "while-postgres-is-down"}, 503, "postgres is unavailable: connection refused"),
        ]:
            refused = await client.post("/api/v1/collections/c/documents", files=files, headers=headers)
            assert (refused.status_code, refused.json()["detail"]) == (status, detail)
            assert slots.in_flight == 0 and not entered.is_set()
        gate.set()
        assert (await client.post("/api/v1/collections/c/documents", files=files, headers=WRITER)).status_code == 200


def test_uploads_without_a_key_that_may_upload_never_take_a_slot() -> None:
    asyncio.run(unauthorised_scenario())
