"""Agents turn observations into actions: a VLM agent that asks a model, and the random baseline.

An agent keeps state only within an episode (the feedback about an unparsable answer); ``reset`` is
called at the start of each one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from atari_vlm.errors import ConfigError
from atari_vlm.games import GameInfo
from atari_vlm.memory import Exemplar
from atari_vlm.models.base import VLM, Completion, ImagePart, Message, Part, Request, TextPart, Usage
from atari_vlm.prompts import (
    DEFAULT_MAX_TOKENS,
    invalid_answer_feedback,
    parse_action,
    render_system_prompt,
    render_turn_prompt,
)

FALLBACK_ACTION = "NOOP"


@dataclass(frozen=True)
class Decision:
    """One chosen action and how it was reached."""

    action: int
    action_name: str
    text: str = ""  # the model's answer ("" for agents without a model)
    parsed: bool = True  # False when the answer held no legal action and the fallback was played
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    retries: int = 0
    cost_usd: float | None = None  # None: no price known (a custom server), or no model


class Agent(Protocol):
    """Anything that picks actions for one game."""

    async def act(self, obs: dict[str, Any]) -> Decision: ...

    def reset(self, seed: int | None = None) -> None: ...


class RandomAgent:
    """Uniformly random legal actions, seeded: the baseline every score is compared with."""

    def __init__(self, action_names: list[str], seed: int | None = None):
        self.action_names = list(action_names)
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    async def act(self, obs: dict[str, Any]) -> Decision:
        index = int(self._rng.integers(len(self.action_names)))
        return Decision(index, self.action_names[index])


class VLMAgent:
    """Shows the model the frame(s) and the state text; parses its answer into a legal action.

    Everything goes in one user message after the system prompt (some local chat templates refuse two
    user turns in a row): in-context exemplars first, then recent history, then this turn.

    Args:
        model: any :class:`~atari_vlm.models.base.VLM`.
        info: the game's catalog entry.
        action_names: the env's legal action names, in index order.
        prompt_style: ``"basic"``, ``"cot"``, ``"expert"``, or a path to a template file.
        frame_stack, frame_layout: as in the env, so the prompt describes the images right.
        max_tokens: per answer; ``None`` takes the style's default (reasoning styles need more).
        temperature: 0 is greedy.
        answer_format: ``"line"`` (``ACTION: <name>``) or ``"json"`` (``{"reasoning", "action"}``).
        history_steps: how many past decisions (action and the start of the answer) are recalled in text.
        history_images: how many past frames are shown again (images are what costs; default none).
        exemplars: remembered decisions shown as examples (in-context learning).
    """

    def __init__(
        self,
        model: VLM,
        info: GameInfo,
        action_names: list[str],
        *,
        prompt_style: str = "basic",
        frame_stack: int = 1,
        frame_layout: str = "grid",
        max_tokens: int | None = None,
        temperature: float = 0.0,
        answer_format: str = "line",
        history_steps: int = 0,
        history_images: int = 0,
        exemplars: Sequence[Exemplar] = (),
    ):
        for name, value in (("history_steps", history_steps), ("history_images", history_images)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
                raise ConfigError(f"{name} must be an integer between 0 and 64, got {value!r}")
        self.model = model
        self.action_names = list(action_names)
        self.frame_layout = frame_layout
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS.get(prompt_style, 128)
        if answer_format == "json":
            self.max_tokens += 32
        self.temperature = temperature
        self.answer_format = answer_format
        self._fallback = self.action_names.index(FALLBACK_ACTION) if FALLBACK_ACTION in action_names else 0
        self.system_prompt = render_system_prompt(
            prompt_style,
            info,
            self.action_names,
            frame_stack=frame_stack,
            layout=frame_layout,
            answer_format=answer_format,
        )
        self._system = Message.text("system", self.system_prompt)
        self._feedback = ""
        self._history: deque[tuple[int, str, str]] = deque(maxlen=history_steps)
        self._history_images: deque[tuple[int, np.ndarray]] = deque(maxlen=history_images)
        self._step = 0
        self._exemplar_parts: tuple[Part, ...] = ()
        self.set_exemplars(exemplars)

    def set_exemplars(self, exemplars: Sequence[Exemplar]) -> None:
        """Replace the examples shown to the model (rendered once here, not at every decision)."""
        parts: list[Part] = []
        if exemplars:
            parts.append(TextPart("Examples from your best past games (the screen, then what was done):"))
            for i, ex in enumerate(exemplars, 1):
                parts.append(ImagePart(ex.image))
                note = f" ({ex.note})" if ex.note else ""
                parts.append(TextPart(f"Example {i}: state: {ex.state_text}\nACTION: {ex.action_name}{note}"))
            parts.append(TextPart("Now the current game."))
        self._exemplar_parts = tuple(parts)

    def reset(self, seed: int | None = None) -> None:
        self._feedback = ""
        self._history.clear()
        self._history_images.clear()
        self._step = 0

    def _history_text(self) -> str:
        if not self._history:
            return ""
        lines = [f"- step {step}: {name}" + (f" ({why})" if why else "") for step, name, why in self._history]
        return "Your recent decisions, oldest first:\n" + "\n".join(lines) + "\n"

    def build_request(self, obs: dict[str, Any]) -> Request:
        """The request for one decision: the system prompt, then exemplars, history and this turn."""
        parts: list[Part] = list(self._exemplar_parts)
        for step, image in self._history_images:
            parts.append(TextPart(f"The screen at step {step}:"))
            parts.append(ImagePart(image))
        if parts:
            # Said apart from the remembered screens before it: a video model reads a run of
            # consecutive images as one clip, which must be the current frame stack alone.
            parts.append(TextPart("The screen now:" if self.frame_layout == "grid" else "The screens now:"))
        if self.frame_layout == "sequence":
            parts.extend(ImagePart(frame) for frame in obs["frames"])
        else:
            parts.append(ImagePart(obs["image"]))
        turn = render_turn_prompt(obs["text"], self._feedback, self._history_text(), self.answer_format)
        parts.append(TextPart(turn))
        return Request(
            messages=(self._system, Message("user", tuple(parts))),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            json_mode=self.answer_format == "json",
        )

    def decide(self, completion: Completion) -> Decision:
        """Parse a completion into a decision, falling back (and remembering to say so) when needed."""
        parsed = parse_action(completion.text, self.action_names)
        ok = parsed.index is not None
        index = parsed.index if ok else self._fallback
        self._feedback = "" if ok else invalid_answer_feedback(self.action_names[self._fallback])
        return Decision(
            action=index,
            action_name=self.action_names[index],
            text=completion.text,
            parsed=ok,
            usage=completion.usage,
            latency_s=completion.latency_s,
            retries=completion.retries,
            cost_usd=completion.cost_usd,
        )

    def _remember(self, obs: dict[str, Any], decision: Decision) -> None:
        self._step += 1
        if self._history.maxlen:
            why = " ".join(decision.text.split())[:80] if self.answer_format == "line" else ""
            first_line = why.split("ACTION")[0].strip(" .:-") if why else ""
            self._history.append((self._step, decision.action_name, first_line))
        if self._history_images.maxlen:
            self._history_images.append((self._step, obs["image"]))

    async def act(self, obs: dict[str, Any]) -> Decision:
        completion = await self.model.generate(self.build_request(obs))
        decision = self.decide(completion)
        self._remember(obs, decision)
        return decision
