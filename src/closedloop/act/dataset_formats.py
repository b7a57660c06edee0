"""The shapes of exported datasets (chat fine-tuning lines, preference pairs, Parquet rows),
their splits, and where their files may go.

Functions over :class:`ExportRow` (one stored interaction with its feedback summary), so the
formats are tested without a store (:mod:`closedloop.act.datasets` reads the rows and records
the files).

* **finetune** - OpenAI's chat fine-tuning JSONL: ``{"messages": [system?, user, ...,
  {"role": "assistant", "content": TARGET}]}``; roles are ``system``, ``user`` and
  ``assistant`` (``developer`` is written as ``system``), contents are strings.
* **dpo** - TRL's *conversational* preference form, for every row alike (a plain-text input is
  one user message), so one file has one schema: ``{"prompt": [messages], "chosen":
  [{"role": "assistant", "content": BETTER}], "rejected": [{"role": "assistant", "content":
  OUTPUT}]}``.
* **parquet** - one row per interaction with its feedback summary (:func:`parquet_table`).

The target of a row is the latest correction; without one, the text the user kept in their
latest ``edit`` signal; with ``include_positive``, an answer with a thumbs up or a rating in
the top quarter of its scale (and neither) is its own target.

>>> row = ExportRow(id="i-1", input="2+2?", output="5", correction="4")
>>> finetune_record(row)["messages"][-1]
{'role': 'assistant', 'content': '4'}
>>> dpo_record(row)["rejected"]
[{'role': 'assistant', 'content': '5'}]
>>> split_of("i-1", 0.0), split_of("i-1", 1.0)
('train', 'validation')
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.errors import ActionError, ClosedLoopError, ConfigError
from closedloop.store.db import utcnow

__all__ = [
    "POSITIVE_RATING",
    "REMOTE_SCHEMES",
    "SPLITS",
    "Built",
    "ExportKind",
    "ExportRow",
    "Skipped",
    "Split",
    "TargetBasis",
    "build_records",
    "check_url",
    "project_url",
    "conversation",
    "dedupe_key",
    "dpo_record",
    "encode_records",
    "finetune_record",
    "parquet_table",
    "remove_files",
    "split_of",
    "target_of",
    "write_files",
]

ExportKind = Literal["finetune", "dpo", "parquet"]
Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")
#: Object stores an API caller may name as an export URL (beside the export folder).
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
TargetBasis = Literal["correction", "edit", "positive"]

#: A rating at or above this share of its scale counts as positive (4 of 1-5).
POSITIVE_RATING = 0.75

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_SPACE = re.compile(r"\s+")


class Skipped(Exception):
    """A row that cannot go into the dataset; ``reason`` is counted in the result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class ExportRow:
    """One stored (redacted) interaction and its feedback summary.

    ``input`` is the text or the chat messages (dicts with ``role`` and ``content``);
    ``rating_norm`` the latest rating on a 0-1 scale; ``user_ids`` every stored user id the
    row's data came from (the interaction's user, who gave its feedback and signals).
    """

    id: str
    input: str | Sequence[Mapping[str, Any]]
    output: str | None = None
    ts: dt.datetime | None = None
    session_id: str | None = None
    user_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    prompt_name: str | None = None
    prompt_version: str | None = None
    correction: str | None = None
    edited_text: str | None = None
    thumbs: int | None = None
    rating: float | None = None
    rating_norm: float | None = None
    quality: float | None = None
    tags: tuple[str, ...] = ()
    user_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def positive(self) -> bool:
        """A thumbs up, or a rating in the top quarter of its scale."""
        return self.thumbs == 1 or (
            self.rating_norm is not None and self.rating_norm >= POSITIVE_RATING
        )


def conversation(
    value: str | Sequence[Mapping[str, Any]], *, system: str | None = None
) -> list[dict[str, str]]:
    """The input as chat messages with string contents (``system`` prepended when the input
    has no system message). Raises :class:`Skipped` for a role fine-tuning does not take or
    a message without text."""
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    else:
        messages = []
        for message in value:
            role = _ROLES.get(str(message.get("role", "")))
            if role is None:
                raise Skipped("unsupported_role")
            content = message.get("content")
            if not isinstance(content, str) or not content.strip():
                raise Skipped("empty_message")
            messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise Skipped("no_user_message")
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def target_of(row: ExportRow, *, include_positive: bool = False) -> tuple[str, TargetBasis]:
    """The text the answer should have been, and where it came from (see the module)."""
    if row.correction and row.correction.strip():
        return row.correction, "correction"
    if row.edited_text and row.edited_text.strip():
        return row.edited_text, "edit"
    if include_positive and row.positive and row.output and row.output.strip():
        return row.output, "positive"
    raise Skipped("no_target")


def finetune_record(
    row: ExportRow, *, system: str | None = None, include_positive: bool = False
) -> dict[str, Any]:
    """One line of OpenAI chat fine-tuning JSONL (raises :class:`Skipped`)."""
    target, _ = target_of(row, include_positive=include_positive)
    messages = conversation(row.input, system=system)
    messages.append({"role": "assistant", "content": target})
    return {"messages": messages}


