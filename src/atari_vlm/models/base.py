"""The provider-neutral model interface: requests in, completions out.

Every backend (an API, an OpenAI-compatible server, an in-process Hugging Face model) converts a
:class:`Request` to its own wire format and returns a :class:`Completion`. Nothing outside a backend
knows which provider it talks to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from atari_vlm.errors import ConfigError, ModelError
from atari_vlm.spec import REASONING_LEVELS

__all__ = [
    "DECODE_MODES",
    "REASONING_LEVELS",
    "VLM",
    "Completion",
    "ConfigError",
    "DecodeMode",
    "ImagePart",
    "Message",
    "ModelError",
    "Obtained",
    "Part",
    "ReasoningLevel",
    "Request",
    "Role",
    "TextPart",
    "Usage",
]

Role = Literal["system", "user", "assistant"]
DecodeMode = Literal["free", "constrained", "score"]
DECODE_MODES: tuple[str, ...] = ("free", "constrained", "score")
"""How a backend is asked to answer (the agent resolves the user's ``auto`` to one of these):

- ``free``: free text; the agent's parser finds the action in it.
- ``constrained``: the backend itself can only answer with one of ``Request.choices`` (structured
  output with an enum, a forced tool, a grammar, or generation restricted to those tokens); with
  ``Request.reasoning`` it first writes free reasoning, then the constrained choice.
- ``score``: no generation: the log-likelihood of every choice after the prompt (local models).
"""
Obtained = Literal["scored", "constrained", "free"]
"""How a completion's answer was produced (``Completion.obtained``)."""
ReasoningLevel = Literal["off", "low", "medium", "high"]
"""How much a model may think before it answers (``ModelSpec.reasoning``, one of
:data:`atari_vlm.spec.REASONING_LEVELS`). ``off``: as little as the model allows (thinking off where it
can be turned off, its minimal level where it cannot): a decision must be fast. The others ask for
more, and the backend raises the answer-length limit to fit."""


@dataclass(frozen=True)
class TextPart:
    """A piece of text inside a message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image inside a message, as an RGB (H, W, 3) or grayscale (H, W) uint8 array.

    Backends decide the encoding (JPEG data URL, PIL image for a local processor) through
    :mod:`atari_vlm.imaging`, the one place where image cost is decided.
    """

    pixels: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, np.ndarray) or self.pixels.dtype != np.uint8:
            raise TypeError("ImagePart.pixels must be a uint8 numpy array")
        if self.pixels.ndim not in (2, 3) or (self.pixels.ndim == 3 and self.pixels.shape[2] != 3):
            raise ValueError(f"ImagePart.pixels must have shape (H, W) or (H, W, 3), got {self.pixels.shape}")


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    """One chat turn: a role and an ordered list of text and image parts."""

    role: Role
    parts: tuple[Part, ...]

    @classmethod
    def text(cls, role: Role, text: str) -> Message:
        return cls(role, (TextPart(text),))

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]

    @property
    def joined_text(self) -> str:
        return "\n".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True)
