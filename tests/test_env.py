import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from atari_vlm.env import make_env
from atari_vlm.errors import ConfigError
from atari_vlm.spec import EnvSpec, ObservationSpec


@pytest.fixture
def pong():
    env = make_env("Pong", seed=0)
    yield env
    env.close()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"resize_shape": (84, 84), "grayscale": True},
        {"frame_stack": 4, "frame_layout": "grid", "resize_shape": (105, 80)},
        {"frame_stack": 3, "frame_layout": "sequence"},
    ],
)
def test_passes_gymnasium_env_checker(options):
    env = make_env("Pong", **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    # The one warning the checker gives any wrapped env: make_env's env is a stack of wrappers.
    assert [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)] == []
    env.close()


def test_observation_holds_image_frames_text_and_the_games_action_names(pong):
    obs, info = pong.reset()
    assert obs in pong.observation_space
    assert obs["image"].shape == (210, 160, 3) and obs["image"].dtype == np.uint8
    assert obs["frames"].shape == (1, 210, 160, 3)
    assert isinstance(obs["text"], str) and obs["text"].strip()
    assert pong.action_names == pong.unwrapped.get_action_meanings()
    assert pong.action_names == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    assert info["step"] == 0 and info["episode_return"] == 0.0


def test_full_action_space_has_all_18_actions():
    env = make_env("Pong", full_action_space=True)
    assert len(env.action_names) == 18 and env.action_space.n == 18
    env.close()


def test_resize_and_grayscale_shape_every_frame():
    env = make_env("Breakout", resize_shape=(84, 64), grayscale=True, frame_stack=2, frame_layout="sequence")
    obs, _ = env.reset(seed=1)
    assert obs["frames"].shape == (2, 84, 64) and obs["image"].shape == (84, 64)
    obs, *_ = env.step(0)
    assert obs in env.observation_space
    env.close()


def test_frame_stack_keeps_the_most_recent_frames_oldest_first():
    env = make_env(
        "Pong", frame_stack=3, frame_layout="sequence", repeat_action_probability=0.0, max_pool=False
    )
    obs, _ = env.reset(seed=0)
    # At reset the stack holds copies of the first frame.
    assert all(np.array_equal(obs["frames"][0], f) for f in obs["frames"])
    seen = []
    for _ in range(60):
        obs, *_ = env.step(0)
        seen.append(env.last_rgb_frame.copy())
    assert np.array_equal(obs["frames"][-1], seen[-1])
    assert np.array_equal(obs["frames"][-2], seen[-2])
    assert np.array_equal(obs["frames"][0], seen[-3])
    env.close()


def test_grid_layout_composes_the_stack_into_one_image():
    env = make_env("Pong", frame_stack=4, frame_layout="grid", resize_shape=(50, 40))
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (102, 82, 3)
    assert np.array_equal(obs["image"][:50, :40], obs["frames"][0])
    assert np.array_equal(obs["image"][52:, 42:], obs["frames"][3])
    env.close()


def test_frame_skip_sets_emulator_frames_per_decision():
    env = make_env("Pong", frame_skip=8)
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    _, _, _, _, info = env.step(0)
    assert info["episode_frame_number"] == 16
    env.close()


def test_max_steps_truncates_the_episode():
    env = make_env("Pong", max_steps=5)
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(5)]
    assert flags == [False, False, False, False, True]
    env.close()


def test_same_seed_same_episode_with_sticky_actions():
    def rollout(seed):
        env = make_env("Breakout", repeat_action_probability=0.25, seed=seed)
        obs, _ = env.reset()
        rng = np.random.default_rng(1)
        total, frames = 0.0, []
        for _ in range(150):
            obs, r, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
            total += r
            frames.append(obs["image"].sum())
            if term or trunc:
                break
        env.close()
        return total, frames

    assert rollout(3) == rollout(3)


def test_sticky_actions_make_a_difference():
    def frames(p):
        env = make_env("Pong", repeat_action_probability=p, seed=0)
        env.reset()
        out = [int(env.step(2 if i % 2 else 3)[0]["image"].sum()) for i in range(80)]
        env.close()
        return out

    assert frames(0.0) == frames(0.0)
    assert frames(0.0) != frames(0.9)


