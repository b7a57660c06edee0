"""The interactions explorer and one interaction's page.

``/p/{project}/interactions`` lists a project's interactions newest first, filtered by the
GET query (time range, model, prompt, topic, feedback, user, session, text, issue) and paged
by cursor; ``/p/{project}/interactions/{id}`` shows one: the conversation, its metadata,
feedback and signals, the enrichment's measures and quality, and the user's edit and any
correction as a word diff against the model's output. Any role may read both.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.engine import Connection
from starlette.responses import HTMLResponse

from closedloop.errors import ConfigError, NotFound
from closedloop.ingest.deps import NO_NUL, get_runtime
from closedloop.store import models, queries
from closedloop.store.db import utc
from closedloop.ui.diff import diff_stats, word_diff
from closedloop.ui.render import render
from closedloop.ui.session import Viewer, viewer

__all__ = ["FEEDBACK_FILTERS", "Filters", "router"]

router = APIRouter()

PAGE_SIZE = 50
CLIP = 180
#: The time presets: value of ``last`` → (label, span).
PRESETS: dict[str, tuple[str, dt.timedelta]] = {
    "24h": ("Last 24 hours", dt.timedelta(hours=24)),
    "7d": ("Last 7 days", dt.timedelta(days=7)),
    "30d": ("Last 30 days", dt.timedelta(days=30)),
}
#: The feedback filter: value of ``feedback`` → label.
FEEDBACK_FILTERS: dict[str, str] = {
    "any": "Any feedback",
    "down": "Thumbs down",
    "up": "Thumbs up",
    "rating": "Rating",
    "label": "Label",
    "correction": "Correction",
    "comment": "Comment",
    "edit": "Edited by the user",
    "none": "No explicit feedback",
}
#: How each signal kind shows as a badge: (text, class).
SIGNAL_BADGES: dict[str, tuple[str, str]] = {
    "edit": ("edited", "warn"),
    "regenerate": ("regenerated", "warn"),
    "rephrase": ("rephrased", "warn"),
    "abandon": ("abandoned", "bad"),
    "escalate": ("escalated", "bad"),
    "copy": ("copied", "good"),
    "accept": ("accepted", "good"),
    "click": ("clicked", ""),
    "dwell": ("dwell", ""),
}

Text = Annotated[str, Query(max_length=256, pattern=NO_NUL)]
InteractionId = Annotated[str, Path(min_length=1, max_length=128, pattern=NO_NUL)]


@dataclass(frozen=True, kw_only=True)
class Filters:
    """The explorer's filters as the query string gave them (empty: not set)."""

    last: str = ""
    since: str = ""
    until: str = ""
    model: str = ""
    prompt: str = ""
    prompt_version: str = ""
    topic: str = ""
    feedback: str = ""
    user_id: str = ""
    session_id: str = ""
    q: str = ""
    issue: str = ""
    # parsed
    start: dt.datetime | None = field(default=None, compare=False)
    end: dt.datetime | None = field(default=None, compare=False)
    topic_id: int | None = field(default=None, compare=False)
    issue_id: int | None = field(default=None, compare=False)

    _KEYS = (
        "last",
        "since",
        "until",
        "model",
        "prompt",
        "prompt_version",
        "topic",
        "feedback",
        "user_id",
        "session_id",
        "q",
        "issue",
    )

    def params(self, **changes: str) -> dict[str, str]:
        """The filters that are set, as query parameters, with ``changes`` applied."""
        values = {k: getattr(self, k) for k in self._KEYS} | changes
        return {k: v for k, v in values.items() if v}

    def url(self, project: str, **changes: str) -> str:
        """The explorer's address with these filters (and ``changes``)."""
        query = urlencode(self.params(**changes))
        return f"/ui/p/{quote(project, safe='')}/interactions" + (f"?{query}" if query else "")

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list."""
        return bool(self.params())


def _time(name: str, value: str) -> dt.datetime | None:
    """A time of the query: ISO 8601, a date, or a ``datetime-local`` value (read as UTC)."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"{name}: {value!r} is not a time; use 2026-12-06 or 2026-12-06T14:00 (UTC)",
            field=name,
        ) from exc
    try:
        return utc(parsed)
    except OverflowError as exc:
        raise ConfigError(f"{name}: lies outside the range of times", field=name) from exc


