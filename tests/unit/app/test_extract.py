"""Sniffing, limits and text extraction for each supported type."""

from __future__ import annotations

import io

import pytest
from govstack_app import samples
from govstack_app.extract import (
    APPLICATION_PDF,
    DOCX,
    TEXT_HTML,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    EmptyDocument,
    ExtractionError,
    ExtractionLimits,
    TooLarge,
    UnsupportedType,
    check_upload,
    extract,
    sniff,
)

BIG = ExtractionLimits(
    max_upload=10**9,
    max_unpacked=10**9,
    max_text=10**9,
    max_zip_entries=10_000,
    max_zip_ratio=10**6,
    pdf_max_pages=10**6,
    pdf_max_objects=10**7,
    pdf_max_stream=10**9,
)


def limits(**kw: int) -> ExtractionLimits:
    return ExtractionLimits(**(BIG.as_dict() | kw))


def texts(blocks):
    return [b.text for b in blocks]


def test_plain_text() -> None:
    data = "Hello world.\n\nÜmlauts and Kiswahili: habari.\r\n".encode()
    assert sniff(data, "notes.txt") == TEXT_PLAIN
    assert sniff(data, "no-extension") == TEXT_PLAIN
    assert texts(extract(data, TEXT_PLAIN, BIG)) == ["Hello world.\n\nÜmlauts and Kiswahili: habari."]


def test_plain_text_legacy_encodings() -> None:
    assert sniff("caf\xe9 na chai".encode("cp1252"), "a.txt") == TEXT_PLAIN
    utf16 = "\ufeffhabari ya asubuhi".encode("utf-16")
    assert sniff(utf16, "a.txt") == TEXT_PLAIN
    assert texts(extract(utf16, TEXT_PLAIN, BIG)) == ["habari ya asubuhi"]


def test_markdown_needs_the_extension_and_keeps_headings() -> None:
    data = samples.make_markdown(
        "Guide", {"Passports": "Renew **online** with [the portal](https://x).", "Taxes": "File by June."}
    )
    assert sniff(data, "guide.md") == TEXT_MARKDOWN
    assert sniff(data, "guide.txt") == TEXT_PLAIN
    blocks = extract(data, TEXT_MARKDOWN, BIG)
    assert [(b.kind, b.text) for b in blocks] == [
        ("heading", "Guide"),
        ("heading", "Passports"),
        ("para", "Renew online with the portal."),
        ("heading", "Taxes"),
        ("para", "File by June."),
    ]


def test_markdown_code_fence_is_kept() -> None:
    data = b"# Code\n\n```python\ndef f():\n    return 1\n```\n"
    blocks = extract(data, TEXT_MARKDOWN, BIG)
    assert blocks[-1].kind == "code" and "return 1" in blocks[-1].text


def test_html_sniffed_from_bytes_drops_scripts_and_styles() -> None:
    data = samples.make_html("Land", ["First <b>bold</b> para.", "Second para."])
    assert sniff(data, "page.txt") == TEXT_HTML  # doctype wins over the extension
    blocks = extract(data, TEXT_HTML, BIG)
    assert texts(blocks) == ["Land", "First bold para.", "Second para."]
    assert blocks[0].kind == "heading"
    joined = " ".join(texts(blocks))
    assert "hidden" not in joined and "color" not in joined


def test_html_fragment_with_html_extension() -> None:
    data = b"<div><p>one</p><ul><li>two</li><li>three</li></ul></div>"
    assert sniff(data, "frag.html") == TEXT_HTML
    assert sniff(data, "frag.txt") == TEXT_PLAIN
    assert texts(extract(data, TEXT_HTML, BIG)) == ["one", "two", "three"]


def test_pdf_pages() -> None:
    data = samples.make_pdf([["Page one about land titles."], ["Page two: water permits."], []])
    assert sniff(data, "x.bin") == APPLICATION_PDF
    blocks = extract(data, APPLICATION_PDF, BIG)
    assert [(b.page, b.text) for b in blocks] == [(1, "Page one about land titles."), (2, "Page two: water permits.")]


def test_corrupt_pdf_is_an_extraction_error() -> None:
    with pytest.raises(ExtractionError):
        extract(b"%PDF-1.4\nthis is not really a pdf", APPLICATION_PDF, BIG)


def test_pdf_text_limit() -> None:
    data = samples.make_pdf([["x" * 80] * 40])
    with pytest.raises(TooLarge):
        extract(data, APPLICATION_PDF, limits(max_text=1000))


def test_docx_paragraphs_headings_and_tables() -> None:
    data = samples.make_docx(
        "Business licence", ["Para one.", "Para two."], [["Fee", "KES 10,000"], ["Valid", "1 year"]]
    )
    assert sniff(data, "whatever.bin") == DOCX
    blocks = extract(data, DOCX, BIG)
    assert [(b.kind, b.text) for b in blocks] == [
        ("heading", "Business licence"),
        ("para", "Para one."),
        ("para", "Para two."),
        ("para", "Fee | KES 10,000"),
        ("para", "Valid | 1 year"),
    ]


def test_zip_bomb_is_refused_before_and_during_extraction() -> None:
    bomb = samples.make_docx_bomb(3 * 1024 * 1024)
    assert len(bomb) < 100_000  # tiny on the wire
    assert sniff(bomb, "bomb.docx") == DOCX
    with pytest.raises(TooLarge, match="unpacks to"):
        check_upload(io.BytesIO(bomb), DOCX, limits(max_unpacked=2 * 1024 * 1024))
    with pytest.raises(TooLarge):
        extract(bomb, DOCX, limits(max_unpacked=2 * 1024 * 1024))
    check_upload(io.BytesIO(bomb), DOCX, limits(max_unpacked=4 * 1024 * 1024))  # under the limit: fine


def test_unpacked_check_ignores_non_zip_types() -> None:
    check_upload(io.BytesIO(b"x" * 100), TEXT_PLAIN, limits(max_unpacked=10))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (samples.make_png(), "image/png"),
        (samples.make_plain_zip(), "not a DOCX"),
        (b"\x00\x01\x02\x03binary\x00", "binary"),
        (b"{\\rtf1\\ansi hello}", "rtf"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 100, "executable|binary"),
        (b"PK\x03\x04garbage-not-a-zip", "corrupt zip"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 600, "msword|x-ole|binary|cfb"),
    ],
)
def test_unsupported_types(data: bytes, match: str) -> None:
    with pytest.raises(UnsupportedType, match=f"(?i){match}"):
        sniff(data, "file.docx")


def test_empty_upload() -> None:
    with pytest.raises(EmptyDocument):
        sniff(b"", "empty.txt")
