"""Enrich one session: measures, quality per interaction, and the session's aggregates.

Pure computation over what the store holds for a session (its interactions in time order,
each with the feedback and signals joined to it); :mod:`closedloop.enrich.job` loads and
saves. Two measures need the whole session:

* **rephrase** (derived): the user's next input closely repeats the previous one
  (:func:`~closedloop.enrich.measures.input_similarity` at or above the threshold); it is
  a measure of the *earlier* interaction, whose answer the user asked again.
* **abandon** (derived): the session ended on an answer with no follow-up within
  ``abandon_after_seconds`` (:func:`~closedloop.enrich.measures.session_abandoned`); a
  measure of the last interaction.

A client may send ``rephrase`` and ``abandon`` signals itself. The client's signal wins and the
derived one is not added, so one event is never counted twice; a measure's ``source`` says
which it is.

Examples
--------
>>> import datetime as dt
>>> t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
>>> turns = [
...     Turn(id="a", ts=t0, input_text="reset my password", output="Go to settings."),
...     Turn(id="b", ts=t0 + dt.timedelta(seconds=30), input_text="how to reset my password?",
...          output="Click 'Forgot password'."),
... ]
>>> result = enrich_session(turns, now=t0 + dt.timedelta(hours=1))
>>> [(e.id, [m.name for m in e.measures], e.quality.basis) for e in result.turns]
[('a', ['rephrase', 'rephrase_similarity'], 'implicit'), ('b', ['abandon'], 'implicit')]
>>> result.summary.turns, result.summary.abandoned, result.summary.abandon_source
(2, True, 'derived')
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from closedloop.enrich.measures import Measure, MeasureParams, Measurer, session_abandoned
from closedloop.enrich.quality import QualityEstimate, QualityEstimator
from closedloop.events import Feedback, Message, Signal

__all__ = [
    "SessionParams",
    "SessionResult",
    "SessionSummary",
    "Turn",
    "TurnResult",
    "enrich_session",
    "user_text",
]


def user_text(value: str | Sequence[Message]) -> str | None:
    """The user's words in an interaction's input: the text, or the last user message.

    >>> user_text([Message(role="system", content="Be brief."), Message(role="user", content="hi")])
    'hi'
    """
    if isinstance(value, str):
        return value
    for message in reversed(value):
        if message.role == "user" and message.content:
            return message.content
    return None


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One interaction of a session, with the feedback and signals joined to it."""

    id: str
    ts: dt.datetime
    input_text: str | None = None
    output: str | None = None
    feedback: tuple[tuple[dt.datetime, Feedback], ...] = ()
    signals: tuple[tuple[dt.datetime, Signal], ...] = ()


@dataclass(frozen=True, kw_only=True)
class TurnResult:
    """What enrichment found for one interaction."""

    id: str
    measures: tuple[Measure, ...]
    quality: QualityEstimate


@dataclass(frozen=True, kw_only=True)
class SessionSummary:
    """A session's aggregates: ``abandoned`` is ``None`` while its window is still open."""

    turns: int
    first_ts: dt.datetime
    last_ts: dt.datetime
    last_interaction_id: str
    feedback_count: int
    signal_count: int
    abandoned: bool | None
    abandon_source: Literal["client", "derived"] | None
    mean_quality: float


@dataclass(frozen=True, kw_only=True)
class SessionResult:
    """Per-interaction results, in time order, and the session's summary."""

    turns: tuple[TurnResult, ...]
    summary: SessionSummary


@dataclass(frozen=True, kw_only=True)
class SessionParams:
    """Configuration of :func:`enrich_session`.

    Parameters
    ----------
    measures
        Edit level and method, dwell cap, rephrase threshold.
    estimator
        The quality estimator.
    abandon_after_seconds
        An answer with no follow-up for this long ends its session as abandoned
        (default 1800 s).
    derive
        Derive ``rephrase`` and ``abandon`` from the timeline (default ``True``; a session
        id is needed, so interactions without one never get derived measures).
    """

    measures: MeasureParams = MeasureParams()
    estimator: QualityEstimator = field(default_factory=QualityEstimator)
    abandon_after_seconds: float = 1800.0
    derive: bool = True


def enrich_session(
    turns: Sequence[Turn], *, now: dt.datetime, params: SessionParams | None = None
) -> SessionResult:
    """Measures and quality of every turn of one session, and the session's summary.

    ``turns`` must be in time order (ties keep their order) and not empty.
    """
    if not turns:
        raise ValueError("a session has at least one turn")
    p = params if params is not None else SessionParams()
    measurer = Measurer(p.measures)
    found: list[list[Measure]] = []
    for turn in turns:
        measures: list[Measure] = []
        for _, signal in turn.signals:
            measures.extend(measurer(signal, output=turn.output, previous_input=turn.input_text))
        found.append(measures)

    if p.derive:
        for i in range(len(turns) - 1):
            if _has(found[i], "rephrase"):
                continue  # the client said so: the derived one would count it twice
            before, after = turns[i].input_text, turns[i + 1].input_text
            if before and after:
                found[i].extend(measurer.rephrase(before, after))

    timeline = sorted(
        [(t.ts, "interaction") for t in turns]
        + [(ts, s.kind) for t in turns for ts, s in t.signals]
        + [(ts, "feedback") for t in turns for ts, _ in t.feedback],
        key=lambda item: item[0],
    )
    abandoned = session_abandoned(timeline, now=now, after_seconds=p.abandon_after_seconds)
    source: Literal["client", "derived"] | None = None
    last_answer = turns[-1].ts
    if any(s.kind == "abandon" and ts >= last_answer for t in turns for ts, s in t.signals):
        # The app said the user left after the last answer (on whichever turn it sent it):
        # its word decides, and the derived measure would count the same leaving twice.
        abandoned, source = True, "client"
    elif abandoned:
        if p.derive:
            source = "derived"
            found[-1].append(Measure(name="abandon", value=1.0, source="derived"))
        else:
            abandoned = None

    results = tuple(
        TurnResult(
            id=turn.id,
            measures=tuple(measures),
            quality=p.estimator(feedback=[fb for _, fb in turn.feedback], measures=measures),
        )
        for turn, measures in zip(turns, found, strict=True)
    )
    summary = SessionSummary(
        turns=len(turns),
        first_ts=min(ts for ts, _ in timeline),
        last_ts=max(ts for ts, _ in timeline),
        last_interaction_id=turns[-1].id,
        feedback_count=sum(len(t.feedback) for t in turns),
        signal_count=sum(len(t.signals) for t in turns),
        abandoned=abandoned,
        abandon_source=source,
        mean_quality=sum(r.quality.value for r in results) / len(results),
    )
    return SessionResult(turns=results, summary=summary)


def _has(measures: Sequence[Measure], name: str) -> bool:
    return any(m.name == name for m in measures)
