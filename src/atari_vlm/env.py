"""The Gymnasium environment a VLM plays: ale-py's ``ALE/<Game>-v5`` seen as images plus state text.

:func:`make_env` builds ordinary Gymnasium wrappers (:mod:`atari_vlm.wrappers` and Gymnasium's own)
over an unmodified ``gym.make("ALE/<Game>-v5", ...)``, keeping v5's defaults (frame skip 4, sticky
actions 0.25, the 108,000-frame episode cap) unless the spec says otherwise. From the inside out::

    ALE/<Game>-v5                       frame skip (frameskip=1 under max-pooling), sticky actions, cap
    MaxPoolSkip                         max_pool: the frame skip, as the max of its last two frames
    NoopStart                           noop_max random NOOP steps at reset
    EnvStepBudget                       total_env_steps, reset_on_game_over
    DecisionInterval                    the filler action between decisions; counts env steps
    ResizeFrame, GrayscaleFrame         what one frame looks like to the model
    FrameStackObservation               the last frame_stack frames
    VLMObservation                      image (grid or current frame), frames, state text
    StuckEnd                            stuck_decisions: end when the screen stops changing
    TimeLimit                           max_steps decisions
    AtariVLMEnv                         the spec, action names, the native frame for videos

The observation is a ``Dict``: ``image`` (what the model is shown), ``frames`` (the stack, oldest
first) and ``text`` (the game state read from RAM, or "" with ``state_text`` off). The legal actions
are the game's own names (``env.action_names``, from ``get_action_meanings()``).

Every game is also registered with Gymnasium as ``AtariVLM/<Game>-v0`` once this module is imported:
``gym.make("AtariVLM/Pong-v0", frame_stack=2)`` (options as for :func:`make_env`).

Example:
    >>> from atari_vlm.env import make_env
    >>> env = make_env("Pong", resize_shape=(105, 80), seed=0)
    >>> obs, info = env.reset()
    >>> obs["image"].shape, env.action_names[:3]
    ((105, 80, 3), ['NOOP', 'FIRE', 'RIGHT'])
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import FrameStackObservation, TimeLimit

from atari_vlm.errors import ConfigError
from atari_vlm.games import all_games, game_info
from atari_vlm.spec import EnvSpec, ObservationSpec, check_int
from atari_vlm.wrappers import (
    DecisionInterval,
    EnvStepBudget,
    GrayscaleFrame,
    MaxPoolSkip,
    NoopStart,
    ResizeFrame,
    StuckEnd,
    VLMObservation,
)

NATIVE_SHAPE = (210, 160)
REGISTERED_PREFIX = "AtariVLM"


class StepInfo(TypedDict, total=False):
    """What ``reset`` and ``step`` report besides the observation."""

    lives: int
    step: int  # decisions taken in this episode
    env_steps: int  # env steps in this episode (more than decisions with a decision interval)
    game_overs: int  # games restarted within this episode (reset_on_game_over)
    episode_frame_number: int
    episode_return: float
    stuck: bool  # the episode ended because the screen had stopped changing (stuck_decisions)


def ale_env(env: EnvSpec, *, render_mode: str | None = "rgb_array", obs_type: str = "rgb") -> gym.Env:
    """The unmodified ALE v5 env of ``env``'s game with its emulator settings."""
    import ale_py

    gym.register_envs(ale_py)
    return gym.make(
        game_info(env.game).env_id,
        obs_type=obs_type,
        frameskip=env.frame_skip,
        repeat_action_probability=env.repeat_action_probability,
        full_action_space=env.full_action_space,
        max_num_frames_per_episode=env.max_episode_frames,
        render_mode=render_mode,
    )


def _action_index(names: list[str], name: str, what: str, game: str) -> int:
    if name not in names:
        raise ConfigError(f"{what} {name!r} is not an action of {game}; its actions: {', '.join(names)}")
    return names.index(name)


