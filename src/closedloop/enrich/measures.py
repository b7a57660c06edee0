"""Derived implicit measures: numbers computed from ``signal`` events and session timelines.

Each measure is a small pure function whose docstring gives its definition. :class:`Measurer`
turns one :class:`~closedloop.events.Signal` into :class:`Measure` values, each tagged with its
``source``:

* ``"client"`` - the value restates what the client reported (an indicator such as ``copy``,
  or a dwell time, capped);
* ``"derived"`` - closedloop computed it (an edit similarity from the text the user kept, a
  reciprocal rank, a rephrase or an abandonment inferred from the session).

The edit measures default to the **character-level Indel ratio** (rapidfuzz ``fuzz.ratio``):
on 2,000 real machine-translation outputs and their human post-edits (MLQE-PE en-de and
ro-en) it correlates with human quality scores at least as well as HTER does, and better
than token-level or Levenshtein variants on most counts; characters also need no tokeniser
(``bench/quality_eval.py``, ``docs/benchmarks.md``).

Examples
--------
>>> from closedloop.events import Signal
>>> measurer = Measurer()
>>> edit = Signal(interaction_id="i-1", kind="edit", text="The cat sat on a mat .")
>>> for m in measurer(edit, output="The cat sat on the mat ."):
...     print(m.name, round(m.value, 3), m.source)
edit_similarity 0.913 derived
edit_distance 0.087 derived
kept_length_ratio 0.917 derived
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rapidfuzz import fuzz, utils
from rapidfuzz.distance import Indel, Levenshtein

from closedloop.events import Signal

__all__ = [
    "INDICATOR_KINDS",
    "PASSIVE_KINDS",
    "EditLevel",
    "EditMethod",
    "Measure",
    "MeasureParams",
    "MeasureSource",
    "Measurer",
    "capped_dwell_seconds",
    "edit_distance",
    "edit_similarity",
    "input_similarity",
    "is_rephrase",
    "kept_length_ratio",
    "reciprocal_rank",
    "session_abandoned",
]

MeasureSource = Literal["client", "derived"]
EditLevel = Literal["token", "char"]
EditMethod = Literal["levenshtein", "indel"]

INDICATOR_KINDS = ("copy", "accept", "regenerate", "escalate", "abandon", "rephrase")
"""Signal kinds whose measure is an indicator: 1.0 when the client sent the signal."""

PASSIVE_KINDS = frozenset({"dwell", "abandon"})
"""Timeline kinds that are not a follow-up: they do not save an answer from abandonment."""


@dataclass(frozen=True, kw_only=True)
class Measure:
    """One implicit measure of one interaction.

    Parameters
    ----------
    name
        What is measured, e.g. ``"edit_similarity"`` or ``"regenerate"``.
    value
        The measure's value; indicators are 1.0, similarities lie in [0, 1].
    source
        ``"client"`` when the value restates what the client sent, ``"derived"`` when
        closedloop computed it.
    """

    name: str
    value: float
    source: MeasureSource


@dataclass(frozen=True, kw_only=True)
class MeasureParams:
    """Configuration of :class:`Measurer`.

    Parameters
    ----------
    edit_level
        Compare texts as characters (``"char"``, default) or whitespace-separated tokens.
    edit_method
        ``"indel"`` (default): the rapidfuzz ``ratio`` (insertions and deletions only,
        normalised by both lengths); ``"levenshtein"``: edits normalised by the longer text.
    dwell_cap_seconds
        Dwell times above this many seconds count as this many (default 300 s): a tab left
        open says nothing more.
    rephrase_threshold
        :func:`input_similarity` at or above which a next input counts as a rephrase
        (default 0.7).
    """

    edit_level: EditLevel = "char"
    edit_method: EditMethod = "indel"
    dwell_cap_seconds: float = 300.0
    rephrase_threshold: float = 0.7

    def __post_init__(self) -> None:
        if not self.dwell_cap_seconds > 0:
            raise ValueError("dwell_cap_seconds must be positive")
        if not 0.0 <= self.rephrase_threshold <= 1.0:
            raise ValueError("rephrase_threshold must lie within [0, 1]")


def _units(text: str, level: EditLevel) -> str | list[str]:
    if level == "token":
        return text.split()
    if level == "char":
        return text
    raise ValueError(f"unknown edit level {level!r}; use 'token' or 'char'")


def edit_similarity(
    output: str,
    kept: str,
    *,
    level: EditLevel = "char",
    method: EditMethod = "indel",
) -> float:
    """How much of the model's output the user kept, in [0, 1].

    With ``method="indel"`` (default) it is the rapidfuzz ratio ``1 - d_indel /
    (len(output) + len(kept))``, where ``d_indel`` counts inserted and deleted units (a
    substitution costs two). With ``method="levenshtein"`` it is ``1 - d / max(len(output),
    len(kept))`` where ``d`` is the Levenshtein distance (a substitution costs one). Units are
    characters (``level="char"``, default) or whitespace-separated tokens. Two empty texts
    are identical (1.0). The measure is symmetric.

    >>> edit_similarity("the cat sat", "the cat sat")
    1.0
    >>> edit_similarity("abcd", "abce")  # 2 edits (delete d, insert e) over 8 characters
    0.75
    >>> edit_similarity("abcd", "abce", method="levenshtein")  # 1 substitution over 4
    0.75
    >>> edit_similarity("the cat sat", "the dog sat", level="token", method="levenshtein")
    0.6666666666666667
    >>> edit_similarity("ab", "")
    0.0
    """
    a, b = _units(output, level), _units(kept, level)
    if method == "levenshtein":
        return float(Levenshtein.normalized_similarity(a, b))
    if method == "indel":
        return float(Indel.normalized_similarity(a, b))
    raise ValueError(f"unknown edit method {method!r}; use 'levenshtein' or 'indel'")


def edit_distance(
    output: str,
    kept: str,
    *,
    level: EditLevel = "char",
    method: EditMethod = "indel",
) -> float:
    """Normalised edit distance between the output and the kept text: ``1 - edit_similarity``.

    >>> edit_distance("the cat sat", "the cat sat")
    0.0
    >>> edit_distance("abcd", "wxyz")
    1.0
    """
    return 1.0 - edit_similarity(output, kept, level=level, method=method)


def kept_length_ratio(output: str, kept: str) -> float:
    """Length of the kept text over the length of the output, in characters.

    Below 1 the user cut the answer, above 1 they added to it. An empty output gives 1.0 when
    nothing was kept either, else ``inf``.

    >>> kept_length_ratio("abcd", "ab")
    0.5
    >>> kept_length_ratio("", "")
    1.0
    """
    if not output:
        return 1.0 if not kept else math.inf
    return len(kept) / len(output)


def input_similarity(previous: str, following: str) -> float:
    """Similarity in [0, 1] of a user's next input to their previous one.

    The rapidfuzz ratio (normalised Indel similarity) of the two texts after lower-casing,
    replacing non-alphanumeric characters with spaces and trimming (rapidfuzz
    ``default_process``); symmetric. Two inputs that are empty after processing count as
    different (0.0): there is nothing to repeat.

    >>> input_similarity("How do I reset my password?", "how do i reset my password")
    1.0
    >>> round(input_similarity("reset password", "reset my password"), 3)
    0.903
    >>> input_similarity("?", "!")
    0.0
    """
    a, b = utils.default_process(previous), utils.default_process(following)
    if not a and not b:
        return 0.0
    return float(fuzz.ratio(a, b)) / 100.0


def is_rephrase(previous: str, following: str, threshold: float = 0.7) -> bool:
    """Whether the next input closely repeats the previous one: a derived ``rephrase``.

    True when :func:`input_similarity` is at least ``threshold``. A user who asks the same
    thing again, reworded, did not get what they wanted from the answer in between.

    >>> is_rephrase("reset password", "how do I reset my password")
    True
    >>> is_rephrase("reset password", "thanks, and how do I delete my account?")
    False
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must lie within [0, 1]")
    return input_similarity(previous, following) >= threshold


