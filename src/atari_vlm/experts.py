"""Expert policies that read the emulator's RAM: demonstrations to learn from, and a score to beat.

They read exactly the RAM fields the state text describes (:func:`atari_vlm.state_text.positions`),
so what an expert acts on is what a model is told in words: a model that learns the mapping from the
state text (plus the frame) to the expert's action can, in principle, play as well as the expert.

The policies are hand-written controllers, not learned. ``intercept`` predicts where the ball will
meet the paddle's line (reflecting off the walls) and moves the paddle there, allowing for Pong's
paddle momentum; ``track`` moves toward the ball exactly as the state text words it ("N px below your
paddle"), so each of its actions follows from the prompt. Both FIRE when a game needs a serve. Each
:class:`Decision` carries the text ``"ACTION: <name>"``, so a recorded demonstration reads like a
model's answer.

Measured (``python -m atari_vlm.experts``; ALE v5 settings: frame skip 4, sticky actions 0.25; env
seeds 0-4 through ``rollout.explicit_seeds``, full games, no step cap; the random agent on the same
seeds)::

    game      policy      mean   returns
    Pong      intercept   -2.0   1, 9, -2, -11, -7       (default)
    Pong      track      -10.0   -14, -7, -4, -13, -12
    Pong      random     -20.6   -21, -21, -19, -21, -21
    Breakout  track       44.2   28, 55, 28, 68, 42      (default)
    Breakout  intercept   37.0   59, 13, 23, 39, 51
    Breakout  random       1.8   3, 3, 0, 0, 3

The Pong experts win some games and lose others (sticky actions and the paddle's momentum make them
miss), but never lose 21-0 the way the random agent does. Expert Pong games are long: 4,000-10,000
decisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from atari_vlm.agent import Decision
from atari_vlm.env import AtariVLMEnv
from atari_vlm.errors import ConfigError
from atari_vlm.state_text import SPECS, positions

__all__ = ["EXPERT_GAMES", "EXPERT_POLICIES", "ExpertAgent"]

# Screen geometry, in the same pixel coordinates as state_text.positions (measured on rollouts: where
# the ball turns around).
_PONG_PADDLE_X = 137  # the x where the ball meets the player's paddle
_PONG_TOP, _PONG_BOTTOM = 38, 188  # the ball's y range between the walls
_PONG_MIDDLE = (_PONG_TOP + _PONG_BOTTOM) / 2
_PONG_DEADBAND = 6
_PONG_AIM = 6  # meet the ball this far off the paddle's centre, on its leading side: steeper returns
_PONG_GLIDE = 0.7  # the paddle coasts about 0.7 x its last step's motion after a key is released
_BREAKOUT_PADDLE_Y = 180  # the y where the ball meets the paddle
_BREAKOUT_LEFT, _BREAKOUT_RIGHT = 14, 150  # the ball's x range between the walls
_BREAKOUT_DEADBAND = 5


def _reflect(value: float, low: float, high: float) -> float:
    """``value`` folded back into [low, high], as a ball bouncing between two walls would be."""
    span = high - low
    offset = (value - low) % (2 * span)
    return low + (offset if offset <= span else 2 * span - offset)


def _intercept(
    along: float, across: float, velocity: tuple[float, float], line: float, bounds: tuple[int, int]
) -> float | None:
    """Where a ball at ``along`` (the paddle's axis) and ``across`` reaches the paddle's ``line``
    (bouncing off the walls at ``bounds``), or None when it moves away. ``velocity``: (along, across)
    per step."""
    v_along, v_across = velocity
    if v_across == 0 or (line - across) / v_across < 0:
        return None
    return _reflect(along + v_along * (line - across) / v_across, *bounds)


@dataclass
class _Memory:
    """What a policy remembers between decisions of one episode."""

    ball: tuple[int, int] | None = None  # screen (x, y) at the last decision
    paddle: int | None = None


Policy = Callable[[dict[str, int], _Memory], str]


def _ball_velocity(ball: tuple[int, int], memory: _Memory) -> tuple[int, int] | None:
    previous, memory.ball = memory.ball, ball
    if previous is None:
        return None
    dx, dy = ball[0] - previous[0], ball[1] - previous[1]
    return None if abs(dx) > 40 or abs(dy) > 60 else (dx, dy)  # a serve or respawn, not motion


def _pong(p: dict[str, int], memory: _Memory) -> str:
    """RIGHT moves the paddle up, LEFT down (the game's own names). Aim at the predicted intercept,
    judged against where the paddle will coast to (it has momentum); with the ball moving away or out
    of play, wait in the middle."""
    paddle = p["player_y"]
    coast = paddle + _PONG_GLIDE * (paddle - memory.paddle if memory.paddle is not None else 0)
    memory.paddle = paddle
    target = _PONG_MIDDLE
    if p["ball_y"] <= SPECS["Pong"].offset["ball_y"]:  # RAM 0: no ball in play
        memory.ball = None
    else:
        ball = (p["ball_x"], p["ball_y"])
        velocity = _ball_velocity(ball, memory)
        if velocity is None:
            target = ball[1]
        else:
            dx, dy = velocity
            hit = _intercept(ball[1], ball[0], (dy, dx), _PONG_PADDLE_X, (_PONG_TOP, _PONG_BOTTOM))
            if hit is not None:
                target = hit + _PONG_AIM * float(np.sign(dy))
    if target < coast - _PONG_DEADBAND:
        return "RIGHT"
    if target > coast + _PONG_DEADBAND:
        return "LEFT"
    return "NOOP"


def _breakout(p: dict[str, int], memory: _Memory) -> str:
    """FIRE serves; otherwise move under the point where the ball will come down."""
    paddle = p["player_x"]
    if p["ball_y"] <= SPECS["Breakout"].offset["ball_y"]:  # RAM 0: no ball in play
        memory.ball = None
        return "FIRE"
    ball = (p["ball_x"], p["ball_y"])
    velocity = _ball_velocity(ball, memory)
    target: float = ball[0]
    if velocity is not None:
        hit = _intercept(ball[0], ball[1], velocity, _BREAKOUT_PADDLE_Y, (_BREAKOUT_LEFT, _BREAKOUT_RIGHT))
        if hit is not None:
            target = hit
    if target < paddle - _BREAKOUT_DEADBAND:
        return "LEFT"
    if target > paddle + _BREAKOUT_DEADBAND:
        return "RIGHT"
    return "NOOP"


def _pong_track(p: dict[str, int], memory: _Memory) -> str:
    """Move toward the ball's height, as the state text words it ("N px below/above your paddle",
    "level with" within 4 px); still when no ball is in play. Weaker than :func:`_pong`, but each
    action follows from one phrase of the prompt, so a small model can clone it from the text."""
    if p["ball_y"] <= SPECS["Pong"].offset["ball_y"]:
        return "NOOP"
    dy = p["ball_y"] - p["player_y"]
    return "NOOP" if abs(dy) <= 4 else "LEFT" if dy > 0 else "RIGHT"


def _breakout_track(p: dict[str, int], memory: _Memory) -> str:
    """Move under the ball as the state text words it ("above your paddle" within 6 px); FIRE serves."""
    if p["ball_y"] <= SPECS["Breakout"].offset["ball_y"]:
        return "FIRE"
    dx = p["ball_x"] - p["player_x"]
    return "NOOP" if abs(dx) <= 6 else "RIGHT" if dx > 0 else "LEFT"


# Per game: the named policies, the first one the default (the strongest).
_POLICIES: dict[str, dict[str, Policy]] = {
    "Pong": {"intercept": _pong, "track": _pong_track},
    "Breakout": {"track": _breakout_track, "intercept": _breakout},  # track measured stronger here
}
EXPERT_GAMES: tuple[str, ...] = tuple(_POLICIES)
EXPERT_POLICIES: tuple[str, ...] = ("intercept", "track")
assert all(game in SPECS for game in EXPERT_GAMES)


class ExpertAgent:
    """A RAM-reading expert for one env (implements the :class:`~atari_vlm.agent.Agent` protocol).

    It reads ``env.ale.getRAM()`` at each decision (the env's state after the last step), so it must
    be given the very env it plays. ``policy``: ``"intercept"`` (default, the strongest: predicts
    where the ball meets the paddle and allows for the paddle's momentum, which the state text does
    not state) or ``"track"`` (follows the ball as the state text words it: weaker, but learnable
    from the prompt alone; the demonstrations of the fine-tuning benchmark).

    Raises:
        ConfigError: the env's game has no expert (see :data:`EXPERT_GAMES`), or an unknown policy.
    """

    def __init__(self, env: AtariVLMEnv, policy: str | None = None):
        if env.game not in _POLICIES:
            raise ConfigError(f"no expert policy for {env.game}; experts exist for {', '.join(EXPERT_GAMES)}")
        policies = _POLICIES[env.game]
        if policy is not None and policy not in policies:
            raise ConfigError(f"unknown expert policy {policy!r}; choose one of {', '.join(policies)}")
        self.env = env
        self.game = env.game
        self.action_names = list(env.action_names)
        self._index = {name: i for i, name in enumerate(self.action_names)}
        self.policy = policy or next(iter(policies))
        self._policy = policies[self.policy]
        self._memory = _Memory()

    def reset(self, seed: int | None = None) -> None:
        self._memory = _Memory()

    def choose(self) -> str:
        """The action name for the env's current RAM."""
        return self._policy(positions(self.game, self.env.ale.getRAM()), self._memory)

    async def act(self, obs: dict[str, Any]) -> Decision:
        name = self.choose()
        return Decision(self._index[name], name, text=f"ACTION: {name}")


def measure(
    game: str,
    seeds: list[int],
    agent: str = "expert",
    max_steps: int | None = None,
    policy: str | None = None,
) -> list[float]:
    """Returns of ``agent`` ("expert" or "random") on ``seeds``, one full episode each (or ``max_steps``)."""
    from atari_vlm.agent import RandomAgent
    from atari_vlm.env import make_env
    from atari_vlm.rollout import explicit_seeds, play_episode

    returns = []
    for seeds_i in explicit_seeds(seeds):
        env = make_env(game, max_steps=max_steps)
        player = ExpertAgent(env, policy) if agent == "expert" else RandomAgent(env.action_names)
        try:
            result = asyncio.run(play_episode(env, player, episode=0, seeds=seeds_i, uses_model=False))
        finally:
            env.close()
        returns.append(result.episode_return)
    return returns


if __name__ == "__main__":
    for name in EXPERT_GAMES:
        for who, policy in (("expert", "intercept"), ("expert", "track"), ("random", None)):
            values = measure(name, [0, 1, 2, 3, 4], who, policy=policy)
            print(f"{name:9s} {policy or who:9s} mean {np.mean(values):6.1f}  {values}", flush=True)
