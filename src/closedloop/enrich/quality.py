"""One quality estimate in [0, 1] per interaction, with the inputs that decided it.

Explicit feedback wins when there is any: each scored item is mapped to [0, 1] (thumbs up 1,
down 0; a rating by its scale, ``(rating - min) / (max - min)``; a correction
:attr:`QualityParams.correction_quality`, 0.1 by default) and the estimate is their mean.
Labels and comments carry no score and are not used.

Without explicit feedback the estimate is a **weighted mean of implicit evidence** next to a
neutral prior: every measure votes for a target value with a weight,

    quality = (prior_weight * prior + sum(weight_i * target_i)) / (prior_weight + sum(weight_i))

======================  ==========================  =======  =========================
measure                 target                      weight   why
======================  ==========================  =======  =========================
edit_similarity         the similarity itself       3.0      closest to a direct grade
accept                  1                           2.0      the user took the answer
copy                    1                           1.0      the user reused it
click_reciprocal_rank   0.5 + 0.5 * reciprocal rank 0.5      a cited source was useful
dwell_seconds           min(seconds / 30, 1)        0.5      weak: reading or stuck
rephrase                0                           1.5      asked again
regenerate              0                           2.0      asked for another answer
abandon                 0                           1.0      left without follow-up
escalate                0                           3.0      asked for a human
======================  ==========================  =======  =========================

The prior is 0.5 with weight 1, so one copy gives 0.75 and one regenerate 0.33. Each kind
counts at most :attr:`QualityParams.max_repeats` times. Adding a negative measure (target 0)
never raises the estimate and adding a positive one (target 1) never lowers it, because a
weighted mean moves towards each new target. The edit weight is validated against human
scores in ``bench/quality_eval.py``; the other weights are judgement, documented here.

Examples
--------
>>> from closedloop.events import Feedback
>>> from closedloop.enrich.measures import Measure
>>> estimate = QualityEstimator()
>>> copy = Measure(name="copy", value=1.0, source="client")
>>> estimate(measures=[copy]).value
0.75
>>> down = Feedback(interaction_id="i-1", thumbs=-1)
>>> q = estimate(feedback=[down], measures=[copy])
>>> q.value, q.basis, [e.name for e in q.evidence]
(0.0, 'explicit', ['thumbs'])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from closedloop.enrich.measures import Measure
from closedloop.events import Feedback

__all__ = [
    "DEFAULT_WEIGHTS",
    "Evidence",
    "QualityBasis",
    "QualityEstimate",
    "QualityEstimator",
    "QualityParams",
    "explicit_evidence",
]

QualityBasis = Literal["explicit", "implicit", "prior"]

DEFAULT_WEIGHTS: dict[str, float] = {
    "edit_similarity": 3.0,
    "accept": 2.0,
    "copy": 1.0,
    "click_reciprocal_rank": 0.5,
    "dwell_seconds": 0.5,
    "rephrase": 1.5,
    "regenerate": 2.0,
    "abandon": 1.0,
    "escalate": 3.0,
}
"""Weight of each implicit measure in the weighted mean (see the module docstring)."""

_POSITIVE = frozenset({"accept", "copy"})
_NEGATIVE = frozenset({"rephrase", "regenerate", "abandon", "escalate"})


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """One input that decided a quality estimate.

    ``target`` is the quality it votes for, in [0, 1]; ``weight`` its weight in the mean
    (explicit items weigh 1 each); ``source`` is ``"user"``, ``"reviewer"`` or
    ``"evaluator"`` for explicit feedback, ``"client"`` or ``"derived"`` for measures.
    """

    name: str
    target: float
    weight: float
    source: str


@dataclass(frozen=True, kw_only=True)
class QualityEstimate:
    """A quality estimate in [0, 1] and its provenance.

    ``basis`` says what decided it: ``"explicit"`` feedback, ``"implicit"`` measures, or the
    ``"prior"`` alone when there was nothing to go on.
    """

    value: float
    basis: QualityBasis
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True, kw_only=True)
class QualityParams:
    """Configuration of :class:`QualityEstimator`.

    Parameters
    ----------
    weights
        Weight of each implicit measure by name; measures not named are ignored.
    prior
        Quality assumed with no evidence (default 0.5).
    prior_weight
        Weight of the prior in the mean (default 1.0).
    correction_quality
        Quality of an answer the user corrected (default 0.1).
    dwell_full_seconds
        Dwell at which dwell votes for quality 1 (default 30 s).
    max_repeats
        Occurrences of one measure counted at most (default 3).
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    prior: float = 0.5
    prior_weight: float = 1.0
    correction_quality: float = 0.1
    dwell_full_seconds: float = 30.0
    max_repeats: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.prior <= 1.0 or not 0.0 <= self.correction_quality <= 1.0:
            raise ValueError("prior and correction_quality must lie within [0, 1]")
        if self.prior_weight <= 0:
            raise ValueError("prior_weight must be positive")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must not be negative")
        if self.dwell_full_seconds <= 0 or self.max_repeats < 1:
            raise ValueError("dwell_full_seconds must be positive and max_repeats at least 1")


