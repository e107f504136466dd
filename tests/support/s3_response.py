"""A stand-in for the urllib3 response the minio SDK returns from get_object, for the backup job's
unit tests' in-memory S3 (tests/unit/test_backup_job.py, test_backup_mirror.py)."""

from __future__ import annotations

import io


class S3Response(io.BytesIO):
    def __init__(self, data: bytes, headers: dict) -> None:
        super().__init__(data)
        self.headers = headers

    def release_conn(self) -> None:
        pass

    def stream(self, n: int):  # noqa: ANN201
        while chunk := self.read(n):
            yield chunk
