"""Content sniffing, the rules every document is held to, and text extraction per type.

Types are decided from the bytes, never from the client's Content-Type; the filename's extension
only tells Markdown from plain text (Markdown cannot be told apart from the bytes).

Two layers of rules (the limits are settings, see ExtractionLimits):
- at upload (``sniff_file`` + ``check_upload``): what the bytes can answer cheaply, reading only
  the head, the tail, the zip directory or one streaming pass; the API runs them on the spool file;
- at extraction (``extract``): everything, on the real content. The worker runs it in a sandboxed
  child process (sandbox.py) that also caps memory, CPU time and wall-clock time.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from . import safezip

TEXT_PLAIN = "text/plain"
TEXT_MARKDOWN = "text/markdown"
TEXT_HTML = "text/html"
APPLICATION_PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
SUPPORTED_TYPES = (TEXT_PLAIN, TEXT_MARKDOWN, TEXT_HTML, APPLICATION_PDF, DOCX)
TEXT_TYPES = (TEXT_PLAIN, TEXT_MARKDOWN, TEXT_HTML)

MARKDOWN_EXTENSIONS = (".md", ".markdown", ".mdown", ".mkd")
HTML_EXTENSIONS = (".html", ".htm", ".xhtml")
READ_CHUNK = 1 << 20
# PDF 1.7 (ISO 32000-1) 7.5.5 puts %%EOF on the last line; readers accept it anywhere in the
# last 1024 bytes (Adobe's implementation note, followed by pdf.js and pypdf's own search).
PDF_EOF_WINDOW = 1024


class ExtractionError(Exception):
    """The document cannot be turned into text (corrupt, encrypted, refused by a rule...)."""


class UnsupportedType(ExtractionError):
    """HTTP 415: a type, or a form of it, the platform does not take (or a corrupt file)."""


class TooLarge(ExtractionError):
    """HTTP 413: over the upload limit, or over a limit on what the document unpacks to."""


class EmptyDocument(ExtractionError):
    """HTTP 422: zero bytes."""


@dataclass(frozen=True)
class ExtractionLimits:
    """The caps every document is held to; built from the app's settings (one source of truth:
    govstack.app.* -> GOVSTACK_* -> Settings -> here)."""

    max_upload: int  # bytes of the document itself
    max_unpacked: int  # total inflated bytes of a zip's entries
    max_text: int  # UTF-8 bytes of extracted text; also the largest text/Markdown/HTML upload
    max_zip_entries: int
    max_zip_ratio: int
    pdf_max_pages: int
    pdf_max_objects: int
    pdf_max_stream: int  # inflated bytes of one PDF stream

    @classmethod
    def from_settings(cls, settings: Any) -> ExtractionLimits:
        return cls(
            max_upload=settings.max_upload_bytes,
            max_unpacked=settings.max_unpacked_bytes,
            max_text=settings.max_text_bytes,
            max_zip_entries=settings.max_zip_entries,
            max_zip_ratio=settings.max_zip_ratio,
            pdf_max_pages=settings.pdf_max_pages,
            pdf_max_objects=settings.pdf_max_objects,
            pdf_max_stream=settings.pdf_max_stream_bytes,
        )

    @property
    def zip(self) -> safezip.ZipLimits:
        return safezip.ZipLimits(self.max_zip_entries, self.max_unpacked, self.max_zip_ratio)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Block:
    text: str
    kind: str = "para"  # para | heading | code | page
    level: int = 0  # heading level
    page: int | None = None


# --------------------------------------------------------------------------------------------
# sniffing
# --------------------------------------------------------------------------------------------
_HTML_START = re.compile(rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.I | re.S)
_HTML_TAG = re.compile(r"<(p|div|h[1-6]|ul|ol|li|table|a|span|br|body|html|section|article)\b", re.I)


def _decode_text(data: bytes) -> str | None:
    """Decode bytes that look like text; None for binary."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16").lstrip("\ufeff")
        except UnicodeDecodeError:
            return None
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            return None
    if _too_many_controls(text[:8192]):
        return None
    return text


def _too_many_controls(sample: str) -> bool:
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f\v")
    return bool(sample) and controls / len(sample) > 0.01