def dpo_record(row: ExportRow, *, system: str | None = None) -> dict[str, Any]:
    """One TRL conversational preference pair: the correction or the kept edit is chosen,
    the stored output rejected (raises :class:`Skipped`)."""
    chosen, _ = target_of(row)
    if row.output is None or not row.output.strip():
        raise Skipped("no_output")
    if _normal(chosen) == _normal(row.output):
        raise Skipped("unchanged")
    return {
        "prompt": conversation(row.input, system=system),
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": row.output}],
    }


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def dedupe_key(prompt: Any, target: str) -> str:
    """A digest of the normalised (prompt, target) pair: case and runs of white space do not
    make two examples different."""
    text = (
        json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        if not isinstance(prompt, str)
        else prompt
    )
    pair = json.dumps([_normal(text), _normal(target)], ensure_ascii=False)
    return hashlib.sha256(pair.encode()).hexdigest()


def split_of(interaction_id: str, validation_share: float, salt: str = "closedloop") -> Split:
    """The split of an interaction, by a hash of its id: the same id always lands in the
    same split for the same share and salt."""
    if not 0.0 <= validation_share <= 1.0:
        raise ValueError(f"validation_share must lie in [0, 1], not {validation_share}")
    digest = hashlib.sha256(f"{salt}\0{interaction_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if point < validation_share else "train"


_PARQUET_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("session_id", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("prompt_name", pa.string()),
        pa.field("prompt_version", pa.string()),
        pa.field("input", pa.string()),
        pa.field(
            "messages",
            pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])),
        ),
        pa.field("output", pa.string()),
        pa.field("correction", pa.string()),
        pa.field("edited_text", pa.string()),
        pa.field("target", pa.string()),
        pa.field("target_basis", pa.string()),
        pa.field("thumbs", pa.int8()),
        pa.field("rating", pa.float64()),
        pa.field("rating_norm", pa.float64()),
        pa.field("quality", pa.float64()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("split", pa.string(), nullable=False),
    ]
)


