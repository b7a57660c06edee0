"""Property tests of the wire contract (:mod:`closedloop.events`).

Valid events are generated from strategies that follow docs/contract.md; each one must decode,
survive ``encode`` -> ``decode_event`` unchanged and satisfy the published JSON Schema. Each
mutation that breaks the contract (a wrong type, an unknown field, a string or number out of
its bounds) must raise :class:`ContractError` naming exactly the mutated field, and the JSON
Schema must refuse it too.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closedloop.errors import ContractError
from closedloop.events import (
    FEEDBACK_KINDS,
    LIMITS,
    SIGNAL_KINDS,
    decode_event,
    encode,
    event_json_schema,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BOUND = 1e12  # every contract number is finite and within +-1e12

# -- valid events ----------------------------------------------------------------------------

ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:\-]{0,40}\Z")
names = st.text(min_size=1, max_size=20)
texts = st.text(max_size=40)
finite = st.floats(min_value=-BOUND, max_value=BOUND)
non_negative = st.floats(min_value=0, max_value=BOUND)
counts = st.integers(0, 100_000_000)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
timestamps = st.datetimes(
    min_value=dt.datetime(2000, 1, 2), max_value=dt.datetime(2025, 12, 31), timezones=offsets
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)


def json_values(levels: int) -> st.SearchStrategy[Any]:
    """JSON values nesting at most ``levels`` levels, the value itself included."""
    if levels <= 1:
        return scalars
    inner = json_values(levels - 1)
    return (
        scalars
        | st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    )


# The metadata object is level 1, so its values may nest the remaining levels.
metadata = st.dictionaries(st.text(max_size=8), json_values(LIMITS.metadata_depth - 1), max_size=4)
tags = st.lists(st.text(min_size=1, max_size=LIMITS.tag_length), max_size=4)
maybe_texts = texts | st.none()

messages = st.fixed_dictionaries(
    {"role": st.text(min_size=1, max_size=32)}, optional={"content": texts, "name": names}
)
interaction_bodies = st.fixed_dictionaries(
    {"input": texts | st.lists(messages, max_size=3)},
    optional={
        "output": maybe_texts,
        "session_id": ids,
        "user_id": ids,
        "model": st.fixed_dictionaries(
            {"name": names}, optional={"version": names, "provider": names}
        ),
        "prompt": st.fixed_dictionaries({"name": names}, optional={"version": names}),
        "retrieved": st.lists(
            st.fixed_dictionaries(
                {"id": names}, optional={"score": finite, "text": texts, "source": names}
            ),
            max_size=3,
        ),
        "latency_ms": non_negative,
        "tokens": st.fixed_dictionaries(
            {}, optional={"input": counts, "output": counts, "total": counts}
        ),
        "cost_usd": non_negative,
        "metadata": metadata,
        "tags": tags,
    },
)


@st.composite
def feedback_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"interaction_id": draw(ids)}
    kinds = draw(st.sets(st.sampled_from(FEEDBACK_KINDS), min_size=1))
    low, high = 1.0, 5.0
    if draw(st.booleans()):  # a scale of its own
        low = draw(st.floats(min_value=-BOUND, max_value=BOUND / 2))
        high = draw(st.floats(min_value=low, max_value=BOUND, exclude_min=True))
        body["rating_min"], body["rating_max"] = low, high
    if "thumbs" in kinds:
        body["thumbs"] = draw(st.sampled_from([-1, 1]))
    if "rating" in kinds:
        body["rating"] = draw(st.floats(min_value=low, max_value=high))
    if "label" in kinds:
        body["label"] = draw(names)
    if "correction" in kinds:
        body["correction"] = draw(texts)
    if "comment" in kinds:
        body["comment"] = draw(texts)
    optional = {
        "source": st.sampled_from(["user", "reviewer", "evaluator"]),
        "given_by": ids,
        "session_id": ids,
        "user_id": ids,
        "metadata": metadata,
        "tags": tags,
    }
    body.update(draw(st.fixed_dictionaries({}, optional=optional)))
    return body


@st.composite
def signal_bodies(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(SIGNAL_KINDS))
    body: dict[str, Any] = {"interaction_id": draw(ids), "kind": kind}
    if kind == "edit":
        body["text"] = draw(texts)
    if kind == "dwell":
        body["duration_ms"] = draw(non_negative)
    optional = {
        "text": texts,
        "target": st.text(max_size=30),
        "rank": st.integers(0, 1_000_000),
        "duration_ms": non_negative,
        "session_id": ids,
        "user_id": ids,
        "metadata": metadata,
    }
    body.update(draw(st.fixed_dictionaries({}, optional=optional)))
    return body


BODIES = {
    "interaction": interaction_bodies,
    "feedback": feedback_bodies(),
    "signal": signal_bodies(),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event envelope as JSON data, its keys in any order."""
    type_ = draw(st.sampled_from(sorted(BODIES)))
    fields = {
        "id": draw(ids),
        "type": type_,
        "timestamp": draw(timestamps).isoformat(),
        "body": draw(BODIES[type_]),
    }
    order = draw(st.permutations(sorted(fields)))
    return {key: fields[key] for key in order}


