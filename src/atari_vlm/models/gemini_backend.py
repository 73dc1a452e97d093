"""Gemini through the official ``google-genai`` SDK (Gemini Developer API), images as inline parts.

The SDK's own retries are off (one attempt): :mod:`atari_vlm.models.retry` decides. The SDK gets an
``httpx2`` client of ours, so its transport (and the exceptions it raises) is always the same one,
whether or not aiohttp happens to be installed.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from typing import Any

from atari_vlm.errors import ModelError, require
from atari_vlm.models.base import ImagePart, Message, Request, TextPart, Usage
from atari_vlm.models.constrain import choice_probs_from_logprobs, read_choice
from atari_vlm.models.remote import MalformedResponse, Parsed, RemoteVLM
from atari_vlm.models.retry import Transient, classify_status, clip, parse_retry_after
from atari_vlm.models.transport import cap_body

__all__ = ["DEFAULT_BASE_URL", "GEMINI_KEY_ENV_VARS", "GeminiVLM"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
GEMINI_KEY_ENV_VARS: tuple[str, ...] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
LOGPROBS = 5
"""Alternatives asked for at each token of a constrained answer: only the pick's first token matters,
and Atari games have at most 18 actions whose first tokens are few."""
_ROLES = {"user": "user", "assistant": "model"}
_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _httpx() -> Any:
    """The HTTP library google-genai drives: httpx2 for google-genai 3.x, httpx before."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return require("httpx", extra="gemini")


class GeminiVLM(RemoteVLM):
    """A :class:`~atari_vlm.models.base.VLM` on the Gemini API (see :class:`RemoteVLM`).

    Thinking follows the model's control in the capability table at the backend's reasoning level:
    ``thinking_budget`` for 2.5-series models (0 turns it off), ``thinking_level`` for Gemini 3
    (``minimal`` is the least); the two may not be combined. ``thinking_budget`` given here overrides
    the table. Thinking tokens are billed as output.
    """

    provider = "Gemini"
    provider_id = "gemini"
    key_env_vars = GEMINI_KEY_ENV_VARS
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        model: str,
        thinking_budget: int | None = None,
        http_client: Any = None,
        **settings: Any,
    ) -> None:
        """``http_client``: an ``httpx2.AsyncClient`` for the SDK (tests pass one with a mock transport)."""
        super().__init__(model=model, **settings)
        genai = require("google.genai", extra="gemini", package="google-genai")
        self._genai_errors = require("google.genai.errors", extra="gemini", package="google-genai")
        self._http = _httpx()
        self.thinking_budget = thinking_budget
        self._own_http_client = http_client is None
        # Every answer body is read with a byte cap (models/transport.py).
        self._http_client = cap_body(http_client or self._http.AsyncClient(timeout=self.timeout_s))
        options = genai.types.HttpOptions(
            base_url=self.base_url,
            timeout=math.ceil(self.timeout_s * 1000),  # milliseconds
            retry_options=genai.types.HttpRetryOptions(attempts=1),
            httpx_async_client=self._http_client,
        )
        # vertexai=False: the Gemini Developer API whatever GOOGLE_GENAI_USE_VERTEXAI says.
        self._client = genai.Client(api_key=self._key, vertexai=False, http_options=options)

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        if self._own_http_client:
            await self._http_client.aclose()

    # -- wire format ---------------------------------------------------------------------------------

    def request_body(self, request: Request, *, constrained: bool | None = None) -> dict[str, Any]:
        """The keyword arguments of ``aio.models.generate_content``, as plain dicts.

        A constrained request answers with ``response_mime_type`` ``text/x.enum`` and an enum schema of
        the legal actions, or (reasoning first) a JSON object schema whose ``action`` is that enum."""
        config: dict[str, Any] = {"max_output_tokens": self.answer_limit(request)}
        if self.sends_temperature:
            config["temperature"] = request.temperature
        system = self._system_text(request.messages)
        if system:
            config["system_instruction"] = system
        if self._wants_constraint(request, constrained):
            choices = list(request.choices)
            if request.reasoning:
                config["response_mime_type"] = "application/json"
                config["response_schema"] = {
                    "type": "OBJECT",
                    "properties": {
                        "reasoning": {"type": "STRING"},
                        "action": {"type": "STRING", "enum": choices},
                    },
                    "required": ["reasoning", "action"],
                    "property_ordering": ["reasoning", "action"],
                }
            else:
                config["response_mime_type"] = "text/x.enum"
                config["response_schema"] = {"type": "STRING", "enum": choices}
            if self.capability.logprobs:
                config["response_logprobs"] = True
                config["logprobs"] = LOGPROBS
        elif request.json_mode:
            config["response_mime_type"] = "application/json"
        if thinking := self._thinking_config():
            config["thinking_config"] = thinking
        contents = [self._content(m) for m in request.messages if m.role != "system"]
        return {"model": self.model, "contents": contents, "config": config}

    def _thinking_config(self) -> dict[str, Any] | None:
        if self.thinking_budget is not None:
            return {"thinking_budget": self.thinking_budget}
        control, value = self.capability.reasoning_control, self.reasoning_value
        if value is None:
            return None
        if control == "gemini_budget":
            return {"thinking_budget": int(value)}
        if control == "gemini_level":
            return {"thinking_level": str(value).upper()}
        return None

    def _content(self, message: Message) -> dict[str, Any]:
        if message.role == "assistant" and message.images:
            raise ValueError("images are only allowed in user messages, not 'assistant'")
        return {"role": _ROLES[message.role], "parts": [self._part(p) for p in message.parts]}

    def _part(self, part: TextPart | ImagePart) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"text": part.text}
        data, mime = self._image_bytes(part)
        return {"inline_data": {"data": data, "mime_type": mime}}

    def _constraint_kind(self) -> str | None:
        return "enum" if self.capability.enum_mime else None

    def _status(self, exc: Exception) -> int | None:
        if isinstance(exc, self._genai_errors.APIError):
            return int(exc.code or 0)
        return None

    async def _send(self, body: dict[str, Any]) -> Any:
        return await self._client.aio.models.generate_content(**body)

    def _parse(self, response: Any, request: Request | None = None) -> Parsed:
        usage = _usage(getattr(response, "usage_metadata", None))
        model = getattr(response, "model_version", None) or ""
        candidates = getattr(response, "candidates", None)
        if not candidates:
            feedback = getattr(response, "prompt_feedback", None)
            blocked = getattr(feedback, "block_reason", None)
            if blocked is None:
                raise MalformedResponse(f"no candidates in the response body: {clip(str(response))!r}")
            # A refused prompt is an answer, not a failure: it is reported, not retried.
            return Parsed("", usage, model, f"blocked: {_enum_name(blocked)}")
        candidate = candidates[0]
        parts = getattr(candidate.content, "parts", None) or []
        text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", None))
        reason = _enum_name(candidate.finish_reason) if candidate.finish_reason is not None else "STOP"
        pick = probs = None
        if request is not None:
            pick = read_choice(text, as_json=request.reasoning)
            if pick is not None and not request.reasoning:
                probs = _choice_probs(candidate, text, pick, request.choices)
        return Parsed(
            text, usage, model, _FINISH.get(reason, reason.lower()), choice=pick, choice_probs=probs
        )

    # -- failures ------------------------------------------------------------------------------------

    def _verdict(self, exc: Exception) -> Transient | ModelError | None:
        http = self._http
        if isinstance(exc, http.TransportError):  # timeouts included, named from their root cause
            return self._transport(exc)
        if isinstance(exc, self._genai_errors.APIError):
            status = int(exc.code or 0)
            message = str(exc.message or exc.status or exc)
            label = None
            if status == 400 and _is_key_error(exc.details, message):
                # Gemini answers a bad key with 400 INVALID_ARGUMENT / API_KEY_INVALID: a key error.
                status, label = 401, "HTTP 400 API_KEY_INVALID"
            return classify_status(
                status,
                label=label,
                where=self.where,
                model=self.model,
                server_says=f"{exc.status}: {message}" if exc.status else message,
                key_hint=self.key_hint,
                retry_after_s=_retry_after(exc),
            )
        pydantic = sys.modules.get("pydantic")  # the SDK types answers with it: loaded if it answered
        if pydantic is not None and isinstance(exc, pydantic.ValidationError):
            # A body of the wrong shape (a usage count that is a word, a string for an object).
            return Transient(f"malformed response: {clip(str(exc).splitlines()[0])}")
        return None


