"""Gymnasium wrappers that turn an ALE env into what a VLM plays: each does one job.

They wrap any ``gym.make("ALE/<Game>-v5", ...)`` env (a user's own included) and compose with
Gymnasium's standard wrappers (``FrameStackObservation``, ``TimeLimit``), which
:func:`atari_vlm.env.make_env` uses for frame stacks and decision caps.

Example:
    >>> import ale_py, gymnasium as gym
    >>> from atari_vlm.wrappers import DecisionInterval, NoopStart, ResizeFrame
    >>> gym.register_envs(ale_py)
    >>> env = NoopStart(gym.make("ALE/Pong-v5"), 30)
    >>> env = ResizeFrame(DecisionInterval(env, 2, filler_action=0), (105, 80))
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape
    (105, 80, 3)

Counters reported in ``info``: ``env_steps`` (ALE steps this episode, by :class:`DecisionInterval`),
``game_overs`` (games restarted within the episode, by :class:`EnvStepBudget`), ``step`` and
``episode_return`` (decisions and reward so far, by :class:`VLMObservation`).
"""

from __future__ import annotations

import re
import string
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from atari_vlm import imaging
from atari_vlm.errors import ConfigError
from atari_vlm.spec import check_int
from atari_vlm.state_text import GameState, describe

__all__ = [
    "TEXT_CHARSET",
    "TEXT_MAX_LENGTH",
    "DecisionInterval",
    "EnvStepBudget",
    "GrayscaleFrame",
    "MaxPoolSkip",
    "NoopStart",
    "ResizeFrame",
    "StuckEnd",
    "VLMObservation",
]

TEXT_CHARSET = frozenset(string.printable)
TEXT_MAX_LENGTH = 2048
StepResult = tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]


def _check_positive(name: str, value: Any, low: int) -> int:
    return check_int(name, value, low, 2**31 - 1)


