"""The dataset formats without a store: targets, conversations, pairs, splits, de-duplication,
Parquet rows and where an API caller may write."""

from __future__ import annotations

from pathlib import Path

import pytest

from closedloop.act.dataset_formats import (
    ExportRow,
    Skipped,
    build_records,
    check_url,
    conversation,
    dedupe_key,
    dpo_record,
    finetune_record,
    parquet_table,
    split_of,
    target_of,
)
from closedloop.errors import ConfigError


def test_the_correction_wins_over_the_edit_and_the_edit_over_the_output() -> None:
    row = ExportRow(id="a", input="q", output="o", correction="c", edited_text="e", thumbs=1)
    assert target_of(row) == ("c", "correction")
    assert target_of(ExportRow(id="a", input="q", output="o", edited_text="e")) == ("e", "edit")
    positive = ExportRow(id="a", input="q", output="o", thumbs=1)
    with pytest.raises(Skipped) as none:
        target_of(positive)
    assert none.value.reason == "no_target"
    assert target_of(positive, include_positive=True) == ("o", "positive")
    rated = ExportRow(id="a", input="q", output="o", rating=4, rating_norm=0.75)
    assert target_of(rated, include_positive=True) == ("o", "positive")
    low = ExportRow(id="a", input="q", output="o", rating=3, rating_norm=0.5)
    with pytest.raises(Skipped):
        target_of(low, include_positive=True)


def test_chat_inputs_keep_their_turns_and_refuse_roles_fine_tuning_does_not_take() -> None:
    chat = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye?"},
    ]
    messages = conversation(chat, system="ignored: the input has one")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert conversation("q", system="sys") == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q"},
    ]
    for bad, reason in (
        ([{"role": "tool", "content": "x"}, {"role": "user", "content": "q"}], "unsupported_role"),
        ([{"role": "user", "content": None}], "empty_message"),
        ([{"role": "system", "content": "only"}], "no_user_message"),
    ):
        with pytest.raises(Skipped) as skip:
            conversation(bad)
        assert skip.value.reason == reason


def test_finetune_and_dpo_records() -> None:
    row = ExportRow(id="a", input="q", output="old", edited_text="new")
    assert finetune_record(row) == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "new"}]
    }
    assert dpo_record(row) == {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "new"}],
        "rejected": [{"role": "assistant", "content": "old"}],
    }
    for bad, reason in (
        (ExportRow(id="a", input="q", output=" OLD ", correction="old"), "unchanged"),
        (ExportRow(id="a", input="q", correction="c"), "no_output"),
    ):
        with pytest.raises(Skipped) as skip:
            dpo_record(bad)
        assert skip.value.reason == reason


def test_the_split_is_stable_and_near_the_share() -> None:
    ids = [f"int-{n}" for n in range(4000)]
    splits = [split_of(i, 0.2) for i in ids]
    assert splits == [split_of(i, 0.2) for i in ids]
    share = splits.count("validation") / len(ids)
    assert 0.17 < share < 0.23
    assert [split_of(i, 0.2, "other") for i in ids] != splits
    with pytest.raises(ValueError):
        split_of("x", 1.5)


def test_duplicates_are_dropped_on_the_normalised_pair_and_counted() -> None:
    rows = [
        ExportRow(id="a", input="Reset  password?", output="x", correction="Open settings"),
        ExportRow(id="b", input="reset password?", output="y", correction="open   Settings"),
        ExportRow(id="c", input="reset password?", output="y", correction="Other answer"),
    ]
    assert dedupe_key("A  b", "C") == dedupe_key("a b", "c")
    built = build_records(
        rows,
        "finetune",
        validation_share=0.0,
        salt="s",
        dedupe=True,
        include_positive=False,
        system=None,
    )
    assert [r.id for r in built.rows["train"]] == ["a", "c"]
    assert built.skipped == {"duplicate": 1}
    kept = build_records(
        rows,
        "finetune",
        validation_share=0.0,
        salt="s",
        dedupe=False,
        include_positive=False,
        system=None,
    )
    assert len(kept.records["train"]) == 3


def test_parquet_rows_carry_the_feedback_summary() -> None:
    rows = [
        ExportRow(id="a", input=[{"role": "user", "content": "q"}], output="o", correction="c"),
        ExportRow(id="b", input="q2", output="o2", thumbs=-1, tags=("t",)),
    ]
    table = parquet_table(rows, ["train", "validation"])
    got = table.to_pylist()
    assert got[0]["target"] == "c" and got[0]["target_basis"] == "correction"
    assert got[0]["messages"] == [{"role": "user", "content": "q"}]
    assert got[1]["target"] is None and got[1]["thumbs"] == -1 and got[1]["tags"] == ["t"]
    assert table.column("split").to_pylist() == ["train", "validation"]


def test_api_urls_stay_under_the_export_folder_or_go_to_an_object_store(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    assert check_url("team/ft", root) == str((root / "team" / "ft").resolve())
    assert check_url(str(root / "x"), root) == str((root / "x").resolve())
    assert check_url("s3://bucket/ds", root) == "s3://bucket/ds"
    for bad in ("../escape", str(tmp_path / "other"), "/etc", "http://h/x", "memory://x"):
        with pytest.raises(ConfigError) as refused:
            check_url(bad, root)
        assert refused.value.field == "url", bad
    with pytest.raises(ConfigError):
        check_url("s3://lake/closedloop/interactions", root, lake_url="s3://lake/closedloop")


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/lake",
        "s3://bucket/lake/",
        "s3a://bucket/lake/project=2/x",  # fsspec writes s3a:// to the same S3 path
        "s3://bucket//lake/project=2/x",
        "S3://bucket/lake/project=2/x",
        "s3://bucket/./lake/x",
    ],
)
def test_no_spelling_of_a_lake_url_lets_an_export_into_the_lake(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_url(url, tmp_path, lake_url="s3://bucket/lake/")
    assert refused.value.field == "url" and "lake" in str(refused.value)


def test_urls_beside_the_lake_are_accepted_with_the_lakes_options(tmp_path: Path) -> None:
    lake = "s3://bucket/lake"
    for url in ("s3://bucket/lakehouse/x", "s3://bucket/other", "s3://other/lake/x"):
        assert check_url(url, tmp_path, lake_url=lake) == url
        assert check_url(url, tmp_path, lake_url=lake, storage_options={"anon": True}) == url
    assert check_url("S3A://bucket/ds", tmp_path, lake_url=lake) == "s3a://bucket/ds"
    assert check_url("s3://bucket/lake/x", tmp_path, lake_url=str(tmp_path / "lake")).startswith(
        "s3://"
    )  # a local lake is another store


def test_a_local_export_folder_is_never_the_local_lake(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    for url in ("lake/x", "lake", f"file://{lake}//x", str(lake) + "/./y"):
        with pytest.raises(ConfigError) as refused:
            check_url(url, tmp_path, lake_url=str(lake))
        assert refused.value.field == "url", url
    assert check_url("lakehouse", tmp_path, lake_url=f"file://{lake}") == str(
        (tmp_path / "lakehouse").resolve()
    )
