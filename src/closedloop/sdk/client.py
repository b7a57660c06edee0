"""The SDK client: log interactions, feedback and signals without slowing the app down.

>>> client = Client(enabled=False)
>>> interaction_id = client.log_interaction("What is 2+2?", "4", model="gpt-test")
>>> len(interaction_id)
36
>>> client.stats()["dropped_by_reason"]
{'disabled': 1}

Each call builds an envelope ``{id, type, timestamp, body}`` with a fresh UUIDv7 id, encodes it
once with msgspec and hands it to the background sender; it returns the id at once. Nothing
here raises into the app: a problem is logged once and counted in :meth:`Client.stats`.

Configuration comes from the arguments, then ``CLOSEDLOOP_API_KEY`` and
``CLOSEDLOOP_BASE_URL`` read when the client is built (never at import). With
``database_url`` (and ``project``) the client runs embedded: no server, same ingest path.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec

from closedloop.events import SignalKind
from closedloop.sdk._spool import Spool
from closedloop.sdk._transport import HttpTransport, SendOutcome, Transport
from closedloop.sdk._worker import BackgroundWorker, FlushResult, WorkerParams
from closedloop.sdk.context import current
from closedloop.sdk.envelope import new_id
from closedloop.sdk.prompts import PromptCache, ServedPrompt, embedded_fetch, http_fetch
from closedloop.sdk.recall import Recalled, recall_embedded, recall_http

__all__ = [
    "DEFAULT_BASE_URL",
    "Client",
    "feedback",
    "flush",
    "get_client",
    "get_prompt",
    "init",
    "log_interaction",
    "recall",
    "shutdown",
    "signal",
]

logger = logging.getLogger("closedloop.sdk")

DEFAULT_BASE_URL = "http://127.0.0.1:8484"


def _fallback(obj: Any) -> Any:
    """Encode what JSON cannot hold as its ``repr`` (trace inputs may be anything)."""
    if isinstance(obj, dt.datetime | dt.date):
        return obj.isoformat()
    return repr(obj)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


class _Disabled:
    """A transport that refuses everything (no key and no database configured)."""

    def send(self, events: list[bytes]) -> SendOutcome:
        return SendOutcome(kind="fatal", reason="disabled")

    def after_fork(self) -> None:
        pass

    def close(self) -> None:
        pass


def _model(
    model: str | Mapping[str, Any] | None, version: str | None, provider: str | None
) -> dict[str, Any] | None:
    if model is None:
        return None
    out = dict(model) if isinstance(model, Mapping) else {"name": str(model)}
    if version is not None:
        out["version"] = version
    if provider is not None:
        out["provider"] = provider
    return out


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class Client:
    """Sends events to closedloop in the background.

    Parameters
    ----------
    api_key
        The project's secret key (or ``CLOSEDLOOP_API_KEY``).
    base_url
        Where the server listens (or ``CLOSEDLOOP_BASE_URL``; default ``http://127.0.0.1:8484``).
    database_url
        Embedded mode: write straight to this database (needs ``closedloop[server]``).
    project
        Embedded mode: the project's name (created if missing; default ``default``).
    spool_path
        A file that keeps batches during an outage (bounded by ``spool_max_bytes``).
    enabled
        ``False`` drops every event (counted), for tests and local runs.
    timeout
        Seconds for each HTTP request.
    transport
        An ``httpx`` transport, for tests (``httpx.MockTransport``).
    params
        Queue, batch and retry sizes; the keyword arguments below override its fields.
    prompt_refresh_seconds
        How often :meth:`get_prompt` refreshes each prompt it has served (default 30 s); a
        finite number above 0, else :class:`ValueError` here (never later, in ``get_prompt``).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        database_url: str | None = None,
        project: str | None = None,
        spool_path: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 64 * 1024 * 1024,
        enabled: bool = True,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        params: WorkerParams | None = None,
        max_queue_events: int | None = None,
        max_queue_bytes: int | None = None,
        batch_events: int | None = None,
        flush_interval: float | None = None,
        max_retries: int | None = None,
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        shutdown_timeout: float | None = None,
        embedded_settings: Mapping[str, Any] | None = None,
        prompt_refresh_seconds: float = 30.0,
    ) -> None:
        refresh = prompt_refresh_seconds
        number = isinstance(refresh, int | float) and not isinstance(refresh, bool)
        if not number or not 0 < refresh < math.inf:  # NaN fails both comparisons
            raise ValueError(
                "prompt_refresh_seconds must be a finite number of seconds above 0 (e.g. 30), "
                f"got {refresh!r}"
            )
        self.api_key = api_key if api_key is not None else os.environ.get("CLOSEDLOOP_API_KEY")
        self.base_url = (
            base_url
            if base_url is not None
            else os.environ.get("CLOSEDLOOP_BASE_URL") or DEFAULT_BASE_URL
        )
        self.database_url = database_url
        self.project = project
        overrides = {
            "max_queue_events": max_queue_events,
            "max_queue_bytes": max_queue_bytes,
            "batch_events": batch_events,
            "flush_interval": flush_interval,
            "max_retries": max_retries,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
            "shutdown_timeout": shutdown_timeout,
        }
        base = params if params is not None else WorkerParams()
        fields = {**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        worker_params = WorkerParams(**fields)
        sender: Transport
        self.mode: Literal["http", "embedded", "disabled"]
        if not enabled:
            sender, self.mode = _Disabled(), "disabled"
        elif database_url is not None:
            from closedloop.sdk._embedded import EmbeddedTransport

            sender = EmbeddedTransport(
                database_url, project or "default", **dict(embedded_settings or {})
            )
            self.mode = "embedded"
        elif self.api_key:
            sender = HttpTransport(
                self.base_url, self.api_key, timeout=timeout, transport=transport
            )
            self.mode = "http"
        else:
            logger.warning(
                "closedloop has no API key (pass api_key= or set CLOSEDLOOP_API_KEY) and no "
                "database_url: events are counted and dropped"
            )
            sender, self.mode = _Disabled(), "disabled"
        spool = Spool(Path(spool_path), max_bytes=spool_max_bytes) if spool_path else None
        self._worker = BackgroundWorker(sender, worker_params, spool=spool)
        self.prompt_refresh_seconds = prompt_refresh_seconds
        self._prompts: PromptCache | None = None
        self._prompts_lock = threading.Lock()

    # -- events ----------------------------------------------------------------------------

    def _emit(
        self,
        type: Literal["interaction", "feedback", "signal"],
        body: dict[str, Any],
        id: str | None,
        timestamp: dt.datetime | None,
    ) -> str:
        event_id = id or new_id()
        try:
            for name, value in current().items():
                body.setdefault(name, value)
                if body[name] is None:
                    body[name] = value
            when = timestamp or dt.datetime.now(dt.UTC)
            raw = _encoder.encode(
                {"id": event_id, "type": type, "timestamp": when.isoformat(), "body": body}
            )
        except Exception as exc:
            logger.warning("closedloop could not encode a %s event: %r", type, exc)
            self._worker.count_drop("unencodable")
            return event_id
        if self.mode == "disabled":
            self._worker.count_drop("disabled")
            return event_id
        self._worker.submit(raw)
        return event_id

    def log_interaction(
        self,
        input: str | Sequence[Mapping[str, Any]],
        output: str | None = None,
        *,
        model: str | Mapping[str, Any] | None = None,
        model_version: str | None = None,
        provider: str | None = None,
        prompt: str | None = None,
        prompt_version: str | None = None,
        retrieved: Sequence[Mapping[str, Any]] | None = None,
        latency_ms: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
        cost_usd: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        id: str | None = None,
        timestamp: dt.datetime | None = None,
    ) -> str:
        """Log one AI response; returns its interaction id at once."""
        tokens = _clean({"input": input_tokens, "output": output_tokens, "total": total_tokens})
        body = _clean(
            {
                "input": input if isinstance(input, str) else [dict(m) for m in input],
                "output": output,
                "session_id": session_id,
                "user_id": user_id,
                "model": _model(model, model_version, provider),
                "prompt": _clean({"name": prompt, "version": prompt_version}) if prompt else None,
                "retrieved": [dict(d) for d in retrieved] if retrieved else None,
                "latency_ms": latency_ms,
                "tokens": tokens or None,
                "cost_usd": cost_usd,
                "metadata": dict(metadata) if metadata else None,
                "tags": list(tags) if tags else None,
            }
        )
        return self._emit("interaction", body, id, timestamp)

    def feedback(
        self,
        interaction_id: str,
        thumbs: int | None = None,
        *,
        rating: float | None = None,
        rating_scale: tuple[float, float] | None = None,
        label: str | None = None,
        correction: str | None = None,
        comment: str | None = None,
        source: Literal["user", "reviewer", "evaluator"] | None = None,
        given_by: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        id: str | None = None,
        timestamp: dt.datetime | None = None,
    ) -> str:
        """Explicit feedback on an interaction (thumbs +1/-1, rating, label, correction,
        comment); returns the feedback id."""
        body = _clean(
            {
                "interaction_id": interaction_id,
                "thumbs": thumbs,
                "rating": rating,
                "rating_min": rating_scale[0] if rating_scale else None,
                "rating_max": rating_scale[1] if rating_scale else None,
                "label": label,
                "correction": correction,
                "comment": comment,
                "source": source,
                "given_by": given_by,
                "session_id": session_id,
                "user_id": user_id,
                "metadata": dict(metadata) if metadata else None,
                "tags": list(tags) if tags else None,
            }
        )
        return self._emit("feedback", body, id, timestamp)

    def signal(
        self,
        interaction_id: str,
        kind: SignalKind,
        *,
        text: str | None = None,
        target: str | None = None,
        rank: int | None = None,
        duration_ms: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        id: str | None = None,
        timestamp: dt.datetime | None = None,
    ) -> str:
        """Implicit feedback: ``edit`` (with ``text``), ``copy``, ``regenerate``, ``accept``,
        ``click`` (``target``, ``rank``), ``dwell`` (``duration_ms``), ``abandon``,
        ``escalate``, ``rephrase``; returns the signal id."""
        body = _clean(
            {
                "interaction_id": interaction_id,
                "kind": kind,
                "text": text,
                "target": target,
                "rank": rank,
                "duration_ms": duration_ms,
                "session_id": session_id,
                "user_id": user_id,
                "metadata": dict(metadata) if metadata else None,
            }
        )
        return self._emit("signal", body, id, timestamp)

    def recall(self, query: str, *, k: int = 3, timeout: float = 0.5) -> list[Recalled]:
        """The ``k`` knowledge-base entries closest to ``query``, best first; ``[]`` on any
        failure or after ``timeout`` seconds (never raises; see :mod:`closedloop.sdk.recall`)."""
        if self.mode == "http" and self.api_key:
            return recall_http(self.base_url, self.api_key, query, k=k, timeout=timeout)
        if self.mode != "embedded":
            return []
        transport: Any = self._worker.transport

        def search() -> list[Recalled]:
            from closedloop.act.knowledge import recall

            runtime, key = transport._open()
            found: list[Recalled] = recall(
                runtime.engine, runtime.embedder(), key.project_id, query, k=max(1, min(k, 50))
            )
            return found

        return recall_embedded(search, timeout=timeout)

    def get_prompt(
        self,
        name: str,
        *,
        fallback: str | ServedPrompt,
        user_id: str | None = None,
        label: str = "production",
    ) -> ServedPrompt:
        """The version of prompt ``name`` to serve (to ``user_id``, sticky within a running A/B
        test), from a cache refreshed in the background; ``fallback`` when it is unknown, the
        server cannot be reached or the client is disabled. Never raises and never waits on
        the server longer than half a second (see :mod:`closedloop.sdk.prompts`)."""
        if self.mode == "disabled":
            return PromptCache.fallback_for(name, fallback)
        try:
            with self._prompts_lock:
                if self._prompts is None:
                    fetch = (
                        embedded_fetch(self._worker.transport)
                        if self.mode == "embedded"
                        else http_fetch(self.base_url, self.api_key or "")
                    )
                    self._prompts = PromptCache(fetch, refresh_seconds=self.prompt_refresh_seconds)
                cache = self._prompts
        except Exception as exc:  # never into the app: the fallback is served instead
            logger.debug("closedloop could not start serving prompts: %r", exc)
            return PromptCache.fallback_for(name, fallback)
        return cache.get(name, fallback=fallback, user_id=user_id, label=label)

    # -- life ------------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> FlushResult:
        """Send what is queued, waiting at most ``timeout`` seconds (blocks: not in a loop)."""
        return self._worker.flush(timeout)

    def close(self, timeout: float | None = None) -> FlushResult:
        """Flush for at most ``timeout`` seconds and stop. Later events are dropped."""
        if self._prompts is not None:
            self._prompts.close()
        return self._worker.close(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters of everything the client did."""
        return self._worker.stats()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the module-level client ---------------------------------------------------------------

_client: Client | None = None
_client_lock = threading.Lock()


def init(*args: Any, **kwargs: Any) -> Client:
    """Create the global client (closing the previous one); same arguments as :class:`Client`."""
    global _client
    new = Client(*args, **kwargs)
    with _client_lock:
        old, _client = _client, new
    if old is not None:
        old.close()
    return new


def get_client() -> Client:
    """The global client; built from the environment on first use if :func:`init` was not
    called."""
    global _client
    with _client_lock:
        if _client is None:
            _client = Client()
        return _client


def log_interaction(*args: Any, **kwargs: Any) -> str:
    """:meth:`Client.log_interaction` on the global client."""
    return get_client().log_interaction(*args, **kwargs)


def feedback(*args: Any, **kwargs: Any) -> str:
    """:meth:`Client.feedback` on the global client."""
    return get_client().feedback(*args, **kwargs)


def signal(*args: Any, **kwargs: Any) -> str:
    """:meth:`Client.signal` on the global client."""
    return get_client().signal(*args, **kwargs)


def recall(query: str, *, k: int = 3, timeout: float = 0.5) -> list[Recalled]:
    """:meth:`Client.recall` on the global client."""
    return get_client().recall(query, k=k, timeout=timeout)


def get_prompt(
    name: str,
    *,
    fallback: str | ServedPrompt,
    user_id: str | None = None,
    label: str = "production",
) -> ServedPrompt:
    """:meth:`Client.get_prompt` on the global client."""
    return get_client().get_prompt(name, fallback=fallback, user_id=user_id, label=label)


def flush(timeout: float = 5.0) -> FlushResult:
    """:meth:`Client.flush` on the global client."""
    return get_client().flush(timeout)


def shutdown(timeout: float | None = None) -> FlushResult | None:
    """Close the global client (the exit hook does this too)."""
    global _client
    with _client_lock:
        old, _client = _client, None
    return old.close(timeout) if old is not None else None
