"""Short text descriptions of the game state, read from the emulator's 128-byte RAM.

The model gets these next to each frame, so they must be cheap (RAM only, called every
step), deterministic, ASCII and never claim what the RAM does not say.

Sources of the addresses:

* Positions and counters: the AtariARI annotation table ("Unsupervised State Representation
  Learning in Atari", Anand et al. 2019; mila-iqia/atari-representation-learning,
  ``atariari/benchmark/ram_annotations.py``).
* Scores and lives: the bytes ALE itself reads to compute rewards and ``ale.lives()``
  (AtariARI lists only one byte, or none, for most of these scores). Multi-byte scores are
  BCD, most significant byte first. Every address was checked against real rollouts in
  ``tests/test_state_text.py``: decoded score == cumulative reward, decoded lives ==
  ``ale.lives()``.

Screen coordinates: ``offset`` maps a RAM value to the centre pixel of the sprite in the
210x160 RGB frame (measured by locating the sprite's pixels; within +-2 px, the sprites
jitter by a pixel). Fields without an offset are described in RAM units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

SCREEN_W = 160
SCREEN_H = 210


@dataclass(frozen=True)
class GameState:
    """What a describer may look at: RAM now and one step ago, plus ALE's own counters."""

    ram: np.ndarray
    prev_ram: np.ndarray | None
    episode_return: float
    lives: int
    step: int


@dataclass(frozen=True)
class _Spec:
    """RAM layout of one rich game (data only; the describers interpret it)."""

    fields: dict[str, int]
    score_bcd: tuple[int, ...] = ()  # BCD score bytes, most significant first
    lives: tuple[int, int] | None = None  # (address, add): lives = int8(ram[address]) + add
    offset: dict[str, int] = field(default_factory=dict)  # RAM value + offset = screen centre px


SPECS: dict[str, _Spec] = {
    "Pong": _Spec(
        fields={
            "player_y": 51,
            "enemy_y": 50,
            "ball_x": 49,
            "ball_y": 54,
            "enemy_score": 13,
            "player_score": 14,
        },
        offset={"player_y": -6, "enemy_y": -8, "ball_x": -48, "ball_y": -12},
    ),
    "Breakout": _Spec(
        fields={"player_x": 72, "ball_x": 99, "ball_y": 101},
        score_bcd=(76, 77),
        lives=(57, 0),
        offset={"player_x": -40, "ball_x": -48, "ball_y": 10},
    ),
    "SpaceInvaders": _Spec(
        fields={"player_x": 28, "enemies_x": 26, "enemies_y": 24, "invaders_left_count": 17, "missiles_y": 9},
        score_bcd=(102, 104),
        lives=(73, 0),
        offset={"player_x": 2, "enemies_x": -1},  # enemies_x: left edge of the invader grid
    ),
    "MsPacman": _Spec(
        fields={
            "player_x": 10,
            "player_y": 16,
            "enemy_blinky_x": 9,
            "enemy_blinky_y": 15,
            "enemy_pinky_x": 8,
            "enemy_pinky_y": 14,
            "enemy_inky_x": 7,
            "enemy_inky_y": 13,
            "enemy_sue_x": 6,
            "enemy_sue_y": 12,
            "fruit_x": 11,
            "fruit_y": 17,
            "ghosts_count": 19,
            "player_direction": 56,
            "dots_eaten_count": 119,
        },
        score_bcd=(122, 121, 120),
        lives=(123, 1),
        offset={
            **{
                f"{who}_x": -8 for who in ("player", "enemy_blinky", "enemy_pinky", "enemy_inky", "enemy_sue")
            },
            **{f"{who}_y": 5 for who in ("player", "enemy_blinky", "enemy_pinky", "enemy_inky", "enemy_sue")},
        },
    ),
    "Qbert": _Spec(
        fields={
            "player_x": 43,
            "player_y": 67,
            "player_column": 35,
            "red_enemy_column": 69,
            "green_enemy_column": 105,
        },
        score_bcd=(89, 90, 91),
        lives=(8, 2),
        offset={"player_x": 1},  # player_y is not linear on screen (jump arcs): RAM units
    ),
    "Seaquest": _Spec(
        fields={
            "player_x": 70,
            "player_y": 97,
            "player_direction": 86,
            "oxygen_meter_value": 102,
            "divers_collected_count": 62,
            **{f"enemy_obstacle_x_{i}": 30 + i for i in range(4)},
            **{f"diver_or_enemy_missile_x_{i}": 71 + i for i in range(4)},
        },
        score_bcd=(56, 57, 58),
        lives=(59, 1),
        offset={"player_x": 8, "player_y": 38},
    ),
}

