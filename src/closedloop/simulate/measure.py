"""Measures of an arm: accuracy per month and its decay, final retention, incident times, and
the Markdown table in the form of the one in DESIGN.md.

Examples
--------
>>> from closedloop.simulate.baselines import ArmResult, DayRecord
>>> days = [DayRecord(d, 10, 9 if d < 30 else 8, 1.0) for d in range(60)]
>>> m = measure(ArmResult("static", "v", days))
>>> [round(a, 2) for a in m.monthly_accuracy], round(m.decay_pct, 1)
([0.9, 0.8], -11.1)
"""

from __future__ import annotations

from dataclasses import dataclass

from closedloop.simulate.baselines import ArmResult

__all__ = ["ArmMeasures", "IncidentTimes", "measure", "table_rows"]

MONTH_DAYS = 30
"""Days in a simulated month."""


@dataclass(frozen=True)
class IncidentTimes:
    """Days from an incident's onset to its detection and to its fix (``None``: never)."""

    name: str
    onset: int
    to_detect: int | None
    to_fix: int | None


@dataclass(frozen=True)
class ArmMeasures:
    """The measures of one arm."""

    arm: str
    monthly_accuracy: list[float]
    decay_pct: float
    """Relative change from the first to the last month, in % (negative: a loss)."""
    final_retention: float
    incidents: list[IncidentTimes]


def measure(result: ArmResult, month_days: int = MONTH_DAYS) -> ArmMeasures:
    """Accuracy per month (answers right / answers served), decay, retention, incident times."""
    served: dict[int, int] = {}
    correct: dict[int, int] = {}
    for d in result.days:
        month = d.day // month_days
        served[month] = served.get(month, 0) + d.served
        correct[month] = correct.get(month, 0) + d.correct
    monthly = [correct[m] / served[m] if served[m] else 1.0 for m in sorted(served)]
    first, last = (monthly[0], monthly[-1]) if monthly else (1.0, 1.0)
    decay = (last - first) / first * 100.0 if first else 0.0
    times = [
        IncidentTimes(
            i.name,
            i.onset,
            None if i.detected is None else i.detected - i.onset,
            None if i.fixed is None else i.fixed - i.onset,
        )
        for i in result.incidents
    ]
    retention = result.days[-1].retained if result.days else 1.0
    return ArmMeasures(result.arm, monthly, decay, retention, times)


def _mean_days(values: list[int | None]) -> str:
    if not values:
        return "no incident"
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    text = f"{sum(known) / len(known):.1f} d"
    return text if len(known) == len(values) else f"{text} ({len(values) - len(known)} never)"


def table_rows(measures: list[ArmMeasures]) -> str:
    """A Markdown table like DESIGN.md's, with incident times in place of engineering hours.

    >>> print(table_rows([ArmMeasures("static", [0.9, 0.8], -11.1, 0.5, [])]))
    | approach | accuracy decay | retention of the AI feature | incident detection | incident fix |
    |---|---|---|---|---|
    | static | -11.1 % | 50 % | no incident | no incident |
    """
    lines = [
        "| approach | accuracy decay | retention of the AI feature"
        " | incident detection | incident fix |",
        "|---|---|---|---|---|",
    ]
    for m in measures:
        detect = _mean_days([i.to_detect for i in m.incidents])
        fix = _mean_days([i.to_fix for i in m.incidents])
        retained = f"{m.final_retention * 100:.0f} %"
        lines.append(f"| {m.arm} | {m.decay_pct:+.1f} % | {retained} | {detect} | {fix} |")
    return "\n".join(lines)
