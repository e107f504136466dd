"""Documents for the extraction tests and benchmark, generated in code (no binary blobs):
the failure corpus of issue 11 (each one an attack on a parser or a limit) and a normal corpus
of ordinary government documents.

The hostile generators take their size from the limit they attack, so the quick tier can run
them against small limits and the e2e tier against the deployed ones.
"""

from __future__ import annotations

import io
import random
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_APP_DIR = Path(__file__).resolve().parents[2] / "app"
if str(_APP_DIR) not in sys.path:
    sys.path.insert(0, str(_APP_DIR))

from govstack_app import samples  # noqa: E402

MiB = 1 << 20


# ---------------------------------------------------------------------------------------------
# zip / DOCX
# ---------------------------------------------------------------------------------------------
def _base_docx() -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(samples.make_docx("Hostile", ["tiny visible text"])))


def _docx_with(extra: Callable[[zipfile.ZipFile], None], *, replace: dict[str, bytes] | None = None) -> bytes:
    """A valid DOCX (python-docx's template) plus whatever `extra` writes into it."""
    src = _base_docx()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in src.infolist():
            data = (replace or {}).get(item.filename, src.read(item.filename))
            zf.writestr(item.filename, data)
        extra(zf)
    return out.getvalue()


def _patch_declared_size(archive: bytes, name: str, declared: int) -> bytes:
    """Rewrite one entry's uncompressed size in its local header and its central-directory
    record: the lie a bomb tells."""
    buf = bytearray(archive)
    zf = zipfile.ZipFile(io.BytesIO(archive))
    info = zf.getinfo(name)
    struct.pack_into("<L", buf, info.header_offset + 22, declared)  # local header: uncompressed size
    record = zf.start_dir
    while buf[record : record + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<3H", buf, record + 28)
        if bytes(buf[record + 46 : record + 46 + name_len]) == name.encode():
            struct.pack_into("<L", buf, record + 24, declared)  # central directory: uncompressed size
            return bytes(buf)
        record += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"no central-directory record for {name}")


def _zeros(total: int, block: int = MiB) -> list[bytes]:
    chunk = b"\0" * block
    return [chunk[: min(block, total - done)] for done in range(0, total, block)]


def lying_zip_entry(method: str, inflated: int) -> bytes:
    """A DOCX with one entry compressed by bzip2 or lzma that inflates to `inflated` bytes but
    declares 1,000 (the upload that OOM-killed the worker 15 times in issue 11)."""
    compress_type = {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA}[method]
    name = "word/media/image1.bin"

    def extra(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo(name)
        info.compress_type = compress_type
        with zf.open(info, "w") as f:
            for block in _zeros(inflated):
                f.write(block)

    return _patch_declared_size(_docx_with(extra), name, 1000)


def deflate_bomb(inflated: int) -> bytes:
    """A DOCX with a deflated entry of zeros: about 1000:1, honest sizes."""

    def extra(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("word/media/padding.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=inflated > 0x7FFFFFFF) as f:
            for block in _zeros(inflated):
                f.write(block)

    return _docx_with(extra)


def zip_in_zip(inner_name: str = "word/embeddings/package.bin") -> bytes:
    """A DOCX carrying another archive (under a name that does not say so)."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("payload.txt", "nested " * 1000)
    return _docx_with(lambda zf: zf.writestr(inner_name, inner.getvalue()))


BILLION_LAUGHS = b"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">
<w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>
"""


def billion_laughs_docx() -> bytes:
    """A DOCX whose main part declares the classic nested entities (10^9 'lol's if expanded)."""
    return _docx_with(lambda zf: None, replace={"word/document.xml": BILLION_LAUGHS})


# ---------------------------------------------------------------------------------------------
# PDF
# ---------------------------------------------------------------------------------------------
def pdf_flate_bomb(inflated: int) -> bytes:
    """A one-page PDF whose text content stream is FlateDecode of a text operator and then
    `inflated` bytes of spaces (valid content-stream whitespace), about 1000:1."""
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"BT /F1 12 Tf 72 720 Td (bomb) Tj ET\n")]
    block = b" " * MiB
    parts += [compressor.compress(block[: min(MiB, inflated - done)]) for done in range(0, inflated, MiB)]
    stream = b"".join(parts) + compressor.flush()
    return samples.pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
            b" /Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        ]
    )


def pdf_many_objects(count: int = 1_000_000) -> bytes:
    """A valid one-page PDF with `count` extra (null) objects in its xref table."""
    head = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ]
    return samples.pdf_from_objects(head + [b"null"] * count)


