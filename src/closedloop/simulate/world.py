"""The simulated world: who asks what, on which day, and what the right answer is.

Ground truth lives here and only here. The world draws each day's requests from the shipped
CLINC150 + Banking77 sample (:mod:`closedloop.sample`) and drifts in three ways:

* **new intents**: a share of the intents is held out of the assistant's initial examples and
  knowledge base; each appears on its own day (spread over the run) and its traffic ramps up
  over a few days. CLINC150's out-of-scope queries grow from none to a final share.
* **phrasing**: each intent's texts are split into a *launch* pool (the phrasings the
  assistant's examples were collected from) and a *shifted* pool (the other train texts and
  the test split); the share of requests drawn from the shifted pool grows linearly. On top,
  users do not type dataset sentences verbatim: each request is a *variant* of its drawn text
  (:func:`perturb`: filler and politeness words, a dropped word, two words swapped, a typo,
  casing), with a number of edits drawn around a mean that grows over the run. Variants are
  keyed by ``(text, edits, variant)`` from a small set per edit count, so the same variant
  recurs (as real users repeat short queries) and six months hold tens of thousands of
  distinct texts, not hundreds of thousands; labelling one variant does not fix its siblings.
* **incidents**: a product change makes the knowledge-base answers of some intents wrong
  from its onset day until the entry is rewritten.

Everything is drawn from ``WorldParams.seed``, so two runs (or two arms) with the same
parameters see exactly the same requests.

Examples
--------
>>> world = World(WorldParams.quick())
>>> [r.day for r in world.requests(3)][:2]
[3, 3]
>>> world.requests(3) == World(WorldParams.quick()).requests(3)
True
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from closedloop.errors import ConfigError
from closedloop.sample import load_utterances

__all__ = ["OOS", "Incident", "KBEntry", "Request", "World", "WorldParams", "perturb"]

OOS = "oos"
"""The intent of CLINC150's out-of-scope queries; its right answer is a polite refusal."""

_PREFIXES = (
    "hey",
    "hi",
    "hello",
    "please",
    "um",
    "ok so",
    "quick question",
    "can you tell me",
    "i need to know",
    "help",
)
_SUFFIXES = ("please", "thanks", "thank you", "pls", "asap", "now", "?", "!!", "thx")


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:  # swap two letters
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:  # drop a letter
        return word[:i] + word[i + 1 :]
    if kind == 2:  # double a letter
        return word[: i + 1] + word[i] + word[i + 1 :]
    return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + word[i + 1 :]


def perturb(text: str, edits: int, rng: random.Random) -> str:
    """``text`` as a user might type it: ``edits`` random edits among a filler or politeness
    word before or after, a dropped word, two adjacent words swapped, a typo, and casing.

    >>> perturb("how do i cancel my card", 0, random.Random(0))
    'how do i cancel my card'
    >>> perturb("how do i cancel my card", 3, random.Random(0)) != "how do i cancel my card"
    True
    """
    words = text.split()
    for _ in range(edits):
        op = rng.randrange(6)
        long_words = [i for i, w in enumerate(words) if len(w) >= 4]
        if op == 0:
            words.insert(0, rng.choice(_PREFIXES) + rng.choice(("", ",")))
        elif op == 1:
            words.append(rng.choice(_SUFFIXES))
        elif op == 2 and len(words) > 3:
            del words[rng.randrange(1, len(words))]
        elif op == 3 and len(words) > 2:
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op in (2, 3, 4) and long_words:
            i = rng.choice(long_words)
            words[i] = _typo(words[i], rng)
        else:
            case = rng.randrange(3)
            joined = " ".join(words)
            joined = (
                joined.lower()
                if case == 0
                else joined.upper()
                if case == 1
                else joined[:1].upper() + joined[1:]
            )
            words = joined.split()
    return " ".join(words) or text


