"""Zip (OOXML) rules: what a DOCX may contain before anything inflates it.

CPython's zipfile trusts the archive: it parses the whole central directory whatever its size,
inflates bzip2 and lzma entries in one call (a 3 KB entry declaring 1,000 bytes can inflate to
gigabytes before the declared size is checked) and never compares sizes with the compressed
ones. So, in this order:

1. ``read_directory_bounds``: the end-of-central-directory record (and its zip64 twin) is read
   here, and the entry count and the directory's size are capped *before* zipfile parses the
   directory.
2. ``check_declared``: every entry is STORED or DEFLATED, unencrypted, named once, not an archive
   by its name, and its declared sizes keep within the total and ratio caps. Cheap (the central
   directory only): the API runs it at upload.
3. ``check_contents``: every entry is really inflated, in bounded chunks (zipfile passes
   ``max_length`` to zlib), counting the bytes it really produces against the same caps; nested
   archives are refused by their magic bytes; XML parts are parsed up to their root element to
   refuse any DTD (entity declarations). The worker's sandbox runs it before python-docx.

python-docx then reads the verified archive with its own lxml parser (resolve_entities=False,
no network, huge_tree off: libxml2 caps depth at 256 and text nodes at 10 MB).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from lxml import etree

# zip format constants (APPNOTE.TXT 4.3.12-4.3.16)
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIG = b"PK\x05\x06"
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_EOCD64_SIG = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF
# A central-directory record is 46 bytes plus its name, extra field and comment. Word writes
# names under 100 bytes; 256 per entry on average leaves room and bounds what zipfile parses.
CENTRAL_DIRECTORY_BYTES_PER_ENTRY = 256

ALLOWED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 9: "deflate64", 93: "zstd"}
# An entry's ratio is judged only once it has produced this much: tiny entries compress
# arbitrarily well (Apache POI's ZipSecureFile uses the same grace before its ratio check).
RATIO_GRACE_BYTES = 100 * 1024
INFLATE_CHUNK = 64 * 1024

ARCHIVE_SUFFIXES = (
    ".zip", ".jar", ".docx", ".docm", ".dotx", ".xlsx", ".xlsm", ".pptx", ".pptm", ".odt", ".ods",
    ".odp", ".epub", ".gz", ".tgz", ".bz2", ".xz", ".lzma", ".zst", ".7z", ".rar", ".tar", ".cab",
)  # fmt: skip
ARCHIVE_MAGIC = (
    b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07", b"\x28\xb5\x2f\xfd", b"MSCF",
)  # fmt: skip
XML_SUFFIXES = (".xml", ".rels", ".vml")


class ZipRuleError(Exception):
    """The archive breaks a rule. ``kind`` says which HTTP answer fits: 'too_large' (a bomb, 413),
    'unsupported' (a form the platform refuses, 415) or 'corrupt'."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int
    max_unpacked: int  # total inflated bytes across all entries
    max_ratio: int  # inflated : compressed, per entry (after RATIO_GRACE_BYTES)


@dataclass(frozen=True)
class DirectoryBounds:
    entries: int
    size: int
    offset: int


def read_directory_bounds(f: BinaryIO) -> DirectoryBounds:
    """Entry count and size of the central directory, from the end records (zip64 aware), the way
    zipfile finds them (last signature in the final 64 KiB + 22 bytes)."""
    f.seek(0, 2)
    file_size = f.tell()
    tail_len = min(file_size, _EOCD.size + _MAX_COMMENT)
    f.seek(file_size - tail_len)
    tail = f.read(tail_len)
    pos = tail.rfind(_EOCD_SIG)
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise ZipRuleError("corrupt", "corrupt zip archive: no end-of-central-directory record")
    _, _, _, _, entries, size, offset, _ = _EOCD.unpack_from(tail, pos)
    if entries == 0xFFFF or size == 0xFFFFFFFF or offset == 0xFFFFFFFF:
        eocd_at = file_size - tail_len + pos
        if eocd_at < _EOCD64_LOCATOR.size:
            raise ZipRuleError("corrupt", "corrupt zip archive: zip64 without its end-of-central-directory locator")
        f.seek(eocd_at - _EOCD64_LOCATOR.size)
        sig, _, eocd64_at, _ = _EOCD64_LOCATOR.unpack(f.read(_EOCD64_LOCATOR.size))
        if sig != _EOCD64_LOCATOR_SIG or eocd64_at + _EOCD64.size > file_size:
            raise ZipRuleError("corrupt", "corrupt zip archive: broken zip64 end-of-central-directory locator")
        f.seek(eocd64_at)
        raw = f.read(_EOCD64.size)
        sig, _, _, _, _, _, _, entries, size, offset = _EOCD64.unpack(raw)
        if sig != _EOCD64_SIG:
            raise ZipRuleError("corrupt", "corrupt zip archive: broken zip64 end-of-central-directory record")
    if size > file_size:
        raise ZipRuleError(
            "corrupt", f"corrupt zip archive: central directory of {size} bytes in a {file_size}-byte file"
        )
    return DirectoryBounds(entries=entries, size=size, offset=offset)


