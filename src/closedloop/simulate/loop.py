"""The CLOSED-LOOP arm: the assistant run through the real closedloop pipeline, embedded.

One process, one store (SQLite in a temporary folder by default, or any ``database_url``),
no server, no worker thread: the arm drives each stage's job itself, once per simulated day.

What the arm sees is what a real deployment sees, and only that: the interactions it served
and the users' feedback and signals. Each day

1. the app answers every request: it first recalls the request text from the project's
   knowledge base (:func:`closedloop.act.knowledge.recall_many`); a confident hit is served
   (as its intent's current answer when the hit's answer names one), otherwise the
   nearest-neighbour assistant answers, with the prompt version the registry serves the
   user (production, or the candidate of a running A/B test: :mod:`.prompting`);
2. every interaction (input, output, model, prompt version, user; the app is single-turn,
   so no session) and every reaction (thumbs, correction, edit / rephrase / abandon signal)
   goes through ``runtime.ingestor.ingest`` (the one ingest path, the SDK's embedded mode's
   too), stamped on a virtual clock: simulated day ``d`` is ``base + d days``;
3. enrichment, embeddings, analysis (topics, issues, quality and input drift; run at the
   virtual end of the day), the rule engine and the A/B evaluator run; the loop's rules
   fire real actions: ``kb_refresh`` on each edit and each corrected thumbs-down (recalled
   from the next day on), ``prompt_candidate`` on corrections (tested on half of the users),
   and ``review`` tasks on each drift alarm;
4. the app applies the new knowledge-base entries to its assistant (see :func:`_learn`).

Ground truth (:meth:`World.true_answer`, the request's intent) is read only to judge the
served answers and to date incidents, in :func:`run_closed_loop`'s measuring code: the served
answer is right iff it equals the world's right answer for the request's intent that day (for
the assistant's own launch answers this is exactly :meth:`World.is_correct`). An incident is
*detected* on the first day that a firing acted on an interaction the incident made wrong
(one of its intents, from its onset, served the outdated answer), and *fixed* on the first day
from its onset on which, of at least ``fix_min`` requests of its intents answered as those
intents (with the outdated or the right answer), at most ``1 - fix_share`` still got the
outdated one (a request the assistant misrecognises was wrong before the incident too: it is
not the incident's). Fixes found at the end of a day are live the next day, so the earliest
fix is the day after the onset, as for the baselines.

Event rules read feedback in arrival order (real time), so the rule engine runs on the real
clock; enrichment joins on arrival too. Analysis windows are over event time: it runs at the
virtual end of each day.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from closedloop.act.knowledge import recall_many
from closedloop.act.rules import parse_rules, put_rule
from closedloop.embed.cache import EmbeddingCache
from closedloop.errors import ConfigError
from closedloop.events import LIMITS
from closedloop.runtime import Runtime
from closedloop.sdk.envelope import make_event, new_id
from closedloop.settings import Settings
from closedloop.simulate.assistant import Assistant, TextVectors
from closedloop.simulate.baselines import ArmResult, DayRecord, IncidentRecord, SweepArm
from closedloop.simulate.prompting import CANDIDATE_RULES, PROMPT, PromptChannel
from closedloop.simulate.users import Reaction, Retention, UserParams, react
from closedloop.simulate.world import KBEntry, World
from closedloop.store import models
from closedloop.types import ProjectKey

__all__ = ["LOOP_RULES", "LoopParams", "LoopStats", "loop_arm", "run_closed_loop"]

LOOP_RULES = """
rules:
  - name: corrections-to-kb
    when:
      event: {thumbs: down, correction: true}
    backfill: true
    actions:
      - kb_refresh: {}
  - name: edits-to-kb
    when:
      event: {signal: edit}
    backfill: true
    actions:
      - kb_refresh: {from_edits: true}
  - name: drift-review
    when:
      drift: any
    cooldown: 0
    actions:
      - review: {priority: 3}
