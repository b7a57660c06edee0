"""The read API on both databases: pagination, filters, errors, joins and the schema."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest

from closedloop import make_event
from closedloop.events import LIMITS
from tests.conftest import Tenant

T0 = dt.datetime(2025, 6, 1, 10, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def interaction(id: str, ts: dt.datetime, **body: Any) -> dict[str, Any]:
    return make_event("interaction", {"input": f"input of {id}", **body}, id=id, timestamp=ts)


def feedback(id: str, on: str, ts: dt.datetime = T0, **body: Any) -> dict[str, Any]:
    return make_event("feedback", {"interaction_id": on, **body}, id=id, timestamp=ts)


def signal(id: str, on: str, ts: dt.datetime = T0, **body: Any) -> dict[str, Any]:
    return make_event("signal", {"interaction_id": on, **body}, id=id, timestamp=ts)


async def post(client: httpx.AsyncClient, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text


async def walk(
    client: httpx.AsyncClient, tenant: Tenant, path: str, params: dict[str, Any], limit: int
) -> list[list[str]]:
    """Every page of a list, following next_cursor; each page as its ids."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await client.get(path, params=query, headers=tenant.headers())
        assert r.status_code == 200, r.text
        pages.append([x["id"] for x in r.json()["data"]])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 1000, "the cursor does not advance"


def assert_bad_request(r: httpx.Response, field: str) -> None:
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 400
    assert body["field"] == field, body
    assert body["detail"]


# ---------------------------------------------------------------------------------------------
# Pagination


@pytest.mark.parametrize("limit", [1, 3, 5, 17, 50])
async def test_cursor_pagination_visits_every_interaction_once_newest_first_through_ties(
    client: httpx.AsyncClient, tenant: Tenant, limit: int
) -> None:
    rng = random.Random(7)
    # 17 interactions on 5 instants; many share one; the same instant arrives written in
    # other UTC offsets, and two instants differ by one microsecond.
    instants = [at(0), at(1), at(1) + dt.timedelta(microseconds=1), at(2), at(3)]
    zones = [dt.UTC, dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5))]
    rows = [(f"p-{n:02d}", rng.choice(instants)) for n in range(17)]
    rows[0], rows[1], rows[2] = ("p-00", at(1)), ("p-01", at(1)), ("p-02", at(1))
    events = [interaction(id, ts.astimezone(rng.choice(zones))) for id, ts in rows]
    rng.shuffle(events)
    for chunk in (events[:6], events[6:11], events[11:]):
        await post(client, tenant, chunk)
    expected = [id for id, ts in sorted(rows, key=lambda r: (r[1], r[0]), reverse=True)]

    pages = await walk(client, tenant, "/v1/interactions", {}, limit)

    assert [id for page in pages for id in page] == expected
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit, "no empty trailing page"
    r = await client.get("/v1/interactions", params={"limit": 500}, headers=tenant.headers())
    stamps = [dt.datetime.fromisoformat(x["timestamp"]) for x in r.json()["data"]]
    assert stamps == sorted(stamps, reverse=True)
    assert all(s.utcoffset() == dt.timedelta(0) for s in stamps), "timestamps come back in UTC"


