"""Named model presets (``--model gpt-4o``), kept as data in ``presets.json``.

A preset says which backend serves a name, the provider's model id, what a million tokens cost (with
the date and page the price was read from), what hardware it needs, and what it is for. This module
loads and validates that file, says whether a preset is usable here and now (key set, SDK
installed, weights in the local Hugging Face cache) without touching the network, and recommends
one for the user's situation. The registry turns a preset into a backend.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from atari_vlm.errors import ConfigError
from atari_vlm.models.anthropic_backend import ANTHROPIC_KEY_ENV_VARS
from atari_vlm.models.capabilities import Capability, capability_for
from atari_vlm.models.gemini_backend import GEMINI_KEY_ENV_VARS

__all__ = [
    "PRESETS_PATH",
    "PROVIDERS",
    "Availability",
    "Preset",
    "Prices",
    "Provider",
    "availabilities",
    "availability",
    "find_preset",
    "get_preset",
    "gpu_available",
    "list_presets",
    "load_presets",
    "local_snapshot",
    "preset_for_model",
    "recommend",
    "suggest",
]

PRESETS_PATH = Path(__file__).with_name("presets.json")
FORMAT = 1
_DATE = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")
TYPICAL_CALL_TOKENS = (1_000, 50)
"""(input, output) tokens of a typical decision (one frame, a short answer): ranks presets by price."""


@dataclass(frozen=True)
class Provider:
    """How to reach a provider: the SDK module, the pip extra that installs it, the key variables."""

    module: str
    extra: str
    key_env_vars: tuple[str, ...] = ()
    api_host: str | None = None
    """Host of the provider's own API: only calls to it are billed at the presets' prices."""
    base_url_env_var: str | None = None
    """The SDK's own variable for another endpoint (a company gateway, a LiteLLM proxy)."""


PROVIDERS: dict[str, Provider] = {
    "openai": Provider("openai", "openai", ("OPENAI_API_KEY",), "api.openai.com", "OPENAI_BASE_URL"),
    "anthropic": Provider(
        "anthropic", "anthropic", ANTHROPIC_KEY_ENV_VARS, "api.anthropic.com", "ANTHROPIC_BASE_URL"
    ),
    "gemini": Provider(
        "google.genai",
        "gemini",
        GEMINI_KEY_ENV_VARS,
        "generativelanguage.googleapis.com",
        "GOOGLE_GEMINI_BASE_URL",
    ),
    "local": Provider("transformers", "local"),
}


@dataclass(frozen=True)
class Prices:
    """USD per million tokens, and where and when that was read.

    ``cached_input_per_mtok``: what a prompt token read from the provider's cache costs;
    ``cache_write_per_mtok``: what a token written to it costs (Anthropic's 5-minute writes). ``None``:
    unknown, and such tokens are billed at the plain input price, so a cost is never under-stated.
    """

    input_per_mtok: float
    output_per_mtok: float
    date: str | None = None
    source: str | None = None
    note: str | None = None
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    @property
    def cache_read_rate(self) -> float:
        """USD per million cached prompt tokens (the input price where the cache price is unknown)."""
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def cache_write_rate(self) -> float:
        """USD per million prompt tokens written to the cache (the input price where unknown)."""
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok

    def cost_usd(
        self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0, cache_write_tokens: int = 0
    ) -> float:
        """Cost of a call; ``input_tokens`` includes the cached and written ones."""
        plain = max(input_tokens - cached_input_tokens - cache_write_tokens, 0)
        return (
            plain * self.input_per_mtok
            + cached_input_tokens * self.cache_read_rate
            + cache_write_tokens * self.cache_write_rate
            + output_tokens * self.output_per_mtok
        ) / 1e6


FREE = Prices(0.0, 0.0, note="runs on your own hardware")


@dataclass(frozen=True)
class Preset:
    """One named model (see the module docstring)."""

    name: str
    provider: str
    model_id: str
    prices: Prices
    hardware: str
    good_at: str
    aliases: tuple[str, ...] = ()
    legacy: bool = False
    """Kept for an old name; the provider may have retired the model (see the price note)."""
    trust_remote_code: bool = False
    backend_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_api(self) -> bool:
        return self.provider != "local"

    @property
    def capability(self) -> Capability | None:
        """What the model accepts and whether it is still served (API presets; None for local ones)."""
        return capability_for(self.provider, self.model_id) if self.is_api else None


Availability = tuple[Preset, bool, str]
"""A preset, whether it is usable now, and why (or why not)."""


# -- loading and validation --------------------------------------------------------------------------