def _messages(value: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [{"role": str(m.get("role")), "content": m.get("content")} for m in value]


def _target(row: ExportRow) -> tuple[str | None, str | None]:
    try:
        return target_of(row)
    except Skipped:
        return None, None


def parquet_table(rows: Sequence[ExportRow], splits: Sequence[Split]) -> pa.Table:
    """One Parquet row per interaction: its stored columns, the input as text (the chat
    messages as JSON) and as messages, and the feedback summary with the target, if any."""
    records = []
    for row, split in zip(rows, splits, strict=True):
        target, basis = _target(row)
        records.append(
            {
                "id": row.id,
                "ts": row.ts,
                "session_id": row.session_id,
                "user_id": row.user_id,
                "model_name": row.model_name,
                "model_version": row.model_version,
                "prompt_name": row.prompt_name,
                "prompt_version": row.prompt_version,
                "input": row.input
                if isinstance(row.input, str)
                else json.dumps(list(map(dict, row.input)), ensure_ascii=False),
                "messages": _messages(row.input),
                "output": row.output,
                "correction": row.correction,
                "edited_text": row.edited_text,
                "target": target,
                "target_basis": basis,
                "thumbs": row.thumbs,
                "rating": row.rating,
                "rating_norm": row.rating_norm,
                "quality": row.quality,
                "tags": list(row.tags),
                "split": split,
            }
        )
    return pa.Table.from_pylist(records, schema=_PARQUET_SCHEMA)


# -- building --------------------------------------------------------------------------------


@dataclass
class Built:
    """A format's records per split, the rows they came from, and the skipped rows' reasons."""

    records: dict[str, list[Any]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    rows: dict[str, list[ExportRow]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    skipped: Counter[str] = field(default_factory=Counter)


def build_records(
    rows: Sequence[ExportRow],
    kind: ExportKind,
    *,
    validation_share: float,
    salt: str,
    dedupe: bool,
    include_positive: bool,
    system: str | None,
) -> Built:
    built = Built()
    seen: set[str] = set()
    for row in rows:
        split = split_of(row.id, validation_share, salt)
        record: Any = row
        if kind != "parquet":  # Parquet: every interaction, keyed by its id
            try:
                if kind == "finetune":
                    record = finetune_record(row, system=system, include_positive=include_positive)
                    prompt, target = record["messages"][:-1], record["messages"][-1]["content"]
                else:
                    record = dpo_record(row, system=system)
                    prompt, target = record["prompt"], record["chosen"][0]["content"]
            except Skipped as skip:
                built.skipped[skip.reason] += 1
                continue
            if dedupe:
                key = dedupe_key(prompt, target)
                if key in seen:
                    built.skipped["duplicate"] += 1
                    continue
                seen.add(key)
        built.records[split].append(record)
        built.rows[split].append(row)
    return built


def encode_records(kind: ExportKind, records: list[Any], split: Split) -> bytes:
    if kind == "parquet":  # the split column says which file a row is in
        sink = pa.BufferOutputStream()
        pq.write_table(parquet_table(records, [split] * len(records)), sink)
        return bytes(sink.getvalue().to_pybytes())
    lines = (json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records)
    return "".join(line + "\n" for line in lines).encode()


# -- where files go --------------------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def _normalised(url: str, options: Mapping[str, Any]) -> tuple[frozenset[str], str]:
    """The protocol family and the normalised path fsspec would write ``url`` to (``s3a://``
    and ``s3://`` are one store; ``bucket//lake`` is ``bucket/lake``)."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"url: {exc}; install the store's fsspec package", field="url") from exc
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return frozenset(protocols), posixpath.normpath("/" + str(path)).lstrip("/")


def _inside(url: str, lake_url: str, options: Mapping[str, Any]) -> bool:
    family, path = _normalised(url, options)
    lake_family, lake = _normalised(lake_url, options)
    # a path prefix ends at a "/": s3://bucket/lakehouse is not inside s3://bucket/lake
    return bool(family & lake_family) and (path == lake or path.startswith(lake.rstrip("/") + "/"))


def project_url(settings_root: str, project: str, url: str | None, kind: str) -> str:
    """Where an API caller's (or a rule's) export goes: ``url``, a relative folder, under the
    project's own root ``<settings_root>/<project>``; default a new ``<kind>-<time>`` folder
    there. A caller never names another project's folder, an absolute path or another
    store.

    >>> project_url("/srv/exports", "shop", "weekly/dpo", "dpo")
    '/srv/exports/shop/weekly/dpo'
    """
    root = f"{settings_root.rstrip('/')}/{project}"
    if url is None:
        return f"{root}/{kind}-{utcnow().strftime('%Y%m%dT%H%M%S%fZ')}"
    relative = posixpath.normpath(url.replace("\\", "/"))
    if "://" in url or url.startswith(("/", "~")) or relative == ".." or relative.startswith("../"):
        raise ConfigError(
            "url: send a relative folder such as weekly/dpo; exports made through the API go "
            "under the project's own export folder",
            field="url",
        )
    return f"{root}/{relative}"


def check_url(
    url: str,
    export_dir: Path | str,
    *,
    lake_url: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """``url`` if an API caller may write there: a folder under ``export_dir`` (relative
    paths are taken from it), or an object-store URL (:data:`REMOTE_SCHEMES`) outside the
    lake (compared as fsspec resolves both with ``storage_options``, the lake's). Anything
    else could let a caller write anywhere on the server's disk, or into the lake."""
    scheme = _scheme(url)
    options = dict(storage_options or {})
    if scheme in REMOTE_SCHEMES:
        url = f"{scheme}://{url.split('://', 1)[1]}"  # fsspec knows s3://, not S3://
        if lake_url and _inside(url, lake_url, options):
            raise ConfigError("url lies inside the lake; choose another prefix", field="url")
        return url
    if scheme != "file":
        raise ConfigError(
            f"url: the scheme {scheme!r} is not allowed; use a folder under the export "
            f"directory or one of {', '.join(s + '://' for s in REMOTE_SCHEMES)}",
            field="url",
        )
    root = Path(export_dir).resolve()
    path = url.split("://", 1)[1] if "://" in url else url
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise ConfigError(
            "url: a local folder must lie under the server's export directory "
            "(CLOSEDLOOP_EXPORT_DIR); send a relative path or an s3:// URL",
            field="url",
        )
    if lake_url and _inside(str(target), lake_url, options):
        raise ConfigError("url lies inside the lake; choose another folder", field="url")
    return str(target)


def write_files(
    folder: str, files: Mapping[str, bytes], options: Mapping[str, Any]
) -> dict[str, str]:
    """Write each file into ``folder`` (refusing to overwrite one); their URLs."""
    try:
        fs, root = fsspec.core.url_to_fs(folder, **options)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"url: {exc}; for s3:// install closedloop[s3]", field="url") from exc
    urls = {name: f"{folder.rstrip('/')}/{name}" for name in files}
    written: list[str] = []
    try:
        for name in files:
            if fs.exists(f"{root.rstrip('/')}/{name}"):
                raise ConfigError(
                    f"url: {urls[name]} exists already; exports never overwrite a file, "
                    "choose a new folder",
                    field="url",
                )
        if _scheme(folder) == "file":  # object stores have no folders (s3fs would even
            fs.makedirs(root, exist_ok=True)  # create a missing bucket)
        for name, data in files.items():
            with fs.open(f"{root.rstrip('/')}/{name}", "wb") as handle:
                handle.write(data)
            written.append(f"{root.rstrip('/')}/{name}")
    except ClosedLoopError:
        raise
    except Exception as exc:  # any store's failure (permissions, missing bucket, network)
        remove_files(fs, written)
        raise ActionError(f"could not write the export to {folder}: {exc}") from exc
    return urls


def remove_files(fs: Any, paths: Sequence[str]) -> None:
    for path in paths:
        try:
            fs.rm(path)
        except Exception:  # best effort: the first error is the one reported
            pass
