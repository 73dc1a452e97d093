"""Fuzzing what users hand in: protocol files, env options and run configs never crash with
anything but a clear ConfigError, whatever they hold."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from atari_vlm.bench.protocols import Protocol, load_protocol
from atari_vlm.env import EnvConfig
from atari_vlm.errors import ConfigError
from atari_vlm.rundir import RunDir

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
        assert protocol.frame_skip >= 1 and 0.0 <= protocol.repeat_action_probability <= 1.0


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
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(env_fields, json_values, max_size=5))
def test_env_config_accepts_or_explains(options):
    try:
        EnvConfig(game="Pong", **options)
    except ConfigError as exc:
        assert str(exc)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_resuming_a_corrupt_run_is_a_clear_error(tmp_path_factory, content):
    run = tmp_path_factory.mktemp("run")
    (run / "config.json").write_bytes(content)
    (run / "episodes.jsonl").write_bytes(content)
    try:
        RunDir(run).open({"game": "Pong"}, resume=True).close()
    except ConfigError as exc:
        assert str(exc)
    else:  # the bytes happened to be the same config: then it resumed what it could read
        assert json.loads(content) == {"game": "Pong"}
