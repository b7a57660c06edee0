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
from closedloop.simulate.baselines import (
    ArmResult,
    HITLParams,
    SweepArm,
    SweepCell,
    baseline_arms,
    run_hitl,
    run_static,
    sweep,
    sweep_runs,
)
from closedloop.simulate.measure import ArmMeasures, measure
from closedloop.simulate.users import UserParams
from closedloop.simulate.world import World, WorldParams

__all__ = ["ARMS", "SimulationReport", "parse_arms", "simulate", "world_params"]

ARMS: tuple[str, ...] = ("static", "hitl", "closed_loop")
"""The arms, in the order of the table: static, human-in-the-loop, closed loop."""

SWEEP_DRIFT: tuple[float, ...] = (0.5, 1.0, 1.5)
"""Drift factors of the sensitivity sweep (:meth:`WorldParams.with_drift`)."""
SWEEP_FEEDBACK: tuple[float, ...] = (0.5, 1.0, 2.0)
"""Explicit feedback factors of the sensitivity sweep (:meth:`UserParams.with_feedback`)."""

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
    sensitivity: list[SweepCell] = field(default_factory=list)
    """The sensitivity sweep's cells (empty unless asked for), arms named by their label."""
    sensitivity_grid: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())
    """The sweep's drift and feedback factors."""
    pipeline: dict[str, int] = field(default_factory=dict)
    """What the closed loop's pipeline did (:class:`~closedloop.simulate.loop.LoopStats`)."""


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


EMBEDDER = "lexical"
"""The simulation's default embedder: the lexical one, so that the published figures are the
same on every machine (a sentence model's vectors vary with its build and the hardware) and
the default run fits its budget (embedding the ~68,000 distinct texts of six months with the
packaged sentence model takes about six minutes on two cores). ``embedder="auto"`` or
``"model"`` runs the world on the sentence model."""


def _embedder(choice: str) -> Embedder:
    """The embedder of the run: ``choice`` as the product reads ``CLOSEDLOOP_EMBEDDER``
    (``lexical``, ``model``, ``auto`` or a plugin's name), with ``CLOSEDLOOP_EMBED_MODEL``."""
    from closedloop.settings import Settings

    try:
        return load_embedder(choice, Settings().embed_model)
    except ConfigError as exc:
        raise ConfigError(str(exc), field="embedder") from exc


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


def _sweep_arms(keys: Sequence[str], hitl: HITLParams) -> dict[str, SweepArm]:
    """The sweep's arms among ``keys``, named by their label in the report."""
    from closedloop.simulate.baselines import hitl_hook
    from closedloop.simulate.report import LABELS

    arms: dict[str, SweepArm] = {}
    if "static" in keys:
        arms[LABELS["static"]] = baseline_arms()["static"]
    if "hitl" in keys:
        arms[LABELS["hitl"]] = SweepArm(lambda w, u: hitl_hook(w, hitl), uses_feedback=False)
    if "closed_loop" in keys:
        from closedloop.simulate.loop import loop_arm

        arms[LABELS["closed_loop"]] = loop_arm()
    return arms


def _took_stats(report: SimulationReport, key: str, options: dict[str, Any]) -> None:
    """Keep what the closed loop's pipeline did, once its arm has run."""
    if key == "closed_loop" and "stats_out" in options:
        report.pipeline = {k: int(v) for k, v in vars(options["stats_out"]).items()}


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
    sensitivity: bool = False,
    embedder_choice: str = EMBEDDER,
    drift: Sequence[float] = SWEEP_DRIFT,
    feedback: Sequence[float] = SWEEP_FEEDBACK,
) -> SimulationReport:
    """Run ``arms`` over the world of ``params`` (default: the six-month world, or the quick
    one with ``quick``) and write the report, the plots and the figures into ``out``.

    ``seed`` replaces the world's seed. The reviewers label the default 0.5 % of the traffic
    unless ``hitl`` says otherwise. With ``sensitivity``, the arms are also rerun over the
    grid of ``drift`` x ``feedback`` factors (:func:`~closedloop.simulate.baselines.sweep`)
    and the report gets a sensitivity section. ``embedder_choice`` names the embedder of the
    assistants and of the pipeline (:data:`EMBEDDER` by default). An arm that is not built
    yet is skipped and reported; asking only for arms that cannot run raises
    :class:`~closedloop.errors.ConfigError`.
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
    embedder = _embedder(embedder_choice)
    vectors = TextVectors(embedder)
    report = SimulationReport(world_p, user_p, hitl_p, embedder.name, skipped=skipped, quick=quick)
    options: dict[str, Any] = {"users": user_p}
    loop_stats: dict[str, Any] = {}
    if "closed_loop" in runners:
        from closedloop.simulate.loop import LoopStats

        loop_stats["stats_out"] = LoopStats()
    sweep_arms = _sweep_arms(tuple(runners), hitl_p) if sensitivity else {}
    if sensitivity:
        report.sensitivity_grid = (tuple(drift), tuple(feedback))
    if progress:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "[progress.description]{task.fields[unit]}",
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            tasks = {
                k: bar.add_task(k, total=world_p.days, unit="days", start=False) for k in runners
            }
            for key, fn in runners.items():
                bar.start_task(tasks[key])  # each arm's clock runs from its own start
                advance = _advancer(bar, tasks[key])
                extra = loop_stats if key == "closed_loop" else {}
                report.results[key] = _call(fn, world, vectors, **options, **extra, on_day=advance)
                _took_stats(report, key, extra)
            if sweep_arms:
                runs = sweep_runs(sweep_arms, drift, feedback)
                task = bar.add_task("sensitivity", total=runs, unit="runs")
                report.sensitivity = sweep(
                    vectors,
                    world_p,
                    user_p,
                    sweep_arms,
                    drift=drift,
                    feedback=feedback,
                    on_run=lambda *_: bar.advance(task),
                )
    else:
        for key, fn in runners.items():
            extra = loop_stats if key == "closed_loop" else {}
            report.results[key] = _call(fn, world, vectors, **options, **extra)
            _took_stats(report, key, extra)
        if sweep_arms:
            report.sensitivity = sweep(
                vectors, world_p, user_p, sweep_arms, drift=drift, feedback=feedback
            )
    report.measures = {k: measure(r) for k, r in report.results.items()}
    report.seconds = time.perf_counter() - started
    try:
        report.files = write_report(report, target)
    except OSError as exc:
        raise ConfigError(f"cannot write into {target}: {exc.strerror}", field="out") from exc
    return report
