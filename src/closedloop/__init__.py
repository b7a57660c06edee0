"""closedloop: an open-source feedback loop for AI products.

The plain install is the light SDK; ``closedloop[server]`` adds the server, store and CLI.
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
from closedloop.sdk.envelope import make_event, new_id

__all__ = [
    "ClosedLoopError",
    "ContractError",
    "Event",
    "Feedback",
    "FeedbackEvent",
    "Interaction",
    "InteractionEvent",
    "Signal",
    "SignalEvent",
    "__version__",
    "decode_event",
    "make_event",
    "new_id",
]

__version__ = "0.1.0.dev0"
