"""Evaluate closedloop's PII redactor (and Presidio's analyzer, if installed) on labelled text.

Usage (from the repository root)::

    .venv/bin/python bench/pii_eval.py [DATA] [--seed 20261125] [--half tune] [--no-presidio]

DATA defaults to ``pii_presidio_synth_v2.jsonl`` in the folder ``CLOSEDLOOP_BENCH_DATA`` names
(the public datasets with their provenance, see docs/benchmarks.md). Templates are split in
two halves (seeded, no template in both): the tuning half was
used to develop the heuristics; the table reports the other half.

Matching is span-level with overlap: a gold span is found when a predicted span of the same
entity type overlaps it; a predicted span is correct when it overlaps a gold span of its type.
Predicted spans that overlap only gold spans of labels we do not target (e.g. ZIP_CODE) or of a
sibling type (a city we call location inside a gold address block) are not counted as false
positives; recall stays strict by type.

Throughput is the best of 5 passes over the half's events for closedloop and of 3 for Presidio
(each after a first pass), in the same process. It then prints the cost per event (no PII, a
typical sentence) and person-name precision and recall on a small hand-labelled set of real
sentences (``bench/data/oasst_person_names.jsonl``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from closedloop.enrich.pii import PiiRedactor
from closedloop.events import Interaction, InteractionEvent

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = (
    Path(os.environ.get("CLOSEDLOOP_BENCH_DATA", "bench-data-not-set"))
    / "pii_presidio_synth_v2.jsonl"
)
# 78 sentences of OpenAssistant conversations (Apache-2.0) with person names labelled by hand:
# real text, not the synthetic templates (see bench/data/PROVENANCE.md).
REAL_NAMES = ROOT / "bench" / "data" / "oasst_person_names.jsonl"

# Dataset label -> our entity type. Labels mapped to None are not targeted:
LABELS: dict[str, str | None] = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card",
    "IBAN_CODE": "iban",
    "IP_ADDRESS": "ip",
    "US_SSN": "ssn",
    "PERSON": "person",
    "STREET_ADDRESS": "address",
    "GPE": "location",
    "DATE_TIME": None,  # any date or time, not a date of birth: our "dob" needs a birth cue
    "ORGANIZATION": None,  # a company is not personal data on its own
    "TITLE": None,  # Mr / Dr / job titles: not identifying
    "AGE": None,  # quasi-identifier; out of scope of the issue
    "NRP": None,  # nationality / religion / politics: sensitive, but not in the list
    "ZIP_CODE": None,  # a postcode alone is coarse; caught inside addresses
    "DOMAIN_NAME": None,  # a company URL is not PII (credentials inside URLs are)
    "US_DRIVER_LICENSE": None,  # no checksum, formats overlap any digit run
}
# The data labels a whole postal block as one STREET_ADDRESS in some templates and splits it
# into STREET_ADDRESS / GPE / ZIP_CODE in others; a city we call "location" inside a gold
# address (or an address fragment inside a gold GPE) is redacted all the same: not counted
# against precision. Recall stays strict by type.
NEAR: dict[str, tuple[str, ...]] = {"location": ("address",), "address": ("location",)}
STRUCTURED = ("email", "phone", "card", "iban", "ip", "ssn")
FUZZY = ("person", "address", "location")
TARGETS = {"structured": (0.99, 0.95), "fuzzy": (0.85, 0.80)}
PRESIDIO_LABELS = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card",
    "IBAN_CODE": "iban",
    "IP_ADDRESS": "ip",
    "US_SSN": "ssn",
    "PERSON": "person",
    "LOCATION": "location",
}

Pred = list[tuple[int, int, str]]


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def split(rows: list[dict[str, Any]], seed: int) -> tuple[list[Any], list[Any]]:
    templates = sorted({r["template_id"] for r in rows})
    random.Random(seed).shuffle(templates)
    tune = set(templates[: len(templates) // 2])
    return [r for r in rows if r["template_id"] in tune], [
        r for r in rows if r["template_id"] not in tune
    ]


def score(rows: list[dict[str, Any]], preds: list[Pred]) -> dict[str, tuple[float, float, int]]:
    tp_gold: dict[str, int] = defaultdict(int)
    n_gold: dict[str, int] = defaultdict(int)
    tp_pred: dict[str, int] = defaultdict(int)
    n_pred: dict[str, int] = defaultdict(int)
    for row, pred in zip(rows, preds, strict=True):
        gold = [(s["start"], s["end"], LABELS.get(s["label"])) for s in row["spans"]]
        for gs, ge, gt in gold:
            if gt is None:
                continue
            n_gold[gt] += 1
            if any(ps < ge and gs < pe and pt == gt for ps, pe, pt in pred):
                tp_gold[gt] += 1
        for ps, pe, pt in pred:
            hit = [gt for gs, ge, gt in gold if ps < ge and gs < pe]
            if pt in hit:
                tp_pred[pt] += 1
                n_pred[pt] += 1
            elif hit and all(gt is None or gt in NEAR.get(pt, ()) for gt in hit):
                continue  # overlaps only an untargeted or a sibling label: neither right nor wrong
            else:
                n_pred[pt] += 1
    out = {}
    for ent in (*STRUCTURED, *FUZZY):
        recall = tp_gold[ent] / n_gold[ent] if n_gold[ent] else float("nan")
        precision = tp_pred[ent] / n_pred[ent] if n_pred[ent] else float("nan")
        out[ent] = (precision, recall, n_gold[ent])
    return out


def f2(p: float, r: float) -> float:
    return 5 * p * r / (4 * p + r) if p + r > 0 else 0.0


def presidio_analyzer() -> tuple[Callable[[str], Pred], str] | None:
    """Presidio with every predefined recognizer, on a blank spaCy pipeline (no NER model)."""
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
    except ImportError:
        return None
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # no network: bundled list
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "en_core_web_lg"}])
    engine.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]  # no model download
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    analyzer = AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"])
    entities = list(PRESIDIO_LABELS)

    def run(text: str) -> Pred:
        results = analyzer.analyze(text, language="en", entities=entities)
        return [(r.start, r.end, PRESIDIO_LABELS[r.entity_type]) for r in results]

    return run, "presidio-analyzer (pattern recognizers, blank spaCy, no NER)"


def events_of(rows: Iterable[dict[str, Any]]) -> list[InteractionEvent]:
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return [
        InteractionEvent(id=f"e{i}", timestamp=ts, body=Interaction(input=r["text"], tags=[]))
        for i, r in enumerate(rows)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--half", choices=["tune", "report"], default="report")
    ap.add_argument("--no-presidio", action="store_true")
    args = ap.parse_args(argv)
    rows = load(args.data)
    tune, report = split(rows, args.seed)
    rows = report if args.half == "report" else tune
    print(
        f"{args.data.name}: {len(tune)} tuning / {len(report)} report sentences; "
        f"scoring the {args.half} half ({len(rows)})"
    )

    redactor = PiiRedactor()
    redactor.find("warm up John Smith in Paris")  # loads the lexicons
    ours = [[(s.start, s.end, s.entity) for s in redactor.find(r["text"])] for r in rows]
    events = events_of(rows)
    ours_rate = best_rate(redactor, events, repeat=5)
    systems = [("closedloop", score(rows, ours), ours_rate)]

    presidio = None if args.no_presidio else presidio_analyzer()
    if presidio is not None:
        run, _name = presidio
        run("warm up")
        theirs = [run(r["text"]) for r in rows]  # also the warm-up pass of the timing below
        rate = best_rate(run, [r["text"] for r in rows], repeat=3)
        systems.append(("presidio", score(rows, theirs), rate))

    header = f"{'entity':<10}{'n':>5}" + "".join(
        f" | {name:>10} P     R    F2" for name, _, _ in systems
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for ent in (*STRUCTURED, *FUZZY):
        n = systems[0][1][ent][2]
        line = f"{ent:<10}{n:>5}"
        for _, table, _ in systems:
            p, r, _n = table[ent]
            line += f" | {'':>10}{p:5.3f} {r:5.3f} {f2(p, r):5.3f}"
        print(line)
        p, r, n = systems[0][1][ent]
        want_r, want_p = TARGETS["structured" if ent in STRUCTURED else "fuzzy"]
        ok = (
            "NO DATA in this half" if n == 0 else "MET" if r >= want_r and p >= want_p else "MISSED"
        )
        verdicts.append(f"{ent}: R>={want_r} P>={want_p} {ok}")
    print("-" * len(header))
    for name, _, rate in systems:
        print(f"{name:<11} {rate:10.0f} events/s")
    if presidio is None:
        print("presidio: not installed (pip install presidio-analyzer) or --no-presidio")
    else:
        ratio = systems[0][2] / systems[1][2]
        verdicts.append(
            f"throughput >= 10x presidio: {ratio:.1f}x {'MET' if ratio >= 10 else 'MISSED'}"
        )
    print("\n".join(verdicts))
    print_costs(redactor)
    print_real_names(redactor)
    return 0


def best_rate(fn: Callable[[Any], object], items: list[Any], repeat: int) -> float:
    """Items per second over the fastest of ``repeat`` passes: the least disturbed by
    whatever else runs on the machine (both systems are measured the same way)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def per_call_us(fn: Callable[[], object], n: int = 3000) -> float:
    """Best of five runs of ``n`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def print_costs(redactor: PiiRedactor) -> None:
    texts = {
        "no PII": "How do I check my balance on my credit card? The app says no and I am not "
        "sure why this keeps happening every time I try.",
        "typical": "Hi, my name is Jennifer Walsh and I moved here from Toronto. Call me at "
        "(415) 555-0132 or mail jen.walsh@example.org.",
    }
    for name, text in texts.items():
        event = events_of([{"text": text}])[0]
        us = per_call_us(lambda event=event: redactor(event))
        print(f"per event, {name:<8} ({len(text)} chars): {us:6.1f} µs")


def print_real_names(redactor: PiiRedactor) -> None:
    rows = load(REAL_NAMES)
    tp_gold = n_gold = tp_pred = n_pred = 0
    for row in rows:
        gold = [(p["start"], p["end"]) for p in row["persons"]]
        pred = [(s.start, s.end) for s in redactor.find(row["text"]) if s.entity == "person"]
        n_gold += len(gold)
        tp_gold += sum(any(ps < ge and gs < pe for ps, pe in pred) for gs, ge in gold)
        n_pred += len(pred)
        tp_pred += sum(any(ps < ge and gs < pe for gs, ge in gold) for ps, pe in pred)
    p, r = tp_pred / max(n_pred, 1), tp_gold / max(n_gold, 1)
    print(
        f"real text ({REAL_NAMES.name}: {len(rows)} sentences, {n_gold} names, "
        f"{sum(not row['persons'] for row in rows)} sentences without one): "
        f"person P {p:.3f} R {r:.3f} F2 {f2(p, r):.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