def open_bounded(f: BinaryIO, limits: ZipLimits) -> zipfile.ZipFile:
    """zipfile.ZipFile, opened only after the entry count and directory size were capped."""
    bounds = read_directory_bounds(f)
    if bounds.entries > limits.max_entries:
        raise ZipRuleError("too_large", f"zip has {bounds.entries} entries (limit {limits.max_entries})")
    directory_cap = limits.max_entries * CENTRAL_DIRECTORY_BYTES_PER_ENTRY
    if bounds.size > directory_cap:
        raise ZipRuleError("too_large", f"zip central directory is {bounds.size} bytes (limit {directory_cap})")
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ZipRuleError("corrupt", f"corrupt zip archive: {exc}") from None
    if len(zf.infolist()) > limits.max_entries:  # the directory held more records than it declared
        zf.close()
        raise ZipRuleError("too_large", f"zip has {len(zf.infolist())} entries (limit {limits.max_entries})")
    return zf


def _method_name(method: int) -> str:
    return METHOD_NAMES.get(method, f"method {method}")


def check_declared(zf: zipfile.ZipFile, limits: ZipLimits) -> None:
    """The rules the central directory alone can answer."""
    seen: set[str] = set()
    total = 0
    for info in zf.infolist():
        name = info.filename
        if name in seen:
            raise ZipRuleError("corrupt", f"zip names {name!r} twice")
        seen.add(name)
        if info.compress_type not in ALLOWED_METHODS:
            raise ZipRuleError(
                "unsupported",
                f"zip entry {name!r} is compressed with {_method_name(info.compress_type)};"
                " only stored and deflated entries are accepted",
            )
        if info.flag_bits & 0x1:
            raise ZipRuleError("unsupported", f"zip entry {name!r} is encrypted")
        if name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ZipRuleError("unsupported", f"zip entry {name!r} is an archive; nested archives are refused")
        total += info.file_size
        if total > limits.max_unpacked:
            raise ZipRuleError("too_large", f"zip unpacks to more than {limits.max_unpacked} bytes (declared sizes)")
        _check_ratio(name, info.file_size, info.compress_size, limits)


def _check_ratio(name: str, inflated: int, compressed: int, limits: ZipLimits) -> None:
    if inflated > RATIO_GRACE_BYTES and inflated > limits.max_ratio * max(compressed, 1):
        raise ZipRuleError(
            "too_large",
            f"zip entry {name!r} inflates more than {limits.max_ratio}:1 "
            f"({inflated} bytes from {compressed}); refused as a decompression bomb",
        )


class _PrologTarget:
    """lxml parser target that stops at the root element and refuses a document type
    declaration (where entities are declared)."""

    class Done(Exception):
        pass

    def __init__(self) -> None:
        self.doctype_seen = False

    def doctype(self, *_: object) -> None:  # lxml calls target.doctype(name, pubid, system)
        self.doctype_seen = True
        raise self.Done

    def start(self, *_: object) -> None:
        raise self.Done

    def close(self) -> None:
        return None


class _PrologCheck:
    """Feeds an XML part to libxml2 until its root element; fails on a DTD."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.target = _PrologTarget()
        self.parser = etree.XMLParser(
            target=self.target, resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
        )
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        try:
            self.parser.feed(data)
        except _PrologTarget.Done:
            self.done = True
        except etree.XMLSyntaxError as exc:
            if not self.target.doctype_seen:
                raise ZipRuleError("corrupt", f"zip entry {self.name!r} is not well-formed XML: {exc}") from None
            self.done = True
        if self.target.doctype_seen:
            raise ZipRuleError(
                "unsupported",
                f"zip entry {self.name!r} declares a DTD; XML entity declarations are refused",
            )

    def close(self) -> None:
        if not self.done:  # libxml2 holds back a few bytes until the end of input
            try:
                self.parser.close()
            except _PrologTarget.Done:
                self.done = True
            except etree.XMLSyntaxError:
                pass
        if self.target.doctype_seen:
            raise ZipRuleError(
                "unsupported", f"zip entry {self.name!r} declares a DTD; XML entity declarations are refused"
            )
        if not self.done:
            raise ZipRuleError("corrupt", f"zip entry {self.name!r} has no XML root element")


def _chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The entry's inflated bytes, INFLATE_CHUNK at a time: for deflate, zipfile hands zlib a
    max_length, so no call produces more than that whatever the compressed data says."""
    try:
        with zf.open(info) as stream:
            while block := stream.read(INFLATE_CHUNK):
                yield block
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise ZipRuleError("corrupt", f"zip entry {info.filename!r} cannot be read: {exc}") from None


def check_contents(zf: zipfile.ZipFile, limits: ZipLimits) -> None:
    """Inflate every entry in bounded chunks and hold it to the rules by the bytes it really
    produces (its declared sizes may lie). Call after :func:`check_declared`."""
    total = 0
    for info in zf.infolist():
        name = info.filename
        produced = 0
        prolog = _PrologCheck(name) if name.lower().endswith(XML_SUFFIXES) else None
        for block in _chunks(zf, info):
            if produced == 0 and block.startswith(ARCHIVE_MAGIC):  # INFLATE_CHUNK > any magic
                raise ZipRuleError("unsupported", f"zip entry {name!r} holds an archive; nested archives are refused")
            produced += len(block)
            total += len(block)
            if total > limits.max_unpacked:
                raise ZipRuleError("too_large", f"zip unpacks to more than {limits.max_unpacked} bytes")
            _check_ratio(name, produced, info.compress_size, limits)
            if prolog is not None:
                prolog.feed(block)
        if produced != info.file_size:
            raise ZipRuleError("corrupt", f"zip entry {name!r} declares {info.file_size} bytes but holds {produced}")
        if prolog is not None and produced:
            prolog.close()
