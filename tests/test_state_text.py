"""RAM field tables checked against the real emulator (rewards, lives, controls), and the state text
checked against the screen over whole episodes (tests/screen_truth.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import ale_py
import gymnasium as gym
import numpy as np
import pytest

from atari_vlm.env import make_env
from atari_vlm.state_text import RICH_GAMES, SPECS, GameState, Sprite, describe, fields, positions
from screen_truth import LOOKS, PARSERS, play_and_check

gym.register_envs(ale_py)

BCD_SCORE_GAMES = ("Breakout", "SpaceInvaders", "MsPacman", "Qbert", "Seaquest")

# A policy maps (step, current RAM, rng) to an action name; names keep tests readable.
STEPS = 1500

Policy = Callable[[int, np.ndarray, np.random.Generator], str]


@dataclass(frozen=True)
class Rollout:
    rams: np.ndarray  # (T+1, 128) uint8, index 0 is after reset
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
    """Deterministic rollout (no sticky actions) recording RAM, rewards and lives."""
    env = gym.make(f"ALE/{game}-v5", repeat_action_probability=0.0)
    env.reset(seed=seed)
    ale = env.unwrapped.ale
    meanings = tuple(env.unwrapped.get_action_meanings())
    act = _random(meanings) if policy == "random" else POLICIES[policy]
    rng = np.random.default_rng(seed)
    rams, rewards, lives = [ale.getRAM().copy()], [0.0], [ale.lives()]
    terminated = False
    for t in range(steps):
        _, reward, terminated, truncated, _ = env.step(meanings.index(act(t, rams[-1], rng)))
        rams.append(ale.getRAM().copy())
        rewards.append(float(reward))
        lives.append(ale.lives())
        if terminated or truncated:
            break
    env.close()
    return Rollout(np.array(rams), np.array(rewards), np.array(lives), terminated)


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


def test_generic_description_has_score_and_lives_only() -> None:
    ro = _rollout("Asterix")
    assert ro.rewards.sum() > 0
    for t in (0, 150, len(ro.rams) - 1):
        state = _state(ro, t)
        assert describe("Asterix", state) == f"Score so far: {state.episode_return:g}. Lives: {state.lives}."


# ---- the text against the screen -------------------------------------------------------------

# (game, policy, env seed, decision cap, least counts that make the run mean something). Random
# episodes end quickly and cover the start of a game, serves and every life lost; the experts' cover
# long rallies, level changes, power pellets, surfacing. Caps keep the whole table near 10 s.
TRUTH_RUNS = [
    (
        "Pong",
        "random",
        0,
        1000,
        {
            "ball absent and not drawn": 100,
            "ball seen where claimed": 300,
            "enemy absent and not drawn": 20,
            "ball motion": 300,
        },
    ),
    ("Pong", "expert", 1, 700, {"ball seen where claimed": 500, "ball to paddle": 500}),
    ("Breakout", "random", 0, 400, {"ball absent and not drawn": 30, "ball seen where claimed": 100}),
    ("Breakout", "expert", 2, 800, {"ball seen where claimed": 400, "ball motion": 300}),
    ("SpaceInvaders", "random", 0, 600, {"player not drawn this frame": 10, "invader count": 200}),
    # Seed 1: the invaders land at step 1166, a game over with a cannon still standing.
    ("SpaceInvaders", "expert", 1, 1200, {"player seen where claimed": 1000, "player unknown": 1}),
    ("MsPacman", "random", 1, 600, {"enemy_inky seen where claimed": 50, "player seen where claimed": 300}),
    # Seed 4: Ms. Pac-Man and two ghosts go through the side tunnels.
    (
        "MsPacman",
        "expert",
        4,
        700,
        {
            "enemy_sue seen where claimed": 100,
            "player absent and not drawn": 1,
            "enemy_sue absent and not drawn": 1,
        },
    ),
    ("Qbert", "random", 1, 400, {"player absent and not drawn": 20, "player seen where claimed": 100}),
    ("Qbert", "expert", 0, 700, {"player seen where claimed": 500}),
    ("Seaquest", "random", 0, 600, {"player absent and not drawn": 20, "oxygen and divers": 300}),
    ("Seaquest", "expert", 2, 800, {"player seen where claimed": 400}),
]


SLOW_TRUTH_RUNS = {("SpaceInvaders", "expert"), ("MsPacman", "expert")}  # over 5 s on a loaded CI machine


@pytest.mark.parametrize(
    ("game", "policy", "seed", "cap", "least"),
    [
        pytest.param(
            *run, id=f"{run[0]}-{run[1]}", marks=[pytest.mark.slow] if run[:2] in SLOW_TRUTH_RUNS else []
        )
        for run in TRUTH_RUNS
    ],
)
def test_text_agrees_with_the_screen_over_whole_episodes(
    game: str, policy: str, seed: int, cap: int, least: dict[str, int]
) -> None:
    """Every position the text gives is on screen and where the sprite is drawn (within 3 px, 5 for
    Q*bert's hops); nothing it calls absent is drawn; scores, lives, motions, relations and counts
    agree with the rewards and the pixels. Checked at every step of the episode."""
    report = play_and_check(game, policy, seed, cap)
    assert not report.failures, "\n".join(report.failures)
    short = {name: (report.counts[name], n) for name, n in least.items() if report.counts[name] < n}
    assert not short, f"the episode did not exercise enough of the text: {short}"
    if policy == "random" and game != "Pong":
        assert report.lives_lost >= 1, "the episode must lose a life"
    if policy == "random" or game != "Pong":  # (an expert's Pong rally can outlast the cap)
        assert report.rewards >= 1, "the episode must score"


def test_pong_has_no_ball_before_the_serve_and_never_places_a_paddle_off_screen() -> None:
    """The reported bug: right after reset() the text said 'The ball is at x=-48, y=48' and, later,
    'opponent at y=-8'. Before the serve there is no ball; a paddle under the score bar is out of
    sight; a paddle partly behind a wall is placed at the middle of its visible part."""
    env = make_env("Pong", max_episode_frames=108_000, repeat_action_probability=0.0)
    obs, _ = env.reset(seed=0)
    texts = [obs["text"]]
    for _ in range(12):  # the serve comes after about 15 steps
        obs, *_ = env.step(env.action_names.index("NOOP"))
        texts.append(obs["text"])
    env.close()
    assert all("No ball in play (waiting for the serve)." in text for text in texts), texts[0]
    assert all(PARSERS["Pong"](text).where["player"][1] >= 34 for text in texts)
    assert any("the opponent's (left) is out of sight" in text for text in texts)
    ram = np.zeros(128, np.uint8)
    ram[SPECS["Pong"].fields["enemy_y"]] = 0  # the opponent's paddle up under the score bar
    ram[SPECS["Pong"].fields["player_y"]] = 203  # ours mostly behind the bottom wall
    assert "enemy_y" not in positions("Pong", ram)
    assert positions("Pong", ram)["player_y"] == 191  # rows 189-204, of which 189-193 show


def test_sprite_visible_centre_clips_to_the_area() -> None:
    sprite = Sprite("x", "y", dx=-2, dy=0, width=8, height=10, area=(10, 100, 20, 60))
    assert sprite.visible_centre({"x": 50, "y": 30}) == (52, 35)  # wholly inside
    assert sprite.visible_centre({"x": 8, "y": 30}) == (12, 35)  # columns 6-13 of which 10-13 show
    assert sprite.visible_centre({"x": 50, "y": 58}) == (52, 59)  # rows 58-67 of which 58-60 show
    assert sprite.visible_centre({"x": 50, "y": 61}) is None  # below the area
    assert sprite.visible_centre({"x": 120, "y": 30}) is None
    ram = np.zeros(128, np.uint8)
    ram[[SPECS["Qbert"].fields["player_x"], SPECS["Qbert"].fields["player_drawn_y"]]] = 77, 100
    assert positions("Qbert", ram) == {"player_x": 77}  # no height: RAM does not say where he is drawn


def test_every_looked_for_object_is_a_sprite_of_the_table() -> None:
    """The pixel checks cover every object the text places (and nothing the tables lack)."""
    for game in RICH_GAMES:
        assert set(LOOKS[game]) == set(SPECS[game].sprites), game
