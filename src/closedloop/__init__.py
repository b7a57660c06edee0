"""closedloop: an open-source feedback loop for AI products.

The plain install is the light SDK; ``closedloop[server]`` adds the server, store and CLI.

>>> import closedloop
>>> client = closedloop.Client(api_key="cl_sk_example", base_url="http://127.0.0.1:9")
>>> with closedloop.context(session_id="s-1", user_id="u-1"):
...     interaction_id = client.log_interaction(input="Hi", output="Hello!")
>>> _ = client.feedback(interaction_id, thumbs=1)
>>> _ = client.close(timeout=0)  # nothing listens there: the events are counted, not raised
"""

from __future__ import annotations

from closedloop.errors import ClosedLoopError, ContractError
from closedloop.events import (
    Event,
    Feedback,
    FeedbackEvent,
    Interaction,
    InteractionEvent,
    Signal,
    SignalEvent,
    decode_event,
)
from closedloop.sdk._worker import FlushResult
from closedloop.sdk.client import (
    Client,
    feedback,
    flush,
    get_client,
    get_prompt,
    init,
    log_interaction,
    recall,
    shutdown,
    signal,
)
from closedloop.sdk.context import context
from closedloop.sdk.envelope import make_event, new_id
from closedloop.sdk.openai import wrap_openai
from closedloop.sdk.trace import current_interaction_id, trace

__all__ = [
    "Client",
    "ClosedLoopError",
    "ContractError",
    "Event",
    "Feedback",
    "FeedbackEvent",
    "FlushResult",
    "Interaction",
    "InteractionEvent",
    "Signal",
    "SignalEvent",
    "__version__",
    "context",
    "current_interaction_id",
    "decode_event",
    "feedback",
    "flush",
    "get_client",
    "get_prompt",
    "init",
    "log_interaction",
    "make_event",
    "new_id",
    "recall",
    "shutdown",
    "signal",
    "trace",
    "wrap_openai",
]

__version__ = "0.1.0.dev0"


_ANALYSIS = ("drift_alarms", "issues", "metrics", "topics")


def __getattr__(name: str) -> object:
    """``closedloop.query``: SQL over both tiers; ``closedloop.metrics``, ``issues``,
    ``topics`` and ``drift_alarms``: the analysis as DataFrames (the server extra; loaded on
    first use, so the light SDK stays light)."""
    if name == "query":
        from closedloop.store.olap import query

        return query
    if name in _ANALYSIS:
        from closedloop.analyze import api

        return getattr(api, name)
    raise AttributeError(f"module 'closedloop' has no attribute {name!r}")