class AtariVLMEnv(gym.Wrapper):
    """The outermost wrapper of the stack :func:`make_env` builds: it holds the spec and exposes what
    the rest of atari-vlm reads (``action_names``, ``ale``, ``last_rgb_frame``)."""

    def __init__(
        self, env: EnvSpec, observation: ObservationSpec | None = None, *, seed: int | None = None
    ) -> None:
        observation = observation or ObservationSpec()
        pooled = observation.max_pool and env.frame_skip > 1
        # Max-pooling does the frame skip itself, reading only the last two screens of each skip.
        base = ale_env(dataclasses.replace(env, frame_skip=1), obs_type="ram") if pooled else ale_env(env)
        names = list(base.unwrapped.get_action_meanings())
        noop = names.index("NOOP") if "NOOP" in names else 0  # Backgammon, say, has no NOOP
        filler = noop
        if env.decision_interval > 1:
            filler = _action_index(names, env.filler_action, "filler_action", env.game)
        stack: gym.Env = base
        if pooled:
            stack = MaxPoolSkip(stack, env.frame_skip)
        if env.noop_max:
            stack = NoopStart(stack, env.noop_max, noop_action=noop)
        if env.total_env_steps is not None:
            stack = EnvStepBudget(stack, env.total_env_steps, reset_on_game_over=env.reset_on_game_over)
        stack = DecisionInterval(stack, env.decision_interval, filler_action=filler)
        if observation.resize_shape is not None and observation.resize_shape != NATIVE_SHAPE:
            stack = ResizeFrame(stack, observation.resize_shape)
        if observation.grayscale:
            stack = GrayscaleFrame(stack)
        stack = FrameStackObservation(stack, observation.frame_stack)
        stack = VLMObservation(
            stack, env.game, layout=observation.frame_layout, state_text=observation.state_text
        )
        if env.stuck_decisions is not None:
            stack = StuckEnd(stack, env.stuck_decisions)
        if env.max_steps is not None:
            stack = TimeLimit(stack, env.max_steps)
        super().__init__(stack)
        self.env_spec = env
        self.observation_spec = observation
        self.game = env.game
        self.action_names: list[str] = names
        self._pending_seed = seed

    @property
    def spec(self) -> gym.envs.registration.EnvSpec:  # type: ignore[override]
        """The registered ``AtariVLM/<Game>-v0`` id with this env's options: ``env.spec.make()`` builds
        the same env again (Gymnasium's env checker does)."""
        registered = gym.spec(f"{REGISTERED_PREFIX}/{self.game}-v0")
        options = {**self.env_spec.to_dict(), **self.observation_spec.to_dict()}
        defaults = {
            name: default for cls in (EnvSpec, ObservationSpec) for name, _, default in cls.settings()
        }
        changed = {k: v for k, v in options.items() if k != "game" and v != defaults.get(k)}
        if "resize_shape" in changed:
            changed["resize_shape"] = tuple(changed["resize_shape"])
        return dataclasses.replace(registered, kwargs={**registered.kwargs, **changed})

    @property
    def ale(self) -> Any:
        """The emulator (RAM, lives, screen)."""
        return self.unwrapped.ale

    @property
    def last_rgb_frame(self) -> np.ndarray:
        """The current native 210x160 RGB frame, for videos: the model is shown the processed one."""
        return self.ale.getScreenRGB()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict, StepInfo]:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, self._info(info)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, StepInfo]:
        legal = isinstance(action, (int, np.integer)) and not isinstance(action, bool)
        if not (legal and 0 <= action < len(self.action_names)):
            raise ValueError(
                f"action must be an integer in [0, {self.action_space.n}) for {self.game}, got {action!r}"
            )
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        return obs, float(reward), bool(terminated), bool(truncated), self._info(info)

    @staticmethod
    def _info(info: dict[str, Any]) -> StepInfo:
        keep = ("lives", "step", "env_steps", "game_overs", "episode_frame_number", "episode_return", "stuck")
        out = {k: info[k] for k in keep if k in info}
        out.setdefault("game_overs", 0)
        out.setdefault("stuck", False)
        return out  # type: ignore[return-value]


ENV_OPTIONS: frozenset[str] = frozenset(
    name for cls in (EnvSpec, ObservationSpec) for name, *_ in cls.settings() if name != "game"
)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``make_env``'s flat options as (EnvSpec fields, ObservationSpec fields).

    Raises:
        ConfigError: an option that is neither.
    """
    unknown = sorted(set(options) - ENV_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown environment option(s) {unknown}; valid options: {sorted(ENV_OPTIONS)}")
    observation_names = {name for name, *_ in ObservationSpec.settings()}
    env = {k: v for k, v in options.items() if k not in observation_names}
    return env, {k: v for k, v in options.items() if k in observation_names}


def make_env(game: str, *, seed: int | None = None, **options: Any) -> AtariVLMEnv:
    """Build the environment for ``game``; ``options`` are the fields of
    :class:`~atari_vlm.spec.EnvSpec` and :class:`~atari_vlm.spec.ObservationSpec`; ``seed`` seeds the
    first reset.

    Raises:
        ConfigError: an unknown game or option, or an option with a bad value.
    """
    env_options, observation_options = split_options(options)
    if seed is not None:
        seed = check_int("seed", seed, 0, 2**32 - 1)
    return AtariVLMEnv(EnvSpec(game=game, **env_options), ObservationSpec(**observation_options), seed=seed)


def _register() -> None:
    for name in all_games():
        env_id = f"{REGISTERED_PREFIX}/{name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="atari_vlm.env:make_env", kwargs={"game": name})


_register()