def explicit_evidence(
    feedback: Sequence[Feedback], *, correction_quality: float = 0.1
) -> tuple[Evidence, ...]:
    """The scored items of explicit feedback, each mapped to [0, 1].

    >>> from closedloop.events import Feedback
    >>> items = explicit_evidence([Feedback(interaction_id="i", rating=4, correction="x")])
    >>> [(e.name, e.target) for e in items]
    [('rating', 0.75), ('correction', 0.1)]
    >>> explicit_evidence([Feedback(interaction_id="i", comment="meh")])
    ()
    """
    found: list[Evidence] = []
    for fb in feedback:
        if fb.thumbs is not None:
            target = 1.0 if fb.thumbs > 0 else 0.0
            found.append(Evidence(name="thumbs", target=target, weight=1.0, source=fb.source))
        if fb.rating is not None:
            span = fb.rating_max - fb.rating_min
            target = min(max((fb.rating - fb.rating_min) / span, 0.0), 1.0)
            found.append(Evidence(name="rating", target=target, weight=1.0, source=fb.source))
        if fb.correction is not None:
            found.append(
                Evidence(name="correction", target=correction_quality, weight=1.0, source=fb.source)
            )
    return tuple(found)


class QualityEstimator:
    """Estimate an interaction's quality from its feedback and implicit measures.

    Parameters
    ----------
    params
        Weights, prior, correction quality, dwell scale and repeat cap.

    Examples
    --------
    >>> from closedloop.enrich.measures import Measure
    >>> edit = Measure(name="edit_similarity", value=0.9, source="derived")
    >>> regen = Measure(name="regenerate", value=1.0, source="client")
    >>> q = QualityEstimator()(measures=[edit, regen])
    >>> round(q.value, 3), q.basis, [e.name for e in q.evidence]
    (0.533, 'implicit', ['edit_similarity', 'regenerate'])
    >>> QualityEstimator()().basis
    'prior'
    """

    def __init__(self, params: QualityParams | None = None) -> None:
        self.params = params if params is not None else QualityParams()

    def __call__(
        self, *, feedback: Sequence[Feedback] = (), measures: Sequence[Measure] = ()
    ) -> QualityEstimate:
        """The quality estimate of one interaction."""
        p = self.params
        explicit = explicit_evidence(feedback, correction_quality=p.correction_quality)
        if explicit:
            value = sum(e.target for e in explicit) / len(explicit)
            return QualityEstimate(value=value, basis="explicit", evidence=explicit)
        implicit = self.implicit_evidence(measures)
        if not implicit:
            return QualityEstimate(value=p.prior, basis="prior")
        total = p.prior_weight + sum(e.weight for e in implicit)
        value = (p.prior_weight * p.prior + sum(e.weight * e.target for e in implicit)) / total
        return QualityEstimate(value=min(max(value, 0.0), 1.0), basis="implicit", evidence=implicit)

    def implicit_evidence(self, measures: Sequence[Measure]) -> tuple[Evidence, ...]:
        """The measures that vote, with their targets and weights (see the module docstring)."""
        p = self.params
        seen: Counter[str] = Counter()
        found: list[Evidence] = []
        for m in measures:
            weight = p.weights.get(m.name, 0.0)
            if weight <= 0 or seen[m.name] >= p.max_repeats:
                continue
            target = self._target(m)
            if target is None:
                continue
            seen[m.name] += 1
            found.append(Evidence(name=m.name, target=target, weight=weight, source=m.source))
        return tuple(found)

    def _target(self, m: Measure) -> float | None:
        if m.name in _POSITIVE or m.name in _NEGATIVE:
            if m.value <= 0:  # an indicator that did not fire is no evidence
                return None
            return 1.0 if m.name in _POSITIVE else 0.0
        if m.name == "edit_similarity":
            return min(max(m.value, 0.0), 1.0)
        if m.name == "click_reciprocal_rank":
            return 0.5 + 0.5 * min(max(m.value, 0.0), 1.0)
        if m.name == "dwell_seconds":
            return min(max(m.value, 0.0) / self.params.dwell_full_seconds, 1.0)
        return None