class Request:
    """What an agent asks a model: the conversation and the sampling settings.

    ``stable_prefix`` says where the part of the conversation that is the same in every decision of a
    run ends (system prompt, action list, in-context exemplars), so that backends can let the provider
    cache it: Anthropic gets ``cache_control`` breakpoints there, OpenAI a prompt cache key derived from
    it. It counts *parts*, through the messages in order (a system message made with
    :meth:`Message.text` is one part). ``None`` (the default): not said, and the system messages are
    taken as the stable prefix (every agent here renders its system prompt once per run); ``0``:
    nothing is stable, send no caching hints.
    """

    messages: tuple[Message, ...]
    max_tokens: int = 128
    temperature: float = 0.0
    json_mode: bool = False  # ask for a JSON object where the provider supports structured output
    choices: tuple[str, ...] = ()  # the legal answers (action names), for constrained or scored decoding
    decode: DecodeMode = "free"  # see DECODE_MODES; "constrained" and "score" need ``choices``
    reasoning: bool = False  # the answer reasons before its choice (cot, expert styles)
    stable_prefix: int | None = None  # parts identical in every decision of the run (see above)

    def __post_init__(self) -> None:
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {self.decode!r}")
        if self.decode != "free" and not self.choices:
            raise ValueError(f"decode={self.decode!r} needs the legal choices")
        if self.stable_prefix is not None:
            total = sum(len(m.parts) for m in self.messages)
            if isinstance(self.stable_prefix, bool) or not 0 <= self.stable_prefix <= total:
                raise ValueError(
                    f"stable_prefix must be in [0, {total}] (the parts), got {self.stable_prefix!r}"
                )

    @property
    def num_images(self) -> int:
        return sum(len(m.images) for m in self.messages)

    def prefix_parts(self) -> list[tuple[int, int]]:
        """``(message index, part index)`` of every part inside the stable prefix, in order."""
        if self.stable_prefix is None:
            return [
                (i, j) for i, m in enumerate(self.messages) if m.role == "system" for j in range(len(m.parts))
            ]
        out: list[tuple[int, int]] = []
        for i, message in enumerate(self.messages):
            for j in range(len(message.parts)):
                if len(out) == self.stable_prefix:
                    return out
                out.append((i, j))
        return out


@dataclass(frozen=True)
class Usage:
    """Token counts of one completion (image tokens where the provider or processor says).

    ``input_tokens`` is every prompt token the provider billed, cached ones included;
    ``cached_input_tokens`` of them were read from the provider's prompt cache (billed at its cache-read
    rate) and ``cache_write_tokens`` were written to it (Anthropic bills writes above the input rate).
    ``output_tokens`` includes ``reasoning_tokens`` (hidden thinking, billed as output).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    image_tokens: int | None = None
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens billed at the plain input rate."""
        return max(self.input_tokens - self.cached_input_tokens - self.cache_write_tokens, 0)

    def __add__(self, other: Usage) -> Usage:
        images = None
        if self.image_tokens is not None or other.image_tokens is not None:
            images = (self.image_tokens or 0) + (other.image_tokens or 0)
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            images,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    def to_record(self) -> dict[str, int | None]:
        """The counts as a run-directory record (``steps.jsonl``, ``episodes.jsonl``) stores them."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "image_tokens": self.image_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Usage:
        """Back from :meth:`to_record` (records written before the cache fields read as 0)."""

        def count(key: str) -> int:
            value = record.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        images = record.get("image_tokens")
        return cls(
            count("input_tokens"),
            count("output_tokens"),
            images if isinstance(images, int) and not isinstance(images, bool) else None,
            count("cached_input_tokens"),
            count("cache_write_tokens"),
            count("reasoning_tokens"),
        )


@dataclass(frozen=True)
class Completion:
    """One model answer with what it cost."""

    text: str
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    model: str = ""
    finish_reason: str = "stop"
    retries: int = 0
    cost_usd: float | None = None  # USD at the preset's price; None where the price is unknown
    obtained: Obtained = "free"  # how the answer was produced: "scored", "constrained" or "free" text
    choice: str | None = None  # the backend's constrained or scored pick (one of Request.choices), if any
    choice_probs: dict[str, float] | None = None  # probability of each legal choice, where known
    constraint_note: str | None = None  # why a constraint was asked for but not applied (a 400 fallback)
    usage_estimated: bool = False  # the server's usage was missing or unbelievable: atari-vlm's own count
    answer_truncated: bool = False  # the answer was longer than the backend keeps, and was cut


@runtime_checkable
class VLM(Protocol):
    """Anything that answers a :class:`Request` with a :class:`Completion`."""

    name: str

    async def generate(self, request: Request) -> Completion: ...

    async def aclose(self) -> None: ...
