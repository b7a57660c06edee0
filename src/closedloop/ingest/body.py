"""Read a request body within limits, before and after gzip decompression."""

from __future__ import annotations

import zlib

from fastapi import Request

from closedloop.errors import ContractError, PayloadTooLarge

__all__ = ["UnsupportedMediaType", "read_body"]


class UnsupportedMediaType(ContractError):
    """The Content-Type or Content-Encoding is not one the endpoint takes."""


async def read_body(
    request: Request,
    limit: int,
    *,
    media_types: tuple[str, ...] = ("application/json",),
    encodings: tuple[str, ...] = ("identity", "gzip"),
) -> bytes:
    """The body, decompressed if gzip, never more than ``limit`` bytes in memory.

    Only ``media_types`` and ``encodings`` are taken (415 otherwise). A gzip bomb stops at
    ``limit + 1`` decompressed bytes.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in media_types:
        wanted = " or ".join(f"`Content-Type: {m}`" for m in media_types)
        raise UnsupportedMediaType("content-type", f"is {ctype or 'missing'}; send {wanted}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in encodings:
        allowed = " or ".join("no encoding" if e == "identity" else e for e in encodings)
        raise UnsupportedMediaType(
            "content-encoding", f"{encoding!r} is not supported here; send {allowed}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the body is {declared} bytes; the limit is {limit}: send smaller batches"
        )
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over {limit} bytes: send smaller batches")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if encoding == "identity":
        return raw
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ContractError("content-encoding", f"the gzip body is corrupt: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the body decompresses to over {limit} bytes: send smaller batches")
    if not inflater.eof:
        raise ContractError("content-encoding", "the gzip body is truncated")
    if inflater.unused_data:
        # Never ignore what follows the first gzip member: it would be data silently dropped.
        raise ContractError(
            "content-encoding",
            "the gzip body has data after its end: send one gzip member and nothing after it",
        )
    return out
