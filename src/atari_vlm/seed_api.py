"""The API of the original atari-vlm description ("the seed"), working as documented there.

Example:
    >>> from atari_vlm import AtariVLMEnvironment, DemoAgent
    >>> env = AtariVLMEnvironment(game_name="Pong-v5", resize_shape=(112, 112), frame_skip=8)
    >>> obs, info = env.reset(seed=0)      # Gymnasium's (obs, info); the seed's reset returned obs only
    >>> obs["image"], obs["text"], obs["action_space"], obs["frames"]   # PIL image, str, names, PIL list
    >>> agent = DemoAgent()
    >>> action = agent.select_action(obs, env.get_vlm_prompt("expert"))
    >>> obs, reward, terminated, truncated, info = env.step(action)

One difference, on purpose: ``reset()`` returns ``(obs, info)`` as Gymnasium does, where the seed's
returned ``obs`` alone. ``resize_shape`` is (height, width), as in Gymnasium's ``ResizeObservation``.

The agents are thin adapters over the library's policy (:class:`atari_vlm.agent.VLMAgent`, built by
:func:`atari_vlm.workers.build_agent` from a run spec): the same request, parser, invalid-answer
feedback and cost accounting as ``atari-vlm play``, with the seed's ``select_action(obs, prompt)``
on top. One class, configured by a ``--model`` string; the named subclasses only choose the default.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

from atari_vlm import imaging
from atari_vlm.agent import VLMAgent
from atari_vlm.env import AtariVLMEnv, split_options
from atari_vlm.games import game_info
from atari_vlm.models.costs import BudgetedVLM
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.prompts import render_system_prompt
from atari_vlm.spec import DecodingSpec, EnvSpec, ModelSpec, ObservationSpec, PromptSpec, RunSpec
from atari_vlm.workers import vlm_agent

DEFAULT_GAME = "Pong"
"""The game a hand-made observation (one without "game") is taken to be: only the action names and
the caller's system prompt reach the model, so it names the request, nothing more."""


