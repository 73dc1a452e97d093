"""Any OpenAI-compatible chat completions endpoint: api.openai.com, vLLM, SGLang, ``transformers serve``.

Built on the official ``openai`` SDK with the SDK's own retries off: :mod:`atari_vlm.models.retry`
decides what is retried and reports how many retries a completion took. The API key lives only
inside the SDK client; it is kept out of ``repr``, errors and logs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any, Literal

from atari_vlm import imaging
from atari_vlm.errors import ConfigError, ModelError, require
from atari_vlm.models.base import Completion, ImagePart, Message, Request, TextPart, Usage
from atari_vlm.models.retry import RetryPolicy, Sleep, Transient, parse_retry_after, with_retries

__all__ = ["DEFAULT_BASE_URL", "OpenAICompatVLM"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_API_KEY = "not-needed"
"""Sent to custom servers when no key is given: the SDK insists on one, local servers ignore it."""

ImageDetail = Literal["auto", "low", "high"]
IMAGE_DETAILS: tuple[str, ...] = ("auto", "low", "high")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SERVER_MESSAGE_CHARS = 300


class _MalformedResponse(Exception):
    """A 200 whose body is not a usable chat completion (a proxy's HTML page, a cut-off body)."""


class OpenAICompatVLM:
    """A :class:`~atari_vlm.models.base.VLM` that talks to an OpenAI-compatible HTTP endpoint.

    ``name`` is the model name as sent on the wire. ``latency_s`` of a completion is the wall time of
    the whole :meth:`generate` call (waiting for a free slot, retries and backoff included): what the
    agent waited. ``concurrency`` bounds HTTP requests in flight; a request waiting out a backoff
    does not hold a slot.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        image_format: imaging.ImageFormat = "jpeg",
        jpeg_quality: int = 90,
        image_detail: ImageDetail = "auto",
        timeout_s: float = 60.0,
        max_retries: int = 4,
        concurrency: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        seed: int | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if not model:
            raise ConfigError("model must be a non-empty model name")
        if image_format not in imaging.IMAGE_FORMATS:
            raise ConfigError(f"image_format must be one of {imaging.IMAGE_FORMATS}, got {image_format!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        if image_detail not in IMAGE_DETAILS:
            raise ConfigError(f"image_detail must be one of {IMAGE_DETAILS}, got {image_detail!r}")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self._policy = RetryPolicy(max_retries, backoff_base_s, backoff_max_s)
        self._openai = require("openai", extra="openai")

        self.name = model
        self.model = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.image_detail = image_detail
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._rng = random.Random(seed)
        self._sleep: Sleep = sleep or asyncio.sleep
        self._semaphore = asyncio.Semaphore(concurrency)
        # Passing both explicitly stops the SDK from reading OPENAI_BASE_URL / OPENAI_API_KEY itself.
        self._client = self._openai.AsyncOpenAI(
            api_key=self._resolve_key(api_key, custom_server=base_url is not None),
            base_url=self.base_url,
            timeout=timeout_s,
            max_retries=0,
        )

    @staticmethod
    def _resolve_key(api_key: str | None, *, custom_server: bool) -> str:
        """The explicit key, else OPENAI_API_KEY, else (custom servers only) a placeholder."""
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if custom_server:
            return PLACEHOLDER_API_KEY
        raise ConfigError(
            "no OpenAI API key: set the OPENAI_API_KEY environment variable or pass --api-key "
            "(or point --base-url at a server that needs none)"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, "
            f"image_format={self.image_format!r}, image_detail={self.image_detail!r}, "
            f"timeout_s={self.timeout_s}, max_retries={self._policy.max_retries}, "
            f"concurrency={self.concurrency})"
        )

    __str__ = __repr__

    # -- VLM protocol --------------------------------------------------------------------------------

    async def generate(self, request: Request) -> Completion:
        """Send one chat completion request, retrying transient failures (see the class docstring)."""
        kwargs = self.request_body(request)
        start = time.perf_counter()
        response, retries = await with_retries(
            lambda: self._attempt(kwargs),
            classify=self._classify,
            policy=self._policy,
            rng=self._rng,
            sleep=self._sleep,
            what=f"chat completion with model {self.model!r} at {self.base_url}",
        )
        latency = time.perf_counter() - start
        choice = response.choices[0]
        return Completion(
            text=choice.message.content or "",
            usage=_usage(response.usage),
            latency_s=latency,
            model=response.model or self.model,
            finish_reason=choice.finish_reason or "stop",
            retries=retries,
        )

    async def aclose(self) -> None:
        await self._client.close()

    # -- wire format ---------------------------------------------------------------------------------

    def request_body(self, request: Request) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` (the JSON body) for ``request``.

        ``max_tokens`` is always sent: servers running random or small models may never emit a stop
        token on their own.
        """
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [self._message(m) for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def _message(self, message: Message) -> dict[str, Any]:
        if message.role != "user":
            # System and assistant turns as plain strings: every compatible server accepts that form.
            if message.images:
                raise ValueError(f"images are only allowed in user messages, not {message.role!r}")
            return {"role": message.role, "content": message.joined_text}
        return {"role": "user", "content": [self._part(p) for p in message.parts]}

    def _part(self, part: TextPart | ImagePart) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        url = imaging.data_url(part.pixels, self.image_format, self.jpeg_quality)
        return {"type": "image_url", "image_url": {"url": url, "detail": self.image_detail}}

    async def _attempt(self, kwargs: dict[str, Any]) -> Any:
        async with self._semaphore:
            response = await self._client.chat.completions.create(**kwargs)
        # The SDK hands back the body as a str when the content type is not JSON.
        if isinstance(response, str) or not getattr(response, "choices", None):
            raise _MalformedResponse(f"no chat completion in the response body: {_clip(str(response))!r}")
        return response

    # -- failures ------------------------------------------------------------------------------------

    def _classify(self, exc: Exception) -> Transient | ModelError | None:
        """Transient (retry), fatal (a ModelError saying what to fix) or not ours (None: re-raise)."""
        verdict = self._verdict(exc)
        if isinstance(verdict, Transient):
            return Transient(self._redact(verdict.reason), verdict.retry_after_s)
        if isinstance(verdict, ModelError):
            return ModelError(self._redact(str(verdict)))
        return None

    def _verdict(self, exc: Exception) -> Transient | ModelError | None:
        openai = self._openai
        if isinstance(exc, openai.APITimeoutError):
            return Transient(f"no answer within timeout_s={self.timeout_s}")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            return Transient(f"connection error: {_clip(detail)}")
        if isinstance(exc, (_MalformedResponse, json.JSONDecodeError)):
            return Transient(f"malformed response ({_clip(str(exc))}); is base_url {self.base_url} right?")
        if isinstance(exc, openai.APIStatusError):
            return self._classify_status(exc)
        return None

    def _classify_status(self, exc: Any) -> Transient | ModelError:
        status: int = exc.status_code
        server_says = _clip(_server_message(exc))
        if status == 429 and exc.code == "insufficient_quota":
            return ModelError(f"{self.base_url} says the account is out of quota (HTTP 429): {server_says}")
        if status in RETRY_STATUSES:
            return Transient(f"HTTP {status}: {server_says}", parse_retry_after(exc.response.headers))
        if status in (401, 403):
            # The server's text is left out on purpose: some servers echo the (masked) key.
            return ModelError(
                f"{self.base_url} rejected the API key (HTTP {status}); check the key passed with "
                "--api-key or set in OPENAI_API_KEY, and that it may use this model"
            )
        if status == 404:
            return ModelError(
                f"model {self.model!r} or its endpoint was not found at {self.base_url} (HTTP 404: "
                f"{server_says}); check the model name (for a local server it must be the name the "
                f"server serves, see GET {self.base_url}/models) and that base_url ends in /v1"
            )
        if status in (400, 413, 422):
            return ModelError(f"{self.base_url} refused the request as bad (HTTP {status}): {server_says}")
        return ModelError(f"{self.base_url} answered HTTP {status}: {server_says}")

    def _redact(self, text: str) -> str:
        key = self._client.api_key
        if isinstance(key, str) and key != PLACEHOLDER_API_KEY and len(key) >= 4:
            text = text.replace(key, "***")
        return text


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    image_tokens = getattr(details, "image_tokens", None) if details is not None else None
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        image_tokens=image_tokens if isinstance(image_tokens, int) else None,
    )


def _server_message(exc: Any) -> str:
    """``error.message`` (OpenAI style) or ``detail`` (FastAPI style) of the body, else the SDK's message."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(exc.message)


def _clip(text: str, limit: int = SERVER_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
