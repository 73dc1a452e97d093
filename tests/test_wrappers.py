"""The env is ordinary Gymnasium wrappers over an unmodified ALE v5 env, each doing one job, each able
to wrap a user's own ALE env; v5's defaults stay unless the spec says otherwise."""

from __future__ import annotations

from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from atari_vlm.env import make_env
from atari_vlm.errors import ConfigError
from atari_vlm.wrappers import (
    DecisionInterval,
    EnvStepBudget,
    GrayscaleFrame,
    MaxPoolSkip,
    NoopStart,
    ResizeFrame,
    VLMObservation,
)

gym.register_envs(ale_py)


class Recorder(gym.Env):
    """A fake env that records every action it is given; game over after ``length`` steps."""

    observation_space = spaces.Box(0, 255, (4, 4, 3), np.uint8)
    action_space = spaces.Discrete(6)

    def __init__(self, length: int = 1000) -> None:
        self.length = length
        self.actions: list[int] = []
        self.resets = 0
        self._t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.resets += 1
        self._t = 0
        return np.zeros((4, 4, 3), np.uint8), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.actions.append(int(action))
        self._t += 1
        return np.full((4, 4, 3), self._t, np.uint8), 1.0, self._t >= self.length, False, {}


def test_the_default_env_keeps_ale_v5s_episode_cap_and_defaults():
    env = make_env("Breakout")
    ale = env.unwrapped.ale
    assert ale.getInt("max_num_frames_per_episode") == 108_000  # v5's cap, not "no cap"
    assert ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    assert env.unwrapped._frameskip == 1 and env.env_spec.frame_skip == 4  # the skip is max-pooled
    env.close()
    uncapped = make_env("Breakout", max_episode_frames=None, max_pool=False)
    assert uncapped.unwrapped.ale.getInt("max_num_frames_per_episode") == 0  # ALE's "no cap"
    assert uncapped.unwrapped._frameskip == 4
    uncapped.close()


def test_the_filler_between_decisions_is_the_filler_action_not_the_chosen_one():
    inner = Recorder()
    env = DecisionInterval(inner, 3, filler_action=0)
    env.reset(seed=0)
    _, reward, *_, info = env.step(4)
    env.step(2)
    assert inner.actions == [4, 0, 0, 2, 0, 0]
    assert reward == 3.0 and info["env_steps"] == 3


def test_a_decision_interval_ends_early_when_the_game_does():
    inner = Recorder(length=4)
    env = DecisionInterval(inner, 3, filler_action=0)
    env.reset()
    env.step(1)
    _, reward, terminated, _, info = env.step(5)
    assert terminated and reward == 1.0 and inner.actions == [1, 0, 0, 5] and info["env_steps"] == 4


def test_the_real_filler_is_noop_on_the_emulator():
    """Decision interval 2 plays [FIRE, NOOP] on ALE: the same frames as stepping those by hand."""
    env = make_env("Breakout", decision_interval=2, repeat_action_probability=0.0, max_pool=False)
    raw = gym.make("ALE/Breakout-v5", repeat_action_probability=0.0)
    env.reset(seed=3)
    raw.reset(seed=3)
    fire, noop, right = (env.action_names.index(a) for a in ("FIRE", "NOOP", "RIGHT"))
    for action in (fire, right, right, fire):
        obs, *_ = env.step(action)
        raw.step(action)
        expected, *_ = raw.step(noop)
    assert np.array_equal(obs["image"], expected)
    raw.step(right)
    repeated, *_ = raw.step(right)  # a filler that repeated the action would have drawn this
    assert not np.array_equal(repeated, expected)


def test_the_budget_restarts_the_game_and_counts_the_restarts():
    inner = Recorder(length=3)
    env = EnvStepBudget(inner, 7, reset_on_game_over=True)
    env.reset(seed=0)
    results = [env.step(1) for _ in range(7)]
    assert [r[3] for r in results] == [False] * 6 + [True]  # truncated when the budget is spent
    assert not any(r[2] for r in results) and inner.resets == 3
    assert results[-1][4]["game_overs"] == 2 and results[2][4]["new_game"]


