"""The two baseline arms: STATIC (never changes) and HUMAN-IN-THE-LOOP (reviewers label a
sample every day, fixes ship in weekly releases), and :func:`sweep`, which reruns the arms over
a grid of drift strengths and feedback rates.

Both run day by day over the same :class:`~closedloop.simulate.world.World` with the same
seed: the same requests (minus those of users who already left) and the same per-day random
streams for the users' reactions (which diverge once the arms' answers differ). Each
records per day the accuracy against the ground truth and the retained share, and per
incident the day it was detected and the day it was fixed.

Examples
--------
>>> from closedloop.embed.lexical import LexicalEmbedder
>>> from closedloop.simulate.world import World, WorldParams
>>> world = World(WorldParams.quick(days=3, requests_per_day=50))
>>> result = run_static(world, TextVectors(LexicalEmbedder()))
>>> [d.day for d in result.days]
[0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from closedloop.errors import ConfigError
from closedloop.simulate.assistant import Assistant, TextVectors
from closedloop.simulate.users import Reaction, Retention, UserParams, react
from closedloop.simulate.world import KBEntry, Request, World, WorldParams

__all__ = [
    "ArmFactory",
    "ArmResult",
    "ArmRunner",
    "DayHook",
    "DayRecord",
    "HITLParams",
    "IncidentRecord",
    "Interaction",
    "SweepArm",
    "SweepCell",
    "baseline_arms",
    "hitl_hook",
    "run_arm",
    "run_hitl",
    "run_static",
    "sweep",
    "sweep_runs",
]


@dataclass(frozen=True)
class HITLParams:
    """The human-in-the-loop process.

    Attributes
    ----------
    reviews_per_day
        Interactions reviewers label a day (10: 0.5 % of the default 2,000 requests a day).
        Review programmes for high-volume features read well under 1 % of the traffic (at
        the published million inferences a day, 0.5 % is already 5,000 reviews a day, a team
        of about ten full-time reviewers); keep the share, not the count, when changing
        ``requests_per_day`` (:meth:`for_traffic`).
    release_every_days
        Days between releases (7: weekly); fixes found in review ship at the end of the
        release day and are live the next day.
    """

    reviews_per_day: int = 10
    release_every_days: int = 7

    REVIEW_SHARE: ClassVar[float] = 0.005
    """The default share of the traffic that reviewers read."""

    @classmethod
    def for_traffic(cls, requests_per_day: int, share: float = REVIEW_SHARE) -> HITLParams:
        """The review budget that reads ``share`` of ``requests_per_day`` (at least 1)."""
        if not 0.0 <= share <= 1.0:
            raise ConfigError("the review share must be between 0 and 1")
        return cls(reviews_per_day=max(round(requests_per_day * share), 1))

    @classmethod
    def quick(cls) -> HITLParams:
        """The default review share for :meth:`WorldParams.quick`'s traffic."""
        return cls.for_traffic(WorldParams.quick().requests_per_day)

    def __post_init__(self) -> None:
        """Reject a negative review budget or a release cadence under one day."""
        if self.reviews_per_day < 0 or self.release_every_days < 1:
            raise ConfigError("need reviews_per_day >= 0 and release_every_days >= 1")


@dataclass(frozen=True, slots=True)
class Interaction:
    """One served request: what the assistant recognised, whether the answer was right (ground
    truth, for measurement and reviewers only), and what the user did."""

    request: Request
    predicted: str
    correct: bool
    reaction: Reaction


@dataclass(frozen=True, slots=True)
class DayRecord:
    """One day of one arm."""

    day: int
    served: int
    correct: int
    retained: float
    """Share of users still using the feature at the end of the day."""

    @property
    def accuracy(self) -> float:
        """Share of the day's answers that were right (1.0 when nothing was served)."""
        return self.correct / self.served if self.served else 1.0


@dataclass
class IncidentRecord:
    """An incident as one arm lived it (days are ``None`` until it happens)."""

    name: str
    onset: int
    intents: tuple[str, ...]
    detected: int | None = None
    fixed: int | None = None


@dataclass
class ArmResult:
    """Everything one arm recorded."""

    arm: str
    model_version: str
    days: list[DayRecord] = field(default_factory=list)
    incidents: list[IncidentRecord] = field(default_factory=list)


DayHook = Callable[[int, list[Interaction], Assistant, list[IncidentRecord]], None]
"""Called at the end of each day with the day's interactions; may change the assistant."""