class MaxPoolSkip(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Frame skip with max-pooling: each step repeats the action for ``skip`` emulator frames and
    returns the pixel-wise max of the last two, so sprites drawn on alternate frames (Ms. Pac-Man's
    ghosts, Space Invaders' shots) stay visible (the DQN preprocessing).

    It wraps an ALE env made with ``frameskip=1``; ``obs_type="ram"`` makes the frames between cheap
    (only the last two screens are read, like ale-py's own frame skip reads only the last one).
    Sticky actions stay per emulator frame, inside ALE, so the game is the one ``frameskip=skip``
    would play.
    """

    def __init__(self, env: gym.Env, skip: int):
        gym.utils.RecordConstructorArgs.__init__(self, skip=skip)
        super().__init__(env)
        self.skip = _check_positive("skip", skip, 2)
        if getattr(env.unwrapped, "_frameskip", 1) != 1:
            raise ConfigError("MaxPoolSkip needs an ALE env made with frameskip=1: it does the skipping")
        self._ale = env.unwrapped.ale
        height, width = self._ale.getScreenDims()  # 210x160 for most games, 250 tall for a few
        self.observation_space = spaces.Box(0, 255, (height, width, 3), np.uint8)
        self._frames = np.zeros((2, height, width, 3), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        _, info = self.env.reset(seed=seed, options=options)
        return self._ale.getScreenRGB(), info

    def step(self, action: Any) -> StepResult:
        total = 0.0
        frames = self._frames
        for i in range(self.skip):
            _, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if i >= self.skip - 2:
                self._ale.getScreenRGB(frames[i - self.skip + 2])
            if terminated or truncated:
                if i < self.skip - 1:  # ended early: the frames of this step are the last two played
                    self._ale.getScreenRGB(frames[1])
                    if i < self.skip - 2:
                        frames[0] = frames[1]
                break
        return np.maximum(frames[0], frames[1]), total, terminated, truncated, info


class NoopStart(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """At each reset, play a random number in ``[0, noop_max]`` of NOOP steps first (DQN-style starts).

    The count comes from the wrapper's own generator, seeded by ``reset(seed=...)``, so a seeded
    episode repeats exactly. A game that ends during the no-ops is reset again.
    """

    def __init__(self, env: gym.Env, noop_max: int, *, noop_action: int = 0):
        gym.utils.RecordConstructorArgs.__init__(self, noop_max=noop_max, noop_action=noop_action)
        super().__init__(env)
        self.noop_max = _check_positive("noop_max", noop_max, 0)
        self.noop_action = noop_action
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4E4F4F50]))  # "NOOP"
        for _ in range(int(self._rng.integers(0, self.noop_max + 1)) if self.noop_max else 0):
            obs, _, terminated, truncated, info = self.env.step(self.noop_action)
            if terminated or truncated:
                obs, info = self.env.reset()
        return obs, info


class EnvStepBudget(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """An episode of exactly ``total_env_steps`` env steps (the Atari-GPT protocol's "1000 steps").

    With ``reset_on_game_over`` a game that ends before the budget is spent restarts (unseeded, so the
    emulator's RNG runs on) and rewards keep adding up; ``info["game_overs"]`` counts the restarts and
    ``info["new_game"]`` marks the step that began one. Without it, the first game over ends the episode.
    """

    def __init__(self, env: gym.Env, total_env_steps: int, *, reset_on_game_over: bool = False):
        gym.utils.RecordConstructorArgs.__init__(
            self, total_env_steps=total_env_steps, reset_on_game_over=reset_on_game_over
        )
        super().__init__(env)
        self.total_env_steps = _check_positive("total_env_steps", total_env_steps, 1)
        self.reset_on_game_over = bool(reset_on_game_over)
        self._used = 0
        self._game_overs = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._used = self._game_overs = 0
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "game_overs": 0}

    def step(self, action: Any) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._used += 1
        spent = self._used >= self.total_env_steps
        new_game = False
        if (terminated or truncated) and self.reset_on_game_over and not spent:
            self._game_overs += 1
            obs, info = self.env.reset()
            terminated = truncated = False
            new_game = True
        if spent:
            truncated = True
        return (
            obs,
            reward,
            terminated,
            truncated,
            {**info, "game_overs": self._game_overs, "new_game": new_game},
        )


class DecisionInterval(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Each ``step`` plays the chosen action once, then ``filler_action`` on the next ``interval - 1``
    env steps (the Atari-GPT protocol decides every other step). Rewards add up; the step ends early
    when the episode ends or a new game begins. ``info["env_steps"]`` counts env steps this episode.
    """

    def __init__(self, env: gym.Env, interval: int, *, filler_action: int = 0):
        gym.utils.RecordConstructorArgs.__init__(self, interval=interval, filler_action=filler_action)
        super().__init__(env)
        self.interval = _check_positive("decision_interval", interval, 1)
        self.filler_action = filler_action
        self._env_steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._env_steps = 0
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "env_steps": 0}

    def step(self, action: Any) -> StepResult:
        total = 0.0
        for i in range(self.interval):
            obs, reward, terminated, truncated, info = self.env.step(action if i == 0 else self.filler_action)
            self._env_steps += 1
            total += float(reward)
            if terminated or truncated or info.get("new_game"):
                break
        return obs, total, terminated, truncated, {**info, "env_steps": self._env_steps}


class ResizeFrame(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Frames resized to ``shape`` = (height, width): area interpolation when shrinking keeps thin
    sprites visible (Pong's ball is 2 pixels wide), nearest-neighbour when enlarging."""

    def __init__(self, env: gym.Env, shape: tuple[int, int]):
        gym.utils.RecordConstructorArgs.__init__(self, shape=shape)
        super().__init__(env)
        self.shape = (int(shape[0]), int(shape[1]))
        old = env.observation_space
        self.observation_space = spaces.Box(0, 255, (*self.shape, *old.shape[2:]), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return imaging.resize(observation, self.shape)


class GrayscaleFrame(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """RGB frames as luminance (H, W): a third of the bytes."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, env.observation_space.shape[:2], np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return imaging.to_grayscale(observation)


class StuckEnd(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """End an episode once the screen has not changed for ``decisions`` steps in a row (Breakout
    waiting for FIRE, a paused game), so that a stuck agent neither plays on to the frame cap nor
    bills for it. The step that ends it is truncated with ``info["stuck"] = True``.

    It compares the newest frame of a :class:`VLMObservation` (what the model sees).
    """

    def __init__(self, env: gym.Env, decisions: int):
        gym.utils.RecordConstructorArgs.__init__(self, decisions=decisions)
        super().__init__(env)
        self.decisions = _check_positive("stuck_decisions", decisions, 2)
        self._last: bytes | None = None
        self._same = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._last, self._same = obs["frames"][-1].tobytes(), 0
        return obs, {**info, "stuck": False}

    def step(self, action: Any) -> StepResult:
        obs, reward, terminated, truncated, info = self.env.step(action)
        frame = obs["frames"][-1].tobytes()
        self._same = self._same + 1 if frame == self._last else 0
        self._last = frame
        stuck = self._same >= self.decisions and not terminated
        return obs, reward, terminated, truncated or stuck, {**info, "stuck": stuck}


_OUTSIDE_CHARSET = re.compile(f"[^{re.escape(string.printable)}]")


def clean_text(text: str) -> str:
    """Keep the state text inside the observation space's charset and length (runs every step)."""
    if _OUTSIDE_CHARSET.search(text):
        text = _OUTSIDE_CHARSET.sub("?", text)
    return text[:TEXT_MAX_LENGTH]


class VLMObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """A stack of frames (``FrameStackObservation``'s output, oldest first) as what a VLM is shown:

    - ``image``: the current frame, or with ``layout="grid"`` and several frames one image of all;
    - ``frames``: the stacked frames, ``(n, H, W[, 3])``;
    - ``text``: the game state read from RAM (:mod:`atari_vlm.state_text`); empty with ``state_text``
      off.

    ``info`` gains ``step`` (decisions this episode) and ``episode_return``.
    """

    def __init__(self, env: gym.Env, game: str, *, layout: str = "grid", state_text: bool = True):
        gym.utils.RecordConstructorArgs.__init__(self, game=game, layout=layout, state_text=state_text)
        super().__init__(env)
        if layout not in ("grid", "sequence"):
            raise ConfigError(f"frame_layout must be grid or sequence, got {layout!r}")
        self.game = game
        self.layout = layout
        self.state_text = state_text
        stack = env.observation_space
        n, frame = stack.shape[0], stack.shape[1:]
        if layout == "grid" and n > 1:
            rows, cols = imaging.grid_shape(n)
            border = 2
            image = (rows * frame[0] + (rows - 1) * border, cols * frame[1] + (cols - 1) * border, *frame[2:])
        else:
            image = frame
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, image, np.uint8),
                "frames": spaces.Box(0, 255, stack.shape, np.uint8),
                "text": spaces.Text(
                    max_length=TEXT_MAX_LENGTH, min_length=0, charset="".join(sorted(TEXT_CHARSET))
                ),
            }
        )
        self._prev_ram: np.ndarray | None = None
        self._step = 0
        self._return = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        frames, info = self.env.reset(seed=seed, options=options)
        self._prev_ram, self._step, self._return = None, 0, 0.0
        return self._observe(frames, info)

    def step(self, action: Any) -> StepResult:
        frames, reward, terminated, truncated, info = self.env.step(action)
        self._step += 1
        self._return += float(reward)
        obs, info = self._observe(frames, info)
        return obs, reward, terminated, truncated, info

    def _observe(self, frames: np.ndarray, info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        ale = self.env.unwrapped.ale
        lives = int(info.get("lives", ale.lives()))
        text = ""
        if self.state_text:
            ram = ale.getRAM()
            state = GameState(
                ram=ram, prev_ram=self._prev_ram, episode_return=self._return, lives=lives, step=self._step
            )
            text = clean_text(describe(self.game, state))
            self._prev_ram = ram
        if self.layout == "grid" and len(frames) > 1:
            image = imaging.make_grid(list(frames))
        else:
            image = frames[-1]
        obs = {"image": image, "frames": frames, "text": text}
        return obs, {**info, "lives": lives, "step": self._step, "episode_return": self._return}
