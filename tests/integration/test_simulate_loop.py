"""The closed-loop arm through the real pipeline, embedded: it learns from corrections and
edits, it recovers from an incident better than the static arm, and it never reads the ground
truth."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from closedloop.act.knowledge import add_entry, recall, recall_many
from closedloop.embed.lexical import LexicalEmbedder
from closedloop.runtime import Runtime
from closedloop.simulate import (
    ArmResult,
    KBEntry,
    Request,
    TextVectors,
    UserParams,
    World,
    WorldParams,
    run_static,
)
from closedloop.simulate import loop as loop_module
from closedloop.simulate.loop import LoopParams, LoopStats, run_closed_loop
from tests.conftest import Tenant

# A tiny world; users write corrections more often than the defaults so that 200 requests a
# day carry enough of them (the defaults are meant for thousands a day).
WORLD = WorldParams.quick(
    days=12,
    requests_per_day=200,
    users=500,
    new_intents_from_day=2,
    new_intents_to_day=9,
    incident_days=(4,),
)
USERS = UserParams(correction_wrong=0.3)


def _after(result: ArmResult, day: int) -> float:
    kept = result.days[day:]
    return sum(d.correct for d in kept) / sum(d.served for d in kept)


def _caller() -> str:
    """The function that called the caller (comprehensions skipped)."""
    frame = sys._getframe(2)
    while frame.f_code.co_name.startswith("<") and frame.f_back is not None:
        frame = frame.f_back
    return frame.f_code.co_name


class SpyWorld(World):
    """A world that records who asks for the ground truth."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.truth_callers: Counter[str] = Counter()

    def true_answer(self, intent: str, day: int) -> str:
        self.truth_callers[_caller()] += 1
        return super().true_answer(intent, day)

    def is_correct(self, request: Request, predicted: str, kb: Any) -> bool:
        self.truth_callers[_caller()] += 1
        return super().is_correct(request, predicted, kb)


def test_the_closed_loop_learns_from_feedback_and_beats_the_static_arm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite only: the arm is the same code on PostgreSQL (recall_many runs on both below),
    # at three times the run time
    database_url = f"sqlite:///{tmp_path / 'loop.db'}"
    vectors = TextVectors(LexicalEmbedder())
    world = SpyWorld(WORLD)
    sent: list[dict[str, Any]] = []
    ingest = loop_module._Pipeline.ingest

    def spy_ingest(self: Any, events: list[dict[str, Any]]) -> None:
        sent.extend(events)
        ingest(self, events)

    monkeypatch.setattr(loop_module._Pipeline, "ingest", spy_ingest)
    stats = LoopStats()
    closed = run_closed_loop(
        world,
        vectors,
        users=USERS,
        # a tenth of the default traffic: a broken answer shows on fewer answers and edits
        params=LoopParams(database_url=database_url, broken_min=3, refresh_votes=1),
        stats_out=stats,
    )
    served = sum(d.served for d in closed.days)
    # the ground truth is read by the measuring code of the arm (which also gives the user the
    # right answer to correct with) and by the launch knowledge base: never by the app's steps
    assert set(world.truth_callers) == {"run_closed_loop", "initial_kb"}
    assert world.truth_callers["run_closed_loop"] >= served
    # what the app sends carries no intent and no judgement
    interactions = [e["body"] for e in sent if e["type"] == "interaction"]
    assert len(interactions) == served
    assert {k for b in interactions for k in b} == {"input", "output", "model", "prompt", "user_id"}
    assert {k for e in sent if e["type"] == "feedback" for k in e["body"]} <= {
        "interaction_id",
        "user_id",
        "thumbs",
        "correction",
    }
    signals = [e["body"] for e in sent if e["type"] == "signal"]
    assert {s["kind"] for s in signals} == {"edit", "rephrase", "abandon"}
    # the rules fired real actions: corrections and edits became knowledge-base entries the
    # app applied, and corrections became a prompt candidate under an A/B test
    assert stats.firings > 0 and stats.kb_entries > 0
    assert stats.refreshed_answers > 0 and stats.recalled_answers > 0
    assert stats.prompt_tests >= 1
    assert {i["prompt"]["version"] for i in interactions} >= {"1", "2"}
    assert stats.learned_examples == 0  # examples reach the prompt only through candidates
    (incident,) = closed.incidents
    # detected the day it began (an edit on a broken answer fired kb_refresh), fixed the next
    assert incident.detected == incident.onset
    assert incident.fixed is not None and incident.fixed <= incident.onset + 1

    static = run_static(world, vectors, users=USERS)
    onset = incident.onset
    assert [d.served for d in static.days][:onset] == [d.served for d in closed.days][:onset]
    assert _after(closed, onset + 2) > _after(static, onset + 2) + 0.03
    assert closed.days[-1].retained >= static.days[-1].retained


def test_recall_many_scores_like_recall(runtime: Runtime, tenant: Tenant) -> None:
    embedder = LexicalEmbedder()
    pid = tenant.project_id
    for query, answer in [
        ("how do I reset my password", "Settings, then Security."),
        ("where is my parcel", "It ships tomorrow."),
        ("cancel my subscription please", "Use the Billing page."),
    ]:
        add_entry(runtime.engine, embedder, pid, query=query, answer=answer, source="manual")
    queries = ["reset password", "my parcel is late", "unrelated words entirely"]
    many = recall_many(runtime.engine, embedder, pid, queries, k=2, min_score=0.1)
    for query, got in zip(queries, many, strict=True):
        one = recall(runtime.engine, embedder, pid, query, k=2, min_score=0.1)
        assert [(r.id, r.answer) for r in got] == [(r.id, r.answer) for r in one]
        assert [r.score for r in got] == pytest.approx([r.score for r in one], abs=1e-6)
    assert recall_many(runtime.engine, embedder, pid, [], k=2) == []


def test_kb_entry_answers_judge_like_the_world() -> None:
    # the arm judges a served answer by its text: for the launch knowledge base that is
    # exactly the world's judgement
    world = World(WorldParams.quick(days=20, requests_per_day=50))
    kb = world.initial_kb()
    for day in (0, 15, 19):
        for request in world.requests(day):
            for predicted in (request.intent, "banking77/card_arrival"):
                entry = kb.get(predicted, KBEntry("", 0))
                by_text = entry.answer == world.true_answer(request.intent, day)
                assert by_text == world.is_correct(request, predicted, kb)
