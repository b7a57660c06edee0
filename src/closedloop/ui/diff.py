"""A word-level diff of two texts as HTML: what the user removed in ``<del>``, what they
added in ``<ins>``, every piece of text escaped.

Texts are split into sentences and lines first and those are matched; changed runs of them
are then compared word by word (words, punctuation and whitespace are the tokens), so long
texts stay fast and a small edit shows as a small change.

>>> str(word_diff("The cat sat.", "The black cat sat!"))
'The<ins> black</ins> cat sat<del>.</del><ins>!</ins>'
>>> str(word_diff("a <b>", "a <i>"))
'a &lt;<del>b</del><ins>i</ins>&gt;'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

from markupsafe import Markup, escape

__all__ = ["DiffStats", "diff_stats", "word_diff"]

#: Tokens: a run of word characters, a run of whitespace, or one other character.
_TOKEN = re.compile(r"\w+|\s+|[^\w\s]", re.UNICODE)
#: Units of the first pass: up to a line end, or a sentence end and the space after it.
_UNIT = re.compile(r".*?(?:\n|[.!?](?=\s)\s*|$)", re.DOTALL)
#: Above this many token pairs a changed run is shown as removed and added whole.
_MAX_PAIRS = 1_000_000


@dataclass(frozen=True, kw_only=True)
class DiffStats:
    """How much changed, in words (whitespace not counted)."""

    removed: int
    added: int
    kept: int

    @property
    def changed(self) -> bool:
        """Whether the texts differ in any word."""
        return bool(self.removed or self.added)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _units(text: str) -> list[str]:
    return [u for u in _UNIT.findall(text) if u]


def _word_ops(a: str, b: str) -> list[tuple[str, str, str]]:
    """``(tag, old, new)`` runs of a word-level comparison of ``a`` and ``b``."""
    ta, tb = _tokens(a), _tokens(b)
    if len(ta) * len(tb) > _MAX_PAIRS:
        return [("replace", a, b)]
    matcher = SequenceMatcher(None, ta, tb, autojunk=False)
    return [
        (tag, "".join(ta[i1:i2]), "".join(tb[j1:j2]))
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
    ]


def _ops(a: str, b: str) -> list[tuple[str, str, str]]:
    """Sentences and lines matched first, then each changed run word by word."""
    if a == b:
        return [("equal", a, b)] if a else []
    ua, ub = _units(a), _units(b)
    # The units both texts start and end with are kept as they are (linear work); only the
    # middle is matched, and a middle too large to match in bounded time is one change
    # (SequenceMatcher is quadratic, and a user may send 100,000 characters).
    head = 0
    while head < min(len(ua), len(ub)) and ua[head] == ub[head]:
        head += 1
    tail = 0
    while tail < min(len(ua), len(ub)) - head and ua[-1 - tail] == ub[-1 - tail]:
        tail += 1
    ma, mb = ua[head : len(ua) - tail], ub[head : len(ub) - tail]
    out: list[tuple[str, str, str]] = [("equal", "".join(ua[:head]), "".join(ub[:head]))]
    if len(ma) * len(mb) > _MAX_PAIRS:
        out.append(("replace", "".join(ma), "".join(mb)))
    else:
        for tag, i1, i2, j1, j2 in SequenceMatcher(None, ma, mb, autojunk=False).get_opcodes():
            old, new = "".join(ma[i1:i2]), "".join(mb[j1:j2])
            out.extend([(tag, old, new)] if tag != "replace" else _word_ops(old, new))
    out.append(("equal", "".join(ua[len(ua) - tail :]), "".join(ub[len(ub) - tail :])))
    return _tidy(out)


def _tidy(ops: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Fold a lone space between two changes into them, then merge adjacent changes, so
    ``the quick`` → ``a slow`` reads as one change, not two."""
    folded: list[tuple[str, str, str]] = []
    for k, (tag, old, new) in enumerate(ops):
        between = 0 < k < len(ops) - 1 and ops[k - 1][0] != "equal" and ops[k + 1][0] != "equal"
        if tag == "equal" and between and old.isspace():
            tag = "replace"
        folded.append((tag, old, new))
    merged: list[tuple[str, str, str]] = []
    for tag, old, new in folded:
        if tag == "equal" and not old:
            continue
        if merged and tag != "equal" and merged[-1][0] != "equal":
            _, o, n = merged[-1]
            merged[-1] = ("replace", o + old, n + new)
        else:
            merged.append((tag, old, new))
    return merged


def word_diff(before: str | None, after: str | None) -> Markup:
    """``before`` → ``after`` as escaped HTML: unchanged text as is, removed text in
    ``<del>``, added text in ``<ins>`` (a replacement is a ``<del>`` then an ``<ins>``)."""
    parts: list[Markup] = []
    for tag, old, new in _ops(before or "", after or ""):
        if tag == "equal":
            parts.append(escape(old))
            continue
        if old:
            parts.append(Markup("<del>%s</del>") % old)
        if new:
            parts.append(Markup("<ins>%s</ins>") % new)
    return Markup("").join(parts)


def diff_stats(before: str | None, after: str | None) -> DiffStats:
    """Words removed, added and kept between ``before`` and ``after``.

    >>> diff_stats("the cat sat", "the dog sat")
    DiffStats(removed=1, added=1, kept=2)
    """

    def words(text: str) -> int:
        return sum(1 for t in _tokens(text) if not t.isspace())

    removed = added = kept = 0
    for tag, old, new in _ops(before or "", after or ""):
        if tag == "equal":
            kept += words(old)
        else:
            removed += words(old)
            added += words(new)
    return DiffStats(removed=removed, added=added, kept=kept)
