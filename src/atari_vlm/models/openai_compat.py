"""Any OpenAI-compatible chat completions endpoint: api.openai.com, vLLM, SGLang, ``transformers serve``.

Built on the official ``openai`` SDK with the SDK's own retries off: :mod:`atari_vlm.models.retry`
decides what is retried and reports how many retries a completion took. Settings, the key, the
concurrency bound, retries and redaction are :class:`~atari_vlm.models.remote.RemoteVLM`'s; this
module says how a request goes on the wire, how an answer is read and how the SDK's errors read.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import itertools
import json
import os
import re
from typing import Any, Literal

from atari_vlm import imaging
from atari_vlm.errors import ConfigError, DependencyNotInstalled, ModelError, require
from atari_vlm.models.base import Completion, ImagePart, Message, Request, TextPart, Usage
from atari_vlm.models.constrain import (
    TOOL_NAME,
    choice_gbnf,
    choice_probs_from_logprobs,
    choice_regex,
    choice_schema,
    read_choice,
)
from atari_vlm.models.endpoints import SERVER_KINDS, probe_server
from atari_vlm.models.remote import MalformedResponse, Parsed, RemoteVLM
from atari_vlm.models.retry import Transient, clip, parse_retry_after, redact
from atari_vlm.models.transport import cap_body
from atari_vlm.models.usage_check import read_count

__all__ = ["DEFAULT_BASE_URL", "OpenAICompatVLM"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PLACEHOLDER_API_KEY = "not-needed"
"""Sent to custom servers when no key is given: the SDK insists on one, local servers ignore it."""

ImageDetail = Literal["auto", "low", "high"]
IMAGE_DETAILS: tuple[str, ...] = ("auto", "low", "high")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Unlike :data:`atari_vlm.models.retry.RETRY_STATUSES`, no 529: that is Anthropic's "overloaded"."""
POOL_CONNECTIONS = 16
"""Requests in flight per SDK client on httpx: its pool scans every connection on each request."""
HttpBackend = Literal["auto", "aiohttp", "httpx"]
HTTP_BACKENDS: tuple[str, ...] = ("auto", "aiohttp", "httpx")
TOP_LOGPROBS = 20
"""Alternatives asked for at each token of a constrained answer (OpenAI's and vLLM's default cap)."""
CONSTRAINT_FIELDS: dict[str, tuple[str, str]] = {
    # server kind: (field without reasoning, field with a reasoning string first), as each documents it
    "openai": ("response_format", "response_format"),  # json_schema, strict
    "generic": ("response_format", "response_format"),
    "ollama": ("response_format", "response_format"),  # /v1 takes json_schema (grammar-constrained)
    "vllm": ("structured_outputs.choice", "structured_outputs.json"),  # guided_* is ignored since v0.12
    "sglang": ("regex", "response_format"),
    "llamacpp": ("grammar", "json_schema"),
}
"""How each kind of server is asked for an answer among the legal actions. ``transformers serve``
has no such field (it ignores ``response_format``): not constrained."""
_ACTION_VALUE = re.compile(r'"action"\s*:\s*"')