async def test_a_walk_started_before_new_interactions_arrive_still_sees_each_old_one_once(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await post(client, tenant, [interaction(f"w-{n}", at(n % 3)) for n in range(9)])
    r = await client.get("/v1/interactions", params={"limit": 4}, headers=tenant.headers())
    seen = [x["id"] for x in r.json()["data"]]
    cursor = r.json()["next_cursor"]
    # the first page ended inside the ties at minute 1; one arrival sorts before the cursor,
    # one after it
    await post(client, tenant, [interaction("w-newest", at(10)), interaction("w-10", at(0))])
    while cursor:
        r = await client.get(
            "/v1/interactions", params={"limit": 4, "cursor": cursor}, headers=tenant.headers()
        )
        seen += [x["id"] for x in r.json()["data"]]
        cursor = r.json()["next_cursor"]
    assert len(seen) == len(set(seen))
    assert "w-newest" not in seen, "newer than the cursor: belongs to a fresh walk"
    assert set(seen) == {f"w-{n}" for n in range(9)} | {"w-10"}


async def test_pagination_agrees_with_one_big_page_for_ids_of_every_shape(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    ids = ["A-1", "a-1", "a.1", "a_1", "Z", "z", "0", "9:x", "a-10", "a-2", "a--", "B.b"]
    await post(client, tenant, [interaction(id, at(0)) for id in ids])
    r = await client.get("/v1/interactions", params={"limit": 500}, headers=tenant.headers())
    one_page = [x["id"] for x in r.json()["data"]]
    assert sorted(one_page) == sorted(ids)
    for limit in (1, 2, 5):
        pages = await walk(client, tenant, "/v1/interactions", {}, limit)
        assert [id for page in pages for id in page] == one_page


async def test_feedback_pages_walk_every_feedback_once_newest_first(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    rows = [(f"f-{n:02d}", at(n % 4)) for n in range(11)]
    await post(client, tenant, [feedback(id, "i-1", ts, thumbs=1) for id, ts in rows])
    expected = [id for id, ts in sorted(rows, key=lambda r: (r[1], r[0]), reverse=True)]
    for limit in (1, 4, 11):
        pages = await walk(client, tenant, "/v1/feedback", {}, limit)
        assert [id for page in pages for id in page] == expected


async def test_a_filtered_walk_pages_through_the_filtered_set_only(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    events = [interaction(f"s-{n:02d}", at(n % 2), session_id=f"sess-{n % 3}") for n in range(12)]
    await post(client, tenant, events)
    expected = sorted(
        (e for e in events if e["body"]["session_id"] == "sess-1"),
        key=lambda e: (e["timestamp"], e["id"]),
        reverse=True,
    )
    pages = await walk(client, tenant, "/v1/interactions", {"session_id": "sess-1"}, 1)
    assert [id for page in pages for id in page] == [e["id"] for e in expected]


# ---------------------------------------------------------------------------------------------
# Filters


FILTER_DATA = [
    interaction(
        "i1",
        at(0),
        model={"name": "m-a", "version": "v1"},
        prompt={"name": "p-a", "version": "1"},
        user_id="u1",
        session_id="s1",
    ),
    interaction(
        "i2",
        at(1),
        model={"name": "m-a", "version": "v2"},
        prompt={"name": "p-b", "version": "1"},
        user_id="u2",
        session_id="s1",
    ),
    interaction(
        "i3",
        at(2),
        model={"name": "m-b", "version": "v1"},
        prompt={"name": "p-a", "version": "2"},
        user_id="u1",
        session_id="s2",
    ),
    interaction("i4", at(3), model={"name": "m-b"}),
    interaction("i5", at(4)),
    interaction("i6", at(5), model={"name": "m-c", "provider": "x"}),
    feedback("f1a", "i1", thumbs=1),
    feedback("f1b", "i1", thumbs=1),
    feedback("f2", "i2", thumbs=-1, rating=4),
    feedback("f3", "i3", label="good", rating=2),
    feedback("f4", "i4", label="bad", comment="meh"),
    feedback("f5", "i5", correction="fixed"),
    feedback("f6", "i-missing", thumbs=1, rating=5, label="good", comment="orphan"),
    feedback("f7", "i6", rating=8, rating_min=0, rating_max=10),
    signal("g1", "i6", kind="copy"),
]

OTHER_TENANT_DATA = [
    interaction(
        "o1",
        at(2),
        model={"name": "m-a", "version": "v1"},
        prompt={"name": "p-a", "version": "1"},
        user_id="u1",
        session_id="s1",
    ),
    feedback("of1", "o1", thumbs=1, rating=4, label="good", correction="x", comment="y"),
]

PLUS_TWO = dt.timezone(dt.timedelta(hours=2))
MINUS_FIVE = dt.timezone(dt.timedelta(hours=-5))

FILTER_CASES: list[tuple[dict[str, str], list[str]]] = [
    ({}, ["i6", "i5", "i4", "i3", "i2", "i1"]),
    ({"since": at(2).isoformat()}, ["i6", "i5", "i4", "i3"]),
    ({"until": at(2).isoformat()}, ["i2", "i1"]),
    ({"since": at(1).isoformat(), "until": at(3).isoformat()}, ["i3", "i2"]),
    (
        {
            "since": at(1).astimezone(PLUS_TWO).isoformat(),
            "until": at(3).astimezone(MINUS_FIVE).isoformat(),
        },
        ["i3", "i2"],
    ),
    ({"since": "2025-06-01T10:02:00Z"}, ["i6", "i5", "i4", "i3"]),
    ({"since": at(9).isoformat()}, []),
    ({"model": "m-a"}, ["i2", "i1"]),
    ({"model": "m-b"}, ["i4", "i3"]),
    ({"model": "M-A"}, []),
    ({"model_version": "v1"}, ["i3", "i1"]),
    ({"model": "m-a", "model_version": "v1"}, ["i1"]),
    ({"prompt": "p-a"}, ["i3", "i1"]),
    ({"prompt_version": "1"}, ["i2", "i1"]),
    ({"prompt": "p-a", "prompt_version": "2"}, ["i3"]),
    ({"user_id": "u1"}, ["i3", "i1"]),
    ({"session_id": "s1"}, ["i2", "i1"]),
    ({"session_id": "s1", "since": at(1).isoformat()}, ["i2"]),
    ({"feedback_kind": "thumbs"}, ["i2", "i1"]),
    ({"feedback_kind": "thumbs", "feedback_value": "1"}, ["i1"]),
    ({"feedback_kind": "thumbs", "feedback_value": "-1"}, ["i2"]),
    ({"feedback_kind": "rating"}, ["i6", "i3", "i2"]),
    ({"feedback_kind": "rating", "feedback_value": "4"}, ["i2"]),
    ({"feedback_kind": "rating", "feedback_value": "4.0"}, ["i2"]),
    ({"feedback_kind": "rating", "feedback_value": "8"}, ["i6"]),
    ({"feedback_kind": "rating", "feedback_value": "3"}, []),
    ({"feedback_kind": "label"}, ["i4", "i3"]),
    ({"feedback_kind": "label", "feedback_value": "good"}, ["i3"]),
    ({"feedback_kind": "label", "feedback_value": "bad"}, ["i4"]),
    ({"feedback_kind": "label", "feedback_value": "Good"}, []),
    ({"feedback_kind": "correction"}, ["i5"]),
    ({"feedback_kind": "comment"}, ["i4"]),
    ({"user_id": "u1", "feedback_kind": "thumbs"}, ["i1"]),
]


async def test_each_filter_returns_exactly_the_matching_interactions_of_the_project(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    await post(client, tenant, FILTER_DATA)
    await post(client, other_tenant, OTHER_TENANT_DATA)
    wrong = {}
    for params, expected in FILTER_CASES:
        r = await client.get("/v1/interactions", params=params, headers=tenant.headers())
        assert r.status_code == 200, (params, r.text)
        got = [x["id"] for x in r.json()["data"]]
        if got != expected:
            wrong[json.dumps(params)] = {"expected": expected, "got": got}
    assert wrong == {}


async def test_feedback_filters_return_each_feedback_once_with_its_interaction(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await post(client, tenant, FILTER_DATA)
    h = tenant.headers()
    cases = {
        "interaction_id=i1": ["f1b", "f1a"],
        "interaction_id=i-missing": ["f6"],
        "interaction_id=nope": [],
        "orphaned=true": ["f6"],
        "orphaned=false": ["f7", "f5", "f4", "f3", "f2", "f1b", "f1a"],
        "orphaned=true&interaction_id=i1": [],
    }
    for query, expected in cases.items():
        r = await client.get(f"/v1/feedback?{query}", headers=h)
        assert [x["id"] for x in r.json()["data"]] == expected, query


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("feedback_value=1", "feedback_value"),
        ("feedback_value=good", "feedback_value"),
        ("feedback_kind=stars", "feedback_kind"),
        ("feedback_kind=thumbs&feedback_value=up", "feedback_value"),
        ("feedback_kind=rating&feedback_value=nan-ish", "feedback_value"),
        ("feedback_kind=comment&feedback_value=meh", "feedback_value"),
        ("feedback_kind=correction&feedback_value=fixed", "feedback_value"),
        ("since=yesterday", "since"),
        ("until=2025-13-01T00:00:00Z", "until"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("model=" + "m" * 257, "model"),
    ],
)
async def test_a_bad_query_is_a_400_problem_naming_the_parameter(
    client: httpx.AsyncClient, tenant: Tenant, query: str, field: str
) -> None:
    r = await client.get(f"/v1/interactions?{query}", headers=tenant.headers())
    assert_bad_request(r, field)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = {
    "not base64": "not a cursor!",
    "empty": "",
    "base64 of text": _b64(b"hello there"),
    "base64 of an object": _b64(b'{"ts": "2026-01-01T00:00:00+00:00", "id": "x"}'),
    "base64 of a number": _b64(b"5"),
    "base64 of a short string": _b64(b'"ab"'),
    "one element": _b64(b'["2026-01-01T00:00:00+00:00"]'),
    "three elements": _b64(b'["2026-01-01T00:00:00+00:00", "a", "b"]'),
    "not a time": _b64(b'["tuesday", "a"]'),
    "null time": _b64(b'[null, "a"]'),
    "numbers": _b64(b"[1, 2]"),
    "invalid utf-8": _b64(b'["\xff\xfe", "a"]'),
    "NUL in the id": _b64(b'["2026-01-01T00:00:00+00:00", "a\\u0000b"]'),
    "too long": "A" * 2000,
}


@pytest.mark.parametrize("path", ["/v1/interactions", "/v1/feedback"])
async def test_a_cursor_this_api_did_not_issue_is_a_400_naming_cursor(
    client: httpx.AsyncClient, tenant: Tenant, path: str
) -> None:
    await post(client, tenant, [interaction("i1", T0), feedback("f1", "i1", thumbs=1)])
    for case, cursor in BAD_CURSORS.items():
        r = await client.get(path, params={"cursor": cursor}, headers=tenant.headers())
        assert r.status_code == 400, (case, r.text)
        assert_bad_request(r, "cursor")


async def test_a_cursor_written_in_another_utc_offset_points_at_the_same_instant(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await post(client, tenant, [interaction(f"c-{n}", at(n)) for n in range(4)])
    for zone in (dt.UTC, PLUS_TWO, MINUS_FIVE):
        cursor = _b64(json.dumps([at(2).astimezone(zone).isoformat(), "c-2"]).encode())
        r = await client.get(
            "/v1/interactions", params={"cursor": cursor}, headers=tenant.headers()
        )
        assert [x["id"] for x in r.json()["data"]] == ["c-1", "c-0"], zone


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/interactions", {"model": "a\x00b"}, "model"),
        ("/v1/interactions", {"user_id": "\x00"}, "user_id"),
        (
            "/v1/interactions",
            {"feedback_kind": "label", "feedback_value": "a\x00"},
            "feedback_value",
        ),
        ("/v1/feedback", {"interaction_id": "i\x00"}, "interaction_id"),
        ("/v1/interactions/i%001", {}, "interaction_id"),
        ("/v1/feedback/f%001", {}, "feedback_id"),
        ("/v1/signals/g%001", {}, "signal_id"),
    ],
)
async def test_a_nul_character_in_a_read_parameter_is_a_400_on_every_database(
    client: httpx.AsyncClient, tenant: Tenant, path: str, params: dict[str, str], field: str
) -> None:
    r = await client.get(path, params=params, headers=tenant.headers())
    assert_bad_request(r, field)


# ---------------------------------------------------------------------------------------------
# One interaction, with what arrived before and after it


async def test_feedback_sent_before_its_interaction_is_orphaned_until_the_interaction_arrives(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    h = tenant.headers()
    await post(
        client,
        tenant,
        [
            feedback("early-fb", "late-int", at(1), thumbs=-1, comment="too slow"),
            signal("early-sig", "late-int", at(2), kind="regenerate"),
        ],
    )
    r = await client.get("/v1/feedback", params={"orphaned": "true"}, headers=h)
    assert [x["id"] for x in r.json()["data"]] == ["early-fb"]
    r = await client.get("/v1/feedback", params={"orphaned": "false"}, headers=h)
    assert r.json()["data"] == []
    assert (await client.get("/v1/interactions/late-int", headers=h)).status_code == 404

    await post(client, tenant, [interaction("late-int", at(0), output="here at last")])
    await post(client, tenant, [feedback("later-fb", "late-int", at(3), thumbs=1)])

    r = await client.get("/v1/interactions/late-int", headers=h)
    assert r.status_code == 200
    got = r.json()
    assert got["output"] == "here at last"
    assert [(f["id"], f["thumbs"]) for f in got["feedback"]] == [("early-fb", -1), ("later-fb", 1)]
    assert [(s["id"], s["kind"]) for s in got["signals"]] == [("early-sig", "regenerate")]
    r = await client.get("/v1/feedback", params={"orphaned": "true"}, headers=h)
    assert r.json()["data"] == []
    r = await client.get("/v1/feedback", params={"orphaned": "false"}, headers=h)
    assert [x["id"] for x in r.json()["data"]] == ["later-fb", "early-fb"]


async def test_one_interaction_comes_with_its_own_feedback_and_signals_in_time_order(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await post(
        client,
        tenant,
        [
            interaction("a", at(0)),
            interaction("b", at(0)),
            feedback("fb-2", "a", at(2), rating=3),
            feedback("fb-1", "a", at(1), label="ok", source="reviewer", given_by="rev-1"),
            feedback("fb-b", "b", at(1), thumbs=1),
            signal("sig-2", "a", at(4), kind="dwell", duration_ms=1500),
            signal("sig-1", "a", at(3), kind="click", target="https://x.example", rank=2),
            signal("sig-b", "b", at(3), kind="copy"),
        ],
    )
    r = await client.get("/v1/interactions/a", headers=tenant.headers())
    got = r.json()
    assert got["id"] == "a"
    assert dt.datetime.fromisoformat(got["timestamp"]) == at(0)
    assert dt.datetime.fromisoformat(got["received_at"]) > at(0)
    assert [f["id"] for f in got["feedback"]] == ["fb-1", "fb-2"]
    assert got["feedback"][0] | {"received_at": None} == {
        "id": "fb-1",
        "timestamp": at(1).isoformat(),
        "received_at": None,
        "interaction_id": "a",
        "label": "ok",
        "source": "reviewer",
        "given_by": "rev-1",
        "join": {"state": "pending", "reason": None},  # the enrichment job has not run
    }
    assert got["feedback"][1]["rating"] == 3
    assert [s["id"] for s in got["signals"]] == ["sig-1", "sig-2"]
    assert got["signals"][0]["target"] == "https://x.example"
    assert got["signals"][1]["duration_ms"] == 1500
    r = await client.get("/v1/feedback/fb-2", headers=tenant.headers())
    assert r.json()["rating"] == 3
    r = await client.get("/v1/signals/sig-1", headers=tenant.headers())
    assert r.json()["rank"] == 2
    for path in ("/v1/interactions/zzz", "/v1/feedback/zzz", "/v1/signals/zzz"):
        r = await client.get(path, headers=tenant.headers())
        assert r.status_code == 404
        assert r.headers["content-type"] == "application/problem+json"


async def test_chat_message_input_and_every_field_round_trip_exactly(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = {
        "input": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": 'Quote "this"\nthen\ttab, emoji 🚀, accents éü, 中文',
                "name": "ann",
            },
            {"role": "assistant"},
            {"role": "tool", "content": "", "name": "search"},
            {"role": "user", "content": "x" * 5000},
        ],
        "output": "Done ✓",
        "session_id": "sess-1",
        "user_id": "user-1",
        "model": {"name": "gpt-x", "version": "2025-05", "provider": "acme"},
        "prompt": {"name": "support", "version": "7"},
        "retrieved": [{"id": "doc-1", "score": 0.25, "text": "snippet", "source": "kb"}],
        "latency_ms": 812.5,
        "tokens": {"input": 1200, "output": 34, "total": 1234},
        "cost_usd": 0.0042,
        "metadata": {"tenant": {"plan": "pro", "flags": [1, 2.5, None, True, "x"]}, "n": -3},
        "tags": ["beta", "eu"],
    }
    when = dt.datetime(2025, 6, 1, 12, 30, 15, 123456, tzinfo=PLUS_TWO)
    event = make_event("interaction", body, id="chat-1", timestamp=when)
    await post(client, tenant, [event])

    r = await client.get("/v1/interactions/chat-1", headers=tenant.headers())
    got = r.json()
    assert {k: got[k] for k in body} == body
    enriched = {"quality", "measures"}  # added by the enrichment job (not run here: empty)
    assert set(got) == {*body, "id", "timestamp", "received_at", "feedback", "signals", *enriched}
    assert got["quality"] is None and got["measures"] == []
    assert dt.datetime.fromisoformat(got["timestamp"]) == when, "microseconds and offset kept"
    r = await client.get("/v1/interactions", headers=tenant.headers())
    assert r.json()["data"][0]["input"] == body["input"]


async def test_plain_text_input_round_trips_and_empty_optionals_stay_absent(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    await post(client, tenant, [interaction("plain", T0, input="  spaced  \n")])
    got = (await client.get("/v1/interactions/plain", headers=tenant.headers())).json()
    assert got["input"] == "  spaced  \n"
    assert got["feedback"] == [] and got["signals"] == []
    assert "metadata" not in got and "tags" not in got and "model" not in got


# ---------------------------------------------------------------------------------------------
# Schema


async def test_the_schema_endpoint_serves_the_event_json_schema_with_its_limits(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/v1/schema")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    schema = r.json()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["x-limits"] == msgspec.to_builtins(LIMITS)
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(schema["discriminator"]["mapping"]) == {"interaction", "feedback", "signal"}
    jsonschema.Draft202012Validator.check_schema(schema)

    defs = schema["$defs"]
    text = {"type": "string", "maxLength": LIMITS.text_length}
    assert text in defs["Interaction"]["properties"]["input"]["anyOf"]
    assert defs["Interaction"]["properties"]["tags"]["maxItems"] == LIMITS.tags
    assert defs["InteractionEvent"]["properties"]["id"]["maxLength"] == LIMITS.id_length

    validator = jsonschema.Draft202012Validator(schema)
    good = [
        interaction("i-1", T0, model={"name": "m"}),
        feedback("f-1", "i-1", thumbs=1),
        signal("s-1", "i-1", kind="copy"),
    ]
    for event in good:
        assert list(validator.iter_errors(event)) == [], event
    bad = [
        {**good[0], "extra": 1},
        {**good[0], "type": "trace"},
        {**good[0], "id": "-starts-with-dash"},
        {**good[0], "id": "x" * (LIMITS.id_length + 1)},
        {**good[0], "body": {**good[0]["body"], "tags": ["t"] * (LIMITS.tags + 1)}},
        {**good[1], "body": {"thumbs": 1}},
        {**good[2], "body": {"interaction_id": "i-1", "kind": "wink"}},
    ]
    for event in bad:
        assert list(validator.iter_errors(event)) != [], event
