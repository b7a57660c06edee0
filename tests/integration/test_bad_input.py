"""The bad-input corpus: every malformed request or event is refused with the documented status
and an RFC 9457 problem (or a per-event ``rejected`` result naming the field), and nothing that
was already accepted is lost or duplicated.

Each test stores a known good batch first (the ``seeded`` fixture), sends the bad input, then
reads the store back through the API (and counts rows in the real database) and checks that the
Prometheus counters balance: ``received = stored + duplicate + rejected + dropped``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import re
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.events import LIMITS
from closedloop.runtime import Runtime
from closedloop.store import models
from tests.conftest import Tenant

TS = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PROBLEM_KEYS = {"type", "title", "status", "detail"}


# -- building events and batches -------------------------------------------------------------


def interaction(id: str, **body: Any) -> dict[str, Any]:
    body.setdefault("input", "hi")
    body.setdefault("output", f"answer of {id}")
    return make_event("interaction", body, id=id, timestamp=TS)


def feedback(id: str, interaction_id: str = "i-base-1", **body: Any) -> dict[str, Any]:
    if not any(k in body for k in ("thumbs", "rating", "label", "correction", "comment")):
        body["thumbs"] = 1
    return make_event("feedback", {"interaction_id": interaction_id, **body}, id=id, timestamp=TS)


def signal(id: str, interaction_id: str = "i-base-1", **body: Any) -> dict[str, Any]:
    body.setdefault("kind", "copy")
    return make_event("signal", {"interaction_id": interaction_id, **body}, id=id, timestamp=TS)


def without(event: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of ``event`` with the field at dotted ``path`` removed."""
    out = msgspec.json.decode(msgspec.json.encode(event))
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[part]
    del node[last]
    assert isinstance(out, dict)
    return out


def batch(*events: Any) -> bytes:
    """``{"events": [...]}``; an event given as ``bytes`` is spliced in verbatim."""
    parts = [e if isinstance(e, bytes) else msgspec.json.encode(e) for e in events]
    return b'{"events":[' + b",".join(parts) + b"]}"


JSON = {"content-type": "application/json"}


async def post(
    client: httpx.AsyncClient, tenant: Tenant, body: bytes, kind: str = "secret"
) -> httpx.Response:
    return await client.post("/v1/events", content=body, headers={**JSON, **tenant.headers(kind)})


# -- what the store holds --------------------------------------------------------------------


BASELINE = [
    interaction("i-base-1", output="hello"),
    interaction("i-base-2"),
    feedback("f-base-1", thumbs=1),
    signal("s-base-1", kind="copy"),
]


@dataclass
class Expected:
    """What the store must hold and what the counters must say."""

    interactions: set[str] = dataclasses.field(default_factory=lambda: {"i-base-1", "i-base-2"})
    feedback: set[str] = dataclasses.field(default_factory=lambda: {"f-base-1"})
    signals: set[str] = dataclasses.field(default_factory=lambda: {"s-base-1"})
    received: int = len(BASELINE)
    stored: int = len(BASELINE)
    duplicate: int = 0
    rejected: int = 0


@pytest.fixture
async def seeded(client: httpx.AsyncClient, tenant: Tenant) -> Expected:
    """The tenant's store holds the baseline batch, committed."""
    r = await post(client, tenant, batch(*BASELINE))
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["stored"] * len(BASELINE)
    return Expected()


def _rows(runtime: Runtime, table: sa.Table, project_id: int) -> list[str]:
    id_column = table.c.event_id if table is models.event_ids else table.c.id
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(id_column).where(table.c.project_id == project_id))
        return sorted(r[0] for r in rows)


