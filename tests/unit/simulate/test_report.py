"""The report's targets are computed from the measures, not hard-coded; HITL learns only from
its reviewed sample."""

from __future__ import annotations

from closedloop.embed.lexical import LexicalEmbedder
from closedloop.simulate.assistant import TextVectors
from closedloop.simulate.baselines import HITLParams, hitl_hook, run_arm
from closedloop.simulate.measure import ArmMeasures, IncidentTimes
from closedloop.simulate.report import targets
from closedloop.simulate.world import World, WorldParams


def _m(arm: str, decay: float, times: list[tuple[int | None, int | None]]) -> ArmMeasures:
    incidents = [IncidentTimes(f"incident-{n}", 10, d, f) for n, (d, f) in enumerate(times)]
    return ArmMeasures(arm, [0.8, 0.8 * (1 + decay / 100)], decay, 0.5, incidents)


def _verdicts(**measures: ArmMeasures) -> dict[str, str]:
    return {t.name: t.verdict for t in targets(measures)}


def test_targets_follow_the_figures_at_their_thresholds() -> None:
    met = _verdicts(
        static=_m("static", -15.0, []),
        hitl=_m("human-in-the-loop", -8.0, [(3, 6)]),
        closed_loop=_m("closed loop", -1.8, [(1, 2), (0, 1)]),
    )
    assert set(met.values()) == {"met"}
    missed = _verdicts(
        static=_m("static", -14.9, []),
        hitl=_m("human-in-the-loop", -20.0, []),
        closed_loop=_m("closed loop", -1.9, [(2, 2), (None, None)]),
    )
    assert set(missed.values()) == {"missed"}
    only = _verdicts(static=_m("static", -20.0, []))
    assert list(only.values()).count("not run") == 4


def test_no_incident_is_not_a_met_incident_target() -> None:
    found = _verdicts(closed_loop=_m("closed loop", -1.0, []))
    assert found["closed loop detects each incident within 1 day"] != "met"


def test_reviewers_who_read_nothing_change_nothing() -> None:
    world = World(WorldParams.quick(days=21, requests_per_day=60))
    seen: list[tuple[int, int]] = []

    def hook(day, interactions, assistant, incidents):  # type: ignore[no-untyped-def]
        inner(day, interactions, assistant, incidents)
        seen.append((len(assistant.examples), len(assistant.kb)))

    inner = hitl_hook(world, HITLParams(reviews_per_day=0))
    run_arm("hitl", world, TextVectors(LexicalEmbedder()), hook)
    launch = (len(world.initial_examples()), len(world.initial_kb()))
    assert set(seen) == {launch}
