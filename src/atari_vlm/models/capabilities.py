"""What each hosted model accepts, kept as data in ``capabilities.json`` beside the prices.

Providers' current models each have their own rules: Claude Sonnet 5 thinks unless told
``thinking: {"type": "disabled"}`` and answers 400 to a non-default temperature; GPT-5-class models take
``reasoning_effort`` and count their reasoning in ``max_completion_tokens``; Gemini 2.5 takes a
``thinking_budget`` and Gemini 3 a ``thinking_level``. Backends ask :func:`capability_for` and build
their request from the answer, so a rule lives in one place, with the page it was read from. A model
no entry lists gets its provider's defaults entry: the settings least likely to be refused.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from atari_vlm.errors import ConfigError
from atari_vlm.models.base import REASONING_LEVELS

__all__ = [
    "CAPABILITIES_PATH",
    "REASONING_CONTROLS",
    "Capability",
    "Lifecycle",
    "capability_for",
    "load_capabilities",
    "reasoning_allowance",
]

CAPABILITIES_PATH = Path(__file__).with_name("capabilities.json")
FORMAT = 1
REASONING_CONTROLS = (
    "none",  # no thinking control: only "off" can be honoured
    "openai_effort",  # reasoning_effort
    "anthropic_adaptive",  # thinking {type: disabled} / {type: adaptive} + output_config.effort
    "anthropic_budget",  # thinking {type: enabled, budget_tokens: N} (manual extended thinking)
    "gemini_budget",  # thinking_config.thinking_budget
    "gemini_level",  # thinking_config.thinking_level
)
SAMPLING = ("any", "default_only")
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CACHE_MODES = ("explicit", "automatic", "none")
STATUSES = ("active", "legacy", "deprecated", "retired", "unknown")
PROVIDER_DEFAULTS = ("openai", "anthropic", "gemini", "openai_compatible")


@dataclass(frozen=True)
class Lifecycle:
    """Whether the provider still serves the model, and since or until when (with the page read)."""

    status: str = "unknown"
    date: str | None = None  # retirement (or scheduled shutdown) date, YYYY-MM-DD
    replacement: str | None = None
    note: str | None = None
    source: str | None = None
    read: str | None = None

    @property
    def retired(self) -> bool:
        return self.status == "retired"


@dataclass(frozen=True)
class Capability:
    """The rules of one model (see the module docstring and ``capabilities.json``)."""

    provider: str
    pattern: str  # the glob that matched ("*" for a provider's defaults)
    reasoning_control: str
    reasoning_default: str  # "on", "off" or "unknown": what the model does when nothing is sent
    reasoning_off: Any  # the wire value that asks for the least thinking, or None (send nothing)
    reasoning_levels: Mapping[str, Any]  # "low"/"medium"/"high" -> wire value
    sampling: str  # "any": temperature is sent; "default_only": never sent
    token_limit: str  # the name of the answer-length field
    json_schema: bool = False  # structured output with a JSON schema
    forced_tool: bool = False  # a forced tool call (tool_choice naming a tool)
    enum_mime: bool = False  # Gemini's response_mime_type text/x.enum
    logprobs: bool = False  # token log-probabilities can be asked for
    max_images: int | None = None
    max_image_px: int | None = None
    cache_mode: str = "none"  # "explicit" (cache_control), "automatic" (prefix caching), "none"
    cache_min_tokens: int | None = None
    cache_key: bool = False  # takes a prompt_cache_key
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    note: str | None = None
    sources: tuple[Mapping[str, str], ...] = ()

    def reasoning_value(self, level: str) -> Any:
        """The wire value for ``level`` (None: send nothing); a ConfigError if the model has no such
        control. ``off`` always works: it is the least the model allows."""
        if level not in REASONING_LEVELS:
            raise ConfigError(f"reasoning must be one of {REASONING_LEVELS}, got {level!r}")
        if level == "off":
            return self.reasoning_off
        if level not in self.reasoning_levels:
            raise ConfigError(
                f"model pattern {self.pattern!r} ({self.provider}) has no documented reasoning control, so "
                f"--reasoning {level} cannot be honoured; use --reasoning off"
            )
        return self.reasoning_levels[level]


# -- loading and validation --------------------------------------------------------------------------


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


def _parse(entry: Any, provider: str, pattern: str, where: str) -> Capability:
    _check(isinstance(entry, dict), where, "must be an object")
    reasoning = entry.get("reasoning")
    _check(isinstance(reasoning, dict), where, "needs a 'reasoning' object")
    control = reasoning.get("control")
    _check(control in REASONING_CONTROLS, where, f"reasoning.control must be one of {REASONING_CONTROLS}")
    levels = reasoning.get("levels", {})
    _check(
        isinstance(levels, dict) and set(levels) <= {"low", "medium", "high"}, where, "bad reasoning.levels"
    )
    _check(control != "none" or not levels, where, "reasoning.control 'none' cannot have levels")
    _check(
        reasoning.get("default") in ("on", "off", "unknown"), where, "reasoning.default: on, off or unknown"
    )
    _check(entry.get("sampling") in SAMPLING, where, f"sampling must be one of {SAMPLING}")
    _check(entry.get("token_limit") in TOKEN_LIMITS, where, f"token_limit must be one of {TOKEN_LIMITS}")
    structured = entry.get("structured", {})
    _check(isinstance(structured, dict), where, "'structured' must be an object")
    images = entry.get("images", {})
    _check(isinstance(images, dict), where, "'images' must be an object")
    cache_ = entry.get("cache", {})
    _check(
        isinstance(cache_, dict) and cache_.get("mode") in CACHE_MODES,
        where,
        f"cache.mode: one of {CACHE_MODES}",
    )
    life = entry.get("lifecycle", {})
    _check(
        isinstance(life, dict) and life.get("status", "unknown") in STATUSES,
        where,
        f"lifecycle.status: {STATUSES}",
    )
    sources = entry.get("sources", [])
    _check(
        isinstance(sources, list) and all(isinstance(s, dict) and "url" in s for s in sources),
        where,
        "'sources' must be a list of objects with a url",
    )
    return Capability(
        provider=provider,
        pattern=pattern,
        reasoning_control=control,
        reasoning_default=reasoning["default"],
        reasoning_off=reasoning.get("off"),
        reasoning_levels=dict(levels),
        sampling=entry["sampling"],
        token_limit=entry["token_limit"],
        json_schema=bool(structured.get("json_schema", False)),
        forced_tool=bool(structured.get("forced_tool", False)),
        enum_mime=bool(structured.get("enum_mime", False)),
        logprobs=bool(structured.get("logprobs", False)),
        max_images=images.get("max_per_request"),
        max_image_px=images.get("max_px"),
        cache_mode=cache_["mode"],
        cache_min_tokens=cache_.get("min_tokens"),
        cache_key=bool(cache_.get("key", False)),
        lifecycle=Lifecycle(
            status=life.get("status", "unknown"),
            date=life.get("date"),
            replacement=life.get("replacement"),
            note=life.get("note"),
            source=life.get("source"),
            read=life.get("read"),
        ),
        note=entry.get("note"),
        sources=tuple(sources),
    )


@dataclass(frozen=True)
class _Table:
    defaults: Mapping[str, Capability]
    models: tuple[tuple[str, str, Capability], ...]  # (provider, pattern, capability)
    allowance: Mapping[str, int]


def load_capabilities(path: str | Path = CAPABILITIES_PATH) -> _Table:
    """Read and validate a capability file; a ConfigError names the file, the entry and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the capability table {path}: {exc}") from exc
    _check(isinstance(data, dict) and data.get("format") == FORMAT, str(path), f'needs "format": {FORMAT}')
    defaults = data.get("defaults")
    _check(
        isinstance(defaults, dict) and set(defaults) == set(PROVIDER_DEFAULTS),
        str(path),
        f"'defaults' must hold exactly {PROVIDER_DEFAULTS}",
    )
    allowance = data.get("reasoning_allowance")
    _check(
        isinstance(allowance, dict)
        and set(allowance) == {"low", "medium", "high"}
        and all(isinstance(v, int) and v > 0 for v in allowance.values()),
        str(path),
        "'reasoning_allowance' must give low, medium and high a positive token count",
    )
    parsed_defaults = {
        name: _parse(entry, name, "*", f"{path}: defaults.{name}") for name, entry in defaults.items()
    }
    models: list[tuple[str, str, Capability]] = []
    for i, entry in enumerate(data.get("models", [])):
        where = f"{path}: models[{i}]"
        _check(
            isinstance(entry, dict) and entry.get("provider") in ("openai", "anthropic", "gemini"),
            where,
            "needs a provider: openai, anthropic or gemini",
        )
        patterns = entry.get("match")
        _check(
            isinstance(patterns, list) and patterns and all(isinstance(p, str) and p for p in patterns),
            where,
            "'match' must be a non-empty list of model-id patterns",
        )
        for pattern in patterns:
            models.append((entry["provider"], pattern, _parse(entry, entry["provider"], pattern, where)))
    return _Table(parsed_defaults, tuple(models), dict(allowance))


