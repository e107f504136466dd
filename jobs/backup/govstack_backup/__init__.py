"""The backup job of a govstack stack, run inside the `backup` container.

Postgres (pg_dump -Fc from an exported snapshot), every S3 bucket (a tar
stream with a key -> sha256 manifest) and every Chroma collection (paged
JSONL) are streamed into restic; each run leaves a manifest, is read back and
checked, and only then may retention prune. The host's `govstack backup /
restore / drill` drive the commands of :mod:`govstack_backup.cli`.
"""

__version__ = "1.0.0"
