"""The upload spool's admission: with N slots, N uploads are in flight at once and the next one is
answered 503 with a JSON reason and Retry-After before its body is read; a finished or failed
upload gives its slot back. A real FastAPI app with a multipart endpoint, driven concurrently."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, File, UploadFile
from govstack_app.middleware import RequestContextMiddleware
from govstack_app.upload_admission import UploadAdmissionMiddleware, UploadSlots


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

    app.add_middleware(UploadAdmissionMiddleware, slots=slots)
    app.add_middleware(RequestContextMiddleware, max_body=1 << 20)  # outermost, as in create_app
    return app


async def scenario() -> None:
    slots = UploadSlots(1)
    gate, entered = asyncio.Event(), asyncio.Event()
    app = make_app(slots, gate, entered)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        files = {"file": ("a.txt", b"x" * 100_000)}
        first = asyncio.create_task(client.post("/api/v1/collections/c/documents", files=files))
        await asyncio.wait_for(entered.wait(), 10)
        assert slots.in_flight == 1

        refused = await client.post(
            "/api/v1/collections/c/documents", files=files, headers={"X-Request-ID": "req-1"}
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
        assert (await client.post("/api/v1/collections/c/documents", files=files)).status_code == 200

        failed = await client.post("/api/v1/collections/boom/documents", files=files)
        assert failed.status_code == 500
        assert slots.in_flight == 0  # a failed upload gives its slot back


def test_uploads_beyond_the_spool_are_refused_with_503() -> None:
    asyncio.run(scenario())
