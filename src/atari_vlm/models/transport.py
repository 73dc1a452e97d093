"""Answers read with a byte cap: a hostile or broken server cannot fill memory with one answer.

Every hosted-API backend's SDK sends through an ``httpx2.AsyncClient`` (the openai and anthropic
SDKs' own, Gemini's passed in). :func:`cap_body` wraps its transports so that a body is refused as
soon as its declared length or the bytes actually read pass :data:`MAX_BODY_BYTES`; what was read
so far is dropped with the connection. The text inside a body that fits is cut later, to
:data:`MAX_ANSWER_CHARS` (:func:`cut_answer`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

__all__ = ["CUT_MARK", "MAX_ANSWER_CHARS", "MAX_BODY_BYTES", "BodyTooLarge", "cap_body", "cut_answer"]

MAX_BODY_BYTES = 32 * 1024 * 1024
"""The largest answer body read (32 MiB): far above any real completion of a game decision (a few
kB), low enough that a body, its JSON and its text fit in a few hundred MB at most."""
MAX_ANSWER_CHARS = 32_768
"""The longest answer text kept: what steps.jsonl, the memory and the report hold of one answer
(a decision's answer is a few hundred characters; high reasoning levels write a few thousand)."""


class BodyTooLarge(Exception):
    """An answer body over the byte cap (retried like any malformed answer)."""


CUT_MARK = "\n[... answer cut by atari-vlm ...]\n"


def cut_answer(text: str, limit: int = MAX_ANSWER_CHARS) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters (its head and its tail, where answers put the action,
    around :data:`CUT_MARK`), and whether it was cut."""
    if len(text) <= limit:
        return text, False
    head = (limit - len(CUT_MARK)) // 2
    tail = limit - len(CUT_MARK) - head
    return text[:head] + CUT_MARK + text[len(text) - tail :], True


def cap_body(client: Any, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """``client`` (an ``httpx2.AsyncClient``) with every transport reading at most ``max_bytes``.

    The client keeps its transports in ``_transport`` and ``_mounts`` (proxies); httpx2 has no
    public way to wrap the transport of a client built by an SDK, so they are wrapped in place.
    """
    import httpx2

    class CappedStream(httpx2.AsyncByteStream):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        async def __aiter__(self) -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in self._inner:
                seen += len(chunk)
                if seen > max_bytes:
                    raise BodyTooLarge(f"answer body over {max_bytes} bytes")
                yield chunk

        async def aclose(self) -> None:
            await self._inner.aclose()

    class CappedTransport(httpx2.AsyncBaseTransport):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def handle_async_request(self, request: Any) -> Any:
            response = await self.inner.handle_async_request(request)
            declared = response.headers.get("content-length", "")
            if declared.strip().isdigit() and int(declared) > max_bytes:
                await response.aclose()
                raise BodyTooLarge(f"answer body of {declared} bytes, over {max_bytes}")
            return httpx2.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=CappedStream(response.stream),
                extensions=response.extensions,
                request=request,
            )

        async def aclose(self) -> None:
            await self.inner.aclose()

        async def __aexit__(self, *args: Any) -> None:
            await self.inner.__aexit__(*args)

    client._transport = CappedTransport(client._transport)
    mounts = getattr(client, "_mounts", None)
    if isinstance(mounts, dict):
        for pattern, transport in list(mounts.items()):
            if transport is not None:
                mounts[pattern] = CappedTransport(transport)
    return client
