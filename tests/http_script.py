"""Scripted HTTP answers for the API backends' tests, served through the SDKs' own HTTP layer.

Each SDK gets an ``httpx2.AsyncClient`` whose transport is an ``httpx2.MockTransport``: the SDK
builds, sends and parses real HTTP requests and responses, with no socket and no network.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

import cv2
import httpx2
import numpy as np
import pytest

from atari_vlm.errors import ModelError
from atari_vlm.models.base import Completion, ImagePart, Message, Request, TextPart

Answer = httpx2.Response | Exception | Callable[[httpx2.Request], httpx2.Response]


class HttpScript:
    """Answers requests in order from a queue, then with ``default``; records every request."""

    def __init__(self, default: Answer) -> None:
        self.default = default
        self.queue: deque[Answer] = deque()
        self.requests: list[httpx2.Request] = []
        self.sleeps: list[float] = []

    def then(self, *answers: Answer) -> HttpScript:
        self.queue.extend(answers)
        return self

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self._handle))

    async def sleep(self, seconds: float) -> None:
        """A backoff that records what it was asked to wait and returns at once."""
        self.sleeps.append(seconds)

    def _handle(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        answer = self.queue.popleft() if self.queue else self.default
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def error(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, json=body, headers=headers)


def decode_image(data: bytes) -> np.ndarray:
    """The pixels of an encoded image (asserts it decodes)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, "not a decodable image"
    return pixels


FRAME = np.zeros((210, 160, 3), np.uint8)
FRAME[100:110, 70:80] = 255
REQUEST = Request(
    (
        Message.text("system", "You play Pong."),
        Message("user", (TextPart("Frame:"), ImagePart(FRAME), TextPart("Your move?"))),
    ),
    max_tokens=64,
    temperature=0.0,
)


def build(vlm_class: Callable[..., Any], script: HttpScript, **settings: Any) -> Any:
    """A backend whose SDK talks to ``script``, with seeded jitter and backoffs that only record."""
    return vlm_class(**{"http_client": script.client(), "sleep": script.sleep, "seed": 0, **settings})


def run(vlm: Any, request: Request) -> Completion:
    """One ``generate`` on a fresh event loop, then close the backend."""

    async def go() -> Completion:
        try:
            return await vlm.generate(request)
        finally:
            await vlm.aclose()

    return asyncio.run(go())


def fails(vlm: Any, request: Request) -> ModelError:
    with pytest.raises(ModelError) as info:
        run(vlm, request)
    return info.value
