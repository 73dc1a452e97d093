"""`atari-vlm bench`: every combination on the same seeds, the random baseline beside it, resumable."""

import json

import pytest

from atari_vlm.bench.sweep import BenchSpec, plan
from atari_vlm.cli import main
from atari_vlm.errors import ConfigError
from atari_vlm.rundir import read_jsonl
from atari_vlm.spec import SweepSpec, parse_seeds


@pytest.mark.parametrize(
    ("text", "seeds"), [("0-4", (0, 1, 2, 3, 4)), ("1,5,9", (1, 5, 9)), ("0-1,7", (0, 1, 7))]
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("bad", ["", "a-b", "4-1", "1,1", "-3"])
def test_bad_seeds(bad):
    with pytest.raises(ConfigError, match="seed"):
        parse_seeds(bad)


def test_plan_puts_the_random_baseline_beside_every_game(tmp_path):
    combos, protocol, seeds = plan(
        BenchSpec(
            out=tmp_path,
            sweep=SweepSpec(games=("pong", "Breakout"), models=("demo",), prompts=("basic", "cot")),
            settings={"protocol": "atari-gpt"},
        )
    )
    assert [(c.game, c.model, c.prompt) for c in combos] == [
        ("Pong", "random", "-"),
        ("Pong", "expert", "-"),  # a RAM expert exists for Pong and Breakout: the ceiling beside the floor
        ("Pong", "demo", "basic"),
        ("Pong", "demo", "cot"),
        ("Breakout", "random", "-"),
        ("Breakout", "expert", "-"),
        ("Breakout", "demo", "basic"),
        ("Breakout", "demo", "cot"),
    ]
    assert protocol.name == "atari-gpt" and protocol.runs == 4 and seeds == (0, 1, 2, 3, 4)  # at least 5
    assert all(c.spec.env.stuck_decisions == 100 for c in combos)  # on by default in benchmarks
    assert {c.spec.observation.label for c in combos} == {"screen"}  # Atari-GPT's models saw no state text
    with pytest.raises(ConfigError, match="unknown game"):
        plan(BenchSpec(out=tmp_path, sweep=SweepSpec(games=("Pongg",), models=("demo",))))


def test_bench_sweep_end_to_end_and_resumable(tmp_path, capsys):
    args = [
        "bench",
        "--games",
        "Pong",
        "--models",
        "demo",
        "--prompts",
        "basic",
        "--seeds",
        "3,4",
        "--protocol",
        "atari-gpt",
        "--max-steps",
        "4",
        "--max-tokens",
        "6",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "│ Pong │" in first.out and "Published, not measured" in first.out  # a terminal table
    for run in (tmp_path / "Pong" / "random", tmp_path / "Pong" / "demo" / "basic"):
        config = json.loads((run / "config.json").read_text())
        spec = config["spec"]
        assert spec["env_seeds"] == [3, 4] and config["protocol"]["name"] == "atari-gpt"
        assert spec["protocol"] == "atari-gpt"
        assert spec["env"]["decision_interval"] == 2 and spec["env"]["total_env_steps"] == 1000
        assert [e["seed"] for e in read_jsonl(run / "episodes.jsonl")] == [3, 4]
    demo_config = json.loads((tmp_path / "Pong" / "demo" / "basic" / "config.json").read_text())
    assert demo_config["spec"]["prompt"]["history_images"] == 1  # the previous frame and answer
    assert demo_config["spec"]["observation"]["state_text"] is False
    assert demo_config["spec"]["decoding"]["reprompts"] == 3
    assert main(args) == 0  # a second call finds everything done
    assert capsys.readouterr().err.count("done already") == 3  # random, expert, demo
    assert {p.name for p in (tmp_path / "results").iterdir()} == {"results.md", "results.csv", "results.json"}
