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
The agents are thin, synchronous shells over the library's model backends: one class, configured by
a ``--model`` string; the named subclasses only choose the default.
"""

from __future__ import annotations

import asyncio
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

from atari_vlm import imaging
from atari_vlm.env import AtariVLMEnv, EnvConfig
from atari_vlm.games import game_info
from atari_vlm.models.base import ImagePart, Message, Request, TextPart
from atari_vlm.models.registry import LoadedModel, ModelOptions, load_model
from atari_vlm.prompts import DEFAULT_MAX_TOKENS, parse_action, render_system_prompt, render_turn_prompt


class AtariVLMEnvironment(gym.Wrapper):
    """:class:`~atari_vlm.env.AtariVLMEnv` with the seed's observation: PIL images and action names.

    ``obs`` is a dict: ``image`` (PIL, what the model is shown), ``text`` (state description),
    ``action_space`` (the legal action names), ``frames`` (the stacked frames as PIL images).
    """

    def __init__(
        self,
        game_name: str = "Pong-v5",
        resize_shape: tuple[int, int] | None = None,
        frame_skip: int = 4,
        **options: Any,
    ):
        super().__init__(
            AtariVLMEnv(
                EnvConfig(game=game_name, resize_shape=resize_shape, frame_skip=frame_skip, **options)
            )
        )
        self.game_name = self.env.game
        self.action_names: list[str] = self.env.action_names

    def _convert(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": imaging.to_pil(obs["image"]),
            "text": obs["text"],
            "action_space": list(self.action_names),
            "frames": [imaging.to_pil(f) for f in obs["frames"]],
            "pixels": obs["image"],  # the array behind "image", so agents need not convert back
        }

    def reset(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return self._convert(obs), info

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._convert(obs), reward, terminated, truncated, info

    def get_vlm_prompt(self, prompt_type: str = "basic") -> str:
        """The system prompt of a style (``basic``, ``cot``, ``expert``) or template file for this game."""
        config = self.env.config
        return render_system_prompt(
            prompt_type,
            game_info(self.game_name),
            self.action_names,
            frame_stack=config.frame_stack,
            layout=config.frame_layout,
        )


class ModelAgent:
    """``select_action(obs, prompt) -> int`` over any model atari-vlm can load.

    Args:
        model: a ``--model`` string: ``demo``, ``openai:<model>``, a checkpoint directory, ...
        api_key: for API models; else read from the provider's environment variable.
        max_tokens: per answer (default: enough for the longest prompt style's reasoning).
        **options: fields of :class:`~atari_vlm.models.registry.ModelOptions` (base_url, device, ...).
    """

    default_model = "auto"

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_tokens: int | None = None,
        **options: Any,
    ):
        self.loaded: LoadedModel = load_model(
            model or self.default_model, ModelOptions(api_key=api_key, **options)
        )
        self.max_tokens = max_tokens or max(DEFAULT_MAX_TOKENS.values())
        self.last_answer = ""
        self.invalid_answers = 0
        self._loop = asyncio.new_event_loop()

    def select_action(self, obs: dict[str, Any], prompt: str) -> int:
        """Ask the model; return the index of its action (NOOP, or 0, when it names none)."""
        pixels = obs.get("pixels")
        if pixels is None:
            image = obs["image"]
            pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        request = Request(
            messages=(
                Message.text("system", prompt),
                Message("user", (ImagePart(pixels), TextPart(render_turn_prompt(obs["text"])))),
            ),
            max_tokens=self.max_tokens,
        )
        completion = self._loop.run_until_complete(self.loaded.vlm.generate(request))
        self.last_answer = completion.text
        names = list(obs["action_space"])
        parsed = parse_action(completion.text, names)
        if parsed.index is None:
            self.invalid_answers += 1
            return names.index("NOOP") if "NOOP" in names else 0
        return parsed.index

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

    The seed's Claude 3.5 Sonnet is retired by Anthropic, so the default is the ``claude-sonnet-4``
    preset; ``ClaudeAgent(model="claude-3.5-sonnet")`` still names the seed's model.
    """

    default_model = "claude-sonnet-4"


class GeminiAgent(ModelAgent):
    """Google's Gemini; key from ``GEMINI_API_KEY``/``GOOGLE_API_KEY``.

    The seed's Gemini 1.5 Pro is retired by Google, so the default is the ``gemini-2.5-flash`` preset;
    ``GeminiAgent(model="gemini-1.5-pro")`` still names the seed's model.
    """

    default_model = "gemini-2.5-flash"


class QwenVLAgent(ModelAgent):
    """Qwen2-VL-7B-Instruct in-process (the ``qwen-vl`` preset), or pass a checkpoint directory."""

    default_model = "qwen-vl"


class LLaVAAgent(ModelAgent):
    """LLaVA-1.6 in-process (the ``llava-1.6`` preset), or pass a checkpoint directory."""

    default_model = "llava-1.6"
