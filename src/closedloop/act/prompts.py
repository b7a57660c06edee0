"""The prompt registry: versions and labels.

Each prompt name has integer versions (1, 2, ...) and labels that point at one version each:
``production`` (what apps are served), ``candidate`` (under an A/B test) and free labels. The
first version of a name becomes ``production``. Events carry versions as strings: the registry
serves ``str(version)`` and the A/B evaluation matches interactions on it.

Candidates (a new version with examples from corrections) are built by
:mod:`closedloop.act.candidates`; their examples keep the ``interaction_id`` and ``feedback_id``
they came from so that erasure can remove them (:func:`forget_examples`), and apps are served
examples without them (:data:`SERVED_KEYS`).

Moving ``production`` by hand stops the prompt's running A/B test in the same transaction: its
control would otherwise be stale, and its evaluation could promote over the manual choice.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.errors import ConfigError, NotFound
from closedloop.store import models
from closedloop.store.db import utc, utcnow

__all__ = [
    "PromptVersion",
    "Resolved",
    "create_version",
    "forget_examples",
    "get",
    "labels",
    "names",
    "remove_label",
    "resolve",
    "set_label",
    "validate_name",
    "versions",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
LABEL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
Source = Literal["manual", "candidate"]
PROVENANCE_KEYS = ("interaction_id", "feedback_id")
"""Keys of a stored example that say where it came from: kept for erasure, never served."""


def _served_example(example: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in example.items() if k not in PROVENANCE_KEYS}


@dataclass(frozen=True, kw_only=True)
class PromptVersion:
    """One stored version of a prompt."""

    project_id: int
    name: str
    version: int
    template: str
    examples: tuple[dict[str, Any], ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    source: str = "manual"
    parent_version: int | None = None
    firing_id: int | None = None
    created_at: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the version as an integer)."""
        return {
            "name": self.name,
            "version": self.version,
            "template": self.template,
            "examples": list(self.examples),
            "config": dict(self.config),
            "source": self.source,
            "parent_version": self.parent_version,
            "firing_id": self.firing_id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }

    def served(self) -> dict[str, Any]:
        """What the SDK serves: the version as the string interactions carry, and the examples
        without the ids they came from."""
        return {
            "version": str(self.version),
            "template": self.template,
            "examples": [_served_example(e) for e in self.examples],
            "config": dict(self.config),
        }


@dataclass(frozen=True, kw_only=True)
class Resolved:
    """What an app is served for a name: the labelled version and the running test, if any."""

    name: str
    label: str
    version: PromptVersion
    candidate: PromptVersion | None = None
    share: float = 0.0
    test_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The body of ``GET /v1/prompts/{name}/resolve``."""
        return {
            "name": self.name,
            "label": self.label,
            "production": self.version.served(),
            "test": None
            if self.candidate is None
            else {"id": self.test_id, "share": self.share, "candidate": self.candidate.served()},
        }


def validate_name(name: str, *, field_name: str = "name") -> str:
    """``name`` if it is a valid prompt name, else :class:`ConfigError` naming the field."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{field_name} {name!r} is not a valid prompt name: 1-128 letters, digits, '_', "
            "'.' or '-', starting with a letter or digit",
            field=field_name,
        )
    return name


def _validate_label(label: str) -> str:
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise ConfigError(
            f"label {label!r} is not valid: 1-32 lowercase letters, digits, '_' or '-', "
            "starting with a letter (e.g. production, candidate)",
            field="label",
        )
    return label


