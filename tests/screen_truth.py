"""Ground truth from the pixels: find each game's sprites in a frame by their colours, and check what
the state text claims against them, step by step over whole episodes.

Per game, a :class:`Look` says which colours an object is drawn in and where on the screen it can be
found without mistaking another object of the same colour for it (walls, score digits, bricks). The
claims are read back out of the text with regular expressions, so the words the model gets are what
is checked, not an intermediate table.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from atari_vlm.agent import RandomAgent
from atari_vlm.env import make_env
from atari_vlm.experts import ExpertAgent

Colour = tuple[int, int, int]
TOLERANCE = 3  # px: sprites are drawn up to a frame late and jitter by a pixel


@dataclass(frozen=True)
class Blob:
    x0: int
    x1: int
    y0: int
    y1: int

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def near(self, x: float | None, y: float | None, tol: float) -> bool:
        """The point lies inside the blob's box grown by ``tol`` (an axis left None is not checked)."""
        ok_x = x is None or self.x0 - tol <= x <= self.x1 + tol
        ok_y = y is None or self.y0 - tol <= y <= self.y1 + tol
        return ok_x and ok_y


@dataclass(frozen=True)
class Look:
    """How one object is drawn: its colours, where to search for it, and its largest size (a bigger
    blob is this object merged with another one of the same colour)."""

    colours: tuple[Colour, ...]
    area: tuple[int, int, int, int]  # x0, x1, y0, y1 inclusive
    max_size: tuple[int, int]  # (width, height)
    flickers: bool = False  # drawn on some frames only: a claim with nothing drawn is not a failure
    partial: bool = False  # often drawn in part (a ghost's eyes, a ghost behind another): see _part_of
    join: int = 0  # pixels this near each other are one blob (a sprite cut by a band of background)
    wraps: bool = False  # crosses the screen's side edges in a tunnel
    tolerance: int = TOLERANCE
    # Where nothing may be drawn when the text says the object is absent (default: ``area``): leaves
    # out places where something else of its colour can be.
    absent_area: tuple[int, int, int, int] | None = None


def packed(frame: np.ndarray) -> np.ndarray:
    """The frame's colours as one integer a pixel (0xRRGGBB): one comparison finds a colour."""
    rgb = frame.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _key(colour: Colour) -> int:
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


def find(frame: np.ndarray, look: Look) -> tuple[list[Blob], list[Blob]]:
    """(clean, merged) blobs of the look's colours inside its area, in screen coordinates. ``frame``:
    an RGB frame or its :func:`packed` form."""
    x0, x1, y0, y1 = look.area
    window = (frame if frame.ndim == 2 else packed(frame))[y0 : y1 + 1, x0 : x1 + 1]
    mask = np.zeros(window.shape, np.uint8)
    for colour in look.colours:
        mask |= window == _key(colour)
    if not mask.any():
        return [], []
    grown = cv2.dilate(mask, np.ones((2 * look.join + 1,) * 2, np.uint8)) if look.join else mask
    n, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    clean, merged = [], []
    for label in range(1, n):
        left, top, width, height, _ = stats[label]
        j = look.join  # the dilation grew every blob by this much on each side
        box = (int(left) + j, int(left + width - 1) - j, int(top) + j, int(top + height - 1) - j)
        blob = Blob(box[0] + x0, box[1] + x0, box[2] + y0, box[3] + y0)
        fits = blob.x1 - blob.x0 < look.max_size[0] and blob.y1 - blob.y0 < look.max_size[1]
        (clean if fits else merged).append(blob)
    return clean, merged