def run_arm(
    arm: str,
    world: World,
    vectors: TextVectors,
    hook: DayHook | None = None,
    *,
    users: UserParams | None = None,
    k: int = 3,
    on_day: Callable[[int], None] | None = None,
) -> ArmResult:
    """Run one arm over the whole world; ``hook`` is the arm's process (``None``: static)."""
    params = users or UserParams()
    seed = world.params.seed
    assistant = Assistant(vectors, world.initial_examples(), world.initial_kb(), k=k)
    retention = Retention(world.params.users, params)
    result = ArmResult(arm=arm, model_version=assistant.model_version)
    result.incidents = [IncidentRecord(i.name, i.onset, i.intents) for i in world.incidents]
    for day in range(world.params.days):
        requests = [r for r in world.requests(day) if retention.active(r.user)]
        predicted = assistant.predict([r.text for r in requests])
        react_rng = np.random.default_rng([seed, day, 1])
        churn_rng = np.random.default_rng([seed, day, 2])
        interactions: list[Interaction] = []
        for request, intent in zip(requests, predicted, strict=True):
            if not retention.active(request.user):
                continue
            ok = world.is_correct(request, intent, assistant.kb)
            truth = world.true_answer(request.intent, day)
            reaction = react(ok, react_rng, params, right_answer=truth)
            retention.record(request.user, ok, churn_rng)
            interactions.append(Interaction(request, intent, ok, reaction))
        if hook is not None:
            hook(day, interactions, assistant, result.incidents)
        for inc in result.incidents:
            # a fix shipped tonight is live tomorrow: dated, as in the closed loop, on the
            # first day its answers are served right
            if inc.fixed is None and inc.onset <= day and _all_valid(world, assistant, inc, day):
                inc.fixed = day + 1
        correct = sum(i.correct for i in interactions)
        result.days.append(DayRecord(day, len(interactions), correct, retention.retained_share))
        if on_day is not None:
            on_day(day)
    return result


def _all_valid(world: World, assistant: Assistant, inc: IncidentRecord, day: int) -> bool:
    entries = [assistant.kb.get(i) for i in inc.intents]
    return all(
        e is not None and world.answer_valid(i, e.written_day, day)
        for i, e in zip(inc.intents, entries, strict=True)
    )


def run_static(
    world: World,
    vectors: TextVectors,
    *,
    users: UserParams | None = None,
    on_day: Callable[[int], None] | None = None,
) -> ArmResult:
    """The STATIC arm: the launch assistant, unchanged for the whole run."""
    return run_arm("static", world, vectors, None, users=users, on_day=on_day)


def hitl_hook(world: World, params: HITLParams) -> DayHook:
    """The human-in-the-loop process as a day hook.

    Every day reviewers label ``reviews_per_day`` interactions drawn at random with their true
    intent. Misrecognised texts become examples; intents whose KB answer was missing or seen
    wrong get a rewritten answer. Both ship at the end of each release day. An incident is
    detected on the day a reviewer first sees a wrong KB answer of one of its intents.
    """
    pending_examples: dict[str, str] = {}
    pending_kb: set[str] = set()

    def hook(
        day: int,
        interactions: list[Interaction],
        assistant: Assistant,
        incidents: list[IncidentRecord],
    ) -> None:
        rng = np.random.default_rng([world.params.seed, day, 3])
        n = min(params.reviews_per_day, len(interactions))
        for j in rng.choice(len(interactions), size=n, replace=False) if n else ():
            seen = interactions[int(j)]
            truth = seen.request.intent
            if seen.predicted != truth:
                pending_examples[seen.request.text] = truth
                if truth not in assistant.kb:
                    pending_kb.add(truth)
            elif not seen.correct:
                pending_kb.add(truth)
                for inc in incidents:
                    if inc.detected is None and truth in inc.intents and inc.onset <= day:
                        inc.detected = day
        if (day + 1) % params.release_every_days == 0:
            assistant.add_examples(pending_examples.items())
            for intent in sorted(pending_kb):
                assistant.set_answer(intent, KBEntry(world.true_answer(intent, day), day))
            pending_examples.clear()
            pending_kb.clear()

    return hook


def run_hitl(
    world: World,
    vectors: TextVectors,
    params: HITLParams | None = None,
    *,
    users: UserParams | None = None,
    on_day: Callable[[int], None] | None = None,
) -> ArmResult:
    """The HUMAN-IN-THE-LOOP arm: daily review of a sample, weekly releases of the fixes."""
    hook = hitl_hook(world, params or HITLParams())
    return run_arm("human-in-the-loop", world, vectors, hook, users=users, on_day=on_day)