class AtariVLMEnvironment(gym.Wrapper):
    """:class:`~atari_vlm.env.AtariVLMEnv` with the seed's observation: PIL images and action names.

    ``obs`` is a dict: ``image`` (PIL, what the model is shown), ``text`` (state description),
    ``action_space`` (the legal action names), ``frames`` (the stacked frames as PIL images),
    ``game``, and ``pixels`` / ``frame_arrays`` (the images as arrays, what agents send).
    """

    def __init__(
        self,
        game_name: str = "Pong-v5",
        resize_shape: tuple[int, int] | None = None,
        frame_skip: int = 4,
        **options: Any,
    ):
        env_options, observation_options = split_options(
            {"resize_shape": resize_shape, "frame_skip": frame_skip, **options}
        )
        super().__init__(
            AtariVLMEnv(EnvSpec(game=game_name, **env_options), ObservationSpec(**observation_options))
        )
        self.game_name = self.env.game
        self.action_names: list[str] = self.env.action_names

    def _convert(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": imaging.to_pil(obs["image"]),
            "text": obs["text"],
            "action_space": list(self.action_names),
            "game": self.game_name,
            "frames": [imaging.to_pil(f) for f in obs["frames"]],
            "pixels": obs["image"],  # the arrays behind "image" and "frames", so agents need not convert
            "frame_arrays": obs["frames"],
        }

    def reset(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._convert(obs), info

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(obs), reward, terminated, truncated, info

    def get_vlm_prompt(self, prompt_type: str = "basic") -> str:
        """The system prompt of a style (``basic``, ``cot``, ``expert``) or template file for this game."""
        observation = self.env.observation_spec
        return render_system_prompt(
            PromptSpec(prompt=prompt_type).prompt,
            game_info(self.game_name),
            self.action_names,
            frame_stack=observation.frame_stack,
            layout=observation.frame_layout,
            state_text=observation.state_text,
        )


class ModelAgent:
    """``select_action(obs, prompt) -> int`` over any model atari-vlm can load.

    Each call is one decision of the library's policy: the same request as ``atari-vlm play`` with
    ``prompt`` as the system prompt, the same parser, the "your previous answer named no legal action"
    feedback on the next call, and every call priced (``cost_usd``, ``usage``).

    Args:
        model: a ``--model`` string: ``demo``, ``openai:<model>``, a checkpoint directory, ...
        api_key: for API models; else read from the provider's environment variable.
        max_tokens: per answer (default: enough for the longest prompt style's reasoning).
        **options: fields of :class:`~atari_vlm.spec.ModelSpec` (base_url, device, ...).
    """

    default_model = "auto"
    default_max_tokens = 256

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_tokens: int | None = None,
        **options: Any,
    ):
        self.model_spec = ModelSpec(model=model or self.default_model, api_key=api_key, **options)
        loaded = load_model(self.model_spec)
        self.loaded: LoadedModel = dataclasses.replace(
            loaded, vlm=BudgetedVLM(loaded.vlm, None, loaded.prices)
        )
        self.max_tokens = max_tokens or self.default_max_tokens
        self.last_answer = ""
        self.invalid_answers = 0
        self._policies: dict[tuple[str, tuple[str, ...], str], VLMAgent] = {}
        self._loop = asyncio.new_event_loop()

    @property
    def cost_usd(self) -> float | None:
        """Dollars spent so far (None when no price is known for the model)."""
        vlm = self.loaded.vlm
        return vlm.spent_usd if vlm.prices is not None else None

    def _policy(self, game: str, names: tuple[str, ...], prompt: str) -> VLMAgent:
        """One policy per game, action set and system prompt: its feedback carries over between calls."""
        key = (game, names, prompt)
        if key not in self._policies:
            spec = RunSpec(
                env=EnvSpec(game=game),
                model=self.model_spec,
                decoding=DecodingSpec(max_tokens=self.max_tokens),
            )
            self._policies[key] = vlm_agent(spec, names, self.loaded.vlm, system_prompt=prompt)
        return self._policies[key]

    def select_action(self, obs: dict[str, Any], prompt: str) -> int:
        """Ask the model; return the index of its action (NOOP, or 0, when it names none)."""
        names = tuple(obs["action_space"])
        policy = self._policy(str(obs.get("game", DEFAULT_GAME)), names, prompt)
        pixels = obs.get("pixels")
        if pixels is None:
            image = obs["image"]
            pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        frames = obs.get("frame_arrays")
        observation = {
            "image": pixels,
            "frames": frames if frames is not None else pixels[None],
            "text": obs["text"],
        }
        decision = self._loop.run_until_complete(policy.act(observation))
        self.last_answer = decision.text
        self.invalid_answers += not decision.parsed
        return decision.action

    def close(self) -> None:
        self._loop.run_until_complete(self.loaded.vlm.aclose())
        self._loop.close()


class DemoAgent(ModelAgent):
    """The tiny random-weight local VLM: runs anywhere, plays noise."""

    default_model = "demo"


class GPT4VAgent(ModelAgent):
    """OpenAI's vision models (GPT-4o by default); key from ``api_key`` or ``OPENAI_API_KEY``."""

    default_model = "openai:gpt-4o"


class ClaudeAgent(ModelAgent):
    """Anthropic's Claude; key from ``ANTHROPIC_API_KEY``.

    The seed's Claude 3.5 Sonnet is retired by Anthropic, so the default is the ``claude-sonnet-5``
    preset (thinking off for play); ``ClaudeAgent(model="claude-3.5-sonnet")`` still names the seed's
    model.
    """

    default_model = "claude-sonnet-5"


class GeminiAgent(ModelAgent):
    """Google's Gemini; key from ``GEMINI_API_KEY``/``GOOGLE_API_KEY``.

    The seed's Gemini 1.5 Pro is retired by Google, so the default is the ``gemini-3.5-flash-lite``
    preset; ``GeminiAgent(model="gemini-1.5-pro")`` still names the seed's model.
    """

    default_model = "gemini-3.5-flash-lite"


class QwenVLAgent(ModelAgent):
    """Qwen2-VL-7B-Instruct in-process (the ``qwen-vl`` preset), or pass a checkpoint directory."""

    default_model = "qwen-vl"


class LLaVAAgent(ModelAgent):
    """LLaVA-1.6 in-process (the ``llava-1.6`` preset), or pass a checkpoint directory."""

    default_model = "llava-1.6"