@dataclass
class Claims:
    """What one state text says: object -> (x, y) screen position (an axis not stated is None);
    ``absent``: objects the text says are not in play or not visible; ``hidden_ok``: objects the text
    places but says may not be drawn this frame (a blinking cannon); ``values``: other figures."""

    where: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)
    hidden_ok: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)  # the text says it cannot tell ("Game over.")
    values: dict[str, int | str] = field(default_factory=dict)

    def place(self, name: str, match: re.Match[str] | None, axes: str, text: str, absent: str) -> None:
        """Record ``name`` at the match's groups (``axes``: "x", "y" or "xy"), or as absent when the
        text says ``absent``; a text that does neither is a failure of its own."""
        if match is None:
            assert absent in text, f"the text neither places {name} nor says {absent!r}: {text!r}"
            self.absent.add(name)
            return
        values = [int(g) for g in match.groups()[: len(axes)]]
        self.where[name] = (
            values[axes.index("x")] if "x" in axes else None,
            values[axes.index("y")] if "y" in axes else None,
        )


def _ball(text: str, claims: Claims) -> None:
    m = re.search(r"The ball is at x=(-?\d+), y=(-?\d+)", text)
    if m is None and "No ball in play" in text:
        claims.absent.add("ball")
        return
    claims.place("ball", m, "xy", text, "out of sight")
    motion = re.search(r"The ball is at [^;.]* moving ((?:left|right)?(?: and )?(?:up|down)?)", text)
    if motion:
        claims.values["ball_motion"] = motion.group(1)


def _score_lives(text: str, claims: Claims) -> None:
    m = re.search(r"Score: (\d+)\. Lives: (-?\d+)\.", text)
    assert m, text
    claims.values["score"], claims.values["lives"] = int(m.group(1)), int(m.group(2))


def parse_pong(text: str) -> Claims:
    claims = Claims()
    mine = re.search(r"Your paddle \(right\) is at y=(-?\d+) of 210", text)
    claims.place("player", mine, "y", text, "Your paddle (right) is out of sight")
    theirs = re.search(r"the opponent's \(left\) at y=(-?\d+)", text)
    claims.place("enemy", theirs, "y", text, "the opponent's (left) is out of sight")
    _ball(text, claims)
    rel = re.search(r"it is (level with|(\d+) px (above|below)) your paddle", text)
    if rel:
        claims.values["ball_minus_paddle"] = (
            "level" if rel.group(2) is None else int(rel.group(2)) * (1 if rel.group(3) == "below" else -1)
        )
    toward = re.search(r", (toward you|away from you)", text)
    if toward:
        claims.values["toward"] = toward.group(1)
    score = re.search(r"Score: you (\d+), opponent (\d+)\.", text)
    assert score, text
    claims.values["points_for"], claims.values["points_against"] = int(score.group(1)), int(score.group(2))
    return claims


def parse_breakout(text: str) -> Claims:
    claims = Claims()
    paddle = re.search(r"Your paddle \(bottom\) is centred at x=(-?\d+) of 160", text)
    claims.place("player", paddle, "x", text, "Your paddle (bottom) is out of sight")
    _ball(text, claims)
    rel = re.search(r"it is (above your paddle|(\d+) px (left|right) of your paddle)", text)
    if rel:
        claims.values["ball_minus_paddle"] = (
            "above" if rel.group(2) is None else int(rel.group(2)) * (1 if rel.group(3) == "right" else -1)
        )
    _score_lives(text, claims)
    return claims


_CANNON = re.compile(
    r"(Your cannon \(bottom\) is|A new cannon \(bottom\) is blinking in|Your cannon \(bottom\) was hit)"
    r" at x=(-?\d+) of 160"
)


def parse_space_invaders(text: str) -> Claims:
    claims = Claims()
    if text.startswith("Game over."):
        claims.unknown.add("player")
        _score_lives(text, claims)
        return claims
    m = _CANNON.search(text)
    assert m, text
    claims.where["player"] = (int(m.group(2)), None)
    state = "playing" if m.group(1).endswith(" is") else "blinking" if "new" in m.group(1) else "hit"
    claims.values["player_state"] = state
    if state == "blinking":
        claims.hidden_ok.add("player")
    count = re.search(r"(\d+) invaders left", text)
    assert count, text
    claims.values["invaders"] = int(count.group(1))
    grid = re.search(r"The invader grid's left edge is at x=(-?\d+)(?:, moving (left|right))?", text)
    if grid:
        claims.values["grid_left"] = int(grid.group(1))
        if grid.group(2):
            claims.values["grid_motion"] = grid.group(2)
    else:
        assert "No invaders left" in text, text
    _score_lives(text, claims)
    return claims


