"""The pure decisions of cleanup and reconciliation: which objects are orphans, where an orphan
goes in the quarantine, which quarantine entries have expired, what an adoption registers.

Nothing here talks to a service; ``services/maintenance.py`` and ``services/reconciliation.py`` do the
I/O and call these.

The quarantine is a prefix of the documents bucket: ``quarantine/<UTC time>/<original key>``. The
key itself records the original key and when it was quarantined, so a listing alone tells what
an entry is and when it expires (a restore that puts the entry back does not make it younger),
and a crashed move is found again by its original key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

QUARANTINE_PREFIX = "quarantine/"
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_TIME_RE = re.compile(r"^\d{8}T\d{6}Z$")
# new_object_name(): c<collection id>/<uuid hex>
_COLLECTION_KEY_RE = re.compile(r"^c(\d+)/")
# app_state key of the pause flag: present = every automatic cleanup is paused. A restore sets it
# (govstack/reconcile/ops.py writes the same key) before it touches data.
PAUSE_KEY = "cleanup_paused"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime | None
    etag: str | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    key: str
    original: str
    quarantined_at: datetime
    size: int


@dataclass(frozen=True)
class Move:
    """Quarantine one orphan: copy to ``target`` (unless an earlier, crashed run already did),
    then delete ``original``."""

    original: str
    target: str
    size: int
    copy_needed: bool


def is_quarantine_key(key: str) -> bool:
    return key.startswith(QUARANTINE_PREFIX)


def quarantine_key(original: str, when: datetime) -> str:
    if is_quarantine_key(original):
        raise ValueError(f"{original!r} is already in the quarantine")
    return f"{QUARANTINE_PREFIX}{when.astimezone(UTC).strftime(TIME_FORMAT)}/{original}"


def parse_quarantine_key(key: str, size: int = 0) -> QuarantineEntry | None:
    """The entry a quarantine key names; None for anything else (an object put there by hand is
    never treated as an entry, so never expired)."""
    if not is_quarantine_key(key):
        return None
    stamp, _, original = key[len(QUARANTINE_PREFIX):].partition("/")
    if not _TIME_RE.match(stamp) or not original or is_quarantine_key(original):
        return None
    try:
        when = datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:  # digits that are no date (month 13)
        return None
    return QuarantineEntry(key=key, original=original, quarantined_at=when, size=size)


def split_listing(objects: Iterable[StoredObject]) -> tuple[list[StoredObject], list[QuarantineEntry], list[str]]:
    """(live objects, quarantine entries, unrecognised keys under the quarantine prefix)."""
    live: list[StoredObject] = []
    entries: list[QuarantineEntry] = []
    strays: list[str] = []
    for obj in objects:
        if not is_quarantine_key(obj.key):
            live.append(obj)
            continue
        entry = parse_quarantine_key(obj.key, obj.size)
        if entry is None:
            strays.append(obj.key)
        else:
            entries.append(entry)
    return live, entries, strays


def old_enough(obj: StoredObject, cutoff: datetime) -> bool:
    """An object younger than the cutoff may be an upload whose row is not committed yet."""
    return obj.last_modified is not None and obj.last_modified <= cutoff


def settled_cutoff(now: datetime, min_age: timedelta, paused: dict[str, Any] | None) -> datetime:
    """Objects written at or before this are no upload in flight. Normally ``now - min_age``; after a
    restore also anything written before the restore paused cleanup: the restore stopped every
    writer right after that (gracefully, so uploads in flight then finished or removed their
    object), so an older object without a row is one the restored database does not know."""
    cutoff = now - min_age
    since = (paused or {}).get("since")
    if isinstance(since, str):
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            return cutoff
        if when.tzinfo is not None and when < now:
            return max(cutoff, when)
    return cutoff


def select_orphans(live: Iterable[StoredObject], registered: set[str], cutoff: datetime) -> list[StoredObject]:
    """Live objects that no document row names and that are old enough to be no upload in flight."""
    return [o for o in live if o.key not in registered and old_enough(o, cutoff)]


def plan_moves(orphans: Iterable[StoredObject], entries: Iterable[QuarantineEntry], now: datetime) -> list[Move]:
    """One move per orphan. An entry of the same original and size, quarantined after the orphan
    was last written, is the copy of an earlier run that crashed before its delete: reuse it (no
    second copy), only the delete is left. An older entry is not reused: the object was written
    again since (an adoption copied it back), so its quarantine time starts over with a new copy
    and the old entry cannot expire it early."""
    by_original: dict[tuple[str, int], list[QuarantineEntry]] = {}
    for e in entries:
        by_original.setdefault((e.original, e.size), []).append(e)
    moves = []
    for orphan in orphans:
        copies = [
            e for e in by_original.get((orphan.key, orphan.size), [])
            # the key's time has whole seconds
            if orphan.last_modified is not None and orphan.last_modified.replace(microsecond=0) <= e.quarantined_at
        ]
        existing = max(copies, key=lambda e: e.quarantined_at).key if copies else None
        moves.append(Move(orphan.key, existing or quarantine_key(orphan.key, now), orphan.size, existing is None))
    return moves


def select_expired(entries: Iterable[QuarantineEntry], now: datetime, retention: timedelta) -> list[QuarantineEntry]:
    return [e for e in entries if e.quarantined_at + retention <= now]


def newest_entries(entries: Iterable[QuarantineEntry]) -> dict[str, QuarantineEntry]:
    """The newest quarantine entry of each original key."""
    newest: dict[str, QuarantineEntry] = {}
    for e in entries:
        if e.original not in newest or e.quarantined_at > newest[e.original].quarantined_at:
            newest[e.original] = e
    return newest


# -- the pause flag ----------------------------------------------------------------------------
def parse_pause(value: str | None) -> dict[str, Any] | None:
    """The app_state value of the pause flag; a value that is not JSON (set by hand) still pauses."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return {"reason": value}
    return parsed if isinstance(parsed, dict) else {"reason": str(parsed)}


