"""Claude through the official ``anthropic`` SDK (Messages API), images as base64 blocks.

The SDK's own retries are off (``max_retries=0``): :mod:`atari_vlm.models.retry` decides, and the
completion reports how many retries it took. Since ``anthropic`` 1.0 the SDK no longer takes
``temperature``; models that accept it get it through ``extra_body`` when ``send_temperature`` is on
(the presets of older Claude models turn it on; newer models answer 400 to sampling parameters).
"""

from __future__ import annotations

import base64
from typing import Any

from atari_vlm.errors import ModelError, require
from atari_vlm.models.base import ImagePart, Message, Request, TextPart, Usage
from atari_vlm.models.remote import MalformedResponse, Parsed, RemoteVLM
from atari_vlm.models.retry import Transient, classify_status, clip, parse_retry_after

__all__ = ["ANTHROPIC_KEY_ENV_VARS", "DEFAULT_BASE_URL", "AnthropicVLM"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_KEY_ENV_VARS: tuple[str, ...] = ("ANTHROPIC_API_KEY",)

# Anthropic's stop reasons in the provider-neutral words the rest of atari-vlm uses.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicVLM(RemoteVLM):
    """A :class:`~atari_vlm.models.base.VLM` on Anthropic's Messages API (see :class:`RemoteVLM`)."""

    provider = "Anthropic"
    key_env_vars = ANTHROPIC_KEY_ENV_VARS
    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        model: str,
        send_temperature: bool = False,
        http_client: Any = None,
        **settings: Any,
    ) -> None:
        """``http_client``: an ``httpx2.AsyncClient`` for the SDK (tests pass one with a mock transport)."""
        super().__init__(model=model, **settings)
        self._anthropic = require("anthropic", extra="anthropic")
        self.send_temperature = send_temperature
        # Passing key and base URL explicitly stops the SDK from reading credentials or profiles itself.
        self._client = self._anthropic.AsyncAnthropic(
            api_key=self._key,
            base_url=self.base_url,
            timeout=self.timeout_s,
            max_retries=0,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        await self._client.close()

    # -- wire format ---------------------------------------------------------------------------------

    def request_body(self, request: Request) -> dict[str, Any]:
        """The keyword arguments of ``messages.create``; ``max_tokens`` is required by the API."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": [self._message(m) for m in request.messages if m.role != "system"],
        }
        system = self._system_text(request.messages)
        if system:
            body["system"] = system
        if self.send_temperature:
            body["extra_body"] = {"temperature": request.temperature}
        return body

    def _message(self, message: Message) -> dict[str, Any]:
        if message.role == "assistant" and message.images:
            raise ValueError("images are only allowed in user messages, not 'assistant'")
        return {"role": message.role, "content": [self._block(p) for p in message.parts]}

    def _block(self, part: TextPart | ImagePart) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        data, mime = self._image_bytes(part)
        source = {"type": "base64", "media_type": mime, "data": base64.b64encode(data).decode("ascii")}
        return {"type": "image", "source": source}

    async def _send(self, body: dict[str, Any]) -> Any:
        return await self._client.messages.create(**body)

    def _parse(self, response: Any) -> Parsed:
        content = getattr(response, "content", None)
        usage = getattr(response, "usage", None)
        if isinstance(response, str) or content is None or usage is None:
            raise MalformedResponse(f"no message in the response body: {clip(str(response))!r}")
        text = "".join(block.text for block in content if getattr(block, "type", None) == "text")
        reason = response.stop_reason or "stop"
        return Parsed(text, _usage(usage), response.model or "", _FINISH.get(reason, reason))

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
    """Billed input = uncached + cache writes + cache reads (Anthropic reports them apart)."""
    cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    return Usage(input_tokens=(usage.input_tokens or 0) + cached, output_tokens=usage.output_tokens or 0)


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
