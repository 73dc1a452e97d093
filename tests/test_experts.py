"""RAM experts beat the random agent; recorded demonstrations are valid trajectories (expert, human)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from atari_vlm.env import make_env
from atari_vlm.errors import ConfigError
from atari_vlm.experts import EXPERT_GAMES, ExpertAgent, measure
from atari_vlm.memory import TrajectoryStore, select_exemplars
from atari_vlm.record import keys_to_action, record

SEEDS = [0, 1]


@pytest.mark.parametrize(("game", "cap", "margin"), [("Pong", 500, 4.0), ("Breakout", 400, 5.0)])
def test_expert_beats_random(game: str, cap: int, margin: float) -> None:
    expert = measure(game, SEEDS, "expert", max_steps=cap)
    random = measure(game, SEEDS, "random", max_steps=cap)
    assert np.mean(expert) >= np.mean(random) + margin, (expert, random)


def test_expert_decisions_read_like_answers() -> None:
    import asyncio

    env = make_env("Breakout")
    agent = ExpertAgent(env)
    obs, _ = env.reset(seed=0)
    decision = asyncio.run(agent.act(obs))
    env.close()
    assert decision.action_name == "FIRE"  # no ball in play yet: serve
    assert decision.text == "ACTION: FIRE"


def test_track_policy_follows_the_state_text() -> None:
    """The "track" expert's action is the one the state text's wording implies: clonable from the prompt."""
    import asyncio

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
    env = make_env("Seaquest")
    with pytest.raises(ConfigError, match="no expert policy for Seaquest"):
        ExpertAgent(env)
    env.close()
    assert set(EXPERT_GAMES) >= {"Pong", "Breakout"}


def test_record_expert_writes_valid_trajectories(tmp_path) -> None:
    metas = record(
        "Pong", "expert", 2, tmp_path, seed=3, max_steps=40, env_options={"resize_shape": (42, 32)}
    )
    assert [m.source for m in metas] == ["expert", "expert"]
    assert len({m.episode_id for m in metas}) == 2
    store = TrajectoryStore(tmp_path)  # a fresh reader: everything is read back from disk and validated
    for meta in metas:
        trajectory = store.load("Pong", meta.episode_id)
        assert trajectory.frames.shape == (40, 42, 32, 3)
        assert all(s.action_name in meta.action_names for s in trajectory.steps)
        assert trajectory.steps[-1].state_text.startswith("Your paddle")
        saved = json.loads((tmp_path / "Pong" / meta.episode_id / "meta.json").read_text())
        assert saved["model"] == "agent:expert"
    assert select_exemplars(store, "Pong", image_budget=2) is not None  # the memory reads demos as its own


def test_record_rejects_bad_requests(tmp_path) -> None:
    with pytest.raises(ConfigError, match="agent must be one of"):
        record("Pong", "robot", 1, tmp_path)
    with pytest.raises(ConfigError, match="needs agent='human'"):
        record("Pong", "expert", 1, tmp_path, key_source=[{"up"}])
    with pytest.raises(ConfigError, match="no expert policy"):
        record("Seaquest", "expert", 1, tmp_path, max_steps=2)


@pytest.mark.parametrize(
    ("game", "keys", "action"),
    [
        ("Pong", {"up"}, "RIGHT"),  # Pong's RIGHT moves the paddle up
        ("Pong", {"down", "space"}, "LEFTFIRE"),
        ("Breakout", {"left"}, "LEFT"),
        ("Breakout", {"up", "space"}, "FIRE"),  # no UP in Breakout: the fire part remains
        ("Breakout", set(), "NOOP"),
        ("Seaquest", {"up", "right", "space"}, "UPRIGHTFIRE"),
    ],
)
def test_keys_map_to_the_games_actions(game: str, keys: set[str], action: str) -> None:
    env = make_env(game)
    names = env.action_names
    env.close()
    assert keys_to_action(keys, game, names) == action


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key name"):
        keys_to_action({"enter"}, "Pong", ["NOOP"])


@pytest.mark.skipif(
    importlib.util.find_spec("pygame") is None,
    reason="pygame is not installed (the `human` extra: pip install 'atari-vlm[human]')",
)
def test_human_recording_with_scripted_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    script = [{"up"}, {"down"}, {"space"}, set()]
    metas = record("Pong", "human", 1, tmp_path, seed=0, max_steps=8, key_source=script * 2)
    assert len(metas) == 1 and metas[0].source == "human"
    trajectory = TrajectoryStore(tmp_path).load("Pong", metas[0].episode_id)
    assert [s.action_name for s in trajectory.steps] == ["RIGHT", "LEFT", "FIRE", "NOOP"] * 2
