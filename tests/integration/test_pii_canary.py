"""PII canary: unique PII strings go in through every way in, and come out nowhere.

Per backend, one run sends events carrying freshly generated PII canaries (emails, Luhn-valid
card numbers, mod-97-valid IBANs, IPv4/IPv6 addresses, SSNs, phone numbers, credentials in
URLs, API keys) in every free-text field, through every way into the one ingest path:

* ``POST /v1/events`` (secret key), ``POST /v1/traces`` (OTLP protobuf and OTLP/JSON, the
  canaries in the ``gen_ai`` prompt / completion attributes, retriever documents, tool spans,
  ``metadata`` and ``tag.tags``) and ``POST /v1/browser/events`` (public key, allowed origin),
  all on a real ``closedloop serve`` process (:class:`tests.e2e.server.LiveServer`);
* ``closedloop import FILE`` in a subprocess (the input file, the user's own, is deleted
  before the scan);
* the SDK's embedded mode (``Client(database_url=..., project=...)``) in this process.

Each path also sends a rejected event carrying canaries (a wrong-typed field next to PII text).
Then every artefact is scanned for every canary (and the digits-only form of cards, phones and
SSNs): the database (every table dumped as text: ``COPY`` on PostgreSQL, ``SELECT *`` on
SQLite), the raw bytes of every file under the run's folder (the SQLite file and its
``-wal``/``-shm`` while the server runs and after it stopped, the data directories where a lake,
exports or a spool would live, the server log), the logs (the server's stdout/stderr, the
import command's output, Python logging of this process) and every answer sent back.

Each path gets its own canaries, so a finding names the path, the entity and the artefact.
Positive controls (rows stored per path, a ``<EMAIL>`` mask in each path's stored bodies) keep
the scan from passing by storing nothing.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import logging
import random
import secrets
import string
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from closedloop.sdk.client import Client
from closedloop.sdk.envelope import make_event
from closedloop.store import migrate
from closedloop.store.db import create_engine
from closedloop.store.projects import Projects
from tests.conftest import Tenant
from tests.e2e.server import LiveServer

APP = "https://app.example.com"
PROJECT = "acme"
PATHS = ("http", "otlp", "browser", "import", "sdk")
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in nanoseconds

BACKEND_PARAMS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


# -- canaries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """One PII value sent through one path; ``needles`` must appear nowhere afterwards."""

    path: str
    entity: str
    value: str
    needles: tuple[str, ...]


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _luhn_completed(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return partial + str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    """A German IBAN with a valid ISO 13616 mod-97 checksum."""
    bban = "".join(rng.choice(string.digits) for _ in range(18))
    moved = int("".join(str(int(ch, 36)) for ch in bban + "DE00"))
    return f"DE{98 - moved % 97:02d}{bban}"


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def make_canaries(path: str, rng: random.Random) -> dict[str, Canary]:
    """One canary of each reliably detected entity type, unique to this run and ``path``."""
    tag = secrets.token_hex(5)
    card = _luhn_completed("4" + "".join(rng.choice(string.digits) for _ in range(14)))
    iban = _iban(rng)
    password = f"pw{secrets.token_hex(8)}"
    values = {
        "email": f"canary.{tag}@example.org",
        "card": " ".join(card[i : i + 4] for i in range(0, 16, 4)),
        "iban": " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)),
        "ipv4": ".".join(str(rng.randint(11, 223)) for _ in range(4)),
        "ipv6": "2001:db8:{:x}:{:x}::{:x}".format(*(rng.randint(0x1000, 0xFFFF) for _ in "abc")),
        "ssn": f"{rng.randint(100, 665):03d}-{rng.randint(10, 99):02d}-{rng.randint(1000, 9999)}",
        "phone": f"+1 415-555-{rng.randint(1000, 9999)}",
        "e164": f"+1415555{rng.randint(1000, 9999)}",
        "credentials": f"https://user{tag}:{password}@db.example.net/orders",
        "openai_key": "sk-" + _alnum(rng, 40),
        "github_token": "ghp_" + _alnum(rng, 36),
    }
    out: dict[str, Canary] = {}
    for entity, value in values.items():
        needles = [value]
        if entity in ("card", "ssn", "phone"):
            needles.append(_digits(value))
        if entity == "iban":
            needles.append(iban)
        if entity == "credentials":
            needles = [f"user{tag}:{password}", password]
        out[entity] = Canary(path, entity, value, tuple(needles))
    return out


def paragraph(c: dict[str, Canary]) -> str:
    """Free text holding every canary of a set, in ordinary sentences."""
    v = {k: x.value for k, x in c.items()}
    return (
        f"Hello, please update my account. Reach me at {v['email']} or call {v['phone']} "
        f"(mobile {v['e164']}). Charge the card {v['card']} or wire to IBAN {v['iban']}. "
        f"My SSN is {v['ssn']}. I logged in from {v['ipv4']} and {v['ipv6']} yesterday. "
        f"The export lives at {v['credentials']} and the keys are {v['openai_key']} and "
        f"{v['github_token']}. Thanks!"
    )


def metadata(c: dict[str, Canary]) -> dict[str, Any]:
    """Nested metadata (depth 5, the contract's limit) with canaries as values."""
    v = {k: x.value for k, x in c.items()}
    return {
        "customer": {
            "contact": {"email": v["email"], "phones": [v["phone"], v["e164"]]},
            "payment": {"card": _digits(v["card"]), "iban": v["iban"].replace(" ", "")},
            "notes": paragraph(c),
        },
        "client_ip": v["ipv4"],
        "trail": [v["ipv6"], {"ssn": v["ssn"], "dsn": v["credentials"]}],
        "keys": [v["openai_key"], v["github_token"]],
    }


def tags(c: dict[str, Canary]) -> list[str]:
    return [x.value for x in c.values()]


def short(c: dict[str, Canary]) -> str:
    """A few canaries, for fields of at most 256 characters (label, message name, source)."""
    return f"{c['email'].value} {c['ssn'].value}"


# -- event bodies --------------------------------------------------------------------------


def interaction_bodies(c: dict[str, Canary]) -> list[dict[str, Any]]:
    text = paragraph(c)
    return [
        {"input": text, "output": text, "metadata": metadata(c), "tags": tags(c)},
        {
            "input": [
                {"role": "system", "content": text},
                {"role": "user", "content": text, "name": c["email"].value},
            ],
            "output": text,
            "model": {"name": "gpt-test"},
            "retrieved": [
                {"id": "doc-1", "score": 0.5, "text": text, "source": c["credentials"].value}
            ],
            "metadata": metadata(c),
            "tags": tags(c),
        },
    ]


def feedback_body(c: dict[str, Canary], interaction_id: str) -> dict[str, Any]:
    text = paragraph(c)
    return {
        "interaction_id": interaction_id,
        "thumbs": -1,
        "label": short(c),
        "correction": text,
        "comment": text,
        "metadata": metadata(c),
        "tags": tags(c),
    }


def signal_bodies(c: dict[str, Canary], interaction_id: str) -> list[dict[str, Any]]:
    text = paragraph(c)
    return [
        {"interaction_id": interaction_id, "kind": "edit", "text": text, "metadata": metadata(c)},
        {"interaction_id": interaction_id, "kind": "click", "target": text, "rank": 1},
    ]


def rejected_interaction(c: dict[str, Canary], id: str) -> dict[str, Any]:
    """Rejected for ``body.latency_ms`` (a string), with PII in every other field."""
    body = {**interaction_bodies(c)[0], "latency_ms": "slow"}
    return make_event("interaction", body, id=id)


def contract_events(c: dict[str, Canary], prefix: str) -> list[dict[str, Any]]:
    """Two interactions, a feedback and two signals with ids ``<prefix>-...``."""
    i1, i2 = (f"{prefix}-i{n}" for n in (1, 2))
    return [
        make_event("interaction", interaction_bodies(c)[0], id=i1),
        make_event("interaction", interaction_bodies(c)[1], id=i2),
        make_event("feedback", feedback_body(c, i1), id=f"{prefix}-f1"),
        *(
            make_event("signal", body, id=f"{prefix}-s{n}")
            for n, body in enumerate(signal_bodies(c, i2), start=1)
        ),
    ]


# -- OTLP ----------------------------------------------------------------------------------


def _any(value: Any) -> AnyValue:
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(string_value=str(value))


def _span(
    trace: bytes, span_id: int, attrs: dict[str, Any], *, name: str, start_ms: int, end_ms: int
) -> Span:
    return Span(
        trace_id=trace,
        span_id=span_id.to_bytes(8, "big"),
        name=name,
        start_time_unix_nano=T0 + start_ms * 1_000_000,
        end_time_unix_nano=T0 + end_ms * 1_000_000,
        attributes=[KeyValue(key=k, value=_any(v)) for k, v in attrs.items()],
    )


def _export(*spans: Span) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=_any("support-bot"))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "canary"
    scope_spans.spans.extend(spans)
    return request


