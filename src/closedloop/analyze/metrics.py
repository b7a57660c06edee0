"""Quality metrics per segment over time windows, each with a 95 % confidence interval.

One statement over both tiers (:class:`~closedloop.store.olap.Analytics`) builds a row per
interaction (its segment, its user feedback folded, its enrichment measures) and sums them per
segment and time bucket; the intervals are computed from the sums: Wilson for rates, Student's
t for means.

Segments (``by``):

========================  ==================================================================
``all``                   every interaction
``model``                 ``model_name@model_version``
``prompt``                ``prompt_name@prompt_version``
``topic``                 the input's topic (the topic model of the analysis job)
``tag``                   each tag (an interaction with two tags counts in both)
``cohort:KEY``            the value of ``metadata.KEY`` (``KEY`` may be dotted: ``plan.tier``)
========================  ==================================================================

Measures (only feedback with ``source = "user"`` counts as user feedback):

=====================  =========  ==============================================================
measure                kind       definition
=====================  =========  ==============================================================
``volume``             count      interactions
``feedback_rate``      rate       interactions with any user feedback / interactions
``positive_rate``      rate       the latest thumbs is up / interactions with a thumbs
``rating``             mean       rating scaled to [0, 1] by its own min and max
``correction_rate``    rate       interactions with a correction / interactions with feedback
``edit_similarity``    mean       the ``edit_similarity`` measure (user edits of the output)
``abandonment``        rate       flagged ``abandon`` / interactions with a session
``quality``            mean       the quality estimate of the enrichment job
``observed_quality``   mean       the estimate where it rests on evidence (feedback or
                                  signals), not on the prior alone
``latency_ms``         mean       latency
``cost_usd``           mean       cost per interaction
=====================  =========  ==============================================================
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd  # type: ignore[import-untyped]  # no stubs installed
import pyarrow as pa
from scipy import stats

from closedloop.analyze.drift.base import wilson_interval
from closedloop.errors import ConfigError
from closedloop.store.olap import Analytics

__all__ = [
    "BUCKETS",
    "DIMENSIONS",
    "MEASURES",
    "Measure",
    "metrics",
    "segment_sql",
    "t_interval",
    "wide",
]

BUCKETS = ("hour", "day", "week")
DIMENSIONS = ("all", "model", "prompt", "topic", "tag", "cohort:KEY")
_KEY = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+){0,4}$")


@dataclass(frozen=True)
class Measure:
    """One measure: its name, ``kind`` (``count``, ``rate`` or ``mean``) and its sums' names."""

    name: str
    kind: Literal["count", "rate", "mean"]
    numerator: str = ""
    denominator: str = ""


MEASURES: tuple[Measure, ...] = (
    Measure("volume", "count"),
    Measure("feedback_rate", "rate", "with_feedback", "n"),
    Measure("positive_rate", "rate", "thumbs_up", "thumbs_n"),
    Measure("rating", "mean", "rating", "rating_n"),
    Measure("correction_rate", "rate", "corrected", "with_feedback"),
    Measure("edit_similarity", "mean", "edit", "edit_n"),
    Measure("abandonment", "rate", "abandoned", "in_session"),
    Measure("quality", "mean", "quality", "quality_n"),
    Measure("observed_quality", "mean", "observed", "observed_n"),
    Measure("latency_ms", "mean", "latency", "latency_n"),
    Measure("cost_usd", "mean", "cost", "cost_n"),
)

_MEASURE_OF = """list_filter(
    from_json(json_extract(i.enrichment, '$.measures'), '[{{"name":"VARCHAR","value":"DOUBLE"}}]'),
    lambda m: m.name = '{name}')[1].value"""