def _is_text_file(f: BinaryIO) -> bool:
    """_decode_text's verdict, reached in one streaming pass (nothing held whole)."""
    f.seek(0)
    head = f.read(8192)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encodings = ["utf-16"]
    else:
        encodings = ["utf-8-sig", "cp1252"]
    for encoding in encodings:
        decoder = codecs.getincrementaldecoder(encoding)()
        f.seek(0)
        sample = ""
        try:
            while block := f.read(READ_CHUNK):
                if encoding != "utf-16" and b"\x00" in block:
                    return False
                text = decoder.decode(block)
                if len(sample) < 8192:
                    sample += text[: 8192 - len(sample)]
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            continue
        return not _too_many_controls(sample.lstrip("\ufeff"))
    return False


def sniff(data: bytes, filename: str = "") -> str:
    """Return one of SUPPORTED_TYPES or raise UnsupportedType / EmptyDocument."""
    return sniff_file(io.BytesIO(data), filename)


def sniff_file(f: BinaryIO, filename: str = "", zip_limits: safezip.ZipLimits | None = None) -> str:
    """sniff() for a seekable file (the upload spool): reads the head, the zip directory (within
    `zip_limits`' entry count) or, for text, one streaming decode."""
    f.seek(0)
    head = f.read(8192)
    if not head:
        raise EmptyDocument("the upload is empty")
    if b"%PDF-" in head[:1024]:
        return APPLICATION_PDF
    if head.startswith(b"PK\x03\x04"):
        try:
            with safezip.open_bounded(f, zip_limits or _SNIFF_ZIP_LIMITS) as zf:
                names = set(zf.namelist())
        except safezip.ZipRuleError as exc:
            if exc.kind == "too_large":
                raise TooLarge(str(exc)) from None
            raise _zip_error(exc) from None
        if "word/document.xml" in names:
            return DOCX
        raise UnsupportedType("zip archive that is not a DOCX document")
    import filetype

    kind = filetype.guess(head)
    if kind is not None:
        raise UnsupportedType(f"unsupported content type {kind.mime}")
    if head.lstrip().startswith(b"{\\rtf"):
        raise UnsupportedType("unsupported content type application/rtf")
    if not _is_text_file(f):
        raise UnsupportedType("binary content of an unknown type (not a PDF, DOCX or text)")
    lower = filename.lower()
    sample = _decode_text(head[:65536]) or head.decode("latin-1")
    if _HTML_START.match(head) or (lower.endswith(HTML_EXTENSIONS) and _HTML_TAG.search(sample)):
        return TEXT_HTML
    if lower.endswith(MARKDOWN_EXTENSIONS):
        return TEXT_MARKDOWN
    return TEXT_PLAIN


# Sniffing needs only the entry names; the other caps come with check_upload/extract. The entry
# count bounds what zipfile parses (and holds) to list them.
_SNIFF_ZIP_LIMITS = safezip.ZipLimits(max_entries=10_000, max_unpacked=1 << 62, max_ratio=1 << 30)


def _count_token(f: BinaryIO, token: bytes) -> int:
    """Occurrences of token in the file, read in chunks (a match across two chunks counts once)."""
    f.seek(0)
    n = 0
    tail = b""
    keep = len(token) - 1
    while block := f.read(READ_CHUNK):
        n += block.count(token)
        if tail:
            n += (tail + block[:keep]).count(token)
        tail = block[-keep:]
    return n


def count_pdf_objects(f: BinaryIO) -> int:
    """Indirect objects by their `obj` keywords in the raw bytes (those in object streams are
    counted after parsing). A cheap upper-bound-ish count: a literal 'obj' in uncompressed text
    counts too, which only matters to a document already near the cap."""
    return _count_token(f, b"obj") - _count_token(f, b"endobj")


def _pdf_has_eof_marker(f: BinaryIO) -> bool:
    f.seek(0, 2)
    size = f.tell()
    f.seek(max(0, size - PDF_EOF_WINDOW))
    return b"%%EOF" in f.read(PDF_EOF_WINDOW)


def _zip_error(exc: safezip.ZipRuleError) -> ExtractionError:
    if exc.kind == "too_large":
        return TooLarge(str(exc))
    return UnsupportedType(str(exc))


