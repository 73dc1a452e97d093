"""Fuzzing what users hand in: protocol files, env options and run configs never crash with
anything but a clear ConfigError, whatever they hold."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from atari_vlm.bench.protocols import Protocol, load_protocol
from atari_vlm.env import split_options
from atari_vlm.errors import ConfigError
from atari_vlm.rundir import RunDir, run_record
from atari_vlm.spec import EnvSpec, ObservationSpec, RunSpec

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
protocol_fields = st.sampled_from(
    [
        "name",
        "base",
        "frame_skip",
        "repeat_action_probability",
        "noop_max",
        "max_episode_frames",
        "total_env_steps",
        "reset_on_game_over",
        "decision_interval",
        "filler_action",
        "context_pairs",
        "runs",
        "games",
        "table",
        "unknown_field",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(protocol_fields, json_values, max_size=8))
def test_protocol_loader_accepts_or_explains(data):
    try:
        protocol = Protocol.from_dict(data, origin="fuzz.json")
    except ConfigError as exc:
        assert str(exc)
    else:
        assert protocol.setting("frame_skip") >= 1
        assert 0.0 <= protocol.setting("repeat_action_probability") <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_protocol_files_of_any_content(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("p") / "protocol.json"
    path.write_bytes(content)
    try:
        load_protocol(str(path))
    except ConfigError as exc:
        assert str(exc)


env_fields = st.sampled_from(
    [
        "resize_shape",
        "grayscale",
        "frame_stack",
        "frame_layout",
        "frame_skip",
        "repeat_action_probability",
        "max_steps",
        "full_action_space",
        "seed",
        "noop_max",
        "decision_interval",
        "filler_action",
        "max_episode_frames",
        "total_env_steps",
        "reset_on_game_over",
        "max_pool",
        "state_text",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(env_fields, json_values, max_size=5))
def test_env_settings_accept_or_explain(options):
    options.pop("seed", None)
    try:
        env, observation = split_options(options)
        EnvSpec(game="Pong", **env)
        ObservationSpec(**observation)
    except ConfigError as exc:
        assert str(exc)


spec_dicts = st.fixed_dictionaries(
    {"format_version": st.just(2), "agent": json_values, "env": st.fixed_dictionaries({"game": json_values})},
    optional={"observation": json_values, "episodes": json_values, "seed": json_values, "nope": json_values},
)


@settings(max_examples=100, deadline=None)
@given(spec_dicts | json_values)
def test_a_recorded_spec_of_any_content_reads_or_explains(data):
    try:
        spec = RunSpec.from_record(data)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert spec.record()["format_version"] == 2


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_resuming_a_corrupt_run_is_a_clear_error(tmp_path_factory, content):
    run = tmp_path_factory.mktemp("run")
    (run / "config.json").write_bytes(content)
    (run / "episodes.jsonl").write_bytes(content)
    spec = RunSpec.build(game="Pong", agent="random")
    try:
        RunDir(run).open(run_record(spec, kind="play"), spec, resume=True).close()
    except ConfigError as exc:
        assert str(exc)
    else:  # the bytes happened to be the same config: then it resumed what it could read
        assert json.loads(content)["spec"] == spec.record()
