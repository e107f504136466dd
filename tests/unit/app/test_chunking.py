"""Adaptive chunking per type."""

from __future__ import annotations

import random

import pytest
from govstack_app.chunking import POLICIES, chunk_document, split_text
from govstack_app.extract import APPLICATION_PDF, DOCX, TEXT_HTML, TEXT_MARKDOWN, TEXT_PLAIN, Block


def words_text(n: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 10))) for _ in range(n)]
    out, sentence = [], []
    for i, w in enumerate(words):
        sentence.append(w)
        if i % 12 == 11:
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
        if i % 60 == 59:
            out.append("\n\n")
    return " ".join(out + sentence)


@pytest.mark.parametrize(("size", "overlap"), [(1000, 200), (800, 150), (300, 0), (50, 10)])
def test_split_text_bounds_coverage_and_overlap(size: int, overlap: int) -> None:
    text = words_text(3000)
    pieces = split_text(text, size, overlap)
    assert all(0 < len(p) <= size for p in pieces)
    # every word is kept, in order
    words = text.split()
    seen = " ".join(pieces).split()
    it = iter(seen)
    assert all(any(w == s for s in it) for w in words)
    if overlap >= 100:  # each piece starts inside the tail of the previous one
        for a, b in zip(pieces, pieces[1:], strict=False):
            assert b[:20] in a[-overlap - 20 :]
    # pieces mostly end on sentence or paragraph boundaries
    if size >= 300:  # longer than a sentence: pieces end on sentence or paragraph boundaries
        ends = sum(p.endswith((".", "\n")) for p in pieces[:-1])
        assert ends >= (len(pieces) - 1) * 0.8


def test_split_text_small_and_empty() -> None:
    assert split_text("  short  ", 1000, 200) == ["short"]
    assert split_text("   ", 1000, 200) == []
    with pytest.raises(ValueError):
        split_text("x", 100, 100)


def test_split_text_without_separators_cuts_hard() -> None:
    pieces = split_text("x" * 2500, 1000, 200)
    assert [len(p) for p in pieces] == [1000, 1000, 900]


def test_policy_table() -> None:
    assert POLICIES[TEXT_PLAIN].size == 1000 and POLICIES[TEXT_PLAIN].overlap == 200
    assert POLICIES[TEXT_MARKDOWN].strategy == "sections"
    assert POLICIES[TEXT_HTML].strategy == "blocks"
    assert (POLICIES[APPLICATION_PDF].size, POLICIES[APPLICATION_PDF].overlap) == (800, 150)
    assert POLICIES[DOCX].strategy == "blocks"


def test_markdown_chunks_follow_headings() -> None:
    blocks = [
        Block("Guide", "heading", 1),
        Block("Passports", "heading", 2),
        Block("Renew online.", "para"),
        Block("Taxes", "heading", 2),
        Block("File by June. " * 150, "para"),
    ]
    chunks = chunk_document(blocks, TEXT_MARKDOWN)
    assert chunks[0].text == "Guide\n\nPassports\n\nRenew online."
    assert chunks[0].section == "Guide / Passports"
    assert all(c.section == "Taxes" for c in chunks[1:]) and len(chunks) > 2
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(len(c.text) <= 1000 for c in chunks)


def test_pdf_chunks_never_cross_pages() -> None:
    blocks = [Block(words_text(400, seed=p), "page", page=p) for p in (1, 2, 3)]
    chunks = chunk_document(blocks, APPLICATION_PDF)
    assert {c.page for c in chunks} == {1, 2, 3}
    for c in chunks:
        assert len(c.text) <= 800
        assert c.text.split()[0] in blocks[c.page - 1].text


def test_html_and_docx_group_whole_paragraphs() -> None:
    paras = [Block(f"Paragraph {i} " + "word " * 40) for i in range(20)]
    for ctype in (TEXT_HTML, DOCX):
        chunks = chunk_document([Block("Title", "heading", 1), *paras], ctype)
        assert all(len(c.text) <= 1000 for c in chunks)
        joined = "\n\n".join(c.text for c in chunks)
        for p in paras:  # no paragraph is ever split
            assert p.text.strip() in joined
        assert chunks[0].text.startswith("Title") and chunks[0].section == "Title"


def test_oversized_paragraph_is_split_with_overlap() -> None:
    chunks = chunk_document([Block(words_text(1000))], DOCX)
    assert len(chunks) > 3 and all(len(c.text) <= 1000 for c in chunks)


def test_no_blocks_no_chunks() -> None:
    for ctype in POLICIES:
        assert chunk_document([], ctype) == []