def check_upload(f: BinaryIO, content_type: str, limits: ExtractionLimits) -> None:
    """The rules an upload can be held to cheaply, before it is stored: 413 (TooLarge) or 415
    (UnsupportedType). Extraction applies them again, and the rest."""
    f.seek(0, 2)
    size = f.tell()
    if size > limits.max_upload:
        raise TooLarge(f"upload is over the {limits.max_upload}-byte limit")
    if content_type in TEXT_TYPES and size > limits.max_text:
        raise TooLarge(f"text, Markdown and HTML uploads are limited to {limits.max_text} bytes ({size} sent)")
    if content_type == DOCX:
        try:
            with safezip.open_bounded(f, limits.zip) as zf:
                safezip.check_declared(zf, limits.zip)
        except safezip.ZipRuleError as exc:
            raise _zip_error(exc) from None
    elif content_type == APPLICATION_PDF:
        if not _pdf_has_eof_marker(f):
            raise UnsupportedType(f"PDF is truncated: no %%EOF marker in its last {PDF_EOF_WINDOW} bytes")
        objects = count_pdf_objects(f)
        if objects > limits.pdf_max_objects:
            raise TooLarge(f"PDF has {objects} objects (limit {limits.pdf_max_objects})")


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------
_WS = re.compile(r"[ \t\r\f\v\u00a0]+")


def _clean(text: str) -> str:
    lines = [_WS.sub(" ", ln).strip() for ln in text.replace("\r\n", "\n").split("\n")]
    out = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _extract_plain(data: bytes) -> list[Block]:
    text = _decode_text(data) or ""
    return [Block(_clean(text))] if text.strip() else []


def _extract_markdown(data: bytes) -> list[Block]:
    from markdown_it import MarkdownIt

    text = _decode_text(data) or ""
    md = MarkdownIt("commonmark").enable("table")
    blocks: list[Block] = []
    tokens = md.parse(text)
    heading_level = 0
    for tok in tokens:
        if tok.type == "heading_open":
            heading_level = int(tok.tag[1:])
        elif tok.type == "heading_close":
            heading_level = 0
        elif tok.type == "inline":
            parts: list[str] = []
            for child in tok.children or []:
                if child.type in ("text", "code_inline", "html_inline"):
                    parts.append(child.content)
                elif child.type in ("softbreak",):
                    parts.append(" ")
                elif child.type == "hardbreak":
                    parts.append("\n")
                elif child.type == "image":
                    parts.append(child.content)
            content = _clean("".join(parts))
            if content:
                if heading_level:
                    blocks.append(Block(content, "heading", heading_level))
                else:
                    blocks.append(Block(content))
        elif tok.type in ("fence", "code_block"):
            if tok.content.strip():
                blocks.append(Block(tok.content.rstrip(), "code"))
        elif tok.type == "html_block":
            inner = _html_blocks(tok.content.encode())
            blocks.extend(inner)
    return blocks


_SKIP_TAGS = {
    "script",
    "style",
    "noscript",
    "template",
    "head",
    "svg",
    "canvas",
    "iframe",
    "object",
    "form",
    "button",
    "select",
}
_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "aside",
    "header",
    "footer",
    "nav",
    "blockquote",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "td",
    "th",
    "figure",
    "figcaption",
    "address",
    "details",
    "summary",
    "hr",
    "body",
    "html",
    "caption",
}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


def _html_blocks(data: bytes) -> list[Block]:
    from bs4 import BeautifulSoup, Comment, Doctype, NavigableString, ProcessingInstruction, Tag

    # Python's html.parser tokenizes only: it never fetches a URL, a DTD or a stylesheet, so
    # <img src>, <link href> and doctypes naming remote files stay text and attributes.
    soup = BeautifulSoup(data, "html.parser")
    blocks: list[Block] = []
    buf: list[str] = []

    def flush() -> None:
        text = _clean("".join(buf))
        buf.clear()
        if text:
            blocks.append(Block(" ".join(text.split())))

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, (Comment, Doctype, ProcessingInstruction)):
                continue
            if isinstance(child, NavigableString):
                buf.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = (child.name or "").lower()
            if name in _SKIP_TAGS:
                continue
            if name in _HEADINGS:
                flush()
                text = " ".join(child.get_text(" ").split())
                if text:
                    blocks.append(Block(text, "heading", int(name[1])))
            elif name == "pre":
                flush()
                text = child.get_text().strip("\n")
                if text.strip():
                    blocks.append(Block(text, "code"))
            elif name == "br":
                buf.append("\n")
            elif name in _BLOCK_TAGS:
                flush()
                walk(child)
                flush()
            else:
                walk(child)

    walk(soup)
    flush()
    return blocks


