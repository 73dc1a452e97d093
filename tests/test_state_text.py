"""RAM field tables checked against the real emulator: rewards, lives, controls and pixels."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import ale_py
import gymnasium as gym
import numpy as np
import pytest

from atari_vlm.state_text import RICH_GAMES, GameState, describe, fields, positions

gym.register_envs(ale_py)

BCD_SCORE_GAMES = ("Breakout", "SpaceInvaders", "MsPacman", "Qbert", "Seaquest")

# A policy maps (step, current RAM, rng) to an action name; names keep tests readable.
FRAME_STRIDE = 3
STEPS = 1500

Policy = Callable[[int, np.ndarray, np.random.Generator], str]


@dataclass(frozen=True)
class Rollout:
    rams: np.ndarray  # (T+1, 128) uint8, index 0 is after reset
    frames: np.ndarray  # every FRAME_STRIDE-th frame (memory), frames[i] goes with rams[i * FRAME_STRIDE]
    rewards: np.ndarray  # (T+1,), rewards[0] == 0
    lives: np.ndarray  # (T+1,) ale.lives()
    terminated: bool


def _random(meanings: tuple[str, ...]) -> Policy:
    return lambda t, ram, rng: meanings[int(rng.integers(len(meanings)))]


def _breakout_tracker(t: int, ram: np.ndarray, rng: np.random.Generator) -> str:
    """Follows the ball (AtariARI addresses) so the rollout scores points and loses lives."""
    if rng.random() < 0.2:
        return ("NOOP", "FIRE", "RIGHT", "LEFT")[int(rng.integers(4))]
    if ram[101] == 0:
        return "FIRE"
    return "RIGHT" if int(ram[99]) > int(ram[72]) + 10 else "LEFT"


POLICIES: dict[str, Policy] = {
    "random": lambda t, ram, rng: "",  # resolved to the game's minimal action set in _rollout
    "breakout_tracker": _breakout_tracker,
    "seaquest_fire": _random(
        ("FIRE", "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE")
    ),
}


@functools.cache
def _rollout(game: str, policy: str = "random", steps: int = STEPS, seed: int = 0) -> Rollout:
    """Deterministic rollout (no sticky actions) recording RAM, frames, rewards and lives."""
    env = gym.make(f"ALE/{game}-v5", repeat_action_probability=0.0)
    obs, _ = env.reset(seed=seed)
    ale = env.unwrapped.ale
    meanings = tuple(env.unwrapped.get_action_meanings())
    act = _random(meanings) if policy == "random" else POLICIES[policy]
    rng = np.random.default_rng(seed)
    rams, frames, rewards, lives = [ale.getRAM().copy()], [obs], [0.0], [ale.lives()]
    terminated = False
    for t in range(steps):
        obs, reward, terminated, truncated, _ = env.step(meanings.index(act(t, rams[-1], rng)))
        rams.append(ale.getRAM().copy())
        if (t + 1) % FRAME_STRIDE == 0:
            frames.append(obs)
        rewards.append(float(reward))
        lives.append(ale.lives())
        if terminated or truncated:
            break
    env.close()
    return Rollout(np.array(rams), np.array(frames), np.array(rewards), np.array(lives), terminated)


def _press(game: str, actions: list[tuple[str, int]], seed: int = 0) -> list[np.ndarray]:
    """RAM after each (action, repeat) block, starting from reset."""
    env = gym.make(f"ALE/{game}-v5", repeat_action_probability=0.0)
    env.reset(seed=seed)
    meanings = env.unwrapped.get_action_meanings()
    out = [env.unwrapped.ale.getRAM().copy()]
    for name, repeat in actions:
        for _ in range(repeat):
            env.step(meanings.index(name))
        out.append(env.unwrapped.ale.getRAM().copy())
    env.close()
    return out


def test_rich_games_and_unknown_games() -> None:
    assert {"Pong", "Breakout", "SpaceInvaders", "MsPacman", "Qbert", "Seaquest"} == RICH_GAMES
    ram = np.zeros(128, np.uint8)
    assert fields("Asterix", ram) == {}
    assert positions("Asterix", ram) == {}


# ---- scores ----------------------------------------------------------------------------------


def test_pong_scores_increment_exactly_with_rewards() -> None:
    ro = _rollout("Pong")
    player = np.array([fields("Pong", r)["player_score"] for r in ro.rams])
    enemy = np.array([fields("Pong", r)["enemy_score"] for r in ro.rams])
    assert player[0] == enemy[0] == 0
    assert (np.diff(player) == (ro.rewards[1:] == 1)).all()
    assert (np.diff(enemy) == (ro.rewards[1:] == -1)).all()
    assert enemy[-1] >= 5  # the segment really contains points


@pytest.mark.parametrize(
    ("game", "policy"),
    [
        ("Breakout", "breakout_tracker"),
        ("SpaceInvaders", "random"),
        ("MsPacman", "random"),
        ("Qbert", "random"),
        ("Seaquest", "seaquest_fire"),
    ],
)
def test_bcd_score_equals_cumulative_reward(game: str, policy: str) -> None:
    ro = _rollout(game, policy)
    returns = np.cumsum(ro.rewards)
    scores = np.array([fields(game, r)["score"] for r in ro.rams])
    assert returns[-1] >= 20, "segment must score for the check to mean anything"
    np.testing.assert_array_equal(scores, returns)


def test_bcd_decoding_of_high_digits() -> None:
    """Digits above 99 come from the more significant bytes (no rollout reaches 10,000)."""
    ram = np.zeros(128, np.uint8)
    ram[[56, 57, 58]] = [0x12, 0x34, 0x56]
    assert fields("Seaquest", ram)["score"] == 123456
    ram[[76, 77]] = [0x03, 0x21]
    assert fields("Breakout", ram)["score"] == 321


# ---- lives -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("game", "policy"),
    [
        ("Breakout", "breakout_tracker"),
        ("SpaceInvaders", "random"),
        ("MsPacman", "random"),
        ("Qbert", "random"),
        ("Seaquest", "seaquest_fire"),
    ],
)
def test_lives_field_equals_ale_lives(game: str, policy: str) -> None:
    ro = _rollout(game, policy)
    assert ro.terminated and len(set(ro.lives.tolist())) >= 3, "episode must lose lives"
    decoded = np.array([fields(game, r)["lives"] for r in ro.rams])
    # Step 0: Q*bert's RAM is still blank before the game starts. Last step: ALE reports 0
    # at game over while some games leave their counter at 1.
    np.testing.assert_array_equal(decoded[1:-1], ro.lives[1:-1])


# ---- controls --------------------------------------------------------------------------------


def _moves(
    game: str, name: str, plus: str, minus: str, warmup: list[tuple[str, int]], repeat: int = 8
) -> None:
    """Pressing `plus` raises field `name`, pressing `minus` lowers it."""
    rams = _press(game, [*warmup, (plus, repeat), (minus, repeat)])
    start, after_plus, after_minus = (fields(game, r)[name] for r in rams[-3:])
    assert after_plus > start, f"{game}: {plus} should raise {name}"
    assert after_minus < after_plus, f"{game}: {minus} should lower {name}"


def test_pong_paddle_follows_controls() -> None:
    # In Pong's minimal action set RIGHT moves the paddle up (smaller y), LEFT down.
    _moves("Pong", "player_y", plus="LEFT", minus="RIGHT", warmup=[("NOOP", 60)])


def test_breakout_paddle_follows_controls() -> None:
    _moves("Breakout", "player_x", plus="RIGHT", minus="LEFT", warmup=[("NOOP", 5)])


def test_space_invaders_cannon_follows_controls() -> None:
    _moves("SpaceInvaders", "player_x", plus="RIGHT", minus="LEFT", warmup=[("NOOP", 40)])


def test_ms_pacman_follows_controls() -> None:
    _moves("MsPacman", "player_x", plus="RIGHT", minus="LEFT", warmup=[("NOOP", 70)])


def test_seaquest_sub_follows_controls() -> None:
    _moves("Seaquest", "player_x", plus="RIGHT", minus="LEFT", warmup=[("NOOP", 40)])
    _moves("Seaquest", "player_y", plus="DOWN", minus="UP", warmup=[("NOOP", 40)])


def test_qbert_hops_down_the_pyramid() -> None:
    # RIGHT hops down-right, DOWN hops down-left: both go lower (y up), x goes opposite ways.
    for action, sign in (("RIGHT", 1), ("DOWN", -1)):
        before, after = (fields("Qbert", r) for r in _press("Qbert", [("NOOP", 40), (action, 6)])[-2:])
        assert after["player_y"] > before["player_y"]
        assert np.sign(after["player_x"] - before["player_x"]) == sign
        assert np.sign(after["player_column"] - before["player_column"]) == sign


# ---- screen coordinates vs pixels ------------------------------------------------------------

# (game, x field or None, y field or None, sprite RGB, rows, cols): the search window keeps
# other objects of the same colour (walls, score digits) out.
SPRITES = [
    ("Pong", None, "player_y", (92, 186, 92), (34, 194), (140, 144)),
    ("Pong", None, "enemy_y", (213, 130, 74), (34, 194), (16, 20)),
    ("Pong", "ball_x", "ball_y", (236, 236, 236), (34, 194), (0, 160)),
    ("Breakout", "player_x", None, (200, 72, 72), (189, 193), (8, 152)),
    ("Breakout", "ball_x", "ball_y", (200, 72, 72), (93, 189), (8, 152)),
    ("SpaceInvaders", "player_x", None, (50, 132, 50), (185, 195), (0, 160)),
    ("MsPacman", "player_x", "player_y", (210, 164, 74), (0, 172), (0, 160)),
    ("MsPacman", "enemy_blinky_x", "enemy_blinky_y", (200, 72, 72), (0, 172), (0, 160)),
    ("MsPacman", "enemy_inky_x", "enemy_inky_y", (84, 184, 153), (0, 172), (0, 160)),
    ("MsPacman", "enemy_sue_x", "enemy_sue_y", (180, 122, 48), (0, 172), (0, 160)),
    ("Qbert", "player_x", None, (181, 83, 40), (0, 210), (0, 160)),
    ("Seaquest", "player_x", "player_y", (187, 187, 53), (40, 170), (0, 160)),
]


@pytest.mark.parametrize(
    ("game", "fx", "fy", "rgb", "rows", "cols"), SPRITES, ids=[f"{s[0]}-{s[1] or s[2]}" for s in SPRITES]
)
def test_screen_positions_match_pixels(
    game: str,
    fx: str | None,
    fy: str | None,
    rgb: tuple[int, int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> None:
    policy = {"Breakout": "breakout_tracker", "Seaquest": "seaquest_fire"}.get(game, "random")
    ro = _rollout(game, policy)
    checked = close = 0
    for ram, frame in zip(ro.rams[::FRAME_STRIDE], ro.frames, strict=True):
        mask = (frame[rows[0] : rows[1], cols[0] : cols[1]] == rgb).all(-1)
        ys, xs = np.nonzero(mask)
        # Skip absent sprites, sprites clipped by the window, and frames where two objects share the colour.
        if len(xs) == 0 or xs.max() - xs.min() > 16 or ys.max() - ys.min() > 20:
            continue
        if fy is not None and (ys.min() == 0 or ys.max() == rows[1] - rows[0] - 1):
            continue
        pos = positions(game, ram)
        ok = True
        if fx is not None:
            ok &= abs((xs.min() + xs.max()) / 2 + cols[0] - pos[fx]) <= 3
        if fy is not None:
            ok &= abs((ys.min() + ys.max()) / 2 + rows[0] - pos[fy]) <= 3
        checked += 1
        close += ok
    assert checked >= 20, f"too few frames showed the sprite ({checked})"
    print(f"{game} {fx} {fy}: {close}/{checked} frames within 3 px")
    assert close / checked >= 0.9, f"{close}/{checked} frames within 3 px"


# ---- text ------------------------------------------------------------------------------------


def _state(ro: Rollout, t: int) -> GameState:
    return GameState(
        ram=ro.rams[t],
        prev_ram=ro.rams[t - 1] if t else None,
        episode_return=float(ro.rewards[: t + 1].sum()),
        lives=int(ro.lives[t]),
        step=t,
    )


@pytest.mark.parametrize("game", sorted(RICH_GAMES))
def test_describe_is_short_ascii_and_deterministic(game: str) -> None:
    ro = _rollout(game)
    for t in range(len(ro.rams)):
        text = describe(game, _state(ro, t))
        assert text.isascii() and 0 < len(text) < 400 and 1 <= len(text.splitlines()) <= 4, text
    last = _state(ro, len(ro.rams) - 1)
    assert describe(game, last) == describe(game, last)


def test_pong_text_reports_ball_motion_and_score() -> None:
    ro = _rollout("Pong")
    seen = set()
    for t in range(1, len(ro.rams)):
        now, before = positions("Pong", ro.rams[t]), positions("Pong", ro.rams[t - 1])
        if ro.rams[t][54] == 0 or ro.rams[t - 1][54] == 0 or abs(now["ball_x"] - before["ball_x"]) > 40:
            continue
        text = describe("Pong", _state(ro, t))
        dx = now["ball_x"] - before["ball_x"]
        if dx:
            expected = "toward you" if dx > 0 else "away from you"
            assert expected in text, text
            seen.add(expected)
        f = fields("Pong", ro.rams[t])
        assert f"Score: you {f['player_score']}, opponent {f['enemy_score']}." in text
    assert seen == {"toward you", "away from you"}


def test_generic_description_has_score_and_lives_only() -> None:
    ro = _rollout("Asterix")
    assert ro.rewards.sum() > 0
    for t in (0, 150, len(ro.rams) - 1):
        state = _state(ro, t)
        assert describe("Asterix", state) == f"Score so far: {state.episode_return:g}. Lives: {state.lives}."
