"""Prompt candidates learned from corrections, and the ``prompt_candidate`` action.

A *candidate* is the production version plus few-shot examples ``{"input", "output"}`` where
the output is a user's correction (stored with its ``interaction_id`` and ``feedback_id``,
never served): the corrections of the prompt's interactions in an issue, or of its negatively
rated interactions. :func:`closedloop.act.ab.start_test` serves it to a
share of traffic, and :class:`closedloop.act.ab.ABEvaluator` promotes or rolls it back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import msgspec
import pydantic
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.act.actions import ActContext, ActionResult, Trigger
from closedloop.act.prompts import (
    PromptVersion,
    create_version,
    get,
    validate_name,
)
from closedloop.enrich.sessions import user_text
from closedloop.errors import ConfigError, NotFound
from closedloop.events import Interaction
from closedloop.store import models

__all__ = [
    "PromptCandidateAction",
    "PromptCandidateParams",
    "build_candidate",
    "candidate_examples",
]

_interaction = msgspec.json.Decoder(Interaction)


def _input_of(body: str) -> str | None:
    """The user's words in a stored interaction (the text, or the last user message)."""
    return user_text(_interaction.decode(body).input)


def _key(example: Mapping[str, Any]) -> str:
    """What makes two examples the same: their input and output (not where they came from)."""
    return json.dumps([example.get("input"), example.get("output")], sort_keys=True)


def candidate_examples(
    engine: Engine,
    project_id: int,
    prompt_name: str,
    *,
    issue_id: int | None = None,
    limit: int = 8,
) -> list[dict[str, Any]]:
    """Few-shot examples ``{"input", "output": correction, "interaction_id", "feedback_id"}``
    of ``prompt_name``, most recent first, de-duplicated: the latest correction of each of its
    interactions in issue ``issue_id`` or, without one, of each negatively rated one (thumbs
    down or quality below 0.5). The ids let erasure find a user's text
    (:func:`closedloop.act.prompts.forget_examples`); apps are never served them."""
    f, i, m = models.feedback, models.interactions, models.cluster_members
    query = (
        sa.select(f.c.id, f.c.interaction_id, f.c.correction, f.c.ts, i.c.body)
        .join(i, sa.and_(i.c.project_id == f.c.project_id, i.c.id == f.c.interaction_id))
        .where(
            f.c.project_id == project_id,
            i.c.prompt_name == prompt_name,  # an issue may span prompts: only this one's
            f.c.correction.is_not(None),
            f.c.correction != "",
        )
        .order_by(f.c.ts.desc(), f.c.id.desc())
    )
    if issue_id is not None:
        query = query.join(
            m,
            sa.and_(
                m.c.project_id == f.c.project_id,
                m.c.kind == "issue",
                m.c.ref_id == f.c.interaction_id,
            ),
        ).where(m.c.cluster_id == issue_id)
    else:
        # negatively rated: a correction alone rates it 0.1; not yet enriched counts too
        query = query.where(sa.or_(i.c.quality.is_(None), i.c.quality < 0.5))
    seen_interactions: set[str] = set()
    seen_pairs: set[str] = set()
    out: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for row in conn.execute(query.limit(50 * max(limit, 1))):
            if row.interaction_id in seen_interactions:
                continue  # an older correction of the same interaction
            seen_interactions.add(row.interaction_id)
            example = {"input": _input_of(row.body), "output": row.correction}
            key = _key(example)
            if key in seen_pairs:
                continue
            seen_pairs.add(key)
            out.append({**example, "interaction_id": row.interaction_id, "feedback_id": row.id})
            if len(out) >= limit:
                break
    return out


def build_candidate(
    engine: Engine,
    project_id: int,
    prompt_name: str,
    *,
    issue_id: int | None = None,
    max_examples: int = 8,
    firing_id: int | None = None,
    examples: Sequence[Mapping[str, Any]] | None = None,
) -> PromptVersion:
    """Store a candidate: production plus the corrections as examples (new ones first, capped
    at ``max_examples``; ``examples`` overrides the lookup), labelled ``candidate``.

    Raises :class:`ConfigError` (field ``issue_id``) when there is nothing to learn from and
    :class:`NotFound` without a production version."""
    validate_name(prompt_name, field_name="prompt")
    if max_examples < 1:
        raise ConfigError("max_examples must be at least 1", field="max_examples")
    production = get(engine, project_id, prompt_name)
    new = (
        list(examples)
        if examples is not None
        else candidate_examples(
            engine, project_id, prompt_name, issue_id=issue_id, limit=max_examples
        )
    )
    if not new:
        where = f"issue {issue_id}" if issue_id is not None else f"prompt {prompt_name!r}"
        raise ConfigError(
            f"no corrections to learn from on {where}: collect feedback with `correction` first",
            field="issue_id",
        )
    merged: list[dict[str, Any]] = []
    seen: set[str] = set()
    for ex in [*new, *production.examples]:
        key = _key(ex)
        if key not in seen:
            seen.add(key)
            merged.append(dict(ex))
    return create_version(
        engine,
        project_id,
        prompt_name,
        production.template,
        examples=merged[:max_examples],
        config=production.config,
        source="candidate",
        parent_version=production.version,
        firing_id=firing_id,
        label="candidate",
    )