def _number(name: str, value: str) -> int | None:
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise ConfigError(f"{name}: {value!r} is not an id; use a number", field=name)
    return int(value)


def parse_filters(raw: Filters, now: dt.datetime) -> Filters:
    """``raw`` checked and parsed; a bad value raises :class:`ConfigError` naming it."""
    if raw.last and raw.last not in PRESETS:
        raise ConfigError(f"last: use one of {', '.join(PRESETS)}", field="last")
    if raw.feedback and raw.feedback not in FEEDBACK_FILTERS:
        raise ConfigError(f"feedback: use one of {', '.join(FEEDBACK_FILTERS)}", field="feedback")
    start, end = _time("since", raw.since), _time("until", raw.until)
    if start is None and raw.last:
        start = now - PRESETS[raw.last][1]
    if start is not None and end is not None and end <= start:
        raise ConfigError("until: must be later than since", field="until")
    return replace(
        raw,
        start=start,
        end=end,
        topic_id=_number("topic", raw.topic),
        issue_id=_number("issue", raw.issue),
    )


def _has_feedback(project_id: int, *conditions: sa.ColumnElement[bool]) -> sa.Exists:
    fb, t = models.feedback, models.interactions
    return sa.exists().where(
        fb.c.project_id == project_id, fb.c.interaction_id == t.c.id, *conditions
    )


def _in_cluster(project_id: int, kind: str, cluster_id: int) -> sa.Exists:
    m, t = models.cluster_members, models.interactions
    return sa.exists().where(
        m.c.project_id == project_id,
        m.c.kind == kind,
        m.c.cluster_id == cluster_id,
        m.c.ref_id == t.c.id,
    )


def _conditions(project_id: int, f: Filters) -> list[sa.ColumnElement[bool]]:
    t, fb, s = models.interactions, models.feedback, models.signals
    out: list[sa.ColumnElement[bool]] = [t.c.project_id == project_id]
    for value, column in (
        (f.model, t.c.model_name),
        (f.prompt, t.c.prompt_name),
        (f.prompt_version, t.c.prompt_version),
        (f.user_id, t.c.user_id),
        (f.session_id, t.c.session_id),
    ):
        if value:
            out.append(column == value)
    if f.start is not None:
        out.append(t.c.ts >= f.start)
    if f.end is not None:
        out.append(t.c.ts < f.end)
    if f.q:
        out.append(t.c.body.icontains(f.q, autoescape=True))
    if f.topic_id is not None:
        out.append(_in_cluster(project_id, "topic", f.topic_id))
    if f.issue_id is not None:
        out.append(_in_cluster(project_id, "issue", f.issue_id))
    kind = f.feedback
    if kind == "any":
        out.append(_has_feedback(project_id))
    elif kind == "none":
        out.append(~_has_feedback(project_id))
    elif kind in ("down", "up"):
        out.append(_has_feedback(project_id, fb.c.thumbs == (-1 if kind == "down" else 1)))
    elif kind in ("rating", "label", "correction", "comment"):
        out.append(_has_feedback(project_id, fb.c[kind].is_not(None)))
    elif kind == "edit":
        out.append(
            sa.exists().where(
                s.c.project_id == project_id, s.c.interaction_id == t.c.id, s.c.kind == "edit"
            )
        )
    return out


