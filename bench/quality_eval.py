"""Validate the edit-derived quality and the implicit quality estimate on real human data.

Usage::

    python bench/quality_eval.py [--ende PATH] [--roen PATH] [--oasst PATH] [--trees PATH]
                                 [--bootstrap N]

(a) MLQE-PE (CC0 1.0): real machine-translation outputs, the human post-edit of each, human
    direct-assessment scores (DA, 0-100, mean of 3+ raters) and HTER. A post-edit is the text a
    user kept after editing the AI output, so the similarity of ``mt_output_tok`` to
    ``post_edit_tok`` is exactly closedloop's ``edit`` measure. Reported: Pearson and Spearman
    correlation of each variant with the DA mean, next to 1 - HTER on the same rows, and a
    paired bootstrap of the Pearson difference between the default variant and 1 - HTER.
(b) Open-Assistant en_100 (Apache-2.0): assistant replies with human sibling ranks and thumbs.
    Explicit feedback (ranks, thumbs, red flags) is held out as the target. The only
    implicit-style signals available are the prompter's follow-up messages in the tree, from
    which ``rephrase`` (follow-up repeats the prompt) and a tree-level "no follow-up" are
    derived; they are not real user behaviour (see the printed caveats and
    docs/benchmarks.md).

Paths default to the folder in ``CLOSEDLOOP_BENCH_DATA`` (the public datasets with their
provenance, see docs/benchmarks.md). Correlations use scipy
when it is installed, else the same formulas in plain Python (Spearman with average ranks).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import shlex
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CLOSEDLOOP_BENCH_DATA", "bench-data-not-set"))
sys.path.insert(0, str(ROOT / "src"))

from closedloop.enrich.measures import (  # noqa: E402
    Measure,
    edit_similarity,
    is_rephrase,
)
from closedloop.enrich.quality import QualityEstimator  # noqa: E402

_stats: Any
try:  # scipy is not a closedloop dependency
    _stats = importlib.import_module("scipy.stats")
except ImportError:  # pragma: no cover - depends on the environment
    _stats = None


# --- statistics ---------------------------------------------------------------------------


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    if _stats is not None:
        return float(_stats.pearsonr(x, y)[0])
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def _ranks(x: Sequence[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    if _stats is not None:
        return float(_stats.spearmanr(x, y)[0])
    return pearson(_ranks(x), _ranks(y))


def _pearson_plain(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0


def bootstrap_difference(
    a: Sequence[float], b: Sequence[float], y: Sequence[float], n: int, seed: int = 0
) -> tuple[float, float, float]:
    """Paired bootstrap of pearson(a, y) - pearson(b, y): (2.5 %, 97.5 %, share of a > b)."""
    rng = random.Random(seed)
    rows = len(y)
    diffs = []
    for _ in range(n):
        idx = [rng.randrange(rows) for _ in range(rows)]
        ys = [y[i] for i in idx]
        da = _pearson_plain([a[i] for i in idx], ys)
        db = _pearson_plain([b[i] for i in idx], ys)
        diffs.append(da - db)
    diffs.sort()
    return diffs[int(0.025 * n)], diffs[int(0.975 * n) - 1], sum(d > 0 for d in diffs) / n


# --- (a) MLQE-PE ----------------------------------------------------------------------------

VARIANTS: dict[str, Callable[[str, str], float]] = {
    "char Indel ratio (default)": lambda o, k: edit_similarity(o, k),
    "char Levenshtein": lambda o, k: edit_similarity(o, k, method="levenshtein"),
    "token Indel ratio": lambda o, k: edit_similarity(o, k, level="token"),
    "token Levenshtein": lambda o, k: edit_similarity(o, k, level="token", method="levenshtein"),
}
DEFAULT_VARIANT = "char Indel ratio (default)"
HTER = "1 - HTER (reference)"


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mlqe(path: Path, bootstrap: int) -> dict[str, Any]:
    rows = load(path)
    da = [float(r["da_mean"]) for r in rows]
    da_z = [float(r["da_z_mean"]) for r in rows]
    result: dict[str, Any] = {"rows": len(rows), "variants": {}}
    scores: dict[str, list[float]] = {}
    for name, fn in VARIANTS.items():
        scores[name] = [fn(r["mt_output_tok"], r["post_edit_tok"]) for r in rows]
    scores[HTER] = [1.0 - float(r["hter"]) for r in rows]
    estimator = QualityEstimator()
    scores["quality estimate (edit only)"] = [
        estimator(measures=[Measure(name="edit_similarity", value=s, source="derived")]).value
        for s in scores[DEFAULT_VARIANT]
    ]
    for name, s in scores.items():
        result["variants"][name] = {
            "pearson": pearson(s, da),
            "spearman": spearman(s, da),
            "pearson_z": pearson(s, da_z),
        }
    result["unedited_share"] = sum(r["mt_output_tok"] == r["post_edit_tok"] for r in rows) / len(
        rows
    )
    result["bootstrap"] = {}
    for name in VARIANTS if bootstrap else ():
        lo, hi, share = bootstrap_difference(scores[name], scores[HTER], da, bootstrap)
        result["bootstrap"][name] = {"n": bootstrap, "low": lo, "high": hi, "share_better": share}
    return result


def redaction_effect(path: Path) -> dict[str, Any]:
    """The default edit measure on raw text and on consistently redacted text (the stored
    form: both the output and the kept text pass the same redactor, so the same entity
    becomes the same token on both sides), in mask and in keyed-hash mode."""
    from closedloop.enrich.pii import PiiParams, PiiRedactor

    rows = load(path)
    da = [float(r["da_mean"]) for r in rows]
    fn = VARIANTS[DEFAULT_VARIANT]
    raw = [fn(r["mt_output_tok"], r["post_edit_tok"]) for r in rows]
    out: dict[str, Any] = {"raw_pearson": pearson(raw, da)}
    for mode in ("mask", "hash"):
        redactor = PiiRedactor(PiiParams(default_mode=mode, secret="bench"))
        pairs = [
            (redactor.redact_text(r["mt_output_tok"]), redactor.redact_text(r["post_edit_tok"]))
            for r in rows
        ]
        touched = sum(
            a != r["mt_output_tok"] or b != r["post_edit_tok"]
            for (a, b), r in zip(pairs, rows, strict=True)
        )
        red = [fn(a, b) for a, b in pairs]
        diffs = [abs(x - y) for x, y in zip(raw, red, strict=True)]
        out[mode] = {
            "rows_redacted": touched,
            "mean_abs_diff": sum(diffs) / len(diffs),
            "max_abs_diff": max(diffs),
            "pearson": pearson(red, da),
            "agreement": pearson(raw, red),
        }
    return out


# --- (b) Open-Assistant -----------------------------------------------------------------------


def _walk(message: dict[str, Any], out: dict[str, dict[str, Any]]) -> None:
    out[message["message_id"]] = message
    for reply in message.get("replies", []):
        _walk(reply, out)


def oasst(feedback_path: Path, trees_path: Path) -> dict[str, Any]:
    rows = load(feedback_path)
    messages: dict[str, dict[str, Any]] = {}
    for tree in load(trees_path):
        _walk(tree["prompt"], messages)
    estimator = QualityEstimator()
    implicit: list[float] = []
    length: list[float] = []
    with_followup = rephrased = 0
    for r in rows:
        node = messages.get(r["message_id"], {})
        followups = [m["text"] for m in node.get("replies", []) if m.get("role") == "prompter"]
        measures = []
        if followups:
            with_followup += 1
            if any(is_rephrase(r["prompt"], text) for text in followups):
                rephrased += 1
                measures.append(Measure(name="rephrase", value=1.0, source="derived"))
        else:
            measures.append(Measure(name="abandon", value=1.0, source="derived"))
        implicit.append(estimator(measures=measures).value)
        length.append(float(len(r["response"])))
    net = [float(r["thumbs_up"] - r["thumbs_down"]) for r in rows]

    def pairwise(score: Sequence[float]) -> tuple[float, float, int]:
        """Agreement with sibling ranks: (accuracy with ties as 0.5, share tied, pairs)."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            if r["rank"] is not None:
                groups[r["parent_id"]].append(i)
        agree = ties = pairs = 0.0
        for idx in groups.values():
            for i in idx:
                for j in idx:
                    if rows[i]["rank"] < rows[j]["rank"]:  # i ranked better by people
                        pairs += 1
                        if score[i] > score[j]:
                            agree += 1
                        elif score[i] == score[j]:
                            ties += 1
        return (agree + 0.5 * ties) / pairs, ties / pairs, int(pairs)

    result: dict[str, Any] = {
        "rows": len(rows),
        "with_followup": with_followup,
        "rephrased": rephrased,
        "estimates": {},
    }
    for name, score in (
        ("implicit-style estimate (follow-up / rephrase)", implicit),
        ("response length (NOT a user signal)", length),
        ("net thumbs (explicit, held out; for scale)", net),
    ):
        acc, tied, pairs = pairwise(score)
        result["estimates"][name] = {
            "rank_pair_accuracy": acc,
            "tied_pairs": tied,
            "pairs": pairs,
            "spearman_net_thumbs": spearman(score, net),
        }
    return result


