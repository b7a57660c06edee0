"""Run the arms of the comparison over one world and one seed, and write the report.

Every arm sees the same :class:`~closedloop.simulate.world.World` (the same requests, and the
same per-day random streams for the users' reactions, which diverge once the arms' answers
differ) and shares one :class:`~closedloop.simulate.assistant.TextVectors`, so each
distinct text is embedded once for the whole run. The embedder is chosen as the product
chooses it (``CLOSEDLOOP_EMBEDDER``: ``auto``, ``model`` or ``lexical``).

Examples
--------
>>> parse_arms("static, hitl")
('static', 'hitl')
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn

from closedloop.embed.base import Embedder, load_embedder
from closedloop.errors import ConfigError
from closedloop.simulate.assistant import TextVectors
from closedloop.simulate.baselines import ArmResult, HITLParams, run_hitl, run_static
from closedloop.simulate.measure import ArmMeasures, measure
from closedloop.simulate.users import UserParams
from closedloop.simulate.world import World, WorldParams

__all__ = ["ARMS", "SimulationReport", "parse_arms", "simulate", "world_params"]

ARMS: tuple[str, ...] = ("static", "hitl", "closed_loop")
"""The arms, in the order of the table: static, human-in-the-loop, closed loop."""

REQUESTS_PER_USER_DAY = WorldParams().requests_per_day / WorldParams().users
"""Requests per user a day of the default world (0.4), kept when the traffic is changed."""


@dataclass
class SimulationReport:
    """What a simulation ran, measured and wrote."""

    params: WorldParams
    users: UserParams
    hitl: HITLParams
    embedder: str
    results: dict[str, ArmResult] = field(default_factory=dict)
    """Each arm's record, by arm key (``static``, ``hitl``, ``closed_loop``)."""
    measures: dict[str, ArmMeasures] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Arms asked for but not run, with why."""
    seconds: float = 0.0
    quick: bool = False
    files: dict[str, Path] = field(default_factory=dict)
    """The files written, by kind (``report``, ``accuracy``, ``retention``, ``results``)."""


def parse_arms(value: str | Sequence[str]) -> tuple[str, ...]:
    """Arm keys from ``"static,hitl"`` or a sequence; ``-`` and ``_`` are interchangeable."""
    items = value.split(",") if isinstance(value, str) else list(value)
    arms: list[str] = []
    for raw in items:
        arm = raw.strip().lower().replace("-", "_")
        if not arm:
            continue
        if arm not in ARMS:
            raise ConfigError(
                f"unknown arm {raw.strip()!r}: choose among {', '.join(ARMS)}", field="arms"
            )
        if arm not in arms:
            arms.append(arm)
    if not arms:
        raise ConfigError(f"no arm given: choose among {', '.join(ARMS)}", field="arms")
    return tuple(arms)


def world_params(
    *,
    quick: bool = False,
    days: int | None = None,
    requests_per_day: int | None = None,
    seed: int | None = None,
) -> WorldParams:
    """The world of a run: the default (or quick) one with the given overrides.

    The number of users follows the traffic (0.4 requests per user a day, as by default), and
    incidents whose onset falls after the last day are dropped.
    """
    if days is not None and days < 1:
        raise ConfigError("must be at least 1", field="days")
    if requests_per_day is not None and requests_per_day < 1:
        raise ConfigError("must be at least 1", field="requests-per-day")
    if seed is not None and seed < 0:
        raise ConfigError("must be 0 or more", field="seed")
    base = WorldParams.quick() if quick else WorldParams()
    changes: dict[str, Any] = {}
    if days is not None:
        changes["days"] = days
    if requests_per_day is not None:
        changes["requests_per_day"] = requests_per_day
        changes["users"] = max(1, round(requests_per_day / REQUESTS_PER_USER_DAY))
    if seed is not None:
        changes["seed"] = seed
    params = replace(base, **changes)
    kept = tuple(d for d in params.incident_days if d < params.days)
    return replace(params, incident_days=kept) if kept != params.incident_days else params


def _embedder() -> Embedder:
    """The embedder the product would use (``CLOSEDLOOP_EMBEDDER``, ``CLOSEDLOOP_EMBED_MODEL``)."""
    from closedloop.settings import Settings

    settings = Settings()
    return load_embedder(settings.embedder, settings.embed_model)


ArmFunction = Callable[..., ArmResult]


def _closed_loop() -> ArmFunction | None:
    """``run_closed_loop`` from :mod:`closedloop.simulate.loop`, or ``None`` while not built."""
    try:
        module = importlib.import_module("closedloop.simulate.loop")
    except ModuleNotFoundError as exc:
        if exc.name == "closedloop.simulate.loop":
            return None
        raise
    fn = getattr(module, "run_closed_loop", None)
    return fn if callable(fn) else None


def _call(fn: ArmFunction, world: World, vectors: TextVectors, **options: Any) -> ArmResult:
    """Call an arm with the options its signature accepts."""
    accepted = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        options = {k: v for k, v in options.items() if k in accepted}
    return fn(world, vectors, **options)


def _advancer(bar: Progress, task: TaskID) -> Callable[[int], None]:
    """An ``on_day`` callback that advances ``task`` by one day."""

    def on_day(_day: int) -> None:
        bar.advance(task)

    return on_day


def simulate(
    params: WorldParams | None = None,
    *,
    arms: str | Sequence[str] = ARMS,
    out: Path | str = Path("simulation"),
    seed: int | None = None,
    quick: bool = False,
    progress: bool = True,
    users: UserParams | None = None,
    hitl: HITLParams | None = None,
    console: Console | None = None,
) -> SimulationReport:
    """Run ``arms`` over the world of ``params`` (default: the six-month world, or the quick
    one with ``quick``) and write the report, the plots and the figures into ``out``.

    ``seed`` replaces the world's seed. The reviewers label the default 0.5 % of the traffic
    unless ``hitl`` says otherwise. An arm that is not built yet is skipped and reported;
    asking only for arms that cannot run raises :class:`~closedloop.errors.ConfigError`.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("the plots need matplotlib: pip install 'closedloop[simulate]'")
    from closedloop.simulate.report import write_report

    keys = parse_arms(arms)
    base = params or (WorldParams.quick() if quick else WorldParams())
    world_p = replace(base, seed=seed) if seed is not None else base
    kept = tuple(d for d in world_p.incident_days if d < world_p.days)  # inside the run only
    if kept != world_p.incident_days:
        world_p = replace(world_p, incident_days=kept)
    user_p = users or UserParams()
    hitl_p = hitl or HITLParams.for_traffic(world_p.requests_per_day)
    runners: dict[str, ArmFunction] = {}
    skipped: dict[str, str] = {}
    for key in keys:
        if key == "static":
            runners[key] = run_static
        elif key == "hitl":
            runners[key] = lambda w, v, **kw: run_hitl(w, v, hitl_p, **kw)
        else:
            loop = _closed_loop()
            if loop is None:
                skipped[key] = "not built yet (closedloop.simulate.loop.run_closed_loop)"
            else:
                runners[key] = loop
    if not runners:
        raise ConfigError(
            "; ".join(f"{k}: {why}" for k, why in skipped.items()) or "no arm", field="arms"
        )
    target = Path(out)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {target}: {exc.strerror}", field="out") from exc

    started = time.perf_counter()
    world = World(world_p)
    embedder = _embedder()
    vectors = TextVectors(embedder)
    report = SimulationReport(world_p, user_p, hitl_p, embedder.name, skipped=skipped, quick=quick)
    options: dict[str, Any] = {"users": user_p}
    if progress:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "days",
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            tasks = {k: bar.add_task(k, total=world_p.days) for k in runners}
            for key, fn in runners.items():
                advance = _advancer(bar, tasks[key])
                report.results[key] = _call(fn, world, vectors, **options, on_day=advance)
    else:
        for key, fn in runners.items():
            report.results[key] = _call(fn, world, vectors, **options)
    report.measures = {k: measure(r) for k, r in report.results.items()}
    report.seconds = time.perf_counter() - started
    try:
        report.files = write_report(report, target)
    except OSError as exc:
        raise ConfigError(f"cannot write into {target}: {exc.strerror}", field="out") from exc
    return report