def raw(event: Any) -> bytes:
    return json.dumps(event).encode()


VALIDATOR = jsonschema.Draft202012Validator(event_json_schema())


def test_the_published_json_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(event_json_schema())


@PROPERTY
@given(events())
def test_every_valid_event_decodes_and_survives_an_encode_decode_round_trip(
    event: dict[str, Any],
) -> None:
    decoded = decode_event(raw(event))
    assert decoded.type == event["type"]
    assert decoded.id == event["id"]
    assert decoded.timestamp == dt.datetime.fromisoformat(event["timestamp"])
    for key, value in event["body"].items():
        if value is not None:
            assert msgspec.to_builtins(getattr(decoded.body, key)) == value, key
    encoded = encode(decoded)
    again = decode_event(encoded)
    assert again == decoded
    assert encode(again) == encoded


@PROPERTY
@given(events())
def test_the_published_json_schema_accepts_every_valid_event_and_its_encoding(
    event: dict[str, Any],
) -> None:
    VALIDATOR.validate(event)
    VALIDATOR.validate(json.loads(encode(decode_event(raw(event)))))


# -- mutations -------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def nodes(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every value of an event with its path; free-form metadata counts as one value."""
    if path:
        yield path, value
    if path[-1:] == ("metadata",):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from nodes(item, (*path, i))


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def replaced(event: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(event))
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def assert_refused(mutant: dict[str, Any], field: str) -> None:
    """The decoder raises ContractError naming ``field``, and the JSON Schema refuses too."""
    with pytest.raises(ContractError) as caught:
        decode_event(raw(mutant))
    assert caught.value.field == field, caught.value
    assert not VALIDATOR.is_valid(mutant), f"the JSON Schema accepts a mutant refused at {field}"


def wrong_values(path: Path, value: Any) -> list[Any]:
    """JSON values of a type the field at ``path`` does not take (never null: it is valid
    for optional fields)."""
    if path == ("body", "input"):  # a string or a list of messages
        return [7, True, {}]
    if isinstance(value, bool):
        raise AssertionError(f"the contract has no boolean field, yet {dotted(path)} is one")
    if isinstance(value, str):
        return [7, 1.5, True, [], {}]
    if isinstance(value, int):
        return ["7", 1.5, True, [], {}]
    if isinstance(value, float):
        return ["7", True, [], {}]  # an integer is a valid number
    if isinstance(value, list):
        return ["x", 7, True, {}]
    if isinstance(value, dict):
        return ["x", 7, True, []]
    raise AssertionError(f"unexpected {value!r} at {dotted(path)}")


@PROPERTY
@given(events(), st.data())
def test_a_value_of_the_wrong_type_is_refused_naming_that_exact_field(
    event: dict[str, Any], data: st.DataObject
) -> None:
    targets = [(p, v) for p, v in nodes(event) if v is not None]
    path, value = data.draw(st.sampled_from(targets), label="field")
    wrong = data.draw(st.sampled_from(wrong_values(path, value)), label="wrong value")
    assert_refused(replaced(event, path, wrong), dotted(path))


@PROPERTY
@given(events(), st.data())
def test_an_unknown_field_is_refused_naming_that_exact_field(
    event: dict[str, Any], data: st.DataObject
) -> None:
    objects = [()] + [p for p, v in nodes(event) if isinstance(v, dict) and p[-1] != "metadata"]
    path = data.draw(st.sampled_from(objects), label="object")
    name = data.draw(st.from_regex(r"\Ax_[a-z]{1,8}\Z"), label="unknown name")
    value = data.draw(scalars, label="value")
    mutant = json.loads(json.dumps(event))
    node: Any = mutant
    for part in path:
        node = node[part]
    node[name] = value
    assert_refused(mutant, dotted((*path, name)))