# --- main -----------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--ende", type=Path, default=DATA / "mlqe_pe_ende_test.jsonl")
    parser.add_argument("--roen", type=Path, default=DATA / "mlqe_pe_roen_test.jsonl")
    parser.add_argument("--oasst", type=Path, default=DATA / "oasst_en100_assistant_feedback.jsonl")
    parser.add_argument("--trees", type=Path, default=DATA / "oasst_en_100_trees.jsonl")
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="paired bootstrap resamples (0: none)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    print("$ python bench/quality_eval.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])))
    print(f"correlations by {'scipy ' + _stats_version() if _stats else 'plain Python'}\n")
    out: dict[str, Any] = {"mlqe": {}, "oasst": None}
    for pair, path in (("en-de", args.ende), ("ro-en", args.roen)):
        out["mlqe"][pair] = mlqe(path, args.bootstrap)
    names = list(out["mlqe"]["en-de"]["variants"])
    print("(a) MLQE-PE: edit-derived quality against the human DA mean (n=1000 per pair)")
    print(f"{'variant':<34} {'en-de r':>8} {'en-de rho':>9} {'ro-en r':>8} {'ro-en rho':>9}")
    for name in names:
        ende, roen = out["mlqe"]["en-de"]["variants"][name], out["mlqe"]["ro-en"]["variants"][name]
        print(
            f"{name:<34} {ende['pearson']:>8.3f} {ende['spearman']:>9.3f} "
            f"{roen['pearson']:>8.3f} {roen['spearman']:>9.3f}"
        )
    for pair in ("en-de", "ro-en"):
        res = out["mlqe"][pair]
        print(f"{pair}: unedited outputs {res['unedited_share']:.1%}")
        for name, b in res["bootstrap"].items():
            print(
                f"  {name:<32} r - r(1-HTER): 95% CI [{b['low']:+.3f}, {b['high']:+.3f}], "
                f"higher in {b['share_better']:.0%} of {b['n']} paired resamples"
            )
    print("\n(c) the same edit measure on consistently redacted text (what the store holds)")
    print(
        f"{'pair':<6} {'mode':<5} {'rows redacted':>13} {'mean |diff|':>11} {'max |diff|':>10} "
        f"{'r(raw, redacted)':>16} {'r with DA: raw -> redacted':>27}"
    )
    out["redaction"] = {}
    for pair, path in (("en-de", args.ende), ("ro-en", args.roen)):
        eff = out["redaction"][pair] = redaction_effect(path)
        for mode in ("mask", "hash"):
            m = eff[mode]
            print(
                f"{pair:<6} {mode:<5} {m['rows_redacted']:>13} {m['mean_abs_diff']:>11.4f} "
                f"{m['max_abs_diff']:>10.3f} {m['agreement']:>16.4f} "
                f"{eff['raw_pearson']:>19.3f} -> {m['pearson']:.3f}"
            )
    res = oasst(args.oasst, args.trees)
    out["oasst"] = res
    print(
        f"\n(b) Open-Assistant en_100: {res['rows']} assistant replies; "
        f"{res['with_followup']} have a prompter follow-up in the tree, "
        f"{res['rephrased']} of them rephrase the prompt"
    )
    print(f"{'estimate':<48} {'rank-pair acc':>13} {'tied':>6} {'rho net thumbs':>15}")
    for name, e in res["estimates"].items():
        print(
            f"{name:<48} {e['rank_pair_accuracy']:>13.3f} {e['tied_pairs']:>6.1%} "
            f"{e['spearman_net_thumbs']:>15.3f}"
        )
    pairs = next(iter(res["estimates"].values()))["pairs"]
    print(f"rank pairs: {pairs} sibling pairs with different human ranks; chance = 0.500")
    return out


def _stats_version() -> str:
    return str(importlib.import_module("scipy").__version__)


if __name__ == "__main__":
    main()