def load_presets(path: str | Path = PRESETS_PATH) -> list[Preset]:
    """Read and validate a presets file; a ConfigError names the file, the entry and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the presets file {path}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"the presets file {path} is not valid JSON: {exc}") from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or not isinstance(data.get("presets"), list)
    ):
        raise ConfigError(f'{path} must be an object with "format": {FORMAT} and a "presets" list')
    presets = [_parse_entry(entry, i, path) for i, entry in enumerate(data["presets"])]
    seen: dict[str, str] = {}
    for preset in presets:
        for key in (preset.name, *preset.aliases):
            if key.lower() in seen:
                raise ConfigError(
                    f"{path}: name {key!r} is used twice ({seen[key.lower()]} and {preset.name})"
                )
            seen[key.lower()] = preset.name
    return presets


def _parse_entry(entry: Any, index: int, path: Path) -> Preset:
    where = f"{path}: presets[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    if isinstance(entry.get("name"), str):
        where = f"{path}: preset {entry['name']!r}"
    known = {"name", "aliases", "provider", "model_id", "price", "price_note", "hardware", "good_at"}
    known |= {"legacy", "trust_remote_code", "backend_options"}
    if unknown := sorted(set(entry) - known):
        raise ConfigError(f"{where} has unknown fields {unknown}; known: {sorted(known)}")
    for key in ("name", "provider", "model_id", "hardware", "good_at"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise ConfigError(f"{where} needs a non-empty string {key!r}")
    provider = entry["provider"]
    if provider not in PROVIDERS:
        raise ConfigError(f"{where}: provider {provider!r} is not one of {sorted(PROVIDERS)}")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ConfigError(f"{where}: 'aliases' must be a list of non-empty strings")
    for key in ("legacy", "trust_remote_code"):
        if not isinstance(entry.get(key, False), bool):
            raise ConfigError(f"{where}: {key!r} must be true or false")
    options = entry.get("backend_options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: 'backend_options' must be an object")
    note = entry.get("price_note")
    if note is not None and not isinstance(note, str):
        raise ConfigError(f"{where}: 'price_note' must be a string")
    return Preset(
        name=entry["name"],
        provider=provider,
        model_id=entry["model_id"],
        prices=_parse_prices(entry.get("price"), note, provider, where),
        hardware=entry["hardware"],
        good_at=entry["good_at"],
        aliases=tuple(aliases),
        legacy=entry.get("legacy", False),
        trust_remote_code=entry.get("trust_remote_code", False),
        backend_options=dict(options),
    )


def _parse_prices(price: Any, note: str | None, provider: str, where: str) -> Prices:
    """API presets need a price with its date and source; local ones have none (they cost 0)."""
    if provider == "local":
        if price is not None:
            raise ConfigError(f"{where}: a local preset has no 'price' (it runs on your hardware)")
        return FREE
    if not isinstance(price, dict):
        raise ConfigError(
            f"{where} needs 'price': {{input_per_mtok, output_per_mtok, date, source}}; "
            "if unsure of a price, say so in 'price_note'"
        )
    for key in ("input_per_mtok", "output_per_mtok"):
        value = price.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"{where}: price.{key} must be a number >= 0 (USD per million tokens)")
    for key in ("cached_input_per_mtok", "cache_write_per_mtok"):
        value = price.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
        ):
            raise ConfigError(f"{where}: price.{key} must be a number >= 0 or null (unknown)")
    if not isinstance(price.get("date"), str) or not _DATE.match(price["date"]):
        raise ConfigError(f"{where}: price.date must be the date the price was read, YYYY-MM or YYYY-MM-DD")
    if not isinstance(price.get("source"), str) or not price["source"].startswith("https://"):
        raise ConfigError(f"{where}: price.source must be the https:// URL the price was read from")
    known = {
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "date",
        "source",
    }
    if unknown := sorted(set(price) - known):
        raise ConfigError(f"{where}: price has unknown fields {unknown}")

    def optional(key: str) -> float | None:
        return None if price.get(key) is None else float(price[key])

    return Prices(
        float(price["input_per_mtok"]),
        float(price["output_per_mtok"]),
        price["date"],
        price["source"],
        note,
        optional("cached_input_per_mtok"),
        optional("cache_write_per_mtok"),
    )


@cache
def _presets() -> tuple[Preset, ...]:
    return tuple(load_presets())


def list_presets() -> list[Preset]:
    """Every preset, in the file's order."""
    return list(_presets())


def find_preset(name: str) -> Preset | None:
    """The preset a name or alias (any case) names, else None."""
    key = name.strip().lower()
    for preset in _presets():
        if key == preset.name.lower() or key in (a.lower() for a in preset.aliases):
            return preset
    return None


def get_preset(name: str) -> Preset:
    """The preset ``name`` names; a ConfigError listing the presets (closest first) otherwise."""
    preset = find_preset(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}. {suggest(name)}")
    return preset


