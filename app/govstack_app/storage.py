"""Object store (S3 API via the minio SDK) and presigned download URLs for the public hostname.

Presign design: the URL is signed by a second minio client whose endpoint is the PUBLIC host taken
from GOVSTACK_S3_PUBLIC_URL (region pinned, so signing is offline). SigV4 signs the Host header
and the path `/<bucket>/<object>` (path-style). The public URL's path prefix (e.g. `/s3`) is added
after signing and is NOT signed: the edge must strip it and forward the request to the S3 gateway
with the client's Host header unchanged.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.credentials import Credentials
from minio.credentials.providers import Provider
from minio.error import S3Error

from .settings import Settings, read_secret_file

PRESIGN_TTL = timedelta(minutes=5)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class PublicEndpoint:
    scheme: str
    netloc: str  # host[:port] exactly as a client sends it in Host
    prefix: str  # path prefix the edge strips, '' or '/s3'


def parse_public_url(url: str) -> PublicEndpoint:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS[parts.scheme] else f"{host}:{port}"
    return PublicEndpoint(parts.scheme, netloc, parts.path.rstrip("/"))


def _http_client() -> urllib3.PoolManager:
    """minio's default waits minutes to connect; fail fast instead (readiness, 503s)."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=120.0),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def new_object_name(collection_id: int) -> str:
    """Server-generated, never derived from the client's filename."""
    return f"c{collection_id}/{uuid.uuid4().hex}"


class KeyFilesProvider(Provider):
    """The S3 key pair from its two secret files, read on every request (minio asks for
    credentials per request; two small reads beside a network round trip).

    A rotation (`govstack secret rotate s3_access_key`) rewrites both files in place, one after
    the other, while the old and the new identity are both valid, so requests switch to the new
    pair with no restart. Between the two writes the files hold half of each pair: the pair in
    use changes only when both files have changed, or when a change of one has been still for
    ``SETTLE_S`` (an operator who replaced one file only). Contents are compared, not stat
    stamps: a rewrite within the clock tick of a read keeps its mtime.
    """

    SETTLE_S = 5.0

    def __init__(self, access_file: Path | None, secret_file: Path | None) -> None:
        self.files = (access_file, secret_file)
        self._lock = threading.Lock()
        self._pair: tuple[str, str] | None = None
        self._half: tuple[tuple[str, str], float] | None = None  # a half-changed pair, since when

    def _use(self, found: tuple[str, str]) -> bool:
        """Switch to ``found``? At first, when both keys changed, or when a change has settled."""
        if self._pair is None:
            return True
        if found == self._pair:
            self._half = None
            return False
        if all(new != old for new, old in zip(found, self._pair, strict=True)):
            return True
        now = time.monotonic()
        if self._half is None or self._half[0] != found:
            self._half = (found, now)
        return now - self._half[1] >= self.SETTLE_S

    def retrieve(self) -> Credentials:
        try:
            found = (read_secret_file(self.files[0], "s3_access_key"),
                     read_secret_file(self.files[1], "s3_secret_key"))
        except RuntimeError:
            if self._pair is None:
                raise
            found = None  # a file mid-rewrite (empty): the last pair, read again next time
        with self._lock:
            if found is not None and self._use(found):
                self._pair, self._half = found, None
            assert self._pair is not None
            return Credentials(*self._pair)


class ObjectStore:
    def __init__(self, settings: Settings) -> None:
        credentials = KeyFilesProvider(settings.s3_access_key_file, settings.s3_secret_key_file)
        credentials.retrieve()  # fail at start on a missing or empty key file
        self.bucket = settings.s3_bucket
        self.client = Minio(
            settings.s3_endpoint,
            credentials=credentials,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=_http_client(),
        )
        self.public = parse_public_url(settings.s3_public_url)
        self._signer = Minio(
            self.public.netloc,
            credentials=credentials,
            secure=self.public.scheme == "https",
            region=settings.s3_region,  # set => no network round trip to discover the region
        )

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def check(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            raise RuntimeError(f"bucket {self.bucket} does not exist")

    def put(
        self, name: str, stream: BinaryIO, length: int, *, content_type: str, sha256: str, filename: str,
        collection: str,
    ) -> None:
        """The bytes with what it takes to register them again without their row (after a restore
        to an older snapshot): the collection, the filename, the sha256 and the sniffed type."""
        self.client.put_object(
            self.bucket,
            name,
            stream,
            length,
            content_type=content_type,
            metadata={
                "sha256": sha256,
                # S3 user metadata is ASCII-only: percent-encode (RFC 3986) the display filename
                "original-filename": quote(filename, safe=""),
                "sniffed-content-type": content_type,
                "collection": quote(collection, safe=""),
            },
        )

    def download(self, name: str, out: BinaryIO, max_bytes: int) -> tuple[int, str]:
        """Stream the object into `out` (a spool file), 1 MiB at a time; (size, sha256 hex).
        Stops with ValueError past max_bytes: an object larger than any upload is not ours."""
        resp = self.client.get_object(self.bucket, name)
        digest = hashlib.sha256()
        size = 0
        try:
            for block in resp.stream(1 << 20):
                size += len(block)
                if size > max_bytes:
                    raise ValueError(f"object {name} is over {max_bytes} bytes")
                digest.update(block)
                out.write(block)
        finally:
            resp.close()
            resp.release_conn()
        out.flush()
        return size, digest.hexdigest()

    def stat(self, name: str):  # noqa: ANN201 - minio.datatypes.Object
        return self.client.stat_object(self.bucket, name)

    def exists(self, name: str) -> bool:
        try:
            self.client.stat_object(self.bucket, name)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                return False
            raise

    def remove(self, name: str) -> None:
        self.client.remove_object(self.bucket, name)

    def copy(self, source: str, target: str, *, extra_metadata: dict[str, str] | None = None) -> None:
        """Server-side copy within the bucket: the bytes never pass through here. The source's
        content type and user metadata go along, plus ``extra_metadata``."""
        if not extra_metadata:
            self.client.copy_object(self.bucket, target, CopySource(self.bucket, source))
            return
        stat = self.client.stat_object(self.bucket, source)
        metadata: dict[str, str] = {
            name.lower(): value for name, value in stat.metadata.items() if name.lower().startswith("x-amz-meta-")
        }
        metadata.update({f"x-amz-meta-{name}": value for name, value in extra_metadata.items()})
        metadata["Content-Type"] = stat.content_type or "application/octet-stream"
        self.client.copy_object(
            self.bucket, target, CopySource(self.bucket, source), metadata=metadata, metadata_directive=REPLACE
        )

    def iter_objects(self, prefix: str | None = None) -> Iterator:  # noqa: ANN201
        return self.client.list_objects(self.bucket, prefix=prefix, recursive=True)

    def presigned_download_url(
        self, name: str, *, filename: str, content_type: str, ttl: timedelta = PRESIGN_TTL
    ) -> str:
        disposition = f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
        url = self._signer.presigned_get_object(
            self.bucket,
            name,
            expires=ttl,
            response_headers={
                "response-content-disposition": disposition,
                "response-content-type": content_type,
            },
        )
        if not self.public.prefix:
            return url
        p = urlsplit(url)
        return urlunsplit((p.scheme, p.netloc, self.public.prefix + p.path, p.query, ""))


def bytes_stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