class PromptCandidateParams(pydantic.BaseModel):
    """The ``with:`` block of a ``prompt_candidate`` action."""

    model_config = pydantic.ConfigDict(extra="forbid")

    prompt: str | None = pydantic.Field(
        default=None, description="The prompt name (default: the trigger's prompt)."
    )
    share: float = pydantic.Field(default=0.2, gt=0, le=1, description="Traffic share.")
    max_examples: int = pydantic.Field(default=8, ge=1, le=100)
    replace_running: bool = pydantic.Field(
        default=False,
        description="Stop the prompt's running A/B test to test the new candidate (default: "
        "leave it to decide and build nothing: restarting on every firing would never let a "
        "test gather its samples).",
    )
    max_samples: int | None = pydantic.Field(
        default=None, ge=1, description="Per arm: stop the test as inconclusive at this many."
    )
    max_days: float | None = pydantic.Field(
        default=None, gt=0, description="Stop the test as inconclusive after this many days."
    )


class PromptCandidateAction:
    """Builds a candidate from the trigger's corrections and starts its A/B test."""

    name: ClassVar[str] = "prompt_candidate"
    Params: ClassVar[type[pydantic.BaseModel]] = PromptCandidateParams

    def __init__(self, params: PromptCandidateParams, context: ActContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def _unit_test_params(cls) -> list[dict[str, Any]]:
        return [
            {},
            {"prompt": "support", "share": 0.1, "max_examples": 3},
            {"replace_running": True, "max_samples": 500, "max_days": 14},
        ]

    def _prompt(self, trigger: Trigger) -> str | None:
        value = self.params.prompt or trigger.prompt
        if not value and trigger.segment.startswith("prompt="):
            value = trigger.segment.removeprefix("prompt=")
        # NAME@VERSION names the prompt (a name never holds '@')
        return (value.rpartition("@")[0] or value) if value else None

    def _fail(self, summary: str, dry_run: bool) -> ActionResult:
        return ActionResult(action=self.name, ok=False, summary=summary, dry_run=dry_run)

    def _running_test(self, project_id: int, name: str) -> int | None:
        t = models.ab_tests
        with self.context.engine.connect() as conn:
            found = conn.execute(
                sa.select(t.c.id)
                .where(t.c.project_id == project_id, t.c.prompt == name, t.c.state == "running")
                .order_by(t.c.id.desc())
                .limit(1)
            ).scalar()
        return None if found is None else int(found)

    def _test_params(self) -> dict[str, Any]:
        """The test parameters the action sets (the others are the settings')."""
        chosen = (("max_samples", self.params.max_samples), ("max_days", self.params.max_days))
        return {key: value for key, value in chosen if value is not None}

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        """Build the candidate and start the test (or, with ``dry_run``, report the examples).
        While the prompt has a running test it builds nothing, unless ``replace_running``.
        Test parameters the settings refuse (``max_samples`` below ``ab_min_samples``) fail
        it before anything is built."""
        from closedloop.act.ab import resolve_params, start_test

        engine, pid = self.context.engine, trigger.project_id
        try:
            resolve_params(self.context.settings, self._test_params())
        except ConfigError as exc:
            hint = ""
            if exc.field == "params.max_samples":  # min_samples is the settings' alone
                hint = f" (CLOSEDLOOP_AB_MIN_SAMPLES is {self.context.settings.ab_min_samples})"
            return self._fail(f"the A/B test's parameters: {exc}{hint}", dry_run)
        name = self._prompt(trigger)
        if name is None:
            return self._fail("no prompt: set `prompt` or fire on a prompt segment", dry_run)
        try:
            production = get(engine, pid, name)
        except NotFound:
            return self._fail(f"prompt {name!r} has no production version to improve", dry_run)
        examples = candidate_examples(
            engine, pid, name, issue_id=trigger.issue_id, limit=self.params.max_examples
        )
        if not examples:
            return self._fail(f"no corrections to learn from for prompt {name!r}", dry_run)
        details: dict[str, Any] = {
            "prompt": name,
            "parent_version": production.version,
            "examples": examples,
            "share": self.params.share,
        }
        running = None if self.params.replace_running else self._running_test(pid, name)
        if running is not None:
            return ActionResult(
                action=self.name,
                ok=True,
                summary=f"prompt {name!r} is under A/B test {running}: left to decide, no "
                f"candidate built ({len(examples)} corrected examples wait for the next one)",
                details={**details, "running_test_id": running},
                dry_run=dry_run,
            )
        if dry_run:
            return ActionResult(
                action=self.name,
                ok=True,
                summary=f"would add {len(examples)} corrected examples to {name!r} "
                f"v{production.version} and test it on {self.params.share:.0%} of traffic",
                details=details,
                dry_run=True,
            )
        try:
            candidate = build_candidate(
                engine,
                pid,
                name,
                max_examples=self.params.max_examples,
                firing_id=trigger.firing_id,
                examples=examples,
            )
            test = start_test(
                engine,
                pid,
                name,
                candidate.version,
                share=min(self.params.share, self.context.settings.ab_max_share),
                firing_id=trigger.firing_id,
                params=self._test_params(),
                settings=self.context.settings,
            )
        except (ConfigError, NotFound) as exc:
            return self._fail(f"prompt {name!r}: {exc}", dry_run)
        details.update(candidate_version=candidate.version, test_id=test["id"])
        return ActionResult(
            action=self.name,
            ok=True,
            summary=f"prompt {name!r} v{candidate.version} (from v{production.version} with "
            f"{len(examples)} corrected examples) tested on {test['share']:.0%} of traffic",
            details=details,
        )
