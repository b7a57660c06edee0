"""The quick run of ``closedloop simulate`` orders the three arms as the comparison does:
the closed loop keeps the most accuracy and the most users, static the least."""

from __future__ import annotations

import json
from pathlib import Path

from closedloop.simulate import simulate


def test_the_quick_run_orders_static_below_human_in_the_loop_below_the_closed_loop(
    tmp_path: Path,
) -> None:
    report = simulate(quick=True, progress=False, out=tmp_path)
    m = report.measures
    assert set(m) == {"static", "hitl", "closed_loop"} and not report.skipped
    assert m["static"].decay_pct < m["hitl"].decay_pct < m["closed_loop"].decay_pct
    assert (
        m["static"].final_retention < m["hitl"].final_retention < m["closed_loop"].final_retention
    )
    # the closed loop saw every incident through the pipeline; static never does
    assert all(i.to_detect is not None for i in m["closed_loop"].incidents)
    assert all(i.to_detect is None for i in m["static"].incidents)
    # the figures behind the table are the ones written
    written = json.loads((tmp_path / "results.json").read_text())
    assert {k: a["decay_pct"] for k, a in written["arms"].items()} == {
        k: v.decay_pct for k, v in m.items()
    }