async def assert_store(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, expected: Expected
) -> None:
    """The store holds exactly ``expected`` (each id once) and the counters balance."""
    headers = tenant.headers()
    r = await client.get("/v1/interactions", params={"limit": 500}, headers=headers)
    assert r.status_code == 200, r.text
    assert sorted(x["id"] for x in r.json()["data"]) == sorted(expected.interactions)
    r = await client.get("/v1/feedback", params={"limit": 500}, headers=headers)
    assert r.status_code == 200, r.text
    assert sorted(x["id"] for x in r.json()["data"]) == sorted(expected.feedback)
    seen_signals: list[str] = []
    for interaction_id in sorted(expected.interactions):
        r = await client.get(f"/v1/interactions/{interaction_id}", headers=headers)
        assert r.status_code == 200, r.text
        seen_signals += [s["id"] for s in r.json()["signals"]]
    for signal_id in expected.signals:
        r = await client.get(f"/v1/signals/{signal_id}", headers=headers)
        assert r.status_code == 200, r.text
    # The baseline is unchanged, not just present.
    r = await client.get("/v1/interactions/i-base-1", headers=headers)
    assert r.json()["output"] == "hello"
    assert [f["id"] for f in r.json()["feedback"] if f["id"] == "f-base-1"] == ["f-base-1"]
    # And the database itself holds each row once, ledger included.
    pid = tenant.project_id
    assert _rows(runtime, models.interactions, pid) == sorted(expected.interactions)
    assert _rows(runtime, models.feedback, pid) == sorted(expected.feedback)
    assert _rows(runtime, models.signals, pid) == sorted(expected.signals)
    assert len(seen_signals) == len(set(seen_signals))
    assert set(seen_signals) <= expected.signals
    everything = expected.interactions | expected.feedback | expected.signals
    assert _rows(runtime, models.event_ids, pid) == sorted(everything)
    assert_balanced(runtime, expected)


def assert_balanced(runtime: Runtime, expected: Expected) -> None:
    totals = runtime.metrics.totals()
    assert totals["received"] == (
        totals["stored"] + totals["duplicate"] + totals["rejected"] + totals["dropped"]
    ), totals
    assert totals == {
        "received": expected.received,
        "stored": expected.stored,
        "duplicate": expected.duplicate,
        "rejected": expected.rejected,
        "dropped": 0,
    }


def assert_problem(r: httpx.Response, status: int, field: str | None) -> dict[str, Any]:
    """``r`` is an RFC 9457 problem with ``status``, naming ``field`` (or no field)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert PROBLEM_KEYS <= set(body), body
    assert body["status"] == status
    assert body["type"].startswith("urn:closedloop:problem:")
    assert body["title"] and body["detail"]
    assert body.get("field") == field, body
    return body


# -- the per-event corpus --------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One invalid event and the field its rejection must name."""

    name: str
    event: Any  # a dict, or raw JSON bytes for what json cannot express
    field: str

    @property
    def id(self) -> str | None:
        """The id the rejection must carry: the event's own, when it is a string."""
        if isinstance(self.event, bytes):
            match = re.search(rb'"id":"([^"]+)"', self.event)
            return match.group(1).decode() if match else None
        if isinstance(self.event, dict) and isinstance(self.event.get("id"), str):
            return str(self.event["id"])
        return None


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        node = {"down": node}
    return node


def _future() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=1, hours=1)).isoformat()


_TOO_LONG_TEXT = "a" * (LIMITS.text_length + 1)
_RAW_ENVELOPE = '{"id":"x-raw","type":"interaction","timestamp":"2026-01-01T00:00:00Z","body":%s}'