class OpenAICompatVLM(RemoteVLM):
    """A :class:`~atari_vlm.models.base.VLM` that talks to an OpenAI-compatible HTTP endpoint.

    ``name`` is the model name as sent on the wire. ``latency_s`` of a completion is the wall time of
    the whole :meth:`generate` call (waiting for a free slot, retries and backoff included): what the
    agent waited. ``concurrency`` bounds HTTP requests in flight; a request waiting out a backoff
    does not hold a slot. The other settings are :class:`~atari_vlm.models.remote.RemoteVLM`'s.
    """

    provider = "OpenAI"
    provider_id = "openai"
    key_env_vars = ("OPENAI_API_KEY",)
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        model: str,
        image_detail: ImageDetail = "auto",
        http_backend: HttpBackend = "auto",
        prompt_cache_key: str | None = None,
        server_kind: str = "auto",
        **settings: Any,
    ) -> None:
        """``prompt_cache_key``: sent to models that take one (OpenAI's, by the capability table) so that
        a run's requests, which share their stable prefix, reach the same cache; None derives one from
        the model and the prefix itself (the same for every decision of a run, and across a resume).
        ``server_kind``: which documented field constrains an answer (see ``CONSTRAINT_FIELDS``);
        ``auto``: OpenAI's own for OpenAI and its proxies, else asked of the server on the first
        constrained request (``endpoints.probe_server``)."""
        if server_kind not in SERVER_KINDS:
            raise ConfigError(f"server_kind must be one of {SERVER_KINDS}, got {server_kind!r}")
        if image_detail not in IMAGE_DETAILS:
            raise ConfigError(f"image_detail must be one of {IMAGE_DETAILS}, got {image_detail!r}")
        if http_backend not in HTTP_BACKENDS:
            raise ConfigError(f"http_backend must be one of {HTTP_BACKENDS}, got {http_backend!r}")
        self.image_detail = image_detail
        if prompt_cache_key is not None and (not prompt_cache_key or len(prompt_cache_key) > 64):
            raise ConfigError(f"prompt_cache_key must be 1-64 characters, got {len(prompt_cache_key)}")
        self.prompt_cache_key = prompt_cache_key
        super().__init__(model=model, **settings)
        official = not self.custom_endpoint or self.capability.pattern != "*"
        self.server_kind = "openai" if server_kind == "auto" and official else server_kind
        self._openai = require("openai", extra="openai")
        self._completion = require("openai.types.chat", extra="openai").ChatCompletion
        self.http_backend = self._pick_backend(http_backend)
        # Passing both explicitly stops the SDK from reading OPENAI_BASE_URL / OPENAI_API_KEY itself.
        options = {
            "api_key": self._key,
            "base_url": self.base_url,
            "timeout": self.timeout_s,
            "max_retries": 0,
            "default_query": self.base_query or None,
        }
        # Every answer body is read with a byte cap (models/transport.py).
        if self.http_backend == "aiohttp":
            # The SDK's own aiohttp transport: less client CPU per request than httpx, which is what
            # many games against one server are short of (BENCHMARKS.md, section 2).
            transport = cap_body(self._openai.DefaultAioHttpClient(timeout=self.timeout_s))
            self._clients = [self._openai.AsyncOpenAI(**options, http_client=transport)]
        else:
            # One client (one connection pool) per POOL_CONNECTIONS requests in flight, used in turn:
            # at 64 in flight, one pool's per-request scan of its connections costs 16% of the CPU.
            pools = -(-self.concurrency // POOL_CONNECTIONS)
            self._clients = [
                self._openai.AsyncOpenAI(
                    **options,
                    http_client=cap_body(self._openai.DefaultAsyncHttpxClient(timeout=self.timeout_s)),
                )
                for _ in range(pools)
            ]
        self._client = self._clients[0]
        self._turn = itertools.count()

    def _pick_backend(self, wanted: str) -> str:
        """aiohttp when asked or (``auto``) installed with the SDK's support for it, else httpx."""
        available = importlib.util.find_spec("aiohttp") is not None and hasattr(
            self._openai, "DefaultAioHttpClient"
        )
        if wanted == "aiohttp" and not available:
            raise DependencyNotInstalled(
                "http_backend='aiohttp' needs aiohttp and an openai SDK that supports it; "
                'run `pip install "openai[aiohttp]"`'
            )
        return "aiohttp" if wanted == "aiohttp" or (wanted == "auto" and available) else "httpx"

    def _resolve_key(self, api_key: str | None, base_url: str | None) -> str:
        """The explicit key, else OPENAI_API_KEY, else (custom servers only) a placeholder."""
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if base_url is not None:
            return PLACEHOLDER_API_KEY
        raise ConfigError(
            "no OpenAI API key: set the OPENAI_API_KEY environment variable or pass --api-key "
            "(or point --base-url at a server that needs none)"
        )

    def _repr_settings(self) -> dict[str, object]:
        items = list(super()._repr_settings().items())
        at = [name for name, _ in items].index("image_format") + 1  # image_detail right after it
        return dict([*items[:at], ("image_detail", self.image_detail), *items[at:]])

    async def aclose(self) -> None:
        for client in self._clients:
            await client.close()

    # -- wire format ---------------------------------------------------------------------------------

    def request_body(self, request: Request, *, constrained: bool | None = None) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` (the JSON body) for ``request``.

        The answer-length limit is always sent: servers running random or small models may never
        emit a stop token on their own. OpenAI's models get it as ``max_completion_tokens`` (the only
        name reasoning models accept, and one every chat model takes), raised to fit a reasoning
        level; compatible servers get the classic ``max_tokens``, which all of them read. Temperature
        goes only to models that take one; ``reasoning_effort`` and ``prompt_cache_key`` only to those
        the capability table says take them.
        """
        capability = self.capability
        messages = [self._message(m) for m in request.messages]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            capability.token_limit: self.answer_limit(request),
        }
        if self.sends_temperature:
            body["temperature"] = request.temperature
        if capability.reasoning_control == "openai_effort" and self.reasoning_value is not None:
            body["reasoning_effort"] = self.reasoning_value
        if capability.cache_key:
            body["prompt_cache_key"] = self.prompt_cache_key or self._derived_cache_key(request, messages)
        if self._wants_constraint(request, constrained):
            self._constrain(body, request)
        elif request.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    # -- constrained decisions -------------------------------------------------------------------

    def _constraint_kind(self) -> str | None:
        kind = "generic" if self.server_kind == "auto" else self.server_kind
        field = CONSTRAINT_FIELDS.get(kind)
        if field is None or (kind == "openai" and not self.capability.json_schema):
            return None
        return kind

    def _constraint_field(self, request: Request) -> str:
        kind = self._constraint_kind() or "generic"
        return CONSTRAINT_FIELDS[kind][1 if request.reasoning else 0]

    def _constrain(self, body: dict[str, Any], request: Request) -> None:
        """The answer restricted to ``request.choices``, in the field this kind of server documents."""
        choices, field = list(request.choices), self._constraint_field(request)
        schema = choice_schema(choices, request.reasoning)
        if field == "response_format":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": TOOL_NAME, "strict": True, "schema": schema},
            }
        elif field == "structured_outputs.choice":
            body["structured_outputs"] = {"choice": choices}
        elif field == "structured_outputs.json":
            body["structured_outputs"] = {"json": schema}
        elif field == "regex":
            body["regex"] = choice_regex(choices)
        elif field == "grammar":
            body["grammar"] = choice_gbnf(choices)
        elif field == "json_schema":
            body["json_schema"] = schema
        if self.capability.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS

    async def generate(self, request: Request) -> Completion:
        if request.decode == "constrained" and self.server_kind == "auto":
            await self._detect_kind()
        return await super().generate(request)

    async def _detect_kind(self) -> None:
        """Ask the server what it is, once (``auto``); a probe that fails leaves it ``generic``."""
        try:
            key = None if self._key == PLACEHOLDER_API_KEY else self._key
            limit = min(self.timeout_s, 10)
            # urllib's timeout is per read: the whole probe gets one deadline, as every call does.
            info = await asyncio.wait_for(
                asyncio.to_thread(probe_server, self.base_url, api_key=key, timeout_s=limit), 2 * limit
            )
            self.server_kind = info.kind
        except (ConfigError, TimeoutError):
            self.server_kind = "generic"

    def _derived_cache_key(self, request: Request, messages: list[dict[str, Any]]) -> str:
        """A key that names the stable prefix: the same for every decision of a run (and a resume of it)."""
        digest = hashlib.sha256(self.model.encode())
        for i, j in request.prefix_parts():
            content = messages[i]["content"]
            piece = content if isinstance(content, str) else content[j]
            digest.update(json.dumps(piece, sort_keys=True).encode())
        return "atari-vlm-" + digest.hexdigest()[:32]

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

    async def _send(self, body: dict[str, Any]) -> Any:
        # ``post`` (the SDK's documented way to reach any endpoint) sends the body as it is; it is
        # plain JSON already, and ``chat.completions.create`` would spend ~1 ms of CPU per request
        # walking it, image data URLs included, through the SDK's async type transform.
        client = self._clients[next(self._turn) % len(self._clients)]
        return await client.post("/chat/completions", body=body, cast_to=self._completion)

    def _parse(self, response: Any, request: Request | None = None) -> Parsed:
        # The SDK hands back the body as a str when the content type is not JSON.
        if isinstance(response, str) or not isinstance(getattr(response, "choices", None), list):
            raise MalformedResponse(f"no chat completion in the response body: {clip(str(response))!r}")
        if not response.choices:
            raise MalformedResponse("the response body has an empty list of choices")
        choice = response.choices[0]
        content = choice.message.content  # a choice that is not an object: AttributeError, retried
        if content is not None and not isinstance(content, str):
            raise MalformedResponse(f"the message content is a {type(content).__name__}, not a string")
        text = content or ""
        pick = probs = None
        if request is not None:
            as_json = self._constraint_field(request) in (
                "response_format",
                "structured_outputs.json",
                "json_schema",
            )
            pick = read_choice(text, as_json=as_json)
            if pick is not None:
                probs = self._choice_probs(choice, text, pick, request.choices, as_json)
        return Parsed(
            text=text,
            usage=_usage(response.usage),
            model=response.model if isinstance(response.model, str) else "",
            finish_reason=choice.finish_reason if isinstance(choice.finish_reason, str) else "stop",
            choice=pick,
            choice_probs=probs,
        )

    @staticmethod
    def _choice_probs(
        choice: Any, text: str, pick: str, choices: tuple[str, ...], as_json: bool
    ) -> dict[str, float] | None:
        """Each legal choice's probability, from the top log-probabilities where the pick begins."""
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if not isinstance(content, list) or not content:
            return None
        if as_json:
            match = _ACTION_VALUE.search(text)
            start = match.end() if match else -1
        else:
            start = text.find(pick)
        if start < 0 or not text[start:].startswith(pick):
            return None
        tokens = []
        for item in content[:4096]:
            token = getattr(item, "token", None)
            alternatives = getattr(item, "top_logprobs", None) or []
            if not isinstance(token, str):
                return None
            tokens.append(
                (token, [(getattr(a, "token", None), getattr(a, "logprob", None)) for a in alternatives[:64]])
            )
        return choice_probs_from_logprobs(tokens, text, start, choices)

    # -- failures ------------------------------------------------------------------------------------

    def _what(self) -> str:
        return f"chat completion with model {self.model!r} at {self.public_url}"

    def _verdict(self, exc: Exception) -> Transient | ModelError | None:
        if isinstance(exc, self._openai.APIStatusError):
            return self._classify_status(exc)
        return self._sdk_transport_verdict(self._openai, exc)

    def _classify_status(self, exc: Any) -> Transient | ModelError:
        status: int = exc.status_code
        server_says = clip(_server_message(exc))
        if status == 429 and exc.code == "insufficient_quota":
            return ModelError(f"{self.public_url} says the account is out of quota (HTTP 429): {server_says}")
        if status in RETRY_STATUSES:
            return Transient(
                f"HTTP {status}: {server_says}",
                parse_retry_after(exc.response.headers),
                rate_limited=status == 429,
            )
        if status in (401, 403):
            # The server's text is left out on purpose: some servers echo the (masked) key.
            return ModelError(
                f"{self.public_url} rejected the API key (HTTP {status}); check the key passed with "
                "--api-key or set in OPENAI_API_KEY, and that it may use this model"
            )
        if status == 404:
            return ModelError(
                f"model {self.model!r} or its endpoint was not found at {self.public_url} (HTTP 404: "
                f"{server_says}); check the model name (for a local server it must be the name the "
                f"server serves, see GET {self.public_url}/models) and that base_url ends in /v1"
            )
        if status in (400, 413, 422):
            return ModelError(f"{self.public_url} refused the request as bad (HTTP {status}): {server_says}")
        return ModelError(f"{self.public_url} answered HTTP {status}: {server_says}")

    def _redact(self, text: str) -> str:
        return redact(text, *self._url_secrets) if self._key == PLACEHOLDER_API_KEY else super()._redact(text)


def _count(value: Any) -> int:
    """A count as sent, or -1 where it is not a non-negative int (``usage_check`` then estimates)."""
    count = read_count(value)
    return -1 if count is None else count


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``: the SDK leaves parts of a body it could not type as dicts."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _usage(usage: Any) -> Usage:
    """OpenAI's usage: ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens`` (billed at the
    cache rate); ``completion_tokens`` includes ``completion_tokens_details.reasoning_tokens``. Missing
    or malformed counts read as -1 (usage_check replaces the usage with its estimate)."""
    if usage is None:
        return Usage(-1, -1)
    details = _field(usage, "prompt_tokens_details")
    completion_details = _field(usage, "completion_tokens_details")
    image_tokens = read_count(_field(details, "image_tokens")) if details is not None else None
    cached = _field(details, "cached_tokens") if details is not None else 0
    reasoning = _field(completion_details, "reasoning_tokens") if completion_details is not None else 0
    return Usage(
        input_tokens=_count(_field(usage, "prompt_tokens")),
        output_tokens=_count(_field(usage, "completion_tokens")),
        image_tokens=image_tokens,
        cached_input_tokens=_count(cached or 0),
        reasoning_tokens=_count(reasoning or 0),
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