# -- adoption --------------------------------------------------------------------------------
class CannotAdopt(ValueError):
    """This object cannot be registered as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Collection:
    id: int
    name: str
    created_at: datetime


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """x-amz-meta-* headers of a stat, by their short lower-case name."""
    out = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-"):
            out[lower[len("x-amz-meta-"):]] = value
    return out


def collection_of(key: str, metadata: Mapping[str, str], last_modified: datetime | None,
                  collections_by_id: Mapping[int, Collection], override: str | None = None) -> tuple[str, str]:
    """(collection name, how it is known) for an object to register.

    1. The collection the upload recorded in the object's metadata (uploads since this release).
    2. The operator's --collection.
    3. The collection id in the key (c<id>/…), if this database has that id *and* it was created
       before the object: after a restore to an older snapshot the id sequence starts over, so a
       collection created since may carry the id of one the snapshot lost; taking it for the old
       one would put a document into someone else's collection.
    """
    if metadata.get("collection"):
        return unquote(metadata["collection"]), "object metadata"
    if override:
        return override, "--collection"
    found = _COLLECTION_KEY_RE.match(key)
    if found:
        coll = collections_by_id.get(int(found[1]))
        if coll is not None and last_modified is not None and coll.created_at <= last_modified:
            return coll.name, f"collection id {coll.id} in the key"
        raise CannotAdopt(
            f"cannot tell the collection of {key}: it was stored before uploads recorded their collection, "
            f"and collection id {found[1]} is " + ("newer than the object" if coll else "not in this database")
            + "; pass --collection NAME (the reconciliation report names it from the database the restore kept)")
    raise CannotAdopt(f"cannot tell the collection of {key}: no collection in its metadata or key; "
                      "pass --collection NAME")


def filename_of(key: str, metadata: Mapping[str, str]) -> str:
    """The uploader's filename when the upload recorded it, else a name that says what happened."""
    recorded = unquote(metadata.get("original-filename", "")).strip()
    return recorded[:255] if recorded else f"recovered-{key.rsplit('/', 1)[-1]}"