def otlp_protobuf(c: dict[str, Canary], trace: bytes) -> bytes:
    """A RAG trace: a retriever span, an LLM span with legacy indexed ``gen_ai.prompt`` /
    ``gen_ai.completion`` attributes, a tool span, and an LLM span rejected for a missing input
    (its completion carries canaries)."""
    text = paragraph(c)
    retriever = _span(
        trace,
        1,
        {
            "gen_ai.operation.name": "retrieval",
            "retrieval.documents.0.document.id": "kb-7",
            "retrieval.documents.0.document.content": text,
            "retrieval.documents.0.document.metadata": json.dumps(
                {"source": c["credentials"].value}
            ),
        },
        name="retrieve",
        start_ms=0,
        end_ms=10,
    )
    llm = _span(
        trace,
        2,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-test",
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": text,
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": text,
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": text,
            "metadata": json.dumps(metadata(c)),
            "tag.tags": tags(c),
        },
        name=f"chat {c['email'].value}",
        start_ms=20,
        end_ms=120,
    )
    tool = _span(
        trace,
        3,
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "crm_lookup",
            "input.value": json.dumps({"email": c["email"].value, "ssn": c["ssn"].value}),
            "output.value": (
                f"phone {c['phone'].value}, card {c['card'].value}, ip {c['ipv4'].value}"
            ),
        },
        name="crm_lookup",
        start_ms=130,
        end_ms=140,
    )
    no_input = _span(
        trace,
        4,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-test",
            "gen_ai.completion.0.content": text,
        },
        name="chat",
        start_ms=150,
        end_ms=160,
    )
    return _export(retriever, llm, tool, no_input).SerializeToString()


