"""The closed-loop arm's prompt: versions in closedloop's registry, candidates A/B tested.

The assistant's prompt is its few-shot examples. The model's launch examples stay in the app
(the base :class:`~closedloop.simulate.assistant.Assistant`); the registry's prompt
``assistant`` holds what was learned. Its first version has no examples; the
``prompt_candidate`` action (:data:`CANDIDATE_RULES`) builds a candidate from the users'
corrections (``{"input": the user's text, "output": the corrected answer}``) and starts an
A/B test, and :class:`closedloop.act.ab.ABEvaluator` promotes or rolls it back on the rated
interactions of each arm, exactly as for a real app.

Each day the app asks :meth:`PromptChannel.arms` what to serve: production's assistant and,
under a running test, the candidate's, with the test's share. An example's answer is mapped to
an intent by the app's own knowledge base (``to_label``: the answer names its intent; an answer
it does not know is skipped until it does). A user is served the candidate when
:func:`closedloop.sdk.prompts.bucket` of the test and the user falls below the share, the
split the SDK's ``get_prompt`` makes, so a user stays in one arm for the test. Interactions
carry the version that served them, which is what the evaluator compares.

Examples
--------
>>> from closedloop.embed.lexical import LexicalEmbedder
>>> from closedloop.simulate.assistant import TextVectors
>>> from closedloop.simulate.world import KBEntry
>>> base = Assistant(TextVectors(LexicalEmbedder()), [("cancel my card", "card")],
...                  {"card": KBEntry("call us", 0), "hours": KBEntry("9 to 5", 0)}, k=1)
>>> arms = PromptArms(production=base, version=1,
...                   candidate=base.with_examples([("when are you open", "hours")]),
...                   candidate_version=2, share=0.5, test_id=1)
>>> intents, versions = arms.predict(["when are you open"] * 2, ["user-1", "user-0"])
>>> [arms.arm_of("user-1"), arms.arm_of("user-0")], intents, versions
([False, True], ['card', 'hours'], ['1', '2'])
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from closedloop.act import prompts
from closedloop.act.ab import ABEvaluator, ABStats, list_tests
from closedloop.errors import NotFound
from closedloop.sdk.prompts import bucket
from closedloop.settings import Settings
from closedloop.simulate.assistant import Assistant

__all__ = [
    "CANDIDATE_RULES",
    "PROMPT",
    "TEMPLATE",
    "PromptArms",
    "PromptChannel",
    "PromptStats",
]

PROMPT = "assistant"
"""The prompt name the app serves and logs."""

TEMPLATE = (
    "Recognise the intent of the user's text by its nearest examples (the model's launch "
    "examples, then these: a text and the answer it should get) and answer from the "
    "knowledge base."
)
"""The template of every version: what changes between versions is the examples."""

CANDIDATE_RULES = f"""
rules:
  - name: corrections-to-prompt
    when:
      event: {{thumbs: down, correction: true, prompt: {PROMPT}}}
    backfill: true
    actions:
      - prompt_candidate: {{share: 0.5, max_examples: 100, max_samples: 1500}}