def _relative_to(px: int, py: int, words: str) -> tuple[int, int]:
    dx = dy = 0
    for amount, word in re.findall(r"(\d+) (left|right|up|down)", words):
        sign = 1 if word in ("right", "down") else -1
        if word in ("left", "right"):
            dx = sign * int(amount)
        else:
            dy = sign * int(amount)
    return px + dx, py + dy


def parse_ms_pacman(text: str) -> Claims:
    claims = Claims()
    m = re.search(r"Ms\. Pac-Man is at x=(-?\d+), y=(-?\d+)", text)
    claims.place("player", m, "xy", text, "Ms. Pac-Man is in a side tunnel")
    line = re.search(r"Ghosts(?: relative to you in px, nearest first)?: ([^\n]*)\.", text)
    assert line, text
    for part in line.group(1).split("; "):
        name, _, rest = part.partition(" ")
        ghost = f"enemy_{name.lower()}"
        if rest == "in a side tunnel":
            claims.absent.add(ghost)
        elif rest.startswith("at x="):
            xy = re.match(r"at x=(-?\d+), y=(-?\d+)", rest)
            assert xy, text
            claims.where[ghost] = (int(xy.group(1)), int(xy.group(2)))
        else:
            assert m is not None, text
            claims.where[ghost] = _relative_to(int(m.group(1)), int(m.group(2)), rest)
    dots = re.search(r"Dots eaten: (\d+)\.", text)
    assert dots, text
    claims.values["dots_eaten"] = int(dots.group(1))
    _score_lives(text, claims)
    return claims


def parse_qbert(text: str) -> Claims:
    claims = Claims()
    if text.startswith("Game over."):
        claims.unknown.add("player")
    else:
        claims.place(
            "player", re.search(r"Q\*bert is at x=(-?\d+) of 160", text), "x", text, "Q*bert is not on screen"
        )
    _score_lives(text, claims)
    return claims


def parse_seaquest(text: str) -> Claims:
    claims = Claims()
    m = re.search(r"Your submarine is at x=(-?\d+), y=(-?\d+) \((at the surface|underwater)\)", text)
    claims.place("player", m, "xy", text, "Your submarine has been destroyed")
    if m:
        claims.values["depth"] = m.group(3)
    oxygen = re.search(r"Oxygen: (\d+) of 64", text)
    divers = re.search(r"Divers collected: (\d+) of 6", text)
    assert oxygen and divers, text
    claims.values["oxygen"], claims.values["divers"] = int(oxygen.group(1)), int(divers.group(1))
    _score_lives(text, claims)
    return claims


PARSERS: dict[str, Callable[[str], Claims]] = {
    "Pong": parse_pong,
    "Breakout": parse_breakout,
    "SpaceInvaders": parse_space_invaders,
    "MsPacman": parse_ms_pacman,
    "Qbert": parse_qbert,
    "Seaquest": parse_seaquest,
}

