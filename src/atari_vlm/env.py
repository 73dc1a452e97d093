"""The Gymnasium environment a VLM plays: ale-py's ``ALE/<Game>-v5`` seen as images plus state text.

:class:`AtariVLMEnv` is a ``gymnasium.Env`` over ale-py's env (it composes with standard wrappers
and passes ``gymnasium.utils.env_checker.check_env``). Its observation is a ``Dict`` space:

- ``image``: what the model is shown this step: the current frame, or with ``frame_stack > 1`` and
  ``frame_layout="grid"`` all stacked frames laid out in one image (oldest first);
- ``frames``: the ``frame_stack`` most recent processed frames, oldest first, shape ``(n, H, W[, 3])``;
- ``text``: a short description of the game state, read from RAM (see :mod:`atari_vlm.state_text`).

The legal actions are the game's own names (``env.action_names``, from ``get_action_meanings()``).

Example:
    >>> from atari_vlm.env import make_env
    >>> env = make_env("Pong", resize_shape=(105, 80), seed=0)
    >>> obs, info = env.reset()
    >>> obs["image"].shape, env.action_names[:3]
    ((105, 80, 3), ['NOOP', 'FIRE', 'RIGHT'])
"""

from __future__ import annotations

import re
import string
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypedDict

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from atari_vlm import imaging
from atari_vlm.errors import ConfigError
from atari_vlm.games import game_info, resolve_game
from atari_vlm.state_text import GameState, describe

FrameLayout = Literal["grid", "sequence"]
FRAME_LAYOUTS: tuple[str, ...] = ("grid", "sequence")
NATIVE_SHAPE = (210, 160)
TEXT_CHARSET = frozenset(string.printable)
TEXT_MAX_LENGTH = 2048


class StepInfo(TypedDict):
    """What ``reset`` and ``step`` report besides the observation."""

    lives: int
    step: int  # decisions taken in this episode
    env_steps: int  # env steps in this episode (more than decisions with a decision interval)
    game_overs: int  # games restarted within this episode (reset_on_game_over)
    episode_frame_number: int
    episode_return: float


@dataclass(frozen=True)
class EnvConfig:
    """Every option of :class:`AtariVLMEnv`, validated on construction.

    Args:
        game: any spelling :func:`atari_vlm.games.resolve_game` accepts ("Pong", "ALE/Pong-v5", ...).
        resize_shape: (height, width) of each frame the model sees; ``None`` keeps the native 210x160.
        grayscale: show the model luminance only (a third of the bytes; colour often matters, so off).
        frame_stack: how many recent frames the model sees at each decision.
        frame_layout: ``"grid"`` puts the stacked frames in one image; ``"sequence"`` sends them apart.
        frame_skip: emulator frames per decision (the action repeats); ALE v5's default is 4.
        repeat_action_probability: sticky actions; ALE v5's default is 0.25 (Machado et al., 2018).
        max_steps: truncate an episode after this many decisions; ``None`` keeps the game's own cap.
        full_action_space: all 18 Atari actions instead of the game's minimal set.
        seed: seed of the first reset; later resets continue the emulator's RNG unless given a seed.
        noop_max: at each reset, play a random number in [0, noop_max] of NOOP steps first (DQN-style
            no-op starts; 0 off). Drawn from the env's seeded RNG.
        decision_interval: each ``step`` plays the chosen action once, then ``filler_action`` on the
            next ``decision_interval - 1`` env steps (the Atari-GPT protocol decides every other step).
        filler_action: the action name played between decisions (normally "NOOP").
        max_episode_frames: truncate after this many emulator frames (ALE's own cap; 108,000 = 30 min).
        total_env_steps: a budget of env steps for one episode of this env; with
            ``reset_on_game_over`` the game restarts on game over and rewards keep accumulating until
            the budget is spent (the Atari-GPT protocol's "1000 steps").
        reset_on_game_over: see ``total_env_steps``.
    """

    game: str
    resize_shape: tuple[int, int] | None = None
    grayscale: bool = False
    frame_stack: int = 1
    frame_layout: FrameLayout = "grid"
    frame_skip: int = 4
    repeat_action_probability: float = 0.25
    max_steps: int | None = None
    full_action_space: bool = False
    seed: int | None = None
    noop_max: int = 0
    decision_interval: int = 1
    filler_action: str = "NOOP"
    max_episode_frames: int | None = None
    total_env_steps: int | None = None
    reset_on_game_over: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "game", resolve_game(self.game))
        if self.resize_shape is not None:
            shape = self.resize_shape
            if not isinstance(shape, (tuple, list)) or len(shape) != 2:
                raise ConfigError(
                    f"resize_shape must be a (height, width) pair of integers or None, got {shape!r}"
                )
            if not all(_is_int(v) for v in shape):
                raise ConfigError(f"resize_shape must hold integers, got {shape!r}")
            if not all(8 <= v <= 1024 for v in shape):
                raise ConfigError(f"resize_shape sides must be between 8 and 1024 pixels, got {tuple(shape)}")
            object.__setattr__(self, "resize_shape", (int(shape[0]), int(shape[1])))
        if not isinstance(self.grayscale, bool):
            raise ConfigError(f"grayscale must be True or False, got {self.grayscale!r}")
        _check_int("frame_stack", self.frame_stack, 1, 16)
        if self.frame_layout not in FRAME_LAYOUTS:
            raise ConfigError(f"frame_layout must be one of {FRAME_LAYOUTS}, got {self.frame_layout!r}")
        _check_int("frame_skip", self.frame_skip, 1, 64)
        p = self.repeat_action_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"repeat_action_probability must be a number in [0, 1], got {p!r}")
        if self.max_steps is not None:
            _check_int("max_steps", self.max_steps, 1, 10_000_000)
        if not isinstance(self.full_action_space, bool):
            raise ConfigError(f"full_action_space must be True or False, got {self.full_action_space!r}")
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**32 - 1)
        _check_int("noop_max", self.noop_max, 0, 1000)
        _check_int("decision_interval", self.decision_interval, 1, 100)
        if not isinstance(self.filler_action, str) or not self.filler_action.strip():
            raise ConfigError(
                f"filler_action must be an action name such as 'NOOP', got {self.filler_action!r}"
            )
        object.__setattr__(self, "filler_action", self.filler_action.strip().upper())
        if self.max_episode_frames is not None:
            _check_int("max_episode_frames", self.max_episode_frames, 1, 10_000_000)
        if self.total_env_steps is not None:
            _check_int("total_env_steps", self.total_env_steps, 1, 10_000_000)
        if not isinstance(self.reset_on_game_over, bool):
            raise ConfigError(f"reset_on_game_over must be True or False, got {self.reset_on_game_over!r}")
        if self.reset_on_game_over and self.total_env_steps is None:
            raise ConfigError(
                "reset_on_game_over needs a total_env_steps budget (else every game ends the episode)"
            )

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """Shape of one processed frame."""
        h, w = self.resize_shape or NATIVE_SHAPE
        return (h, w) if self.grayscale else (h, w, 3)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize_shape"] = list(self.resize_shape) if self.resize_shape else None
        return d


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not _is_int(value):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:  # type: ignore[call-overload]
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