def segment_sql(by: str) -> tuple[str, str]:
    """The segment expression of ``by`` over interactions ``i``, and any extra FROM clause.

    >>> print(segment_sql("model")[0])
    coalesce(i.model_name, '(none)') || coalesce('@' || i.model_version, '')
    >>> print(segment_sql("cohort:plan")[0])
    coalesce(json_extract_string(i.body, '$.metadata."plan"'), '(none)')
    """
    if by == "all":
        return "'all'", ""
    if by == "model":
        return "coalesce(i.model_name, '(none)') || coalesce('@' || i.model_version, '')", ""
    if by == "prompt":
        return "coalesce(i.prompt_name, '(none)') || coalesce('@' || i.prompt_version, '')", ""
    if by == "topic":
        return "coalesce(t.topic, '(no topic)')", "LEFT JOIN topics t ON t.ref_id = i.id"
    if by == "tag":
        tags = "list_distinct(from_json(json_extract(i.body, '$.tags'), '[\"VARCHAR\"]'))"
        return (
            "coalesce(tag.tag, '(none)')",
            f"LEFT JOIN LATERAL (SELECT unnest({tags}) AS tag) tag ON TRUE",
        )
    if by.startswith("cohort:"):
        key = by.removeprefix("cohort:")
        if not _KEY.match(key):
            raise ConfigError(
                f"by={by!r}: a cohort key is letters, digits, '_' and '-', dotted for nested "
                "metadata (cohort:plan or cohort:account.tier)",
                field="by",
            )
        path = "$.metadata." + ".".join(f'"{part}"' for part in key.split("."))
        return f"coalesce(json_extract_string(i.body, '{path}'), '(none)')", ""
    raise ConfigError(f"by={by!r} is not a segment; use one of {', '.join(DIMENSIONS)}", field="by")


def _sql(by: str, bucket: str | None, since: dt.datetime | None, until: dt.datetime | None) -> str:
    segment, join = segment_sql(by)
    if bucket is not None and bucket not in BUCKETS:
        raise ConfigError(f"bucket={bucket!r}: use one of {', '.join(BUCKETS)}", field="bucket")
    bucket_col = f"date_trunc('{bucket}', i.ts)" if bucket else "NULL::TIMESTAMPTZ"
    terms = [f"i.ts >= TIMESTAMPTZ '{since.isoformat()}'"] if since else []
    terms += [f"i.ts < TIMESTAMPTZ '{until.isoformat()}'"] if until else []
    window = " AND ".join(terms) or "TRUE"
    return f"""
WITH fb AS (
    SELECT interaction_id,
           count(*) AS n_feedback,
           arg_max(thumbs, ts) FILTER (WHERE thumbs IS NOT NULL) AS thumbs,
           avg((rating - coalesce(rating_min, 1))
               / nullif(coalesce(rating_max, 5) - coalesce(rating_min, 1), 0)) AS rating,
           max(CASE WHEN correction IS NOT NULL THEN 1 ELSE 0 END) AS corrected
    FROM feedback WHERE source = 'user' GROUP BY interaction_id
),
rows AS (
    SELECT {segment} AS segment, {bucket_col} AS bucket,
           fb.n_feedback, fb.thumbs, fb.rating, fb.corrected,
           {_MEASURE_OF.format(name="edit_similarity")} AS edit,
           {_MEASURE_OF.format(name="abandon")} AS abandoned,
           i.session_id, i.quality, i.latency_ms, i.cost_usd,
           CASE WHEN i.quality_basis IN ('explicit', 'implicit') THEN i.quality END AS observed
    FROM interactions i LEFT JOIN fb ON fb.interaction_id = i.id {join}
    WHERE {window}
)
SELECT segment, bucket,
       count(*) AS n,
       count(n_feedback) AS with_feedback,
       count(thumbs) AS thumbs_n,
       coalesce(sum(CASE WHEN thumbs > 0 THEN 1 ELSE 0 END), 0) AS thumbs_up,
       count(rating) AS rating_n, sum(rating) AS rating, sum(rating * rating) AS rating_sq,
       coalesce(sum(corrected), 0) AS corrected,
       count(edit) AS edit_n, sum(edit) AS edit, sum(edit * edit) AS edit_sq,
       count(session_id) AS in_session,
       coalesce(sum(CASE WHEN session_id IS NOT NULL AND abandoned > 0 THEN 1 ELSE 0 END), 0)
           AS abandoned,
       count(quality) AS quality_n, sum(quality) AS quality, sum(quality * quality) AS quality_sq,
       count(observed) AS observed_n, sum(observed) AS observed,
           sum(observed * observed) AS observed_sq,
       count(latency_ms) AS latency_n, sum(latency_ms) AS latency,
           sum(latency_ms * latency_ms) AS latency_sq,
       count(cost_usd) AS cost_n, sum(cost_usd) AS cost, sum(cost_usd * cost_usd) AS cost_sq
FROM rows GROUP BY segment, bucket ORDER BY bucket NULLS FIRST, n DESC, segment
"""


def t_interval(total: float, total_sq: float, n: int) -> tuple[float, float]:
    """Student's t interval of a mean from its sums (unbounded below two observations)."""
    if n < 2:
        return -math.inf, math.inf
    mean = total / n
    var = max(total_sq - n * mean * mean, 0.0) / (n - 1)
    half = float(stats.t.ppf(0.975, n - 1)) * math.sqrt(var / n)
    return mean - half, mean + half


