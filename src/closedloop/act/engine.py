"""The rules job: evaluate each enabled rule, record each firing once, run its actions.

A firing is recorded before its actions run, with a snapshot of its trigger and the affected
metric before it (:mod:`closedloop.act.effect`); its ``dedup_key`` is unique per rule, so a
trigger fires a rule once even if two runs race. A rule's ``cooldown`` keeps it quiet on a
segment for that long after it fired there. A ``dry_run`` rule records its firings (marked)
with what its actions would have done, and changes nothing else.

Each run takes a single-flight lock (one runner across processes); every worker schedules it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from closedloop.act import conditions
from closedloop.act.actions import ActContext, Action, ActionResult, Trigger, build_action
from closedloop.act.effect import baseline, scope_of
from closedloop.act.rules import (
    DriftCondition,
    EventCondition,
    IssueCondition,
    MetricCondition,
    RuleSpec,
    StoredRule,
    list_rules,
    save_rule_state,
)
from closedloop.errors import ClosedLoopError, JobError
from closedloop.store import models
from closedloop.store.db import single_flight, utcnow
from closedloop.store.jobs import Job

__all__ = ["EngineStats", "Evaluation", "RuleEngine", "RulesFailed", "cooldown_of", "held_out"]

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x636C_7275_6C65_7321  # "clrules!": the advisory lock of the rules job
#: Runs that may die inside a firing's actions before the rest are given up.
MAX_ATTEMPTS = 3


@dataclass
class EngineStats:
    """What a run did."""

    rules: int = 0
    fired: int = 0
    cooled: int = 0
    held_out: int = 0
    actions_ok: int = 0
    actions_failed: int = 0
    skipped: bool = False
    errors: list[str] = field(default_factory=list)


class RulesFailed(JobError):
    """Some rules failed (the others ran): ``stats`` says what the run did and which failed."""

    def __init__(self, stats: EngineStats) -> None:
        super().__init__("; ".join(stats.errors))
        self.stats = stats


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """What a rule would do now (``closedloop rules test``): its triggers, which the cooldown
    or an earlier firing would hold back, and its actions' dry runs."""

    rule: str
    triggers: list[dict[str, Any]]


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _trigger_json(trigger: Trigger) -> dict[str, Any]:
    return {
        "rule": trigger.rule,
        "kind": trigger.kind,
        "segment": trigger.segment,
        "fired_at": trigger.fired_at.isoformat(),
        "snapshot": dict(trigger.snapshot),
        "interaction_ids": list(trigger.interaction_ids),
        "issue_id": trigger.issue_id,
        "prompt": trigger.prompt,
    }