class _TextBudget:
    """Counts the UTF-8 bytes of extracted text against ExtractionLimits.max_text."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, text: str) -> str:
        self.used += len(text.encode("utf-8", "surrogatepass"))
        if self.used > self.limit:
            raise TooLarge(f"the document's text exceeds the limit of {self.limit} bytes")
        return text


def _pdf_configuration(limits: ExtractionLimits) -> dict[str, int | bool]:
    """pypdf's own resource limits (pypdf.Configuration), every stream decoder capped at
    pdf_max_stream; the rest keep pypdf's defaults."""
    cap = limits.pdf_max_stream
    return {
        "maximum_declared_stream_length": cap,
        "array_based_stream_maximum_output_length": cap,
        "zlib_maximum_output_length": cap,
        "lzw_maximum_output_length": cap,
        "run_length_maximum_output_length": cap,
        "brotli_maximum_output_length": cap,
        "jbig2_maximum_output_length": cap,
        "image_maximum_buffer_size": cap,
        "stream_decoding_work_maximum_length": 4 * cap,
        "disable_legacy_handling": True,
    }


def _extract_pdf(data: bytes, limits: ExtractionLimits) -> list[Block]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError, PyPdfError

    if not _pdf_has_eof_marker(io.BytesIO(data)):
        raise UnsupportedType(f"PDF is truncated: no %%EOF marker in its last {PDF_EOF_WINDOW} bytes")
    objects = count_pdf_objects(io.BytesIO(data))
    if objects > limits.pdf_max_objects:
        raise TooLarge(f"PDF has {objects} objects (limit {limits.pdf_max_objects})")
    budget = _TextBudget(limits.max_text)
    try:
        with apply_configuration(**_pdf_configuration(limits)):
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                try:
                    reader.decrypt("")
                except Exception:  # noqa: BLE001 - pypdf raises several types here
                    raise ExtractionError("PDF is encrypted") from None
            indexed = len(reader.xref_objStm) + sum(len(v) for v in reader.xref.values())
            if indexed > limits.pdf_max_objects:
                raise TooLarge(f"PDF has {indexed} objects (limit {limits.pdf_max_objects})")
            pages = len(reader.pages)
            if pages > limits.pdf_max_pages:
                raise TooLarge(f"PDF has {pages} pages (limit {limits.pdf_max_pages})")
            blocks: list[Block] = []
            for number, page in enumerate(reader.pages, start=1):
                text = _clean(budget.take(page.extract_text() or ""))
                if text:
                    blocks.append(Block(text, "page", page=number))
            return blocks
    except LimitReachedError as exc:
        raise TooLarge(f"PDF is over a limit: {exc}") from None
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise ExtractionError(f"cannot read PDF: {exc}") from None


def _extract_docx(data: bytes, limits: ExtractionLimits) -> list[Block]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        with safezip.open_bounded(io.BytesIO(data), limits.zip) as zf:
            safezip.check_declared(zf, limits.zip)
            safezip.check_contents(zf, limits.zip)
    except safezip.ZipRuleError as exc:
        raise _zip_error(exc) from None
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - python-docx raises KeyError, ValueError, lxml errors, ...
        raise ExtractionError(f"cannot read DOCX: {exc}") from None
    blocks: list[Block] = []
    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            text = _clean(item.text)
            if not text:
                continue
            style = (item.style.name if item.style is not None else "") or ""
            if style.startswith("Heading") or style == "Title":
                level = int(style.split()[-1]) if style.split()[-1].isdigit() else 1
                blocks.append(Block(text, "heading", level))
            else:
                blocks.append(Block(text))
        elif isinstance(item, Table):
            for row in item.rows:
                cells: list[str] = []
                for cell in row.cells:
                    t = _clean(cell.text)
                    if t and (not cells or cells[-1] != t):  # merged cells repeat
                        cells.append(t)
                if cells:
                    blocks.append(Block(" | ".join(cells)))
    return blocks


def extract(data: bytes, content_type: str, limits: ExtractionLimits) -> list[Block]:
    """Text blocks of a document, in reading order, held to every rule of `limits`."""
    if len(data) > limits.max_upload:
        raise TooLarge(f"document is over the {limits.max_upload}-byte limit")
    if content_type in TEXT_TYPES and len(data) > limits.max_text:
        raise TooLarge(f"text, Markdown and HTML documents are limited to {limits.max_text} bytes")
    if content_type == TEXT_PLAIN:
        blocks = _extract_plain(data)
    elif content_type == TEXT_MARKDOWN:
        blocks = _extract_markdown(data)
    elif content_type == TEXT_HTML:
        blocks = _html_blocks(data)
    elif content_type == APPLICATION_PDF:
        blocks = _extract_pdf(data, limits)
    elif content_type == DOCX:
        blocks = _extract_docx(data, limits)
    else:
        raise UnsupportedType(f"unsupported content type {content_type}")
    budget = _TextBudget(limits.max_text)
    for block in blocks:
        budget.take(block.text)
    return blocks
