"""Signed webhooks: endpoints, the SSRF guard, and the durable delivery outbox.

Deliveries follow Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``); see :mod:`.outbox` for the states and the at-least-once promise and
:mod:`.ssrf` for what may be reached.
"""

from closedloop.act.webhooks.action import WebhookAction
from closedloop.act.webhooks.endpoints import Endpoint, Endpoints
from closedloop.act.webhooks.outbox import WebhookSender, deliveries, enqueue, retry
from closedloop.act.webhooks.ssrf import SsrfGuard, UnsafeURL

__all__ = [
    "Endpoint",
    "Endpoints",
    "SsrfGuard",
    "UnsafeURL",
    "WebhookAction",
    "WebhookSender",
    "deliveries",
    "enqueue",
    "retry",
]
