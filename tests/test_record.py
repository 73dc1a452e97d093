"""Recording demonstrations: expert and scripted-human episodes become valid trajectories; bad
requests, human play without a display among them, are refused before anything is written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from atari_vlm.env import make_env
from atari_vlm.errors import ConfigError
from atari_vlm.memory import TrajectoryStore, select_exemplars
from atari_vlm.record import keys_to_action, record


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


def test_record_rejects_bad_requests_before_writing(tmp_path) -> None:
    with pytest.raises(ConfigError, match="agent must be one of"):
        record("Pong", "robot", 1, tmp_path)
    with pytest.raises(ConfigError, match="needs agent='human'"):
        record("Pong", "expert", 1, tmp_path, key_source=[{"up"}])
    with pytest.raises(ConfigError, match="no expert policy for Asterix"):
        record("Asterix", "expert", 1, tmp_path / "a", max_steps=2)
    with pytest.raises(ConfigError, match="unknown expert policy"):
        record("Pong", "expert", 1, tmp_path / "b", max_steps=2, expert_policy="psychic")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


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


needs_pygame = pytest.mark.skipif(
    importlib.util.find_spec("pygame") is None,
    reason="pygame is not installed (the `human` extra: pip install 'atari-vlm[human]')",
)


@needs_pygame
def test_human_recording_with_scripted_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    script = [{"up"}, {"down"}, {"space"}, set()]
    metas = record("Pong", "human", 1, tmp_path, seed=0, max_steps=8, key_source=script * 2)
    assert len(metas) == 1 and metas[0].source == "human"
    trajectory = TrajectoryStore(tmp_path).load("Pong", metas[0].episode_id)
    assert [s.action_name for s in trajectory.steps] == ["RIGHT", "LEFT", "FIRE", "NOOP"] * 2


@needs_pygame
@pytest.mark.parametrize("driver", ["dummy", "offscreen"])
def test_human_recording_without_a_display_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, driver: str
) -> None:
    """No window a person could see: a ConfigError saying what is needed, and no episode (it used to
    record an all-NOOP 'human' episode and exit 0)."""
    monkeypatch.setenv("SDL_VIDEODRIVER", driver)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "demos"
    with pytest.raises(ConfigError, match=r"needs a display.*desktop session.*--agent expert"):
        record("Pong", "human", 1, out, max_steps=5)
    assert not out.exists()


@needs_pygame
def test_cli_record_human_without_a_display_exits_2_and_writes_nothing(tmp_path) -> None:
    out = tmp_path / "demos"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "atari_vlm.cli",
            "record",
            "--game",
            "Pong",
            "--agent",
            "human",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "SDL_VIDEODRIVER": "dummy"},
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "needs a display" in done.stdout + done.stderr
    assert not out.exists()
