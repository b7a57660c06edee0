"""Tests for the packaged intent-data sample, ``closedloop.sample``."""

from __future__ import annotations

import doctest
from importlib.resources import files

import pytest

import closedloop.sample as sample
from closedloop.sample import ATTRIBUTION, Utterance, intents, load_utterances

CLINC_INTENTS = 30
BANKING_INTENTS = 25
OOS_ROWS = 100


def test_the_data_loads_as_utterances() -> None:
    rows = load_utterances()
    assert len(rows) == 2845
    assert all(isinstance(u, Utterance) for u in rows)


def test_both_datasets_are_present_with_the_documented_intent_counts() -> None:
    assert len(intents("clinc150")) == CLINC_INTENTS
    assert len(intents("banking77")) == BANKING_INTENTS
    assert {u.dataset for u in load_utterances()} == {"clinc150", "banking77"}


def test_intents_are_sorted_unique_and_exclude_oos() -> None:
    for dataset in (None, "clinc150", "banking77"):
        names = intents(dataset)
        assert names == sorted(set(names))
        assert "oos" not in names
    assert set(intents()) == set(intents("clinc150")) | set(intents("banking77"))


def test_clinc150_has_three_intents_from_each_of_ten_domains() -> None:
    by_domain: dict[str, set[str]] = {}
    for u in load_utterances(dataset="clinc150"):
        if u.domain is not None:
            by_domain.setdefault(u.domain, set()).add(u.intent)
    assert len(by_domain) == 10
    assert all(len(names) == 3 for names in by_domain.values())


def test_each_intent_has_at_most_forty_train_and_exactly_ten_test_rows() -> None:
    for dataset in ("clinc150", "banking77"):
        for intent in intents(dataset):
            rows = [u for u in load_utterances(dataset=dataset) if u.intent == intent]
            assert 0 < sum(u.split == "train" for u in rows) <= 40
            assert sum(u.split == "test" for u in rows) == 10


def test_oos_rows_exist_and_are_in_the_oos_split() -> None:
    oos = [u for u in load_utterances() if u.intent == "oos"]
    assert len(oos) == OOS_ROWS
    assert all(u.split == "oos" and u.dataset == "clinc150" for u in oos)
    assert load_utterances(split="oos") == oos


def test_banking77_rows_have_no_domain() -> None:
    assert all(u.domain is None for u in load_utterances(dataset="banking77"))


def test_filtering_by_dataset_and_split_keeps_only_matching_rows() -> None:
    rows = load_utterances(dataset="banking77", split="train")
    assert rows
    assert all(u.dataset == "banking77" and u.split == "train" for u in rows)
    total = len(load_utterances())
    by_dataset = sum(len(load_utterances(dataset=d)) for d in sample.DATASETS)
    by_split = sum(len(load_utterances(split=s)) for s in sample.SPLITS)
    assert by_dataset == by_split == total


def test_the_returned_list_is_a_fresh_copy() -> None:
    rows = load_utterances()
    rows.clear()
    assert load_utterances()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dataset": "snips"}, "dataset"),
        ({"split": "val"}, "split"),
    ],
)
def test_a_bad_argument_raises_value_error_naming_it_and_the_allowed_values(
    kwargs: dict[str, str], name: str
) -> None:
    with pytest.raises(ValueError, match=name) as info:
        load_utterances(**kwargs)
    allowed = sample.DATASETS if name == "dataset" else sample.SPLITS
    assert all(value in str(info.value) for value in allowed)


def test_intents_rejects_an_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="dataset"):
        intents("snips")


def test_attribution_names_both_datasets_and_licences() -> None:
    for needle in ("CLINC150", "Banking77", "CC BY 3.0", "CC BY 4.0"):
        assert needle in ATTRIBUTION
    for needle in ("Larson", "Casanueva", "828f8093", "57ec275d"):
        assert needle in ATTRIBUTION


def test_the_license_file_ships_next_to_the_data() -> None:
    text = files("closedloop.sample").joinpath("LICENSE.md").read_text("utf-8")
    assert "CC BY 3.0" in text
    assert "CC BY 4.0" in text


def test_every_row_has_non_empty_text_and_intent() -> None:
    for u in load_utterances():
        assert u.text.strip()
        assert u.intent.strip()


def test_the_data_file_is_smaller_than_two_megabytes() -> None:
    data = files("closedloop.sample").joinpath("utterances.jsonl.gz").read_bytes()
    assert len(data) < 2 * 1024 * 1024


def test_the_module_docstring_examples_run() -> None:
    result = doctest.testmod(sample)
    assert result.attempted > 0
    assert result.failed == 0
