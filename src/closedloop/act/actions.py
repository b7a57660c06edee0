"""The one shape of an action, what it is given, and the registry of action kinds.

An action is built once per rule from its validated parameters and the process's context, and
run per firing::

    class Notify:
        name = "notify"
        Params = NotifyParams  # a pydantic model: the rule's `with:` block

        def __init__(self, params: NotifyParams, context: ActContext) -> None: ...

        def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult: ...

With ``dry_run`` an action says what it would do and changes nothing. Third parties add kinds
through the ``register_actions`` plugin hook (:mod:`closedloop.hookspecs`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import pydantic
from sqlalchemy.engine import Engine

from closedloop.errors import ConfigError

if TYPE_CHECKING:
    from closedloop.embed.base import Embedder
    from closedloop.settings import Settings
    from closedloop.store.olap import Analytics

__all__ = [
    "ActContext",
    "Action",
    "ActionResult",
    "Trigger",
    "TriggerKind",
    "action_kinds",
    "build_action",
]

TriggerKind = Literal["metric", "drift", "issue", "event", "manual"]


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """What made a rule fire.

    ``segment`` names the part of the traffic concerned (``all``, ``model=NAME@VERSION``,
    ``prompt=NAME@VERSION``, ``issue=ID``, ...); ``snapshot`` holds what was seen (the metric
    with its interval, the alarm, the issue, the feedback and its interaction);
    ``interaction_ids`` the interactions concerned (the event's own, or the issue's latest).
    """

    project_id: int
    rule: str
    kind: TriggerKind
    segment: str
    fired_at: dt.datetime
    snapshot: Mapping[str, Any] = field(default_factory=dict)
    interaction_ids: tuple[str, ...] = ()
    issue_id: int | None = None
    prompt: str | None = None
    firing_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class ActionResult:
    """What an action did (or, in a dry run, would do)."""

    action: str
    ok: bool
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (stored with the firing)."""
        return {
            "action": self.action,
            "ok": self.ok,
            "summary": self.summary,
            "details": dict(self.details),
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True, kw_only=True)
class ActContext:
    """What actions may use: the hot store, the settings, and (lazily) the embedder and the
    analytics over both tiers."""

    engine: Engine
    settings: Settings
    embedder: Callable[[], Embedder]
    analytics: Callable[[], Analytics]


class Action(Protocol):
    """An action kind (see the module docstring)."""

    name: ClassVar[str]
    Params: ClassVar[type[pydantic.BaseModel]]

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult: ...


ActionClass = Callable[..., Action]


def _builtin() -> dict[str, Any]:
    # Imported here: each action module pulls in its own stage (webhooks, exports, prompts).
    from closedloop.act.candidates import PromptCandidateAction
    from closedloop.act.datasets import ExportAction
    from closedloop.act.knowledge import KnowledgeAction
    from closedloop.act.review import ReviewAction
    from closedloop.act.webhooks.action import WebhookAction

    return {
        cls.name: cls
        for cls in (
            WebhookAction,
            ReviewAction,
            ExportAction,
            PromptCandidateAction,
            KnowledgeAction,
        )
    }


def action_kinds(*, load_entrypoints: bool = True) -> dict[str, Any]:
    """Every action kind by name: the built-in ones and those of plugins (registered with the
    plugin manager, and, with ``load_entrypoints``, installed packages' entry points)."""
    from closedloop.plugins import get_plugin_manager

    kinds = _builtin()
    manager = get_plugin_manager(load_entrypoints=load_entrypoints)
    for classes in manager.hook.register_actions():
        for cls in classes:
            missing = [a for a in ("name", "Params", "run") if not hasattr(cls, a)]
            if missing:
                raise TypeError(
                    f"{cls!r} is not an action: it lacks {', '.join(missing)} "
                    "(see closedloop.act.actions)"
                )
            kinds[cls.name] = cls
    return kinds


def build_action(
    kind: str,
    params: Mapping[str, Any],
    context: ActContext | None,
    *,
    kinds: Mapping[str, Any],
    field_name: str = "action",
) -> Action | pydantic.BaseModel:
    """Validate ``params`` for the action ``kind``; with a ``context``, build the action.

    Without a context (validation only) the validated parameters are returned. Raises
    :class:`ConfigError` naming the field at fault.
    """
    cls = kinds.get(kind)
    if cls is None:
        raise ConfigError(
            f"unknown action {kind!r}; one of: {', '.join(sorted(kinds))}",
            field=field_name,
        )
    try:
        validated: pydantic.BaseModel = cls.Params.model_validate(dict(params))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{field_name}.{where}: {first['msg']}", field=f"{field_name}.{where}"
        ) from None
    if context is None:
        return validated
    action: Action = cls(validated, context)
    return action