def test_invalid_action_is_rejected(pong):
    pong.reset()
    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 6\) for Pong"):
        pong.step(6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"game": "Pongg"}, "unknown game 'Pongg'; closest matches: Pong"),
        ({"resize_shape": (84,)}, r"resize_shape must be a \(height, width\) pair"),
        ({"resize_shape": "84x84"}, r"resize_shape must be a \(height, width\) pair"),
        ({"resize_shape": (84.5, 84)}, "resize_shape must be an integer, got 84.5"),
        ({"resize_shape": (4, 84)}, "resize_shape must be between 8 and 1024, got 4"),
        ({"grayscale": "yes"}, "grayscale must be true or false"),
        ({"frame_stack": 0}, "frame_stack must be between 1 and 16, got 0"),
        ({"frame_stack": 2.0}, "frame_stack must be an integer"),
        ({"frame_layout": "mosaic"}, "frame_layout must be one of grid, sequence"),
        ({"frame_skip": 0}, "frame_skip must be between 1 and 64, got 0"),
        ({"repeat_action_probability": 1.5}, "repeat_action_probability must be between 0 and 1"),
        ({"repeat_action_probability": True}, "repeat_action_probability must be a number"),
        ({"max_steps": -3}, "max_steps must be between 1 and"),
        ({"full_action_space": 1}, "full_action_space must be true or false"),
        ({"seed": -1}, "seed must be between 0 and"),
    ],
)
def test_every_bad_option_gets_a_precise_error(options, message):
    options = {"game": "Pong", **options}
    with pytest.raises(ConfigError, match=message):
        make_env(**options)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown environment option\(s\) \['frameskip'\]; valid options"):
        make_env("Pong", frameskip=4)


def test_spec_sections_round_trip_to_json_friendly_dicts():
    env, observation = EnvSpec(game="pong"), ObservationSpec(resize_shape=[84, 84])
    assert env.to_dict()["game"] == "Pong" and observation.to_dict()["resize_shape"] == [84, 84]
    assert EnvSpec.from_dict(env.to_dict()) == env
    assert ObservationSpec.from_dict(observation.to_dict()) == observation


def test_every_game_makes_and_steps():
    """All 104 games build and take a step; the text is never empty."""
    from atari_vlm.games import all_games

    for game in all_games():
        env = make_env(game, resize_shape=(42, 32), seed=0)
        obs, _ = env.reset()
        obs, *_ = env.step(env.action_space.n - 1)
        assert obs in env.observation_space, game
        env.close()


def test_decision_interval_plays_the_filler_between_decisions():
    env = make_env("Pong", decision_interval=2, repeat_action_probability=0.0)
    env.reset(seed=0)
    _, _, _, _, info = env.step(1)
    assert info["env_steps"] == 2 and info["step"] == 1 and info["episode_frame_number"] == 8
    env.close()
    with pytest.raises(ConfigError, match="filler_action 'JUMP' is not an action of Pong"):
        make_env("Pong", decision_interval=2, filler_action="jump")


def test_noop_starts_are_seeded_and_vary():
    def first_frame_number(seed):
        env = make_env("Breakout", noop_max=30, repeat_action_probability=0.0)
        _, info = env.reset(seed=seed)
        env.close()
        return info["episode_frame_number"]

    frames = [first_frame_number(s) for s in range(6)]
    assert frames == [first_frame_number(s) for s in range(6)]
    assert len(set(frames)) > 1 and max(frames) <= 30 * 4


def test_budget_with_reset_on_game_over_accumulates_across_games():
    env = make_env("Breakout", total_env_steps=800, reset_on_game_over=True, repeat_action_probability=0.0)
    env.reset(seed=0)
    steps, terminated, truncated, info = 0, False, False, {}
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(1)  # FIRE, never moving: games end quickly
        steps += 1
    assert steps == 800 and truncated and not terminated
    assert info["env_steps"] == 800 and info["game_overs"] >= 1
    env.close()
    with pytest.raises(ConfigError, match="reset_on_game_over needs a total_env_steps budget"):
        EnvSpec(game="Pong", reset_on_game_over=True)


def test_max_episode_frames_truncates_through_ale():
    env = make_env("Pong", max_episode_frames=40)
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(10)]
    assert flags.index(True) == 9  # 10 steps x 4 frames
    env.close()