ArmFactory = Callable[[World, UserParams], DayHook | None]
"""Makes an arm's day hook for a world and its users (``None``: the static arm)."""


ArmRunner = Callable[[World, TextVectors, UserParams], ArmResult]
"""Runs a whole arm over a world with given users (an arm that is not a day hook)."""


@dataclass(frozen=True)
class SweepArm:
    """One arm of a sweep: how to make its day hook (or, for an arm that is not one, how to
    run it), and whether its accuracy depends on the users' feedback (an arm that never reads
    feedback is run once per drift factor)."""

    hook: ArmFactory | None = None
    uses_feedback: bool = True
    runner: ArmRunner | None = None

    def __post_init__(self) -> None:
        """Exactly one of ``hook`` and ``runner``."""
        if (self.hook is None) == (self.runner is None):
            raise ConfigError("a sweep arm needs exactly one of hook and runner")

    def run(self, name: str, world: World, vectors: TextVectors, users: UserParams) -> ArmResult:
        """This arm's result over ``world`` with ``users``."""
        if self.runner is not None:
            return self.runner(world, vectors, users)
        assert self.hook is not None
        return run_arm(name, world, vectors, self.hook(world, users), users=users)


@dataclass(frozen=True)
class SweepCell:
    """One cell of a sweep: the factors, and per arm the decay (%) and final retention."""

    drift: float
    feedback: float
    decay_pct: dict[str, float]
    retention: dict[str, float]


def baseline_arms() -> dict[str, SweepArm]:
    """Static and human-in-the-loop (at the default review share of each world's traffic);
    neither reads feedback, so they are run once per drift factor."""
    return {
        "static": SweepArm(lambda world, users: None, uses_feedback=False),
        "human-in-the-loop": SweepArm(
            lambda world, users: hitl_hook(
                world, HITLParams.for_traffic(world.params.requests_per_day)
            ),
            uses_feedback=False,
        ),
    }


def sweep_runs(
    arms: Mapping[str, SweepArm], drift: Sequence[float], feedback: Sequence[float]
) -> int:
    """How many arm runs :func:`sweep` makes over that grid.

    >>> sweep_runs(baseline_arms(), (0.5, 1.0), (0.5, 1.0, 2.0))
    4
    """
    blind = sum(1 for a in arms.values() if not a.uses_feedback)
    return len(drift) * (blind + (len(arms) - blind) * len(feedback))


def sweep(
    vectors: TextVectors,
    world: WorldParams | None = None,
    users: UserParams | None = None,
    arms: Mapping[str, SweepArm] | None = None,
    *,
    drift: Sequence[float] = (0.5, 1.0, 1.5),
    feedback: Sequence[float] = (0.5, 1.0, 2.0),
    on_run: Callable[[str, float, float], None] | None = None,
) -> list[SweepCell]:
    """How the result moves with the world: every arm over a grid of drift factors
    (:meth:`WorldParams.with_drift`) and explicit feedback factors
    (:meth:`UserParams.with_feedback`), one cell per pair, drift-major.

    ``arms`` defaults to :func:`baseline_arms`; the closed-loop arm joins with its own
    :class:`SweepArm` (:func:`closedloop.simulate.loop.loop_arm`). ``on_run(arm, drift,
    feedback)`` is called after each arm run (:func:`sweep_runs` of them in all).
    """
    from closedloop.simulate.measure import measure  # measure imports this module

    base_world = world or WorldParams()
    base_users = users or UserParams()
    chosen = dict(arms) if arms is not None else baseline_arms()
    cells: list[SweepCell] = []
    for d in drift:
        the_world = World(base_world.with_drift(d))
        blind: dict[str, tuple[float, float]] = {}
        for f in feedback:
            the_users = base_users.with_feedback(f)
            decay: dict[str, float] = {}
            retention: dict[str, float] = {}
            for name, arm in chosen.items():
                if not arm.uses_feedback and name in blind:
                    decay[name], retention[name] = blind[name]
                    continue
                m = measure(arm.run(name, the_world, vectors, the_users))
                decay[name], retention[name] = m.decay_pct, m.final_retention
                if not arm.uses_feedback:
                    blind[name] = (m.decay_pct, m.final_retention)
                if on_run is not None:
                    on_run(name, d, f)
            cells.append(SweepCell(d, f, decay, retention))
    return cells
