"""Reference scores, aggregates with bootstrap intervals, and protocols (built in and from files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atari_vlm.bench import protocols as protocols_module
from atari_vlm.bench.protocols import PROTOCOLS, Protocol, load_protocol
from atari_vlm.bench.scores import (
    PUBLISHED,
    TABLES,
    aggregate_with_ci,
    has_reference,
    human_normalized,
    iqm,
    mean_score,
    median_score,
    reference_scores,
    stratified_bootstrap_ci,
)
from atari_vlm.errors import ConfigError
from atari_vlm.games import all_games

# --- reference scores ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("game", "table", "random", "human"),
    [
        ("Pong", "dqn_nature", -20.7, 9.3),
        ("Pong", "atari57", -20.7, 14.6),
        ("Breakout", "dqn_nature", 1.7, 31.8),
        ("SpaceInvaders", "dqn_nature", 148.0, 1652.3),
        ("MsPacman", "dqn_nature", 307.3, 15693.4),
        ("MsPacman", "atari57", 307.3, 6951.6),
        ("Qbert", "dqn_nature", 163.9, 13455.0),
        ("Seaquest", "dqn_nature", 68.4, 20181.8),
        ("Seaquest", "atari57", 68.4, 42054.7),
    ],
)
def test_reference_scores_of_the_seed_games(game, table, random, human):
    assert reference_scores(game, table) == (random, human)
    assert human_normalized(game, random, table) == pytest.approx(0.0)
    assert human_normalized(game, human, table) == pytest.approx(1.0)


def test_normalization_values():
    assert human_normalized("pong", 9.3) == pytest.approx(1.0)
    assert human_normalized("Pong", -5.7) == pytest.approx(0.5)  # halfway between -20.7 and 9.3
    assert human_normalized("ALE/Breakout-v5", 16.75) == pytest.approx(0.5)
    assert human_normalized("space_invaders", 148.0 + 2 * (1652.3 - 148.0)) == pytest.approx(2.0)
    np.testing.assert_allclose(human_normalized("Pong", np.array([-20.7, 9.3])), [0.0, 1.0])
    np.testing.assert_allclose(human_normalized("Pong", [-20.7, -5.7]), [0.0, 0.5])


def test_tables_hold_known_games_with_sources():
    games = set(all_games())
    assert len(TABLES["dqn_nature"].scores) == 49
    assert len(TABLES["atari57"].scores) == 57
    for table in TABLES.values():
        assert table.source and set(table.scores) <= games
        for random, human in table.scores.values():
            assert human > random
    # Where both tables have a game, the random scores agree (the same random protocol).
    for game, (random, _) in TABLES["dqn_nature"].scores.items():
        assert TABLES["atari57"].scores[game][0] == pytest.approx(random)


def test_missing_references_are_precise_errors():
    with pytest.raises(ConfigError, match=r"'dqn_nature' table has no reference score for Berzerk.*atari57"):
        reference_scores("Berzerk")
    with pytest.raises(ConfigError, match="no table here has it"):
        reference_scores("Frogger")
    with pytest.raises(ConfigError, match="unknown reference table 'nope'"):
        human_normalized("Pong", 0.0, table="nope")
    with pytest.raises(ConfigError, match="unknown game"):
        reference_scores("NotAGame")
    assert has_reference("Berzerk", "atari57") and not has_reference("Berzerk")


def test_published_numbers_are_labelled():
    values = {p.model: p.value for p in PUBLISHED}
    assert values == {
        "GPT-4o": 0.232,
        "GPT-4V Turbo": 0.184,
        "Claude 3 Haiku": 0.124,
        "Gemini 1.5 Flash": 0.085,
    }
    for p in PUBLISHED:
        assert p.label == "published, not measured" and "2408.15950" in p.source and len(p.games) == 7


# --- aggregates ------------------------------------------------------------------------------------------


def test_iqm_on_known_arrays():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # middle four: 3, 4, 5, 6
    assert iqm([1, 2, 3, 4]) == pytest.approx(2.5)
    assert iqm([7.0]) == pytest.approx(7.0)
    assert iqm(list(range(10))) == pytest.approx(np.mean([2, 3, 4, 5, 6, 7]))  # cut int(2.5) = 2 each side
    # IQM pools every run of every game (as rliable): a (runs x games) matrix and a mapping agree.
    matrix = np.array([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]])
    assert iqm(matrix) == pytest.approx(iqm({"a": [0, 1, 2, 3], "b": [10, 11, 12, 13]}))
    assert iqm(matrix) == pytest.approx(np.mean([2, 3, 10, 11]))


def test_mean_and_median_are_over_game_means():
    scores = {"a": [0.0, 1.0], "b": [2.0], "c": [10.0, 20.0, 30.0]}
    assert mean_score(scores) == pytest.approx((0.5 + 2.0 + 20.0) / 3)
    assert median_score(scores) == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [{}, {"a": []}, {"a": [1.0, float("nan")]}, np.zeros((2, 2, 2))])
def test_bad_scores_are_rejected(bad):
    with pytest.raises(ConfigError):
        iqm(bad)


def test_bootstrap_ci_contains_point_and_shrinks_with_more_runs():
    rng = np.random.default_rng(1)
    few = {g: rng.normal(1.0, 1.0, size=5) for g in ("a", "b", "c")}
    many = {g: rng.normal(1.0, 1.0, size=200) for g in ("a", "b", "c")}
    for aggregate in ("mean", "median", "iqm"):
        small = stratified_bootstrap_ci(few, aggregate, reps=1000)
        large = stratified_bootstrap_ci(many, aggregate, reps=1000)
        for ci in (small, large):
            assert ci.low <= ci.point <= ci.high
        assert (large.high - large.low) < (small.high - small.low) / 2


def test_bootstrap_is_seeded_and_stratified():
    scores = {"a": [0.0, 1.0, 5.0], "b": [3.0, 4.0]}
    first = aggregate_with_ci(scores, reps=500, seed=7)
    assert first == aggregate_with_ci(scores, reps=500, seed=7)
    assert first["mean"] != aggregate_with_ci(scores, reps=500, seed=8)["mean"]
    # A constant game stays constant under resampling within it: the interval has no width.
    flat = stratified_bootstrap_ci({"a": [2.0, 2.0, 2.0], "b": [4.0] * 4}, "mean", reps=200)
    assert (flat.low, flat.point, flat.high) == pytest.approx((3.0, 3.0, 3.0))
    assert first["iqm"].to_dict()["confidence"] == 0.95


def test_bootstrap_options_are_checked():
    with pytest.raises(ConfigError, match="reps must be an integer >= 1"):
        stratified_bootstrap_ci([1.0, 2.0], reps=0)
    with pytest.raises(ConfigError, match="confidence must be between 0 and 1"):
        stratified_bootstrap_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(ConfigError, match="unknown aggregate 'mode'"):
        stratified_bootstrap_ci([1.0, 2.0], "mode")


# --- protocols -------------------------------------------------------------------------------------------


def test_builtin_protocols():
    gpt = load_protocol("atari-gpt")
    settings = ("total_env_steps", "frame_skip", "decision_interval", "history_images")
    assert [gpt.setting(k) for k in settings] == [1000, 4, 2, 1]
    assert gpt.setting("state_text") is False and gpt.setting("resize_shape") == (512, 512)
    assert len(gpt.checks) >= 10 and all(" " in c for c in gpt.checks)
    assert gpt.setting("reset_on_game_over") and gpt.setting("filler_action") == "NOOP"
    assert gpt.decisions_per_run == 500
    assert "Pong" in gpt.games and len(gpt.games) == 7
    machado = PROTOCOLS["machado"]
    # Machado et al. replaced no-op starts by sticky actions: the protocol has none.
    assert machado.setting("repeat_action_probability") == 0.25 and machado.setting("noop_max") == 0
    assert machado.setting("max_episode_frames") == 108_000
    assert gpt.fixed_settings()["history_images"] == 1 and machado.fixed_settings()["frame_skip"] == 4
    for p in PROTOCOLS.values():
        assert p.description and p.source
        assert Protocol.from_dict(p.to_dict()) == p  # round trip through plain data


def test_protocol_from_json_and_toml(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps({"name": "quick", "base": "atari-gpt", "total_env_steps": 200, "games": ["pong"]})
    )
    p = load_protocol(path)
    assert (p.name, p.setting("total_env_steps"), p.setting("decision_interval"), p.games) == (
        "quick",
        200,
        2,
        ("Pong",),
    )
    assert "atari-gpt" in p.source
    toml = tmp_path / "mine.toml"
    toml.write_text('name = "sticky-off"\nrepeat_action_probability = 0\nfiller_action = "noop"\n')
    p = load_protocol(str(toml))
    assert p.setting("repeat_action_probability") == 0.0 and p.setting("filler_action") == "NOOP"
    assert p.setting("total_env_steps") is None and "total_env_steps" not in p.settings


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "field 'name' must not be empty"),
        ({"name": "a b"}, "field 'name' may hold only"),
        ({"name": 3}, "field 'name' must be a string"),
        ({"description": 5}, "field 'description' must be a string"),
        ({"source": None}, "field 'source' must be a string"),
        ({"frame_skip": 0}, "field frame_skip must be between 1 and 64, got 0"),
        ({"frame_skip": 2.5}, "field frame_skip must be an integer"),
        ({"frame_skip": True}, "field frame_skip must be an integer"),
        ({"repeat_action_probability": 1.5}, "field repeat_action_probability must be between 0 and 1"),
        ({"repeat_action_probability": "high"}, "field repeat_action_probability must be a number"),
        ({"full_action_space": "yes"}, "field full_action_space must be true or false"),
        ({"noop_max": -1}, "field noop_max must be between 0 and 1000"),
        ({"max_episode_frames": 0}, "field max_episode_frames must be between 1 and"),
        ({"max_episode_frames": "many"}, "field max_episode_frames must be an integer"),
        ({"total_env_steps": -5}, "field total_env_steps must be between 1 and"),
        ({"reset_on_game_over": 1}, "field reset_on_game_over must be true or false"),
        ({"reset_on_game_over": True}, "'reset_on_game_over' needs a 'total_env_steps' budget"),
        ({"decision_interval": 0}, "field decision_interval must be between 1 and 100"),
        ({"filler_action": " "}, "field filler_action must be a non-empty string"),
        ({"context_pairs": -1}, "field history_steps must be between 0 and 64"),
        ({"state_text": "no"}, "field state_text must be true or false"),
        ({"settings": {"model": "gpt-4o"}}, "'model' is not a setting a protocol may fix"),
        ({"settings": {"seed": 3}}, "'seed' is not a setting a protocol may fix"),
        ({"runs": 0}, "field 'runs' must be an integer >= 1"),
        ({"games": "Pong"}, "field 'games' must be a list of game names"),
        ({"games": ["Pong", "Pongg"]}, r"field 'games\[1\]': unknown game 'Pongg'"),
        ({"table": "mine"}, "field 'table' must be one of"),
    ],
)
def test_every_protocol_field_is_validated(fields, message):
    with pytest.raises(ConfigError, match=message):
        Protocol.from_dict({"name": "p", **fields}, origin="test.json")


def test_protocol_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown protocol field\(s\) \['frameskip'\]; known"):
        Protocol.from_dict({"name": "p", "frameskip": 4})
    with pytest.raises(ConfigError, match="field 'name' is missing"):
        Protocol.from_dict({"frame_skip": 4})
    with pytest.raises(ConfigError, match="field 'base' must be one of"):
        Protocol.from_dict({"name": "p", "base": "dqn"})
    with pytest.raises(ConfigError, match="must be a mapping of fields, got list"):
        Protocol.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        load_protocol("nope")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_protocol(bad_json)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_protocol(bad_toml)
    yaml = tmp_path / "p.yaml"
    yaml.write_text("name: p\n")
    with pytest.raises(ConfigError, match=r"must end in \.json or \.toml"):
        load_protocol(yaml)
    # The error names the file and the field.
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"name": "w", "decision_interval": "2"}))
    with pytest.raises(
        ConfigError, match=r"wrong\.json: protocol 'w': field decision_interval must be an integer"
    ):
        load_protocol(wrong)
    huge = tmp_path / "huge.json"
    huge.write_text('{"name": "h", "frame_skip": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_protocol(huge)
    deep = tmp_path / "deep.json"
    deep.write_text('{"name": "d", "games": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match="larger than 64 KiB"):
        load_protocol(deep)
    nested = tmp_path / "nested.json"
    nested.write_text('{"name": "d", "games": ' + "[" * 30_000 + "]" * 30_000 + "}")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_protocol(nested)
    assert protocols_module.PROTOCOLS["atari-gpt"] is load_protocol("atari-gpt")


def test_a_95_percent_interval_is_as_wide_as_a_95_percent_interval():
    """The bootstrap interval of a mean of n normal draws is about mean +- 1.96 sd / sqrt(n): a 97.5%
    interval labelled 95% would be 14% wider (2.24 sd), far outside this tolerance."""
    values = np.random.default_rng(7).normal(10.0, 3.0, size=400)
    interval = stratified_bootstrap_ci(values, "mean", reps=4000, seed=1)
    expected = 2 * 1.959964 * values.std(ddof=1) / np.sqrt(len(values))
    assert interval.confidence == 0.95
    assert (interval.high - interval.low) == pytest.approx(expected, rel=0.05)
    assert interval.low < values.mean() < interval.high
    wider = stratified_bootstrap_ci(values, "mean", reps=4000, seed=1, confidence=0.99)
    assert (wider.high - wider.low) == pytest.approx(2 * 2.575829 * values.std(ddof=1) / 20, rel=0.05)
