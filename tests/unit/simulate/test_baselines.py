"""The two baseline arms over a quick world: static decays, human-in-the-loop decays less."""

from __future__ import annotations

import pytest

from closedloop.embed.lexical import LexicalEmbedder
from closedloop.simulate.assistant import TextVectors
from closedloop.simulate.baselines import (
    ArmResult,
    HITLParams,
    SweepArm,
    baseline_arms,
    run_hitl,
    run_static,
    sweep,
)
from closedloop.simulate.measure import ArmMeasures, measure, table_rows
from closedloop.simulate.users import UserParams
from closedloop.simulate.world import World, WorldParams


@pytest.fixture(scope="module")
def arms() -> tuple[ArmResult, ArmResult]:
    world = World(WorldParams.quick())
    vectors = TextVectors(LexicalEmbedder())
    return run_static(world, vectors), run_hitl(world, vectors, HITLParams.quick())


def test_static_decays_and_hitl_decays_less(arms: tuple[ArmResult, ArmResult]) -> None:
    static, hitl = (measure(a) for a in arms)
    assert len(static.monthly_accuracy) == 2
    assert static.decay_pct < -10.0
    assert hitl.decay_pct > static.decay_pct
    assert hitl.monthly_accuracy[-1] > static.monthly_accuracy[-1]


def test_retention_follows_the_answers(arms: tuple[ArmResult, ArmResult]) -> None:
    static, hitl = arms
    retained = [d.retained for d in static.days]
    assert retained == sorted(retained, reverse=True) and retained[-1] < 0.9
    assert hitl.days[-1].retained > static.days[-1].retained


def test_incidents_are_never_fixed_by_static_and_detected_then_fixed_by_hitl(
    arms: tuple[ArmResult, ArmResult],
) -> None:
    static, hitl = arms
    assert all(i.detected is None and i.fixed is None for i in static.incidents)
    assert any(i.detected is not None for i in hitl.incidents)
    generous = run_hitl(
        World(WorldParams.quick(days=35, requests_per_day=150, incident_days=(8, 18))),
        TextVectors(LexicalEmbedder()),
        HITLParams(reviews_per_day=40),
    )
    release = HITLParams().release_every_days
    for inc in [*hitl.incidents, *generous.incidents]:
        if inc.fixed is not None:
            assert inc.detected is not None and inc.onset <= inc.detected <= inc.fixed
            assert inc.fixed % release == 0  # fixes ship with a weekly release, live next day
    assert all(i.fixed is not None for i in generous.incidents)


def test_the_review_budget_is_a_share_of_the_traffic() -> None:
    assert HITLParams() == HITLParams.for_traffic(WorldParams().requests_per_day)
    assert HITLParams.quick().reviews_per_day == round(
        WorldParams.quick().requests_per_day * HITLParams.REVIEW_SHARE
    )
    assert HITLParams.for_traffic(10).reviews_per_day == 1


def test_sweep_reruns_feedback_blind_arms_once_per_drift() -> None:
    runs: list[tuple[str, float, float]] = []
    calls: list[float] = []

    def reading(world: World, users: UserParams) -> None:
        calls.append(users.thumbs_wrong)

    arms = {**baseline_arms(), "reader": SweepArm(reading)}
    cells = sweep(
        TextVectors(LexicalEmbedder()),
        WorldParams.quick(days=8, requests_per_day=60, incident_days=(3,)),
        arms=arms,
        drift=(0.0, 2.0),
        feedback=(1.0, 2.0),
        on_run=lambda arm, d, f: runs.append((arm, d, f)),
    )
    assert [(c.drift, c.feedback) for c in cells] == [
        (0.0, 1.0),
        (0.0, 2.0),
        (2.0, 1.0),
        (2.0, 2.0),
    ]
    assert sorted(calls) == [UserParams().thumbs_wrong] * 2 + [2 * UserParams().thumbs_wrong] * 2
    assert sum(arm == "static" for arm, _, _ in runs) == 2  # once per drift factor
    for cell in cells:
        assert set(cell.decay_pct) == set(cell.retention) == set(arms)
    assert cells[0].decay_pct["static"] == cells[1].decay_pct["static"]


def test_same_seed_same_run() -> None:
    params = WorldParams.quick(days=4, requests_per_day=60)
    runs = [
        run_hitl(World(params), TextVectors(LexicalEmbedder()), HITLParams(reviews_per_day=10))
        for _ in range(2)
    ]
    assert runs[0].days == runs[1].days and runs[0].incidents == runs[1].incidents


def test_table_rows_name_every_arm(arms: tuple[ArmResult, ArmResult]) -> None:
    measures: list[ArmMeasures] = [measure(a) for a in arms]
    table = table_rows(measures).splitlines()
    assert table[0].startswith("| approach | accuracy decay")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["static", "human-in-the-loop"]
    assert "never" in table[2]
