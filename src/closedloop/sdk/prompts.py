"""Serving prompts from the registry without ever blocking the app on our server.

:meth:`closedloop.sdk.client.Client.get_prompt` reads a local in-memory cache. The first
call for a name starts its first fetch on a daemon thread of its own (so a slow name never
holds the first load of another) and waits for it at most ``first_wait`` seconds (0.5 by
default): a fast server is used at once, a slow or absent one costs that bound once - only to
that call; later calls serve the fallback at once until the fetch succeeds. Afterwards one
daemon thread refreshes every loaded name every ``refresh_seconds`` (a failed fetch is retried
after at most 5 s). Any failure (server down, 404, timeout, a bad answer) serves the last version
fetched or else the fallback, logged at debug level; nothing raises.

Traffic is split stickily: a user is served the candidate of a running A/B test when
``bucket(test_id, user_id) < share``, with ``bucket`` a keyed BLAKE2b hash mapped to [0, 1)
(stable across processes, unlike Python's salted ``hash``). Without a user id, production.

>>> served = ServedPrompt(name="greet", version="2", template="Hi {name}")
>>> served.ref, served.log_kwargs
({'name': 'greet', 'version': '2'}, {'prompt': 'greet', 'prompt_version': '2'})
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypedDict

import httpx

__all__ = [
    "Fetch",
    "LogKwargs",
    "PromptCache",
    "ServedPrompt",
    "bucket",
    "embedded_fetch",
    "http_fetch",
]

logger = logging.getLogger("closedloop.sdk")

Variant = Literal["production", "candidate", "fallback"]
_RETRY_SECONDS = 5.0
Fetch = Callable[[str, str], Mapping[str, Any]]
"""``fetch(name, label)``: the body of ``GET /v1/prompts/{name}/resolve``; raises on failure."""


class LogKwargs(TypedDict):
    """The prompt arguments of :meth:`Client.log_interaction`."""

    prompt: str
    prompt_version: str


@dataclass(frozen=True, kw_only=True)
class ServedPrompt:
    """A prompt version as served to the app.

    Log it with the interaction it produced, so its quality counts for its version::

        client.log_interaction(question, answer, **served.log_kwargs)
    """

    name: str
    version: str
    template: str
    examples: tuple[Mapping[str, Any], ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    variant: Variant = "production"
    test_id: int | None = None

    @property
    def ref(self) -> dict[str, str]:
        """The ``prompt`` of an interaction event: ``{"name", "version"}``."""
        return {"name": self.name, "version": self.version}

    @property
    def log_kwargs(self) -> LogKwargs:
        """Keyword arguments of :meth:`Client.log_interaction`: ``prompt`` and
        ``prompt_version``."""
        return {"prompt": self.name, "prompt_version": self.version}


def bucket(test_id: int | str, user_id: str) -> float:
    """A user's stable position in [0, 1) within a test (BLAKE2b of both ids).

    >>> bucket(1, "u-1") == bucket(1, "u-1"), 0 <= bucket(1, "u-1") < 1
    (True, True)
    """
    digest = hashlib.blake2b(f"{test_id}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _version(name: str, data: Mapping[str, Any], variant: Variant, test: Any) -> ServedPrompt:
    return ServedPrompt(
        name=name,
        version=str(data["version"]),
        template=str(data["template"]),
        examples=tuple(dict(e) for e in data.get("examples") or ()),
        config=dict(data.get("config") or {}),
        variant=variant,
        test_id=test,
    )


@dataclass(frozen=True)
class _Entry:
    production: ServedPrompt
    candidate: ServedPrompt | None = None
    share: float = 0.0
    test_id: int | None = None


def _entry(name: str, body: Mapping[str, Any]) -> _Entry:
    test = body.get("test")
    production = _version(name, body["production"], "production", None)
    if not test:
        return _Entry(production)
    test_id = int(test["id"])
    candidate = _version(name, test["candidate"], "candidate", test_id)
    return _Entry(production, candidate, float(test["share"]), test_id)


class PromptCache:
    """Prompts by (name, label): first loads on a thread each, kept fresh by one daemon thread.

    Parameters
    ----------
    fetch
        Fetches one name's resolve body (HTTP or embedded); may raise.
    refresh_seconds
        How often each known name is fetched again (default 30).
    first_wait
        The most the first call for a name waits for its first fetch, in seconds (default
        0.5); later calls never wait.
    """

    def __init__(self, fetch: Fetch, *, refresh_seconds: float = 30.0, first_wait: float = 0.5):
        if refresh_seconds <= 0 or first_wait < 0:
            raise ValueError("refresh_seconds must be positive and first_wait not negative")
        self.fetch = fetch
        self.refresh_seconds = refresh_seconds
        self.first_wait = first_wait
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._known: dict[tuple[str, str], threading.Event] = {}
        # when each name is refreshed next: set once its first load has finished
        self._due: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = 0

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                if self._pid not in (0, os.getpid()):
                    # after a fork the parent's threads are gone, first loads in flight too
                    for key in self._known:
                        self._due.setdefault(key, 0.0)
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._loop, name="closedloop-prompts", daemon=True
                )
                self._thread.start()

    def _refresh(self, key: tuple[str, str]) -> bool:
        name, label = key
        try:
            entry = _entry(name, self.fetch(name, label))
        except Exception as exc:  # never into the app: served from the cache or the fallback
            logger.debug("closedloop could not refresh prompt %r (%s): %r", name, label, exc)
            return False
        else:
            with self._lock:
                self._entries[key] = entry
            return True
        finally:
            self._known[key].set()

    def _wait_after(self, ok: bool) -> float:
        # a failure is retried sooner: the fallback should not last a whole period
        return self.refresh_seconds if ok else min(self.refresh_seconds, _RETRY_SECONDS)

    def _first_load(self, key: tuple[str, str]) -> None:
        ok = self._refresh(key)
        with self._lock:
            self._due[key] = time.monotonic() + self._wait_after(ok)
        self._wake.set()  # the refresh loop takes the name over

    def _loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                keys = [key for key, due in self._due.items() if due <= now]
            for key in keys:
                ok = self._refresh(key)
                with self._lock:
                    self._due[key] = time.monotonic() + self._wait_after(ok)
            with self._lock:
                due = min(self._due.values(), default=now + self.refresh_seconds)
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()

    def get(
        self,
        name: str,
        *,
        fallback: str | ServedPrompt,
        user_id: str | None = None,
        label: str = "production",
    ) -> ServedPrompt:
        """The version of ``name`` to serve to ``user_id``; ``fallback`` when none is known."""
        key = (name, label)
        try:
            entry = self._entries.get(key)
            if entry is None and not self._closed:
                with self._lock:
                    first = key not in self._known
                    ready = self._known.setdefault(key, threading.Event())
                self._ensure_thread()
                if first:  # only the call that registered the name waits, and only once
                    threading.Thread(
                        target=self._first_load,
                        args=(key,),
                        name=f"closedloop-prompt-{name}",
                        daemon=True,  # a fetch that never returns must not hold the exit
                    ).start()
                    ready.wait(self.first_wait)
                    entry = self._entries.get(key)
            if entry is not None:
                if entry.candidate is not None and user_id is not None:
                    if bucket(entry.test_id or 0, user_id) < entry.share:
                        return entry.candidate
                return entry.production
        except Exception as exc:  # pragma: no cover - defensive: the app must not see it
            logger.debug("closedloop could not serve prompt %r: %r", name, exc)
        return self.fallback_for(name, fallback)

    @staticmethod
    def fallback_for(name: str, fallback: str | ServedPrompt) -> ServedPrompt:
        """``fallback`` served as variant ``fallback`` (a string is the template, version
        ``"fallback"``: its interactions count for neither arm of a test)."""
        if isinstance(fallback, ServedPrompt):
            return replace(fallback, variant="fallback")
        return ServedPrompt(name=name, version="fallback", template=fallback, variant="fallback")

    def close(self) -> None:
        """Stop the refresh thread (cached prompts stay served)."""
        self._closed = True
        self._wake.set()


def http_fetch(base_url: str, api_key: str, *, timeout: float = 2.0) -> Fetch:
    """A :data:`Fetch` over ``GET {base_url}/v1/prompts/{name}/resolve`` with ``api_key``."""

    def fetch(name: str, label: str) -> Mapping[str, Any]:
        url = f"{base_url.rstrip('/')}/v1/prompts/{urllib.parse.quote(name, safe='')}/resolve"
        response = httpx.get(
            url,
            params={"label": label},
            headers={"authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )
        response.raise_for_status()
        body: Mapping[str, Any] = response.json()
        return body

    return fetch


def embedded_fetch(transport: Any) -> Fetch:
    """A :data:`Fetch` through an embedded transport's runtime (read from the database)."""

    def fetch(name: str, label: str) -> Mapping[str, Any]:
        from closedloop.act.prompts import resolve

        runtime, key = transport._open()
        return resolve(runtime.engine, key.project_id, name, label=label).to_json()

    return fetch
