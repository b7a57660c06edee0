"""Dataset exports on SQLite and PostgreSQL: interactions, feedback and edits ingested through
the real ingest path, exported as chat fine-tuning JSONL (checked against a JSON Schema of
OpenAI's format), TRL preference pairs (loaded with Hugging Face ``datasets``) and Parquet
(read with pyarrow); splits, de-duplication, redaction, erasure, S3, the routes and the CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import fsspec
import httpx
import jsonschema
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from closedloop import make_event
from closedloop.act.actions import Trigger, action_kinds, build_action
from closedloop.act.dataset_formats import split_of
from closedloop.act.datasets import ExportAction, ExportFilters, ExportResult, export_dataset
from closedloop.cli import app
from closedloop.errors import ConfigError, NotFound
from closedloop.runtime import Runtime, tierer
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant
from tests.integration.conftest import S3Store, seed_lake_rows

EMAIL = "ana.lopez@example.org"
CHAT = [
    {"role": "system", "content": "You answer refund questions."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello, how can I help?"},
    {"role": "user", "content": "can I get a refund for the pelican kite?"},
]

# OpenAI's chat fine-tuning line: messages with roles system/user/assistant and string
# contents, the last one the assistant's.
FINETUNE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "additionalProperties": False,
    "properties": {
        "messages": {
            "type": "array",
            "minItems": 2,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "additionalProperties": False,
                "properties": {
                    "role": {"enum": ["system", "user", "assistant"]},
                    "content": {"type": "string", "minLength": 1},
                },
            },
            "contains": {"properties": {"role": {"const": "user"}}},
        }
    },
}


def _ingest(runtime: Runtime, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    raw = [json.dumps(e).encode() for e in events]
    result = runtime.ingestor.ingest(runtime.verify(tenant.secret_key), raw)
    assert all(r.status == "stored" for r in result.results), result


def _seed(runtime: Runtime, tenant: Tenant, prefix: str = "") -> None:
    """Seven interactions: corrections, an edit on a chat, a thumbs up, a duplicate, an email
    in a correction, an unchanged correction and a reviewer's correction."""
    start = utcnow() - dt.timedelta(hours=2)
    spec: list[tuple[str, Any, str, str, dict[str, Any] | None, str | None]] = [
        # id, input, output, user, feedback, edit text
        ("i1", "How do I reset my password?", "Click forgot", "u-1",
         {"correction": "Open Settings, then Reset password."}, None),
        ("i2", CHAT, "No refunds.", "u-2", None, "Yes, within 30 days for the pelican kite."),
        ("i3", "What is the weather?", "Sunny.", "u-3", {"thumbs": 1}, None),
        ("i4", "how do I  reset my password?", "Try again", "u-4",
         {"correction": "open settings, then reset   password."}, None),
        ("i5", "Who do I write to?", "No idea.", "u-5",
         {"correction": f"Write to {EMAIL} please."}, None),
        ("i6", "What is six times seven?", "42", "u-6", {"correction": "42"}, None),
        ("i7", "What colour is the sky?", "Green", "u-7",
         {"correction": "Blue", "source": "reviewer", "given_by": "rev-1"}, None),
    ]  # fmt: skip
    events = []
    for n, (iid, text, output, user, feedback, edit) in enumerate(spec):
        iid = prefix + iid
        ts = start + dt.timedelta(minutes=n)
        body = {
            "input": text,
            "output": output,
            "user_id": user,
            "model": {"name": "m", "version": "1"},
            "prompt": {"name": "support", "version": "1"},
            "tags": ["odd"] if n % 2 else ["even"],
        }
        events.append(make_event("interaction", body, id=iid, timestamp=ts))
        if feedback is not None:
            fb = {"interaction_id": iid, "user_id": user, **feedback}
            when = ts + dt.timedelta(seconds=30)
            events.append(make_event("feedback", fb, id=f"{iid}-f", timestamp=when))
        if edit is not None:
            signal = {"interaction_id": iid, "kind": "edit", "text": edit, "user_id": user}
            when = ts + dt.timedelta(seconds=40)
            events.append(make_event("signal", signal, id=f"{iid}-e", timestamp=when))
    _ingest(runtime, tenant, events)


def _export(runtime: Runtime, tenant: Tenant, kind: str, **kwargs: Any) -> ExportResult:
    return export_dataset(
        runtime.analytics(),
        tenant.project_id,
        kind=kind,  # type: ignore[arg-type]
        export_dir=runtime.settings.resolved_export_dir(),
        **kwargs,
    )