@dataclass(frozen=True)
class WorldParams:
    """Every parameter of the world, with its unit and a default (and why).

    Attributes
    ----------
    days
        Length of the run, in days (180: the six months of the published comparison).
    requests_per_day
        Requests a day when every user is still active, in requests (2000: "thousands of
        interactions a day" at a laptop's pace; the rate scales the noise, not the dynamics).
    users
        Distinct users, in users (5000: each makes ~0.4 requests a day, ~70 over the run,
        enough history for retention to mean something).
    seed
        Seed of every draw in the world (0).
    examples_per_intent
        Labelled examples per known intent in the assistant's initial prompt (10: a few-shot
        prompt, not a trained classifier).
    launch_pool_per_intent
        Texts per intent in the launch phrasing pool, which includes the examples (20 of the
        40 train texts: launch traffic resembles what the prompt was written from).
    held_out_share
        Share of the 55 intents kept out of the assistant at launch (0.1, 6 intents: a product
        gains about one new use a month; each ramps up to an ordinary intent's traffic).
    new_intents_from_day, new_intents_to_day
        Days over which held-out intents appear, evenly spaced (15 and 150: none in the
        first two weeks, all by the last month).
    new_intent_ramp_days
        Days for a new intent's traffic to reach a full intent's share (7: word spreads in
        about a week).
    oos_share_end
        Share of requests that are out of scope on the last day, rising linearly from 0
        (0.05: a narrow assistant gets a few off-topic requests; kept small so that it is not
        the main drift).
    shift_share_start, shift_share_end
        Share of requests drawn from the shifted phrasing pool on the first and last day,
        linear in between (0.2 and 0.6: users' wording drifts away from the launch wording).
    edits_mean_start, edits_mean_end
        Mean number of :func:`perturb` edits per request on the first and last day, linear in
        between; each request's count is Poisson-drawn and capped at ``max_edits`` (0.8 and
        1.6: at launch over 40 % of requests are verbatim dataset sentences; six months later
        users are terser, sloppier and chattier with the assistant, and only ~20 % are).
    max_edits
        Cap on the edits of one request (4: beyond that a sentence is a different one).
    variants_per_edits
        Distinct variants of a text per edit count (8: users repeat the same short queries;
        with 2,845 sample texts, about 90,000 variants are possible and the default run meets
        tens of thousands of them).
    incident_days
        Onset day of each injected incident (40, 95, 150: one per two months, the last one
        late enough that a slow fix shows in the final month).
    incident_intents
        Intents whose knowledge-base answers one incident makes wrong (2: a product change
        touches one feature, which users ask about in one or two ways).

    What the defaults add up to: by the last month about 10 % of the traffic is on intents
    the launch assistant does not know, 5 % is out of scope, 6 of the 49 launch intents have
    stale answers, and 60 % of requests come from the shifted pool with 1.6 edits on average.
    These are fixed from what the world stands for, not tuned to the published figures; the
    sensitivity to them is what :func:`closedloop.simulate.baselines.sweep` reports.
    """

    days: int = 180
    requests_per_day: int = 2000
    users: int = 5000
    seed: int = 0
    examples_per_intent: int = 10
    launch_pool_per_intent: int = 20
    held_out_share: float = 0.1
    new_intents_from_day: int = 15
    new_intents_to_day: int = 150
    new_intent_ramp_days: int = 7
    oos_share_end: float = 0.05
    shift_share_start: float = 0.2
    shift_share_end: float = 0.6
    edits_mean_start: float = 0.8
    edits_mean_end: float = 1.6
    max_edits: int = 4
    variants_per_edits: int = 8
    incident_days: tuple[int, ...] = (40, 95, 150)
    incident_intents: int = 2

    def __post_init__(self) -> None:
        """Reject parameters that cannot describe a world."""
        if self.days < 1 or self.requests_per_day < 1 or self.users < 1:
            raise ConfigError("days, requests_per_day and users must be at least 1")
        if not 1 <= self.examples_per_intent <= self.launch_pool_per_intent <= 40:
            raise ConfigError("need 1 <= examples_per_intent <= launch_pool_per_intent <= 40")
        for name in ("held_out_share", "oos_share_end", "shift_share_start", "shift_share_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1")
        if self.edits_mean_start < 0 or self.edits_mean_end < 0:
            raise ConfigError("edits_mean_start and edits_mean_end must be non-negative")
        if self.max_edits < 0 or self.variants_per_edits < 1:
            raise ConfigError("need max_edits >= 0 and variants_per_edits >= 1")
        if any(d < 1 for d in self.incident_days):
            raise ConfigError("incident_days must be at least 1 (day 0 is launch)")
        if self.new_intents_from_day > self.new_intents_to_day:
            raise ConfigError("need new_intents_from_day <= new_intents_to_day")
        if self.incident_intents < 1:
            raise ConfigError("incident_intents must be at least 1")

    def with_drift(self, factor: float) -> WorldParams:
        """These parameters with the drift scaled by ``factor`` (1.0: unchanged): the held-out
        share, the final out-of-scope share, and the growth of the shifted share and of the
        mean edits (their launch values stay). Incidents are events, not drift: unchanged."""
        if factor < 0:
            raise ConfigError("the drift factor must be non-negative")
        return replace(
            self,
            held_out_share=min(self.held_out_share * factor, 1.0),
            oos_share_end=min(self.oos_share_end * factor, 1.0),
            shift_share_end=min(
                max(
                    self.shift_share_start
                    + (self.shift_share_end - self.shift_share_start) * factor,
                    0.0,
                ),
                1.0,
            ),
            edits_mean_end=max(
                self.edits_mean_start + (self.edits_mean_end - self.edits_mean_start) * factor,
                0.0,
            ),
        )

    @classmethod
    def quick(cls, **overrides: object) -> WorldParams:
        """A small world for tests and ``--quick``: 60 days, 300 requests a day, 750 users
        (the same 0.4 requests per user a day), the same drift compressed into the run."""
        base = cls(
            days=60,
            requests_per_day=300,
            users=750,
            new_intents_from_day=5,
            new_intents_to_day=50,
            new_intent_ramp_days=3,
            incident_days=(15, 35),
        )
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Request:
    """One request: who asked, what they typed, what they meant (the ground truth), when."""

    day: int
    user: int
    text: str
    intent: str


