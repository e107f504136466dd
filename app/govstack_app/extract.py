"""Content sniffing, upload limits (incl. zip bombs) and text extraction per document type.

Types are decided from the bytes, never from the client's Content-Type; the filename's extension
only tells Markdown from plain text (Markdown cannot be told apart from the bytes).
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass

TEXT_PLAIN = "text/plain"
TEXT_MARKDOWN = "text/markdown"
TEXT_HTML = "text/html"
APPLICATION_PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
SUPPORTED_TYPES = (TEXT_PLAIN, TEXT_MARKDOWN, TEXT_HTML, APPLICATION_PDF, DOCX)

MARKDOWN_EXTENSIONS = (".md", ".markdown", ".mdown", ".mkd")
HTML_EXTENSIONS = (".html", ".htm", ".xhtml")
MAX_ZIP_ENTRIES = 10_000


class ExtractionError(Exception):
    """The document cannot be turned into text (corrupt, encrypted, ...)."""


class UnsupportedType(ExtractionError):
    """HTTP 415."""


class TooLarge(ExtractionError):
    """HTTP 413: over the upload limit, or unpacking would exceed the unpacked-size limit."""


class EmptyDocument(ExtractionError):
    """HTTP 422: zero bytes."""


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
    sample = text[:8192]
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f\v")
    if sample and controls / len(sample) > 0.01:
        return None
    return text


def sniff(data: bytes, filename: str = "") -> str:
    """Return one of SUPPORTED_TYPES or raise UnsupportedType / EmptyDocument."""
    if not data:
        raise EmptyDocument("the upload is empty")
    head = data[:8192]
    if b"%PDF-" in head[:1024]:
        return APPLICATION_PDF
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = set(zf.namelist())
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise UnsupportedType(f"corrupt zip archive: {exc}") from None
        if "word/document.xml" in names:
            return DOCX
        raise UnsupportedType("zip archive that is not a DOCX document")
    import filetype

    kind = filetype.guess(head)
    if kind is not None:
        raise UnsupportedType(f"unsupported content type {kind.mime}")
    if head.lstrip().startswith(b"{\\rtf"):
        raise UnsupportedType("unsupported content type application/rtf")
    text = _decode_text(data)
    if text is None:
        raise UnsupportedType("binary content of an unknown type (not a PDF, DOCX or text)")
    lower = filename.lower()
    if _HTML_START.match(head) or (lower.endswith(HTML_EXTENSIONS) and _HTML_TAG.search(text[:65536])):
        return TEXT_HTML
    if lower.endswith(MARKDOWN_EXTENSIONS):
        return TEXT_MARKDOWN
    return TEXT_PLAIN


def check_unpacked_size(data: bytes, content_type: str, max_unpacked: int) -> None:
    """Refuse decompression bombs before anything is stored: the unpacked size of a DOCX (a zip)
    is the sum of its entries' sizes from the central directory. CPython's zipfile never inflates
    an entry past its declared size, so a lying header cannot get around this check."""
    if content_type != DOCX:
        return
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise TooLarge(f"DOCX has {len(infos)} entries (limit {MAX_ZIP_ENTRIES})")
    total = sum(i.file_size for i in infos)
    if total > max_unpacked:
        raise TooLarge(f"DOCX unpacks to {total} bytes, over the limit of {max_unpacked} bytes")


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


def _extract_pdf(data: bytes, max_unpacked: int) -> list[Block]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:  # noqa: BLE001 - pypdf raises several types here
                raise ExtractionError("PDF is encrypted") from None
        blocks: list[Block] = []
        total = 0
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            total += len(text.encode("utf-8"))
            if total > max_unpacked:
                raise TooLarge(f"PDF text exceeds the unpacked-size limit of {max_unpacked} bytes")
            text = _clean(text)
            if text:
                blocks.append(Block(text, "page", page=number))
        return blocks
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise ExtractionError(f"cannot read PDF: {exc}") from None


def _extract_docx(data: bytes, max_unpacked: int) -> list[Block]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    check_unpacked_size(data, DOCX, max_unpacked)
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


def extract(data: bytes, content_type: str, max_unpacked: int) -> list[Block]:
    """Text blocks of a document, in reading order."""
    if content_type == TEXT_PLAIN:
        return _extract_plain(data)
    if content_type == TEXT_MARKDOWN:
        return _extract_markdown(data)
    if content_type == TEXT_HTML:
        return _html_blocks(data)
    if content_type == APPLICATION_PDF:
        return _extract_pdf(data, max_unpacked)
    if content_type == DOCX:
        return _extract_docx(data, max_unpacked)
    raise UnsupportedType(f"unsupported content type {content_type}")
