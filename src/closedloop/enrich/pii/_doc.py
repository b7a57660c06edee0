"""One text and the cheap views of it that every finder shares, computed once and lazily.

The finders of :mod:`closedloop.enrich.pii` used to scan the whole text once each, mostly with
case-insensitive alternations (the slowest kind of ``re`` scan). A :class:`Doc` computes the
lower-cased text, the count of digits and the capitalised words once; finders gate on them
(``doc.digits >= 7`` before any phone regex runs, no name lookup without a capitalised word)
and run their remaining patterns case-sensitively on :attr:`Doc.low`.

>>> doc = Doc("Call Ana Lopez on 555-0132")
>>> doc.digits, [tok for _, _, tok in doc.caps]
(7, ['Call', 'Ana', 'Lopez'])
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REPLACEMENT", "Doc", "Token"]

Token = tuple[int, int, str]

# A capitalised word as the name finders see it: letters, with inner apostrophes and
# hyphens. No look-behind in these patterns (it would slow every position of the scan):
# `_word_start` checks the character before each hit instead. Outside ASCII the class holds
# the Latin, Greek and Cyrillic blocks, upper and lower case (a class of only the uppercase
# letters of Unicode is slow in ``re``), and `str.isupper` keeps the capitalised hits.
_CAP_ASCII = re.compile(r"[A-Z](?:[^\W\d_]|['’\-](?=[^\W\d_])){0,40}")
_CAP_WIDE = re.compile(
    r"[A-Z\u00c0-\u00de\u0100-\u024f\u0370-\u03ff\u0400-\u052f\u1e00-\u1eff]"
    r"(?:[^\W\d_]|['’\-](?=[^\W\d_])){0,40}"
)
# What the redactor puts in place of a value: "<EMAIL>", "<PHONE:3f2a9c1b>", "<REDACTED>".
REPLACEMENT = re.compile(
    r"<(?:[A-Z]{2,12}(?::[0-9a-f]{4,64})?|REDACTED(?::TOO_LONG)?)>", re.IGNORECASE
)
_ASCII_DIGITS = "0123456789"
_ANY_DIGIT = re.compile(r"\d")


class Doc:
    """``text`` with its lower-cased twin (same length), digit count and capitalised words."""

    __slots__ = ("_caps", "digits", "low", "memo", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        low = text.lower()
        if len(low) != len(text):  # "İ".lower() is two code points: keep offsets aligned
            low = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
        if "<" in text:
            # the replacements of an earlier pass ("<PHONE>", "<ADDRESS>") must not act as
            # cues ("phone", "address") on a second pass: blank them in the lower-cased twin
            low = REPLACEMENT.sub(_blank, low)
        self.low = low
        if text.isascii():
            self.digits = sum(map(text.count, _ASCII_DIGITS))
        else:
            self.digits = len(_ANY_DIGIT.findall(text))
        self._caps: list[Token] | None = None
        self.memo: dict[str, Any] = {}  # per-finder lazies (cue positions, ...)

    @property
    def caps(self) -> list[Token]:
        """``(start, end, word)`` of every word that starts with an uppercase letter."""
        if self._caps is None:
            text = self.text
            if text == self.low:
                self._caps = []
            elif text.isascii():
                self._caps = [
                    (m.start(), m.end(), m.group())
                    for m in _CAP_ASCII.finditer(text)
                    if _word_start(text, m.start())
                ]
            else:
                self._caps = [
                    (m.start(), m.end(), m.group())
                    for m in _CAP_WIDE.finditer(text)
                    if m.group()[0].isupper() and _word_start(text, m.start())
                ]
        return self._caps


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group())


def _word_start(text: str, i: int) -> bool:
    """Whether a word starts at ``i``: no letter before it, nor a letter and ``'`` or ``-``."""
    if i == 0:
        return True
    before = text[i - 1]
    if before.isalpha():
        return False
    return not (before in "'’-" and i > 1 and text[i - 2].isalpha())