def test_noop_starts_are_seeded_by_the_reset_seed():
    def noops(seed: int) -> int:
        inner = Recorder()
        NoopStart(inner, 30, noop_action=0).reset(seed=seed)
        return len(inner.actions)

    counts = [noops(s) for s in range(8)]
    assert counts == [noops(s) for s in range(8)] and len(set(counts)) > 2 and max(counts) <= 30


def test_max_pooling_is_the_max_of_the_last_two_frames_of_the_skip():
    pooled = MaxPoolSkip(gym.make("ALE/MsPacman-v5", frameskip=1, repeat_action_probability=0.0), 4)
    raw = gym.make("ALE/MsPacman-v5", frameskip=1, repeat_action_probability=0.0)
    pooled.reset(seed=0)
    raw.reset(seed=0)
    differs = 0
    for t in range(60):
        action = 2 + t % 4
        obs, reward, *_ = pooled.step(action)
        frames = [raw.step(action)[0] for _ in range(4)]
        assert np.array_equal(obs, np.maximum(frames[2], frames[3]))
        differs += not np.array_equal(obs, frames[3])
    assert differs > 30  # Ms. Pac-Man draws sprites on alternate frames: pooling shows more
    with pytest.raises(ConfigError, match="frameskip=1"):
        MaxPoolSkip(gym.make("ALE/MsPacman-v5"), 4)


def test_pooled_and_unpooled_envs_play_the_same_game():
    """Pooling changes what the model sees, never what is played: same rewards, frames, lives."""
    a = make_env("Breakout", repeat_action_probability=0.25, max_pool=True)
    b = make_env("Breakout", repeat_action_probability=0.25, max_pool=False)
    a.reset(seed=5)
    b.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(300):
        action = int(rng.integers(4))
        ra, rb = a.step(action), b.step(action)
        assert ra[1:4] == rb[1:4] and ra[4]["lives"] == rb[4]["lives"]
        assert np.array_equal(a.last_rgb_frame, b.last_rgb_frame)
        if ra[2] or ra[3]:
            break


def test_the_wrappers_compose_on_a_users_own_ale_env():
    base = gym.make("ALE/Pong-v5", frameskip=1, obs_type="ram", repeat_action_probability=0.0)
    env = MaxPoolSkip(base, 4)
    env = NoopStart(env, 10)
    env = DecisionInterval(env, 2, filler_action=0)
    env = ResizeFrame(env, (105, 80))
    env = GrayscaleFrame(env)
    env = gym.wrappers.FrameStackObservation(env, 2)
    env = VLMObservation(env, "Pong", layout="sequence")
    obs, info = env.reset(seed=1)
    assert obs["frames"].shape == (2, 105, 80) and obs["image"].shape == (105, 80)
    assert "paddle" in obs["text"] and info["step"] == 0
    obs, _, _, _, info = env.step(2)
    assert obs in env.observation_space and info["env_steps"] == 2 and info["step"] == 1


def test_every_game_is_registered_with_gymnasium():
    env = gym.make("AtariVLM/Breakout-v0", frame_stack=2, resize_shape=(84, 84))
    obs, _ = env.reset(seed=0)
    assert obs["frames"].shape == (2, 84, 84, 3)
    assert env.unwrapped.ale.getInt("max_num_frames_per_episode") == 108_000
    env.close()
    again = make_env("Breakout", frame_stack=2).spec.make()  # the checker rebuilds envs this way
    assert again.get_wrapper_attr("observation_spec").frame_stack == 2
    again.close()


def test_state_text_off_leaves_the_text_empty():
    env = make_env("Pong", state_text=False)
    obs, _ = env.reset(seed=0)
    assert obs["text"] == "" and obs in env.observation_space
    env.close()