def suggest(name: str) -> str:
    """A sentence naming the closest presets and listing them all (for error messages)."""
    names = [p.name for p in _presets()]
    lookup = {k.lower(): p.name for p in _presets() for k in (p.name, *p.aliases)}
    close = difflib.get_close_matches(name.strip().lower(), list(lookup), n=3, cutoff=0.5)
    closest = list(dict.fromkeys(lookup[c] for c in close))
    hint = f"Did you mean {' or '.join(repr(c) for c in closest)}? " if closest else ""
    return f"{hint}Presets: {', '.join(names)} (`atari-vlm models` describes them)"


def preset_for_model(provider: str, model_id: str) -> Preset | None:
    """The preset of a provider's model id (``openai:gpt-4o`` gets gpt-4o's prices), else None."""
    for preset in _presets():
        if preset.provider == provider and preset.model_id == model_id:
            return preset
    return None


# -- availability ------------------------------------------------------------------------------------


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def local_snapshot(model_id: str) -> Path | None:
    """A checkpoint directory for ``model_id``: the path itself, or its snapshot in the HF cache.

    Looks only at the disk (never the network): the cached ``config.json`` of the repository's
    main revision, and safetensors weights beside it.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path if (path / "config.json").is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        config = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # an id the hub would reject (HFValidationError), an unreadable cache
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    return snapshot if any(snapshot.glob("*.safetensors")) else None


def availability(preset: Preset, *, api_key: str | None = None) -> tuple[bool, str]:
    """Whether ``preset`` can run here now, and why (or what to do). No network access."""
    provider = PROVIDERS[preset.provider]
    capability = preset.capability
    if capability is not None and capability.lifecycle.retired:
        when = f" on {capability.lifecycle.date}" if capability.lifecycle.date else ""
        return False, f"retired by {preset.provider}{when}"
    if not _installed(provider.module):
        return False, f'pip install "atari-vlm[{provider.extra}]"'
    if preset.is_api:
        if api_key:
            return True, "key from --api-key"
        for name in provider.key_env_vars:
            if os.environ.get(name):
                return True, f"{name} is set"
        return False, f"set {' or '.join(provider.key_env_vars)}"
    snapshot = local_snapshot(preset.model_id)
    if snapshot is None:
        return False, f"not in the local Hugging Face cache: `hf download {preset.model_id}`"
    if not _installed("torch"):
        return False, 'pip install "atari-vlm[local]" (torch)'
    flag = " (with --trust-remote-code)" if preset.trust_remote_code else ""
    return True, f"weights cached{flag}"


def availabilities(
    presets: Iterable[Preset] | None = None, *, api_key: str | None = None
) -> list[Availability]:
    """:func:`availability` of every preset (all of them by default)."""
    return [(p, *availability(p, api_key=api_key)) for p in (list_presets() if presets is None else presets)]


def gpu_available() -> bool:
    """Whether torch is installed and sees a CUDA GPU (False without torch: it is not imported)."""
    if not _installed("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def recommend(presets_with_availability: Sequence[Availability], *, gpu: bool | None = None) -> str:
    """A short recommendation for this machine: usable cached weights on a GPU, else the cheapest
    usable API preset, else what to download or which key to set; ``demo`` to test the pipeline.
    """
    gpu = gpu_available() if gpu is None else gpu
    current = [(p, ok) for p, ok, _ in presets_with_availability if not p.legacy]
    local_ready = [p for p, ok in current if ok and not p.is_api]
    api_ready = sorted(
        (p for p, ok in current if ok and p.is_api), key=lambda p: p.prices.cost_usd(*TYPICAL_CALL_TOKENS)
    )
    if gpu and local_ready:
        best = local_ready[0]
        command = f"atari-vlm play --game Pong --model {best.name} --device cuda"
        return f"GPU found and {best.name} is cached: `{command}`."
    if api_ready:
        best = api_ready[0]
        usd = best.prices.cost_usd(*TYPICAL_CALL_TOKENS)
        return (
            f"API key found: `atari-vlm play --game Pong --model {best.name}` is the cheapest usable preset "
            f"(about ${usd:.5f} per decision of {TYPICAL_CALL_TOKENS[0]} input / {TYPICAL_CALL_TOKENS[1]} "
            "output tokens; check with --dry-run, cap with --max-cost)."
        )
    if gpu:
        return (
            "GPU found but no weights cached: `hf download Qwen/Qwen2.5-VL-3B-Instruct`, then "
            "`atari-vlm play --game Pong --model qwen2.5-vl-3b --device cuda` (or serve it with vLLM, "
            "see docs/providers.md)."
        )
    if local_ready:
        best = local_ready[0]
        return f"{best.name} is cached; without a GPU it runs slowly on CPU: `--model {best.name}`."
    keys = sorted({k for p in PROVIDERS.values() for k in p.key_env_vars})
    return (
        "No API key, GPU or cached weights found. `--model demo` tests the whole pipeline offline "
        f"(random weights: its scores mean nothing); for real play set one of {', '.join(keys)}, or "
        "`hf download HuggingFaceTB/SmolVLM-Instruct` and use `--model smolvlm` (slow on CPU)."
    )
