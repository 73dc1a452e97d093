"""The run specification: each setting declared once, and the CLI, config.json, resume and results
grouping all derived from the declarations."""

from __future__ import annotations

import json

import pytest

from atari_vlm.cli import build_parser, given_settings
from atari_vlm.errors import ConfigError
from atari_vlm.rundir import RunDir, run_record
from atari_vlm.spec import (
    FORMAT_VERSION,
    DecodingSpec,
    EnvSpec,
    ModelSpec,
    ObservationSpec,
    PromptSpec,
    RunSpec,
    TrainSpec,
)

# What changes play, written out here rather than read from the spec: demoting one of these to a
# setting a resume may change (or results may pool over) must fail a test.
PLAY = {
    "game", "frame_skip", "repeat_action_probability", "full_action_space", "max_episode_frames",
    "max_steps", "noop_max", "decision_interval", "filler_action", "total_env_steps",
    "reset_on_game_over", "resize_shape", "grayscale", "frame_stack", "frame_layout", "max_pool",
    "state_text", "prompt", "answer_format", "history_steps", "history_images", "max_tokens",
    "temperature", "decode", "model", "base_url", "image_detail", "device", "dtype", "quantize",
    "agent", "protocol", "use_icl", "exemplars", "top_k", "image_budget", "demos", "finetune_every",
}  # fmt: skip
SAMPLE = {"seed", "env_seeds"}
FREE = {"episodes", "num_envs", "concurrency", "max_batch_size", "video", "video_overlay", "max_cost_usd"}


