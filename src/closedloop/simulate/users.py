"""Simulated users: how they react to an answer, and when they stop using the feature.

Most users give no explicit feedback. Some click a thumb (a little noisy, more often after a
wrong answer), few write a correction, and many edit, rephrase or abandon after a wrong
answer. A user who meets ``churn_bad`` bad answers among their last ``churn_window`` leaves
with probability ``churn_probability`` at each further bad answer, and does not come back.

Examples
--------
>>> import numpy as np
>>> r = react(False, np.random.default_rng(0), UserParams(), right_answer="the fix")
>>> r.explicit in (True, False)
True
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from closedloop.errors import ConfigError

__all__ = ["Reaction", "Retention", "Signal", "UserParams", "react"]

Signal = Literal["edit", "rephrase", "abandon"]


@dataclass(frozen=True)
class UserParams:
    """Every rate of the simulated users (probabilities per answer), with why.

    One reference point: in OpenAssistant's English conversations
    (``oasst_en100_assistant_feedback``, 687 assistant messages, 2031 reviews), volunteer
    reviewers clicked a thumb on 60 % of reviews (42 % up, 18 % down; 30 % of thumbs are
    down). Those are raters asked to judge, so they bound thumbs from above; users of a
    product thumb far less, hence the defaults below.

    Attributes
    ----------
    thumbs_right, thumbs_wrong
        Probability of a thumb after a right / a wrong answer (0.03 and 0.10: product users
        rarely click, and more often when annoyed).
    thumbs_noise
        Probability that a thumb points the wrong way (0.1: misclicks, and "up" meaning
        "thanks for trying").
    correction_wrong
        Probability of a written correction (carrying the right answer) after a wrong answer
        (0.02: writing takes effort; few do it).
    edit_wrong, rephrase_wrong, abandon_wrong
        Probabilities of the implicit signals after a wrong answer, exclusive (0.15, 0.25,
        0.15: most users who got a wrong answer do something about it; the rest ignore it).
    rephrase_right, abandon_right
        The same signals after a right answer (0.03 and 0.02: implicit signals are noisy).
    churn_window, churn_bad
        A user who met ``churn_bad`` bad answers among their last ``churn_window`` may leave
        (5 of 10: repeated, not single, failures drive users away).
    churn_probability
        Probability of leaving at each bad answer while over the threshold (0.15: some
        users are patient, or have no alternative). Over ~70 requests a user, this keeps
        ~99 % of users at 10 % wrong answers, ~85 % at 20 % and ~50 % at 30 %.
    """

    thumbs_right: float = 0.03
    thumbs_wrong: float = 0.10
    thumbs_noise: float = 0.1
    correction_wrong: float = 0.02
    edit_wrong: float = 0.15
    rephrase_wrong: float = 0.25
    abandon_wrong: float = 0.15
    rephrase_right: float = 0.03
    abandon_right: float = 0.02
    churn_window: int = 10
    churn_bad: int = 5
    churn_probability: float = 0.15

    def with_feedback(self, factor: float) -> UserParams:
        """These parameters with the explicit feedback rates (thumbs and corrections) scaled
        by ``factor`` (capped at 1); implicit signals and churn unchanged."""
        if factor < 0:
            raise ConfigError("the feedback factor must be non-negative")
        return replace(
            self,
            thumbs_right=min(self.thumbs_right * factor, 1.0),
            thumbs_wrong=min(self.thumbs_wrong * factor, 1.0),
            correction_wrong=min(self.correction_wrong * factor, 1.0),
        )

    def __post_init__(self) -> None:
        """Reject rates outside [0, 1] and an impossible churn rule."""
        rates = (
            "thumbs_right",
            "thumbs_wrong",
            "thumbs_noise",
            "correction_wrong",
            "edit_wrong",
            "rephrase_wrong",
            "abandon_wrong",
            "rephrase_right",
            "abandon_right",
            "churn_probability",
        )
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1")
        if self.edit_wrong + self.rephrase_wrong + self.abandon_wrong > 1.0:
            raise ConfigError("edit_wrong + rephrase_wrong + abandon_wrong must be at most 1")
        if self.rephrase_right + self.abandon_right > 1.0:
            raise ConfigError("rephrase_right + abandon_right must be at most 1")
        if not 1 <= self.churn_bad <= self.churn_window:
            raise ConfigError("need 1 <= churn_bad <= churn_window")


@dataclass(frozen=True, slots=True)
class Reaction:
    """What one user did after one answer (all empty: no reaction at all)."""

    thumbs: int | None = None
    """+1, -1 or ``None`` (no thumb)."""
    correction: str | None = None
    """The right answer, written by the user, or ``None``."""
    signal: Signal | None = None
    """An implicit signal, or ``None``."""

    @property
    def explicit(self) -> bool:
        """Whether the user gave explicit feedback (a thumb or a correction)."""
        return self.thumbs is not None or self.correction is not None


def react(
    correct: bool, rng: np.random.Generator, params: UserParams, *, right_answer: str = ""
) -> Reaction:
    """Draw a user's reaction to a right (``correct``) or wrong answer."""
    thumbs: int | None = None
    if rng.random() < (params.thumbs_right if correct else params.thumbs_wrong):
        up = correct if rng.random() >= params.thumbs_noise else not correct
        thumbs = 1 if up else -1
    correction = None
    if not correct and rng.random() < params.correction_wrong:
        correction = right_answer
    roll = rng.random()
    signal: Signal | None = None
    if correct:
        if roll < params.rephrase_right:
            signal = "rephrase"
        elif roll < params.rephrase_right + params.abandon_right:
            signal = "abandon"
    elif roll < params.edit_wrong:
        signal = "edit"
    elif roll < params.edit_wrong + params.rephrase_wrong:
        signal = "rephrase"
    elif roll < params.edit_wrong + params.rephrase_wrong + params.abandon_wrong:
        signal = "abandon"
    return Reaction(thumbs=thumbs, correction=correction, signal=signal)


class Retention:
    """Which users still use the feature, by the churn rule of :class:`UserParams`."""

    def __init__(self, users: int, params: UserParams) -> None:
        self.users = users
        self.params = params
        self._recent: dict[int, deque[bool]] = {}
        self._gone: set[int] = set()

    def active(self, user: int) -> bool:
        """Whether ``user`` still uses the feature."""
        return user not in self._gone

    def record(self, user: int, correct: bool, rng: np.random.Generator) -> bool:
        """Record an answer to ``user``; return whether the user stays."""
        recent = self._recent.setdefault(user, deque(maxlen=self.params.churn_window))
        recent.append(correct)
        if (
            not correct
            and recent.count(False) >= self.params.churn_bad
            and rng.random() < self.params.churn_probability
        ):
            self._gone.add(user)
            del self._recent[user]
            return False
        return True

    @property
    def retained_share(self) -> float:
        """Share of all users who have not left (users who never asked count as retained)."""
        return 1.0 - len(self._gone) / self.users