# Per game: object -> how it is drawn. Areas keep same-coloured things out: Pong's white walls, the
# score digits, Breakout's bricks (the ball takes each brick row's colour while among them).
_GHOST_COLOURS = {
    "blinky": (200, 72, 72),
    "pinky": (198, 89, 179),
    "inky": (84, 184, 153),
    "sue": (180, 122, 48),
}
LOOKS: dict[str, dict[str, Look]] = {
    "Pong": {
        # (101, 111, 228): the paddle on the first frame of a game, before the game sets its colours
        "player": Look(((92, 186, 92), (101, 111, 228)), (140, 143, 34, 193), (4, 16)),
        "enemy": Look(((213, 130, 74),), (16, 19, 34, 193), (4, 16)),
        "ball": Look(((236, 236, 236),), (0, 159, 34, 193), (2, 4)),
    },
    "Breakout": {
        "player": Look(((200, 72, 72),), (8, 151, 189, 192), (16, 4)),
        # A lost ball leaves as a one-row sliver at row 195 on some frames and not on others: the
        # text calls it out of sight from there on, and any claim below row 194 is checked.
        "ball": Look(((200, 72, 72),), (8, 151, 95, 209), (2, 4), absent_area=(8, 151, 95, 194)),
    },
    "SpaceInvaders": {"player": Look(((50, 132, 50),), (0, 159, 185, 194), (7, 10))},
    "MsPacman": {
        "player": Look(((210, 164, 74),), (0, 159, 0, 171), (8, 10), wraps=True),
        **{
            f"enemy_{name}": Look(
                (colour,), (0, 159, 0, 171), (8, 10), flickers=True, partial=True, join=2, wraps=True
            )
            for name, colour in _GHOST_COLOURS.items()
        },
    },
    # Q*bert's sprite is drawn up to 5 px aside of his RAM x on the first frames of a hop. When he is
    # said to be off screen, a sliver of him may show at the top or bottom edge as he leaves it, and
    # the flying discs at the sides flash his colour.
    "Qbert": {
        "player": Look(
            ((181, 83, 40),), (0, 159, 0, 209), (8, 20), tolerance=5, absent_area=(24, 135, 12, 189)
        )
    },
    "Seaquest": {"player": Look(((187, 187, 53),), (0, 159, 44, 170), (16, 12), join=4)},
}


@dataclass
class Step:
    """One observation of an episode: what the model was told and what the screen showed."""

    t: int
    text: str
    frame: np.ndarray
    episode_return: float
    lives: int
    points_for: int  # Pong: points won and lost so far
    points_against: int


@dataclass
class Report:
    """Failures (the first 20, each with its step and text) and how often each check was made."""

    failures: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    steps: int = 0
    lives_lost: int = 0
    rewards: int = 0

    def fail(self, step: Step, why: str) -> None:
        self.counts["failures"] += 1
        if len(self.failures) < 20:
            self.failures.append(f"step {step.t}: {why}\n    text: {step.text!r}")


def _hit(blob: Blob, x: float | None, y: float | None, tol: float) -> bool:
    return (x is None or abs(blob.centre[0] - x) <= tol) and (y is None or abs(blob.centre[1] - y) <= tol)


