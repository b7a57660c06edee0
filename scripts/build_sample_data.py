"""Build the small, attributed intent-data slice shipped in ``closedloop.sample``.

Usage::

    python scripts/build_sample_data.py SOURCE_DIR [--out OUTPUT_DIR]

``SOURCE_DIR`` must contain the unmodified upstream files:

* ``clinc150_data_full.json`` and ``clinc150_domains.json``
  (clinc/oos-eval @ 828f8093, ``data/``; CC BY 3.0)
* ``banking77_train.csv`` and ``banking77_test.csv``
  (PolyAI-LDN/task-specific-datasets @ 57ec275d, ``banking_data/``; CC BY 4.0)

The slice is deterministic (seeded with :data:`SEED`) and the gzip output is
byte-for-byte reproducible (fixed mtime, no file name in the header). Texts
are copied verbatim; nothing is normalised, corrected or re-labelled.

Slice
-----
* CLINC150: :data:`CLINC_INTENTS_PER_DOMAIN` intents from each of the 10
  domains (30 intents), up to :data:`TRAIN_PER_INTENT` examples each from
  ``train`` and :data:`TEST_PER_INTENT` from ``test``, plus
  :data:`OOS_COUNT` out-of-scope queries sampled from ``oos_test``.
* Banking77: :data:`BANKING_CATEGORIES` categories, up to
  :data:`TRAIN_PER_INTENT` examples each from train and
  :data:`TEST_PER_INTENT` from test.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import TypedDict

SEED = 20240501
CLINC_INTENTS_PER_DOMAIN = 3
BANKING_CATEGORIES = 25
TRAIN_PER_INTENT = 40
TEST_PER_INTENT = 10
OOS_COUNT = 100
OUTPUT_NAME = "utterances.jsonl.gz"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "src" / "closedloop" / "sample"


class Row(TypedDict):
    """One output record (key order is the on-disk key order)."""

    text: str
    intent: str
    dataset: str
    domain: str | None
    split: str


def _sample_in_order(items: list[str], k: int, rng: random.Random) -> list[str]:
    """Sample up to ``k`` items, keeping their original (source) order."""
    if len(items) <= k:
        return list(items)
    chosen = sorted(rng.sample(range(len(items)), k))
    return [items[i] for i in chosen]


def _by_intent(pairs: list[list[str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for text, intent in pairs:
        grouped[intent].append(text)
    return grouped


def build_clinc(src: Path, rng: random.Random) -> list[Row]:
    """Return the CLINC150 part of the slice."""
    data = json.loads((src / "clinc150_data_full.json").read_text(encoding="utf-8"))
    domains: dict[str, list[str]] = json.loads(
        (src / "clinc150_domains.json").read_text(encoding="utf-8")
    )
    train = _by_intent(data["train"])
    test = _by_intent(data["test"])
    rows: list[Row] = []
    for domain in sorted(domains):
        picked = sorted(rng.sample(sorted(domains[domain]), CLINC_INTENTS_PER_DOMAIN))
        for intent in picked:
            for split, pool, k in (
                ("train", train, TRAIN_PER_INTENT),
                ("test", test, TEST_PER_INTENT),
            ):
                for text in _sample_in_order(pool[intent], k, rng):
                    rows.append(
                        Row(
                            text=text,
                            intent=intent,
                            dataset="clinc150",
                            domain=domain,
                            split=split,
                        )
                    )
    oos = [text for text, intent in data["oos_test"] if intent == "oos"]
    for text in _sample_in_order(oos, OOS_COUNT, rng):
        rows.append(Row(text=text, intent="oos", dataset="clinc150", domain=None, split="oos"))
    return rows


def _read_banking(path: Path) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8", newline="") as fh:
        for record in csv.DictReader(fh):
            grouped[record["category"]].append(record["text"])
    return grouped


def build_banking(src: Path, rng: random.Random) -> list[Row]:
    """Return the Banking77 part of the slice."""
    train = _read_banking(src / "banking77_train.csv")
    test = _read_banking(src / "banking77_test.csv")
    picked = sorted(rng.sample(sorted(train), BANKING_CATEGORIES))
    rows: list[Row] = []
    for category in picked:
        for split, pool, k in (
            ("train", train, TRAIN_PER_INTENT),
            ("test", test, TEST_PER_INTENT),
        ):
            for text in _sample_in_order(pool[category], k, rng):
                rows.append(
                    Row(
                        text=text,
                        intent=category,
                        dataset="banking77",
                        domain=None,
                        split=split,
                    )
                )
    return rows


def build(src: Path) -> list[Row]:
    """Return every row of the slice, in a deterministic order."""
    rng = random.Random(SEED)
    rows = build_clinc(src, rng) + build_banking(src, rng)
    empty = [r for r in rows if not r["text"].strip()]
    if empty:
        raise SystemExit(f"refusing to write {len(empty)} rows with empty text")
    return rows


def write(rows: list[Row], out_dir: Path) -> Path:
    """Write ``rows`` as reproducible gzip-compressed JSON Lines."""
    buf = io.StringIO()
    for row in rows:
        buf.write(json.dumps(row, ensure_ascii=False) + "\n")
    payload = buf.getvalue().encode("utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / OUTPUT_NAME
    with out.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(payload)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, help="directory with the upstream files")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory (default: src/closedloop/sample next to this script)",
    )
    args = parser.parse_args(argv)
    rows = build(args.source_dir)
    out = write(rows, args.out)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    intents: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        counts[(row["dataset"], row["split"])] += 1
        if row["intent"] != "oos":
            intents[row["dataset"]].add(row["intent"])
    for (dataset, split), n in sorted(counts.items()):
        print(f"{dataset:10s} {split:5s} {n:5d} rows")
    for dataset, names in sorted(intents.items()):
        print(f"{dataset:10s} {len(names)} intents")
    print(f"wrote {len(rows)} rows, {out.stat().st_size} bytes -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
