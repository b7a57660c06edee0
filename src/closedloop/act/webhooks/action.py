"""The ``webhook`` action: a rule's firing becomes a signed delivery in the outbox."""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic

from closedloop.act.actions import ActContext, ActionResult, Trigger
from closedloop.act.webhooks.endpoints import find_endpoint
from closedloop.act.webhooks.outbox import enqueue, json_safe, render_body
from closedloop.errors import NotFound
from closedloop.store.db import utcnow

__all__ = ["WebhookAction", "WebhookParams", "trigger_data"]


class WebhookParams(pydantic.BaseModel):
    """The rule's ``with:`` block of a ``webhook`` action."""

    model_config = pydantic.ConfigDict(extra="forbid")

    endpoint: str = pydantic.Field(min_length=1, max_length=64, description="Endpoint name.")
    event_type: str = pydantic.Field(
        default="closedloop.rule.fired", min_length=1, max_length=64, description="Event type."
    )


def trigger_data(trigger: Trigger) -> dict[str, Any]:
    """The event's ``data``: what made the rule fire, JSON-safe."""
    data: dict[str, Any] = json_safe(
        {
            "rule": trigger.rule,
            "kind": trigger.kind,
            "segment": trigger.segment,
            "fired_at": trigger.fired_at,
            "snapshot": trigger.snapshot,
            "interaction_ids": trigger.interaction_ids,
            "issue_id": trigger.issue_id,
            "firing_id": trigger.firing_id,
        }
    )
    return data


class WebhookAction:
    """Enqueue a signed delivery of the trigger to a project's endpoint (sent by the worker).

    An endpoint that does not exist when the rule fires gives a failed result naming it, not an
    exception.
    """

    name: ClassVar[str] = "webhook"
    Params: ClassVar[type[pydantic.BaseModel]] = WebhookParams

    def __init__(self, params: WebhookParams, context: ActContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def _unit_test_params(cls) -> list[dict[str, Any]]:
        return [{"endpoint": "ops"}]

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        """Enqueue the delivery (or, with ``dry_run``, say what would be sent)."""
        endpoint, event_type = self.params.endpoint, self.params.event_type
        data = trigger_data(trigger)
        try:
            if dry_run:
                with self.context.engine.connect() as conn:
                    found = find_endpoint(conn, trigger.project_id, endpoint)
                body = render_body(event_type, data, format=found.format, timestamp=utcnow())
                return ActionResult(
                    action=self.name,
                    ok=True,
                    summary=f"would send {event_type} to webhook {endpoint!r}",
                    details={"endpoint": endpoint, "url": found.url, "body": body},
                    dry_run=True,
                )
            with self.context.engine.begin() as conn:
                delivery_id = enqueue(
                    conn,
                    trigger.project_id,
                    endpoint,
                    event_type,
                    data,
                    firing_id=trigger.firing_id,
                )
        except NotFound:
            return ActionResult(
                action=self.name,
                ok=False,
                summary=f"no webhook endpoint {endpoint!r} in this project: create it with "
                f"`closedloop webhooks add {endpoint} URL` or POST /v1/webhooks",
                details={"endpoint": endpoint},
                dry_run=dry_run,
            )
        return ActionResult(
            action=self.name,
            ok=True,
            summary=f"{event_type} queued for webhook {endpoint!r} (delivery {delivery_id})",
            details={"delivery_id": delivery_id, "endpoint": endpoint},
        )
