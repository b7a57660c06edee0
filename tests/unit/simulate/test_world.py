"""The simulated world: deterministic requests, held-out intents on their days, incidents."""

from __future__ import annotations

import random

import pytest

from closedloop.errors import ConfigError
from closedloop.simulate.world import OOS, KBEntry, Request, World, WorldParams, perturb


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldParams.quick())


def test_same_seed_same_requests_other_seed_other_requests(world: World) -> None:
    twin = World(WorldParams.quick())
    assert [world.requests(d) for d in (0, 30, 59)] == [twin.requests(d) for d in (0, 30, 59)]
    assert world.held_out == twin.held_out and world.incidents == twin.incidents
    other = World(WorldParams.quick(seed=1))
    assert other.requests(30) != world.requests(30)


def test_held_out_intents_are_absent_from_launch_and_appear_on_their_days(world: World) -> None:
    launch = {intent for _, intent in world.initial_examples()}
    assert world.held_out and not launch & set(world.held_out)
    assert not set(world.held_out) & set(world.initial_kb())
    params = world.params
    for intent, onset in world.held_out.items():
        assert params.new_intents_from_day <= onset <= params.new_intents_to_day
        before = {r.intent for d in range(max(onset - 3, 0), onset) for r in world.requests(d)}
        assert intent not in before
        after = {r.intent for d in range(onset + 3, onset + 6) for r in world.requests(d)}
        assert intent in after


def test_out_of_scope_share_grows_from_none() -> None:
    world = World(WorldParams.quick(oos_share_end=0.3))
    first = [r.intent for r in world.requests(0)]
    last = [r.intent for r in world.requests(world.params.days - 1)]
    assert OOS not in first
    assert 0.2 < last.count(OOS) / len(last) < 0.4


def test_phrasing_shifts_away_from_the_launch_pool() -> None:
    world = World(
        WorldParams.quick(
            shift_share_start=0.0, shift_share_end=1.0, edits_mean_start=0.0, edits_mean_end=0.0
        )
    )
    launch = {t for pool in world._launch.values() for t in pool}
    first = [r.text in launch for r in world.requests(0) if r.intent != OOS]
    last = [r.text in launch for r in world.requests(world.params.days - 1) if r.intent != OOS]
    assert all(first)
    assert not any(last)


def test_requests_are_varied_and_variants_recur(world: World) -> None:
    sample = {t for pool in (*world._launch.values(), *world._shifted.values()) for t in pool}
    texts = [r.text for d in range(world.params.days) for r in world.requests(d)]
    verbatim = sum(t in sample for t in texts) / len(texts)
    assert 0.1 < verbatim < 0.6  # most requests are not dataset sentences as typed
    distinct = len(set(texts))
    assert len(sample) < distinct < len(texts)  # more texts than the sample, yet some recur
    assert world.variant("cancel my card", 2, 5) == world.variant("cancel my card", 2, 5)
    assert world.variant("cancel my card", 0, 5) == "cancel my card"


def test_phrasing_gets_sloppier_over_time() -> None:
    world = World(WorldParams.quick(edits_mean_start=0.0, edits_mean_end=3.0, oos_share_end=0.0))
    sample = {t for pool in (*world._launch.values(), *world._shifted.values()) for t in pool}
    first = [r.text in sample for r in world.requests(0)]
    last = [r.text in sample for r in world.requests(world.params.days - 1)]
    assert all(first)
    assert sum(last) / len(last) < 0.2


def test_perturb_is_deterministic_and_keeps_most_words() -> None:
    text = "how do i cancel my credit card"
    assert perturb(text, 0, random.Random(1)) == text
    variants = {perturb(text, 2, random.Random(i)) for i in range(50)}
    assert len(variants) > 30
    assert perturb(text, 2, random.Random(3)) == perturb(text, 2, random.Random(3))
    for v in variants:
        assert len(set(v.lower().split()) & set(text.split())) >= 4


def test_drift_factor_scales_the_drift_not_the_incidents() -> None:
    base = WorldParams()
    assert base.with_drift(1.0) == base
    strong, none = base.with_drift(1.5), base.with_drift(0.0)
    assert strong.held_out_share == pytest.approx(1.5 * base.held_out_share)
    assert strong.shift_share_end > base.shift_share_end > none.shift_share_end
    assert none.shift_share_end == base.shift_share_start and none.oos_share_end == 0.0
    assert none.edits_mean_end == base.edits_mean_start
    assert strong.incident_days == base.incident_days
    with pytest.raises(ConfigError):
        base.with_drift(-1.0)


def test_an_incident_makes_its_intents_answers_wrong_from_onset(world: World) -> None:
    incident = world.incidents[0]
    intent = incident.intents[0]
    kb = world.initial_kb()

    def right_on(day: int, entries: dict[str, KBEntry]) -> bool:
        return world.is_correct(Request(day, 0, "text", intent), intent, entries)

    assert right_on(incident.onset - 1, kb)
    assert not right_on(incident.onset, kb)
    assert not right_on(world.params.days - 1, kb)
    fixed = {**kb, intent: KBEntry(world.true_answer(intent, incident.onset), incident.onset)}
    assert right_on(incident.onset, fixed)
    untouched = next(i for i in kb if i != OOS and all(i not in x.intents for x in world.incidents))
    req = Request(world.params.days - 1, 0, "t", untouched)
    assert world.is_correct(req, untouched, kb)
    assert not world.is_correct(req, intent, kb)  # the wrong intent is never right


def test_invalid_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        WorldParams(held_out_share=1.5)
    with pytest.raises(ConfigError):
        World(WorldParams.quick()).requests(60)
    with pytest.raises(ConfigError):
        WorldParams(variants_per_edits=0)
