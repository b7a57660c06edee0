"""``wrap_openai(client)``: log every chat completion of the official ``openai`` client.

``client.chat.completions.create`` is replaced, on this client instance only, by a wrapper that
calls the original and logs an interaction (model, messages, output, tokens, latency) to
closedloop. Streams (``stream=True``) are wrapped so that chunks pass through unchanged and the
assembled output is logged when the stream ends or is closed. Results and exceptions reach the
app unchanged; logging never raises. Works for ``OpenAI`` and ``AsyncOpenAI`` (and Azure).

``openai`` stays an optional dependency: this module imports it only inside
:func:`wrap_openai`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["wrap_openai"]

logger = logging.getLogger("closedloop.sdk")

C = TypeVar("C")


def _messages(messages: Any) -> list[dict[str, Any]] | str:
    out: list[dict[str, Any]] = []
    try:
        for m in messages or ():
            m = m if isinstance(m, Mapping) else getattr(m, "__dict__", {})
            content = m.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
            message: dict[str, Any] = {"role": str(m.get("role") or "user")}
            if content is not None:
                message["content"] = str(content)
            if m.get("name"):
                message["name"] = str(m["name"])
            out.append(message)
    except Exception:
        return repr(messages)
    return out or ""


class _Record:
    """What one call will log; filled from the response or the stream."""

    def __init__(self, wrapper: _Wrapper, kwargs: dict[str, Any]) -> None:
        self.wrapper = wrapper
        self.kwargs = kwargs
        self.started = time.perf_counter()
        self.model: str | None = kwargs.get("model")
        self.parts: list[str] = []
        self.usage: Any = None
        self.done = False

    def chunk(self, chunk: Any) -> None:
        try:
            self.model = getattr(chunk, "model", None) or self.model
            for choice in getattr(chunk, "choices", None) or ():
                if getattr(choice, "index", 0) == 0:
                    text = getattr(getattr(choice, "delta", None), "content", None)
                    if text:
                        self.parts.append(text)
            if getattr(chunk, "usage", None) is not None:
                self.usage = chunk.usage
        except Exception:  # pragma: no cover - defensive
            pass

    def response(self, response: Any) -> None:
        try:
            self.model = getattr(response, "model", None) or self.model
            choices = getattr(response, "choices", None) or ()
            if choices:
                content = getattr(choices[0].message, "content", None)
                if content is not None:
                    self.parts.append(content)
            self.usage = getattr(response, "usage", None)
        except Exception:  # pragma: no cover - defensive
            pass

    def finish(self, error: BaseException | None = None, *, streamed: bool = False) -> None:
        if self.done:
            return
        self.done = True
        try:
            usage = self.usage
            metadata: dict[str, Any] = {"integration": "openai"}
            if streamed:
                metadata["stream"] = True
            if error is not None:
                metadata["error"] = {"type": type(error).__name__, "message": str(error)[:2000]}
            self.wrapper.target().log_interaction(
                _messages(self.kwargs.get("messages")),
                "".join(self.parts) if (self.parts or error is None) else None,
                model=self.model,
                provider=self.wrapper.provider,
                latency_ms=(time.perf_counter() - self.started) * 1000.0,
                input_tokens=getattr(usage, "prompt_tokens", None),
                output_tokens=getattr(usage, "completion_tokens", None),
                total_tokens=getattr(usage, "total_tokens", None),
                metadata=metadata,
            )
        except Exception as exc:
            logger.debug("closedloop could not log an OpenAI call: %r", exc)


class _Stream:
    """A sync stream proxy: chunks pass through; the call is logged at the end."""

    def __init__(self, stream: Any, record: _Record) -> None:
        self._stream = stream
        self._record = record

    def __iter__(self) -> Iterator[Any]:
        error: BaseException | None = None
        try:
            for chunk in self._stream:
                self._record.chunk(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._record.finish(error, streamed=True)

    def __next__(self) -> Any:
        try:
            chunk = next(self._stream)
        except StopIteration:
            self._record.finish(streamed=True)
            raise
        except BaseException as exc:
            self._record.finish(exc, streamed=True)
            raise
        self._record.chunk(chunk)
        return chunk

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._record.finish(streamed=True)

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _AsyncStream:
    """An async stream proxy: chunks pass through; the call is logged at the end."""

    def __init__(self, stream: Any, record: _Record) -> None:
        self._stream = stream
        self._record = record

    async def __aiter__(self) -> AsyncIterator[Any]:
        error: BaseException | None = None
        try:
            async for chunk in self._stream:
                self._record.chunk(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._record.finish(error, streamed=True)

    async def __anext__(self) -> Any:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._record.finish(streamed=True)
            raise
        except BaseException as exc:
            self._record.finish(exc, streamed=True)
            raise
        self._record.chunk(chunk)
        return chunk

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._record.finish(streamed=True)

    async def __aenter__(self) -> _AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Wrapper:
    def __init__(self, client: Any, provider: str) -> None:
        self.client = client
        self.provider = provider

    def target(self) -> Any:
        if self.client is not None:
            return self.client
        from closedloop.sdk.client import get_client

        return get_client()


def wrap_openai(client: C, *, closedloop_client: Any = None, provider: str = "openai") -> C:
    """Log every ``client.chat.completions.create`` call of an ``openai`` client.

    Parameters
    ----------
    client
        An ``openai.OpenAI`` or ``openai.AsyncOpenAI`` (or Azure) client; it is returned,
        patched in place, and otherwise behaves exactly as before.
    closedloop_client
        The :class:`~closedloop.sdk.client.Client` to log to (default the global client).
    provider
        The provider recorded with the model.
    """
    import openai

    completions: Any = client.chat.completions  # type: ignore[attr-defined]
    original = completions.create
    if getattr(original, "__closedloop_wrapped__", False):
        return client
    wrapper = _Wrapper(closedloop_client, provider)

    if isinstance(client, openai.AsyncOpenAI):

        @functools.wraps(original)
        async def acreate(*args: Any, **kwargs: Any) -> Any:
            record = _Record(wrapper, kwargs)
            try:
                result = await original(*args, **kwargs)
            except BaseException as exc:
                record.finish(exc)
                raise
            if isinstance(result, openai.AsyncStream):
                return _AsyncStream(result, record)
            record.response(result)
            record.finish()
            return result

        acreate.__closedloop_wrapped__ = True  # type: ignore[attr-defined]
        completions.create = acreate
        return client

    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        record = _Record(wrapper, kwargs)
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            record.finish(exc)
            raise
        if isinstance(result, openai.Stream):
            return _Stream(result, record)
        record.response(result)
        record.finish()
        return result

    create.__closedloop_wrapped__ = True  # type: ignore[attr-defined]
    completions.create = create
    return client
