"""Record demonstrations: episodes played by the RAM expert, a person at the keyboard, or the random
agent, written into a :class:`~atari_vlm.memory.TrajectoryStore` in the memory's own format.

Recording is ordinary play (:func:`atari_vlm.rollout.play_episodes`) with the store's recorder as the
episode sink, so a demonstration holds exactly what a model would have seen at each decision (the
image and the state text) and the action taken. Demonstrations feed in-context learning
(``atari-vlm train --demo``) and fine-tuning (:mod:`atari_vlm.training.finetune`).

Human play opens a window (pygame, the ``human`` extra) showing the screen scaled up; the arrow keys
and space map to the game's actions. It needs a display: where pygame can open no real window (no
``DISPLAY``, or ``SDL_VIDEODRIVER=dummy``) it is refused before anything is recorded, rather than
recording a person who cannot see the game pressing nothing. A scripted key source (one set of key
names per decision) plays without a person, so it needs no display (tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from atari_vlm.agent import Agent, Decision, RandomAgent
from atari_vlm.env import AtariVLMEnv, split_options
from atari_vlm.errors import ConfigError, require
from atari_vlm.experts import ExpertAgent
from atari_vlm.memory import EpisodeMeta, TrajectoryStore
from atari_vlm.rollout import EpisodeSeeds, play_episodes
from atari_vlm.spec import EnvSpec, ObservationSpec

__all__ = ["AGENTS", "HUMAN_FPS", "KEYS", "HumanAgent", "RecordingStopped", "keys_to_action", "record"]

AGENTS: tuple[str, ...] = ("expert", "human", "random")
# Where each agent's episodes are filed in the memory (memory.SOURCES): random play is no expertise.
_SOURCE = {"expert": "expert", "human": "human", "random": "demo"}
HUMAN_FPS = 15.0  # decisions per second for a person: 60 emulator frames / frame skip 4
KEYS: tuple[str, ...] = ("up", "down", "left", "right", "space")
# Games whose own action names do not say what the arrow keys mean on screen.
_ALIASES: dict[str, dict[str, str]] = {
    "Pong": {"UP": "RIGHT", "DOWN": "LEFT"}
}  # RIGHT moves Pong's paddle up


# pygame's video drivers that open no window a person could see.
_WINDOWLESS_DRIVERS = frozenset({"dummy", "offscreen"})


def require_display(pg: ModuleType) -> None:
    """Refuse human play where pygame can open no window a person could see.

    Raises:
        ConfigError: pygame finds no display, or only a windowless video driver.
    """
    advice = "run it in a desktop session (DISPLAY set), or record with --agent expert or --agent random"
    try:
        pg.display.init()
        driver = pg.display.get_driver()
    except pg.error as exc:
        raise ConfigError(
            f"record --agent human needs a display for the game window; pygame: {exc}; {advice}"
        ) from exc
    finally:
        pg.display.quit()
    if driver in _WINDOWLESS_DRIVERS:
        raise ConfigError(
            f"record --agent human needs a display for the game window, but pygame has only its windowless "
            f"{driver!r} video driver here (no DISPLAY, or SDL_VIDEODRIVER={driver}); {advice}"
        )


class RecordingStopped(Exception):
    """The person closed the window or pressed Escape: the episode in progress is dropped."""


def keys_to_action(keys: Iterable[str], game: str, action_names: list[str]) -> str:
    """The legal action that the pressed ``keys`` mean in ``game``; NOOP when they mean none.

    Arrows compose as ALE names them (up + right + space: ``UPRIGHTFIRE``); a combination the game
    lacks drops FIRE, then the horizontal part, then the vertical part, until a legal name remains.

    Raises:
        ConfigError: a key name outside :data:`KEYS`.
    """
    pressed = set(keys)
    unknown = sorted(pressed - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key name(s) {unknown}; valid: {', '.join(KEYS)}")
    alias = _ALIASES.get(game, {})
    vertical = "UP" if "up" in pressed and "down" not in pressed else "DOWN" if "down" in pressed else ""
    horizontal = (
        "RIGHT" if "right" in pressed and "left" not in pressed else "LEFT" if "left" in pressed else ""
    )
    if vertical in alias:  # a game that moves "up" with another name (Pong)
        horizontal, vertical = horizontal or alias[vertical], ""
    fire = "FIRE" if "space" in pressed else ""
    for parts in (
        (vertical, horizontal, fire),
        (vertical, horizontal),
        (vertical, fire),
        (vertical,),
        (horizontal, fire),
        (horizontal,),
        (fire,),
    ):
        name = "".join(parts)
        if name and name in action_names:
            return name
    return "NOOP" if "NOOP" in action_names else action_names[0]


_PYGAME_KEYS = {"up": "K_UP", "down": "K_DOWN", "left": "K_LEFT", "right": "K_RIGHT", "space": "K_SPACE"}


class HumanAgent:
    """A person plays with the keyboard in a pygame window (implements the Agent protocol).

    Each decision shows the current screen scaled ``scale`` times, reads the keys held down (or the
    next set from ``key_source``), and waits to keep ``fps`` decisions per second (default: a pace a
    person can follow, :data:`HUMAN_FPS`; with a key source, no waiting). Escape or closing the window raises
    :class:`RecordingStopped`.
    """

    def __init__(
        self,
        env: AtariVLMEnv,
        *,
        key_source: Iterable[Iterable[str]] | None = None,
        scale: int = 3,
        fps: float | None = None,
    ):
        self._pg = require("pygame", extra="human")
        if not isinstance(scale, int) or isinstance(scale, bool) or not 1 <= scale <= 8:
            raise ConfigError(f"scale must be an integer in [1, 8], got {scale!r}")
        self.env = env
        self.action_names = list(env.action_names)
        self._index = {name: i for i, name in enumerate(self.action_names)}
        self._keys: Iterator[Iterable[str]] | None = iter(key_source) if key_source is not None else None
        self._fps = fps if fps is not None else None if key_source is not None else HUMAN_FPS
        self._scale = scale
        self._screen: Any = None
        self._last = 0.0

    def reset(self, seed: int | None = None) -> None:
        self._last = 0.0

    def _show(self) -> None:
        pg = self._pg
        frame = self.env.last_rgb_frame
        h, w = frame.shape[:2]
        if self._screen is None:
            pg.display.init()
            pg.display.set_caption(f"atari-vlm: {self.env.game} (arrows + space; Esc stops)")
            self._screen = pg.display.set_mode((w * self._scale, h * self._scale))
        surface = pg.surfarray.make_surface(frame.swapaxes(0, 1))
        self._screen.blit(pg.transform.scale(surface, self._screen.get_size()), (0, 0))
        pg.display.flip()

    def _pressed(self) -> set[str]:
        pg = self._pg
        for event in pg.event.get():
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key == pg.K_ESCAPE):
                raise RecordingStopped("the window was closed")
        if self._keys is not None:
            return set(next(self._keys, ()))
        held = pg.key.get_pressed()
        return {name for name, const in _PYGAME_KEYS.items() if held[getattr(pg, const)]}

    async def act(self, obs: dict[str, Any]) -> Decision:
        self._show()
        name = keys_to_action(self._pressed(), self.env.game, self.action_names)
        if self._fps:
            wait = self._last + 1.0 / self._fps - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last = time.perf_counter()
        return Decision(self._index[name], name, text=f"ACTION: {name}")

    def close(self) -> None:
        if self._screen is not None:
            self._pg.display.quit()
            self._screen = None


def record(
    game: str,
    agent: str = "expert",
    episodes: int = 1,
    out_store: str | Path | TrajectoryStore = "demos",
    seed: int = 0,
    max_steps: int | None = None,
    key_source: Iterable[Iterable[str]] | None = None,
    *,
    env_options: Mapping[str, Any] | None = None,
    scale: int = 3,
    expert_policy: str | None = None,
) -> list[EpisodeMeta]:
    """Play ``episodes`` episodes with ``agent`` and store each one; returns their metas in order.

    Episode ``i`` is played on the ``i``-th seeds derived from ``seed`` (as in ``atari-vlm play``).
    ``env_options`` are further :func:`~atari_vlm.env.make_env` options: record with the view the
    model will play with (``resize_shape``, ``frame_stack``...), since the stored image is what the
    model saw. ``key_source`` (human only) scripts the keys: one set of key names (:data:`KEYS`) per
    decision, then none. A human who stops (Escape) keeps the episodes finished before.
    ``expert_policy`` picks the expert's policy (see :class:`~atari_vlm.experts.ExpertAgent`).

    Raises:
        ConfigError: an unknown agent, a game without an expert, a bad option, human play without a
            display (see :func:`require_display`); all before anything is written.
    """
    if agent not in AGENTS:
        raise ConfigError(f"agent must be one of {AGENTS}, got {agent!r}")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be an integer >= 1, got {episodes!r}")
    if expert_policy is not None and agent != "expert":
        raise ConfigError("expert_policy picks the expert's policy; it needs agent='expert'")
    if key_source is not None and agent != "human":
        raise ConfigError("key_source scripts a human player; it needs agent='human'")
    options = dict(env_options or {})
    reserved = sorted({"game", "seed", "max_steps"} & set(options))
    if reserved:
        raise ConfigError(f"env_options may not set {reserved}: they are record's own arguments")
    env_options, observation_options = split_options(options)
    env_spec = EnvSpec(game=game, max_steps=max_steps, **env_options)
    observation = ObservationSpec(**observation_options)
    probe = AtariVLMEnv(env_spec, observation)  # validates the game and options before anything is played
    probe.close()
    action_names = probe.action_names
    if agent == "expert":
        ExpertAgent(probe, expert_policy)  # no expert for the game, an unknown policy: refused now
    if agent == "human" and key_source is None:
        require_display(require("pygame", extra="human"))
    store = out_store if isinstance(out_store, TrajectoryStore) else TrajectoryStore(out_store)
    source = _SOURCE[agent]
    humans: list[HumanAgent] = []

    def make_worker() -> tuple[AtariVLMEnv, Agent]:
        env = AtariVLMEnv(env_spec, observation)
        player: Agent
        if agent == "expert":
            player = ExpertAgent(env, expert_policy)
        elif agent == "human":
            player = HumanAgent(env, key_source=key_source, scale=scale)
            humans.append(player)
        else:
            player = RandomAgent(env.action_names)
        return env, player

    ids: dict[int, str] = {}

    def sink(i: int, seeds: EpisodeSeeds) -> Any:
        ids[i] = f"{store.new_episode_id(source)}-{i:04d}"
        label = f"agent:{agent}" + (f":{expert_policy}" if expert_policy else "")
        meta = {"episode_id": ids[i], "seed": seeds.env, "source": source, "model": label}
        return store.recorder(env_spec.game, {**meta, "action_names": action_names})

    done: list[int] = []
    try:
        asyncio.run(
            play_episodes(
                make_worker,
                episodes=episodes,
                root_seed=seed,
                uses_model=False,
                make_sink=sink,
                on_episode=lambda result: done.append(result.episode),
                build_in_thread=agent != "human",  # a keyboard player's window lives on this thread
            )
        )
    except RecordingStopped:
        pass
    finally:
        for human in humans:
            human.close()
    wanted = {ids[i]: i for i in done}
    metas = [m for m in store.episodes(env_spec.game) if m.episode_id in wanted]
    return sorted(metas, key=lambda m: wanted[m.episode_id])
