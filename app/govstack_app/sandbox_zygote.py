"""Imported once by the extraction forkserver (sandbox.py), never by the worker itself: loads the
parsers and runs one extraction of every supported type, so each forked child starts with
imports done and lazy caches filled (compiled regexes, markdown-it's rules, python-docx's and
pypdf's first-use tables) instead of paying for them per document."""

from __future__ import annotations

import gc

from . import samples
from .extract import ExtractionLimits, sniff
from .sandbox import extract_chunks

_WARM_LIMITS = ExtractionLimits(
    max_upload=1 << 20,
    max_unpacked=1 << 22,
    max_text=1 << 20,
    max_zip_entries=100,
    max_zip_ratio=100,
    pdf_max_pages=10,
    pdf_max_objects=100,
    pdf_max_stream=1 << 20,
)


def warm_up() -> None:
    for kind in samples.TOPICS:
        filename, data = samples.topic_document(kind)
        extract_chunks(data, sniff(data, filename), _WARM_LIMITS)


warm_up()
# Children share the zygote's pages copy-on-write; a garbage collection in a child would touch
# (and so copy) every inherited object. Frozen objects are never collected or touched.
gc.collect()
gc.freeze()
