"""Agents turn observations into actions: a VLM agent that asks a model, and the random baseline.

An agent keeps state only within an episode (the feedback about an unparsable answer); ``reset`` is
called at the start of each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from atari_vlm.games import GameInfo
from atari_vlm.models.base import VLM, Completion, ImagePart, Message, Request, TextPart, Usage
from atari_vlm.prompts import (
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

    Args:
        model: any :class:`~atari_vlm.models.base.VLM`.
        info: the game's catalog entry.
        action_names: the env's legal action names, in index order.
        prompt_style: a style name (``"basic"``) or a path to a template file.
        frame_stack, frame_layout: as in the env, so the prompt describes the images right.
        max_tokens, temperature: sampling settings sent with every request.
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
        max_tokens: int = 32,
        temperature: float = 0.0,
    ):
        self.model = model
        self.action_names = list(action_names)
        self.frame_layout = frame_layout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._fallback = self.action_names.index(FALLBACK_ACTION) if FALLBACK_ACTION in action_names else 0
        self.system_prompt = render_system_prompt(
            prompt_style, info, self.action_names, frame_stack=frame_stack, layout=frame_layout
        )
        self._system = Message.text("system", self.system_prompt)
        self._feedback = ""

    def reset(self, seed: int | None = None) -> None:
        self._feedback = ""

    def build_request(self, obs: dict[str, Any]) -> Request:
        """The request for one decision: the system prompt, then this turn's image(s) and text."""
        if self.frame_layout == "sequence":
            images = tuple(ImagePart(frame) for frame in obs["frames"])
        else:
            images = (ImagePart(obs["image"]),)
        turn = TextPart(render_turn_prompt(obs["text"], self._feedback))
        return Request(
            messages=(self._system, Message("user", (*images, turn))),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
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
        )

    async def act(self, obs: dict[str, Any]) -> Decision:
        completion = await self.model.generate(self.build_request(obs))
        return self.decide(completion)
