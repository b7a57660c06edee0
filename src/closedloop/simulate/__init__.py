"""The simulator behind ``closedloop simulate``: a drifting world, users who behave like users,
the assistant they use, and the baseline arms it is compared with.

* :mod:`~closedloop.simulate.world`: requests, drift, incidents and the ground truth;
* :mod:`~closedloop.simulate.users`: reactions and retention;
* :mod:`~closedloop.simulate.assistant`: nearest-neighbour intents and a knowledge base;
* :mod:`~closedloop.simulate.baselines`: the static and human-in-the-loop arms, and the
  sensitivity sweep;
* :mod:`~closedloop.simulate.measure`: accuracy per month, decay, retention, incident times;
* :mod:`~closedloop.simulate.loop`: the closed-loop arm, through the real pipeline;
* :mod:`~closedloop.simulate.run` and :mod:`~closedloop.simulate.report`: :func:`simulate`
  runs the arms and writes the report and plots.
"""

from __future__ import annotations

from closedloop.simulate.assistant import Assistant, TextVectors
from closedloop.simulate.baselines import (
    ArmResult,
    DayRecord,
    HITLParams,
    IncidentRecord,
    Interaction,
    SweepArm,
    SweepCell,
    baseline_arms,
    run_arm,
    run_hitl,
    run_static,
    sweep,
)
from closedloop.simulate.measure import ArmMeasures, IncidentTimes, measure, table_rows
from closedloop.simulate.run import SimulationReport, simulate
from closedloop.simulate.users import Reaction, Retention, UserParams, react
from closedloop.simulate.world import OOS, Incident, KBEntry, Request, World, WorldParams

__all__ = [
    "OOS",
    "ArmMeasures",
    "ArmResult",
    "Assistant",
    "DayRecord",
    "HITLParams",
    "Incident",
    "IncidentRecord",
    "IncidentTimes",
    "Interaction",
    "KBEntry",
    "Reaction",
    "Request",
    "Retention",
    "SimulationReport",
    "SweepArm",
    "SweepCell",
    "TextVectors",
    "UserParams",
    "World",
    "WorldParams",
    "baseline_arms",
    "measure",
    "react",
    "run_arm",
    "run_hitl",
    "run_static",
    "simulate",
    "sweep",
    "table_rows",
]