def otlp_json(c: dict[str, Canary], trace: bytes) -> bytes:
    """OTLP/JSON (hex ids): an LLM span with structured ``gen_ai.input.messages`` /
    ``gen_ai.output.messages`` and ``gen_ai.system_instructions``."""
    text = paragraph(c)
    parts = [{"type": "text", "content": text}]
    llm = _span(
        trace,
        1,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-test",
            "gen_ai.system_instructions": json.dumps(parts),
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": parts}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": parts}]),
            "metadata": json.dumps(metadata(c)),
        },
        name="chat",
        start_ms=0,
        end_ms=50,
    )
    doc = json_format.MessageToDict(_export(llm))
    for resource in doc["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for s in scope["spans"]:
                for key in ("traceId", "spanId"):
                    s[key] = base64.b64decode(s[key]).hex()
    return json.dumps(doc).encode()


def otel_id(trace: bytes, span_id: int) -> str:
    return f"otel-{trace.hex()}-{span_id.to_bytes(8, 'big').hex()}"


# -- the run -------------------------------------------------------------------------------


@dataclass
class CanaryRun:
    """What one run sent, and every artefact it left, by name."""

    backend: str
    canaries: list[Canary]
    stored_ids: dict[str, list[str]]  # path -> ids expected in the store
    database: dict[str, bytes] = field(default_factory=dict)  # table dumps
    files: dict[str, bytes] = field(default_factory=dict)  # raw file bytes
    logs: dict[str, bytes] = field(default_factory=dict)
    answers: dict[str, bytes] = field(default_factory=dict)
    bodies: dict[str, list[str]] = field(default_factory=dict)  # path -> stored bodies

    def leaks(self, artefacts: dict[str, bytes]) -> list[str]:
        found = []
        for name, data in artefacts.items():
            for canary in self.canaries:
                for needle in canary.needles:
                    if needle.encode() in data:
                        found.append(
                            f"{canary.path}/{canary.entity} {needle!r} in {name} ({self.backend})"
                        )
                        break
        return found


class _Records(logging.Handler):
    """Every log record of this process, formatted with its traceback (as caplog keeps)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def _capture_logging() -> Iterator[_Records]:
    """What ``caplog`` does, for a module-scoped run: closedloop's loggers from DEBUG, the
    libraries' (SQLAlchemy, alembic, httpx, uvicorn) from INFO."""
    handler = _Records()
    root, own = logging.getLogger(), logging.getLogger("closedloop")
    levels = root.level, own.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    own.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        own.setLevel(levels[1])


def _read_files(root: Path, label: str) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):  # a -shm/-journal may vanish
                out[f"file({label}) {path.relative_to(root)}"] = path.read_bytes()
    return out