class RuleEngine:
    """Evaluates rules and runs their actions.

    Parameters
    ----------
    context
        What actions are built with (the store, settings, embedder, analytics).
    kinds
        The action kinds by name (:func:`closedloop.act.actions.action_kinds`).
    event_settle_seconds
        How old feedback (or a signal) must be before an event rule reads it (its arrival
        time is stamped just before its commit, so a row stamped earlier can commit a little
        later).
    """

    def __init__(
        self, context: ActContext, kinds: Mapping[str, Any], *, event_settle_seconds: float = 5.0
    ) -> None:
        self.context = context
        self.engine = context.engine
        self.kinds = dict(kinds)
        self.event_settle_seconds = event_settle_seconds

    def __call__(self, job: Job) -> None:
        """The worker's ``act`` job."""
        self.run(job.project_id)

    def run(self, project_id: int | None = None, *, now: dt.datetime | None = None) -> EngineStats:
        """Evaluate every enabled rule (of one project, or all) and fire what is due."""
        stats = EngineStats()
        with single_flight(self.engine, _LOCK_KEY) as mine:
            if not mine:
                stats.skipped = True
                return stats
            projects = [project_id] if project_id is not None else self._projects()
            for pid in projects:
                for rule in list_rules(self.engine, pid):
                    if not rule.spec.enabled:
                        continue
                    stats.rules += 1
                    try:
                        self._run_rule(rule, now or utcnow(), stats)
                    except ClosedLoopError as exc:
                        logger.warning("rule %r of project %s failed: %s", rule.spec.name, pid, exc)
                        stats.errors.append(f"{rule.spec.name}: {exc}")
        if stats.errors:
            raise RulesFailed(stats)
        return stats

    def _projects(self) -> list[int]:
        r = models.rules
        with self.engine.connect() as conn:
            return [int(p) for p in conn.execute(sa.select(r.c.project_id).distinct()).scalars()]

    def find(
        self, rule: StoredRule, now: dt.datetime, cursor: Mapping[str, Any] | None = None
    ) -> list[conditions.Found]:
        """The triggers of ``rule`` now (streams read from ``cursor``, default the rule's)."""
        spec, pid = rule.spec, rule.project_id
        state = dict(rule.state if cursor is None else cursor)
        negative = self.context.settings.negative_quality
        cond = spec.condition
        if isinstance(cond, MetricCondition):
            return conditions.metric_triggers(
                self.context.analytics(),
                self.engine,
                pid,
                spec.name,
                cond,
                now,
                negative_quality=negative,
            )
        if isinstance(cond, DriftCondition):
            return conditions.drift_triggers(
                self.engine, pid, spec.name, cond, now, state, negative_quality=negative
            )
        if isinstance(cond, IssueCondition):
            return conditions.issue_triggers(self.engine, pid, spec.name, cond, now)
        assert isinstance(cond, EventCondition)
        return conditions.event_triggers(
            self.engine, pid, spec.name, cond, now, state, settle_seconds=self.event_settle_seconds
        )

    def _actions(self, spec: RuleSpec) -> list[Action]:
        out = []
        for index, a in enumerate(spec.actions):
            built = build_action(
                a.type,
                a.params,
                self.context,
                kinds=self.kinds,
                field_name=f"{spec.name}.actions[{index}]",
            )
            out.append(built)
        return out  # type: ignore[return-value]

    def cooling(self, rule: StoredRule, segment: str, now: dt.datetime) -> bool:
        """Whether ``rule`` fired on ``segment`` within its cooldown."""
        cooldown = cooldown_of(rule.spec)
        if cooldown <= 0:
            return False
        f = models.firings
        with self.engine.connect() as conn:
            last = conn.execute(
                sa.select(sa.func.max(f.c.fired_at)).where(
                    f.c.project_id == rule.project_id,
                    f.c.rule_id == rule.id,
                    f.c.segment == segment,
                    f.c.dry_run.is_(rule.spec.dry_run),
                )
            ).scalar()
        return last is not None and _aware(last) > now - dt.timedelta(seconds=cooldown)

    def _run_rule(self, rule: StoredRule, now: dt.datetime, stats: EngineStats) -> None:
        spec = rule.spec
        actions = self._actions(spec)
        state = dict(rule.state)
        stream = conditions.stream_of(spec.condition)
        if stream is not None and (state.get("started") is None or state.get("kind") != stream):
            # a new rule (or one whose condition changed stream, such as another signal kind:
            # its cursor only moved past the rows it read) acts on what arrives from now on,
            # unless it asks to backfill
            start = {} if spec.backfill else self.head(rule.project_id, stream, now)
            state = {**start, "started": now.isoformat(), "kind": stream}
            with self.engine.begin() as conn:
                save_rule_state(conn, rule.id, state)
            rule = replace(rule, state=state)
        self._resume(rule, actions, stats)
        baselines: dict[str, dict[str, Any]] = {}  # one per scope: every trigger shares `now`
        moved = False
        for found in self.find(rule, now):
            if not conditions.is_marker(found):
                if self.cooling(rule, found.trigger.segment, now):
                    stats.cooled += 1
                elif self._fire(rule, found, actions, now, stats, baselines):
                    moved = True  # saved below with the cursor past it
            if found.cursor is not None:
                state.update(found.cursor)
                if moved:  # progress is saved after each firing (a firing is never repeated)
                    with self.engine.begin() as conn:
                        save_rule_state(conn, rule.id, state)
                    moved = False
        if state != rule.state:
            with self.engine.begin() as conn:
                save_rule_state(conn, rule.id, state)

    def head(self, project_id: int, kind: str, now: dt.datetime) -> dict[str, Any]:
        """Where a stream (``drift``, ``event`` or ``signal:KIND``) starts for a rule made
        ``now`` (settled rows only)."""
        settle = 0.0 if kind == "drift" else self.event_settle_seconds
        return conditions.stream_head(
            self.engine, project_id, kind, before=now - dt.timedelta(seconds=settle)
        )

    def _fire(
        self,
        rule: StoredRule,
        found: conditions.Found,
        actions: list[Action],
        now: dt.datetime,
        stats: EngineStats,
        baselines: dict[str, dict[str, Any]],
    ) -> bool:
        """Record the firing and run its actions; whether it was new."""
        spec, trigger = rule.spec, found.trigger
        scope = scope_of(trigger, spec)
        key = json.dumps(scope.to_json(), sort_keys=True)
        if key not in baselines:
            try:
                analytics = self.context.analytics()
                baselines[key] = baseline(analytics, self.engine, rule.project_id, scope, now)
            except ClosedLoopError as exc:  # the firing still happens; its effect unmeasured
                baselines[key] = {"error": str(exc)}
        base = dict(baselines[key])
        held = held_out(spec, found)
        if held:
            base["held_out"] = True
        f = models.firings
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = (
            dialect.insert(f)
            .values(
                project_id=rule.project_id,
                rule_id=rule.id,
                rule_name=spec.name,
                dedup_key=("dry|" if spec.dry_run else "") + found.dedup_key,
                segment=trigger.segment,
                fired_at=now,
                dry_run=spec.dry_run,
                trigger=json.dumps(_trigger_json(trigger), default=str),
                baseline=json.dumps(base, default=str),
                # JSON null until the actions have run: a run that dies in between leaves it,
                # and the next run of the rule runs them (see _resume)
                actions="[]" if held else "null",
            )
            .on_conflict_do_nothing()
            .returning(f.c.id)
        )
        with self.engine.begin() as conn:
            firing_id = conn.execute(insert).scalar()
        if firing_id is None:  # fired on this trigger before
            return False
        stats.fired += 1
        if held:  # the control: recorded with its baseline, not acted on
            stats.held_out += 1
            return True
        self._act(replace(trigger, firing_id=int(firing_id)), actions, spec.dry_run, stats, [], 0)
        return True

    def _resume(self, rule: StoredRule, actions: list[Action], stats: EngineStats) -> None:
        """Run the actions a run recorded a firing for and died before finishing (runs hold
        the single-flight lock, so none is in progress): only those without a result, and at
        most :data:`MAX_ATTEMPTS` times (an action that kills its run is then given up)."""
        f = models.firings
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(f.c.id, f.c.trigger, f.c.dry_run, f.c.actions).where(
                    f.c.project_id == rule.project_id,
                    f.c.rule_id == rule.id,
                    sa.or_(f.c.actions == "null", f.c.actions.startswith("{")),
                )
            ).all()
        for row in rows:
            data, progress = json.loads(row.trigger), json.loads(row.actions) or {}
            trigger = Trigger(
                project_id=rule.project_id,
                rule=data["rule"],
                kind=data["kind"],
                segment=data["segment"],
                fired_at=dt.datetime.fromisoformat(data["fired_at"]),
                snapshot=data.get("snapshot") or {},
                interaction_ids=tuple(data.get("interaction_ids") or ()),
                issue_id=data.get("issue_id"),
                prompt=data.get("prompt"),
                firing_id=int(row.id),
            )
            done = list(progress.get("done", []))
            attempts = int(progress.get("attempts", 0)) + 1
            self._act(trigger, actions, bool(row.dry_run), stats, done, attempts)

    def _act(
        self,
        trigger: Trigger,
        actions: list[Action],
        dry_run: bool,
        stats: EngineStats,
        done: list[dict[str, Any]],
        attempts: int,
    ) -> None:
        """Run the actions of a recorded firing that have no result yet, recording each result
        as it comes (``{"done": [...], "attempts": n}`` while in progress, the list at the
        end)."""
        f = models.firings

        def record(value: Any) -> None:
            with self.engine.begin() as conn:
                conn.execute(
                    f.update()
                    .where(f.c.id == trigger.firing_id)
                    .values(actions=json.dumps(value, default=str))
                )

        results = list(done)
        for action in actions[len(done) :]:
            if attempts >= MAX_ATTEMPTS:
                result = ActionResult(
                    action=action.name,
                    ok=False,
                    summary=f"given up: its run died {attempts} times before it finished",
                    dry_run=dry_run,
                )
            else:
                record({"done": results, "attempts": attempts})
                result = self._run_action(action, trigger, dry_run=dry_run)
            if result.ok:
                stats.actions_ok += 1
            else:
                stats.actions_failed += 1
            results.append(result.to_json())
        record(results)

    @staticmethod
    def _run_action(action: Action, trigger: Trigger, *, dry_run: bool) -> ActionResult:
        try:
            return action.run(trigger, dry_run=dry_run)
        except Exception as exc:  # an action's failure is recorded, never stops the others
            logger.exception("action %s of rule %r failed", action.name, trigger.rule)
            return ActionResult(
                action=action.name,
                ok=False,
                summary=f"{type(exc).__name__}: {exc}",
                dry_run=dry_run,
            )

    def evaluate(self, rule: StoredRule, *, now: dt.datetime | None = None) -> Evaluation:
        """What ``rule`` would fire on the stored data now, with its actions' dry runs; nothing
        is recorded. Streams (drift alarms, feedback, signals) are read from the start; what
        lies before a rule's start (it does not backfill) is shown held."""
        now = now or utcnow()
        spec = rule.spec
        actions = self._actions(spec)
        f = models.firings
        with self.engine.connect() as conn:
            done = (
                set(conn.execute(sa.select(f.c.dedup_key).where(f.c.rule_id == rule.id)).scalars())
                if rule.id
                else set()
            )
        start: dict[str, Any] = {}
        stream = conditions.stream_of(spec.condition)
        if stream is not None and not spec.backfill:
            started = rule.state.get("started") is not None and rule.state.get("kind") == stream
            start = rule.state if started else self.head(rule.project_id, stream, now)
        prefix = "dry|" if spec.dry_run else ""
        out = []
        cooled: set[str] = set()
        for found in self.find(rule, now, cursor={}):
            if conditions.is_marker(found):
                continue
            t = found.trigger
            held = None
            if _before(found.cursor or {}, start):
                held = "before the rule's start (backfill: true acts on it)"
            elif prefix + found.dedup_key in done:
                held = "fired before"
            elif t.segment in cooled or (rule.id and self.cooling(rule, t.segment, now)):
                held = "cooldown"
            if cooldown_of(spec) > 0:
                cooled.add(t.segment)
            dry = [self._run_action(a, t, dry_run=True).to_json() for a in actions]
            out.append({"trigger": _trigger_json(t), "held": held, "actions": dry})
        return Evaluation(rule=spec.name, triggers=out)