def _part_of(blob: Blob, look: Look, x: float | None, y: float | None) -> bool:
    """A blob smaller than the whole sprite (a ghost's eyes, a ghost half behind Ms. Pac-Man) is some
    part of its box: the claimed centre is within half the sprite's size (plus the tolerance) of it."""
    width, height = blob.x1 - blob.x0 + 1, blob.y1 - blob.y0 + 1
    if width >= look.max_size[0] - 1 and height >= look.max_size[1] - 1:
        return False  # drawn whole: its centre must match
    return blob.near(x, y, max(look.max_size) // 2 + look.tolerance)


def check_positions(game: str, step: Step, claims: Claims, report: Report) -> dict[str, Blob]:
    """Every claimed position is on screen and drawn there; nothing said absent is drawn. Returns the
    clean blob that confirmed each object."""
    confirmed = {}
    for name, (x, y) in claims.where.items():
        if not ((x is None or 0 <= x < 160) and (y is None or 0 <= y < 210)):
            report.fail(step, f"{name} claimed off screen at ({x}, {y})")
    frame = packed(step.frame)
    for name, look in LOOKS[game].items():
        clean, merged = find(frame, look)
        x0, x1, y0, y1 = look.area
        if name in claims.where:
            x, y = claims.where[name]
            if not ((x is None or x0 <= x <= x1) and (y is None or y0 <= y <= y1)):
                report.counts[f"{name} unchecked (outside its look's area)"] += 1
                continue
            tol = look.tolerance
            hits = [b for b in clean if _hit(b, x, y, tol) or (look.partial and _part_of(b, look, x, y))]
            at_edge = (x is not None and min(abs(x - x0), abs(x - x1)) <= 1) or (
                y is not None and min(abs(y - y0), abs(y - y1)) <= 1
            )
            if hits:
                confirmed[name] = hits[0]
                report.counts[f"{name} seen where claimed"] += 1
            elif any(b.near(x, y, tol) for b in merged):
                report.counts[f"{name} touching a same-coloured sprite"] += 1
            elif not clean and not merged and (look.flickers or name in claims.hidden_ok):
                report.counts[f"{name} not drawn this frame"] += 1
            elif not clean and not merged and at_edge:  # a one-pixel sliver at a wall, drawn or not
                report.counts[f"{name} at the edge, not drawn"] += 1
            else:
                drawn = [b.centre for b in clean + merged]
                report.fail(step, f"{name} claimed at ({x}, {y}) but drawn at {drawn or 'nowhere'}")
        elif name in claims.absent:
            ax0, ax1, ay0, ay1 = look.absent_area or look.area
            inside = [b for b in clean if ax0 <= b.centre[0] <= ax1 and ay0 <= b.centre[1] <= ay1]
            # In a side tunnel a sprite is drawn at the screen's edges, cut and wrapped around.
            inside = [b for b in inside if not (look.wraps and (b.x0 <= x0 + 8 or b.x1 >= x1 - 8))]
            if inside:
                report.fail(step, f"{name} said absent but drawn at {[b.centre for b in inside]}")
            else:
                report.counts[f"{name} absent and not drawn"] += 1
        elif name in claims.unknown:
            report.counts[f"{name} unknown"] += 1
        else:
            report.fail(step, f"the text neither places {name} nor says it is absent")
    return confirmed


def _direction_ok(words: str, dx: float, dy: float) -> bool:
    """The motion words agree with a displacement seen on screen (moves under 2 px are jitter)."""
    if abs(dx) >= 2 and ("right" if dx > 0 else "left") not in words:
        return False
    return not (abs(dy) >= 2 and ("down" if dy > 0 else "up") not in words)


def check_values(
    game: str, step: Step, claims: Claims, seen: dict[str, Blob], before: dict[str, Blob], report: Report
) -> None:
    """The figures besides positions: scores, lives, relations between objects, motions, counts."""
    v, where = claims.values, claims.where
    if game == "Pong":
        said, were = (v["points_for"], v["points_against"]), (step.points_for, step.points_against)
        if said != were:
            report.fail(step, f"score says {said[0]}-{said[1]}, points were {were[0]}-{were[1]}")
        report.counts["score"] += 1
    else:
        if v["score"] != step.episode_return:
            report.fail(step, f"score says {v['score']}, the rewards add up to {step.episode_return:g}")
        if v["lives"] != step.lives:
            report.fail(step, f"lives says {v['lives']}, ALE says {step.lives}")
        report.counts["score and lives"] += 1
    if "ball_minus_paddle" in v:
        axis = 1 if game == "Pong" else 0
        gap = where["ball"][axis] - where["player"][axis]  # type: ignore[operator]
        said = v["ball_minus_paddle"]
        band = 4 if game == "Pong" else 6
        ok = abs(gap) <= band if isinstance(said, str) else (said == gap and abs(gap) > band)
        if not ok:
            report.fail(step, f"ball-to-paddle words {said!r} but the positions differ by {gap}")
        report.counts["ball to paddle"] += 1
    if "ball_motion" in v and "ball" in seen and "ball" in before:
        dx = seen["ball"].centre[0] - before["ball"].centre[0]
        dy = seen["ball"].centre[1] - before["ball"].centre[1]
        if not _direction_ok(str(v["ball_motion"]), dx, dy):
            report.fail(step, f"ball said moving {v['ball_motion']!r}, seen moving ({dx:+g}, {dy:+g})")
        if (
            game == "Pong"
            and abs(dx) >= 2
            and v.get("toward") != ("toward you" if dx > 0 else "away from you")
        ):
            report.fail(step, f"ball said {v.get('toward')!r}, seen moving {dx:+g} in x")
        report.counts["ball motion"] += 1
    if game == "SpaceInvaders" and "invaders" in v:
        _check_invaders(step, claims, report)
    if game == "Seaquest":
        _check_seaquest_gauges(step, claims, report)


_INVADER = (134, 134, 29)


def _invaders(frame: np.ndarray) -> tuple[int, int | None]:
    """How many invaders are drawn, and the left edge of the leftmost."""
    mask = (frame[:185] == _INVADER).all(-1).astype(np.uint8)
    if not mask.any():
        return 0, None
    n, _ = cv2.connectedComponents(cv2.dilate(mask, np.ones((5, 3), np.uint8)))
    return n - 1, int(np.nonzero(mask.any(0))[0].min())


def _check_invaders(step: Step, claims: Claims, report: Report) -> None:
    drawn, left = _invaders(step.frame)
    said = claims.values["invaders"]
    # An invader hit is still drawn (exploding) for a few frames: up to two at once.
    if not drawn - 2 <= said <= drawn:  # type: ignore[operator]
        report.fail(step, f"{said} invaders said left, {drawn} drawn")
    report.counts["invader count"] += 1
    if "grid_left" in claims.values and left is not None:
        if abs(claims.values["grid_left"] - left) > 1:  # type: ignore[operator]
            report.fail(step, f"grid's left edge said x={claims.values['grid_left']}, drawn at x={left}")
        report.counts["invader grid"] += 1


def _check_seaquest_gauges(step: Step, claims: Claims, report: Report) -> None:
    oxygen, divers = claims.values["oxygen"], claims.values["divers"]
    bar = int((step.frame[172] == (214, 214, 214)).all(-1).sum())  # the oxygen gauge: 1 px per unit
    # At 16 and below the gauge blinks; at 64 it is drawn 63 long.
    if bar != min(oxygen, 63) and not (bar == 0 and oxygen <= 16):  # type: ignore[type-var]
        report.fail(step, f"oxygen said {oxygen}, the gauge is {bar} px")
    icons = int((step.frame[176:190] == (24, 26, 167)).all(-1).any(0).sum()) // 8  # 8 px a diver
    if icons != divers and not (icons == 0 and divers == 6):  # six divers blink
        report.fail(step, f"divers said {divers}, {icons} drawn")
    report.counts["oxygen and divers"] += 1


def check_step(game: str, step: Step, before: dict[str, Blob], report: Report) -> dict[str, Blob]:
    """All checks of one step; returns the blobs that confirmed its positions (for the next motion check)."""
    claims = PARSERS[game](step.text)
    seen = check_positions(game, step, claims, report)
    check_values(game, step, claims, seen, before, report)
    report.steps += 1
    return seen


def play_and_check(game: str, policy: str, seed: int, cap: int) -> Report:
    """One episode of ``game`` (ALE v5 settings, at most ``cap`` decisions) by the expert or a seeded
    random agent, every step's text checked against its frame."""
    env = make_env(game, max_steps=cap, max_episode_frames=108_000)
    agent = ExpertAgent(env) if policy == "expert" else RandomAgent(env.action_names, seed=seed)
    report = Report()
    obs, _ = env.reset(seed=seed)
    points_for = points_against = 0
    episode_return = 0.0
    before: dict[str, Blob] = {}
    lives = env.ale.lives()

    def observe(t: int) -> Step:
        return Step(
            t, obs["text"], env.last_rgb_frame, episode_return, env.ale.lives(), points_for, points_against
        )

    try:
        for t in range(cap + 1):
            before = check_step(game, observe(t), before, report)
            if t == cap:
                break
            decision = asyncio.run(agent.act(obs))
            obs, reward, terminated, truncated, info = env.step(decision.action)
            episode_return += reward
            points_for += reward > 0
            points_against += reward < 0
            report.rewards += reward != 0
            report.lives_lost += info["lives"] < lives
            lives = info["lives"]
            if terminated or truncated:
                check_step(game, observe(t + 1), before, report)
                break
    finally:
        env.close()
    return report
