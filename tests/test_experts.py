"""RAM experts: their maths, their models of the games, the RAM tables they read, and their play on
short seeded segments (whole-game scores are in BENCHMARKS.md, "Experts")."""

from __future__ import annotations

import asyncio

import ale_py
import gymnasium as gym
import numpy as np
import pytest

from atari_vlm.env import make_env
from atari_vlm.errors import ConfigError
from atari_vlm.experts import (
    _BREAKOUT_PADDLE,
    _PONG_PADDLE,
    EXPERT_GAMES,
    ExpertAgent,
    PaddleModel,
    PaddleTracker,
    _maze,
    expert_policies,
    intercept,
    measure,
    ms_pacman_dots,
    reflect,
)
from atari_vlm.state_text import RICH_GAMES, fields

gym.register_envs(ale_py)


def test_every_rich_game_has_an_expert() -> None:
    assert set(EXPERT_GAMES) == set(RICH_GAMES)
    assert expert_policies("Pong") == ("intercept", "track")
    assert expert_policies("Asterix") == ()


# ---- the maths -------------------------------------------------------------------------------


def test_reflect_folds_a_path_between_two_walls() -> None:
    assert reflect(50, 0, 100) == 50
    assert reflect(150, 0, 100) == 50  # one bounce off the far wall
    assert reflect(250, 0, 100) == 50  # two bounces
    assert reflect(-30, 0, 100) == 30  # off the near wall
    assert reflect(120, 20, 100) == 80


def test_intercept_says_where_and_when_a_ball_crosses_a_line() -> None:
    # A ball at y=100, x=50 moving 4 down and 8 right a step reaches x=190 in 17.5 steps, at y=170.
    assert intercept(100, 50, (4, 8), 190, (48, 203)) == (170, 17.5)
    # Twice as far down it bounces off the bottom wall at 203: 100 + 140 = 240 -> 203 - 37 = 166.
    assert intercept(100, 50, (8, 8), 190, (48, 203)) == (166, 17.5)
    assert intercept(100, 50, (4, -8), 190, (48, 203)) is None  # moving away
    assert intercept(100, 50, (4, 0), 190, (48, 203)) is None  # never gets there


@pytest.mark.parametrize(
    ("game", "model", "field", "keys"),
    [
        ("Pong", _PONG_PADDLE, "player_y", ("RIGHT", "LEFT")),
        ("Breakout", _BREAKOUT_PADDLE, "player_x", ("LEFT", "RIGHT")),
    ],
)
def test_paddle_model_predicts_the_real_paddle(
    game: str, model: PaddleModel, field: str, keys: tuple[str, str]
) -> None:
    """The fitted pot model, fed the keys actually pressed, predicts the paddle a step ahead to within
    a few RAM units (without it the paddle overshoots by tens of units)."""
    env = gym.make(f"ALE/{game}-v5", repeat_action_probability=0.0)
    env.reset(seed=0)
    names = env.unwrapped.get_action_meanings()
    ale = env.unwrapped.ale
    rng = np.random.default_rng(0)
    tracker = PaddleTracker(model)
    errors, still_errors = [], []
    key = 0
    for t in range(400):
        paddle = fields(game, ale.getRAM())[field]
        tracker.observe(paddle)
        if t % 3 == 0:
            key = int(rng.integers(-1, 2))
        predicted = model.simulate(tracker.pot, tracker.paddle, key, 1)
        tracker.pot = model.clamp(tracker.pot + model.rate * 4 * key)  # 4 frames a step
        name = (
            {-1: keys[0], 0: "NOOP", 1: keys[1]}[key]
            if game == "Breakout"
            else {-1: "RIGHT", 0: "NOOP", 1: "LEFT"}[key]
        )
        env.step(names.index(name))
        actual = fields(game, ale.getRAM())[field]
        if model.limits[0] + 12 < actual < model.limits[1] - 12:  # away from the ends, where it stops dead
            errors.append(abs(predicted - actual))
            still_errors.append(abs(paddle - actual))
    env.close()
    assert len(errors) > 100
    assert np.mean(errors) < 3.5 and np.percentile(errors, 95) < 12, (
        np.mean(errors),
        np.percentile(errors, 95),
    )
    assert np.mean(still_errors) > 3 * np.mean(errors)  # the model knows much more than "it stays put"