def pdf_slow_to_extract(pages: int = 100, drawing_ops: int = 4000, text: str = "Drawing register") -> bytes:
    """A legitimate PDF that costs seconds of extraction but yields one line of text: every page
    shares one content stream of line drawings with an empty text operator (so pypdf parses it),
    page 1 adds `text`."""
    drawing = b"BT /F1 12 Tf 72 720 Td ( ) Tj ET\n" + b"1 1 m 2 2 l S\n" * drawing_ops
    titled = b"BT /F1 12 Tf 72 700 Td (" + text.encode("latin-1") + b") Tj ET\n" + drawing
    streams = [zlib.compress(titled, 9), zlib.compress(drawing, 9)]
    kids = b" ".join(b"%d 0 R" % (6 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        *(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(st) + st + b"\nendstream" for st in streams),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i in range(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R"
            b" /Resources << /Font << /F1 5 0 R >> >> >>" % (3 if i == 0 else 4)
        )
    return samples.pdf_from_objects(objects)


def truncated_pdf() -> bytes:
    """A real multi-page PDF cut off at 60 % (no xref, no trailer, no %%EOF)."""
    whole = samples.make_pdf([[f"Page {p} line {i} of the truncated report." for i in range(30)] for p in range(1, 6)])
    return whole[: len(whole) * 6 // 10]


# ---------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------
def one_line_text(size: int = 50_000_000) -> bytes:
    """`size` bytes of words and no newline at all."""
    unit = b"lorem ipsum dolor sit amet consectetur "
    return (unit * (size // len(unit) + 1))[:size]


# ---------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hostile:
    name: str  # test id
    filename: str
    make: Callable[[], bytes]
    # What stops it at upload, if anything does ("too_large" 413 / "unsupported" 415), and what
    # the extraction rules say when they see it (the error's text, a regex).
    upload: str | None
    extraction: str


def failure_corpus(max_unpacked: int, pdf_max_stream: int, max_text: int, pdf_max_objects: int) -> list[Hostile]:
    """Issue 11's failure corpus, sized against the given limits."""
    bomb = max(max_unpacked, 4 * MiB) + MiB
    return [
        Hostile("bzip2-lying-size", "bzip2.docx", lambda: lying_zip_entry("bzip2", bomb), "unsupported", "bzip2"),
        Hostile("lzma-lying-size", "lzma.docx", lambda: lying_zip_entry("lzma", bomb), "unsupported", "lzma"),
        # Under the total cap (test_app_failures covers that one): the ratio rule must catch it.
        Hostile("deflate-bomb-1000-to-1", "bomb.docx", lambda: deflate_bomb(max_unpacked // 2), "too_large",
                "inflates more than"),
        Hostile("zip-in-zip", "nested.docx", zip_in_zip, None, "nested archive"),
        Hostile("billion-laughs-docx", "laughs.docx", billion_laughs_docx, None, "DTD"),
        Hostile(
            "pdf-flate-bomb", "bomb.pdf", lambda: pdf_flate_bomb(max(pdf_max_stream, MiB) * 4), None, "(?i)limit"
        ),
        Hostile("pdf-million-objects", "objects.pdf", lambda: pdf_many_objects(max(1_000_000, pdf_max_objects + 1)),
                "too_large", "objects"),
        Hostile("truncated-pdf", "truncated.pdf", truncated_pdf, "unsupported", "truncated"),
        Hostile("one-line-text-50mb", "line.txt", lambda: one_line_text(max(50_000_000, max_text + 1)),
                "too_large", "limited to"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the normal corpus (benchmark)
# ---------------------------------------------------------------------------------------------
_WORDS = (
    "the county office reviews permit applications inspects premises and publishes decisions citizens renew "
    "passport water land title registry budget report road maintenance notice data protection officer shall "
    "within days of receipt an appeal may be lodged with the tribunal fees are payable annually"
).split()


def normal_corpus(copies: int = 4, seed: int = 7) -> list[tuple[str, bytes]]:
    """Ordinary documents of every supported type, sized like the platform's everyday uploads:
    12-page PDF reports, DOCX memos with a table, HTML notices, Markdown guides, text notes."""
    rnd = random.Random(seed)

    def sentence(n: int = 16) -> str:
        return " ".join(rnd.choice(_WORDS) for _ in range(n)).capitalize() + "."

    def paragraph(k: int = 5) -> str:
        return " ".join(sentence() for _ in range(k))

    docs: list[tuple[str, bytes]] = []
    for i in range(copies):
        docs.append((f"report-{i}.pdf", samples.make_pdf([[sentence(11) for _ in range(45)] for _ in range(12)])))
        docs.append(
            (
                f"memo-{i}.docx",
                samples.make_docx(
                    "Memo", [paragraph() for _ in range(30)], [[sentence(3), sentence(4)] for _ in range(15)]
                ),
            )
        )
        docs.append((f"notice-{i}.html", samples.make_html("Notice", [paragraph() for _ in range(25)])))
        docs.append((f"guide-{i}.md", samples.make_markdown("Guide", {f"Section {j}": paragraph() for j in range(15)})))
        docs.append((f"note-{i}.txt", samples.make_txt("\n\n".join(paragraph() for _ in range(25)))))
    return docs
