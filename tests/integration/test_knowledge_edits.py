"""The text users keep in their edits becomes knowledge-base entries (``kb_refresh`` with
``from_edits``), unless a correction says otherwise (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from closedloop import make_event
from closedloop.act import knowledge
from closedloop.act.actions import Trigger
from closedloop.runtime import Runtime
from closedloop.store.db import utcnow
from tests.conftest import Tenant
from tests.integration.test_knowledge import _ingest

KEPT = "Open Settings, then Security, then Reset password."


def _edit(interaction_id: str, text: str, id: str, **extra: Any) -> dict[str, Any]:
    body = {"interaction_id": interaction_id, "kind": "edit", "text": text, **extra}
    return make_event("signal", body, id=id)


def _edited(runtime: Runtime, tenant: Tenant) -> None:
    """An answer the user edited, one they corrected and edited, one edited back to itself."""
    question = {"input": "How do I reset my password?", "output": "Call us.", "user_id": "u-1"}
    _ingest(
        runtime,
        tenant,
        [
            make_event("interaction", question, id="i-pw"),
            make_event("interaction", {"input": "When do you open?", "output": "At 9."},
                       id="i-open"),
            make_event("interaction", {"input": "Do you ship abroad?", "output": "Yes."},
                       id="i-ship"),
            _edit("i-pw", f"  {KEPT}\n", "s-pw", user_id="u-2"),
            _edit("i-open", "At 9, and at 10 on Sundays.", "s-open"),
            make_event("feedback", {"interaction_id": "i-open", "correction": "At 8."},
                       id="f-open"),
            _edit("i-ship", "Yes. ", "s-ship"),  # the output, kept as it was
        ],
    )  # fmt: skip
    runtime.enricher.run()


def _trigger(project_id: int, *ids: str) -> Trigger:
    return Trigger(
        project_id=project_id,
        rule="edits-to-kb",
        kind="event",
        segment="all",
        fired_at=utcnow(),
        interaction_ids=ids,
        firing_id=3,
    )


def test_an_edit_becomes_an_entry_with_source_edit_that_recall_finds(
    runtime: Runtime, tenant: Tenant
) -> None:
    _edited(runtime, tenant)
    embedder = runtime.embedder()
    ids = ["i-pw", "i-open", "i-ship"]
    assert knowledge.from_edits(runtime.engine, embedder, tenant.project_id, ids, dry_run=True) == 1
    assert knowledge.entries(runtime.engine, tenant.project_id) == []
    assert knowledge.from_edits(runtime.engine, embedder, tenant.project_id, ids) == 1
    (entry,) = knowledge.entries(runtime.engine, tenant.project_id)
    assert (entry.query, entry.answer, entry.source) == (
        "How do I reset my password?",
        KEPT,
        "edit",
    )
    assert entry.interaction_id == "i-pw" and entry.feedback_id is None
    (hit, *_) = knowledge.recall(runtime.engine, embedder, tenant.project_id, "reset password")
    assert (hit.id, hit.answer, hit.source) == (entry.id, KEPT, "edit")
    # again: the same entry, not a second one
    assert knowledge.from_edits(runtime.engine, embedder, tenant.project_id, ids) == 1
    assert len(knowledge.entries(runtime.engine, tenant.project_id, active=None)) == 1


def test_a_newer_edit_replaces_the_entry_and_one_back_to_the_output_writes_nothing(
    runtime: Runtime, tenant: Tenant
) -> None:
    _edited(runtime, tenant)
    embedder = runtime.embedder()
    knowledge.from_edits(runtime.engine, embedder, tenant.project_id, ["i-pw"])
    later = utcnow() + dt.timedelta(seconds=1)
    newer = _edit("i-pw", "Use the Forgot password link.", "s-pw-2")
    newer["timestamp"] = later.isoformat()
    _ingest(runtime, tenant, [newer])
    assert knowledge.from_edits(runtime.engine, embedder, tenant.project_id, ["i-pw"]) == 1
    active = knowledge.entries(runtime.engine, tenant.project_id)
    assert [e.answer for e in active] == ["Use the Forgot password link."]
    assert len(knowledge.entries(runtime.engine, tenant.project_id, active=None)) == 2
    # the latest edit goes back to the output: nothing to learn from it
    back = _edit("i-pw", "Call us.", "s-pw-3")
    back["timestamp"] = (later + dt.timedelta(seconds=1)).isoformat()
    _ingest(runtime, tenant, [back])
    assert knowledge.from_edits(runtime.engine, embedder, tenant.project_id, ["i-pw"]) == 0


def test_a_correction_wins_over_an_edit_of_the_same_interaction(
    runtime: Runtime, tenant: Tenant
) -> None:
    _edited(runtime, tenant)
    context = runtime.act_context()
    params = knowledge.KnowledgeParams(from_edits=True)
    action = knowledge.KnowledgeAction(params, context)
    done = action.run(_trigger(tenant.project_id, "i-pw", "i-open", "i-ship"))
    assert done.ok and (done.details["corrections"], done.details["edits"]) == (1, 1)
    by_interaction = {
        e.interaction_id: e for e in knowledge.entries(context.engine, tenant.project_id)
    }
    assert by_interaction["i-open"].answer == "At 8."
    assert by_interaction["i-open"].source == "correction"
    assert by_interaction["i-pw"].source == "edit" and by_interaction["i-pw"].firing_id == 3
    assert "i-ship" not in by_interaction
    # edits only: the corrected interaction still gets no entry from its edit
    edits_only = knowledge.KnowledgeParams(from_corrections=False, from_edits=True)
    again = knowledge.KnowledgeAction(edits_only, context).run(
        _trigger(tenant.project_id, "i-open")
    )
    assert again.details["entries"] == 0
    # an edit entry made before a correction arrived is deactivated by it
    _ingest(runtime, tenant, [make_event("feedback", {"interaction_id": "i-pw",
                                                      "correction": "Reset it in Settings."},
                                         id="f-pw")])  # fmt: skip
    knowledge.from_corrections(context.engine, context.embedder(), tenant.project_id, ["i-pw"])
    pw = [
        e
        for e in knowledge.entries(context.engine, tenant.project_id)
        if e.interaction_id == "i-pw"
    ]
    assert [(e.source, e.answer) for e in pw] == [("correction", "Reset it in Settings.")]


def test_erasing_the_user_who_edited_removes_the_entry(runtime: Runtime, tenant: Tenant) -> None:
    _edited(runtime, tenant)
    knowledge.from_edits(runtime.engine, runtime.embedder(), tenant.project_id, ["i-pw"])
    receipt = runtime.erase_user(tenant.project_id, "u-2")  # the editor, not the asker
    assert receipt.hot["kb_entries"] == 1
    assert knowledge.entries(runtime.engine, tenant.project_id, active=None) == []