def _examples(examples: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or "output" not in ex:
            raise ConfigError(
                f"examples[{i}] must be an object with `input` and `output`", field="examples"
            )
        out.append(dict(ex))
    return out


def _row_version(row: Any) -> PromptVersion:
    return PromptVersion(
        project_id=row.project_id,
        name=row.name,
        version=row.version,
        template=row.template,
        examples=tuple(json.loads(row.examples)),
        config=json.loads(row.config),
        source=row.source,
        parent_version=row.parent_version,
        firing_id=row.firing_id,
        created_at=utc(row.created_at),
    )


def _put_label(conn: Connection, project_id: int, name: str, label: str, version: int) -> None:
    """Point ``label`` at ``version`` within the caller's transaction (no test is stopped)."""
    pl = models.prompt_labels
    where = sa.and_(pl.c.project_id == project_id, pl.c.name == name, pl.c.label == label)
    now = utcnow()
    if conn.execute(pl.update().where(where).values(version=version, updated_at=now)).rowcount:
        return
    conn.execute(
        pl.insert().values(
            project_id=project_id, name=name, label=label, version=version, updated_at=now
        )
    )


def _delete_label(
    conn: Connection, project_id: int, name: str, label: str, *, version: int | None = None
) -> bool:
    """Remove ``label`` (only while it points at ``version``, if given) within the caller's
    transaction; whether it was."""
    pl = models.prompt_labels
    where = [pl.c.project_id == project_id, pl.c.name == name, pl.c.label == label]
    if version is not None:
        where.append(pl.c.version == version)
    return bool(conn.execute(pl.delete().where(*where)).rowcount)


def _move_label(conn: Connection, project_id: int, name: str, label: str, version: int) -> None:
    """Point ``label`` at ``version`` by hand: when ``production`` moves, the running A/B test
    of ``name`` is stopped (its control is stale) and its ``candidate`` label removed."""
    if label == "production":
        pl, t = models.prompt_labels, models.ab_tests
        current = conn.execute(
            sa.select(pl.c.version).where(
                pl.c.project_id == project_id, pl.c.name == name, pl.c.label == "production"
            )
        ).scalar()
        if current is not None and current != version:
            running = conn.execute(
                sa.select(t.c.id, t.c.candidate_version, t.c.evidence).where(
                    t.c.project_id == project_id, t.c.prompt == name, t.c.state == "running"
                )
            ).all()
            now = utcnow()
            for test in running:
                evidence = {
                    **json.loads(test.evidence or "{}"),
                    "decision": "stopped",
                    "stopped_because": f"production moved by hand from v{current} to "
                    f"v{version} while the test ran against v{current}",
                    "updated_at": now.isoformat(),
                }
                stopped = conn.execute(
                    t.update()
                    .where(t.c.id == test.id, t.c.state == "running")
                    .values(state="stopped", ended_at=now, evidence=json.dumps(evidence))
                ).rowcount
                if stopped:
                    _delete_label(
                        conn, project_id, name, "candidate", version=test.candidate_version
                    )
    _put_label(conn, project_id, name, label, version)


def create_version(
    engine: Engine,
    project_id: int,
    name: str,
    template: str,
    *,
    examples: Iterable[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
    source: Source = "manual",
    parent_version: int | None = None,
    firing_id: int | None = None,
    label: str | None = None,
) -> PromptVersion:
    """Store the next version of ``name``; the first version of a name becomes
    ``production``, and ``label`` (if given) points at the new one (``production`` moved this
    way stops the running test, as :func:`set_label` does)."""
    validate_name(name)
    if not isinstance(template, str) or not template.strip() or "\x00" in template:
        raise ConfigError("template must be a non-empty string without NUL", field="template")
    if label is not None:
        _validate_label(label)
    rows = _examples(examples)
    p, pl = models.prompts, models.prompt_labels
    for attempt in range(5):  # two writers may race for the same next number
        try:
            with engine.begin() as conn:
                latest = conn.execute(
                    sa.select(sa.func.max(p.c.version)).where(
                        p.c.project_id == project_id, p.c.name == name
                    )
                ).scalar()
                version = int(latest or 0) + 1
                conn.execute(
                    p.insert().values(
                        project_id=project_id,
                        name=name,
                        version=version,
                        template=template,
                        examples=json.dumps(rows),
                        config=json.dumps(dict(config or {})),
                        source=source,
                        parent_version=parent_version,
                        firing_id=firing_id,
                        created_at=utcnow(),
                    )
                )
                has_production = conn.execute(
                    sa.select(pl.c.version).where(
                        pl.c.project_id == project_id,
                        pl.c.name == name,
                        pl.c.label == "production",
                    )
                ).first()
                if has_production is None:
                    _put_label(conn, project_id, name, "production", version)
                if label is not None:
                    _move_label(conn, project_id, name, label, version)
            break
        except sa.exc.IntegrityError:
            if attempt == 4:
                raise
    return get(engine, project_id, name, version=version)


def get(
    engine: Engine,
    project_id: int,
    name: str,
    *,
    label: str = "production",
    version: int | None = None,
) -> PromptVersion:
    """One version of ``name``: ``version`` if given, else the one ``label`` points at."""
    validate_name(name)
    p, pl = models.prompts, models.prompt_labels
    with engine.connect() as conn:
        if version is None:
            version = conn.execute(
                sa.select(pl.c.version).where(
                    pl.c.project_id == project_id, pl.c.name == name, pl.c.label == label
                )
            ).scalar()
            if version is None:
                raise NotFound(f"prompt {name!r} has no {label!r} version in this project")
        row = conn.execute(
            sa.select(p).where(
                p.c.project_id == project_id, p.c.name == name, p.c.version == version
            )
        ).first()
    if row is None:
        raise NotFound(f"prompt {name!r} has no version {version} in this project")
    return _row_version(row)


def versions(engine: Engine, project_id: int, name: str) -> list[PromptVersion]:
    """Every version of ``name``, oldest first."""
    validate_name(name)
    p = models.prompts
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(p).where(p.c.project_id == project_id, p.c.name == name).order_by(p.c.version)
        ).all()
    return [_row_version(r) for r in rows]


def labels(engine: Engine, project_id: int, name: str) -> dict[str, int]:
    """The labels of ``name`` and the versions they point at."""
    pl = models.prompt_labels
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(pl.c.label, pl.c.version).where(
                pl.c.project_id == project_id, pl.c.name == name
            )
        ).all()
    return {r.label: r.version for r in rows}