CORPUS: dict[str, list[Bad]] = {
    "wrong types": [
        Bad("id is a number", {**interaction("x"), "id": 123}, "id"),
        Bad("type is a number", {**interaction("x-type"), "type": 3}, "type"),
        Bad("timestamp is a number", {**interaction("x-ts"), "timestamp": 1767225600}, "timestamp"),
        Bad("body is a string", {**interaction("x-body"), "body": "hi"}, "body"),
        Bad("input is a number", interaction("x-in", input=5), "body.input"),
        Bad("latency is a string", interaction("x-lat", latency_ms="fast"), "body.latency_ms"),
        Bad("latency is negative", interaction("x-lat2", latency_ms=-1), "body.latency_ms"),
        Bad("cost over the bound", interaction("x-cost", cost_usd=1e13), "body.cost_usd"),
        Bad(
            "document score over the bound",
            interaction("x-sc", retrieved=[{"id": "d", "score": -1e13}]),
            "body.retrieved.0.score",
        ),
        Bad(
            "token count over the bound",
            interaction("x-tk", tokens={"total": 10**9}),
            "body.tokens.total",
        ),
        Bad("thumbs is a boolean", feedback("x-tb", thumbs=True), "body.thumbs"),
        Bad(
            "token count is a float",
            interaction("x-tok", tokens={"input": 1.5}),
            "body.tokens.input",
        ),
        Bad("tags is a string", interaction("x-tags", tags="a,b"), "body.tags"),
        Bad("metadata is a list", interaction("x-md", metadata=[1]), "body.metadata"),
        Bad("rank is negative", signal("x-rank", kind="click", rank=-1), "body.rank"),
        Bad("the event is a number", 42, ""),
        Bad("the event is null", None, ""),
    ],
    "missing fields": [
        Bad("id is missing", without(interaction("x"), "id"), "id"),
        Bad("type is missing", without(interaction("x-nt"), "type"), "type"),
        Bad("timestamp is missing", without(interaction("x-nts"), "timestamp"), "timestamp"),
        Bad("body is missing", without(interaction("x-nb"), "body"), "body"),
        Bad("input is missing", without(interaction("x-ni"), "body.input"), "body.input"),
        Bad(
            "feedback interaction_id is missing",
            without(feedback("x-nfi"), "body.interaction_id"),
            "body.interaction_id",
        ),
        Bad(
            "signal interaction_id is missing",
            without(signal("x-nsi"), "body.interaction_id"),
            "body.interaction_id",
        ),
        Bad("signal kind is missing", without(signal("x-nk"), "body.kind"), "body.kind"),
        Bad(
            "message role is missing",
            interaction("x-nr", input=[{"content": "hi"}]),
            "body.input.0.role",
        ),
        Bad(
            "model name is missing", interaction("x-nm", model={"version": "1"}), "body.model.name"
        ),
    ],
    "unknown type and fields": [
        Bad("type is unknown", {**interaction("x-ut"), "type": "purchase"}, "type"),
        Bad("signal kind is unknown", signal("x-uk", kind="lick"), "body.kind"),
        Bad("unknown field in body", interaction("x-uf", colour="red"), "body.colour"),
        Bad(
            "unknown field in model",
            interaction("x-um", model={"name": "m", "temperature": 0.2}),
            "body.model.temperature",
        ),
        Bad("unknown envelope field", {**interaction("x-ue"), "project": "acme"}, "project"),
    ],
    "oversized strings and lists": [
        Bad("id over its limit", interaction("x" * (LIMITS.id_length + 1)), "id"),
        Bad("id with a space", interaction("x y"), "id"),
        Bad("output over its limit", interaction("x-lo", output=_TOO_LONG_TEXT), "body.output"),
        Bad(
            "message content over its limit",
            interaction("x-lm", input=[{"role": "user", "content": _TOO_LONG_TEXT}]),
            "body.input.0.content",
        ),
        Bad(
            "model name over its limit",
            interaction("x-ln", model={"name": "m" * (LIMITS.name_length + 1)}),
            "body.model.name",
        ),
        Bad(
            "tag over its limit",
            interaction("x-lt", tags=["ok", "t" * (LIMITS.tag_length + 1)]),
            "body.tags.1",
        ),
        Bad("too many tags", interaction("x-mt", tags=["t"] * (LIMITS.tags + 1)), "body.tags"),
        Bad(
            "too many messages",
            interaction("x-mm", input=[{"role": "user", "content": "hi"}] * (LIMITS.messages + 1)),
            "body.input",
        ),
        Bad(
            "too many retrieved documents",
            interaction("x-mr", retrieved=[{"id": "d"}] * (LIMITS.retrieved_documents + 1)),
            "body.retrieved",
        ),
        Bad(
            "retrieved text over its limit",
            interaction("x-lr", retrieved=[{"id": "d"}, {"id": "e", "text": _TOO_LONG_TEXT}]),
            "body.retrieved.1.text",
        ),
        Bad(
            "correction over its limit",
            feedback("x-lc", correction=_TOO_LONG_TEXT),
            "body.correction",
        ),
        Bad("label over its limit", feedback("x-ll", label="l" * 257), "body.label"),
        Bad(
            "signal target over its limit",
            signal("x-lg", kind="click", target="u" * 2049),
            "body.target",
        ),
    ],
    "metadata bounds": [
        Bad(
            "metadata nests too deep",
            interaction("x-dm", metadata=_deep(LIMITS.metadata_depth + 1)),
            "body.metadata",
        ),
        Bad(
            "feedback metadata nests too deep",
            feedback("x-dfm", metadata={"a": [[[[["deep"]]]]]}),
            "body.metadata",
        ),
        Bad(
            "metadata too large",
            interaction("x-bm", metadata={"blob": "b" * LIMITS.metadata_bytes}),
            "body.metadata",
        ),
        Bad(
            "metadata has too many keys",
            interaction("x-km", metadata={f"k{i}": i for i in range(LIMITS.metadata_keys + 1)}),
            "body.metadata",
        ),
        Bad(
            "metadata number overflows to infinity",
            (_RAW_ENVELOPE % '{"input":"hi","metadata":{"n":1e999}}').encode(),
            "body.metadata",
        ),
        Bad(
            "latency overflows to infinity",
            (_RAW_ENVELOPE % '{"input":"hi","latency_ms":1e400}').encode(),
            "body.latency_ms",
        ),
    ],
    "timestamps": [
        Bad(
            "timestamp is naive",
            {**interaction("x-nv"), "timestamp": "2026-01-01T00:00:00"},
            "timestamp",
        ),
        Bad(
            "timestamp over a day ahead",
            {**interaction("x-fu"), "timestamp": _future()},
            "timestamp",
        ),
        Bad(
            "timestamp before 2000 (a clock or unit error)",
            {**interaction("x-old"), "timestamp": "1970-01-01T00:00:01Z"},
            "timestamp",
        ),
        Bad(
            "timestamp is not a date",
            {**interaction("x-nd"), "timestamp": "yesterday"},
            "timestamp",
        ),
    ],
    "NUL characters, rejected on every database alike": [
        Bad("NUL in output", interaction("x-n1", output="a\x00b"), "body.output"),
        Bad("NUL in input", interaction("x-n2", input="\x00"), "body.input"),
        Bad(
            "NUL in a message",
            interaction(
                "x-n3",
                input=[{"role": "user", "content": "ok"}, {"role": "user", "content": "\x00"}],
            ),
            "body.input.1.content",
        ),
        Bad(
            "NUL in metadata", interaction("x-n4", metadata={"note": "a\x00"}), "body.metadata.note"
        ),
        Bad(
            "NUL deep in metadata",
            interaction("x-n5", metadata={"a": {"list": ["ok", "b\x00"]}}),
            "body.metadata.a.list.1",
        ),
        Bad(
            "NUL in a metadata key",
            interaction("x-n6", metadata={"k\x00": 1}),
            "body.metadata.k\\u0000",  # the NUL is escaped, never echoed raw
        ),
        Bad("NUL in a correction", feedback("x-n7", correction="fix\x00"), "body.correction"),
        Bad("NUL in a comment", feedback("x-n8", comment="\x00"), "body.comment"),
        Bad("NUL in a label", feedback("x-n9", label="l\x00"), "body.label"),
        Bad("NUL in a tag", interaction("x-n10", tags=["ok", "t\x00"]), "body.tags.1"),
        Bad("NUL in model name", interaction("x-n11", model={"name": "m\x00"}), "body.model.name"),
        Bad("NUL in signal text", signal("x-n12", kind="edit", text="kept\x00"), "body.text"),
        Bad(
            "NUL in feedback metadata", feedback("x-n13", metadata={"m": "\x00"}), "body.metadata.m"
        ),
    ],
    "feedback and signal rules": [
        Bad("rating above the scale", feedback("x-r1", rating=6), "body.rating"),
        Bad("rating below the scale", feedback("x-r2", rating=0), "body.rating"),
        Bad(
            "rating outside its own scale",
            feedback("x-r3", rating=11, rating_min=0, rating_max=10),
            "body.rating",
        ),
        Bad(
            "rating scale upside down",
            feedback("x-r4", rating=3, rating_min=5, rating_max=1),
            "body.rating_min",
        ),
        Bad("thumbs is zero", feedback("x-t0", thumbs=0), "body.thumbs"),
        Bad("thumbs is two", feedback("x-t2", thumbs=2), "body.thumbs"),
        Bad("thumbs is minus two", feedback("x-tm", thumbs=-2), "body.thumbs"),
        Bad(
            "feedback with no kind",
            make_event("feedback", {"interaction_id": "i-base-1"}, id="x-nok", timestamp=TS),
            "body",
        ),
        Bad(
            "feedback with only a source",
            make_event(
                "feedback",
                {"interaction_id": "i-base-1", "source": "reviewer"},
                id="x-nok2",
                timestamp=TS,
            ),
            "body",
        ),
        Bad("feedback source unknown", feedback("x-src", source="robot"), "body.source"),
        Bad("edit signal without text", signal("x-e", kind="edit"), "body.text"),
        Bad("dwell signal without duration", signal("x-d", kind="dwell"), "body.duration_ms"),
        Bad(
            "dwell duration negative",
            signal("x-dn", kind="dwell", duration_ms=-5),
            "body.duration_ms",
        ),
    ],
}