def reciprocal_rank(rank: int, *, first: int = 0) -> float:
    """Reciprocal rank of a clicked item: ``1 / (rank - first + 1)``.

    ``first`` is the rank of the top item (0 by default, as ``Signal.rank`` counts from 0).

    >>> reciprocal_rank(0), reciprocal_rank(3)
    (1.0, 0.25)
    >>> reciprocal_rank(1, first=1)
    1.0
    """
    if rank < first:
        raise ValueError(f"rank {rank} lies before the first rank {first}")
    return 1.0 / (rank - first + 1)


def capped_dwell_seconds(duration_ms: float, cap_seconds: float = 300.0) -> float:
    """Dwell time in seconds, capped at ``cap_seconds``.

    >>> capped_dwell_seconds(12_500)
    12.5
    >>> capped_dwell_seconds(3_600_000)
    300.0
    """
    if duration_ms < 0:
        raise ValueError("duration_ms must not be negative")
    return min(duration_ms / 1000.0, cap_seconds)


def _seconds(value: float | dt.datetime) -> float:
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)


def session_abandoned(
    timeline: Sequence[tuple[float | dt.datetime, str]],
    *,
    now: float | dt.datetime,
    after_seconds: float = 600.0,
    answer_kind: str = "interaction",
) -> bool | None:
    """Whether a session ended on an answer the user did not follow up: derived abandonment.

    ``timeline`` is the session's events in time order, as ``(timestamp, kind)`` pairs where
    ``kind`` is ``answer_kind`` for an AI answer and a signal or feedback kind otherwise;
    timestamps are seconds or aware datetimes. Looking at the last answer:

    * ``True`` - an ``abandon`` signal followed it, or no follow-up came within
      ``after_seconds`` and that much time has passed by ``now``;
    * ``False`` - a follow-up (any event but :data:`PASSIVE_KINDS`) came within
      ``after_seconds``;
    * ``None`` - undecided: no answer yet, or the window is still open.

    >>> session_abandoned([(0, "interaction"), (5, "copy")], now=1_000)
    False
    >>> session_abandoned([(0, "interaction"), (5, "dwell")], now=1_000)
    True
    >>> session_abandoned([(0, "interaction")], now=60) is None
    True
    """
    if after_seconds <= 0:
        raise ValueError("after_seconds must be positive")
    times = [_seconds(t) for t, _ in timeline]
    if any(later < earlier for earlier, later in zip(times, times[1:], strict=False)):
        raise ValueError("the timeline must be in time order")
    last = max((i for i, (_, kind) in enumerate(timeline) if kind == answer_kind), default=None)
    if last is None:
        return None
    answered = times[last]
    for t, (_, kind) in zip(times[last + 1 :], timeline[last + 1 :], strict=True):
        if kind == "abandon":
            return True
        if kind not in PASSIVE_KINDS:
            return not t - answered <= after_seconds
    if _seconds(now) - answered >= after_seconds:
        return True
    return None


