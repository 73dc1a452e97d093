"""From a ``--model`` string to a backend.

Accepted forms:

- ``demo``: a tiny random-weight VLM built locally (offline, seconds, cached). It exercises the whole
  pipeline; its answers are noise, and everything that shows it says so.
- ``openai:<model>``: the OpenAI API, or any OpenAI-compatible server with ``base_url``
  (vLLM, Ollama, LM Studio, SGLang, ``transformers serve``).
- a directory holding a Hugging Face image-text-to-text checkpoint: loaded in-process.
- ``auto``: a server named by ``--base-url`` or ``OPENAI_BASE_URL`` (its first listed model, unless
  ``ATARI_VLM_OPENAI_MODEL`` names one); else the OpenAI API when ``OPENAI_API_KEY`` is set
  (``$ATARI_VLM_OPENAI_MODEL``, default gpt-4o-mini); otherwise ``demo``, with a warning.

Each provider is a lazily imported module: nothing here imports an SDK until that provider is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atari_vlm.errors import ConfigError
from atari_vlm.models.base import VLM

DEMO_WARNING = (
    "model 'demo' has RANDOM WEIGHTS: it tests the pipeline end to end, its moves are noise and its "
    "scores mean nothing"
)
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"
MODEL_FORMS = (
    "'demo', 'auto', 'openai:<model>' (with --base-url for a local server), or a checkpoint directory"
)


@dataclass(frozen=True)
class ModelOptions:
    """Settings that apply to whichever backend the spec names; each backend takes the ones it uses."""

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    device: str = "cpu"
    dtype: str = "auto"
    quantize: str | None = None
    concurrency: int = 8
    max_batch_size: int = 8
    image_detail: str = "auto"


@dataclass
class LoadedModel:
    """A backend plus what the user should be told about it."""

    vlm: VLM
    spec: str  # what the run records (never a secret)
    provider: str
    random_weights: bool = False
    warning: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "provider": self.provider, "random_weights": self.random_weights}


def _load_openai(model: str, options: ModelOptions) -> LoadedModel:
    from atari_vlm.models.openai_compat import OpenAICompatVLM

    if not model:
        raise ConfigError("'openai:' needs a model name, e.g. openai:gpt-4o-mini")
    vlm = OpenAICompatVLM(
        model=model,
        base_url=options.base_url,
        api_key=options.api_key,
        concurrency=options.concurrency,
        image_detail=options.image_detail,
    )
    return LoadedModel(vlm, f"openai:{model}", "openai")


def _load_local(path: str, options: ModelOptions, *, random_weights: bool = False) -> LoadedModel:
    from atari_vlm.models.local import LocalVLM

    vlm = LocalVLM(
        path,
        device=options.device,
        dtype=options.dtype,
        quantize=options.quantize,
        max_batch_size=options.max_batch_size,
    )
    spec = "demo" if random_weights else str(path)
    return LoadedModel(
        vlm, spec, "local", random_weights=random_weights, warning=DEMO_WARNING if random_weights else None
    )


def _load_demo(options: ModelOptions) -> LoadedModel:
    from atari_vlm.models.tiny import demo_checkpoint

    return _load_local(str(demo_checkpoint()), options, random_weights=True)


def _served_model(base_url: str, api_key: str | None) -> str:
    """The first model a server lists at ``/models`` (vLLM, Ollama and friends serve one or a few)."""
    import json
    import urllib.request

    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key or 'not-needed'}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            models = [m["id"] for m in json.loads(response.read())["data"]]
    except Exception as exc:  # any failure means the same to the user: no usable server there
        raise ConfigError(
            f"'auto' found the server {base_url} but could not list its models at {url} "
            f"({type(exc).__name__}); name the model with --model openai:<served name>"
        ) from None
    if not models:
        raise ConfigError(
            f"the server {base_url} lists no models; name one with --model openai:<served name>"
        )
    return models[0]


def _load_auto(options: ModelOptions) -> LoadedModel:
    base_url = options.base_url or os.environ.get("OPENAI_BASE_URL")
    if options.api_key or os.environ.get("OPENAI_API_KEY") or base_url:
        model = os.environ.get("ATARI_VLM_OPENAI_MODEL")
        if not model:
            model = _served_model(base_url, options.api_key) if base_url else DEFAULT_OPENAI_MODEL
        return _load_openai(model, ModelOptions(**{**options.__dict__, "base_url": base_url}))
    loaded = _load_demo(options)
    loaded.warning = f"no API key or server configured, so 'auto' chose 'demo'. {DEMO_WARNING}"
    return loaded


_PREFIXES: dict[str, Callable[[str, ModelOptions], LoadedModel]] = {"openai": _load_openai}


def load_model(spec: str, options: ModelOptions | None = None) -> LoadedModel:
    """Build the backend a ``--model`` string names.

    Raises:
        ConfigError: the spec fits none of the accepted forms, or its backend cannot be set up
            (missing key, missing package, missing checkpoint files).
    """
    options = options or ModelOptions()
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--model must be one of {MODEL_FORMS}; got {spec!r}")
    spec = spec.strip()
    if spec == "demo":
        return _load_demo(options)
    if spec == "auto":
        return _load_auto(options)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in _PREFIXES:
        return _PREFIXES[prefix](rest, options)
    if Path(spec).expanduser().is_dir():
        return _load_local(str(Path(spec).expanduser()), options)
    raise ConfigError(f"unknown model {spec!r}: not a directory, and not one of {MODEL_FORMS}")