RICH_GAMES: frozenset[str] = frozenset(SPECS)


def _bcd(byte: int) -> int:
    return (byte >> 4) * 10 + (byte & 0x0F)


def fields(game: str, ram: np.ndarray) -> dict[str, int]:
    """Named raw RAM fields of a rich game, plus decoded ``score`` and ``lives`` where stored.

    Empty for games without a table, so callers can treat every game alike.
    """
    spec = SPECS.get(game)
    if spec is None:
        return {}
    out = {name: int(ram[addr]) for name, addr in spec.fields.items()}
    if spec.score_bcd:
        score = 0
        for addr in spec.score_bcd:
            score = score * 100 + _bcd(int(ram[addr]))
        out["score"] = score
    if spec.lives is not None:
        addr, add = spec.lives
        out["lives"] = ((int(ram[addr]) + 128) % 256 - 128) + add  # int8: Q*bert goes to -2 at game over
    return out


def positions(game: str, ram: np.ndarray) -> dict[str, int]:
    """Screen-pixel centres (x of 160, y of 210) of the fields whose mapping was measured."""
    spec = SPECS.get(game)
    if spec is None:
        return {}
    return {name: int(ram[spec.fields[name]]) + off for name, off in spec.offset.items()}


def _direction(dx: int, dy: int) -> str:
    """Screen-space motion in words ('left and down'); '' when not moving."""
    horiz = "right" if dx > 0 else "left" if dx < 0 else ""
    vert = "down" if dy > 0 else "up" if dy < 0 else ""
    return " and ".join(w for w in (horiz, vert) if w)


def _ball_in_play(game: str, ram: np.ndarray) -> bool:
    """Pong and Breakout park the ball at RAM y=0 while none is in play."""
    return int(ram[SPECS[game].fields["ball_y"]]) != 0


def _ball_motion(game: str, state: GameState) -> tuple[int, int] | None:
    """Ball displacement in screen px since the previous step; None when unknown."""
    if state.prev_ram is None or not _ball_in_play(game, state.prev_ram):
        return None
    now, before = positions(game, state.ram), positions(game, state.prev_ram)
    dx, dy = now["ball_x"] - before["ball_x"], now["ball_y"] - before["ball_y"]
    if abs(dx) > 40 or abs(dy) > 60:  # serve / respawn jump, not motion
        return None
    return dx, dy


def _relative(dx: int, dy: int) -> str:
    """Offset of a target from the player in words, screen px."""
    parts = []
    if dx:
        parts.append(f"{abs(dx)} {'right' if dx > 0 else 'left'}")
    if dy:
        parts.append(f"{abs(dy)} {'down' if dy > 0 else 'up'}")
    return ", ".join(parts) if parts else "on you"


def _pong(state: GameState) -> str:
    f, p = fields("Pong", state.ram), positions("Pong", state.ram)
    text = (
        f"Your paddle (right, green) is at y={p['player_y']} of {SCREEN_H}; "
        f"opponent (left, orange) at y={p['enemy_y']}."
    )
    if not _ball_in_play("Pong", state.ram):
        ball = "No ball in play."
    else:
        ball = f"The ball is at x={p['ball_x']}, y={p['ball_y']}"
        motion = _ball_motion("Pong", state)
        if motion is not None and _direction(*motion):
            toward = "toward you" if motion[0] > 0 else "away from you"
            ball += f" moving {_direction(*motion)}, {toward}"
        dy = p["ball_y"] - p["player_y"]
        side = "level with" if abs(dy) <= 4 else f"{abs(dy)} px {'below' if dy > 0 else 'above'}"
        ball += f"; it is {side} your paddle."
    return f"{text}\n{ball}\nScore: you {f['player_score']}, opponent {f['enemy_score']}."


