"""A small, attributed slice of two public intent-classification datasets.

The slice ships with the package (``utterances.jsonl.gz`` next to this
module) and is read with :func:`importlib.resources.files`, so it works from
a wheel, a zip or a source checkout. It is used by ``closedloop demo`` and is
intended as input for simulators.

Contents (built by ``scripts/build_sample_data.py``, seed ``20240501``):

* **CLINC150** (``dataset="clinc150"``): 30 intents, 3 from each of the 10
  domains, 40 ``train`` and 10 ``test`` utterances per intent, plus 100
  out-of-scope queries (``intent="oos"``, ``split="oos"``, ``domain=None``).
* **Banking77** (``dataset="banking77"``): 25 categories, up to 40 ``train``
  and 10 ``test`` utterances per category, ``domain=None``.

Texts are verbatim copies of the upstream data. See :data:`ATTRIBUTION` and
``LICENSE.md`` in this package for the licences (CC BY 3.0 and CC BY 4.0).

Examples
--------
>>> from closedloop.sample import intents, load_utterances
>>> len(intents("clinc150")), len(intents("banking77"))
(30, 25)
>>> oos = load_utterances(dataset="clinc150", split="oos")
>>> len(oos), {u.intent for u in oos}
(100, {'oos'})
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

__all__ = [
    "ATTRIBUTION",
    "DATASETS",
    "SPLITS",
    "Utterance",
    "intents",
    "load_utterances",
]

DATASETS: tuple[str, ...] = ("banking77", "clinc150")
"""Allowed values of :attr:`Utterance.dataset`."""

SPLITS: tuple[str, ...] = ("oos", "test", "train")
"""Allowed values of :attr:`Utterance.split`."""

_DATA_FILE = "utterances.jsonl.gz"
_OOS = "oos"

ATTRIBUTION: str = (
    "This package includes a small unmodified slice of two public datasets.\n"
    "CLINC150 (oos-eval): Stefan Larson, Anish Mahendran, Joseph J. Peper, "
    "Christopher Clarke, Andrew Lee, Parker Hill, Jonathan K. Kummerfeld, "
    "Kevin Leach, Michael A. Laurenzano, Lingjia Tang, Jason Mars. "
    '"An Evaluation Dataset for Intent Classification and Out-of-Scope '
    'Prediction". EMNLP-IJCNLP 2019. Source: clinc/oos-eval @ 828f8093, '
    "data/data_full.json and data/domains.json. Licence: CC BY 3.0 "
    "(https://creativecommons.org/licenses/by/3.0/).\n"
    "Banking77: Inigo Casanueva, Tadas Temcinas, Daniela Gerz, "
    "Matthew Henderson, Ivan Vulic. "
    '"Efficient Intent Detection with Dual Sentence Encoders". '
    "NLP4ConvAI workshop, ACL 2020. Source: PolyAI-LDN/task-specific-datasets "
    "@ 57ec275d, banking_data/train.csv and banking_data/test.csv. "
    "Licence: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).\n"
    "Slice built by scripts/build_sample_data.py (seed 20240501); texts are "
    "not modified. See closedloop/sample/LICENSE.md."
)
"""Attribution and licence notice for the shipped data.

Show this text wherever results computed from the sample data are published.
"""


@dataclass(frozen=True)
class Utterance:
    """One labelled user utterance from the shipped sample.

    Parameters
    ----------
    text : str
        The utterance, verbatim from the source dataset.
    intent : str
        The intent label (``"oos"`` for CLINC150 out-of-scope queries).
    dataset : str
        ``"clinc150"`` or ``"banking77"``.
    domain : str or None
        The CLINC150 domain (e.g. ``"banking"``); ``None`` for Banking77 rows
        and for out-of-scope rows.
    split : str
        ``"train"``, ``"test"`` or ``"oos"``.
    """

    text: str
    intent: str
    dataset: str
    domain: str | None
    split: str


@lru_cache(maxsize=1)
def _load_all() -> tuple[Utterance, ...]:
    """Read and parse the packaged data file once per process."""
    raw = files(__name__).joinpath(_DATA_FILE).read_bytes()
    text = gzip.decompress(raw).decode("utf-8")
    rows: list[Utterance] = []
    for line in text.splitlines():
        if not line:
            continue
        obj = json.loads(line)
        rows.append(
            Utterance(
                text=str(obj["text"]),
                intent=str(obj["intent"]),
                dataset=str(obj["dataset"]),
                domain=None if obj["domain"] is None else str(obj["domain"]),
                split=str(obj["split"]),
            )
        )
    return tuple(rows)


def _check(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(
            f"invalid {name}={value!r}; allowed values: "
            f"{', '.join(repr(a) for a in allowed)} or None"
        )


def load_utterances(dataset: str | None = None, split: str | None = None) -> list[Utterance]:
    """Return the shipped utterances, optionally filtered.

    Parameters
    ----------
    dataset : str or None, optional
        Keep only rows of this dataset (``"clinc150"`` or ``"banking77"``);
        ``None`` (default) keeps both.
    split : str or None, optional
        Keep only rows of this split (``"train"``, ``"test"`` or ``"oos"``);
        ``None`` (default) keeps all.

    Returns
    -------
    list of Utterance
        A new list (safe to mutate) in the file's deterministic order. The
        file is read once per process and cached.

    Raises
    ------
    ValueError
        If ``dataset`` or ``split`` is not one of the allowed values; the
        message names the argument and the allowed values.

    Examples
    --------
    >>> rows = load_utterances(dataset="banking77", split="test")
    >>> len(rows)
    250
    >>> {(u.dataset, u.split) for u in rows}
    {('banking77', 'test')}
    >>> load_utterances(split="dev")
    Traceback (most recent call last):
    ...
    ValueError: invalid split='dev'; allowed values: 'oos', 'test', 'train' or None
    """
    _check("dataset", dataset, DATASETS)
    _check("split", split, SPLITS)
    return [
        u
        for u in _load_all()
        if (dataset is None or u.dataset == dataset) and (split is None or u.split == split)
    ]


def intents(dataset: str | None = None) -> list[str]:
    """Return the sorted unique intent labels, excluding ``"oos"``.

    Parameters
    ----------
    dataset : str or None, optional
        Restrict to ``"clinc150"`` or ``"banking77"``; ``None`` (default)
        returns the union of both (a label that occurs in both datasets, such
        as ``"exchange_rate"``, is listed once).

    Returns
    -------
    list of str
        Sorted intent labels.

    Raises
    ------
    ValueError
        If ``dataset`` is not one of the allowed values.

    Examples
    --------
    >>> intents("clinc150")[:3]
    ['alarm', 'application_status', 'apr']
    >>> "oos" in intents()
    False
    """
    _check("dataset", dataset, DATASETS)
    return sorted(
        {
            u.intent
            for u in _load_all()
            if u.intent != _OOS and (dataset is None or u.dataset == dataset)
        }
    )