"""
"""A corrected thumbs-down builds a candidate (production plus the latest corrections, at most
100 examples) tested on half of the users, unless a test is running (the action leaves it to
decide); a test still undecided when both arms have 1,500 rated interactions stops as
inconclusive, so the next correction can start another. ``backfill``: the rule reads the
corrections stored before its first run too (the first day's)."""


@dataclass(frozen=True, kw_only=True)
class PromptArms:
    """What the app serves for a day: production's assistant and version and, under a running
    test, the candidate's with the test's share and id."""

    production: Assistant
    version: int
    candidate: Assistant | None = None
    candidate_version: int | None = None
    share: float = 0.0
    test_id: int | None = None

    def arm_of(self, user_id: str) -> bool:
        """Whether ``user_id`` is served the candidate (the SDK's split of the test)."""
        if self.candidate is None or self.test_id is None:
            return False
        return bucket(self.test_id, user_id) < self.share

    def predict(self, texts: Sequence[str], users: Sequence[str]) -> tuple[list[str], list[str]]:
        """Each text's intent as its user's arm recognises it, and the version that served
        it (the string interactions carry)."""
        if len(texts) != len(users):
            raise ValueError("give one user per text")
        chosen = [self.arm_of(u) for u in users]
        intents = [""] * len(texts)
        versions = [""] * len(texts)
        for in_candidate, assistant, version in (
            (False, self.production, self.version),
            (True, self.candidate, self.candidate_version),
        ):
            rows = [j for j, c in enumerate(chosen) if c == in_candidate]
            if not rows or assistant is None:
                continue
            for j, intent in zip(rows, assistant.predict([texts[j] for j in rows]), strict=True):
                intents[j], versions[j] = intent, str(version)
        return intents, versions


@dataclass
class PromptStats:
    """The prompt's tests over the run, by how they ended (read from the store)."""

    tests: int = 0
    promoted: int = 0
    rolled_back: int = 0
    stopped: int = 0
    running: int = 0
    production_version: int = 1
    production_examples: int = 0


class PromptChannel:
    """The app's side of the prompt registry in the closed-loop arm.

    Parameters
    ----------
    engine, project_id
        The embedded store and the arm's project.
    settings
        The runtime's settings (the A/B test's error rate and minimum samples).
    name
        The prompt name (:data:`PROMPT`).
    """

    def __init__(
        self, engine: Engine, project_id: int, settings: Settings, *, name: str = PROMPT
    ) -> None:
        self.engine = engine
        self.project_id = project_id
        self.settings = settings
        self.name = name
        self._built: dict[int, tuple[Any, Assistant]] = {}

    def setup(self) -> int:
        """Store version 1 (production, no learned examples) unless the prompt has one;
        production's version."""
        try:
            return prompts.get(self.engine, self.project_id, self.name).version
        except NotFound:
            return prompts.create_version(self.engine, self.project_id, self.name, TEMPLATE).version

    def _assistant(
        self,
        version: prompts.PromptVersion,
        base: Assistant,
        to_label: Callable[[str], str | None],
    ) -> Assistant:
        """``base`` plus the version's examples mapped to intents, rebuilt only when the
        version, its mapping or the base's examples changed; it answers from the base's
        knowledge base (one knowledge base: the arms differ only in the prompt)."""
        mapped = _mapped(version.examples, to_label)
        if not mapped:
            return base
        key = (id(base), hash(tuple(base.examples)), tuple(mapped))
        cached = self._built.get(version.version)
        if cached is not None and cached[0] == key:
            assistant = cached[1]
        else:
            assistant = base.with_examples(mapped)
            self._built[version.version] = (key, assistant)
        assistant.kb = base.kb
        return assistant

    def arms(self, base: Assistant, to_label: Callable[[str], str | None]) -> PromptArms:
        """What to serve today, from :func:`closedloop.act.prompts.resolve`."""
        resolved = prompts.resolve(self.engine, self.project_id, self.name)
        production = self._assistant(resolved.version, base, to_label)
        served = {resolved.version.version}
        candidate = None
        if resolved.candidate is not None:
            candidate = self._assistant(resolved.candidate, base, to_label)
            served.add(resolved.candidate.version)
        for stale in set(self._built) - served:
            del self._built[stale]
        return PromptArms(
            production=production,
            version=resolved.version.version,
            candidate=candidate,
            candidate_version=None if resolved.candidate is None else resolved.candidate.version,
            share=resolved.share,
            test_id=resolved.test_id,
        )

    def evaluate(self, now: dt.datetime | None = None) -> ABStats:
        """Run the A/B evaluation job on the project: promote, roll back, stop or continue.

        ``now`` defaults to the clock, as the test's start and its samples' arrival are on
        the clock (a virtual ``now`` would only date the evidence and its ``max_days``)."""
        return ABEvaluator(self.engine, self.settings).run(self.project_id, now=now)

    def stats(self) -> PromptStats:
        """The prompt's tests by state and its production version, from the store."""
        states = Counter(t["state"] for t in list_tests(self.engine, self.project_id, self.name))
        production = prompts.get(self.engine, self.project_id, self.name)
        return PromptStats(
            tests=sum(states.values()),
            promoted=states["promoted"],
            rolled_back=states["rolled_back"],
            stopped=states["stopped"],
            running=states["running"],
            production_version=production.version,
            production_examples=len(production.examples),
        )


def _mapped(
    examples: Sequence[Mapping[str, Any]], to_label: Callable[[str], str | None]
) -> list[tuple[str, str]]:
    """``(text, intent)`` of each example whose answer names an intent, oldest first (the
    registry lists the newest first; for a text labelled twice the newest label wins)."""
    out = []
    for example in reversed(examples):
        text, answer = example.get("input"), example.get("output")
        if not isinstance(text, str) or not text or not isinstance(answer, str):
            continue
        label = to_label(answer)
        if label is not None:
            out.append((text, label))
    return out
