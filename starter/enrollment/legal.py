"""The legal documents a sign-up accepts: the terms of service and the privacy notice.

Both ship as package data (``models/data/legal/terms.md``, ``privacy.md``), each with a front
matter naming its ``version``. A consent record keeps the version and the SHA-256 of the exact
bytes accepted, so a later edit of a document without a new version still shows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

TERMS = "terms"
PRIVACY = "privacy"


@dataclass(frozen=True)
class LegalDocument:
    """One document as shipped: its version, title, text and the SHA-256 of its bytes."""

    kind: str
    version: str
    title: str
    text: str
    sha256: str


def parse_document(kind: str, raw: bytes) -> LegalDocument:
    """A document from its bytes: ``---`` front matter with ``version`` (and ``title``).

    Raises:
        ValueError: without front matter or a version (a packaging mistake, not user input).
    """
    text = raw.decode("utf-8")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in (s.strip() for s in lines[1:]):
        raise ValueError(f"legal document {kind}: no front matter (--- version: ... ---)")
    end = next(i for i, line in enumerate(lines[1:], start=1) if line.strip() == "---")
    meta: dict[str, str] = {}
    for line in lines[1:end]:
        key, sep, value = line.partition(":")
        if sep:
            meta[key.strip()] = value.strip()
    version = meta.get("version", "")
    if not version or len(version) > 32:
        raise ValueError(f"legal document {kind}: a version of 1-32 characters is required")
    return LegalDocument(
        kind=kind,
        version=version,
        title=meta.get("title", kind),
        text="\n".join(lines[end + 1 :]).strip() + "\n",
        sha256=hashlib.sha256(raw).hexdigest(),
    )


@cache
def document(kind: str) -> LegalDocument:
    """The shipped document ``terms`` or ``privacy`` (read once per process)."""
    if kind not in (TERMS, PRIVACY):
        raise ValueError(f"unknown legal document {kind!r}")
    raw = resources.files("models").joinpath(f"data/legal/{kind}.md").read_bytes()
    return parse_document(kind, raw)


def current_terms() -> LegalDocument:
    return document(TERMS)


def current_privacy() -> LegalDocument:
    return document(PRIVACY)
