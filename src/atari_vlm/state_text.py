"""Short text descriptions of the game state, read from the emulator's 128-byte RAM.

The model gets these next to each frame, so they must be cheap (RAM only, called every
step), deterministic, ASCII and never claim what the screen does not show: a position is
given only for an object that is in play and drawn inside the playing area, and the text
says so when there is none ("No ball in play", "out of sight").

Sources of the addresses:

* Positions and counters: the AtariARI annotation table ("Unsupervised State Representation
  Learning in Atari", Anand et al. 2019; mila-iqia/atari-representation-learning,
  ``atariari/benchmark/ram_annotations.py``), plus bytes found by comparing RAM with the
  screen over rollouts, each with its comment below: Space Invaders' cannon state, invader
  rows, descent and bombs; Ms. Pac-Man's dots and blue ghosts; Q*bert's cube colours and
  where he is drawn; Seaquest's explosion timer and lane formations. The experts
  (:mod:`atari_vlm.experts`) play from these same tables.
* Scores and lives: the bytes ALE itself reads to compute rewards and ``ale.lives()``.
  Multi-byte scores are BCD, most significant byte first.

Screen coordinates: each :class:`Sprite` says where an object is drawn in the 210x160 RGB
frame for given RAM values (box measured by locating the sprite's pixels in rollouts) and
which part of the screen can show it; :func:`positions` gives the centre of the part that
is visible. ``tests/test_state_text.py`` checks every figure the text gives against the
pixels of real episodes (random and expert play, serves, life losses).
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
class Sprite:
    """Where one object is drawn: columns ``x + dx`` to ``x + dx + width - 1`` and rows ``y + dy`` to
    ``y + dy + height - 1``, x and y being RAM fields (``None``: the object keeps still on that axis
    and ``dx``/``dy`` are screen coordinates). Only the part inside ``area`` (x0, x1, y0, y1,
    inclusive) can be seen: walls and score bars hide the rest."""

    x: str | None
    y: str | None
    dx: int
    dy: int
    width: int
    height: int
    area: tuple[int, int, int, int] = (0, SCREEN_W - 1, 0, SCREEN_H - 1)
    axes: str = "xy"  # the coordinates known: "x" for a sprite whose height on screen RAM does not give

    def visible_centre(self, values: dict[str, int]) -> tuple[int, int] | None:
        """Centre (x, y) of the visible part of the sprite, or None when none of it is visible."""
        x0, x1, y0, y1 = self.area
        left = (values[self.x] if self.x else 0) + self.dx
        top = (values[self.y] if self.y else 0) + self.dy
        lo_x, hi_x = max(left, x0), min(left + self.width - 1, x1)
        lo_y, hi_y = max(top, y0), min(top + self.height - 1, y1)
        if lo_x > hi_x or lo_y > hi_y:
            return None
        return (lo_x + hi_x + 1) // 2, (lo_y + hi_y + 1) // 2


@dataclass(frozen=True)
class _Spec:
    """RAM layout of one rich game (data only; the describers interpret it)."""

    fields: dict[str, int]
    score_bcd: tuple[int, ...] = ()  # BCD score bytes, most significant first
    lives: tuple[int, int] | None = None  # (address, add): lives = int8(ram[address]) + add
    sprites: dict[str, Sprite] = field(default_factory=dict)
    # The sprites that are not in play for the given fields (no ball before the serve...).
    absent: Callable[[dict[str, int]], frozenset[str]] = lambda f: frozenset()


_PONG_FIELD = (0, SCREEN_W - 1, 34, 193)  # between the top and bottom walls
_BREAKOUT_FIELD = (8, 151, 32, 194)  # inside the grey walls, down to where a lost ball vanishes
_MAZE = (0, SCREEN_W - 1, 0, 171)  # Ms. Pac-Man's maze, above the lives and score
_GHOSTS = ("blinky", "pinky", "inky", "sue")
_MS_PACMAN_SPRITES = ("player", *(f"enemy_{g}" for g in _GHOSTS))

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
        sprites={
            "player": Sprite(None, "player_y", 140, -14, 4, 16, _PONG_FIELD),
            "enemy": Sprite(None, "enemy_y", 16, -15, 4, 16, _PONG_FIELD),
            "ball": Sprite("ball_x", "ball_y", -49, -14, 2, 4, _PONG_FIELD),
        },
        # Between points the ball's y is 0; on the first frame of a game its x is 0 (y is not).
        absent=lambda f: frozenset({"ball"}) if f["ball_y"] == 0 or f["ball_x"] == 0 else frozenset(),
    ),
    "Breakout": _Spec(
        fields={"player_x": 72, "ball_x": 99, "ball_y": 101},
        score_bcd=(76, 77),
        lives=(57, 0),
        sprites={
            "player": Sprite("player_x", None, -47, 189, 16, 4, _BREAKOUT_FIELD),
            "ball": Sprite("ball_x", "ball_y", -49, 9, 2, 4, _BREAKOUT_FIELD),
        },
        absent=lambda f: frozenset({"ball"}) if f["ball_y"] == 0 else frozenset(),  # before FIRE
    ),
    "SpaceInvaders": _Spec(
        fields={
            "player_x": 28,
            "player_state": 42,  # 0 playing, 1 a new cannon blinking in, 4 hit (exploding)
            "enemies_x": 26,  # x of the grid's leftmost live column, + 1
            "enemies_y": 24,
            "grid_drop": 16,  # how far the grid has come down: its top row's bottom is at y = 40 + 2 * this
            # Each row's live columns (bit j: column j), the bottom row first.
            **{f"invaders_row_{i}": 18 + i for i in range(6)},
            "invaders_left_count": 17,
            "missiles_y": 9,
            "bomb_0_x": 83,  # the invaders' two bombs: x + 2 is the bomb's column, y * 2 + 4 its top row
            "bomb_0_y": 81,
            "bomb_1_x": 84,
            "bomb_1_y": 82,
        },
        score_bcd=(102, 104),
        lives=(73, 0),
        sprites={"player": Sprite("player_x", None, -1, 185, 7, 10)},
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
            "ghost_mode": 42,  # 80 and above while the ghosts are blue (edible)
            "dots_row_0": 59,  # the dots still to eat: 3 bytes a row, 14 rows (see experts._DOT_X)
        },
        score_bcd=(122, 121, 120),
        lives=(123, 1),
        sprites={who: Sprite(f"{who}_x", f"{who}_y", -12, 1, 8, 10, _MAZE) for who in _MS_PACMAN_SPRITES},
        # In a side tunnel a sprite wraps around the screen's edge: no single position to give.
        absent=lambda f: frozenset(w for w in _MS_PACMAN_SPRITES if not 12 <= f[f"{w}_x"] <= 164),
    ),
    "Qbert": _Spec(
        fields={
            "player_x": 43,
            "player_y": 67,
            "player_column": 35,  # 5 + 2 * position in the row - row, on the pyramid
            # Where the game draws Q*bert, in its own units: 47-248 on screen; 4-46 above its top (he
            # jumped off), 249-255 and 0-3 at or below its bottom. Matched to the pixels over whole games.
            "player_drawn_y": 33,
            "red_enemy_column": 69,
            "green_enemy_column": 105,
            # Cube colours, row by row from the top (row r holds r + 1 cubes): cube k of row r is
            # cube_{r (r + 1) / 2 + k}. Mapped by hopping onto each cube and seeing which byte changed.
            **{
                f"cube_{i}": a
                for i, a in enumerate(
                    (21, 52, 54, 83, 85, 87, 98, 100, 102, 104, 1, 3, 5, 7, 9, 32, 34, 36, 38, 40, 42)
                )
            },
        },
        score_bcd=(89, 90, 91),
        lives=(8, 2),
        # Q*bert's height on screen is not a function of player_y (jump arcs, falls): x only.
        sprites={"player": Sprite("player_x", None, -4, 0, 8, SCREEN_H, axes="x")},
        absent=lambda f: (
            frozenset() if f["player_x"] and 47 <= f["player_drawn_y"] <= 248 else frozenset({"player"})
        ),  # before the game starts (RAM blank), or off the screen
    ),
    "Seaquest": _Spec(
        fields={
            "player_x": 70,
            "player_y": 97,
            "player_direction": 86,
            "explosion_timer": 105,  # counts down while the submarine explodes; 0 otherwise
            "oxygen_meter_value": 102,
            "divers_collected_count": 62,
            # The four lanes, 0 the deepest: enemies at enemy_obstacle_x + 0, 16, 32 for bits 2, 1, 0 of
            # enemy_lane (a formation of up to three); a diver at diver_or_enemy_missile_x when not 0.
            **{f"enemy_obstacle_x_{i}": 30 + i for i in range(4)},
            **{f"enemy_lane_{i}": 40 + i for i in range(4)},
            **{f"diver_or_enemy_missile_x_{i}": 71 + i for i in range(4)},
        },
        score_bcd=(56, 57, 58),
        lives=(59, 1),
        sprites={"player": Sprite("player_x", "player_y", 0, 33, 16, 11, (0, SCREEN_W - 1, 44, 170))},
        absent=lambda f: frozenset({"player"}) if f["explosion_timer"] else frozenset(),
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
    """Screen-pixel centres (``<sprite>_x`` of 160, ``<sprite>_y`` of 210) of the objects in play
    whose sprite is at least partly visible; an object that is not in play or out of sight has no
    entry. For a sprite partly hidden by a wall, the centre of the visible part."""
    spec = SPECS.get(game)
    if spec is None:
        return {}
    values = fields(game, ram)
    absent = spec.absent(values)
    out = {}
    for name, sprite in spec.sprites.items():
        centre = None if name in absent else sprite.visible_centre(values)
        if centre is not None:
            for axis, value in zip("xy", centre, strict=True):
                if axis in sprite.axes:
                    out[f"{name}_{axis}"] = value
    return out


def _direction(dx: int, dy: int) -> str:
    """Screen-space motion in words ('left and down'); '' when not moving."""
    horiz = "right" if dx > 0 else "left" if dx < 0 else ""
    vert = "down" if dy > 0 else "up" if dy < 0 else ""
    return " and ".join(w for w in (horiz, vert) if w)


def _motion(game: str, name: str, state: GameState, now: dict[str, int]) -> tuple[int, int] | None:
    """Displacement of sprite ``name`` in screen px since the previous step; None when unknown (not
    visible at both steps, or a jump such as a serve)."""
    if state.prev_ram is None or f"{name}_x" not in now:
        return None
    before = positions(game, state.prev_ram)
    if f"{name}_x" not in before:
        return None
    dx, dy = now[f"{name}_x"] - before[f"{name}_x"], now[f"{name}_y"] - before[f"{name}_y"]
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


def _ball_line(game: str, state: GameState, p: dict[str, int], serve: str) -> str:
    """The ball's sentence: where it is and where it goes, or why no position is given."""
    absent = SPECS[game].absent(fields(game, state.ram))
    if "ball" in absent:
        return f"No ball in play{serve}."
    if "ball_x" not in p:
        return "The ball is in play but out of sight."
    text = f"The ball is at x={p['ball_x']}, y={p['ball_y']}"
    motion = _motion(game, "ball", state, p)
    if motion is not None and _direction(*motion):
        text += f" moving {_direction(*motion)}"
        if game == "Pong" and motion[0]:
            text += ", toward you" if motion[0] > 0 else ", away from you"
    return text