def names(engine: Engine, project_id: int) -> list[dict[str, Any]]:
    """Every prompt name of the project with its latest version and labels."""
    p, pl = models.prompts, models.prompt_labels
    with engine.connect() as conn:
        latest = conn.execute(
            sa.select(p.c.name, sa.func.max(p.c.version).label("latest"))
            .where(p.c.project_id == project_id)
            .group_by(p.c.name)
            .order_by(p.c.name)
        ).all()
        tags = conn.execute(
            sa.select(pl.c.name, pl.c.label, pl.c.version).where(pl.c.project_id == project_id)
        ).all()
    by_name: dict[str, dict[str, int]] = {}
    for t in tags:
        by_name.setdefault(t.name, {})[t.label] = t.version
    return [
        {"name": r.name, "latest_version": r.latest, "labels": by_name.get(r.name, {})}
        for r in latest
    ]


def set_label(engine: Engine, project_id: int, name: str, label: str, version: int) -> None:
    """Point ``label`` of ``name`` at ``version`` (which must exist). Moving ``production``
    to another version stops the prompt's running A/B test (state ``stopped``, the reason in
    its evidence) in the same transaction."""
    validate_name(name)
    _validate_label(label)
    get(engine, project_id, name, version=version)  # NotFound if missing
    with engine.begin() as conn:
        _move_label(conn, project_id, name, label, version)


def remove_label(
    engine: Engine, project_id: int, name: str, label: str, *, version: int | None = None
) -> bool:
    """Remove ``label`` (only while it points at ``version``, if given); whether it was."""
    with engine.begin() as conn:
        return _delete_label(conn, project_id, name, label, version=version)


def _for_apps(version: PromptVersion) -> PromptVersion:
    return replace(version, examples=tuple(_served_example(e) for e in version.examples))


def resolve(engine: Engine, project_id: int, name: str, *, label: str = "production") -> Resolved:
    """What to serve for ``name``: the ``label`` version and, for ``production``, the running
    A/B test's candidate with its traffic share (raises :class:`NotFound`). Examples come
    without the ids they were learned from."""
    served = _for_apps(get(engine, project_id, name, label=label))
    if label != "production":
        return Resolved(name=name, label=label, version=served)
    t = models.ab_tests
    with engine.connect() as conn:
        test = conn.execute(
            sa.select(t.c.id, t.c.candidate_version, t.c.share)
            .where(t.c.project_id == project_id, t.c.prompt == name, t.c.state == "running")
            .order_by(t.c.id.desc())
            .limit(1)
        ).first()
    if test is None:
        return Resolved(name=name, label=label, version=served)
    candidate = _for_apps(get(engine, project_id, name, version=test.candidate_version))
    return Resolved(
        name=name,
        label=label,
        version=served,
        candidate=candidate,
        share=float(test.share),
        test_id=int(test.id),
    )


def _learned_from(example: Mapping[str, Any], interactions: set[str], feedback: set[str]) -> bool:
    return example.get("interaction_id") in interactions or example.get("feedback_id") in feedback


def forget_examples(
    conn: Connection,
    project_id: int,
    interaction_ids: Collection[str],
    feedback_ids: Collection[str] = (),
) -> int:
    """Remove the examples learned from ``interaction_ids`` or from the feedback
    ``feedback_ids`` (a user's correction of another's answer) from every version of every
    prompt of the project, within the caller's transaction; how many were removed (for
    erasure)."""
    interactions = {str(i) for i in interaction_ids}
    feedback = {str(i) for i in feedback_ids}
    if not interactions and not feedback:
        return 0
    p = models.prompts
    rows = conn.execute(
        sa.select(p.c.name, p.c.version, p.c.examples).where(
            p.c.project_id == project_id, p.c.examples != "[]"
        )
    ).all()
    removed = 0
    for row in rows:
        examples = json.loads(row.examples)
        kept = [
            e
            for e in examples
            if not (isinstance(e, Mapping) and _learned_from(e, interactions, feedback))
        ]
        if len(kept) == len(examples):
            continue
        removed += len(examples) - len(kept)
        conn.execute(
            p.update()
            .where(p.c.project_id == project_id, p.c.name == row.name, p.c.version == row.version)
            .values(examples=json.dumps(kept))
        )
    return removed