@pytest.mark.parametrize("category", list(CORPUS))
async def test_invalid_events_are_rejected_with_their_field_while_valid_neighbours_are_stored_once(
    client: httpx.AsyncClient,
    runtime: Runtime,
    tenant: Tenant,
    seeded: Expected,
    category: str,
) -> None:
    # One mixed batch per category: a valid interaction before every bad event, and a retry of
    # an accepted event at the end.
    cases = CORPUS[category]
    events: list[Any] = []
    for k, bad in enumerate(cases):
        events += [interaction(f"ok-{k}"), bad.event]
    events.append(BASELINE[0])
    body = batch(*events)
    r = await post(client, tenant, body)
    assert r.status_code == 207, r.text
    answer = r.json()
    n = len(cases)
    assert (answer["stored"], answer["duplicate"], answer["rejected"]) == (n, 1, n)
    results = answer["results"]
    assert len(results) == len(events)
    got = {
        bad.name: (results[2 * k + 1]["status"], results[2 * k + 1]["id"])
        + ((results[2 * k + 1].get("error") or {}).get("field"),)
        for k, bad in enumerate(cases)
    }
    assert got == {bad.name: ("rejected", bad.id, bad.field) for bad in cases}
    assert all(results[2 * k + 1]["error"]["message"] for k in range(n))
    assert [(x["id"], x["status"]) for x in results[0::2]] == [
        *((f"ok-{k}", "stored") for k in range(n)),
        ("i-base-1", "duplicate"),
    ]

    # The client retries the whole batch: nothing is stored twice, the bad events stay bad.
    r = await post(client, tenant, body)
    assert r.status_code == 207, r.text
    assert (r.json()["stored"], r.json()["duplicate"], r.json()["rejected"]) == (0, n + 1, n)

    seeded.interactions |= {f"ok-{k}" for k in range(n)}
    seeded.received += 2 * len(events)
    seeded.stored += n
    seeded.duplicate += 1 + (n + 1)
    seeded.rejected += 2 * n
    await assert_store(client, runtime, tenant, seeded)


