"""Prompt building, and nothing else: the system prompt and each decision's request, from the spec.

Pure (no model, no I/O after the template is read): the policy in :mod:`atari_vlm.agent` asks it for
a request, fine-tuning asks it for the exact request play would send, and the viewer can show it.

A request is the system prompt, then one user message (some local chat templates refuse two user
turns in a row) holding, in order: in-context exemplars, recalled history, the current screen(s) and
the turn text. The part that is the same at every decision of a run (system prompt, exemplars) comes
first, so that providers' prompt caches can reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atari_vlm.games import GameInfo
from atari_vlm.memory import Exemplar
from atari_vlm.models.base import DecodeMode, ImagePart, Message, Part, Request, TextPart
from atari_vlm.prompts import DEFAULT_MAX_TOKENS, render_system_prompt, render_turn_prompt
from atari_vlm.spec import DecodingSpec, ObservationSpec, PromptSpec

__all__ = ["JSON_EXTRA_TOKENS", "PromptBuilder", "Recall"]

JSON_EXTRA_TOKENS = 32
"""A JSON answer spends tokens on its braces and keys."""


@dataclass(frozen=True)
class Recall:
    """One past decision as the history recalls it."""

    step: int
    action_name: str
    why: str = ""


class PromptBuilder:
    """The requests of one game under one prompt, observation and decoding spec.

    Args:
        info: the game's catalog entry.
        action_names: the env's legal action names, in index order.
        prompt, observation, decoding: the spec sections (defaults: the spec's defaults).
        system_prompt: a system prompt of the caller's own (the seed API's ``select_action(obs,
            prompt)``) instead of the one the prompt style renders.
    """

    def __init__(
        self,
        info: GameInfo,
        action_names: Sequence[str],
        prompt: PromptSpec | None = None,
        observation: ObservationSpec | None = None,
        decoding: DecodingSpec | None = None,
        *,
        system_prompt: str | None = None,
    ) -> None:
        self.prompt = prompt or PromptSpec()
        self.observation = observation or ObservationSpec()
        self.decoding = decoding or DecodingSpec()
        self.action_names = tuple(action_names)
        if system_prompt is None:
            system_prompt = render_system_prompt(
                self.prompt.prompt,
                info,
                list(self.action_names),
                frame_stack=self.observation.frame_stack,
                layout=self.observation.frame_layout,
                answer_format=self.prompt.answer_format,
                state_text=self.observation.state_text,
                screen=self.observation.screen,
            )
        self.system_prompt = system_prompt
        self._system = Message.text("system", self.system_prompt)
        max_tokens = self.decoding.max_tokens or DEFAULT_MAX_TOKENS.get(self.prompt.prompt, 128)
        if self.decoding.max_tokens is None and self.prompt.answer_format == "json":
            max_tokens += JSON_EXTRA_TOKENS
        self.max_tokens = max_tokens

    @property
    def reasoning(self) -> bool:
        """Whether answers reason before the action (every style but basic; a custom template is
        assumed to), so that a constrained answer reasons first."""
        return self.prompt.prompt != "basic"

    def exemplar_parts(self, exemplars: Sequence[Exemplar]) -> tuple[Part, ...]:
        """The examples as message parts (render once; they are the same at every decision)."""
        if not exemplars:
            return ()
        screen = self.observation.screen
        intro = "(the screen, then what was done)" if screen else "(the state, then what was done)"
        parts: list[Part] = [TextPart(f"Examples from your best past games {intro}:")]
        for i, ex in enumerate(exemplars, 1):
            if screen:
                parts.append(ImagePart(ex.image))
            note = f" ({ex.note})" if ex.note else ""
            state = f"state: {ex.state_text}\n" if self.observation.state_text and ex.state_text else ""
            parts.append(TextPart(f"Example {i}: {state}ACTION: {ex.action_name}{note}"))
        parts.append(TextPart("Now the current game."))
        return tuple(parts)

    @staticmethod
    def history_text(history: Sequence[Recall]) -> str:
        if not history:
            return ""
        lines = [f"- step {r.step}: {r.action_name}" + (f" ({r.why})" if r.why else "") for r in history]
        return "Your recent decisions, oldest first:\n" + "\n".join(lines) + "\n"

    def request(
        self,
        obs: dict[str, Any],
        *,
        exemplars: Sequence[Part] = (),
        history: Sequence[Recall] = (),
        history_images: Sequence[tuple[int, np.ndarray]] = (),
        feedback: str = "",
        decode: DecodeMode = "free",
    ) -> Request:
        """The request for one decision on observation ``obs`` (an env observation dict)."""
        parts: list[Part] = list(exemplars)
        screen = self.observation.screen
        for step, image in history_images if screen else ():
            parts.append(TextPart(f"The screen at step {step}:"))
            parts.append(ImagePart(image))
        sequence = self.observation.frame_layout == "sequence" and self.observation.frame_stack > 1
        if parts and screen:
            # Said apart from the remembered screens before it: a video model reads a run of
            # consecutive images as one clip, which must be the current frame stack alone.
            parts.append(TextPart("The screens now:" if sequence else "The screen now:"))
        if screen and sequence:
            parts.extend(ImagePart(frame) for frame in obs["frames"])
        elif screen:
            parts.append(ImagePart(obs["image"]))
        state = obs.get("text", "") if self.observation.state_text else ""
        turn = render_turn_prompt(state, feedback, self.history_text(history), self.prompt.answer_format)
        parts.append(TextPart(turn))
        return Request(
            messages=(self._system, Message("user", tuple(parts))),
            stable_prefix=1 + len(exemplars),  # the system prompt and exemplars: a provider may cache them
            max_tokens=self.max_tokens,
            temperature=self.decoding.temperature,
            json_mode=self.prompt.answer_format == "json",
            choices=self.action_names if decode != "free" else (),
            decode=decode,
            reasoning=self.reasoning,
        )