class Measurer:
    """Turn one signal into its measures.

    Parameters
    ----------
    params
        Edit level and method, dwell cap and rephrase threshold.

    Examples
    --------
    >>> from closedloop.events import Signal
    >>> m = Measurer()
    >>> [(x.name, x.value, x.source) for x in m(Signal(interaction_id="i", kind="copy"))]
    [('copy', 1.0, 'client')]
    >>> [(x.name, x.value) for x in m(Signal(interaction_id="i", kind="click", rank=1))]
    [('click', 1.0), ('click_reciprocal_rank', 0.5)]
    >>> rephrase = Signal(interaction_id="i", kind="rephrase", text="reset my password")
    >>> [(x.name, round(x.value, 3)) for x in m(rephrase, previous_input="reset password")]
    [('rephrase', 1.0), ('rephrase_similarity', 0.903)]
    """

    def __init__(self, params: MeasureParams = MeasureParams()) -> None:
        self.params = params

    def __call__(
        self,
        signal: Signal,
        *,
        output: str | None = None,
        previous_input: str | None = None,
    ) -> tuple[Measure, ...]:
        """Measures of ``signal``.

        ``output`` is the interaction's output (needed for the edit measures);
        ``previous_input`` the input the rephrase followed (needed for its similarity).
        Whatever cannot be computed is left out.
        """
        p = self.params
        kind = signal.kind
        if kind == "edit":
            if output is None or signal.text is None:
                return ()
            sim = edit_similarity(output, signal.text, level=p.edit_level, method=p.edit_method)
            return (
                Measure(name="edit_similarity", value=sim, source="derived"),
                Measure(name="edit_distance", value=1.0 - sim, source="derived"),
                Measure(
                    name="kept_length_ratio",
                    value=kept_length_ratio(output, signal.text),
                    source="derived",
                ),
            )
        if kind == "dwell":
            if signal.duration_ms is None:
                return ()
            seconds = capped_dwell_seconds(signal.duration_ms, p.dwell_cap_seconds)
            return (Measure(name="dwell_seconds", value=seconds, source="client"),)
        if kind == "click":
            found = [Measure(name="click", value=1.0, source="client")]
            if signal.rank is not None:
                rr = reciprocal_rank(signal.rank)
                found.append(Measure(name="click_reciprocal_rank", value=rr, source="derived"))
            return tuple(found)
        found = [Measure(name=kind, value=1.0, source="client")]
        if kind == "rephrase" and signal.text is not None and previous_input is not None:
            sim = input_similarity(previous_input, signal.text)
            found.append(Measure(name="rephrase_similarity", value=sim, source="derived"))
        return tuple(found)

    def rephrase(self, previous_input: str, following_input: str) -> tuple[Measure, ...]:
        """Derive a ``rephrase`` from two consecutive inputs of one session.

        >>> Measurer().rephrase("reset password", "thanks!")
        ()
        >>> [m.source for m in Measurer().rephrase("reset password", "reset password")]
        ['derived', 'derived']
        """
        sim = input_similarity(previous_input, following_input)
        if sim < self.params.rephrase_threshold:
            return ()
        return (
            Measure(name="rephrase", value=1.0, source="derived"),
            Measure(name="rephrase_similarity", value=sim, source="derived"),
        )