def _dump_tables(database_url: str) -> dict[str, bytes]:
    """Every table as text: ``COPY ... TO STDOUT`` on PostgreSQL, ``SELECT *`` on SQLite."""
    engine = create_engine(database_url)
    out: dict[str, bytes] = {}
    try:
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                names = conn.execute(
                    sa.text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
                    )
                ).scalars()
                tables = sorted(names)
            raw = engine.raw_connection()
            try:
                cursor = raw.driver_connection.cursor()  # type: ignore[union-attr]
                for table in tables:
                    chunks = []
                    quoted = '"' + table.replace('"', '""') + '"'
                    with cursor.copy(f"COPY (SELECT * FROM {quoted}) TO STDOUT") as copy:
                        for chunk in copy:
                            chunks.append(bytes(chunk))
                    out[f"table {table}"] = b"".join(chunks)
            finally:
                raw.close()
        else:
            with engine.connect() as conn:
                tables = sorted(
                    conn.execute(
                        sa.text("SELECT name FROM sqlite_master WHERE type = 'table'")
                    ).scalars()
                )
                for table in tables:
                    rows = conn.exec_driver_sql(f'SELECT * FROM "{table}"').all()
                    out[f"table {table}"] = "\n".join(
                        "\t".join(str(v) for v in row) for row in rows
                    ).encode()
    finally:
        engine.dispose()
    return out


def _bodies(database_url: str, ids: dict[str, list[str]]) -> dict[str, list[str]]:
    engine = create_engine(database_url)
    out: dict[str, list[str]] = {}
    try:
        with engine.connect() as conn:
            for path, wanted in ids.items():
                found: list[str] = []
                for table in ("interactions", "feedback", "signals"):
                    found += (
                        conn.execute(
                            sa.text(f"SELECT body FROM {table} WHERE id IN :ids").bindparams(
                                sa.bindparam("ids", expanding=True)
                            ),
                            {"ids": wanted},
                        )
                        .scalars()
                        .all()
                    )
                out[path] = found
    finally:
        engine.dispose()
    return out