@cache
def _table() -> _Table:
    return load_capabilities()


def _specificity(pattern: str) -> int:
    """Literal characters of a glob: the longer, the more specific."""
    return sum(1 for ch in pattern if ch not in "*?[]")


def capability_for(provider: str, model_id: str, *, official: bool = True) -> Capability:
    """The rules for ``model_id`` at ``provider``; its provider's defaults when no entry matches.

    ``official=False`` (an OpenAI-compatible server of one's own, not OpenAI or a proxy of it) always
    gets the ``openai_compatible`` defaults: a model name there says nothing about OpenAI's rules.
    """
    table = _table()
    if provider == "openai" and not official:
        return table.defaults["openai_compatible"]
    best: tuple[int, Capability] | None = None
    for entry_provider, pattern, capability in table.models:
        if entry_provider == provider and fnmatch.fnmatchcase(model_id, pattern):
            score = _specificity(pattern)
            if best is None or score > best[0]:
                best = (score, capability)
    if best is not None:
        return best[1]
    if provider not in table.defaults:
        raise ConfigError(f"no capability defaults for provider {provider!r}; one of {PROVIDER_DEFAULTS}")
    return table.defaults[provider]


def reasoning_allowance(level: str) -> int:
    """Tokens added to the answer-length limit for a reasoning level (0 for ``off``)."""
    if level == "off":
        return 0
    if level not in REASONING_LEVELS:
        raise ConfigError(f"reasoning must be one of {REASONING_LEVELS}, got {level!r}")
    return int(_table().allowance[level])