def _pong(state: GameState) -> str:
    f, p = fields("Pong", state.ram), positions("Pong", state.ram)
    mine = (
        f"Your paddle (right) is at y={p['player_y']} of {SCREEN_H}"
        if "player_y" in p
        else ("Your paddle (right) is out of sight")
    )
    theirs = (
        f"the opponent's (left) at y={p['enemy_y']}"
        if "enemy_y" in p
        else ("the opponent's (left) is out of sight")
    )
    ball = _ball_line("Pong", state, p, " (waiting for the serve)")
    if "ball_y" in p and "player_y" in p:
        dy = p["ball_y"] - p["player_y"]
        side = "level with" if abs(dy) <= 4 else f"{abs(dy)} px {'below' if dy > 0 else 'above'}"
        ball += f"; it is {side} your paddle."
    elif "ball_y" in p:
        ball += "."
    return f"{mine}; {theirs}.\n{ball}\nScore: you {f['player_score']}, opponent {f['enemy_score']}."


def _breakout(state: GameState) -> str:
    f, p = fields("Breakout", state.ram), positions("Breakout", state.ram)
    text = f"Your paddle (bottom) is centred at x={p['player_x']} of {SCREEN_W}."
    ball = _ball_line("Breakout", state, p, " (FIRE launches one)")
    if "ball_x" in p:
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
    if state.lives == 0:  # the invaders landed, or the last cannon was hit: nothing left to place
        return f"Game over. Score: {f['score']}. Lives: 0."
    x = p["player_x"]
    cannon = {
        0: f"Your cannon (bottom) is at x={x} of {SCREEN_W}.",
        1: f"A new cannon (bottom) is blinking in at x={x} of {SCREEN_W}; it cannot move yet.",
    }.get(f["player_state"], f"Your cannon (bottom) was hit at x={x} of {SCREEN_W}.")
    grid = f"The invader grid's left edge is at x={f['enemies_x'] - 1}"
    if state.prev_ram is not None:
        dx = f["enemies_x"] - int(state.prev_ram[SPECS["SpaceInvaders"].fields["enemies_x"]])
        grid += f", moving {_direction(dx, 0)}" if 0 < abs(dx) <= 2 else ""
    return (
        f"{cannon} {f['invaders_left_count']} invaders left. {grid}.\n"
        f"Score: {f['score']}. Lives: {state.lives}."
    )