"""
"""The loop's rules: every corrected thumbs-down and every edit of an answer refreshes the
knowledge base (``backfill``: from the first day's on); every drift alarm (quality, input,
topic mix, emerging topics) queues review tasks."""


@dataclass(frozen=True)
class LoopParams:
    """How the app uses closedloop.

    Attributes
    ----------
    min_score
        Cosine similarity a recalled entry needs for its answer to be served instead of the
        assistant's (0.8: near-duplicates of a corrected request, not loose paraphrases).
    recall_k
        Entries recalled per request (3).
    fix_share, fix_min
        An incident counts as fixed on a day when at most ``1 - fix_share`` of its intents'
        requests answered as those intents (at least ``fix_min`` of them) were served the
        answer it made wrong (0.95 and 5: one quiet day is no evidence).
    broken_rate, broken_min, broken_jump, usual_days
        An intent's answer counts as broken tonight when at least ``broken_rate`` of its (at
        least ``broken_min``) answers today met a negative reaction, and that share is at
        least ``broken_jump`` above its usual one: the median daily share over its last
        ``usual_days`` days (0.45, 5, 0.25 and 28: a wrong answer draws a reaction ~60 % of
        the time, a right one ~5 %; an intent that often takes in other intents' requests has
        a high share every day, and its answer is not what is broken; a median over four
        weeks keeps a new break compared with the healthy days for two).
    prompt_ab
        Learned examples reach the prompt only through candidates A/B tested by the
        pipeline (``True``), or the app adds them to its prompt at once (``False``).
    refresh_votes
        Entries that must carry the same new answer for a broken intent's answer to be
        replaced that night (2: one user's text may belong to another intent).
    analyze_every_days
        Days between analysis runs (1; the analysis (topics, issues, quality drift) is the
        slowest stage: a longer period trades alarm latency for speed).
    database_url
        The store (``None``: SQLite in a temporary folder removed at the end).
    """

    min_score: float = 0.8
    recall_k: int = 3
    fix_share: float = 0.95
    fix_min: int = 5
    broken_rate: float = 0.45
    broken_min: int = 5
    broken_jump: float = 0.25
    refresh_votes: int = 2
    usual_days: int = 28
    analyze_every_days: int = 1
    prompt_ab: bool = True
    database_url: str | None = None

    def __post_init__(self) -> None:
        """Reject a similarity or share outside [0, 1]."""
        if not (0.0 <= self.min_score <= 1.0 and 0.0 <= self.fix_share <= 1.0):
            raise ConfigError("min_score and fix_share must lie within 0-1")
        if self.analyze_every_days < 1 or self.usual_days < 1:
            raise ConfigError("analyze_every_days and usual_days must be at least 1")
        if min(self.recall_k, self.broken_min, self.fix_min, self.refresh_votes) < 1:
            raise ConfigError("recall_k, broken_min, fix_min and refresh_votes must be >= 1")
        if not (0.0 <= self.broken_rate <= 1.0 and 0.0 <= self.broken_jump <= 1.0):
            raise ConfigError("broken_rate and broken_jump must lie within 0-1")


@dataclass
class LoopStats:
    """What the pipeline did over the run (read from the store)."""

    events: int = 0
    firings: int = 0
    kb_entries: int = 0
    drift_alarms: int = 0
    review_tasks: int = 0
    recalled_answers: int = 0
    learned_examples: int = 0
    refreshed_answers: int = 0
    new_answers: int = 0
    prompt_tests: int = 0
    prompts_promoted: int = 0
    prompts_rolled_back: int = 0
    prompt_examples: int = 0
    """Learned examples in production's prompt at the end."""


def _reaction_events(
    iid: str, reaction: Reaction, right_answer: str, user: str, ts: dt.datetime
) -> list[dict[str, Any]]:
    """The user's feedback and signal on interaction ``iid``, as the app would send them."""
    out: list[dict[str, Any]] = []
    common = {"interaction_id": iid, "user_id": user}
    later = ts + dt.timedelta(seconds=20)
    if reaction.explicit:
        body: dict[str, Any] = dict(common)
        if reaction.thumbs is not None:
            body["thumbs"] = reaction.thumbs
        if reaction.correction is not None:
            body["correction"] = reaction.correction
            body.setdefault("thumbs", -1)  # the correction form sits behind the thumbs-down
        out.append(make_event("feedback", body, id=f"{iid}-f", timestamp=later))
    if reaction.signal is not None:
        body = {**common, "kind": reaction.signal}
        if reaction.signal == "edit":
            body["text"] = right_answer  # the text the user kept
        out.append(make_event("signal", body, id=f"{iid}-s", timestamp=later))
    return out


class _Pipeline:
    """The embedded closedloop deployment of the arm."""

    def __init__(self, folder: Path, params: LoopParams, vectors: TextVectors) -> None:
        settings = Settings(
            data_dir=folder,
            database_url=params.database_url,
            run_worker=False,
            embed_in_worker=False,
            act_event_settle_seconds=0.0,
            # a throwaway store: a commit need not survive power loss (no fsync per commit)
            sqlite_synchronous="NORMAL",
        )
        self.runtime = Runtime.build(settings, load_plugins=False)
        self.runtime.start()
        rt = self.runtime
        # the run's shared cache (each distinct text embedded once), passed through
        rt._embedder = EmbeddingCache(vectors, max_entries=0)
        name = f"simulate-{new_id()[:8].lower()}"
        project, _public, _secret = rt.projects.create(name)
        self.project_id = project.id
        # The simulated texts hold no personal data, and the redactor takes the world's
        # answer names ("banking77/card_arrival") for secrets: off, as a project may choose.
        rt.projects.set_pii(project.id, '{"enabled": false}')
        keys = [k for k in rt.projects.keys(name) if k.kind == "secret"]
        self.key = ProjectKey(
            project_id=project.id,
            project_name=project.name,
            kind="secret",
            key_id=keys[0].id if keys else 0,
        )
        for text in (LOOP_RULES, CANDIDATE_RULES) if params.prompt_ab else (LOOP_RULES,):
            for spec in parse_rules(text, kinds=rt.action_kinds()):
                put_rule(rt.engine, project.id, spec, source="simulate")
        self.prompts = PromptChannel(rt.engine, project.id, rt.settings)
        self.prompts.setup()
        self.events = 0
        self._firings_seen = 0
        self._entries_seen = 0

    def ingest(self, events: list[dict[str, Any]]) -> None:
        """Send ``events`` through the ingest path, in batches, waiting for each commit."""
        size = LIMITS.batch_events
        for start in range(0, len(events), size):
            raws = [json.dumps(e).encode() for e in events[start : start + size]]
            result = self.runtime.ingestor.ingest(self.key, raws)
            bad = [r for r in result.results if r.status == "rejected"]
            if bad:
                raise ConfigError(f"simulated event rejected: {bad[0].field}: {bad[0].message}")
        self.events += len(events)

    def recall(self, texts: list[str], params: LoopParams) -> list[str | None]:
        """The served knowledge-base answer of each text, when a confident entry exists."""
        rt = self.runtime
        found = recall_many(
            rt.engine,
            rt.embedder(),
            self.project_id,
            texts,
            k=params.recall_k,
            min_score=params.min_score,
        )
        return [hits[0].answer if hits else None for hits in found]

    def run_jobs(self, end_of_day: dt.datetime, *, analyze: bool = True) -> None:
        """Enrichment, embedding, analysis (at the virtual end of the day), rules."""
        rt = self.runtime
        rt.enricher.run()
        rt.embedding_job().run()
        if analyze:
            rt.analyzer().run(self.project_id, now=end_of_day)
        rt.rule_engine().run(self.project_id)

    def new_firings(self) -> list[dict[str, Any]]:
        """Firings recorded since the last call (their trigger's interaction ids)."""
        f = models.firings
        with rt_connect(self.runtime) as conn:
            rows = conn.execute(
                sa.select(f.c.id, f.c.trigger)
                .where(f.c.project_id == self.project_id, f.c.id > self._firings_seen)
                .order_by(f.c.id)
            ).all()
        if rows:
            self._firings_seen = int(rows[-1].id)
        return [json.loads(r.trigger) for r in rows]

    def new_entries(self) -> list[tuple[str, str, str]]:
        """Knowledge-base entries written since the last call: ``(interaction id, query,
        answer)`` of each active one."""
        t = models.kb_entries
        with rt_connect(self.runtime) as conn:
            rows = conn.execute(
                sa.select(t.c.id, t.c.interaction_id, t.c.query, t.c.answer)
                .where(
                    t.c.project_id == self.project_id,
                    t.c.id > self._entries_seen,
                    t.c.active.is_(True),
                )
                .order_by(t.c.id)
            ).all()
        if rows:
            self._entries_seen = int(rows[-1].id)
        return [(str(r.interaction_id), r.query, r.answer) for r in rows if r.interaction_id]

    def stats(self) -> LoopStats:
        """Counts of what the pipeline did, from the store."""
        pid = self.project_id
        with rt_connect(self.runtime) as conn:

            def count(table: sa.Table) -> int:
                return int(
                    conn.execute(
                        sa.select(sa.func.count()).where(table.c.project_id == pid)
                    ).scalar_one()
                )

            found = LoopStats(
                events=self.events,
                firings=count(models.firings),
                kb_entries=count(models.kb_entries),
                drift_alarms=count(models.drift_alarms),
                review_tasks=count(models.review_tasks),
            )
        tests = self.prompts.stats()
        found.prompt_tests, found.prompts_promoted = tests.tests, tests.promoted
        found.prompts_rolled_back = tests.rolled_back
        found.prompt_examples = tests.production_examples
        return found

    def close(self) -> None:
        """Drain the write queue and close the store."""
        self.runtime.stop()


def rt_connect(runtime: Runtime) -> sa.Connection:
    """A connection to the runtime's store."""
    return runtime.engine.connect()


def _trigger_ids(trigger: dict[str, Any]) -> list[str]:
    ids = trigger.get("interaction_ids") or []
    snapshot = trigger.get("snapshot") or {}
    if snapshot.get("interaction_id"):
        ids = [*ids, snapshot["interaction_id"]]
    return [str(i) for i in ids]


_NEW = "kb:"
"""The label prefix of an answer the assistant learned from a correction (a new use)."""


def _negative(reaction: Reaction) -> bool:
    return reaction.thumbs == -1 or reaction.correction is not None or reaction.signal is not None


class _Usual:
    """Each served intent's usual share of answers that met a negative reaction, from the
    app's own logs: the median daily share over its last ``usual_days`` days (days with at
    least ``broken_min`` answers). A median over weeks holds its level through the first
    days of a break, so an answer that breaks is compared with its healthy days for a while;
    an intent that takes in other intents' requests every day has a high usual share."""

    def __init__(self, params: LoopParams) -> None:
        self.params = params
        self.past: dict[str, deque[float]] = {}

    def broken(self, today: dict[str, tuple[int, int]]) -> set[str]:
        """The intents whose answer looks broken tonight (``today``: per served intent,
        ``(answers, answers with a negative reaction)``); then remember today."""
        p = self.params
        out: set[str] = set()
        for name, (n, bad) in today.items():
            if n < p.broken_min:
                continue
            share = bad / n
            past = self.past.get(name)
            usual = float(np.median(past)) if past else 0.0
            if share >= p.broken_rate and share - usual >= p.broken_jump:
                out.add(name)
            self.past.setdefault(name, deque(maxlen=p.usual_days)).append(share)
        return out


def _owners(assistant: Assistant, held: dict[str, str]) -> dict[str, str]:
    """The intent each answer names: its current one, or the one that once had it (``held``
    records every answer an intent ever had, in place)."""
    for intent, entry in assistant.kb.items():
        held.setdefault(entry.answer, intent)
    return {**held, **{entry.answer: intent for intent, entry in assistant.kb.items()}}


def _learn(
    assistant: Assistant,
    entries: list[tuple[str, str, str]],
    served_as: dict[str, str],
    broken: set[str],
    held: dict[str, str],
    day: int,
    params: LoopParams,
    stats: LoopStats,
) -> None:
    """The app applies the day's new knowledge-base entries to its assistant, from its own
    logs only (what it predicted, how its users reacted). ``held`` maps every answer an
    intent ever had to that intent (an old answer still names its intent):

    * an entry whose answer is the assistant's answer of another intent teaches the prompt
      that the query means that intent (a new example: the prompt candidate);
    * the answer of an intent that looks broken tonight (:class:`_Usual`) is replaced by the
      answer most of the entries on its interactions carry, when at least
      ``refresh_votes`` do and no other answer ties (the knowledge-base refresh; an answer
      the intent once had restores it);
    * an answer the assistant does not know, on an intent that is not broken, becomes a new
      entry with the query as its first example (a new use of the product).
    """
    own = _owners(assistant, held)
    # refreshes: a broken answer takes the answer most of its users wrote tonight (a request
    # misrecognised as that intent carries another intent's answer: one vote, outvoted)
    votes: dict[str, Counter[str]] = {}
    for iid, _query, answer in entries:
        predicted = served_as.get(iid, "")
        if predicted not in broken or predicted.startswith(_NEW):
            continue
        known = own.get(answer)
        if known is None or known.startswith(_NEW) or known == predicted:
            if assistant.answer(predicted) != answer:
                votes.setdefault(predicted, Counter())[answer] += 1
    for predicted, counts in votes.items():
        ranked = counts.most_common(2)
        best, n = ranked[0]
        if n >= params.refresh_votes and (len(ranked) == 1 or n > ranked[1][1]):
            assistant.set_answer(predicted, KBEntry(best, day))
            stats.refreshed_answers += 1
    own = _owners(assistant, held)
    examples: list[tuple[str, str]] = []
    for iid, query, answer in entries:
        predicted = served_as.get(iid, "")
        known = own.get(answer)
        if known is not None:
            if known != predicted:
                examples.append((query, known))
            continue
        if predicted in broken and not predicted.startswith(_NEW):
            continue  # users of a broken answer did not agree on its fix tonight: wait
        label = f"{_NEW}{answer}"
        assistant.set_answer(label, KBEntry(answer, day))
        examples.append((query, label))
        stats.new_answers += 1
        own = _owners(assistant, held)
    if examples and not params.prompt_ab:
        assistant.add_examples(examples)
        stats.learned_examples += len(examples)


def run_closed_loop(
    world: World,
    vectors: TextVectors,
    *,
    users: UserParams | None = None,
    params: LoopParams | None = None,
    k: int = 3,
    on_day: Callable[[int], None] | None = None,
    stats_out: LoopStats | None = None,
) -> ArmResult:
    """Run the CLOSED-LOOP arm over the whole world (see the module docstring).

    Users, retention and random draws are those of :func:`closedloop.simulate.run_arm`, so
    the arms differ only in what the app served. ``stats_out`` (if given) is filled with
    what the pipeline did.
    """
    uparams = users or UserParams()
    lparams = params or LoopParams()
    seed = world.params.seed
    days = world.params.days
    base = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days + 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assistant = Assistant(vectors, world.initial_examples(), world.initial_kb(), k=k)
    retention = Retention(world.params.users, uparams)
    result = ArmResult(arm="closed-loop", model_version=assistant.model_version)
    result.incidents = [IncidentRecord(i.name, i.onset, i.intents) for i in world.incidents]
    model = {"name": "knn-assistant", "version": assistant.model_version}
    learning = LoopStats()
    served_as: dict[str, str] = {}
    usual = _Usual(lparams)
    held: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="closedloop-simulate-") as folder:
        pipeline = _Pipeline(Path(folder), lparams, vectors)
        try:
            stale_served: dict[str, str] = {}  # measurement: iid -> incident it served stale
            for day in range(days):
                start = base + dt.timedelta(days=day)
                requests = [r for r in world.requests(day) if retention.active(r.user)]
                texts = [r.text for r in requests]
                recalled = pipeline.recall(texts, lparams) if texts else []
                owners = _owners(assistant, held)
                if lparams.prompt_ab:
                    arms = pipeline.prompts.arms(assistant, owners.get)
                    predicted, versions = arms.predict(texts, [f"user-{r.user}" for r in requests])
                else:
                    predicted, versions = assistant.predict(texts), ["1"] * len(texts)
                react_rng = np.random.default_rng([seed, day, 1])
                churn_rng = np.random.default_rng([seed, day, 2])
                events: list[dict[str, Any]] = []
                served = correct = 0
                per_incident = {inc.name: [0, 0] for inc in result.incidents}
                reactions: dict[str, tuple[int, int]] = {}
                step = 86_000.0 / max(len(requests), 1)
                for j, request in enumerate(requests):
                    if not retention.active(request.user):
                        continue
                    answer = recalled[j]
                    if answer is None:
                        label = predicted[j]
                    else:
                        # a recalled answer that an intent has (or had) says the request
                        # means that intent: serve its current answer (a refresh wins)
                        learning.recalled_answers += 1
                        label = owners.get(answer, "")
                    if label:
                        answer = assistant.answer(label)
                    # ids follow the run (day, position), not the clock or a random source:
                    # the analysis orders and samples by id, so two runs stay identical
                    iid = f"d{day:03d}-{j:05d}"
                    # measurement only: the world's right answer judges what was served
                    truth = world.true_answer(request.intent, day)
                    ok = answer == truth
                    reaction = react(ok, react_rng, uparams, right_answer=truth)
                    retention.record(request.user, ok, churn_rng)
                    served += 1
                    correct += ok
                    for inc in result.incidents:
                        if request.intent in inc.intents and inc.onset <= day:
                            # only requests answered as the incident's intent are its own (a
                            # misrecognised one was wrong before the incident too)
                            outdated = world.true_answer(request.intent, inc.onset - 1)
                            if answer == outdated:
                                per_incident[inc.name][1] += 1
                                stale_served[iid] = inc.name
                            per_incident[inc.name][0] += answer in (outdated, truth)
                    # what the app sends: no intent, no judgement
                    ts = start + dt.timedelta(seconds=j * step)
                    user = f"user-{request.user}"
                    served_as[iid] = label
                    n, bad = reactions.get(label, (0, 0))
                    reactions[label] = (n + 1, bad + _negative(reaction))
                    events.append(
                        make_event(
                            "interaction",
                            {
                                "input": request.text,
                                "output": answer,
                                "model": model,
                                "prompt": {"name": PROMPT, "version": versions[j]},
                                "user_id": user,
                            },
                            id=iid,
                            timestamp=ts,
                        )
                    )
                    events += _reaction_events(iid, reaction, truth, user, ts)
                pipeline.ingest(events)
                pipeline.run_jobs(
                    start + dt.timedelta(days=1),
                    analyze=(day + 1) % lparams.analyze_every_days == 0,
                )
                if lparams.prompt_ab:
                    pipeline.prompts.evaluate()
                entries = pipeline.new_entries()
                broken = usual.broken(reactions)
                _learn(assistant, entries, served_as, broken, held, day + 1, lparams, learning)
                # measurement: which incidents the pipeline's actions touched today
                hit = {
                    stale_served[iid]
                    for trigger in pipeline.new_firings()
                    for iid in _trigger_ids(trigger)
                    if iid in stale_served
                }
                for inc in result.incidents:
                    if inc.detected is None and inc.name in hit:
                        inc.detected = day
                    total, stale = per_incident[inc.name]
                    if (
                        inc.fixed is None
                        and total >= lparams.fix_min
                        and stale <= (1 - lparams.fix_share) * total
                    ):
                        inc.fixed = day
                result.days.append(DayRecord(day, served, correct, retention.retained_share))
                if on_day is not None:
                    on_day(day)
            if stats_out is not None:
                final = pipeline.stats()
                for name in ("recalled_answers", "learned_examples", "refreshed_answers"):
                    setattr(final, name, getattr(learning, name))
                final.new_answers = learning.new_answers
                for name in LoopStats.__dataclass_fields__:
                    setattr(stats_out, name, getattr(final, name))
        finally:
            pipeline.close()
    return result


def loop_arm(params: LoopParams | None = None) -> SweepArm:
    """The closed-loop arm for :func:`closedloop.simulate.baselines.sweep` (it reads the users'
    feedback, so it runs in every cell of the grid)."""

    def runner(world: World, vectors: TextVectors, users: UserParams) -> ArmResult:
        return run_closed_loop(world, vectors, users=users, params=params)

    return SweepArm(runner=runner)