def user_input(value: Any) -> str:
    """The user's words in a stored input: the text, or the last user message."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for message in reversed(value):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if content:
                    return str(content)
    return ""


def _clip(text: str, size: int = CLIP) -> str:
    text = " ".join(text.split())
    return text if len(text) <= size else text[: size - 1].rstrip() + "…"


def _badges(conn: Connection, project_id: int, ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each interaction's feedback and signals as badges ``(text, class)``."""
    fb, s = models.feedback, models.signals
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    if not ids:
        return out
    rows = conn.execute(
        sa.select(
            fb.c.interaction_id,
            fb.c.thumbs,
            fb.c.rating,
            fb.c.rating_max,
            fb.c.label,
            fb.c.correction.is_not(None).label("corrected"),
            fb.c.comment.is_not(None).label("commented"),
        )
        .where(fb.c.project_id == project_id, fb.c.interaction_id.in_(ids))
        .order_by(fb.c.ts, fb.c.id)
    )
    for r in rows:
        badges = out[r.interaction_id]
        if r.thumbs is not None:
            badges.append(("▲ up", "good") if r.thumbs > 0 else ("▼ down", "bad"))
        if r.rating is not None:
            badges.append((f"★ {r.rating:g}/{r.rating_max or 5:g}", "accent"))
        if r.label is not None:
            badges.append((_clip(r.label, 32), ""))
        if r.corrected:
            badges.append(("correction", "warn"))
        if r.commented:
            badges.append(("comment", ""))
    kinds = conn.execute(
        sa.select(s.c.interaction_id, s.c.kind)
        .where(s.c.project_id == project_id, s.c.interaction_id.in_(ids))
        .group_by(s.c.interaction_id, s.c.kind)
        .order_by(s.c.interaction_id, s.c.kind)
    )
    for ref, kind in kinds:
        out[ref].append(SIGNAL_BADGES.get(kind, (kind, "")))
    for ref, badges in out.items():  # one of each
        out[ref] = list(dict.fromkeys(badges))
    return out


def _row(r: Any, badges: list[tuple[str, str]]) -> dict[str, Any]:
    body = json.loads(r.body)
    model = " ".join(x for x in (r.model_name, r.model_version) if x)
    prompt = " v".join(x for x in (r.prompt_name, r.prompt_version) if x)
    return {
        "id": r.id,
        "ts": utc(r.ts),
        "user_id": r.user_id,
        "session_id": r.session_id,
        "model": model,
        "prompt": prompt,
        "input": _clip(user_input(body.get("input"))),
        "output": _clip(body.get("output") or ""),
        "quality": r.quality if r.enriched_at is not None else None,
        "basis": r.quality_basis,
        "badges": badges,
    }


