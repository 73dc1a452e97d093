"""Where a model is served: base URLs checked before play, shown without credentials, and probed.

A base URL comes from ``--base-url``, else the provider SDK's own variable (``OPENAI_BASE_URL``,
``ANTHROPIC_BASE_URL``, ``GOOGLE_GEMINI_BASE_URL``: a company gateway, a LiteLLM proxy), else the
provider's public API. :func:`validate_base_url` refuses a malformed one up front; :func:`safe_url`
is the form every message, ``repr`` and run file shows (no user, password, query or fragment);
:func:`probe_server` asks a server what it serves, names what went wrong when it cannot (connection
refused, DNS, TLS, timeout, an HTTP status), and says which kind of server it is where it tells.
Standard library only: nothing here imports a provider SDK.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from atari_vlm.errors import ConfigError
from atari_vlm.models.retry import describe_transport_error
from atari_vlm.spec import SERVER_KINDS
from atari_vlm.urls import safe_url, validate_base_url

__all__ = [
    "BASE_URL_ENV_VARS",
    "SERVER_KINDS",
    "ServerInfo",
    "base_url_from_env",
    "probe_server",
    "safe_url",
    "validate_base_url",
]

BASE_URL_ENV_VARS: dict[str, str] = {
    "openai": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
    "gemini": "GOOGLE_GEMINI_BASE_URL",
}
"""The variable each provider's official SDK reads for another endpoint."""


OWNED_BY_KINDS = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp"}
"""``owned_by`` values these servers write for themselves on every model they list: vLLM
(``ModelCard.owned_by = "vllm"``), SGLang (``"sglang"``), llama.cpp's llama-server (``"llamacpp"``)."""

MAX_PROBE_BYTES = 1 << 20


def base_url_from_env(provider: str) -> str | None:
    """The provider SDK's own base-URL variable, validated, or None when it is not set."""
    name = BASE_URL_ENV_VARS.get(provider)
    value = os.environ.get(name) if name else None
    return validate_base_url(value, what=name) if value else None


@dataclass(frozen=True)
class ServerInfo:
    """What a probe learnt about an OpenAI-compatible server."""

    base_url: str  # safe_url form
    models: tuple[str, ...] = ()
    kind: str = "generic"  # one of SERVER_KINDS but "auto"
    evidence: str = ""  # how the kind was told (for logs and reports)
    owned_by: tuple[str, ...] = field(default=(), repr=False)


def _get(url: str, api_key: str | None, timeout_s: float) -> tuple[int, object]:
    """(status, parsed JSON or None) of a GET; transport failures raise ConfigError naming them."""
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read(MAX_PROBE_BYTES + 1)
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError) as exc:
        cause = (
            exc.reason
            if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException)
            else exc
        )
        why = describe_transport_error(cause, base_url=url, timeout_s=timeout_s)
        raise ConfigError(f"cannot reach {safe_url(url)}: {why}") from None
    if len(raw) > MAX_PROBE_BYTES:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _root(base_url: str) -> str:
    """The server's root: the base URL without a trailing ``/v1`` (where vLLM and friends mount it)."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def probe_server(base_url: str, *, api_key: str | None = None, timeout_s: float = 5.0) -> ServerInfo:
    """List what an OpenAI-compatible server serves (``GET <base>/models``) and tell its kind.

    Raises a ConfigError naming the failure when the server cannot be reached (refused, DNS, TLS,
    timeout), answers an HTTP error, or does not answer a model list. The kind comes from what the
    server says of itself: ``owned_by`` on its model list (vLLM, SGLang, llama.cpp), or Ollama's
    ``GET /api/version``; anything else is ``generic``.
    """
    base_url = validate_base_url(base_url)
    shown = safe_url(base_url)
    status, body = _get(base_url + "/models", api_key, timeout_s)
    if status in (401, 403):
        raise ConfigError(
            f"{shown} refused the key (HTTP {status} on GET /models); pass the server's key with --api-key"
        )
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ConfigError(
            f"{shown} answered GET /models with HTTP {status} and no model list; is it an OpenAI-compatible "
            "server, and does the base URL end in /v1?"
        )
    entries = [e for e in body["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)][:1000]
    models = tuple(e["id"][:300] for e in entries)
    owners = tuple(str(e.get("owned_by"))[:100] for e in entries if isinstance(e.get("owned_by"), str))
    for owner in owners:
        if owner in OWNED_BY_KINDS:
            return ServerInfo(
                shown, models, OWNED_BY_KINDS[owner], f"owned_by={owner!r} on GET /models", owners
            )
    try:
        status, version = _get(_root(base_url) + "/api/version", api_key, timeout_s)
    except ConfigError:
        status, version = 0, None
    if status == 200 and isinstance(version, dict) and isinstance(version.get("version"), str):
        return ServerInfo(shown, models, "ollama", "GET /api/version answered a version (Ollama)", owners)
    return ServerInfo(shown, models, "generic", "the server does not say which kind it is", owners)