def test_every_setting_has_one_unique_name_across_the_sections():
    names = [name for cls in RunSpec.SECTIONS.values() for name, *_ in cls.settings()]
    names += [name for name, *_ in RunSpec.settings()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_roles_of_the_settings_that_matter_are_pinned():
    roles = {name: setting.role for name, (_, setting, _) in RunSpec.flat_settings().items()}
    assert {n for n in PLAY if roles[n] != "play"} == set()
    assert {n for n in SAMPLE if roles[n] != "sample"} == set()
    assert {n for n in FREE if roles[n] in ("play", "sample")} == set()
    assert roles["api_key"] == "secret"


def test_the_defaults_are_ale_v5s_and_the_pipelines():
    env = EnvSpec(game="pong")
    assert (env.game, env.frame_skip, env.repeat_action_probability, env.max_episode_frames) == (
        "Pong",
        4,
        0.25,
        108_000,
    )
    assert ObservationSpec().max_pool and ObservationSpec().state_text
    assert PromptSpec().prompt == "basic" and DecodingSpec().temperature == 0.0


def test_a_recorded_spec_reads_back_equal_and_holds_no_secret():
    spec = RunSpec.build(
        game="Breakout",
        model="openai:gpt-4o-mini",
        api_key="sk-secret",
        resize_shape=(84, 64),
        env_seeds=(3, 4),
        episodes=2,
        prompt="cot",
        temperature=0.7,
        use_icl=True,
        eval_seeds=(5, 6),
    )
    record = json.loads(json.dumps(spec.record()))
    assert record["format_version"] == FORMAT_VERSION and "sk-secret" not in json.dumps(record)
    back = RunSpec.from_record(record)
    assert back.replace(api_key="sk-secret") == spec
    assert back.fingerprint() == spec.fingerprint()
    with pytest.raises(ConfigError, match="unknown env setting"):
        RunSpec.from_record({**record, "env": {**record["env"], "frameskip": 4}})
    with pytest.raises(ConfigError, match="frame_skip must be between 1 and 64"):
        RunSpec.from_record({**record, "env": {**record["env"], "frame_skip": 0}})


def test_the_fingerprint_follows_play_and_only_play():
    base = RunSpec.build(game="Pong", model="demo", seed=0, episodes=2)
    same = {
        base.replace(seed=9, episodes=7, num_envs=4, video=False, concurrency=3, max_cost_usd=1.0),
        base.replace(env_seeds=(1, 2, 3), episodes=3),
    }
    assert {s.fingerprint() for s in same} == {base.fingerprint()}
    changes = ({"frame_skip": 8}, {"temperature": 0.5}, {"max_tokens": 9}, {"prompt": "cot"}, {"model": "x"})
    for change in changes:
        assert base.replace(**change).fingerprint() != base.fingerprint(), change
    random = base.replace(agent="random")
    assert random.replace(model="x", prompt="cot").fingerprint() == random.fingerprint()  # reads neither
    assert random.replace(frame_skip=8).fingerprint() != random.fingerprint()
    assert random.env_fingerprint() == base.env_fingerprint()


def test_build_names_a_bad_setting_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['frameskip'\]; valid: \[.*'frame_skip'"):
        RunSpec.build(game="Pong", frameskip=4)
    with pytest.raises(ConfigError, match="a run needs a game"):
        RunSpec.build(model="demo")
    with pytest.raises(ConfigError, match="3 env seeds given for 4 episodes"):
        RunSpec.build(game="Pong", env_seeds=(1, 2, 3), episodes=4)


def _cli_value(name, setting, default):
    """Command-line text for a value other than ``default``, and that value."""
    special = {
        "game": None,
        "resize_shape": ("84x64", (84, 64)),
        "filler_action": ("fire", "FIRE"),
        "prompt": ("cot", "cot"),
        "model": ("demo", "demo"),
        "base_url": ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
        "api_key": ("sk-x", "sk-x"),
        "device": ("cuda", "cuda"),
        "protocol": None,  # it fixes other settings: its own test
        "ray_address": None,  # needs --executor ray: its own test
        "reset_on_game_over": None,  # needs a budget
        "max_cost_usd": ("1.5", 1.5),
        "max_episode_frames": ("none", None),
        "eval_seeds": ("1-2", (1, 2)),
        "finetune_lr": ("0.01", 0.01),
    }
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return "on_off" if setting.on_off else "switch"
    if setting.choices:
        value = next(c for c in setting.choices if c != default)
        return value, value
    if isinstance(default, float):
        return "0.5", 0.5
    return ("3", 3) if default in (None, 1) else (str(default + 2), default + 2)


@pytest.mark.parametrize("command", ["play", "train"])
def test_every_option_on_the_command_line_reaches_the_spec(command):
    """Each CLI option is derived from its setting: its value arrives in the spec under that name."""
    parser = build_parser()
    args = parser.parse_args([command, "--game", "Pong"])
    names = args._spec_names
    assert {"frame_skip", "temperature", "model", "prompt", "max_steps"} <= set(names)
    for name in names:
        _, setting, default = RunSpec.flat_settings()[name]
        form = _cli_value(name, setting, default)
        if form is None:
            continue
        flag = setting.flag or "--" + name.replace("_", "-")
        if form == "switch":
            argv, value = [flag if not default else f"--no-{flag[2:]}"], not default
        elif form == "on_off":
            argv, value = [flag, "off" if default else "on"], not default
        else:
            argv, value = [flag, form[0]], form[1]
        extra = {"train": True} if command == "train" else {}
        args = parser.parse_args([command, "--game", "Pong", *argv])
        spec = RunSpec.build(game="Pong", **given_settings(args), **extra)
        assert spec.get(name) == value, (name, argv)


def test_the_command_line_shows_each_settings_default():
    help_text = build_parser()._subparsers._group_actions[0].choices["play"].format_help()
    assert "(default: 108000)" in help_text and "(default: 0.25)" in help_text
    assert "(default: on)" in help_text


def test_a_changed_prompt_file_is_another_prompt(tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text("Play ${title}. ${actions}")
    spec = RunSpec.build(game="Pong", model="demo", prompt=str(template))
    RunDir(tmp_path / "run").open(run_record(spec, kind="play"), spec).close()
    template.write_text("Play ${title} well. ${actions}")
    edited = RunSpec.build(game="Pong", model="demo", prompt=str(template))
    assert edited.fingerprint() != spec.fingerprint()
    with pytest.raises(ConfigError, match="template_sha256"):
        RunDir(tmp_path / "run").open(run_record(edited, kind="play"), edited, resume=True)


def test_sections_validate_types_before_values():
    with pytest.raises(ConfigError, match="frame_stack must be an integer, got '2'"):
        ObservationSpec(frame_stack="2")
    with pytest.raises(ConfigError, match="temperature must be a number, got nan"):
        DecodingSpec(temperature=float("nan"))
    with pytest.raises(ConfigError, match="base_url must be an http"):
        ModelSpec(base_url="notaurl")
    with pytest.raises(ConfigError, match="eval_seeds must hold distinct seeds"):
        TrainSpec(eval_seeds=(1, 1))
