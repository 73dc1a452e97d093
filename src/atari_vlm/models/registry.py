"""From a ``--model`` string to a backend.

Accepted forms:

- ``demo``: a tiny random-weight VLM built locally (offline, seconds, cached). It exercises the whole
  pipeline; its answers are noise, and everything that shows it says so.
- ``pong-tiny``: the same tiny VLM after atari-vlm trained it on RAM-expert Pong demonstrations
  (:mod:`atari_vlm.models.trained`: built on first use, about 20 s on 2 idle cores, cached). It plays
  Pong well above random; it is not a general VLM, and everything that shows it says so.
- ``openai:<model>``: the OpenAI API, or any OpenAI-compatible server with ``base_url``
  (vLLM, Ollama, LM Studio, SGLang, ``transformers serve``).
- ``anthropic:<model>`` / ``gemini:<model>``: Claude / Gemini through their official SDKs.
- ``local:<hf id or dir>``: a Hugging Face checkpoint from the local cache (never downloaded here).
- a preset name (``gpt-4o``, ``qwen2.5-vl-3b``, ... see :mod:`atari_vlm.models.presets`).
- a directory holding a Hugging Face image-text-to-text checkpoint: loaded in-process.
- ``auto``: a server named by ``--base-url`` or ``OPENAI_BASE_URL`` (its first listed model, unless
  ``ATARI_VLM_OPENAI_MODEL`` names one); else the OpenAI API when ``OPENAI_API_KEY`` is set
  (``$ATARI_VLM_OPENAI_MODEL``, default gpt-4o-mini); otherwise ``demo``, with a warning.

Endpoints follow the SDKs' own conventions: without ``--base-url``, the API backends use
``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL`` / ``GOOGLE_GEMINI_BASE_URL`` when set (a company
gateway, a LiteLLM proxy). A preset behind any base URL is taken to be a proxy for the same model:
its price and model rules still apply. A base URL is checked before anything is loaded, and is
recorded (``LoadedModel.base_url``) without credentials.

Each provider is a lazily imported module: nothing here imports an SDK until that provider is used.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from atari_vlm.errors import ConfigError
from atari_vlm.models.base import VLM
from atari_vlm.models.endpoints import (
    base_url_from_env,
    probe_server,
    safe_url,
    validate_base_url,
)
from atari_vlm.models.presets import (
    FREE,
    PROVIDERS,
    Preset,
    Prices,
    find_preset,
    local_snapshot,
    preset_for_model,
    suggest,
)
from atari_vlm.models.trained import TRAINED_LABEL, TRAINED_MARKER, TRAINED_MODEL
from atari_vlm.spec import ModelSpec

DEMO_WARNING = (
    "model 'demo' has RANDOM WEIGHTS: it tests the pipeline end to end, its moves are noise and its "
    "scores mean nothing"
)
TINY_WARNING = (
    "{path} is a tiny checkpoint built by atari-vlm with RANDOM WEIGHTS: its moves are noise and its "
    "scores mean nothing"
)
TRAINED_WARNING = (
    f"model {TRAINED_MODEL!r} is a {TRAINED_LABEL}: it learnt Pong from the state text, with the basic "
    "prompt and the default observation; any other game or setting it plays no better than chance"
)
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
DEFAULT_CONCURRENCY = 8
"""Requests in flight to an API when the spec leaves it open (the runner sets one per game)."""
MODEL_FORMS = (
    f"'demo', '{TRAINED_MODEL}', 'auto', a preset name, 'openai:<model>' (with --base-url for a local "
    "server), 'anthropic:<model>', 'gemini:<model>', 'local:<hf id>', or a checkpoint directory"
)


def check_base_url(url: str) -> str:
    """``--base-url`` checked before play (the CLI calls this): the URL, or a ConfigError saying why not."""
    return validate_base_url(url)


@dataclass
class LoadedModel:
    """A backend plus what the user should be told about it."""

    vlm: VLM
    spec: str  # what the run records (never a secret)
    provider: str
    random_weights: bool = False
    warning: str | None = None
    label: str | None = None  # what the model is, where that is not obvious (pong-tiny: a tiny trained model)
    prices: Prices | None = None  # USD per million tokens; None: unknown (a custom server, an unlisted model)
    preset: str | None = None  # the preset name, when one was used

    @property
    def base_url(self) -> str | None:
        """The endpoint the backend talks to, without credentials (None for local models)."""
        url = getattr(self.vlm, "public_url", None)
        return url if isinstance(url, str) and url else None

    def describe(self) -> dict[str, Any]:
        """What a run records about its model (never a secret). The endpoint is :attr:`base_url`."""
        described: dict[str, Any] = {
            "spec": self.spec,
            "provider": self.provider,
            "random_weights": self.random_weights,
        }
        if self.label:
            described["label"] = self.label
        return described


def _load_openai(model: str, options: ModelSpec, **backend_options: Any) -> LoadedModel:
    from atari_vlm.models.openai_compat import OpenAICompatVLM

    if not model:
        raise ConfigError("'openai:' needs a model name, e.g. openai:gpt-4o-mini")
    vlm = OpenAICompatVLM(
        model=model,
        base_url=options.base_url,
        api_key=options.api_key,
        concurrency=options.concurrency or DEFAULT_CONCURRENCY,
        image_detail=options.image_detail,
        reasoning=options.reasoning,
        timeout_s=options.timeout_s,
        retry_s=options.retry_s,
        prompt_cache_key=options.prompt_cache_key,
        server_kind=options.server_kind,
        **backend_options,
    )
    return LoadedModel(vlm, f"openai:{model}", "openai")


def _load_local(path: str, options: ModelSpec, *, demo: bool = False) -> LoadedModel:
    from atari_vlm.models.local import LocalVLM
    from atari_vlm.models.tiny import DEMO_MARKER

    # A tiny checkpoint built by atari-vlm carries a marker file: random weights, or (the trained
    # player's) trained by atari-vlm on expert demonstrations, whatever its path.
    tiny = (Path(path).expanduser() / DEMO_MARKER).is_file()
    trained = (Path(path).expanduser() / TRAINED_MARKER).is_file()
    vlm = LocalVLM(
        path,
        device=options.device,
        dtype=options.dtype,
        quantize=options.quantize,
        max_batch_size=options.max_batch_size,
        trust_remote_code=options.trust_remote_code,
    )
    warning = DEMO_WARNING if demo else (TINY_WARNING.format(path=path) if tiny else None)
    loaded = LoadedModel(
        vlm, "demo" if demo else str(path), "local", random_weights=demo or tiny, warning=warning
    )
    if trained and not loaded.random_weights:
        loaded.label, loaded.warning = TRAINED_LABEL, TRAINED_WARNING
    return loaded


def _load_demo(options: ModelSpec) -> LoadedModel:
    from atari_vlm.models.tiny import demo_checkpoint

    return _load_local(str(demo_checkpoint()), options, demo=True)


def _load_trained(options: ModelSpec) -> LoadedModel:
    from atari_vlm.models.trained import trained_checkpoint

    loaded = _load_local(str(trained_checkpoint()), options)
    loaded.spec = TRAINED_MODEL
    return loaded


def _served_model(base_url: str, api_key: str | None) -> str:
    """The first model a server lists at ``/models`` (vLLM, Ollama and friends serve one or a few)."""
    try:
        info = probe_server(base_url, api_key=api_key, timeout_s=10)
    except ConfigError as exc:
        raise ConfigError(
            f"'auto' found the server {safe_url(base_url)} but {exc}; name the model with "
            "--model openai:<served name>"
        ) from None
    if not info.models:
        raise ConfigError(
            f"the server {info.base_url} lists no models; name one with --model openai:<served name>"
        )
    return info.models[0]


def _load_auto(options: ModelSpec) -> LoadedModel:
    base_url = options.base_url or base_url_from_env("openai")
    if options.api_key or os.environ.get("OPENAI_API_KEY") or base_url:
        model = os.environ.get("ATARI_VLM_OPENAI_MODEL")
        if not model:
            model = _served_model(base_url, options.api_key) if base_url else DEFAULT_OPENAI_MODEL
        return _load_openai(model, dataclasses.replace(options, base_url=base_url))
    loaded = _load_demo(options)
    loaded.warning = f"no API key or server configured, so 'auto' chose 'demo'. {DEMO_WARNING}"
    return loaded


def _sdk_loader(provider: str, module: str, class_name: str, example: str):
    """A loader for a provider whose backend takes model, key, base_url and concurrency (one mechanism)."""

    def load(model: str, options: ModelSpec, **backend_options: Any) -> LoadedModel:
        if not model:
            raise ConfigError(f"'{provider}:' needs a model name, e.g. {provider}:{example}")
        backend = getattr(importlib.import_module(module), class_name)
        vlm = backend(
            model=model,
            api_key=options.api_key,
            base_url=options.base_url,
            concurrency=options.concurrency or DEFAULT_CONCURRENCY,
            reasoning=options.reasoning,
            timeout_s=options.timeout_s,
            retry_s=options.retry_s,
            **backend_options,
        )
        return LoadedModel(vlm, f"{provider}:{model}", provider)

    return load


_load_anthropic = _sdk_loader(
    "anthropic", "atari_vlm.models.anthropic_backend", "AnthropicVLM", "claude-sonnet-5"
)
_load_gemini = _sdk_loader("gemini", "atari_vlm.models.gemini_backend", "GeminiVLM", "gemini-3.5-flash-lite")


def _load_local_id(model_id: str, options: ModelSpec) -> LoadedModel:
    """A checkpoint directory, or a Hugging Face id whose weights are already in the local cache."""
    snapshot = local_snapshot(model_id)
    if snapshot is None:
        raise ConfigError(
            f"{model_id!r} is not a checkpoint directory and its weights are not in the local Hugging Face "
            f"cache; download them once with `hf download {model_id}` (needs network), or pass a "
            "checkpoint directory"
        )
    loaded = _load_local(str(snapshot), options)
    loaded.spec = f"local:{model_id}"
    return loaded


_PREFIXES: dict[str, Callable[..., LoadedModel]] = {
    "openai": _load_openai,
    "anthropic": _load_anthropic,
    "gemini": _load_gemini,
    "local": _load_local_id,
}


def _load_preset(preset: Preset, options: ModelSpec) -> LoadedModel:
    """The backend of a preset's provider, with the preset's model id, options and prices."""
    if preset.trust_remote_code and not options.trust_remote_code:
        raise ConfigError(
            f"preset {preset.name!r} ({preset.model_id}) runs Python code from its model repository; "
            "pass --trust-remote-code if you trust that repository"
        )
    api_preset = preset.provider != "local"
    backend_options = dict(preset.backend_options)
    if api_preset:
        # A preset behind --base-url or the SDK's variable is a proxy for the same model: its rules
        # (and, below, its price) still apply, whatever the host.
        backend_options.setdefault("capability", preset.capability)
    loaded = _PREFIXES[preset.provider](preset.model_id, options, **backend_options)
    loaded.spec = loaded.spec if api_preset else preset.name
    loaded.prices = preset.prices
    loaded.preset = preset.name
    capability = preset.capability
    if capability is not None and capability.lifecycle.retired:
        when = f" on {capability.lifecycle.date}" if capability.lifecycle.date else ""
        loaded.warning = (
            f"preset {preset.name!r} ({preset.model_id}) was retired by {preset.provider}{when}: expect an "
            f"error answer. {preset.prices.note or ''}".strip()
        )
    elif preset.legacy:
        loaded.warning = f"preset {preset.name!r} is a legacy model: {preset.prices.note}"
    return loaded


def _known_prices(loaded: LoadedModel) -> Prices | None:
    """Local models cost nothing per token; a model on its provider's own API is priced by its
    preset, if one lists it; anything behind another URL (a local server, a proxy) is unknown.
    """
    if loaded.provider == "local":
        return FREE
    provider = PROVIDERS.get(loaded.provider)
    host = urlparse(str(getattr(loaded.vlm, "base_url", "") or "")).hostname
    if provider is None or host != provider.api_host:
        return None
    preset = preset_for_model(loaded.provider, loaded.spec.partition(":")[2])
    return preset.prices if preset else None


def load_model(model: str | ModelSpec) -> LoadedModel:
    """Build the backend a ``--model`` string (or a whole model section of the spec) names.

    Raises:
        ConfigError: the spec fits none of the accepted forms, or its backend cannot be set up
            (missing key, missing package, missing checkpoint files).
    """
    if isinstance(model, str):
        if not model.strip():
            raise ConfigError(f"--model must be one of {MODEL_FORMS}; got {model!r}")
        model = ModelSpec(model=model)
    options = model
    spec = model.model
    for provider in ("openai", "anthropic", "gemini"):
        base_url_from_env(provider)  # a malformed OPENAI_BASE_URL & co. is refused before anything loads
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--model must be one of {MODEL_FORMS}; got {spec!r}")
    spec = spec.strip()
    prefix, sep, rest = spec.partition(":")
    if spec == "demo":
        loaded = _load_demo(options)
    elif spec == TRAINED_MODEL:
        loaded = _load_trained(options)
    elif spec == "auto":
        loaded = _load_auto(options)
    elif sep and prefix in _PREFIXES:
        loaded = _PREFIXES[prefix](rest, options)
    elif Path(spec).expanduser().is_dir():
        loaded = _load_local(str(Path(spec).expanduser()), options)
    elif preset := find_preset(spec):
        loaded = _load_preset(preset, options)
    else:
        raise ConfigError(
            f"unknown model {spec!r}: not a directory, and not one of {MODEL_FORMS}. {suggest(spec)}"
        )
    if loaded.prices is None:
        loaded.prices = _known_prices(loaded)
    return loaded
