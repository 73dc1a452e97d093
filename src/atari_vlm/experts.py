"""Expert policies that read the emulator's RAM: demonstrations to learn from, and a score to beat.

They read the same RAM tables as the state text (:data:`atari_vlm.state_text.SPECS`, through
:func:`~atari_vlm.state_text.fields` and :func:`~atari_vlm.state_text.positions`), so what an expert
acts on is what a model is told in words, plus fields the text does not put into words (Space
Invaders' bombs, Ms. Pac-Man's dots, Q*bert's cubes, Seaquest's lanes), two fitted models of paddle
controllers, and one map (Ms. Pac-Man's first maze).

The policies are hand-written controllers, not learned, and cheap (16-62 us a decision, median).
Each :class:`~atari_vlm.agent.Decision` carries the text ``"ACTION: <name>"``, so a recorded
demonstration reads like a model's answer.

Measured figures (full games under ALE v5 settings, the random agent on the same seeds):
BENCHMARKS.md, "Experts"; ``python -m atari_vlm.experts`` re-makes that table.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from atari_vlm.agent import Decision
from atari_vlm.errors import ConfigError
from atari_vlm.games import resolve_game
from atari_vlm.state_text import SPECS, fields, positions

__all__ = [
    "EXPERT_GAMES",
    "V5_FRAME_CAP",
    "ExpertAgent",
    "PaddleModel",
    "PaddleTracker",
    "expert_policies",
    "intercept",
    "main",
    "measure",
    "ms_pacman_dots",
    "reflect",
]


def reflect(value: float, low: float, high: float) -> float:
    """``value`` folded back into [low, high], as a ball bouncing between two walls would be."""
    span = high - low
    offset = (value - low) % (2 * span)
    return low + (offset if offset <= span else 2 * span - offset)


def intercept(
    along: float, across: float, velocity: tuple[float, float], line: float, bounds: tuple[float, float]
) -> tuple[float, float] | None:
    """Where a ball at ``along`` (the paddle's axis) and ``across`` crosses the paddle's ``line``,
    bouncing off the walls at ``bounds``, and in how many steps; None when it moves away.
    ``velocity``: (along, across) per step."""
    v_along, v_across = velocity
    if v_across == 0:
        return None
    steps = (line - across) / v_across
    if steps < 0:
        return None
    return reflect(along + v_along * steps, *bounds), steps


class Policy(Protocol):
    """One game's controller: it sees the named RAM fields, the sprite positions and the RAM itself
    (for the tables the fields do not name one by one, such as Ms. Pac-Man's dots)."""

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str: ...


FRAME_SKIP = 4  # ALE v5's: the experts' timings (paddle models, laser climbs) are in its steps


@dataclass(frozen=True)
class PaddleModel:
    """How a paddle-controller game moves its paddle: the controller's setting (the pot) moves
    ``rate`` RAM units a frame while LEFT/RIGHT is held (clamped to ``limits``), and every ``every``
    frames the paddle closes ``gain`` of its distance to it. Fitted to frame-by-frame rollouts (mean
    error under 1.5 units); the paddle cannot be read from RAM between steps, so this is how an expert
    knows where a paddle that is still moving will stop."""

    rate: float
    gain: float
    every: int
    limits: tuple[float, float]

    def clamp(self, value: float) -> float:
        return min(max(value, self.limits[0]), self.limits[1])

    def simulate(self, pot: float, paddle: float, direction: int, steps: int) -> float:
        """Paddle position after ``steps`` env steps (of ALE v5's 4 frames), holding ``direction``
        (-1, 0, 1) for the first."""
        for step in range(steps):
            for frame in range(FRAME_SKIP):
                if step == 0:
                    pot = self.clamp(pot + self.rate * direction)
                if frame % self.every == self.every - 1:
                    paddle += (pot - paddle) * self.gain
        return paddle


class PaddleTracker:
    """Estimates the hidden pot setting from the paddle positions seen, and picks the key (-1, 0, 1)
    whose outcome, ``steps`` ahead, lands the paddle nearest a target."""

    def __init__(self, model: PaddleModel, correction: float = 0.7):
        self.model = model
        self.correction = correction
        self.pot: float | None = None
        self.paddle = 0.0

    def observe(self, paddle: int) -> None:
        if self.pot is None:
            self.pot = float(paddle)
        else:  # the paddle is where the pot pulled it: a surprise means the pot is elsewhere
            expected = self.model.simulate(self.pot, self.paddle, 0, 1)
            self.pot = self.model.clamp(self.pot + self.correction * (paddle - expected))
        self.paddle = float(paddle)

    def steer(self, target: float, steps: int) -> int:
        assert self.pot is not None, "observe() first"
        best = min(
            (abs(self.model.simulate(self.pot, self.paddle, d, steps) - target) + (0.5 if d else 0.0), d)
            for d in (0, -1, 1)
        )[1]
        self.pot = self.model.clamp(self.pot + self.model.rate * FRAME_SKIP * best)
        return best


def _velocity(
    now: tuple[int, int], before: tuple[int, int] | None, limit: int = 40
) -> tuple[int, int] | None:
    """Displacement per step, or None for a jump (a serve, a respawn) or no previous position."""
    if before is None:
        return None
    dx, dy = now[0] - before[0], now[1] - before[1]
    return None if abs(dx) > limit or abs(dy) > limit else (dx, dy)


# ---- Pong ---------------------------------------------------------------------------------------

# RAM units (state_text.SPECS["Pong"]): the ball meets the paddle's face at ball_x 190; the ball's
# ball_y stays within [48, 203] between the walls; paddle RAM y = ball RAM y - 6 puts their centres
# level (their sprites are drawn at different offsets).
_PONG_PADDLE = PaddleModel(rate=5.75, gain=0.5, every=2, limits=(38, 203))
_PONG_HIT_X = 190
_PONG_WALLS = (48, 203)
_PONG_LEVEL = 6
_PONG_HOME = 120
# Meet the ball this many px off the paddle's centre, on the side it comes from: the return goes
# back the way it came, fast, which the computer opponent misses more often (6 full games each:
# +20 a game at 2 px, +17 at 4, +11 at 5; the paddle lands within about 4 px of a target).
_PONG_AIM = 2


class PongIntercept:
    """Predicts where the ball meets the paddle (reflecting off the walls) and moves the paddle
    there, knowing its momentum (:class:`PaddleModel`); with the ball moving away, waits in the
    middle. RIGHT moves Pong's paddle up, LEFT down."""

    def __init__(self) -> None:
        self.paddle = PaddleTracker(_PONG_PADDLE)
        self.ball: tuple[int, int] | None = None

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        self.paddle.observe(f["player_y"])
        target, steps = float(_PONG_HOME), 6
        if "ball_x" in p:
            ball = (f["ball_x"], f["ball_y"])
            velocity = _velocity(ball, self.ball)
            self.ball = ball
            if velocity is not None and velocity[0] > 0 and ball[0] <= _PONG_HIT_X + 1:
                dx, dy = velocity
                hit = intercept(ball[1], ball[0], (dy, dx), _PONG_HIT_X, _PONG_WALLS)
                if hit is not None:
                    target = hit[0] - _PONG_LEVEL + _PONG_AIM * (1 if dy > 0 else -1 if dy < 0 else 0)
                    steps = max(1, round(hit[1]))
        else:
            self.ball = None
        key = self.paddle.steer(target, steps)
        return "LEFT" if key > 0 else "RIGHT" if key < 0 else "NOOP"


class PongTrack:
    """Moves toward the ball's height as the state text words it ("N px below/above your paddle",
    "level with" within 4 px); still when no ball is in play. Weaker than :class:`PongIntercept`,
    but each action follows from one phrase of the prompt, so a small model can clone it from the
    text."""

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        if "ball_y" not in p or "player_y" not in p:
            return "NOOP"
        dy = p["ball_y"] - p["player_y"]
        return "NOOP" if abs(dy) <= 4 else "LEFT" if dy > 0 else "RIGHT"


# ---- Breakout -----------------------------------------------------------------------------------

# RAM units: the ball reaches the paddle's top at ball_y 178; its ball_x stays within [57, 199]
# between the side walls; paddle RAM x = ball RAM x - 9 puts their centres level.
_BREAKOUT_PADDLE = PaddleModel(rate=5.5, gain=0.5, every=1, limits=(55, 191))
_BREAKOUT_HIT_Y = 178
_BREAKOUT_WALLS = (57, 199)
_BREAKOUT_LEVEL = 9


class BreakoutIntercept:
    """FIRE serves; otherwise the paddle goes where the falling ball will meet it (reflecting off
    the side walls), knowing the paddle's momentum; under a rising ball it follows the ball."""

    def __init__(self) -> None:
        self.paddle = PaddleTracker(_BREAKOUT_PADDLE)
        self.ball: tuple[int, int] | None = None

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        self.paddle.observe(f["player_x"])
        if "ball" in SPECS["Breakout"].absent(f):
            self.ball = None
            return "FIRE"
        ball = (f["ball_x"], f["ball_y"])
        velocity = _velocity(ball, self.ball, limit=30)
        self.ball = ball
        target, steps = float(ball[0] - _BREAKOUT_LEVEL), 4
        if velocity is not None and velocity[1] > 0 and ball[1] <= _BREAKOUT_HIT_Y + 2:
            hit = intercept(ball[0], ball[1], velocity, _BREAKOUT_HIT_Y, _BREAKOUT_WALLS)
            if hit is not None:
                target, steps = hit[0] - _BREAKOUT_LEVEL, max(1, round(hit[1]))
        key = self.paddle.steer(target, steps)
        return "RIGHT" if key > 0 else "LEFT" if key < 0 else "NOOP"


class BreakoutTrack:
    """Moves under the ball as the state text words it ("above your paddle" within 6 px); FIRE
    serves."""

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        if "ball" in SPECS["Breakout"].absent(f):
            return "FIRE"
        if "ball_x" not in p:
            return "NOOP"
        dx = p["ball_x"] - p["player_x"]
        return "NOOP" if abs(dx) <= 6 else "RIGHT" if dx > 0 else "LEFT"


# ---- Space Invaders -----------------------------------------------------------------------------

# Screen px. The cannon's centre (player_x + 2) stays within [37, 119]; the grid's leftmost live
# column turns around at x 22 and its rightmost at x 129; invader columns are 16 px apart and rows
# 18 px; the laser climbs 8 px a step from y 174.
_SI_CANNON = (37, 119)
_SI_GRID = (22, 129)
_SI_BOMB_NEAR = 8  # px: a bomb this near the cannon's column, and low, is dodged (8 seeds: 1573; 12: 1243)
_SI_BOMB_LOW = 62  # bomb_*_y from which a bomb is low enough to matter (y 128 and below)
_SI_BOMB_PAST = 96  # bomb_*_y beyond which it has passed the cannon


class SpaceInvadersGunner:
    """Fires at the lowest row's live column nearest the cannon, leading it by how far the grid
    moves while the laser climbs (reflecting off the grid's turning points), and only when lined up
    (a missed laser costs a climb); steps aside from bombs about to land on the cannon."""

    def __init__(self) -> None:
        self.grid: list[int] = []

    def _danger(self, x: float, bombs: list[tuple[int, int]]) -> float:
        return sum(
            max(0, _SI_BOMB_NEAR - abs(bx - x)) * (by - _SI_BOMB_LOW + 10)
            for bx, by in bombs
            if _SI_BOMB_LOW - 10 <= by <= _SI_BOMB_PAST
        )

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        cannon = f["player_x"] + 2
        left = f["enemies_x"] - 1
        self.grid = [*self.grid[-3:], left]
        moves = [b - a for a, b in itertools.pairwise(self.grid) if abs(b - a) <= 10]
        speed = sum(moves) / len(moves) if moves else 0.0
        rows = [f[f"invaders_row_{i}"] for i in range(6)]
        live = [j for j in range(6) if any(row >> j & 1 for row in rows)]
        bombs = [(f[f"bomb_{i}_x"] - 2, f[f"bomb_{i}_y"]) for i in range(2)]
        move, lined_up = 0, False
        if live:
            lowest_row = next(row for row in rows if row)
            targets = [j for j in range(6) if lowest_row >> j & 1]
            right = _SI_GRID[1] - 16 * max(live)

            def aim(j: int) -> float:
                row = next(i for i, r in enumerate(rows) if r >> j & 1)
                y = 40 + 2 * f["grid_drop"] + 18 * (5 - row) - 4
                climb = max(0.0, (174 - y) / 8)
                return reflect(left + speed * climb, _SI_GRID[0], max(_SI_GRID[0], right)) + 16 * j + 3

            error = min((aim(j) - cannon for j in targets), key=abs)
            move = 0 if abs(error) <= 2 else 1 if error > 0 else -1
            lined_up = abs(error) <= 2
        danger = {
            m: self._danger(min(max(cannon + 6 * m, _SI_CANNON[0]), _SI_CANNON[1]), bombs) for m in (-1, 0, 1)
        }
        if danger[move] > 0:
            move = min(danger, key=lambda m: (danger[m], m != move))
        key = {0: "", 1: "RIGHT", -1: "LEFT"}[move]
        return f"{key}FIRE" if lined_up else key or "NOOP"


# ---- Seaquest -----------------------------------------------------------------------------------

_SQ_LANES = (106, 82, 58, 34)  # player_y level with lane 0 (the deepest) .. 3
_SQ_SURFACE = 13  # player_y at the surface
_SQ_LOW_OXYGEN = 16  # of 64: head up (with a diver aboard)
_SQ_KEEP = 20  # px: back away from an enemy in the submarine's lane nearer than this (28: -575 on 8 seeds)
_SQ_CROSS = 28  # px: do not enter a lane with an enemy nearer than this
_SQ_HOME = 78  # px: the submarine's resting column


def _sq_enemies(f: dict[str, int], lane: int) -> list[int]:
    """Screen x of each enemy of a lane's formation (up to three, 16 px apart)."""
    x, alive = f[f"enemy_obstacle_x_{lane}"], f[f"enemy_lane_{lane}"]
    return [
        (x + offset) % 256
        for bit, offset in ((2, 0), (1, 16), (0, 32))
        if alive >> bit & 1 and (x + offset) % 256 < 160
    ]


def _sq_lane(y: int) -> int:
    return min(range(4), key=lambda i: abs(_SQ_LANES[i] - y))


class SeaquestHunter:
    """Goes to the lane (depth) of the nearest enemies, faces the nearest one and fires, keeping its
    distance; never changes lane into an enemy; with no enemy, waits at a lane with a diver. Surfaces
    with six divers, or when oxygen runs low with at least one (surfacing with none costs a life),
    and dives again once the tank is full."""

    def __init__(self) -> None:
        self.surfacing = False

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        y, oxygen, divers = f["player_y"], f["oxygen_meter_value"], f["divers_collected_count"]
        centre = f["player_x"] + 8
        if y <= _SQ_SURFACE:
            self.surfacing = False
            return "DOWN" if oxygen >= 63 else "NOOP"
        enemies = [_sq_enemies(f, i) for i in range(4)]

        def clear(lane: int, margin: int) -> bool:
            return all(abs(e + 4 - centre) >= margin for e in enemies[lane])

        if divers >= 6 or (oxygen < _SQ_LOW_OXYGEN and divers >= 1):
            self.surfacing = True
        if self.surfacing:
            return "FIRE" if not clear(_sq_lane(y - 8), _SQ_CROSS) and y - 8 > _SQ_LANES[3] - 12 else "UPFIRE"
        busy = [i for i in range(4) if enemies[i]]
        divers_at = [i for i in range(4) if f[f"diver_or_enemy_missile_x_{i}"]]
        lane = min(busy or divers_at or [1], key=lambda i: abs(_SQ_LANES[i] - y))
        vertical = ""
        if abs(_SQ_LANES[lane] - y) > 2:
            going_down = _SQ_LANES[lane] > y
            entering = _sq_lane(y + (4 if going_down else -4))
            if entering == _sq_lane(y) or clear(entering, _SQ_CROSS):
                vertical = "DOWN" if going_down else "UP"
        horizontal = ""
        here = enemies[_sq_lane(y)]
        if here:
            gap = min((e + 4 - centre for e in here), key=abs)
            facing_left = f["player_direction"] != 0
            if abs(gap) < _SQ_KEEP:
                horizontal = "RIGHT" if gap < 0 else "LEFT"  # back away
            elif (gap < 0) != facing_left:
                horizontal = "LEFT" if gap < 0 else "RIGHT"  # turn to face it
        elif abs(centre - _SQ_HOME) > 10:
            horizontal = "RIGHT" if centre < _SQ_HOME else "LEFT"
        return f"{vertical}{horizontal}FIRE"


# ---- Q*bert -------------------------------------------------------------------------------------

# RAM: Q*bert at rest on the cube of row r (0 at the top) and position k (0 at the left) has
# player_y = 25 + 28 r and player_column = 5 + 2 k - r. The four hops, in the game's own names:
_QBERT_HOPS = {"RIGHT": (1, 1), "DOWN": (1, 0), "UP": (-1, 0), "LEFT": (-1, -1)}


class QbertPainter:
    """Once Q*bert has landed, hops toward the nearest cube still in the round's first colour
    (breadth-first over the pyramid, never off its edge); a round is over when no cube keeps that
    colour, and the next round's first colour is read when it starts."""

    def __init__(self) -> None:
        self.first_colour: int | None = None
        self.last: tuple[int, int, int] | None = None

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        if "player_x" not in p:
            return "NOOP"
        now = (f["player_x"], f["player_y"], f["player_column"])
        landed, self.last = now == self.last, now
        row, rest = divmod(f["player_y"] - 25, 28)
        if not landed or rest or not 0 <= row <= 5 or (f["player_column"] - 5 + row) % 2:
            return "NOOP"
        here = (row, (f["player_column"] - 5 + row) // 2)
        if not 0 <= here[1] <= row:
            return "NOOP"
        colours = [f[f"cube_{i}"] for i in range(21)]
        if self.first_colour is None or self.first_colour not in colours:
            self.first_colour = max(set(colours), key=colours.count)  # a new round
        todo = {i for i, colour in enumerate(colours) if colour == self.first_colour}
        queue: list[tuple[tuple[int, int], str | None]] = [(here, None)]
        seen = {here}
        for (r, k), first in queue:
            if first is not None and r * (r + 1) // 2 + k in todo:
                return first
            for name, (dr, dk) in _QBERT_HOPS.items():
                cube = (r + dr, k + dk)
                if 0 <= cube[0] <= 5 and 0 <= cube[1] <= cube[0] and cube not in seen:
                    seen.add(cube)
                    queue.append((cube, first or name))
        return "NOOP"


# ---- Ms. Pac-Man --------------------------------------------------------------------------------

# The first maze (levels 1 and 2) in RAM coordinates (player_x, player_y): the corridors Ms. Pac-Man
# can be on, mapped by recording her position frame by frame over 30 exploring games (every position
# seen lies on one of these rows or columns), and the two tunnels, which wrap x 12 <-> 171.
_MAZE_ROWS: dict[int, tuple[tuple[int, int], ...]] = {
    2: ((18, 42), (58, 118), (134, 158)),
    26: ((18, 158),),
    50: ((12, 26), (42, 134), (150, 171)),
    74: ((26, 66), (110, 150)),
    98: ((12, 26), (42, 134), (150, 171)),
    122: ((18, 42), (58, 58), (74, 102), (118, 118), (134, 158)),
    134: ((18, 18), (42, 42), (58, 74), (102, 118), (134, 134), (158, 158)),
    158: ((18, 158),),
}
_MAZE_COLS: dict[int, tuple[tuple[int, int], ...]] = {
    18: ((2, 26), (122, 158)),
    26: ((26, 122),),
    42: ((2, 50), (98, 158)),
    58: ((2, 26), (98, 134)),
    66: ((26, 98),),
    74: ((98, 158),),
    102: ((98, 158),),
    110: ((26, 98),),
    118: ((2, 26), (98, 134)),
    134: ((2, 50), (98, 158)),
    150: ((26, 122),),
    158: ((2, 26), (122, 158)),
}
_MAZE_TUNNELS = ((50, 12, 171), (98, 12, 171))  # (row, left end, right end)


class _Maze:
    """The corridor graph, sampled every 4 px (and at every junction and end), with all shortest
    path lengths precomputed (a few hundred nodes: a fraction of a second, once per process)."""

    def __init__(self, step: int = 4):
        rows, cols = _MAZE_ROWS, _MAZE_COLS
        lines: list[list[tuple[int, int]]] = []
        for y, segments in rows.items():
            for a, b in segments:
                xs = {a, b, *range(a, b + 1, step), *(c for c in cols if a <= c <= b)}
                lines.append([(x, y) for x in sorted(xs)])
        for x, segments in cols.items():
            for a, b in segments:
                ys = {a, b, *range(a, b + 1, step), *(r for r in rows if a <= r <= b)}
                lines.append([(x, y) for y in sorted(ys)])
        adjacency: dict[tuple[int, int], list[tuple[tuple[int, int], int]]] = {}
        for line in lines:
            for p, q in itertools.pairwise(line):
                length = abs(p[0] - q[0]) + abs(p[1] - q[1])
                adjacency.setdefault(p, []).append((q, length))
                adjacency.setdefault(q, []).append((p, length))
        for y, left, right in _MAZE_TUNNELS:
            adjacency[(left, y)].append(((right, y), 2))
            adjacency[(right, y)].append(((left, y), 2))
        self.nodes = sorted(adjacency)
        index = {n: i for i, n in enumerate(self.nodes)}
        self.neighbours = [[(index[q], w) for q, w in adjacency[n]] for n in self.nodes]
        self.x = np.array([n[0] for n in self.nodes])
        self.y = np.array([n[1] for n in self.nodes])
        self.distance = np.stack([self._dijkstra(i) for i in range(len(self.nodes))])

    def _dijkstra(self, source: int) -> np.ndarray:
        dist = np.full(len(self.nodes), 10_000, np.int32)
        dist[source] = 0
        queue = [(0, source)]
        while queue:
            d, u = heapq.heappop(queue)
            if d > dist[u]:
                continue
            for v, w in self.neighbours[u]:
                if d + w < dist[v]:
                    dist[v] = d + w
                    heapq.heappush(queue, (d + w, v))
        return dist

    def snap(self, x: int, y: int) -> tuple[int, int]:
        """The node nearest (x, y) and how far it is (large when (x, y) is off this maze)."""
        gaps = np.abs(self.x - x) + np.abs(self.y - y)
        i = int(gaps.argmin())
        return i, int(gaps[i])

    def key(self, here: int, there: int) -> str:
        """The joystick direction from node ``here`` to its neighbour ``there``."""
        dx, dy = self.x[there] - self.x[here], self.y[there] - self.y[here]
        if abs(dx) > 40:  # through a tunnel
            dx = -dx
        if abs(dx) >= abs(dy):
            return "RIGHT" if dx > 0 else "LEFT"
        return "DOWN" if dy > 0 else "UP"


_MAZE: _Maze | None = None


def _maze() -> _Maze:
    global _MAZE
    if _MAZE is None:
        _MAZE = _Maze()
    return _MAZE


# The dots are bits of RAM, row by row (state_text.SPECS["MsPacman"] "dots_row_0"): row i (player_y
# 2 + 12 i) uses three bytes; (byte of the three, bit) -> player_x of that dot. The other bits of those
# bytes are set too, as the maze's walls. Mapped by clearing each bit with ALE's setRAM and seeing
# which dot vanished from the screen: 150 dots in the first maze, at these player_x in each row.
_DOT_X: dict[tuple[int, int], int] = {
    (0, 4): 158, (0, 6): 18,
    (1, 0): 118, (1, 1): 50, (1, 2): 110, (1, 3): 42, (1, 4): 102, (1, 5): 34, (1, 6): 94, (1, 7): 26,
    (2, 0): 58, (2, 1): 126, (2, 2): 66, (2, 3): 134, (2, 4): 74, (2, 5): 142, (2, 6): 82, (2, 7): 150,
}  # fmt: skip
_MAZE_DOTS: tuple[tuple[int, ...], ...] = (
    (18, 26, 34, 42, 58, 66, 74, 82, 94, 102, 110, 118, 134, 142, 150, 158),
    (42, 58, 118, 134),
    (18, 26, 34, 42, 50, 58, 66, 74, 82, 94, 102, 110, 118, 126, 134, 142, 150, 158),
    (26, 42, 66, 110, 134, 150),
    (18, 26, 42, 50, 58, 66, 74, 82, 94, 102, 110, 118, 126, 134, 150, 158),
    (26, 66, 110, 150),
    (26, 34, 42, 50, 58, 66, 110, 118, 126, 134, 142, 150),
    (26, 66, 110, 150),
    (18, 26, 42, 50, 58, 66, 74, 82, 94, 102, 110, 118, 126, 134, 150, 158),
    (26, 42, 58, 74, 102, 118, 134, 150),
    (18, 26, 34, 42, 58, 74, 82, 94, 102, 118, 134, 142, 150, 158),
    (18, 42, 58, 66, 74, 102, 110, 118, 134, 158),
    (42, 74, 102, 134),
    (18, 26, 34, 42, 50, 58, 66, 74, 82, 94, 102, 110, 118, 126, 134, 142, 150, 158),
)


def ms_pacman_dots(ram: np.ndarray) -> list[tuple[int, int]]:
    """(player_x, player_y) of the first maze's dots still to eat, read from the RAM's dot table."""
    first = SPECS["MsPacman"].fields["dots_row_0"]
    bit = {x: jk for jk, x in _DOT_X.items()}
    return [
        (x, 2 + 12 * row)
        for row, xs in enumerate(_MAZE_DOTS)
        for x in xs
        if int(ram[first + 3 * row + bit[x][0]]) >> bit[x][1] & 1
    ]


_GHOSTS = ("blinky", "pinky", "inky", "sue")
_MS_PACMAN_MARGIN = 16  # px: a corridor is safe if Ms. Pac-Man gets there this much before any ghost
_MS_PACMAN_CHASE = 60  # px: with the ghosts blue, chase one this near


class MsPacmanPlanner:
    """Goes to the nearest dot that it can reach through corridors it gets to well before any ghost
    (shortest paths over the maze graph); with none, moves where the ghosts are farthest; while the
    ghosts are blue, chases a near one. On a maze it has no map of, it only flees the ghosts."""

    def __init__(self) -> None:
        self.maze = _maze()
        spec = SPECS["MsPacman"]
        self._dot_bytes = np.array(
            [spec.fields["dots_row_0"] + 3 * i + j for i in range(14) for j, _ in _DOT_X]
        )
        self._dot_bits = np.array([k for i in range(14) for _, k in _DOT_X])
        nodes = [self.maze.snap(x, 2 + 12 * i)[0] for i in range(14) for x in _DOT_X.values()]
        self._dot_nodes = np.array(nodes)

    def act(self, f: dict[str, int], p: dict[str, int], ram: np.ndarray) -> str:
        maze = self.maze
        me, off = maze.snap(f["player_x"], f["player_y"])
        if off > 6:
            return "NOOP"
        ghosts = [maze.snap(f[f"enemy_{g}_x"], f[f"enemy_{g}_y"]) for g in _GHOSTS]
        mine = maze.distance[me]
        if f["ghost_mode"] >= 80:  # the ghosts are blue: chase the nearest ghost, ignore the others
            near = [g for g, off_g in ghosts if off_g <= 6 and mine[g] <= _MS_PACMAN_CHASE]
            if near:
                prey = min(near, key=lambda g: mine[g])
                step = min(maze.neighbours[me], key=lambda vw: vw[1] + maze.distance[vw[0], prey])[0]
                return maze.key(me, step)
            theirs = np.full(len(maze.nodes), 10_000)
        else:
            chasing = [maze.distance[g] for g, off_g in ghosts if off_g <= 6]
            theirs = np.min(chasing, axis=0) if chasing else np.full(len(maze.nodes), 10_000)
        safe = mine + _MS_PACMAN_MARGIN < theirs
        dots = np.zeros(len(maze.nodes), bool)
        present = (ram[self._dot_bytes].astype(int) >> self._dot_bits) & 1 == 1
        dots[self._dot_nodes[present]] = True
        step = self._first_step(me, safe, dots)
        if step is None:  # nothing safe to eat: go where the ghosts are farthest behind
            step = max(maze.neighbours[me], key=lambda vw: theirs[vw[0]] - mine[vw[0]])[0]
        return maze.key(me, step)

    def _first_step(self, me: int, safe: np.ndarray, dots: np.ndarray) -> int | None:
        """First node on the shortest path to the nearest dot through safe nodes only."""
        queue = [(w, v, v) for v, w in self.maze.neighbours[me] if safe[v]]
        heapq.heapify(queue)
        done: set[int] = {me}
        while queue:
            d, u, first = heapq.heappop(queue)
            if u in done:
                continue
            done.add(u)
            if dots[u]:
                return first
            for v, w in self.maze.neighbours[u]:
                if v not in done and safe[v]:
                    heapq.heappush(queue, (d + w, v, first))
        return None


# ---- registry -----------------------------------------------------------------------------------

# Per game: the named policies, the first one the default (the strongest).
_POLICIES: dict[str, dict[str, Callable[[], Policy]]] = {
    "Pong": {"intercept": PongIntercept, "track": PongTrack},
    "Breakout": {"intercept": BreakoutIntercept, "track": BreakoutTrack},
    "SpaceInvaders": {"gunner": SpaceInvadersGunner},
    "MsPacman": {"planner": MsPacmanPlanner},
    "Qbert": {"painter": QbertPainter},
    "Seaquest": {"hunter": SeaquestHunter},
}
EXPERT_GAMES: tuple[str, ...] = tuple(_POLICIES)
assert all(game in SPECS for game in EXPERT_GAMES)


def expert_policies(game: str) -> tuple[str, ...]:
    """The policy names of ``game``'s expert, the default first; () for a game without one."""
    return tuple(_POLICIES.get(game, ()))


class _Env(Protocol):
    action_names: list[str]

    @property
    def ale(self) -> Any: ...


class ExpertAgent:
    """A RAM-reading expert for one env (implements the :class:`~atari_vlm.agent.Agent` protocol).

    It reads ``env.ale.getRAM()`` at each decision (the env's state after the last step), so it must
    be given the very env it plays. ``policy``: one of :func:`expert_policies` (default: the first,
    the strongest). ``game``: the env's game, for an env that does not say (default: ``env.game``).

    Raises:
        ConfigError: the env's game has no expert (see :data:`EXPERT_GAMES`), or an unknown policy.
    """

    def __init__(self, env: _Env, policy: str | None = None, *, game: str | None = None):
        game = resolve_game(game) if game is not None else env.game
        if game not in _POLICIES:
            raise ConfigError(f"no expert policy for {game}; experts exist for {', '.join(EXPERT_GAMES)}")
        policies = _POLICIES[game]
        if policy is not None and policy not in policies:
            raise ConfigError(f"unknown expert policy {policy!r}; choose one of {', '.join(policies)}")
        self.env = env
        self.game = game
        self.action_names = list(env.action_names)
        self._index = {name: i for i, name in enumerate(self.action_names)}
        self.policy = policy or next(iter(policies))
        self._make = policies[self.policy]
        self._policy = self._make()

    def reset(self, seed: int | None = None) -> None:
        self._policy = self._make()

    def choose(self) -> str:
        """The action name for the env's current RAM."""
        ram = self.env.ale.getRAM()
        name = self._policy.act(fields(self.game, ram), positions(self.game, ram), ram)
        if name not in self._index:  # a policy written for the minimal action set, in a smaller one
            raise ConfigError(
                f"the {self.game} expert plays {name}, which this env lacks: {self.action_names}"
            )
        return name

    async def act(self, obs: dict[str, Any]) -> Decision:
        name = self.choose()
        return Decision(self._index[name], name, text=f"ACTION: {name}")


# ---- measuring ----------------------------------------------------------------------------------

V5_FRAME_CAP = 108_000  # ALE v5's episode cap: 30 minutes of play


def measure(
    game: str,
    seeds: Sequence[int],
    agent: str = "expert",
    max_steps: int | None = None,
    policy: str | None = None,
) -> list[float]:
    """Returns of ``agent`` ("expert" or "random") on env ``seeds`` (through
    :func:`atari_vlm.rollout.explicit_seeds`), one whole game each under ALE v5 settings (frame skip
    4, sticky actions 0.25, the 108,000-frame cap), or ``max_steps`` decisions."""
    from atari_vlm.agent import RandomAgent
    from atari_vlm.env import make_env
    from atari_vlm.rollout import explicit_seeds, play_episode

    returns = []
    for seeds_i in explicit_seeds(list(seeds)):
        env = make_env(game, max_steps=max_steps, max_episode_frames=V5_FRAME_CAP)
        player = ExpertAgent(env, policy, game=game) if agent == "expert" else RandomAgent(env.action_names)
        try:
            result = asyncio.run(play_episode(env, player, episode=0, seeds=seeds_i, uses_model=False))
        finally:
            env.close()
        returns.append(result.episode_return)
    return returns


def main(argv: Sequence[str] | None = None) -> None:
    """Print the experts' table: game, policy, mean, per-seed returns, and random on the same seeds."""
    parser = argparse.ArgumentParser(prog="python -m atari_vlm.experts", description=main.__doc__)
    parser.add_argument("--games", default=",".join(EXPERT_GAMES), help="comma-separated (default: all)")
    parser.add_argument("--seeds", type=int, default=5, help="env seeds 0..N-1 (default 5)")
    parser.add_argument("--all-policies", action="store_true", help="every policy, not only the default")
    parser.add_argument("--max-steps", type=int, default=None, help="decision cap per game (default: none)")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    try:
        games = [resolve_game(name) for name in args.games.split(",")]
    except ConfigError as exc:
        raise SystemExit(str(exc)) from exc
    missing = [game for game in games if not expert_policies(game)]
    if missing:
        raise SystemExit(f"no expert for {', '.join(missing)}; experts exist for {', '.join(EXPERT_GAMES)}")
    print(f"| game | policy | mean | returns (seeds 0-{args.seeds - 1}) | random mean | random returns |")
    print("|---|---|---:|---|---:|---|")
    for game in games:
        names = expert_policies(game)
        random = measure(game, seeds, "random", max_steps=args.max_steps)
        for name in names if args.all_policies else names[:1]:
            values = measure(game, seeds, "expert", max_steps=args.max_steps, policy=name)
            print(
                f"| {game} | {name} | {np.mean(values):.1f} | {', '.join(f'{v:g}' for v in values)} "
                f"| {np.mean(random):.1f} | {', '.join(f'{v:g}' for v in random)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
