"""The closed-loop arm's prompt channel on a real embedded runtime, on SQLite and PostgreSQL:
a corrected thumbs-down fires the ``prompt_candidate`` rule, the candidate is served to its arm
with the corrections mapped to intents, and the A/B evaluation promotes it on interactions
stamped on a virtual clock days in the past."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from closedloop.act import prompts
from closedloop.act.rules import parse_rules, put_rule
from closedloop.embed.lexical import LexicalEmbedder
from closedloop.runtime import Runtime
from closedloop.sdk.envelope import make_event
from closedloop.settings import Settings
from closedloop.simulate.assistant import Assistant, TextVectors
from closedloop.simulate.prompting import CANDIDATE_RULES, PROMPT, PromptArms, PromptChannel
from closedloop.simulate.world import KBEntry
from closedloop.store import models
from closedloop.types import ProjectKey

HOURS = "We open 9 to 5."
QUESTION = "when do you open"


class App:
    """A tiny app on the embedded pipeline, as the closed-loop arm drives it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        project, _public, _secret = runtime.projects.create("simulate")
        runtime.projects.set_pii(project.id, '{"enabled": false}')
        key = next(k for k in runtime.projects.keys("simulate") if k.kind == "secret")
        self.key = ProjectKey(
            project_id=project.id, project_name=project.name, kind="secret", key_id=key.id
        )
        self.project_id = project.id
        for spec in parse_rules(CANDIDATE_RULES, kinds=runtime.action_kinds()):
            put_rule(runtime.engine, project.id, spec, source="simulate")
        self.channel = PromptChannel(runtime.engine, project.id, runtime.settings)
        self.base = Assistant(
            TextVectors(LexicalEmbedder()),
            [("cancel my card", "card"), ("what is the weather", "weather")],
            {
                "card": KBEntry("Call the card line.", 0),
                "weather": KBEntry("Sunny.", 0),
                "hours": KBEntry(HOURS, 0),
            },
            k=1,
        )

    def to_label(self, answer: str) -> str | None:
        return {e.answer: intent for intent, e in self.base.kb.items()}.get(answer)

    def serve_day(self, arms: PromptArms, day: str, users: list[str], ts: dt.datetime) -> None:
        """Every user asks for the opening hours; a right answer draws a thumbs-up, a wrong
        one a thumbs-down with the correction; then enrichment and the rules run."""
        intents, versions = arms.predict([QUESTION] * len(users), users)
        events: list[dict[str, Any]] = []
        for j, (user, intent, version) in enumerate(zip(users, intents, versions, strict=True)):
            iid, when = f"{day}-{j:04d}", ts + dt.timedelta(seconds=j)
            body = {
                "input": QUESTION,
                "output": self.base.answer(intent),
                "prompt": {"name": PROMPT, "version": version},
                "user_id": user,
            }
            events.append(make_event("interaction", body, id=iid, timestamp=when))
            verdict: dict[str, Any] = {"interaction_id": iid, "user_id": user, "thumbs": 1}
            if intent != "hours":
                verdict.update(thumbs=-1, correction=HOURS)
            later = when + dt.timedelta(seconds=20)
            events.append(make_event("feedback", verdict, id=f"{iid}-f", timestamp=later))
        raws = [json.dumps(e).encode() for e in events]
        for start in range(0, len(raws), 500):
            result = self.runtime.ingestor.ingest(self.key, raws[start : start + 500])
            assert all(r.status != "rejected" for r in result.results)
        self.runtime.enricher.run()
        self.runtime.rule_engine().run(self.project_id)


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[App]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        run_worker=False,
        embed_in_worker=False,
        act_event_settle_seconds=0.0,
        ab_min_samples=30,
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = Runtime.build(settings, load_plugins=False)
    runtime.start()
    try:
        yield App(runtime)
    finally:
        runtime.stop()


def test_a_corrected_candidate_is_served_to_its_arm_and_promoted_on_virtual_days(
    app: App,
) -> None:
    channel, base = app.channel, app.base
    assert channel.setup() == 1 and channel.setup() == 1, "setup stores version 1 once"
    launch = channel.arms(base, app.to_label)
    assert launch.production is base and launch.candidate is None and launch.version == 1

    # day 0, ten days ago: everyone is served production, which answers the card line
    past = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=10)
    app.serve_day(launch, "d000", [f"user-{n}" for n in range(20)], past)
    arms = channel.arms(base, app.to_label)
    assert (arms.version, arms.candidate_version, arms.share) == (1, 2, 0.5)
    assert arms.test_id is not None and arms.candidate is not None
    assert (QUESTION, "hours") in arms.candidate.examples, "the correction, mapped to its intent"
    assert arms.candidate.kb is base.kb, "one knowledge base for both arms"
    assert channel.arms(base, app.to_label).candidate is arms.candidate, "built once"

    # day 1: the candidate's users are answered right, the others wrong (and correct it);
    # their corrections fire the rule again, which leaves the running test to decide
    users = [f"user-{n}" for n in range(160)]
    app.serve_day(arms, "d001", users, past + dt.timedelta(days=1))
    in_candidate = sum(arms.arm_of(u) for u in users)
    assert 50 < in_candidate < 110
    outcome = channel.evaluate()
    assert (outcome.tests, outcome.promoted) == (1, 1)
    stats = channel.stats()
    assert (stats.tests, stats.promoted, stats.running) == (1, 1, 0)
    assert (stats.production_version, stats.production_examples) == (2, 1)
    with app.runtime.engine.connect() as conn:
        firings = conn.execute(
            models.firings.select().where(models.firings.c.project_id == app.project_id)
        ).all()
    kept = [f for f in firings if "left to decide" in json.loads(f.actions)[0]["summary"]]
    assert len(firings) == 20 + 160 - in_candidate, "one firing per corrected thumbs-down"
    assert len(kept) == len(firings) - 1, "every later one left the running test to decide"

    promoted = channel.arms(base, app.to_label)
    assert promoted.candidate is None and promoted.version == 2
    intents, versions = promoted.predict([QUESTION], ["user-1"])
    assert (intents, versions) == (["hours"], ["2"]), "production now holds the correction"


def test_an_answer_the_app_does_not_know_is_not_taught_until_it_does(app: App) -> None:
    channel, base = app.channel, app.base
    channel.setup()
    prompts.create_version(
        app.runtime.engine,
        app.project_id,
        PROMPT,
        "t",
        examples=[{"input": "refund please", "output": "Refunds take 5 days."}],
        label="production",
    )
    assert channel.arms(base, app.to_label).production is base, "nothing it can map"
    base.set_answer("refund", KBEntry("Refunds take 5 days.", 1))
    learned = channel.arms(base, app.to_label).production
    assert ("refund please", "refund") in learned.examples