# Length bounds of every string field (docs/contract.md, Limits), by path.
STRING_BOUNDS: list[tuple[str, int, int]] = [
    (r"id|body\.(session_id|user_id|interaction_id|given_by)", 1, LIMITS.id_length),
    (
        r"body\.(model\.(name|version|provider)|prompt\.(name|version)|input\.\d+\.name"
        r"|retrieved\.\d+\.(id|source)|label)",
        1,
        LIMITS.name_length,
    ),
    (
        r"body\.(input|output|input\.\d+\.content|retrieved\.\d+\.text|correction|comment|text)",
        0,
        LIMITS.text_length,
    ),
    (r"body\.tags\.\d+", 1, LIMITS.tag_length),
    (r"body\.input\.\d+\.role", 1, 32),
    (r"body\.target", 0, 2048),
]
UNBOUNDED_STRINGS = {"type", "timestamp", "body.kind", "body.source"}  # enums and formats


def string_bounds(field: str) -> tuple[int, int] | None:
    for pattern, low, high in STRING_BOUNDS:
        if re.fullmatch(pattern, field):
            return low, high
    assert field in UNBOUNDED_STRINGS, f"{field} is a string field this test does not know"
    return None


@PROPERTY
@given(events(), st.data())
def test_a_string_out_of_its_length_bounds_is_refused_naming_that_exact_field(
    event: dict[str, Any], data: st.DataObject
) -> None:
    targets = []
    for path, value in nodes(event):
        if isinstance(value, str):
            bounds = string_bounds(dotted(path))
            if bounds is not None:
                targets.append((path, bounds))
    if not targets:  # a signal of an unbounded kind may have no free text at all
        targets = [(("id",), (1, LIMITS.id_length))]
    path, (low, high) = data.draw(st.sampled_from(targets), label="field")
    lengths = [high + 1] + ([0] if low > 0 else [])
    length = data.draw(st.sampled_from(lengths), label="length")
    assert_refused(replaced(event, path, "a" * length), dotted(path))


# Numeric bounds, by path: values just outside them.
NUMBER_BOUNDS: list[tuple[str, list[Any]]] = [
    (r"body\.(latency_ms|cost_usd|duration_ms)", [-0.5, BOUND * 1.5]),
    (r"body\.(retrieved\.\d+\.score|rating|rating_min|rating_max)", [-BOUND * 2, BOUND * 2]),
    (r"body\.tokens\.(input|output|total)", [-1, 100_000_001]),
    (r"body\.rank", [-1, 1_000_001]),
    (r"body\.thumbs", [0, 2, -2]),
]


def number_outside(field: str) -> list[Any]:
    for pattern, values in NUMBER_BOUNDS:
        if re.fullmatch(pattern, field):
            return values
    raise AssertionError(f"{field} is a number field this test does not know")


@PROPERTY
@given(events(), st.data())
def test_a_number_out_of_its_bounds_is_refused_naming_that_exact_field(
    event: dict[str, Any], data: st.DataObject
) -> None:
    targets = [
        p
        for p, v in nodes(event)
        if isinstance(v, int | float) and not isinstance(v, bool) and "metadata" not in p
    ]
    if not targets:
        return
    path = data.draw(st.sampled_from(targets), label="field")
    value = data.draw(st.sampled_from(number_outside(dotted(path))), label="value")
    mutant = replaced(event, path, value)
    with pytest.raises(ContractError) as caught:
        decode_event(raw(mutant))
    assert caught.value.field == dotted(path), caught.value
    if dotted(path) != "body.thumbs":  # thumbs = +-1 is a rule the schema does not express
        assert not VALIDATOR.is_valid(mutant)


@PROPERTY
@given(events(), st.data())
def test_a_missing_required_field_is_refused_naming_that_exact_field(
    event: dict[str, Any], data: st.DataObject
) -> None:
    required = {
        "interaction": ["id", "type", "timestamp", "body", "body.input"],
        "feedback": ["id", "type", "timestamp", "body", "body.interaction_id"],
        "signal": ["id", "type", "timestamp", "body", "body.interaction_id", "body.kind"],
    }[event["type"]]
    messages = event["body"].get("input")
    if isinstance(messages, list) and messages:
        required.append("body.input.0.role")
    field = data.draw(st.sampled_from(required), label="field")
    mutant = json.loads(json.dumps(event))
    *parents, last = field.split(".")
    node: Any = mutant
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    del node[last]
    assert_refused(mutant, field)
