"""Small, valid sample documents of every supported type (and some bad inputs), generated in
code. Used by the tests, the local end-to-end script and benchmarks; no fixtures on disk."""

from __future__ import annotations

import io
import zipfile


def make_txt(body: str) -> bytes:
    return body.encode("utf-8")


def make_markdown(title: str, sections: dict[str, str]) -> bytes:
    parts = [f"# {title}", ""]
    for heading, text in sections.items():
        parts += [f"## {heading}", "", text, ""]
    return "\n".join(parts).encode("utf-8")


def make_html(title: str, paragraphs: list[str]) -> bytes:
    body = "".join(f"<p>{p}</p>\n" for p in paragraphs)
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title><style>p{{color:red}}</style>"
        "<script>var hidden = 'script text is not indexed';</script></head>"
        f"<body><h1>{title}</h1>\n{body}</body></html>\n"
    ).encode()


def _pdf_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF 1.4: one Helvetica text line per string, one page per list."""
    objects: list[bytes] = []
    n_pages = len(pages)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, lines in enumerate(pages):
        content_id = 4 + 2 * i
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R"
            f" /Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        ops = ["BT", "/F1 11 Tf", "14 TL", "50 750 Td"]
        for line in lines:
            ops.append(f"({_pdf_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    return pdf_from_objects(objects)


def pdf_from_objects(objects: list[bytes]) -> bytes:
    """A PDF 1.4 file of these objects, numbered from 1 (1 is the catalog): header, bodies, a
    classic xref table, trailer, %%EOF."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % num + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % off for off in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def make_docx(title: str, paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    d = docx.Document()
    d.add_heading(title, level=1)
    for p in paragraphs:
        d.add_paragraph(p)
    if table:
        t = d.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, val in enumerate(row):
                t.cell(r, c).text = val
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def make_docx_bomb(unpacked_bytes: int) -> bytes:
    """A structurally valid DOCX whose extra part inflates to `unpacked_bytes` of zeros."""
    base = make_docx("Bomb", ["tiny visible text"])
    src = zipfile.ZipFile(io.BytesIO(base))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in src.infolist():
            zf.writestr(item, src.read(item.filename))
        info = zipfile.ZipInfo("word/media/padding.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            block = b"\0" * (1 << 20)
            left = unpacked_bytes
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
    return out.getvalue()


def make_png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"\x00\xff\xff\xff"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def make_plain_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("readme.txt", "not a docx")
    return out.getvalue()


# One document per supported type, each about a distinct public service, with a natural-language
# question (vector search) and keywords (full-text search) that should find it first.
TOPICS = {
    "txt": (
        "passport.txt",
        "Passport renewal. Citizens renew an expired passport at the immigration office or online. "
        "Bring the old passport, two photographs and the renewal fee receipt. Renewal takes ten working days.",
        "How can I renew my expired passport?",
        "passport renewal photographs",
    ),
    "md": (
        "birth-registration.md",
        "Parents register the birth of a child within thirty days at the civil registry. "
        "A birth certificate is issued after registration; late registration needs an affidavit.",
        "Where do parents register a newborn baby and get a birth certificate?",
        "birth certificate registry",
    ),
    "html": (
        "land-titles.html",
        "Land title deeds are transferred at the lands registry. The buyer and seller sign the transfer "
        "form, pay stamp duty and the surveyor confirms the parcel boundaries.",
        "How is ownership of a plot of land transferred to a buyer?",
        "title deed stamp duty parcel",
    ),
    "pdf": (
        "water-permit.pdf",
        "Water abstraction permits are issued by the water resources authority. Farmers drilling a "
        "borehole for irrigation apply with a hydrogeological survey report.",
        "Do I need a permit to drill a borehole for irrigating my farm?",
        "borehole irrigation hydrogeological",
    ),
    "docx": (
        "business-licence.docx",
        "A single business permit is issued by the county government. Traders submit the certificate "
        "of incorporation, a KRA PIN and pay the annual licence fee before opening a shop.",
        "What documents does a trader need to open a shop legally?",
        "county business permit incorporation",
    ),
}


def topic_document(kind: str, salt: str = "") -> tuple[str, bytes]:
    """(filename, bytes) for one TOPICS entry; `salt` makes the bytes unique (new sha256)."""
    filename, text, _, _ = TOPICS[kind]
    tail = f" Reference {salt}." if salt else ""
    sentences = [s.strip() + "." for s in text.split(". ") if s.strip()]
    sentences[-1] = sentences[-1].rstrip(".") + "." + tail
    if kind == "txt":
        return filename, make_txt("\n\n".join(sentences) + "\n")
    if kind == "md":
        return filename, make_markdown("Birth registration", {"How to register": " ".join(sentences)})
    if kind == "html":
        return filename, make_html("Land titles", sentences)
    if kind == "pdf":
        return filename, make_pdf([sentences[:1], sentences[1:]])
    if kind == "docx":
        return filename, make_docx("Business licence", sentences)
    raise KeyError(kind)