@dataclass(frozen=True, slots=True)
class Incident:
    """A product change that makes the answers of ``intents`` wrong from ``onset`` (a day)."""

    name: str
    onset: int
    intents: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KBEntry:
    """A knowledge-base answer and the day it was written (it is right until an incident on
    one of its intents starts after that day)."""

    answer: str
    written_day: int


@dataclass
class World:
    """Deterministic requests and the ground truth for one :class:`WorldParams`."""

    params: WorldParams = field(default_factory=WorldParams)

    def __post_init__(self) -> None:
        p = self.params
        rng = random.Random(p.seed)
        by_intent: dict[str, list[tuple[str, str]]] = {}
        oos: list[str] = []
        for u in load_utterances():
            if u.intent == OOS:
                oos.append(u.text)
            else:
                by_intent.setdefault(f"{u.dataset}/{u.intent}", []).append((u.split, u.text))
        self.intents: tuple[str, ...] = tuple(sorted(by_intent))
        self._launch: dict[str, list[str]] = {}
        self._shifted: dict[str, list[str]] = {}
        self._examples: dict[str, list[str]] = {}
        for intent in self.intents:
            train = [t for s, t in by_intent[intent] if s == "train"]
            rng.shuffle(train)
            self._launch[intent] = train[: p.launch_pool_per_intent]
            self._examples[intent] = train[: p.examples_per_intent]
            rest = train[p.launch_pool_per_intent :]
            self._shifted[intent] = rest + [t for s, t in by_intent[intent] if s == "test"]
        self._oos = sorted(oos)
        self._variants: dict[tuple[str, int, int], str] = {}
        n_held = round(p.held_out_share * len(self.intents))
        held = rng.sample(self.intents, n_held)
        span = max(p.new_intents_to_day - p.new_intents_from_day, 0)
        self.held_out: dict[str, int] = {
            intent: p.new_intents_from_day + (span * i // max(n_held - 1, 1))
            for i, intent in enumerate(held)
        }
        known = [i for i in self.intents if i not in self.held_out]
        rng.shuffle(known)
        if len(p.incident_days) * p.incident_intents > len(known):
            raise ConfigError(
                f"{len(p.incident_days)} incidents of {p.incident_intents} intents each need "
                f"more than the {len(known)} launch intents; use fewer or smaller incidents"
            )
        self.incidents: tuple[Incident, ...] = tuple(
            Incident(
                name=f"incident-{n + 1}",
                onset=onset,
                intents=tuple(sorted(known[n * p.incident_intents : (n + 1) * p.incident_intents])),
            )
            for n, onset in enumerate(p.incident_days)
        )

    # -- the assistant at launch -------------------------------------------------------------

    def initial_examples(self) -> list[tuple[str, str]]:
        """The launch prompt: ``(text, intent)`` examples of every intent not held out."""
        return [
            (text, intent)
            for intent in self.intents
            if intent not in self.held_out
            for text in self._examples[intent]
        ]

    def initial_kb(self) -> dict[str, KBEntry]:
        """The launch knowledge base: a right answer (as of day 0) for every known intent and
        the out-of-scope refusal."""
        kb = {i: KBEntry(self.true_answer(i, 0), 0) for i in self.intents if i not in self.held_out}
        kb[OOS] = KBEntry(self.true_answer(OOS, 0), 0)
        return kb

    # -- ground truth -------------------------------------------------------------------------

    def answer_valid(self, intent: str, written_day: int, day: int) -> bool:
        """Whether a KB answer for ``intent`` written on ``written_day`` is right on ``day``."""
        return not any(
            intent in inc.intents and written_day < inc.onset <= day for inc in self.incidents
        )

    def true_answer(self, intent: str, day: int) -> str:
        """The right answer for ``intent`` on ``day`` (what a correction or a fix carries)."""
        if intent == OOS:
            return "Sorry, I can't help with that."
        version = max(
            (i.onset for i in self.incidents if intent in i.intents and i.onset <= day), default=0
        )
        return f"answer to {intent} (product as of day {version})"

    def is_correct(self, request: Request, predicted: str, kb: Mapping[str, KBEntry]) -> bool:
        """An answer is right iff the intent is the true one and its KB entry is still right."""
        entry = kb.get(predicted)
        return (
            predicted == request.intent
            and entry is not None
            and self.answer_valid(predicted, entry.written_day, request.day)
        )

    # -- traffic ------------------------------------------------------------------------------

    def _linear(self, start: float, end: float, day: int) -> float:
        return start + (end - start) * day / max(self.params.days - 1, 1)

    def intent_weights(self, day: int) -> dict[str, float]:
        """Relative traffic of each in-scope intent on ``day`` (0 before a new intent appears)."""
        ramp = max(self.params.new_intent_ramp_days, 1)
        weights: dict[str, float] = {}
        for intent in self.intents:
            onset = self.held_out.get(intent)
            w = 1.0 if onset is None else min(max((day - onset + 1) / ramp, 0.0), 1.0)
            if w > 0:
                weights[intent] = w
        return weights

    def variant(self, text: str, edits: int, variant: int) -> str:
        """Variant ``variant`` of ``text`` with ``edits`` edits (``text`` itself for 0 edits);
        the same arguments always give the same variant."""
        if edits == 0:
            return text
        key = (text, edits, variant)
        out = self._variants.get(key)
        if out is None:
            rng = random.Random(f"{self.params.seed}/{edits}/{variant}/{text}")
            out = self._variants[key] = perturb(text, edits, rng)
        return out

    def requests(self, day: int) -> list[Request]:
        """The requests of ``day`` if every user were active (arms drop departed users')."""
        if not 0 <= day < self.params.days:
            raise ConfigError(f"day must be in [0, {self.params.days})")
        p = self.params
        rng = np.random.default_rng([p.seed, day])
        weights = self.intent_weights(day)
        names = list(weights)
        probs = np.array([weights[n] for n in names])
        probs /= probs.sum()
        n = p.requests_per_day
        is_oos = rng.random(n) < self._linear(0.0, p.oos_share_end, day)
        shifted = rng.random(n) < self._linear(p.shift_share_start, p.shift_share_end, day)
        picks = rng.choice(len(names), size=n, p=probs)
        users = rng.integers(0, p.users, size=n)
        slots = rng.random(n)
        mean_edits = self._linear(p.edits_mean_start, p.edits_mean_end, day)
        edits = np.minimum(rng.poisson(mean_edits, size=n), p.max_edits)
        variants = rng.integers(0, p.variants_per_edits, size=n)
        out: list[Request] = []
        for j in range(n):
            if is_oos[j]:
                intent, pool = OOS, self._oos
            else:
                intent = names[int(picks[j])]
                pool = self._shifted[intent] if shifted[j] else self._launch[intent]
            text = self.variant(pool[int(slots[j] * len(pool))], int(edits[j]), int(variants[j]))
            out.append(Request(day=day, user=int(users[j]), text=text, intent=intent))
        return out