def _long(sums: pd.DataFrame, measures: Sequence[Measure]) -> pd.DataFrame:
    out = []
    for row in sums.to_dict("records"):
        for m in measures:
            if m.kind == "count":
                n = int(row["n"])
                value, low, high = float(n), math.nan, math.nan
            elif m.kind == "rate":
                hits, n = float(row[m.numerator] or 0), int(row[m.denominator] or 0)
                value = hits / n if n else math.nan
                low, high = wilson_interval(hits, n) if n else (math.nan, math.nan)
            else:
                n = int(row[m.denominator] or 0)
                total, total_sq = float(row[m.numerator] or 0), float(row[m.numerator + "_sq"] or 0)
                value = total / n if n else math.nan
                low, high = t_interval(total, total_sq, n) if n else (math.nan, math.nan)
            out.append(
                {
                    "segment": row["segment"],
                    "bucket": row["bucket"],
                    "measure": m.name,
                    "value": value,
                    "low": low,
                    "high": high,
                    "n": n,
                }
            )
    frame = pd.DataFrame(out, columns=["segment", "bucket", "measure", "value", "low", "high", "n"])
    return frame


def metrics(
    analytics: Analytics,
    project_id: int,
    *,
    by: str = "all",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    bucket: str | None = None,
    measures: Sequence[str] | None = None,
    topics: pa.Table | None = None,
) -> pd.DataFrame:
    """Each measure of each segment (and time bucket): a long DataFrame with the columns
    ``segment, bucket, measure, value, low, high, n``.

    ``since`` and ``until`` bound the interactions' time; feedback on them counts whenever it
    came. ``bucket`` (``hour``, ``day``, ``week``) splits the window; ``None`` is one window
    (``bucket`` is then null). ``topics`` (``ref_id``, ``topic``) is needed for ``by="topic"``.
    ``n`` is what the value was computed from: interactions for ``volume``, the rate's
    denominator, the mean's observations.
    """
    chosen = MEASURES
    if measures is not None:
        known = {m.name: m for m in MEASURES}
        unknown = [name for name in measures if name not in known]
        if unknown:
            raise ConfigError(
                f"unknown measures {unknown}; use {', '.join(known)}", field="measures"
            )
        chosen = tuple(known[name] for name in measures)
    sql = _sql(by, bucket, since, until)
    tables = {}
    if by == "topic":
        tables["topics"] = topics if topics is not None else _NO_TOPICS
    # The window applies to interactions (in the SQL). The views get a lower bound only, to
    # prune the lake's files, a day early: feedback is stamped by the client's clock, which
    # may run behind the server's by a little (more than a day is not counted).
    early = since
    if since is not None and since.replace(tzinfo=None) - dt.datetime.min > _FEEDBACK_SKEW:
        early = since - _FEEDBACK_SKEW  # (within a day of year 1 there is nothing earlier)
    sums = analytics.query(sql, project_id=project_id, since=early, tables=tables)
    return _long(sums, chosen)


_FEEDBACK_SKEW = dt.timedelta(days=1)
_NO_TOPICS = pa.table({"ref_id": pa.array([], pa.string()), "topic": pa.array([], pa.string())})


def wide(frame: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """One row per segment (and bucket), one column per measure: ``value [low, high]``.

    >>> long = pd.DataFrame(
    ...     [["all", None, "positive_rate", 0.8, 0.7, 0.9, 10], ["all", None, "volume", 12.0,
    ...      math.nan, math.nan, 12]],
    ...     columns=["segment", "bucket", "measure", "value", "low", "high", "n"])
    >>> wide(long).to_dict("records")
    [{'segment': 'all', 'positive_rate': '0.8 [0.7, 0.9]', 'volume': '12'}]
    """

    def cell(row: pd.Series) -> str:
        if pd.isna(row["value"]):
            return "-"
        if pd.isna(row["low"]):
            return f"{row['value']:.{digits}g}"
        low = max(row["low"], -1e300)
        return f"{row['value']:.{digits}g} [{low:.{digits}g}, {row['high']:.{digits}g}]"

    if frame.empty:
        return pd.DataFrame(columns=["segment"])
    frame = frame.assign(cell=frame.apply(cell, axis=1))
    index = ["segment"] if frame["bucket"].isna().all() else ["bucket", "segment"]
    order = list(dict.fromkeys(frame["measure"]))
    table = frame.pivot_table(
        index=index, columns="measure", values="cell", aggfunc="first", sort=False
    )[order]
    table.columns.name = None
    return table.reset_index()