def _page(
    conn: Connection, project_id: int, f: Filters, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    t = models.interactions
    query = sa.select(
        t.c.id,
        t.c.ts,
        t.c.user_id,
        t.c.session_id,
        t.c.model_name,
        t.c.model_version,
        t.c.prompt_name,
        t.c.prompt_version,
        t.c.body,
        t.c.quality,
        t.c.quality_basis,
        t.c.enriched_at,
    ).where(*_conditions(project_id, f))
    if cursor:
        ts, key = queries.decode_cursor(cursor)
        query = query.where(sa.or_(t.c.ts < ts, sa.and_(t.c.ts == ts, t.c.id < key)))
    rows = conn.execute(query.order_by(t.c.ts.desc(), t.c.id.desc()).limit(PAGE_SIZE + 1)).all()
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    badges = _badges(conn, project_id, [r.id for r in rows])
    data = [_row(r, badges.get(r.id, [])) for r in rows]
    nxt = queries.encode_cursor(utc(rows[-1].ts), rows[-1].id) if more else None
    return data, nxt


#: The filter menus offer the values of the newest interactions only: bounded work per page
#: however large the project (older values can still be typed into the URL).
MENU_ROWS = 5000


def _distinct(conn: Connection, project_id: int, column: sa.Column[Any]) -> list[str]:
    t = models.interactions
    recent = (
        sa.select(column.label("value"))
        .where(t.c.project_id == project_id)
        .order_by(t.c.ts.desc())
        .limit(MENU_ROWS)
        .subquery()
    )
    values = conn.execute(
        sa.select(recent.c.value)
        .where(recent.c.value.is_not(None))
        .group_by(recent.c.value)
        .order_by(recent.c.value)
        .limit(200)
    ).scalars()
    return [str(v) for v in values]


def _topics(conn: Connection, project_id: int) -> list[tuple[int, str]]:
    c = models.clusters
    rows = conn.execute(
        sa.select(c.c.id, c.c.name)
        .where(c.c.project_id == project_id, c.c.kind == "topic")
        .order_by(c.c.size.desc(), c.c.id)
        .limit(200)
    )
    return [(r.id, f"#{r.id} {r.name}") for r in rows]


def _issue(conn: Connection, project_id: int, issue_id: int) -> dict[str, Any]:
    c = models.clusters
    row = conn.execute(
        sa.select(c.c.id, c.c.name, c.c.state, c.c.size).where(
            c.c.project_id == project_id, c.c.kind == "issue", c.c.id == issue_id
        )
    ).first()
    if row is None:
        raise NotFound(f"no issue {issue_id} in this project")
    return {"id": row.id, "name": row.name, "state": row.state, "size": row.size}


@router.get("/p/{project}/interactions")
def explorer(
    request: Request,
    v: Annotated[Viewer, Depends(viewer)],
    last: Text = "",
    since: Text = "",
    until: Text = "",
    model: Text = "",
    prompt: Text = "",
    prompt_version: Text = "",
    topic: Text = "",
    feedback: Text = "",
    user_id: Text = "",
    session_id: Text = "",
    q: Text = "",
    issue: Text = "",
    cursor: Annotated[str, Query(max_length=1024, pattern=NO_NUL)] = "",
) -> HTMLResponse:
    """The explorer: the interactions the filters keep, newest first, a page at a time."""
    raw = Filters(
        last=last,
        since=since,
        until=until,
        model=model,
        prompt=prompt,
        prompt_version=prompt_version,
        topic=topic,
        feedback=feedback,
        user_id=user_id,
        session_id=session_id,
        q=q,
        issue=issue,
    )
    f = parse_filters(raw, dt.datetime.now(dt.UTC))
    with get_runtime(request).engine.connect() as conn:
        chosen = _issue(conn, v.project_id, f.issue_id) if f.issue_id is not None else None
        rows, nxt = _page(conn, v.project_id, f, cursor or None)
        options = {
            "models": _distinct(conn, v.project_id, models.interactions.c.model_name),
            "prompts": _distinct(conn, v.project_id, models.interactions.c.prompt_name),
            "versions": _distinct(conn, v.project_id, models.interactions.c.prompt_version),
            "topics": _topics(conn, v.project_id),
        }
    base = f"/ui/p/{quote(v.project, safe='')}/interactions"
    return render(
        request,
        "interactions.html",
        v,
        active="interactions",
        title="Interactions",
        f=f,
        rows=rows,
        base=base,
        next_url=f.url(v.project, cursor=nxt) if nxt else None,
        first_url=f.url(v.project) if cursor else None,
        clear_url=base,
        without_issue=f.url(v.project, issue=""),
        issue=chosen,
        options=options,
        presets={k: label for k, (label, _) in PRESETS.items()},
        feedback_filters=FEEDBACK_FILTERS,
        since_value=_local(f.since),
        until_value=_local(f.until),
    )


def _local(value: str) -> str:
    """A ``since``/``until`` as a ``datetime-local`` input's value (UTC, to the minute)."""
    parsed = _time("time", value) if value else None
    return parsed.strftime("%Y-%m-%dT%H:%M") if parsed else ""


# -- one interaction ---------------------------------------------------------------------------


def _turns(body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation: the input's messages (or text) then the model's output."""
    value = body.get("input")
    turns: list[dict[str, str]] = []
    if isinstance(value, str):
        turns.append({"role": "user", "name": "", "content": value})
    elif isinstance(value, list):
        for m in value:
            if isinstance(m, dict):
                turns.append(
                    {
                        "role": str(m.get("role", "")),
                        "name": str(m.get("name") or ""),
                        "content": str(m.get("content") or ""),
                    }
                )
    if body.get("output") is not None:
        turns.append({"role": "assistant", "name": "output", "content": str(body["output"])})
    return turns


def _memberships(conn: Connection, project_id: int, id: str) -> list[dict[str, Any]]:
    m, c = models.cluster_members, models.clusters
    rows = conn.execute(
        sa.select(m.c.kind, c.c.id, c.c.name, c.c.state)
        .join(
            c,
            sa.and_(
                c.c.project_id == m.c.project_id, c.c.kind == m.c.kind, c.c.id == m.c.cluster_id
            ),
        )
        .where(m.c.project_id == project_id, m.c.ref_id == id)
        .order_by(m.c.kind.desc(), c.c.id)
    )
    return [{"kind": r.kind, "id": r.id, "name": r.name, "state": r.state} for r in rows]


_FIELDS = {
    "item": ("output", "session_id", "user_id", "model", "prompt", "latency_ms", "cost_usd"),
    "feedback": ("thumbs", "rating", "rating_max", "label", "correction", "comment", "given_by"),
    "signals": ("text", "target", "rank", "duration_ms"),
    "retrieved": ("score", "text", "source"),
}


def _complete(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` with every optional field the page reads (the API leaves unset ones out)."""
    for name in _FIELDS["item"]:
        item.setdefault(name, None)
    for key in ("feedback", "signals", "retrieved"):
        item[key] = item.get(key) or []
        for entry in item[key]:
            for name in _FIELDS[key]:
                entry.setdefault(name, None)
    item["tags"] = item.get("tags") or []
    item["metadata"] = item.get("metadata") or {}
    return item


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _diffs(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The user's edits and the corrections, each as a diff against the output."""
    output = item.get("output") or ""
    sources: list[tuple[str, str, Any, str]] = [
        ("Edited by the user", s["text"], s.get("timestamp"), s["id"])
        for s in item["signals"]
        if s.get("kind") == "edit" and s.get("text") is not None
    ]
    sources += [
        (
            f"Correction ({fb.get('source', 'user')})",
            fb["correction"],
            fb.get("timestamp"),
            fb["id"],
        )
        for fb in item["feedback"]
        if fb.get("correction") is not None
    ]
    return [
        {
            "title": title,
            "when": when,
            "id": ref,
            "html": word_diff(output, text),
            "stats": diff_stats(output, text),
            "text": text,
        }
        for title, text, when, ref in sources
    ]


@router.get("/p/{project}/interactions/{interaction_id}")
def detail(
    request: Request, v: Annotated[Viewer, Depends(viewer)], interaction_id: InteractionId
) -> HTMLResponse:
    """One interaction: conversation, metadata, feedback, signals, measures and diffs."""
    with get_runtime(request).engine.connect() as conn:
        item = _complete(queries.get_interaction(conn, v.project_id, interaction_id))
        clusters = _memberships(conn, v.project_id, interaction_id)
    base = f"/ui/p/{quote(v.project, safe='')}/interactions"
    empty = Filters()
    links = {
        "session": empty.url(v.project, session_id=item.get("session_id") or ""),
        "user": empty.url(v.project, user_id=item.get("user_id") or ""),
    }
    for c in clusters:  # an issue opens its page; a topic, the explorer filtered on it
        c["url"] = (
            f"/ui/p/{quote(v.project, safe='')}/issues/{c['id']}"
            if c["kind"] == "issue"
            else empty.url(v.project, topic=str(c["id"]))
        )
    sent = item.get("tokens") or {}
    tokens = {k: sent.get(k) for k in ("input", "output", "total")}
    return render(
        request,
        "interaction.html",
        v,
        active="interactions",
        title=f"Interaction {interaction_id}",
        item=item,
        base=base,
        links=links,
        turns=_turns(item),
        clusters=clusters,
        diffs=_diffs(item),
        tokens=tokens,
        metadata=[(k, _value(val)) for k, val in sorted(item["metadata"].items())],
        retrieved=item["retrieved"],
        signal_badges=SIGNAL_BADGES,
    )