def _usage(meta: Any) -> Usage:
    """Prompt tokens (``cached_content_token_count`` of them from the implicit cache) in; candidates plus
    thinking tokens out (both billed)."""
    if meta is None:
        return Usage()
    images = [
        d.token_count or 0
        for d in (meta.prompt_tokens_details or [])
        if _enum_name(getattr(d, "modality", None)) == "IMAGE"
    ]
    prompt = meta.prompt_token_count or 0
    thoughts = meta.thoughts_token_count or 0
    return Usage(
        input_tokens=prompt,
        output_tokens=(meta.candidates_token_count or 0) + thoughts,
        image_tokens=sum(images) if images else None,
        cached_input_tokens=min(meta.cached_content_token_count or 0, prompt),
        reasoning_tokens=thoughts,
    )


def _choice_probs(candidate: Any, text: str, pick: str, choices: tuple[str, ...]) -> dict[str, float] | None:
    """Each legal choice's probability from ``logprobs_result.top_candidates`` (an enum answer)."""
    result = getattr(candidate, "logprobs_result", None)
    chosen = getattr(result, "chosen_candidates", None) or []
    top = getattr(result, "top_candidates", None) or []
    start = text.find(pick)
    if not chosen or len(top) != len(chosen) or start < 0:
        return None
    tokens = []
    for step, alternatives in zip(chosen[:4096], top, strict=False):
        token = getattr(step, "token", None)
        if not isinstance(token, str):
            return None
        options = getattr(alternatives, "candidates", None) or []
        tokens.append(
            (token, [(getattr(c, "token", None), getattr(c, "log_probability", None)) for c in options[:64]])
        )
    return choice_probs_from_logprobs(tokens, text, start, choices)


def _enum_name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _error_details(details: Any) -> list[dict[str, Any]]:
    """The ``error.details`` list of a Google API error body (``google.rpc`` messages)."""
    error = details.get("error", details) if isinstance(details, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    return [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []


def _is_key_error(details: Any, message: str) -> bool:
    reasons = {str(d.get("reason", "")) for d in _error_details(details)}
    return any(r.startswith("API_KEY") for r in reasons) or "api key" in message.lower()


def _retry_after(exc: Any) -> float | None:
    """Retry-After headers if any, else the ``google.rpc.RetryInfo`` delay ("30s") in the body."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None and (seconds := parse_retry_after(headers)) is not None:
        return seconds
    for detail in _error_details(exc.details):
        if str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