def _before(cursor: Mapping[str, Any], start: Mapping[str, Any]) -> bool:
    """Whether a stream position lies at or before a rule's start."""
    if "alarm_id" in cursor and "alarm_id" in start:
        return int(cursor["alarm_id"]) <= int(start["alarm_id"])
    if cursor.get("received_at") and start.get("received_at"):
        at = (dt.datetime.fromisoformat(cursor["received_at"]), str(cursor.get("id", "")))
        head = (dt.datetime.fromisoformat(start["received_at"]), str(start.get("id", "")))
        return at <= head
    return False


def cooldown_of(spec: RuleSpec) -> float:
    """The rule's cooldown in seconds: as set, else none for event rules (each feedback or
    signal is its own trigger) and an hour for the others."""
    if spec.cooldown_seconds is not None:
        return spec.cooldown_seconds
    return 0.0 if isinstance(spec.condition, EventCondition) else 3600.0


def held_out(spec: RuleSpec, found: conditions.Found) -> bool:
    """Whether this trigger falls in the rule's hold-out share: decided per firing by a stable
    hash of the rule and the trigger's key (a segment at one time, an alarm, an issue in a
    state, a feedback), so a rule on one segment is held out on some firings and acts on the
    others."""
    if spec.holdout <= 0:
        return False
    digest = hashlib.blake2b(f"{spec.name}\x00{found.dedup_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < spec.holdout