# ---- the tables the experts read --------------------------------------------------------------


def test_ms_pacman_maze_and_dots_tables_match_the_game() -> None:
    """All 150 dots of the first maze are bits of the dot table at the start, each on the maze graph;
    every position Ms. Pac-Man reaches in play lies on the graph."""
    maze = _maze()
    env = make_env("MsPacman", repeat_action_probability=0.0)
    obs, _ = env.reset(seed=0)
    dots = ms_pacman_dots(env.ale.getRAM())
    assert len(dots) == 150
    assert all(maze.snap(x, y)[1] == 0 for x, y in dots)
    agent = ExpertAgent(env)
    off_graph = []
    for _ in range(400):
        obs, *_ = env.step(asyncio.run(agent.act(obs)).action)
        f = fields("MsPacman", env.ale.getRAM())
        off_graph.append(maze.snap(f["player_x"], f["player_y"])[1])
    env.close()
    assert max(off_graph) <= 2  # nodes are 4 px apart along the corridors


def test_qbert_cube_table_follows_the_hops() -> None:
    """cube_{r(r+1)/2+k} is the cube of row r, position k: RIGHT from the top lands on cube 2 (row 1,
    position 1), then DOWN on cube 4 (row 2, position 1), and only those change colour."""
    env = gym.make("ALE/Qbert-v5", repeat_action_probability=0.0)
    env.reset(seed=0)
    names = env.unwrapped.get_action_meanings()
    ale = env.unwrapped.ale

    def settle() -> list[int]:
        for _ in range(60):
            env.step(0)
        f = fields("Qbert", ale.getRAM())
        return [f[f"cube_{i}"] for i in range(21)]

    start = settle()
    changed = []
    for hop in ("RIGHT", "DOWN"):
        env.step(names.index(hop))
        now = settle()
        changed.append([i for i in range(21) if now[i] != start[i]])
    env.close()
    assert len(set(start)) == 1
    assert changed == [[2], [2, 4]]


def test_seaquest_lane_table_places_the_enemies() -> None:
    """Each enemy the lane table places is drawn in its lane's band, within 4 px of its x."""
    from atari_vlm.experts import _sq_enemies

    bands = [(136, 152), (112, 128), (88, 104), (64, 80)]  # lane 0 (the deepest) .. 3
    colours = [(92, 186, 92), (170, 170, 170), (160, 171, 79)]
    env = gym.make("ALE/Seaquest-v5", repeat_action_probability=0.0)
    obs, _ = env.reset(seed=0)
    names = env.unwrapped.get_action_meanings()
    rng = np.random.default_rng(0)
    placed = found = 0
    for _ in range(600):
        obs, _, terminated, _, _ = env.step(
            names.index(("FIRE", "DOWNFIRE", "LEFTFIRE", "RIGHTFIRE")[rng.integers(4)])
        )
        if terminated:
            break
        f = fields("Seaquest", env.unwrapped.ale.getRAM())
        for lane, (y0, y1) in enumerate(bands):
            band = obs[y0:y1]
            mask = np.zeros(band.shape[:2], bool)
            for colour in colours:
                mask |= (band == colour).all(-1)
            columns = np.nonzero(mask.any(0))[0]
            for x in _sq_enemies(f, lane):
                if 4 <= x <= 150:
                    placed += 1
                    found += bool(len(columns)) and np.abs(columns - x).min() <= 4
    env.close()
    assert placed > 200 and found / placed > 0.95, (found, placed)


def test_space_invaders_rows_table_counts_the_invaders() -> None:
    env = gym.make("ALE/SpaceInvaders-v5", repeat_action_probability=0.0)
    env.reset(seed=0)
    counts = set()
    for _ in range(500):
        _, _, terminated, _, _ = env.step(1)  # FIRE
        f = fields("SpaceInvaders", env.unwrapped.ale.getRAM())
        bits = sum(bin(f[f"invaders_row_{i}"]).count("1") for i in range(6))
        assert bits == f["invaders_left_count"]
        counts.add(bits)
        if terminated:
            break
    env.close()
    assert len(counts) >= 5  # invaders were shot