class AtariVLMEnv(gym.Env):
    """An ALE game as a VLM sees it. Build it with :func:`make_env`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(self, config: EnvConfig):
        import ale_py

        gym.register_envs(ale_py)
        inner = gym.make(
            game_info(config.game).env_id,
            obs_type="rgb",
            frameskip=config.frame_skip,
            repeat_action_probability=float(config.repeat_action_probability),
            full_action_space=config.full_action_space,
            max_num_frames_per_episode=config.max_episode_frames,
            render_mode="rgb_array",
        )
        self._inner = inner
        self.render_mode = "rgb_array"
        self.config = config
        self.game = config.game
        self.action_names: list[str] = list(inner.unwrapped.get_action_meanings())
        frame = config.frame_shape
        stack_shape = (config.frame_stack, *frame)
        if config.frame_layout == "grid" and config.frame_stack > 1:
            rows, cols = imaging.grid_shape(config.frame_stack)
            border = 2
            image_shape = (rows * frame[0] + (rows - 1) * border, cols * frame[1] + (cols - 1) * border)
            image_shape = (*image_shape, *frame[2:])
        else:
            image_shape = frame
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, image_shape, np.uint8),
                "frames": spaces.Box(0, 255, stack_shape, np.uint8),
                "text": spaces.Text(
                    max_length=TEXT_MAX_LENGTH, min_length=1, charset="".join(sorted(TEXT_CHARSET))
                ),
            }
        )
        self.action_space = spaces.Discrete(len(self.action_names))
        if config.decision_interval > 1 and config.filler_action not in self.action_names:
            raise ConfigError(
                f"filler_action {config.filler_action!r} is not an action of {self.game}; "
                f"its actions: {', '.join(self.action_names)}"
            )
        # (Backgammon, say, has no NOOP: the filler only matters with a decision interval.)
        names = self.action_names
        self._filler = names.index(config.filler_action) if config.filler_action in names else 0
        self._noop = self.action_names.index("NOOP") if "NOOP" in self.action_names else 0
        self._env_steps = 0
        self._game_overs = 0
        self._frames: deque[np.ndarray] = deque(maxlen=config.frame_stack)
        self._pending_seed = config.seed
        self._prev_ram: np.ndarray | None = None
        self._step = 0
        self._return = 0.0
        self._lives = 0
        self._last_rgb: np.ndarray | None = None

    @property
    def ale(self):  # the emulator, for RAM and lives
        return self._inner.unwrapped.ale

    @property
    def last_rgb_frame(self) -> np.ndarray | None:
        """The last full-resolution RGB frame (210x160x3), for videos; the model never sees this one."""
        return self._last_rgb

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], StepInfo]:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        rgb, ale_info = self._start_game(seed=seed, options=options)
        self._step = 0
        self._env_steps = 0
        self._game_overs = 0
        self._return = 0.0
        self._prev_ram = None
        frame = self._process(rgb)
        self._frames.clear()
        for _ in range(self.config.frame_stack):
            self._frames.append(frame)
        return self._observe(rgb, ale_info)

    def _start_game(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the emulator, then play the no-op start (its length from the env's seeded RNG)."""
        rgb, ale_info = self._inner.reset(seed=seed, options=options)
        noops = int(self.np_random.integers(0, self.config.noop_max + 1)) if self.config.noop_max else 0
        for _ in range(noops):
            rgb, _, terminated, truncated, ale_info = self._inner.step(self._noop)
            if terminated or truncated:
                rgb, ale_info = self._inner.reset()
        return rgb, ale_info

    def step(self, action: int) -> tuple[dict[str, Any], float, bool, bool, StepInfo]:
        if not self.action_space.contains(action):
            raise ValueError(
                f"action must be an integer in [0, {self.action_space.n}) for {self.game}, got {action!r}"
            )
        config = self.config
        reward, terminated, truncated = 0.0, False, False
        for i in range(config.decision_interval):
            rgb, r, terminated, truncated, ale_info = self._inner.step(
                int(action) if i == 0 else self._filler
            )
            self._env_steps += 1
            reward += float(r)
            budget_spent = config.total_env_steps is not None and self._env_steps >= config.total_env_steps
            if (terminated or truncated) and config.reset_on_game_over and not budget_spent:
                self._game_overs += 1  # the protocol plays on: a new game, rewards keep adding up
                rgb, ale_info = self._start_game()
                terminated = truncated = False
                break
            if budget_spent:
                truncated = True
            if terminated or truncated:
                break
        self._step += 1
        self._return += reward
        self._frames.append(self._process(rgb))
        if config.max_steps is not None and self._step >= config.max_steps:
            truncated = True
        obs, info = self._observe(rgb, ale_info)
        return obs, reward, bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        return self._last_rgb

    def close(self) -> None:
        self._inner.close()

    def _process(self, rgb: np.ndarray) -> np.ndarray:
        frame = imaging.resize(rgb, self.config.resize_shape)
        if self.config.grayscale:
            frame = imaging.to_grayscale(frame)
        return frame

    def _observe(self, rgb: np.ndarray, ale_info: dict[str, Any]) -> tuple[dict[str, Any], StepInfo]:
        self._last_rgb = rgb
        ram = self.ale.getRAM()
        self._lives = int(ale_info.get("lives", self.ale.lives()))
        text = describe(
            self.game,
            GameState(
                ram=ram,
                prev_ram=self._prev_ram,
                episode_return=self._return,
                lives=self._lives,
                step=self._step,
            ),
        )
        self._prev_ram = ram
        frames = np.stack(self._frames)
        if self.config.frame_layout == "grid" and self.config.frame_stack > 1:
            image = imaging.make_grid(list(self._frames))
        else:
            image = self._frames[-1]
        obs = {"image": image, "frames": frames, "text": _clean_text(text)}
        info: StepInfo = {
            "lives": self._lives,
            "step": self._step,
            "env_steps": self._env_steps,
            "game_overs": self._game_overs,
            "episode_frame_number": int(ale_info.get("episode_frame_number", 0)),
            "episode_return": self._return,
        }
        return obs, info


_OUTSIDE_CHARSET = re.compile(f"[^{re.escape(string.printable)}]")


def _clean_text(text: str) -> str:
    """Keep the state text inside the observation space's charset and length (cheap: runs every step)."""
    if _OUTSIDE_CHARSET.search(text):
        text = _OUTSIDE_CHARSET.sub("?", text)
    return (text or " ")[:TEXT_MAX_LENGTH]


def make_env(game: str, **options: Any) -> AtariVLMEnv:
    """Build the environment for ``game``; ``options`` are the fields of :class:`EnvConfig`.

    Raises:
        ConfigError: an unknown game or option, or an option with a bad value.
    """
    valid = set(EnvConfig.__dataclass_fields__) - {"game"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"unknown environment option(s) {unknown}; valid options: {sorted(valid)}")
    return AtariVLMEnv(EnvConfig(game=game, **options))