async def test_a_nul_character_is_rejected_alike_on_every_database_and_never_reaches_it(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected, backend: str
) -> None:
    # SQLite could store U+0000 and PostgreSQL cannot: the project rejects it on both, so the
    # same batch gets the same answer whatever the database.
    nul = [
        interaction("n-1", output="a\x00b"),
        feedback("n-2", correction="\x00"),
        signal("n-3", kind="rephrase", text="x\x00", metadata={"k": ["\x00"]}),
        interaction("n-ok", output="no NUL here, only the text \\u0000"),
    ]
    r = await post(client, tenant, batch(*nul))
    assert r.status_code == 207, r.text
    results = r.json()["results"]
    assert [(x["status"], x.get("error", {}).get("field")) for x in results] == [
        ("rejected", "body.output"),
        ("rejected", "body.correction"),
        ("rejected", "body.text"),
        ("stored", None),
    ], backend
    r = await client.get("/v1/interactions/n-ok", headers=tenant.headers())
    assert r.json()["output"] == "no NUL here, only the text \\u0000"
    seeded.interactions.add("n-ok")
    seeded.received += 4
    seeded.stored += 1
    seeded.rejected += 3
    await assert_store(client, runtime, tenant, seeded)


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/firings?rule=a%00b", "rule"),
        ("/v1/actions/report?limit=5&rule=%00", "rule"),
        ("/v1/interactions?user_id=u%00", "user_id"),
        ("/v1/rules/a%00b", "name"),
        ("/v1/prompts/x%00/resolve", "name"),
        ("/v1/interactions/i%00", "interaction_id"),
    ],
)
async def test_a_nul_character_in_a_path_or_query_parameter_answers_400_naming_it(
    client: httpx.AsyncClient, tenant: Tenant, url: str, field: str
) -> None:
    r = await client.get(url, headers=tenant.headers())
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