def _send_http(
    server: LiveServer, secret: str, public: str, sets: dict[str, dict[str, Canary]], run: CanaryRun
) -> None:
    secret_headers = {"authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # POST /v1/events: the contract's events, and one rejected for a wrong type.
        c = sets["http"]
        batch = [*contract_events(c, "http"), rejected_interaction(c, "http-rejected")]
        r = http.post("/v1/events", json={"events": batch}, headers=secret_headers)
        run.answers["POST /v1/events"] = r.content
        assert r.status_code == 207, r.text
        answer = r.json()
        assert (answer["stored"], answer["rejected"]) == (5, 1), answer
        assert answer["results"][-1]["error"]["field"] == "body.latency_ms", answer

        # POST /v1/traces: protobuf, then OTLP/JSON.
        c = sets["otlp"]
        proto_trace, json_trace = secrets.token_bytes(16), secrets.token_bytes(16)
        r = http.post(
            "/v1/traces",
            content=otlp_protobuf(c, proto_trace),
            headers={**secret_headers, "content-type": "application/x-protobuf"},
        )
        run.answers["POST /v1/traces (protobuf)"] = r.content
        assert r.status_code == 200, r.text
        assert b"body.input" in r.content, r.content  # the span without input was rejected
        r = http.post(
            "/v1/traces",
            content=otlp_json(c, json_trace),
            headers={**secret_headers, "content-type": "application/json"},
        )
        run.answers["POST /v1/traces (json)"] = r.content
        assert r.status_code == 200, r.text
        run.stored_ids["otlp"] = [otel_id(proto_trace, 2), otel_id(json_trace, 1)]

        # POST /v1/browser/events: text/plain beacon, public key in the body, allowed origin.
        c = sets["browser"]
        events = [
            make_event("feedback", feedback_body(c, "http-i1"), id="browser-f1"),
            *(
                make_event("signal", body, id=f"browser-s{n}")
                for n, body in enumerate(signal_bodies(c, "http-i1"), start=1)
            ),
            # a public key may not send interactions: rejected, with canaries in every field
            make_event("interaction", interaction_bodies(c)[1], id="browser-rejected"),
        ]
        r = http.post(
            "/v1/browser/events",
            content=json.dumps({"key": public, "events": events}).encode(),
            headers={"content-type": "text/plain;charset=UTF-8", "origin": APP},
        )
        run.answers["POST /v1/browser/events"] = r.content
        assert r.status_code == 207, r.text
        assert (r.json()["stored"], r.json()["rejected"]) == (3, 1), r.text


def _send_sdk(database_url: str, c: dict[str, Canary], sdk_dir: Path) -> int:
    """Embedded mode in this process; returns how many events were stored."""
    client = Client(
        database_url=database_url,
        project=PROJECT,
        flush_interval=0.05,
        spool_path=sdk_dir / "spool.jsonl",
        embedded_settings={"data_dir": sdk_dir},
    )
    first, second = interaction_bodies(c)
    client.log_interaction(
        first["input"],
        first["output"],
        metadata=first["metadata"],
        tags=first["tags"],
        id="sdk-i1",
    )
    client.log_interaction(
        second["input"],
        second["output"],
        model="gpt-test",
        retrieved=second["retrieved"],
        metadata=second["metadata"],
        tags=second["tags"],
        id="sdk-i2",
    )
    fb = feedback_body(c, "sdk-i1")
    client.feedback(
        "sdk-i1",
        -1,
        label=fb["label"],
        correction=fb["correction"],
        comment=fb["comment"],
        metadata=fb["metadata"],
        tags=fb["tags"],
        id="sdk-f1",
    )
    edit, click = signal_bodies(c, "sdk-i2")
    client.signal("sdk-i2", "edit", text=edit["text"], metadata=edit["metadata"], id="sdk-s1")
    client.signal("sdk-i2", "click", target=click["target"], rank=1, id="sdk-s2")
    # rejected for body.latency_ms, with PII next to it
    client.log_interaction(
        first["input"],
        first["output"],
        metadata=first["metadata"],
        latency_ms="slow",  # type: ignore[arg-type]
        id="sdk-rejected",
    )
    result = client.close(30)
    stats = client.stats()
    assert client.mode == "embedded"
    assert (stats["stored"], stats["rejected"], result.pending) == (5, 1, 0), stats
    return int(stats["stored"])


def _import_file(c: dict[str, Canary], path: Path) -> None:
    lines = [
        *contract_events(c, "import"),
        rejected_interaction(c, "import-rejected"),
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in lines), encoding="utf-8")


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def canary_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CanaryRun]:
    backend: str = request.param
    root = tmp_path_factory.mktemp(f"canary-{backend}")
    url = request.getfixturevalue("postgres").new_url() if backend == "postgresql" else None
    rng = random.Random(secrets.randbits(64))
    sets = {path: make_canaries(path, rng) for path in PATHS}
    run = CanaryRun(
        backend=backend,
        canaries=[canary for s in sets.values() for canary in s.values()],
        stored_ids={
            p: [f"{p}-i1", f"{p}-i2", f"{p}-f1", f"{p}-s1", f"{p}-s2"]
            for p in ("http", "import", "sdk")
        }
        | {"browser": ["browser-f1", "browser-s1", "browser-s2"]},
    )
    # COLUMNS: Rich must not wrap a printed value across lines, which would hide it.
    server = LiveServer(root / "server", url, env={"COLUMNS": "1000"})
    server.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(server.database_url)
    try:
        migrate.upgrade(engine)
        _, public, secret = Projects(engine).create(PROJECT, cors_origins=(APP,))
    finally:
        engine.dispose()

    import_path = root / "user-events.jsonl"
    _import_file(sets["import"], import_path)
    with server, _capture_logging() as records:
        # The import runs while the server starts: both only need the migrated database.
        importer = subprocess.Popen(
            [sys.executable, "-m", "closedloop", "import", str(import_path), "--project", PROJECT],
            cwd=server.workdir,
            env=server.environ(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # So does the SDK, in embedded mode, on a thread of this process.
        sdk_errors: list[BaseException] = []

        def sdk() -> None:
            try:
                _send_sdk(server.database_url, sets["sdk"], root / "sdk-data")
            except BaseException as exc:  # re-raised below, in the test's thread
                sdk_errors.append(exc)

        sdk_thread = threading.Thread(target=sdk, name="canary-sdk")
        sdk_thread.start()
        try:
            server.start()
            _send_http(server, secret, public, sets, run)
            out, err = importer.communicate(timeout=120)
        finally:
            sdk_thread.join(120)
            if importer.poll() is None:
                importer.kill()
                importer.communicate()
        if sdk_errors:
            raise sdk_errors[0]
        run.logs["closedloop import (stdout)"] = out
        run.logs["closedloop import (stderr)"] = err
        run.answers["closedloop import (output)"] = out + err
        # exit 1: the rejected line is reported with its number
        assert importer.returncode == 1, (out + err).decode(errors="replace")
        assert b"line 6" in out + err, (out + err).decode(errors="replace")

        import_path.unlink()  # the user's own file: not an artefact of closedloop
        run.files.update(_read_files(root, "server running"))
        code = server.stop()
        assert server.stopped_gracefully(code), server.log_tail()
    run.files.update(_read_files(root, "server stopped"))
    run.logs["server output (stdout+stderr)"] = server.log_path.read_bytes()
    run.logs["python logging (this process)"] = "\n".join(records.lines).encode()
    run.database = _dump_tables(server.database_url)
    run.bodies = _bodies(server.database_url, run.stored_ids)
    _through_the_lake(server, run, root)
    yield run


def _closedloop(server: LiveServer, *args: str) -> bytes:
    done = subprocess.run(
        [sys.executable, "-m", "closedloop", *args],
        cwd=server.workdir,
        env=server.environ(),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def _through_the_lake(server: LiveServer, run: CanaryRun, root: Path) -> None:
    """The ways out added by the storage tiers: every row tiered to the lake, embedded, then
    read back through ``closedloop query`` and ``closedloop search``; the lake's Parquet files
    are scanned decoded (their pages are compressed) and raw (their statistics are not)."""
    _closedloop(server, "enrich")
    _closedloop(server, "projects", "retention", PROJECT, "--hot-days", "0.00001")
    moved = _closedloop(server, "tier")
    assert b"0 rows in 0 files" not in moved, moved
    run.answers["closedloop embed"] = _closedloop(server, "embed")
    for view in ("interactions", "feedback", "signals"):
        run.answers[f"closedloop query {view}"] = _closedloop(
            server, "query", f"SELECT * FROM {view}", "--project", PROJECT, "--format", "json"
        )
    queried = b"".join(v for k, v in run.answers.items() if k.startswith("closedloop query"))
    assert b"EMAIL" in queried, "positive control: the query answers hold the masked rows"
    run.answers["closedloop search"] = _closedloop(
        server, "search", "card number email", "--project", PROJECT, "-k", "50"
    )
    files = _read_files(root, "after tiering")
    lake = {name: data for name, data in files.items() if name.endswith(".parquet")}
    assert lake, "positive control: the lake holds files"
    for name, data in lake.items():
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
        files[f"{name} (decoded rows)"] = json.dumps(rows, default=str).encode()
    run.files.update(files)
    run.database.update(
        {
            f"{name} (after tiering)": dump
            for name, dump in _dump_tables(server.database_url).items()
        }
    )


# -- tests ---------------------------------------------------------------------------------


def test_every_path_stored_its_events(canary_run: CanaryRun) -> None:
    """Positive control: the scan below is over stored events, not over an empty store."""
    missing = {
        path: len(ids) - len(canary_run.bodies[path])
        for path, ids in canary_run.stored_ids.items()
        if len(canary_run.bodies[path]) != len(ids)
    }
    assert not missing, f"events missing from the store, by path: {missing}"
    assert set(canary_run.stored_ids) == set(PATHS)


def test_stored_bodies_carry_the_mask_of_the_redacted_pii(canary_run: CanaryRun) -> None:
    """Positive control: each path's stored events went through redaction (mask mode)."""
    unmasked = [
        path
        for path, bodies in canary_run.bodies.items()
        if not any("<EMAIL>" in b for b in bodies)
    ]
    assert not unmasked, f"no <EMAIL> mask in the stored bodies of {unmasked}"


def test_no_canary_in_any_database_table(canary_run: CanaryRun) -> None:
    assert canary_run.database, "no table was dumped"
    assert any(name.endswith("interactions") for name in canary_run.database)
    leaks = canary_run.leaks(canary_run.database)
    assert not leaks, f"{len(leaks)} canaries stored:\n" + "\n".join(leaks[:60])


def test_no_canary_in_the_bytes_of_any_file(canary_run: CanaryRun) -> None:
    """The SQLite file and its -wal/-shm, the data directories (lake, exports, spool) and the
    server log, while the server ran and after it stopped."""
    names = " ".join(canary_run.files)
    assert "server.log" in names
    if canary_run.backend == "sqlite":
        assert "closedloop.db" in names
    leaks = canary_run.leaks(canary_run.files)
    assert not leaks, f"{len(leaks)} canaries in files:\n" + "\n".join(leaks[:60])


def test_no_canary_in_any_log(canary_run: CanaryRun) -> None:
    logs = canary_run.logs
    assert b"Application startup complete" in logs["server output (stdout+stderr)"]
    # the capture works: the SDK warned about its rejected event, naming the field only
    assert b"body.latency_ms" in logs["python logging (this process)"], logs
    leaks = canary_run.leaks(canary_run.logs)
    assert not leaks, f"{len(leaks)} canaries logged:\n" + "\n".join(leaks)


def test_no_canary_in_any_answer_even_for_rejected_events(canary_run: CanaryRun) -> None:
    leaks = canary_run.leaks(canary_run.answers)
    assert not leaks, f"{len(leaks)} canaries echoed:\n" + "\n".join(leaks)


# -- error answers ---------------------------------------------------------------------------


def _misplaced(kind: str, value: str, id: str) -> dict[str, Any]:
    """An event rejected because ``value`` (PII sent by mistake) stands where the contract
    wants a fixed word."""
    if kind == "signal.kind":
        return make_event("signal", {"interaction_id": "i-1", "kind": value}, id=id)
    if kind == "feedback.source":
        body = {"interaction_id": "i-1", "thumbs": 1, "source": value}
        return make_event("feedback", body, id=id)
    return {**make_event("signal", {"interaction_id": "i-1", "kind": "copy"}, id=id), "type": value}


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("where", ["signal.kind", "feedback.source", "type"])
async def test_an_error_answer_does_not_echo_the_rejected_value(
    client: httpx.AsyncClient, tenant: Tenant, where: str
) -> None:
    """PII where the contract wants a fixed word is rejected; the answer names the field and
    the fix, never the value. (Not a redaction question: the message is made before and
    outside the redactor, so it needs its own fix.)"""
    email = f"echo.{secrets.token_hex(5)}@example.org"
    event = _misplaced(where, email, "e-1")
    r = await client.post("/v1/events", json={"events": [event]}, headers=tenant.headers())
    assert r.status_code == 207, r.text
    assert r.json()["results"][0]["status"] == "rejected"
    assert email not in r.text, f"the rejected value is echoed back: {r.text}"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_an_otlp_answer_does_not_echo_the_name_of_a_rejected_span(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    """An LLM span with invalid ids is reported in ``partial_success`` without its name."""
    email = f"echo.{secrets.token_hex(5)}@example.org"
    bad = _span(
        bytes(16),
        1,
        {"gen_ai.operation.name": "chat", "input.value": "hi"},
        name=f"chat with {email}",
        start_ms=0,
        end_ms=1,
    )
    r = await client.post(
        "/v1/traces",
        content=_export(bad).SerializeToString(),
        headers={**tenant.headers(), "content-type": "application/x-protobuf"},
    )
    assert r.status_code == 200, r.text
    assert b"rejected" in r.content
    assert email.encode() not in r.content, f"the span name is echoed back: {r.content!r}"


@pytest.mark.parametrize("separator", [", ", "; ", "\n", " | ", " ", "\t", " / "])
def test_pii_values_listed_side_by_side_are_each_redacted(separator: str) -> None:
    """Two values in a row, as a CRM tool's output or a pasted spreadsheet lists them: each is
    found even when only a space or a tab separates it from the next one (every ordered pair
    of canary types)."""
    from closedloop.enrich.pii import PiiRedactor

    redact = PiiRedactor().redact_text
    c = make_canaries("row", random.Random(secrets.randbits(64)))
    missed = []
    for a, b in itertools.permutations(c.values(), 2):
        out = redact(a.value + separator + b.value)
        missed += [f"{x.entity} in {out!r}" for x in (a, b) if any(n in out for n in x.needles)]
    assert not missed, f"{len(missed)} values kept:\n" + "\n".join(missed[:20])


def test_generated_canaries_are_valid_of_their_kind() -> None:
    """The generators make what the detectors look for (Luhn, mod-97, SSN ranges)."""
    from closedloop.enrich.pii._structured import iban_valid, luhn_valid

    rng = random.Random(7)
    for _ in range(200):
        c = make_canaries("check", rng)
        assert luhn_valid(_digits(c["card"].value))
        assert iban_valid(c["iban"].value)
        area, group, serial = c["ssn"].value.split("-")
        assert area not in ("000", "666") and area[0] != "9" and group != "00"
        assert serial != "0000"
        assert all(len(t) <= 64 for t in tags(c)) and len(short(c)) <= 256
        assert len(set(c["email"].needles + c["openai_key"].needles)) == 2
