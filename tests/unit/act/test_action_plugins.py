"""Third-party actions register through the plugin hook and fire from a rule like the
built-in ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pydantic
import pytest

from closedloop.act.actions import ActContext, ActionResult, Trigger, action_kinds, build_action
from closedloop.act.rules import parse_rules
from closedloop.errors import ConfigError
from closedloop.hookspecs import hookimpl
from closedloop.plugins import get_plugin_manager


class PageParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    team: str


class Page:
    """A plugin's action: pages a team."""

    name: ClassVar[str] = "page"
    Params: ClassVar[type[pydantic.BaseModel]] = PageParams

    def __init__(self, params: PageParams, context: ActContext | None) -> None:
        self.team = params.team

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        return ActionResult(action=self.name, ok=True, summary=f"paged {self.team}")


class Plugin:
    def __init__(self, actions: list[Any]) -> None:
        self.actions = actions

    @hookimpl
    def register_actions(self) -> list[Any]:
        return self.actions


@pytest.fixture
def register() -> Iterator[Any]:
    pm = get_plugin_manager(load_entrypoints=False)
    plugins: list[Plugin] = []

    def add(actions: list[Any]) -> None:
        plugin = Plugin(actions)
        pm.register(plugin)
        plugins.append(plugin)

    yield add
    for plugin in plugins:
        pm.unregister(plugin)


def test_a_plugins_action_is_validated_and_built_like_the_builtin_ones(register: Any) -> None:
    register([Page])
    kinds = action_kinds(load_entrypoints=False)
    assert kinds["page"] is Page and "webhook" in kinds
    (spec,) = parse_rules(
        "rules:\n  - {name: r, when: {drift: any}, actions: [{page: {team: ops}}]}\n",
        kinds=kinds,
    )
    action = build_action("page", spec.actions[0].params, None, kinds=kinds)
    assert action == PageParams(team="ops")  # validation only, without a context
    with pytest.raises(ConfigError, match="team"):
        build_action("page", {}, None, kinds=kinds)


def test_without_the_plugin_a_rule_naming_its_action_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown action 'page'"):
        build_action("page", {"team": "ops"}, None, kinds=action_kinds(load_entrypoints=False))


def test_something_that_is_not_an_action_is_refused(register: Any) -> None:
    register([object])
    with pytest.raises(TypeError, match="not an action"):
        action_kinds(load_entrypoints=False)


def test_every_builtin_actions_sample_parameters_validate() -> None:
    # river's convention, as the drift detectors: each kind lists parameters it accepts
    kinds = action_kinds(load_entrypoints=False)
    for name in ("webhook", "review", "export", "prompt_candidate", "kb_refresh"):
        samples = list(kinds[name]._unit_test_params())
        assert samples, name
        for params in samples:
            validated = build_action(name, params, None, kinds=kinds)
            assert isinstance(validated, pydantic.BaseModel), (name, params)