def _ms_pacman(state: GameState) -> str:
    f, p = fields("MsPacman", state.ram), positions("MsPacman", state.ram)
    ghosts = [(g.capitalize(), p.get(f"enemy_{g}_x"), p.get(f"enemy_{g}_y")) for g in _GHOSTS]
    away = [f"{name} in a side tunnel" for name, x, _ in ghosts if x is None]
    if "player_x" in p:
        px, py = p["player_x"], p["player_y"]
        where = f"Ms. Pac-Man is at x={px}, y={py} (maze is {SCREEN_W} wide, 172 tall)."
        near = sorted(
            (abs(x - px) + abs(y - py), name, x - px, y - py) for name, x, y in ghosts if x is not None
        )
        parts = [f"{name} {_relative(dx, dy)}" for _, name, dx, dy in near]  # nearest first: it matters most
        ghost_line = f"Ghosts relative to you in px, nearest first: {'; '.join(parts + away)}."
    else:
        where = "Ms. Pac-Man is in a side tunnel."
        parts = [f"{name} at x={x}, y={y}" for name, x, y in ghosts if x is not None]
        ghost_line = f"Ghosts: {'; '.join(parts + away)}."
    return (
        f"{where}\n{ghost_line}\n"
        f"Dots eaten: {f['dots_eaten_count']}. Score: {f['score']}. Lives: {state.lives}."
    )


def _qbert(state: GameState) -> str:
    f, p = fields("Qbert", state.ram), positions("Qbert", state.ram)
    if state.lives == 0:  # on the last frame Q*bert is drawn or not, whatever the RAM says
        where = "Game over."
    elif "player_x" in p:
        where = f"Q*bert is at x={p['player_x']} of {SCREEN_W}."
    else:
        where = "Q*bert is not on screen."
    return f"{where}\nScore: {f['score']}. Lives: {state.lives}."


def _seaquest(state: GameState) -> str:
    f, p = fields("Seaquest", state.ram), positions("Seaquest", state.ram)
    if "player_x" in p:
        where = "at the surface" if f["player_y"] <= 13 else "underwater"
        sub = f"Your submarine is at x={p['player_x']}, y={p['player_y']} ({where})."
    else:
        sub = "Your submarine has been destroyed."
    return (
        f"{sub} Oxygen: {f['oxygen_meter_value']} of 64. "
        f"Divers collected: {f['divers_collected_count']} of 6.\nScore: {f['score']}. Lives: {state.lives}."
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
