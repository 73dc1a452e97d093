"""Claude through the official ``anthropic`` SDK (Messages API), images as base64 blocks.

The SDK's own retries are off (``max_retries=0``): :mod:`atari_vlm.models.retry` decides, and the
completion reports how many retries it took. Since ``anthropic`` 1.0 the SDK no longer takes
``temperature``; models that accept it (the capability table's ``sampling: any``) get it through
``extra_body``; newer models answer 400 to sampling parameters. Thinking follows the model's rules
(Sonnet 5 thinks unless sent ``thinking: {"type": "disabled"}``), and the stable prefix of a request
(system prompt, exemplars) gets ``cache_control`` breakpoints so that later decisions read it from
Anthropic's prompt cache at a tenth of the input price.
"""

from __future__ import annotations

import base64
from typing import Any

from atari_vlm.errors import ModelError, require
from atari_vlm.models.base import ImagePart, Message, Request, TextPart, Usage
from atari_vlm.models.constrain import TOOL_NAME, choice_schema, read_tool_input
from atari_vlm.models.remote import MalformedResponse, Parsed, RemoteVLM
from atari_vlm.models.retry import Transient, classify_status, clip, parse_retry_after
from atari_vlm.models.transport import cap_body

__all__ = ["ANTHROPIC_KEY_ENV_VARS", "DEFAULT_BASE_URL", "AnthropicVLM"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_KEY_ENV_VARS: tuple[str, ...] = ("ANTHROPIC_API_KEY",)

# Anthropic's stop reasons in the provider-neutral words the rest of atari-vlm uses.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "stop"}
CACHE_BREAKPOINT = {"type": "ephemeral"}
"""A 5-minute cache breakpoint: decisions come seconds apart, and each read refreshes it."""


class AnthropicVLM(RemoteVLM):
    """A :class:`~atari_vlm.models.base.VLM` on Anthropic's Messages API (see :class:`RemoteVLM`)."""

    provider = "Anthropic"
    provider_id = "anthropic"
    key_env_vars = ANTHROPIC_KEY_ENV_VARS
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        model: str,
        send_temperature: bool | None = None,
        http_client: Any = None,
        **settings: Any,
    ) -> None:
        """``http_client``: an ``httpx2.AsyncClient`` for the SDK (tests pass one with a mock transport).
        ``send_temperature`` None: as the capability table says for the model."""
        super().__init__(model=model, **settings)
        self._anthropic = require("anthropic", extra="anthropic")
        self.send_temperature = self.sends_temperature if send_temperature is None else send_temperature
        # Passing key and base URL explicitly stops the SDK from reading credentials or profiles itself.
        # Every answer body is read with a byte cap (models/transport.py).
        http_client = http_client or self._anthropic.DefaultAsyncHttpxClient(timeout=self.timeout_s)
        self._client = self._anthropic.AsyncAnthropic(
            api_key=self._key,
            base_url=self.base_url,
            timeout=self.timeout_s,
            max_retries=0,
            default_query=self.base_query or None,
            http_client=cap_body(http_client),
        )

    async def aclose(self) -> None:
        await self._client.close()

    # -- wire format ---------------------------------------------------------------------------------

    def request_body(self, request: Request, *, constrained: bool | None = None) -> dict[str, Any]:
        """The keyword arguments of ``messages.create``; ``max_tokens`` is required by the API (and bounds
        thinking plus the answer, so it is raised by the reasoning level's allowance).

        A constrained request forces a tool call (``tool_choice`` of type ``tool``) whose input schema
        holds the legal actions as an enum; forced tool use excludes thinking, so thinking is off."""
        forced = self._wants_constraint(request, constrained)
        caching = self.capability.cache_mode == "explicit"
        prefix = set(request.prefix_parts()) if caching else set()
        system = self._system_text(request.messages)
        system_cached = bool(prefix) and any(
            m.role == "system" and all((i, j) in prefix for j in range(len(m.parts)))
            for i, m in enumerate(request.messages)
        )
        last = max((p for p in prefix if request.messages[p[0]].role != "system"), default=None)
        messages = [
            self._message(m, breakpoint_at=last[1] if last is not None and last[0] == i else None)
            for i, m in enumerate(request.messages)
            if m.role != "system"
        ]
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.answer_limit(request),
            "messages": messages,
        }
        if system:
            if system_cached:
                body["system"] = [{"type": "text", "text": system, "cache_control": dict(CACHE_BREAKPOINT)}]
            else:
                body["system"] = system
        if forced:
            body["tools"] = [
                {
                    "name": TOOL_NAME,
                    "description": "Play one of the legal actions.",
                    "input_schema": choice_schema(list(request.choices), request.reasoning),
                }
            ]
            body["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
            if self.capability.reasoning_control == "anthropic_adaptive":
                body["thinking"] = {"type": "disabled"}
        else:
            self._thinking(body)
        thinking_on = body.get("thinking", {}).get("type") not in (None, "disabled")
        if self.send_temperature and not thinking_on:  # thinking takes only the default temperature
            body["extra_body"] = {"temperature": request.temperature}
        return body

    def _thinking(self, body: dict[str, Any]) -> None:
        """The thinking fields of the model's control at this backend's reasoning level."""
        control, value = self.capability.reasoning_control, self.reasoning_value
        if value is None:
            return
        if control == "anthropic_adaptive":
            if self.reasoning == "off":
                body["thinking"] = dict(value)  # {"type": "disabled"}
            else:
                body["thinking"] = {"type": "adaptive"}
                body["output_config"] = {"effort": value}
        elif control == "anthropic_budget":
            body["thinking"] = {"type": "enabled", "budget_tokens": int(value)}

    def _message(self, message: Message, breakpoint_at: int | None = None) -> dict[str, Any]:
        if message.role == "assistant" and message.images:
            raise ValueError("images are only allowed in user messages, not 'assistant'")
        blocks = [self._block(p) for p in message.parts]
        if breakpoint_at is not None:
            blocks[breakpoint_at]["cache_control"] = dict(CACHE_BREAKPOINT)
        return {"role": message.role, "content": blocks}

    def _block(self, part: TextPart | ImagePart) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        data, mime = self._image_bytes(part)
        source = {"type": "base64", "media_type": mime, "data": base64.b64encode(data).decode("ascii")}
        return {"type": "image", "source": source}

    def _constraint_kind(self) -> str | None:
        return "forced_tool" if self.capability.forced_tool else None

    async def _send(self, body: dict[str, Any]) -> Any:
        return await self._client.messages.create(**body)

    def _parse(self, response: Any, request: Request | None = None) -> Parsed:
        content = getattr(response, "content", None)
        usage = getattr(response, "usage", None)
        if isinstance(response, str) or content is None or usage is None:
            raise MalformedResponse(f"no message in the response body: {clip(str(response))!r}")
        text = "".join(block.text for block in content if getattr(block, "type", None) == "text")
        pick = None
        if request is not None:
            call = next(
                (
                    b
                    for b in content
                    if getattr(b, "type", None) == "tool_use" and getattr(b, "name", None) == TOOL_NAME
                ),
                None,
            )
            if call is not None:
                pick, rendered = read_tool_input(getattr(call, "input", None))
                text = text or rendered
        reason = response.stop_reason or "stop"
        return Parsed(text, _usage(usage), response.model or "", _FINISH.get(reason, reason), choice=pick)

    # -- failures ------------------------------------------------------------------------------------

    def _verdict(self, exc: Exception) -> Transient | ModelError | None:
        sdk = self._anthropic
        transport = self._sdk_transport_verdict(sdk, exc)
        if transport is not None:
            return transport
        if isinstance(exc, sdk.APIStatusError):
            return classify_status(
                exc.status_code,
                where=self.where,
                model=self.model,
                server_says=_server_message(exc),
                key_hint=self.key_hint,
                retry_after_s=parse_retry_after(exc.response.headers),
            )
        if isinstance(exc, sdk.APIResponseValidationError):
            return Transient(f"malformed response: {clip(str(exc))}")
        return None


def _usage(usage: Any) -> Usage:
    """Billed input = uncached + cache writes + cache reads (Anthropic reports the three apart)."""
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    return Usage(
        input_tokens=(usage.input_tokens or 0) + read + written,
        output_tokens=usage.output_tokens or 0,
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def _server_message(exc: Any) -> str:
    """``error.message`` of Anthropic's error body (``{"type": "error", "error": {...}}``), else the SDK's."""
    message = getattr(exc, "api_message", None)
    if isinstance(message, str) and message:
        return message
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        inner = body["error"].get("message")
        if isinstance(inner, str):
            return inner
    return str(exc.message)