def _lines(url: str, **options: Any) -> list[dict[str, Any]]:
    with fsspec.open(url, "rt", encoding="utf-8", **options) as handle:
        return [json.loads(line) for line in handle]


def _all_lines(result: ExportResult) -> list[dict[str, Any]]:
    return [line for url in result.files.values() for line in _lines(url)]


def test_finetune_lines_follow_openais_chat_format_with_the_corrected_answer_last(
    runtime: Runtime, tenant: Tenant
) -> None:
    _seed(runtime, tenant)
    result = _export(runtime, tenant, "finetune", validation_share=0.0)
    lines = _all_lines(result)
    for line in lines:
        jsonschema.validate(line, FINETUNE_SCHEMA)
        assert line["messages"][-1]["role"] == "assistant"
    finals = {line["messages"][-2]["content"]: line["messages"][-1]["content"] for line in lines}
    assert finals["How do I reset my password?"] == "Open Settings, then Reset password."
    # the chat input is kept as the conversation, the user's edit is the answer
    chat = next(line for line in lines if line["messages"][0]["role"] == "system")
    assert chat["messages"][:-1] == CHAT
    assert chat["messages"][-1]["content"] == "Yes, within 30 days for the pelican kite."
    assert finals["What colour is the sky?"] == "Blue"
    # i3 has no correction; i4 is i1 again (case and spaces): both left out, and counted
    assert "What is the weather?" not in finals
    assert result.rows == {"train": 5, "validation": 0}
    assert result.skipped == {"duplicate": 1, "no_target": 1}
    assert result.users == 5 + 1  # u-1, u-2, u-5, u-6, u-7 and the reviewer rev-1


def test_include_positive_adds_the_well_rated_answer_and_source_filters_feedback(
    runtime: Runtime, tenant: Tenant
) -> None:
    _seed(runtime, tenant)
    result = _export(runtime, tenant, "finetune", validation_share=0.0, include_positive=True)
    finals = {
        line["messages"][-2]["content"]: line["messages"][-1]["content"]
        for line in _all_lines(result)
    }
    assert finals["What is the weather?"] == "Sunny."
    reviewed = _export(
        runtime, tenant, "finetune", filters=ExportFilters(source="reviewer"), dry_run=True
    )
    assert reviewed.total == 1 and not reviewed.written and not reviewed.files


def test_dpo_pairs_load_with_hugging_face_datasets(
    runtime: Runtime, tenant: Tenant, tmp_path: Path
) -> None:
    import datasets

    _seed(runtime, tenant)
    result = _export(runtime, tenant, "dpo", validation_share=0.0)
    assert result.skipped == {"duplicate": 1, "no_target": 1, "unchanged": 1}
    loaded = datasets.load_dataset(
        "json", data_files={"train": result.files["train"]}, cache_dir=str(tmp_path / "hf")
    )["train"]
    assert set(loaded.column_names) == {"prompt", "chosen", "rejected"}
    assert len(loaded) == 4
    by_prompt = {row["prompt"][-1]["content"]: row for row in loaded}
    row = by_prompt["How do I reset my password?"]
    assert row["prompt"] == [{"role": "user", "content": "How do I reset my password?"}]
    assert row["chosen"] == [
        {"role": "assistant", "content": "Open Settings, then Reset password."}
    ]
    assert row["rejected"] == [{"role": "assistant", "content": "Click forgot"}]
    chat = by_prompt[CHAT[-1]["content"]]
    assert chat["prompt"] == CHAT
    assert chat["rejected"][0]["content"] == "No refunds."
    assert "What is six times seven?" not in by_prompt  # chosen == rejected


