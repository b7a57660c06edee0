"""``@closedloop.trace``: log each call of a function as an interaction.

Works on plain and ``async`` functions, generators and async generators (their yielded items
are collected and logged when the stream ends, is closed or fails). The input is the call's
arguments, the output the result (joined text for streams of strings), with the latency and,
when the function raised, the exception's type and message in ``metadata.error``. The
function's result and exceptions pass through unchanged; tracing itself never raises.

Inside a traced (non-generator) call, :func:`current_interaction_id` names the interaction
being recorded, so the app can attach feedback to it later.

>>> from closedloop.sdk.client import Client
>>> client = Client(enabled=False)
>>> @trace(client=client)
... def answer(question: str) -> str:
...     return "4"
>>> answer("2+2?")
'4'
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, TypeVar, overload

__all__ = ["current_interaction_id", "trace"]

logger = logging.getLogger("closedloop.sdk")

F = TypeVar("F", bound=Callable[..., Any])

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "closedloop_interaction", default=None
)


def current_interaction_id() -> str | None:
    """The id of the interaction the enclosing traced call will log, if any."""
    return _CURRENT.get()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        from closedloop.sdk.client import _encoder

        return _encoder.encode(value).decode()
    except Exception:
        return repr(value)


def _input(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if len(args) == 1 and not kwargs and isinstance(args[0], str):
        return args[0]
    try:
        bound = inspect.signature(func).bind_partial(*args, **kwargs)
        params = dict(bound.arguments)
        params.pop("self", None)
        params.pop("cls", None)
        if len(params) == 1 and isinstance(next(iter(params.values())), str):
            return str(next(iter(params.values())))
        return _text(params)
    except Exception:
        return _text({"args": list(args), "kwargs": kwargs})


def _stream_output(items: list[Any]) -> str:
    if all(isinstance(i, str) for i in items):
        return "".join(items)
    return _text(items)


class _Tap:
    """Wraps a generator so ``yield from`` forwards send/throw/close and items are kept."""

    def __init__(self, gen: Any, items: list[Any]) -> None:
        self.gen = gen
        self.items = items

    def __iter__(self) -> _Tap:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        item = self.gen.send(value)
        self.items.append(item)
        return item

    def throw(self, *args: Any) -> Any:
        item = self.gen.throw(*args)
        self.items.append(item)
        return item

    def close(self) -> None:
        self.gen.close()


@overload
def trace(func: F, /) -> F: ...


@overload
def trace(
    func: None = None,
    /,
    *,
    name: str | None = None,
    client: Any = None,
    model: str | None = None,
    tags: list[str] | None = None,
    capture_input: bool = True,
    capture_output: bool = True,
) -> Callable[[F], F]: ...


def trace(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    client: Any = None,
    model: str | None = None,
    tags: list[str] | None = None,
    capture_input: bool = True,
    capture_output: bool = True,
) -> Any:
    """Decorate ``func`` so each call is logged as an interaction.

    Parameters
    ----------
    name
        The name recorded in ``metadata.function`` (default the function's qualified name).
    client
        The :class:`~closedloop.sdk.client.Client` to log to (default the global client).
    model
        A model name to record.
    capture_input, capture_output
        ``False`` records ``"<redacted>"`` instead of the arguments or the result.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        label = name or getattr(fn, "__qualname__", repr(fn))

        def record(
            event_id: str,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            started: float,
            output: Any = None,
            error: BaseException | None = None,
            streamed: list[Any] | None = None,
        ) -> None:
            try:
                from closedloop.sdk.client import get_client

                target = client if client is not None else get_client()
                metadata: dict[str, Any] = {"function": label}
                if error is not None:
                    metadata["error"] = {"type": type(error).__name__, "message": str(error)}
                if streamed is not None:
                    metadata["stream_items"] = len(streamed)
                    output = _stream_output(streamed)
                text_out = None
                if error is None or streamed:
                    text_out = _text(output) if capture_output else "<redacted>"
                target.log_interaction(
                    _input(fn, args, kwargs) if capture_input else "<redacted>",
                    text_out,
                    model=model,
                    latency_ms=(time.perf_counter() - started) * 1000.0,
                    metadata=metadata,
                    tags=tags,
                    id=event_id,
                )
            except Exception as exc:  # tracing never breaks the traced function
                logger.debug("closedloop.trace could not record a call: %r", exc)

        def begin() -> tuple[str, float]:
            from closedloop.sdk.envelope import new_id

            return new_id(), time.perf_counter()

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                event_id, started = begin()
                items: list[Any] = []
                error: BaseException | None = None
                try:
                    agen = fn(*args, **kwargs)
                    to_send: Any = None
                    thrown: BaseException | None = None
                    while True:
                        try:
                            if thrown is not None:
                                exc, thrown = thrown, None
                                item = await agen.athrow(exc)
                            else:
                                item = await agen.asend(to_send)
                        except StopAsyncIteration:
                            return
                        items.append(item)
                        try:
                            to_send = yield item
                        except GeneratorExit:
                            await agen.aclose()
                            raise
                        except BaseException as exc:
                            thrown, to_send = exc, None
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    record(event_id, args, kwargs, started, error=error, streamed=items)

            return agen_wrapper

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                event_id, started = begin()
                items: list[Any] = []
                error: BaseException | None = None
                try:
                    return (yield from _Tap(fn(*args, **kwargs), items))
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    record(event_id, args, kwargs, started, error=error, streamed=items)

            return gen_wrapper

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                event_id, started = begin()
                token = _CURRENT.set(event_id)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    _reset(token)
                    record(event_id, args, kwargs, started, error=exc)
                    raise
                _reset(token)
                record(event_id, args, kwargs, started, output=result)
                return result

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            event_id, started = begin()
            token = _CURRENT.set(event_id)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                _reset(token)
                record(event_id, args, kwargs, started, error=exc)
                raise
            _reset(token)
            record(event_id, args, kwargs, started, output=result)
            return result

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


def _reset(token: contextvars.Token[str | None]) -> None:
    try:
        _CURRENT.reset(token)
    except ValueError:  # a generator resumed in another context
        _CURRENT.set(None)
