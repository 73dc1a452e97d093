"""Costs in a real run: per decision, per episode, per run; --max-cost stops in time; --dry-run."""

import json

import pytest

from atari_vlm.cli import main
from atari_vlm.models.presets import Prices
from atari_vlm.models.registry import LoadedModel
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import PlaySettings, run_play
from atari_vlm.testing.openai_server import serve_in_thread

PRICES = Prices(input_per_mtok=2.5, output_per_mtok=10.0, date="test")


def priced_model(base_url):
    from atari_vlm.models.openai_compat import OpenAICompatVLM

    vlm = OpenAICompatVLM(model="m", base_url=base_url, api_key="k", backoff_base_s=0.01)
    return LoadedModel(vlm, "openai:m", "openai", prices=PRICES)


def play(tmp_path, base_url, **settings):
    defaults = {
        "game": "Pong",
        "out": tmp_path / "run",
        "episodes": 2,
        "env": {"max_steps": 10},
        "video": False,
    }
    return run_play(
        PlaySettings(**{**defaults, **settings}), loaded=priced_model(base_url), close_loaded=True
    )


def test_every_decision_episode_and_run_carries_its_cost(tmp_path):
    with serve_in_thread(reply="ACTION: FIRE") as server:
        summary = play(tmp_path, server.base_url)
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    for s in steps:
        assert s["cost_usd"] == pytest.approx((s["input_tokens"] * 2.5 + s["output_tokens"] * 10.0) / 1e6)
    episodes = read_jsonl(tmp_path / "run" / "episodes.jsonl")
    for e in episodes:
        mine = [s["cost_usd"] for s in steps if s["episode"] == e["episode"]]
        assert e["cost_usd"] == pytest.approx(sum(mine))
    assert summary.cost_usd == pytest.approx(sum(s["cost_usd"] for s in steps))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cost_usd"] == pytest.approx(
        summary.cost_usd
    )


def test_max_cost_stops_before_the_call_that_would_pass_it(tmp_path):
    with serve_in_thread(reply="ACTION: FIRE") as server:
        one_call = play(tmp_path / "probe", server.base_url, episodes=1, env={"max_steps": 1}).cost_usd
        limit = one_call * 13.5
        summary = play(tmp_path, server.base_url, max_cost_usd=limit)
        calls = len([r for r in server.requests if r.path.endswith("completions")])
    assert summary.stopped and summary.stopped.startswith("budget")
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    spent = sum(s["cost_usd"] for s in steps)
    assert spent <= limit  # overshoot is at most one call, and here the calls cost the same: none
    assert len(steps) == 13 and calls == 1 + 13
    assert [e["episode"] for e in read_jsonl(tmp_path / "run" / "episodes.jsonl")] == [0]


def test_dry_run_measures_one_decision_and_writes_nothing(tmp_path, capsys):
    with serve_in_thread(reply="ACTION: FIRE") as server:
        code = main(
            [
                "play",
                "--game",
                "Pong",
                "--model",
                "openai:m",
                "--base-url",
                server.base_url,
                "--api-key",
                "k",
                "--episodes",
                "3",
                "--max-steps",
                "50",
                "--dry-run",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        assert len(server.requests) == 1
    assert code == 0
    text = capsys.readouterr().out
    assert "one measured decision" in text and "no price is known" in text
    assert not (tmp_path / "run").exists()