def test_parquet_split_is_deterministic_and_disjoint(runtime: Runtime, tenant: Tenant) -> None:
    _seed(runtime, tenant)
    first = _export(runtime, tenant, "parquet", validation_share=0.5, salt="s1")
    again = _export(runtime, tenant, "parquet", validation_share=0.5, salt="s1")
    assert first.folder != again.folder
    ids: dict[str, set[str]] = {}
    for split, url in first.files.items():
        table = pq.read_table(url)
        assert set(table.column("split").to_pylist()) == {split}
        ids[split] = set(table.column("id").to_pylist())
        for iid in ids[split]:
            assert split_of(iid, 0.5, "s1") == split
        assert ids[split] == set(pq.read_table(again.files[split]).column("id").to_pylist())
    assert not ids["train"] & ids["validation"]
    assert ids["train"] | ids["validation"] == {f"i{n}" for n in range(1, 8)}  # no de-dup
    rows = {r["id"]: r for url in first.files.values() for r in pq.read_table(url).to_pylist()}
    assert rows["i1"]["correction"] == "Open Settings, then Reset password."
    assert rows["i2"]["edited_text"].startswith("Yes, within 30 days")
    assert rows["i2"]["messages"] == CHAT and json.loads(rows["i2"]["input"]) == CHAT
    assert rows["i3"]["thumbs"] == 1 and rows["i3"]["target"] is None
    assert rows["i1"]["model_name"] == "m" and rows["i1"]["prompt_version"] == "1"


def test_exports_hold_the_redacted_correction_never_the_email(
    runtime: Runtime, tenant: Tenant
) -> None:
    _seed(runtime, tenant)
    for kind in ("finetune", "dpo", "parquet"):
        result = _export(runtime, tenant, kind)
        data = b"".join(fsspec.open(url, "rb").open().read() for url in result.files.values())
        assert EMAIL.encode() not in data, kind
        assert b"ana.lopez" not in data, kind
    lines = _all_lines(_export(runtime, tenant, "finetune"))
    answer = next(
        m["messages"][-1]["content"]
        for m in lines
        if m["messages"][-2]["content"] == "Who do I write to?"
    )
    assert answer.startswith("Write to <EMAIL") and EMAIL not in answer


def test_erasing_a_user_deletes_the_export_that_held_them(runtime: Runtime, tenant: Tenant) -> None:
    _seed(runtime, tenant)
    result = _export(runtime, tenant, "finetune", validation_share=0.0)
    url = result.files["train"]
    assert "pelican kite" in Path(url).read_text()
    receipt = runtime.erase_user(tenant.project_id, "u-2")
    assert [e["url"] for e in receipt.exports] == [url]
    assert not Path(url).exists()
    again = _export(runtime, tenant, "finetune", validation_share=0.0)
    text = Path(again.files["train"]).read_text()
    assert "pelican" not in text and "30 days" not in text
    assert again.total == result.total - 1


def test_exports_include_history_moved_to_the_lake(runtime: Runtime, tenant: Tenant) -> None:
    seed_lake_rows(runtime, tenant)
    report = tierer(runtime.engine, runtime.lake, runtime.projects, runtime.settings).run()
    assert report.by_entity.get("interactions", 0) >= 12
    result = _export(runtime, tenant, "parquet", validation_share=0.0)
    ids = set(pq.read_table(result.files["train"]).column("id").to_pylist())
    assert {f"acme-i-{d}-{k}" for d in range(3) for k in range(4)} <= ids
    tuned = _export(runtime, tenant, "finetune", validation_share=0.0, dedupe=False)
    assert tuned.total == 3  # one correction ("x") a day, all in the lake


def test_filters_by_model_prompt_time_and_tag(runtime: Runtime, tenant: Tenant) -> None:
    _seed(runtime, tenant)

    def count(**filters: Any) -> int:
        found = _export(runtime, tenant, "parquet", filters=ExportFilters(**filters), dry_run=True)
        return found.total

    assert count() == 7
    assert count(model="m", prompt="support", prompt_version="1") == 7
    assert count(model="other") == 0
    assert count(tags=["odd"]) == 3
    assert count(until=utcnow() - dt.timedelta(days=1)) == 0
    assert count(since=utcnow() - dt.timedelta(hours=3)) == 7


def test_a_dpo_export_writes_to_s3_and_reads_back(
    runtime: Runtime, tenant: Tenant, moto_s3: S3Store
) -> None:
    _seed(runtime, tenant)
    url = f"{moto_s3.url}/exports/dpo-1"
    result = _export(
        runtime, tenant, "dpo", url=url, validation_share=0.0, storage_options=moto_s3.options
    )
    assert result.files == {"train": f"{url}/train.jsonl"}
    pairs = _lines(result.files["train"], **moto_s3.options)
    assert len(pairs) == 4
    assert {p["chosen"][0]["content"] for p in pairs} >= {"Blue"}
    # erasure reaches the file on S3 with the store's options (the lake's, as exports use)
    import s3fs

    runtime.lake.options.update(moto_s3.options)
    receipt = runtime.erase_user(tenant.project_id, "u-2")
    assert [e["url"] for e in receipt.exports] == [result.files["train"]]
    assert not s3fs.S3FileSystem(**moto_s3.options).exists(result.files["train"])