def _breakout(state: GameState) -> str:
    f, p = fields("Breakout", state.ram), positions("Breakout", state.ram)
    text = f"Your paddle (bottom) is centred at x={p['player_x']} of {SCREEN_W}."
    if not _ball_in_play("Breakout", state.ram):
        ball = "No ball in play (FIRE launches one)."
    else:
        ball = f"The ball is at x={p['ball_x']}, y={p['ball_y']}"
        motion = _ball_motion("Breakout", state)
        if motion is not None and _direction(*motion):
            ball += f" moving {_direction(*motion)}"
        dx = p["ball_x"] - p["player_x"]
        side = (
            "above your paddle"
            if abs(dx) <= 6
            else f"{abs(dx)} px {'right' if dx > 0 else 'left'} of your paddle"
        )
        ball += f"; it is {side}."
    return f"{text}\n{ball}\nScore: {f['score']}. Lives: {state.lives}."


def _space_invaders(state: GameState) -> str:
    f, p = fields("SpaceInvaders", state.ram), positions("SpaceInvaders", state.ram)
    grid = f"The invader grid's left edge is at x={p['enemies_x']}"
    if state.prev_ram is not None:
        dx = f["enemies_x"] - int(state.prev_ram[SPECS["SpaceInvaders"].fields["enemies_x"]])
        grid += f", moving {_direction(dx, 0)}" if dx else ""
    return (
        f"Your cannon (bottom) is at x={p['player_x']} of {SCREEN_W}. "
        f"{f['invaders_left_count']} invaders left. {grid}.\n"
        f"Score: {f['score']}. Lives: {state.lives}."
    )


_GHOSTS = ("blinky", "pinky", "inky", "sue")


def _ms_pacman(state: GameState) -> str:
    f, p = fields("MsPacman", state.ram), positions("MsPacman", state.ram)
    px, py = p["player_x"], p["player_y"]
    ghosts = sorted(
        (abs(p[f"enemy_{g}_x"] - px) + abs(p[f"enemy_{g}_y"] - py), g) for g in _GHOSTS
    )  # nearest first: that is the one that matters
    near = "; ".join(
        f"{g.capitalize()} {_relative(p[f'enemy_{g}_x'] - px, p[f'enemy_{g}_y'] - py)}" for _, g in ghosts
    )
    return (
        f"Ms. Pac-Man is at x={px}, y={py} (maze is {SCREEN_W} wide, 172 tall).\n"
        f"Ghosts relative to you in px, nearest first: {near}.\n"
        f"Dots eaten: {f['dots_eaten_count']}. Score: {f['score']}. Lives: {state.lives}."
    )


def _qbert(state: GameState) -> str:
    f, p = fields("Qbert", state.ram), positions("Qbert", state.ram)
    return (
        f"Q*bert is at x={p['player_x']} of {SCREEN_W}, height {f['player_y']} "
        f"(RAM units, larger is lower down the pyramid), cube column {f['player_column']}.\n"
        f"Score: {f['score']}. Lives: {state.lives}."
    )


def _seaquest(state: GameState) -> str:
    f, p = fields("Seaquest", state.ram), positions("Seaquest", state.ram)
    where = "at the surface" if f["player_y"] <= 13 else "underwater"
    return (
        f"Your submarine is at x={p['player_x']}, y={p['player_y']} ({where}). "
        f"Oxygen: {f['oxygen_meter_value']} of 64. Divers collected: {f['divers_collected_count']} of 6.\n"
        f"Score: {f['score']}. Lives: {state.lives}."
    )


def _generic(state: GameState) -> str:
    return f"Score so far: {state.episode_return:g}. Lives: {state.lives}."


_DESCRIBERS: dict[str, Callable[[GameState], str]] = {
    "Pong": _pong,
    "Breakout": _breakout,
    "SpaceInvaders": _space_invaders,
    "MsPacman": _ms_pacman,
    "Qbert": _qbert,
    "Seaquest": _seaquest,
}
assert frozenset(_DESCRIBERS) == RICH_GAMES


def describe(game: str, state: GameState) -> str:
    """1-4 ASCII lines on the state of ``game`` (canonical ALE name, e.g. "MsPacman")."""
    return _DESCRIBERS.get(game, _generic)(state)
