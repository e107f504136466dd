"""Adaptive chunking by document type (see the table in app/README.md)."""

from __future__ import annotations

from dataclasses import dataclass

from .extract import APPLICATION_PDF, DOCX, TEXT_HTML, TEXT_MARKDOWN, TEXT_PLAIN, Block


@dataclass(frozen=True)
class Policy:
    size: int  # max characters per chunk
    overlap: int  # characters repeated between consecutive chunks cut from one run of text
    strategy: str  # "sections" | "blocks" | "pages"


POLICIES: dict[str, Policy] = {
    TEXT_PLAIN: Policy(1000, 200, "sections"),
    TEXT_MARKDOWN: Policy(1000, 200, "sections"),
    TEXT_HTML: Policy(1000, 0, "blocks"),
    APPLICATION_PDF: Policy(800, 150, "pages"),
    DOCX: Policy(1000, 0, "blocks"),
}
OVERSIZE_OVERLAP = 200  # a single block bigger than the chunk size is cut with this overlap


@dataclass
class Chunk:
    index: int
    text: str
    page: int | None = None
    section: str | None = None


_SEPARATORS = ("\n\n", "\n", ". ", "! ", "? ", "; ", ", ", " ")


def _cut_point(text: str, lo: int, hi: int) -> int:
    """Best place to end a chunk inside text[lo:hi]: after the strongest separator, else hi."""
    for sep in _SEPARATORS:
        pos = text.rfind(sep, lo, hi)
        if pos != -1:
            return pos + len(sep)
    return hi


def split_text(text: str, size: int, overlap: int) -> list[str]:
    """Split into pieces of at most `size` characters, ending on paragraph, line, sentence or word
    boundaries where possible, each starting `overlap` characters (rounded to a word) before the
    end of the previous one."""
    if size <= 0 or overlap < 0 or overlap >= size:
        raise ValueError("need 0 <= overlap < size")
    text = text.strip()
    if not text:
        return []
    if len(text) <= size:
        return [text]
    pieces: list[str] = []
    start = 0
    n = len(text)
    while start < n:
        hi = min(start + size, n)
        end = hi if hi == n else _cut_point(text, start + size // 2, hi)
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        if overlap and nxt < end:
            ws = text.find(" ", nxt, end)
            nl = text.find("\n", nxt, end)
            cands = [p for p in (ws, nl) if p != -1]
            if cands:
                nxt = min(cands) + 1
        while nxt < n and text[nxt].isspace():
            nxt += 1
        start = nxt
    return pieces


def _sections(blocks: list[Block]) -> list[tuple[str | None, str]]:
    """Group blocks into (heading, text) sections; a heading opens a new section, except that
    consecutive headings (a title straight above a sub-heading) stay together."""
    sections: list[tuple[str | None, list[str]]] = []
    heading: str | None = None
    parts: list[str] = []
    body = False
    for b in blocks:
        if b.kind == "heading":
            if body:
                sections.append((heading, parts))
                parts, body = [], False
            heading = b.text if heading is None or not parts else f"{heading} / {b.text}"
            parts.append(b.text)
        else:
            parts.append(b.text)
            body = True
    if parts:
        sections.append((heading, parts))
    return [(h, "\n\n".join(p)) for h, p in sections]


def chunk_blocks(blocks: list[Block], content_type: str) -> list[Chunk]:
    policy = POLICIES[content_type]
    out: list[tuple[str, int | None, str | None]] = []
    if policy.strategy == "sections":
        for heading, text in _sections(blocks):
            out.extend((t, None, heading) for t in split_text(text, policy.size, policy.overlap))
    elif policy.strategy == "pages":
        for b in blocks:
            out.extend((t, b.page, None) for t in split_text(b.text, policy.size, policy.overlap))
    else:  # "blocks": whole paragraphs grouped up to size; a heading starts a new group
        group: list[str] = []
        length = 0
        heading: str | None = None
        group_heading: str | None = None

        def flush() -> None:
            nonlocal group, length
            if group:
                out.append(("\n\n".join(group), None, group_heading))
            group, length = [], 0

        for b in blocks:
            text = b.text.strip()
            if not text:
                continue
            if b.kind == "heading":
                flush()
                heading = text
            if len(text) > policy.size:
                flush()
                group_heading = heading
                out.extend((t, None, heading) for t in split_text(text, policy.size, OVERSIZE_OVERLAP))
                continue
            if group and length + 2 + len(text) > policy.size:
                flush()
            if not group:
                group_heading = heading
            group.append(text)
            length += len(text) + (2 if length else 0)
        flush()
    return [Chunk(i, t, page, section) for i, (t, page, section) in enumerate(out)]


def chunk_document(blocks: list[Block], content_type: str) -> list[Chunk]:
    return chunk_blocks(blocks, content_type)