# -- routes ----------------------------------------------------------------------------------


async def test_post_exports_answers_201_with_the_files(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, client: httpx.AsyncClient
) -> None:
    _seed(runtime, tenant)
    _seed(runtime, other_tenant, prefix="g-")
    other = [make_event("interaction", {"input": "marmot secret", "output": "x"}, id="g-z")]
    other.append(make_event("feedback", {"interaction_id": "g-z", "correction": "y"}, id="g-f"))
    _ingest(runtime, other_tenant, other)
    answer = await client.post(
        "/v1/exports",
        json={"kind": "finetune", "validation_share": 0, "url": "mine/ft"},
        headers=tenant.headers(),
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["rows"] == {"train": 5, "validation": 0} and body["written"]
    export_dir = runtime.settings.resolved_export_dir().resolve()
    # a caller's url is a folder under the project's own export folder
    assert body["files"]["train"] == str(export_dir / "acme" / "mine" / "ft" / "train.jsonl")
    text = Path(body["files"]["train"]).read_text()
    assert "marmot" not in text  # the other tenant's rows are never exported
    listed = await client.get("/v1/exports", headers=tenant.headers())
    assert [(e["kind"], e["url"], e["rows"]) for e in listed.json()["exports"]] == [
        ("finetune", body["files"]["train"], 5)
    ]
    theirs = await client.get("/v1/exports", headers=other_tenant.headers())
    assert theirs.json()["exports"] == []


async def test_post_exports_refuses_a_bad_kind_a_path_outside_and_the_public_key(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    bad = await client.post("/v1/exports", json={"kind": "csv"}, headers=tenant.headers())
    assert bad.status_code == 400 and bad.json()["field"] == "kind"
    unknown = await client.post(
        "/v1/exports", json={"kind": "dpo", "colour": 1}, headers=tenant.headers()
    )
    assert unknown.status_code == 400 and unknown.json()["field"] == "colour"
    for url in (
        str(tmp_path / "elsewhere"),
        "../../escape",
        "../globex/x",  # another project's folder
        "http://example.com/x",
        "s3://bucket/anywhere",  # object stores only through CLOSEDLOOP_EXPORT_URL
    ):
        outside = await client.post(
            "/v1/exports", json={"kind": "dpo", "url": url}, headers=tenant.headers()
        )
        assert outside.status_code == 400 and outside.json()["field"] == "url", url
    assert not (tmp_path / "elsewhere").exists()
    public = await client.post(
        "/v1/exports", json={"kind": "dpo"}, headers=tenant.headers("public")
    )
    assert public.status_code == 401
    listing = await client.get("/v1/exports", headers=tenant.headers("public"))
    assert listing.status_code == 401


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
)
async def test_post_exports_answers_a_time_at_the_edge_of_the_range_without_a_500(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient, since: str
) -> None:
    _seed(runtime, tenant)
    answer = await client.post(
        "/v1/exports", json={"kind": "dpo", "since": since}, headers=tenant.headers()
    )
    assert answer.status_code in (201, 400), answer.text
    if answer.status_code == 400:
        assert answer.json()["field"] == "since"


async def test_post_exports_answers_502_when_the_bucket_cannot_be_written(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient, moto_s3: S3Store
) -> None:
    _seed(runtime, tenant)
    runtime.settings.lake_options.update(moto_s3.options)
    runtime.settings = runtime.settings.with_overrides(export_url="s3://no-such-bucket-7f3a/x")
    answer = await client.post(
        "/v1/exports", json={"kind": "dpo", "url": "weekly"}, headers=tenant.headers()
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["field"] == "url"


async def test_post_exports_write_under_the_projects_folder_of_the_export_url(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient, moto_s3: S3Store
) -> None:
    _seed(runtime, tenant)
    runtime.settings.lake_options.update(moto_s3.options)
    runtime.settings = runtime.settings.with_overrides(export_url=f"{moto_s3.url}/exports")
    answer = await client.post(
        "/v1/exports",
        json={"kind": "dpo", "url": "weekly", "validation_share": 0},
        headers=tenant.headers(),
    )
    assert answer.status_code == 201, answer.text
    train = answer.json()["files"]["train"]
    assert train == f"{moto_s3.url}/exports/acme/weekly/train.jsonl"
    assert len(_lines(train, **moto_s3.options)) == 4


# -- the command line ------------------------------------------------------------------------


def test_cli_export_prints_the_files_and_names_a_bad_option(
    runtime: Runtime,
    tenant: Tenant,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _seed(runtime, tenant)
    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(runtime.settings.data_dir))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", database_url)
    out = tmp_path / "anywhere"
    runner = CliRunner()
    done = runner.invoke(
        app,
        ["export", "dpo", "--project", "acme", "--validation-share", "0", "--out", str(out)],
    )
    assert done.exit_code == 0, done.output
    assert "4 dpo rows" in done.output
    assert len((out / "train.jsonl").read_text().splitlines()) == 4
    bad = runner.invoke(app, ["export", "dpo", "--project", "acme", "--validation-share", "2"])
    assert bad.exit_code == 1 and "--validation-share" in bad.output
    kind = runner.invoke(app, ["export", "csv", "--project", "acme"])
    assert kind.exit_code == 1 and "KIND" in kind.output
    again = runner.invoke(app, ["export", "dpo", "--project", "acme", "--out", str(out)])
    assert again.exit_code == 1 and "--out" in again.output


# -- the action ------------------------------------------------------------------------------


def _issue(runtime: Runtime, tenant: Tenant, issue_id: int, members: list[str]) -> None:
    """An issue with these members, as the analysis job stores it (clustering itself is
    tested in tests/integration/test_issues.py)."""
    now = utcnow()
    with runtime.engine.begin() as conn:
        conn.execute(
            models.clusters.insert().values(
                project_id=tenant.project_id,
                kind="issue",
                id=issue_id,
                model="lexical",
                name="passwords",
                centroid=b"\0" * 8,
                size=len(members),
                state="open",
                created_at=now,
                updated_at=now,
                last_seen_at=now,
            )
        )
        conn.execute(
            models.cluster_members.insert(),
            [
                {
                    "project_id": tenant.project_id,
                    "kind": "issue",
                    "ref_id": ref,
                    "cluster_id": issue_id,
                    "ts": now,
                    "assigned_at": now,
                }
                for ref in members
            ],
        )


def _trigger(tenant: Tenant, **kwargs: Any) -> Trigger:
    return Trigger(
        project_id=tenant.project_id,
        rule="bad-answers",
        kind="issue",
        segment="all",
        fired_at=utcnow(),
        **kwargs,
    )


def test_the_export_action_takes_the_triggers_issue_and_honours_min_rows(
    runtime: Runtime, tenant: Tenant
) -> None:
    _seed(runtime, tenant)
    _issue(runtime, tenant, 3, ["i1", "i5", "i3"])
    kinds = action_kinds(load_entrypoints=False)
    context = runtime.act_context()
    action = build_action(
        "export", {"kind": "finetune", "validation_share": 0}, context, kinds=kinds
    )
    assert isinstance(action, ExportAction)
    dry = action.run(_trigger(tenant, issue_id=3), dry_run=True)
    assert dry.ok and dry.dry_run and dry.details["rows"]["train"] == 2
    assert not dry.details["files"]
    done = action.run(_trigger(tenant, issue_id=3))
    assert done.ok and done.details["written"]
    lines = _lines(done.details["files"]["train"])
    assert {line["messages"][-2]["content"] for line in lines} == {
        "How do I reset my password?",
        "Who do I write to?",
    }
    every = action.run(_trigger(tenant))  # no issue named: every interaction
    assert every.details["rows"]["train"] == 5
    many = build_action("export", {"min_rows": 10}, context, kinds=kinds)
    assert isinstance(many, ExportAction)
    skipped = many.run(_trigger(tenant, issue_id=3))
    assert skipped.ok and not skipped.details["written"] and "nothing exported" in skipped.summary
    with pytest.raises(NotFound):
        action.run(_trigger(tenant, issue_id=99))
    with pytest.raises(ConfigError) as bad:
        build_action("export", {"kind": "csv"}, None, kinds=kinds)
    assert bad.value.field == "action.kind"
    outside = build_action("export", {"url": "/etc/closedloop"}, context, kinds=kinds)
    assert isinstance(outside, ExportAction)
    with pytest.raises(ConfigError) as where:
        outside.run(_trigger(tenant))
    assert where.value.field == "url"
