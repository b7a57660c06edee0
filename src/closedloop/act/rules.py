"""Rules: what they say (a validated spec), how they are read from YAML (errors carry the line),
and where they are kept (the ``rules`` table).

A rule binds one condition to one or more actions::

    rules:
      - name: support-quality
        when:
          metric: positive_rate      # a measure of closedloop.analyze.metrics
          by: prompt                 # per segment: all, model, prompt, topic, tag, cohort:KEY
          below: 0.7
          window: 24h                # over the interactions of the last 24 hours
          min_count: 100             # and only once the measure rests on 100 of them
        cooldown: 6h               # then quiet on that segment for 6 hours (default 1h;
        actions:                   # none for event rules)
          - webhook: {endpoint: ops}
          - review: {max_tasks: 20}
      - name: corrections-to-kb
        when:
          event: {thumbs: down, correction: true, prompt: support-v3}
        actions:
          - kb_refresh: {}
      - name: edits-to-kb
        when:
          event: {signal: edit}
        actions:
          - kb_refresh: {from_edits: true}

Conditions: ``metric`` (a measure over a window, per segment), ``drift`` (a new drift alarm),
``issue`` (an issue opened or growing) and ``event`` (every feedback matching a filter, or
with ``signal`` every signal of that kind).

>>> spec = parse_rules("rules:\\n  - name: r\\n    when: {drift: quality}\\n"
...                    "    actions: [{webhook: {endpoint: ops}}]\\n")[0]
>>> spec.name, spec.condition.kind, spec.actions[0].type
('r', 'drift', 'webhook')
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.engine import Engine

from closedloop.analyze.metrics import MEASURES
from closedloop.errors import ConfigError, NotFound
from closedloop.events import SIGNAL_KINDS
from closedloop.store import models
from closedloop.store.db import utc, utcnow

__all__ = [
    "DriftCondition",
    "EventCondition",
    "IssueCondition",
    "MetricCondition",
    "RuleError",
    "RuleSpec",
    "StoredRule",
    "apply_rules",
    "delete_rule",
    "error_loc",
    "firings",
    "get_rule",
    "list_rules",
    "parse_duration",
    "parse_rules",
    "put_rule",
    "save_rule_state",
]

_NAME = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration: a number of seconds, or ``30s``, ``15m``, ``6h``, ``7d``, ``2w``.

    >>> parse_duration("6h"), parse_duration(90)
    (21600.0, 90.0)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration: write e.g. 30s, 15m, 6h, 7d or 2w")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricCondition(_Strict):
    """A measure of a segment over the last ``window`` crossed a threshold."""

    kind: Literal["metric"] = "metric"
    metric: str = Field(description="A measure of closedloop.analyze.metrics.")
    by: str = "all"
    below: float | None = None
    above: float | None = None
    window: float = Field(default=86400.0, description="Seconds (or 24h, 7d) to look back.")
    min_count: int = Field(default=30, ge=1)
    segment: str | None = Field(default=None, description="Only segments matching this glob.")

    @field_validator("window", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("by")
    @classmethod
    def _by(cls, value: str) -> str:
        from closedloop.analyze.metrics import segment_sql

        try:
            segment_sql(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        known = [m.name for m in MEASURES if m.kind != "count"]
        if value not in known:
            raise ValueError(f"unknown metric {value!r}; one of: {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _one_threshold(self) -> MetricCondition:
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of `below` or `above`")
        return self


class DriftCondition(_Strict):
    """A drift alarm of this kind (``any``: every kind) was stored."""

    kind: Literal["drift"] = "drift"
    drift: Literal["quality", "input", "topic_mix", "emerging", "any"]
    segment: str | None = Field(default=None, description="Only segments matching this glob.")
    measure: str | None = None


class IssueCondition(_Strict):
    """An issue is in one of these states (it fires once per issue and state)."""

    kind: Literal["issue"] = "issue"
    issue: tuple[Literal["open", "growing"], ...]
    min_size: int = Field(default=1, ge=1)
    min_impact: float = Field(default=0.0, ge=0)

    @field_validator("issue", mode="before")
    @classmethod
    def _states(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value


class EventFilter(_Strict):
    """Which feedback fires an event rule (every field given must match); with ``signal``,
    which signals of that kind (only ``prompt`` and ``model`` may narrow them)."""

    signal: str | None = Field(
        default=None, description="A signal kind (edit, rephrase...): read the signals."
    )
    thumbs: Literal["up", "down"] | None = None
    correction: bool | None = None
    comment: bool | None = None
    label: str | None = None
    rating_below: float | None = Field(default=None, ge=0, le=1, description="Scaled to [0,1].")
    source: Literal["user", "reviewer", "evaluator", "any"] = "user"
    prompt: str | None = Field(default=None, description="A prompt name, or NAME@VERSION.")
    model: str | None = Field(default=None, description="A model name, or NAME@VERSION.")

    @field_validator("signal")
    @classmethod
    def _kind(cls, value: str | None) -> str | None:
        if value is not None and value not in SIGNAL_KINDS:
            raise ValueError(
                f"unknown signal kind {value!r} for `signal`; one of: {', '.join(SIGNAL_KINDS)}"
            )
        return value

    @model_validator(mode="after")
    def _signal_alone(self) -> EventFilter:
        if self.signal is None:
            return self
        mixed = [
            name
            for name in ("thumbs", "correction", "comment", "label", "rating_below")
            if getattr(self, name) is not None
        ] + (["source"] if self.source != "user" else [])
        if mixed:
            raise ValueError(
                f"`signal` cannot be combined with {', '.join(mixed)}: those filter feedback, "
                "and a rule with `signal` reads the signals (write two rules)"
            )
        return self


class EventCondition(_Strict):
    """Every feedback (or signal) matching the filter, once joined to its interaction."""

    kind: Literal["event"] = "event"
    event: EventFilter


Condition = MetricCondition | DriftCondition | IssueCondition | EventCondition
_CONDITIONS: dict[str, type[BaseModel]] = {
    "metric": MetricCondition,
    "drift": DriftCondition,
    "issue": IssueCondition,
    "event": EventCondition,
}


class ActionSpec(_Strict):
    """One action of a rule: its kind and parameters (``- webhook: {endpoint: ops}``)."""

    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class RuleSpec(_Strict):
    """A validated rule."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    condition: Annotated[Condition, Field(discriminator="kind")] = Field(alias="when")
    actions: tuple[ActionSpec, ...] = Field(min_length=1)
    cooldown_seconds: float | None = Field(default=None, alias="cooldown")
    enabled: bool = True
    dry_run: bool = False
    effect_window_seconds: float | None = Field(default=None, alias="effect_window")
    backfill: bool = Field(
        default=False,
        description="A new drift or event rule reads the alarms, feedback or signals stored "
        "before it (default: only what arrives from then on).",
    )
    holdout: float = Field(
        default=0.0,
        ge=0.0,
        le=0.5,
        description="The share of triggers recorded but not acted on: the control that the "
        "effect report measures against (decided per firing).",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("cooldown_seconds", "effect_window_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)

    @field_validator("condition", mode="before")
    @classmethod
    def _pick(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("`when` is a mapping with one of: metric, drift, issue, event")
        if isinstance(value, BaseModel):
            return value
        kinds = [k for k in _CONDITIONS if k in value]
        if len(kinds) != 1:
            raise ValueError("`when` needs exactly one of: metric, drift, issue, event")
        return {**value, "kind": kinds[0]}

    @field_validator("actions", mode="before")
    @classmethod
    def _actions(cls, value: Any) -> Any:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError("`actions` is a list like [{webhook: {endpoint: ops}}]")
        out = []
        for item in value:
            if isinstance(item, ActionSpec):
                out.append(item)
            elif isinstance(item, Mapping) and set(item) >= {"type"}:
                out.append(ActionSpec.model_validate(dict(item)))
            elif isinstance(item, Mapping) and len(item) == 1:
                (kind, params), *_ = item.items()
                if params is not None and not isinstance(params, Mapping):
                    raise ValueError(f"the parameters of {kind!r} are a mapping")
                out.append(ActionSpec(type=str(kind), params=dict(params or {})))
            else:
                raise ValueError("each action is one mapping like {webhook: {endpoint: ops}}")
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """The spec as YAML/JSON would write it."""
        data = self.model_dump(by_alias=True, mode="json")
        data["actions"] = [{a.type: a.params} for a in self.actions]
        return data


class RuleError(ConfigError):
    """A rule file's errors, each with its line: ``problems`` is ``[(line, field, message)]``."""

    def __init__(self, problems: list[tuple[int | None, str, str]]) -> None:
        self.problems = problems
        first = problems[0]
        where = f"line {first[0]}: " if first[0] else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{where}{first[1]}: {first[2]}{more}", field=first[1])


def _line(node: yaml.Node | None, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (the deepest one found)."""
    found = node
    for part in loc:
        if isinstance(found, yaml.MappingNode):
            nxt = next((v for k, v in found.value if k.value == part), None)
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int):
            nxt = found.value[part] if part < len(found.value) else None
        else:
            nxt = None
        if nxt is None:
            break
        found = nxt
    return None if found is None else found.start_mark.line + 1


def error_loc(error: Mapping[str, Any]) -> list[str | int]:
    # pydantic names the chosen union member after `when`; the YAML has no such level
    loc = list(error["loc"])
    for index, part in enumerate(loc[:-1]):
        if part == "when" and loc[index + 1] in _CONDITIONS:
            del loc[index + 1]
            break
    return loc


def parse_rules(text: str, *, kinds: Mapping[str, Any] | None = None) -> list[RuleSpec]:
    """Rules from a YAML document (``rules: [...]``, or a bare list); every error carries its
    line. With ``kinds`` (:func:`closedloop.act.actions.action_kinds`) the actions' parameters
    are validated too."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RuleError([(line, "yaml", str(getattr(exc, "problem", exc)))]) from None
    items, base = data, []
    if isinstance(data, Mapping):
        items, base = data.get("rules"), ["rules"]
    if not isinstance(items, list):
        raise RuleError([(1, "rules", "the file holds `rules:` followed by a list of rules")])
    problems: list[tuple[int | None, str, str]] = []
    specs: list[RuleSpec] = []
    for index, raw in enumerate(items):
        at: list[str | int] = [*base, index]
        try:
            spec = RuleSpec.model_validate(raw)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                loc = [*at, *error_loc(err)]
                field = ".".join(str(p) for p in loc[len(base) :])
                problems.append((_line(root, loc), f"rules[{field}]", err["msg"]))
            continue
        if kinds is not None:
            problems.extend(_check_actions(spec, kinds, root, at))
        specs.append(spec)
    names = [s.name for s in specs]
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append((_line(root, [*base, index]), "name", f"rule {name!r} is repeated"))
    if problems:
        raise RuleError(problems)
    return specs


def _check_actions(
    spec: RuleSpec, kinds: Mapping[str, Any], root: yaml.Node | None, at: list[str | int]
) -> list[tuple[int | None, str, str]]:
    from closedloop.act.actions import build_action

    problems: list[tuple[int | None, str, str]] = []
    for index, action in enumerate(spec.actions):
        try:
            build_action(action.type, action.params, None, kinds=kinds, field_name="action")
        except ConfigError as exc:
            line = _line(root, [*at, "actions", index])
            problems.append((line, f"{spec.name}.actions[{index}]", str(exc)))
    return problems


@dataclass(frozen=True, kw_only=True)
class StoredRule:
    """A rule as kept: its id, spec, where it came from and its state (cursors)."""

    id: int
    project_id: int
    spec: RuleSpec
    source: str
    state: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """For the API."""
        return {
            "id": self.id,
            "source": self.source,
            "created_at": utc(self.created_at).isoformat(),
            "updated_at": utc(self.updated_at).isoformat(),
            **self.spec.to_json(),
        }


def _stored(row: Any) -> StoredRule:
    return StoredRule(
        id=row.id,
        project_id=row.project_id,
        spec=RuleSpec.model_validate(json.loads(row.spec)),
        source=row.source,
        state=json.loads(row.state or "{}"),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def list_rules(engine: Engine, project_id: int) -> list[StoredRule]:
    """The project's rules by name."""
    r = models.rules
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r).where(r.c.project_id == project_id).order_by(r.c.name))
        return [_stored(row) for row in rows]


def get_rule(engine: Engine, project_id: int, name: str) -> StoredRule:
    """One rule, or :class:`NotFound`."""
    r = models.rules
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(r).where(r.c.project_id == project_id, r.c.name == name)
        ).first()
    if row is None:
        raise NotFound(f"no rule {name!r} in this project")
    return _stored(row)


def put_rule(engine: Engine, project_id: int, spec: RuleSpec, *, source: str = "api") -> StoredRule:
    """Create or replace the rule of that name (its cursors are kept when replaced)."""
    r = models.rules
    now = utcnow()
    values = {
        "spec": json.dumps(spec.to_json()),
        "enabled": spec.enabled,
        "source": source,
        "updated_at": now,
    }
    with engine.begin() as conn:
        where = (r.c.project_id == project_id, r.c.name == spec.name)
        if conn.execute(r.update().where(*where).values(**values)).rowcount == 0:
            conn.execute(
                r.insert().values(project_id=project_id, name=spec.name, created_at=now, **values)
            )
    return get_rule(engine, project_id, spec.name)


def delete_rule(engine: Engine, project_id: int, name: str) -> None:
    """Delete a rule (its firings stay, naming it)."""
    r = models.rules
    with engine.begin() as conn:
        gone = conn.execute(r.delete().where(r.c.project_id == project_id, r.c.name == name))
    if gone.rowcount == 0:
        raise NotFound(f"no rule {name!r} in this project")


def save_rule_state(conn: sa.Connection, rule_id: int, state: Mapping[str, Any]) -> None:
    """Store a rule's cursors."""
    r = models.rules
    conn.execute(r.update().where(r.c.id == rule_id).values(state=json.dumps(dict(state))))


def apply_rules(engine: Engine, project_id: int, specs: Sequence[RuleSpec]) -> dict[str, Any]:
    """Make the project's file-declared rules exactly ``specs`` (GitOps): create or replace
    each, delete those an earlier file declared that this one does not. Rules made through the
    API are left alone unless the file names them."""
    r = models.rules
    names = {s.name for s in specs}
    with engine.connect() as conn:
        stale = [
            n
            for n in conn.execute(
                sa.select(r.c.name).where(r.c.project_id == project_id, r.c.source == "yaml")
            ).scalars()
            if n not in names
        ]
    for spec in specs:
        put_rule(engine, project_id, spec, source="yaml")
    for name in stale:
        delete_rule(engine, project_id, name)
    return {"applied": sorted(names), "deleted": sorted(stale)}


def firings(
    engine: Engine, project_id: int, rule: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Firings, most recent first, with their trigger snapshot, baseline and actions' results."""
    f = models.firings
    query = sa.select(f).where(f.c.project_id == project_id)
    if rule is not None:
        query = query.where(f.c.rule_name == rule)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(f.c.fired_at.desc(), f.c.id.desc()).limit(limit))
        return [
            {
                "id": int(row.id),
                "rule": row.rule_name,
                "segment": row.segment,
                "fired_at": utc(row.fired_at).isoformat(),
                "dry_run": bool(row.dry_run),
                "trigger": json.loads(row.trigger),
                "baseline": json.loads(row.baseline),
                **_actions_json(json.loads(row.actions)),
            }
            for row in rows
        ]


def _actions_json(stored: Any) -> dict[str, Any]:
    """A firing's actions: their results, and ``pending`` while a run has not finished them
    (stored as JSON null, or ``{"done": [...]}`` part way)."""
    if isinstance(stored, list):
        return {"actions": stored, "pending": False}
    return {"actions": list((stored or {}).get("done", [])), "pending": True}