async def test_a_nul_character_in_a_written_path_parameter_answers_400_naming_it(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for url, field in (
        ("/v1/knowledge/reindex/d%00/done", "doc_id"),
        ("/v1/webhooks/h%00/rotate", "name"),
    ):
        r = await client.post(url, headers=tenant.headers())
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field


async def test_duplicate_ids_in_one_batch_store_the_first_and_report_the_second_as_duplicate(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected
) -> None:
    r = await post(
        client,
        tenant,
        batch(
            interaction("d-1", output="first"),
            interaction("d-1", output="second"),
            feedback("d-f", interaction_id="d-1", thumbs=1),
            feedback("d-f", interaction_id="d-1", thumbs=-1),
            signal("d-1", interaction_id="d-1"),  # ids are unique across event types
            interaction("i-base-2", output="overwrite attempt"),
        ),
    )
    assert r.status_code == 207, r.text
    assert [(x["id"], x["status"]) for x in r.json()["results"]] == [
        ("d-1", "stored"),
        ("d-1", "duplicate"),
        ("d-f", "stored"),
        ("d-f", "duplicate"),
        ("d-1", "duplicate"),
        ("i-base-2", "duplicate"),
    ]
    r = await client.get("/v1/interactions/d-1", headers=tenant.headers())
    assert r.json()["output"] == "first"
    assert [(f["id"], f["thumbs"]) for f in r.json()["feedback"]] == [("d-f", 1)]
    assert r.json()["signals"] == []
    r = await client.get("/v1/interactions/i-base-2", headers=tenant.headers())
    assert r.json()["output"] == "answer of i-base-2"
    seeded.interactions.add("d-1")
    seeded.feedback.add("d-f")
    seeded.received += 6
    seeded.stored += 2
    seeded.duplicate += 4
    await assert_store(client, runtime, tenant, seeded)


async def test_a_rejected_event_does_not_claim_its_id_for_a_later_valid_one(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected
) -> None:
    r = await post(client, tenant, batch(feedback("r-1", thumbs=3), feedback("r-1", thumbs=-1)))
    assert r.status_code == 207, r.text
    assert [(x["status"], x.get("error", {}).get("field")) for x in r.json()["results"]] == [
        ("rejected", "body.thumbs"),
        ("stored", None),
    ]
    r = await client.get("/v1/feedback/r-1", headers=tenant.headers())
    assert r.json()["thumbs"] == -1
    seeded.feedback.add("r-1")
    seeded.received += 2
    seeded.stored += 1
    seeded.rejected += 1
    await assert_store(client, runtime, tenant, seeded)


async def test_a_public_key_sending_an_interaction_gets_it_rejected_on_field_type(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected
) -> None:
    r = await post(
        client,
        tenant,
        batch(
            feedback("p-f", thumbs=-1),
            interaction("p-i"),
            signal("p-s", kind="regenerate"),
            interaction("i-base-1", output="hijack"),  # even a known id is not let through
        ),
        kind="public",
    )
    assert r.status_code == 207, r.text
    assert [
        (x["id"], x["status"], x.get("error", {}).get("field")) for x in r.json()["results"]
    ] == [
        ("p-f", "stored", None),
        ("p-i", "rejected", "type"),
        ("p-s", "stored", None),
        ("i-base-1", "rejected", "type"),
    ]
    # The public key cannot read what it wrote.
    r = await client.get("/v1/interactions", headers=tenant.headers("public"))
    assert_problem(r, 401, "authorization")
    seeded.feedback.add("p-f")
    seeded.signals.add("p-s")
    seeded.received += 4
    seeded.stored += 2
    seeded.rejected += 2
    await assert_store(client, runtime, tenant, seeded)


async def test_another_tenant_reusing_the_same_ids_touches_nothing_of_ours(
    client: httpx.AsyncClient,
    runtime: Runtime,
    tenant: Tenant,
    other_tenant: Tenant,
    seeded: Expected,
) -> None:
    theirs = [interaction("i-base-1", output="globex"), feedback("f-base-1", thumbs=-1)]
    r = await post(client, other_tenant, batch(*theirs))
    assert r.status_code == 200, r.text
    r = await client.get("/v1/interactions/i-base-1", headers=other_tenant.headers())
    assert r.json()["output"] == "globex"
    seeded.received += 2
    seeded.stored += 2
    await assert_store(client, runtime, tenant, seeded)


# -- whole-request refusals ------------------------------------------------------------------


@dataclass(frozen=True)
class BadRequest:
    """A request refused as a whole, before any event is counted."""

    name: str
    body: bytes
    status: int
    field: str | None
    headers: dict[str, str | bytes] = dataclasses.field(default_factory=dict)
    detail: tuple[str, ...] = ()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


_GOOD = batch(interaction("w-1"))
_NOT_UTF8 = b'{"events":[{"id":"w-\xff","type":"interaction"}]}'
_NOT_UTF8_AT = _NOT_UTF8.index(b"\xff")
_TOO_MANY = batch(*[signal(f"m-{i}") for i in range(LIMITS.batch_events + 1)])

WHOLE_REQUEST = [
    BadRequest("body is not JSON", b"events: [1, 2]", 400, "body", detail=("byte 0",)),
    BadRequest(
        "body is cut short", _GOOD[:-3], 400, "body", detail=("not valid JSON", "truncated")
    ),
    BadRequest(
        "body has a stray character",
        b'{"events":[]}x',
        400,
        "body",
        detail=("trailing characters (byte ",),
    ),
    BadRequest(
        "body is not UTF-8",
        _NOT_UTF8,
        400,
        "body",
        detail=(f"byte {_NOT_UTF8_AT}", "UTF-8"),
    ),
    BadRequest("body is an empty string", b"", 400, "body"),
    BadRequest("body is a JSON array", b"[]", 400, "events"),
    BadRequest("body is an empty object", b"{}", 400, "events", detail=('{"events"',)),
    BadRequest("events is misspelt", b'{"event":[]}', 400, "events"),
    BadRequest("events is an object", b'{"events":{}}', 400, "events"),
    BadRequest("events is null", b'{"events":null}', 400, "events"),
    BadRequest("events is a string", b'{"events":"[]"}', 400, "events"),
    BadRequest(
        "too many events in the batch",
        _TOO_MANY,
        413,
        "events",
        detail=(str(LIMITS.batch_events + 1), str(LIMITS.batch_events)),
    ),
    BadRequest(
        "content type is text",
        _GOOD,
        415,
        "content-type",
        headers={"content-type": "text/plain"},
    ),
    BadRequest(
        "content type is a form",
        _GOOD,
        415,
        "content-type",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    BadRequest("content type is missing", _GOOD, 415, "content-type", headers={"content-type": ""}),
    BadRequest(
        "content encoding is brotli",
        _GOOD,
        415,
        "content-encoding",
        headers={"content-encoding": "br"},
    ),
    BadRequest(
        "content encoding is deflate",
        zlib.compress(_GOOD),
        415,
        "content-encoding",
        headers={"content-encoding": "deflate"},
    ),
    BadRequest(
        "gzip body is corrupt",
        _gz(_GOOD)[:10] + b"\x00garbage\xff" * 8,
        400,
        "content-encoding",
        headers={"content-encoding": "gzip"},
    ),
    BadRequest(
        "gzip body is not gzip",
        _GOOD,
        400,
        "content-encoding",
        headers={"content-encoding": "gzip"},
    ),
    BadRequest(
        "gzip body is truncated",
        _gz(_GOOD)[:-12],
        400,
        "content-encoding",
        headers={"content-encoding": "gzip"},
    ),
    BadRequest(
        "gzip body has trailing garbage",
        _gz(_GOOD) + b"garbage",
        400,
        "content-encoding",
        headers={"content-encoding": "gzip"},
    ),
    BadRequest(
        "gzip body has a second member that would be dropped",
        _gz(_GOOD) + _gz(batch(interaction("w-2"))),
        400,
        "content-encoding",
        headers={"content-encoding": "gzip"},
    ),
    BadRequest(
        "gzip body holds invalid JSON",
        _gz(b'{"events": ['),
        400,
        "body",
        headers={"content-encoding": "gzip"},
    ),
    BadRequest("authorization is missing", _GOOD, 401, "authorization", {"authorization": ""}),
    BadRequest(
        "authorization is basic", _GOOD, 401, "authorization", {"authorization": "Basic dTpw"}
    ),
    BadRequest("bearer without a key", _GOOD, 401, "authorization", {"authorization": "Bearer "}),
    BadRequest(
        "bearer key is malformed",
        _GOOD,
        401,
        "authorization",
        {"authorization": "Bearer not-a-key"},
    ),
    BadRequest(
        "bearer key is too short",
        _GOOD,
        401,
        "authorization",
        {"authorization": "Bearer cl_sk_abc"},
    ),
    BadRequest(
        "bearer key is unknown",
        _GOOD,
        401,
        "authorization",
        {"authorization": "Bearer cl_sk_" + "A" * 32},
    ),
    BadRequest(
        "bearer key is not ASCII",
        _GOOD,
        401,
        "authorization",
        {"authorization": b"Bearer cl_sk_\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9"},
    ),
    BadRequest(
        "unauthorized and malformed: auth is checked first",
        b"not json",
        401,
        "authorization",
        {"authorization": "Bearer cl_sk_" + "B" * 32},
    ),
]


async def test_a_malformed_request_is_refused_with_a_problem_and_stores_nothing(
    client: httpx.AsyncClient,
    runtime: Runtime,
    tenant: Tenant,
    seeded: Expected,
    subtests: pytest.Subtests,
) -> None:
    # One store for the whole corpus: after every refusal, the store still holds exactly the
    # seeded batch and no counter moved (a refused request never became events).
    for bad in WHOLE_REQUEST:
        with subtests.test(bad.name):
            headers: dict[str, str | bytes] = {**JSON, **tenant.headers(), **bad.headers}
            sent = {
                k.encode(): v if isinstance(v, bytes) else v.encode()
                for k, v in headers.items()
                if v != ""
            }
            r = await client.post("/v1/events", content=bad.body, headers=sent)
            problem = assert_problem(r, bad.status, bad.field)
            for needle in bad.detail:
                assert needle in problem["detail"], problem
            if bad.status == 401:
                assert r.headers["www-authenticate"] == "Bearer"
            await assert_store(client, runtime, tenant, seeded)
    # The last word: a good batch still goes through after the whole corpus.
    r = await post(client, tenant, _GOOD)
    assert r.status_code == 200, r.text
    seeded.interactions.add("w-1")
    seeded.received += 1
    seeded.stored += 1
    await assert_store(client, runtime, tenant, seeded)


async def test_a_revoked_key_is_refused_with_401(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected
) -> None:
    new_secret = runtime.projects.rotate(tenant.name, "secret")
    r = await post(client, tenant, batch(interaction("rv-1")))
    body = assert_problem(r, 401, "authorization")
    assert "revoked" in body["detail"]
    await assert_store(
        client,
        runtime,
        Tenant(tenant.name, tenant.project_id, tenant.public_key, new_secret),
        seeded,
    )


async def test_a_body_over_the_byte_limit_is_refused_with_413(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected
) -> None:
    limit = runtime.settings.max_body_bytes
    text = "a" * (LIMITS.text_length - 10)
    events = [interaction(f"big-{i}", output=text) for i in range(limit // LIMITS.text_length + 1)]
    body = batch(*events)
    assert len(body) > limit
    r = await post(client, tenant, body)
    assert_problem(r, 413, "body")
    # Streamed without a Content-Length, the limit still holds.

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    r = await client.post("/v1/events", content=chunks(), headers={**JSON, **tenant.headers()})
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "body")
    await assert_store(client, runtime, tenant, seeded)


async def test_a_gzip_batch_within_limits_is_stored(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected
) -> None:
    # The positive control of the gzip refusals: the same path does accept a good body.
    r = await client.post(
        "/v1/events",
        content=_gz(batch(interaction("gz-1"), feedback("gz-f", interaction_id="gz-1"))),
        headers={**JSON, **tenant.headers(), "content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    seeded.interactions.add("gz-1")
    seeded.feedback.add("gz-f")
    seeded.received += 2
    seeded.stored += 2
    await assert_store(client, runtime, tenant, seeded)


# -- the gzip bomb ---------------------------------------------------------------------------

_MiB = 1 << 20


@cache
def _zeros_segment() -> bytes:
    """Raw deflate of 1 MiB of zeros, ending in a full flush: it can be repeated verbatim."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = c.compress(bytes(_MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    second = c.compress(bytes(_MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    assert first == second  # a full flush resets the window, so every segment is the same
    return second


@cache
def _crc_of_zeros(mib: int) -> int:
    crc = 0
    zeros = bytes(_MiB)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return crc


def gzip_of_zeros(mib: int) -> Iterable[bytes]:
    """A valid gzip stream of ``mib`` MiB of zeros, produced piece by piece (about 1 KB per
    MiB), so a 1 GiB bomb costs the test about 1 MB and never the gigabyte."""
    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # header: deflate, no name, mtime 0
    segment = _zeros_segment()
    for _ in range(mib):
        yield segment
    yield b"\x03\x00"  # an empty final block
    yield struct.pack("<II", _crc_of_zeros(mib), (mib * _MiB) & 0xFFFFFFFF)


def test_the_gzip_bomb_builder_makes_a_valid_gzip_stream() -> None:
    data = b"".join(gzip_of_zeros(8))
    assert gzip.decompress(data) == bytes(8 * _MiB)
    assert len(data) < 10_000


async def test_gzip_bomb_is_refused_with_413_without_inflating_it(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, seeded: Expected
) -> None:
    bomb_mib = 1024  # 1 GiB of zeros in about 1 MB of gzip
    limit = runtime.settings.max_body_bytes
    _crc_of_zeros(bomb_mib)  # computed before measuring

    async def stream() -> AsyncIterator[bytes]:
        for piece in gzip_of_zeros(bomb_mib):
            yield piece

    tracemalloc.start()
    try:
        r = await client.post(
            "/v1/events",
            content=stream(),
            headers={**JSON, **tenant.headers(), "content-encoding": "gzip"},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body = assert_problem(r, 413, "body")
    assert "decompresses" in body["detail"]
    # The server inflated at most the limit (5 MiB), never the gigabyte.
    assert peak < 8 * limit, f"peak {peak / _MiB:.1f} MiB while refusing a gzip bomb"
    await assert_store(client, runtime, tenant, seeded)