# ---- play on short seeded segments ------------------------------------------------------------


def test_pong_expert_returns_the_ball_and_wins_points() -> None:
    """1,200 decisions (ALE v5, seed 2): the expert returns the ball time and again, loses no point
    and wins some (the random agent loses about 14 points in that time)."""
    env = make_env("Pong", max_episode_frames=108_000)
    obs, _ = env.reset(seed=2)
    agent = ExpertAgent(env)
    won = lost = returns = 0
    before = fields("Pong", env.ale.getRAM())
    for _ in range(1200):
        obs, reward, *_ = env.step(asyncio.run(agent.act(obs)).action)
        won, lost = won + (reward > 0), lost + (reward < 0)
        now = fields("Pong", env.ale.getRAM())
        returns += bool(
            now["ball_y"] and before["ball_y"] and before["ball_x"] > 170 and now["ball_x"] < before["ball_x"]
        )
        before = now
    env.close()
    assert lost == 0 and won >= 2 and returns >= 50, (won, lost, returns)


# (game, decisions, env seed, margin): over the same seed and horizon, the expert's return is at least
# twice the random agent's plus the margin (Pong: no point lost in 400 steps, where random loses ~10).
SHORT = [
    ("Pong", 400, 0, 8),
    ("Breakout", 300, 0, 5),
    ("SpaceInvaders", 1000, 0, 50),  # slow to start (it fires only when lined up): a longer look
    ("MsPacman", 250, 0, 50),
    ("Qbert", 250, 0, 100),
    ("Seaquest", 300, 0, 50),
]


@pytest.mark.parametrize(("game", "cap", "seed", "margin"), SHORT, ids=[s[0] for s in SHORT])
def test_expert_beats_random_on_a_short_horizon(game: str, cap: int, seed: int, margin: float) -> None:
    expert = measure(game, [seed], "expert", max_steps=cap)[0]
    random = measure(game, [seed], "random", max_steps=cap)[0]
    assert expert >= (random if random < 0 else 2 * random) + margin, (expert, random)


def test_expert_decisions_read_like_answers() -> None:
    env = make_env("Breakout")
    agent = ExpertAgent(env)
    obs, _ = env.reset(seed=0)
    decision = asyncio.run(agent.act(obs))
    env.close()
    assert decision.action_name == "FIRE"  # no ball in play yet: serve
    assert decision.text == "ACTION: FIRE"


def test_track_policy_follows_the_state_text() -> None:
    """The "track" expert's action is the one the state text's wording implies: clonable from the prompt."""
    env = make_env("Pong")
    agent = ExpertAgent(env, "track")
    obs, _ = env.reset(seed=0)
    for _ in range(120):
        decision = asyncio.run(agent.act(obs))
        text = obs["text"]
        implied = "LEFT" if "below your" in text else "RIGHT" if "above your" in text else "NOOP"
        assert decision.action_name == implied, text
        obs, *_ = env.step(decision.action)
    with pytest.raises(ConfigError, match="unknown expert policy"):
        ExpertAgent(env, "psychic")
    env.close()


def test_no_expert_for_other_games() -> None:
    env = make_env("Asterix")
    with pytest.raises(ConfigError, match="no expert policy for Asterix"):
        ExpertAgent(env)
    env.close()


def test_measure_entry_point_prints_the_table(capsys) -> None:
    from atari_vlm.experts import main

    main(["--games", "breakout", "--seeds", "1", "--max-steps", "60", "--all-policies"])
    lines = capsys.readouterr().out.splitlines()
    expert = measure("Breakout", [0], "expert", max_steps=60)
    random = measure("Breakout", [0], "random", max_steps=60)
    assert lines[0].startswith("| game | policy | mean | returns (seeds 0-0)")
    assert lines[2] == (
        f"| Breakout | intercept | {np.mean(expert):.1f} | {', '.join(f'{v:g}' for v in expert)} "
        f"| {np.mean(random):.1f} | {', '.join(f'{v:g}' for v in random)} |"
    )
    assert lines[3].startswith("| Breakout | track |") and len(lines) == 4
    with pytest.raises(SystemExit, match="no expert for Asterix"):
        main(["--games", "Pong,Asterix"])
