"""Costs in a real run: per decision, per episode, per run; --max-cost stops in time; --dry-run."""

import dataclasses
import json

import pytest

from atari_vlm.cli import main
from atari_vlm.models.presets import Prices
from atari_vlm.models.registry import LoadedModel
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec, SweepSpec
from atari_vlm.testing.openai_server import serve_in_thread

PRICES = Prices(input_per_mtok=2.5, output_per_mtok=10.0, date="test")


def priced_model(base_url):
    from atari_vlm.models.openai_compat import OpenAICompatVLM

    vlm = OpenAICompatVLM(model="m", base_url=base_url, api_key="k", backoff_base_s=0.01)
    return LoadedModel(vlm, "openai:m", "openai", prices=PRICES)


def play(tmp_path, base_url, **settings):
    defaults = {"game": "Pong", "model": "openai:m", "episodes": 2, "max_steps": 10, "video": False}
    spec = RunSpec.build(**{**defaults, **settings})
    return run_play(spec, tmp_path / "run", loaded=priced_model(base_url), close_loaded=True)


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
        one_call = play(tmp_path / "probe", server.base_url, episodes=1, max_steps=1).cost_usd
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


def priced_loader(base_url):
    """``load_model`` stand-in: every spec loads as the priced model behind ``base_url``."""
    return lambda spec: priced_model(base_url)


def test_bench_max_cost_caps_the_whole_sweep_and_a_rerun_finishes_it(tmp_path, monkeypatch):
    from atari_vlm.bench.sweep import BenchSpec, run_bench

    def spec(max_cost_usd):
        return BenchSpec(
            out=tmp_path / "bench",
            sweep=SweepSpec(games=("Pong", "Breakout"), models=("openai:m",), seeds=(0, 1)),
            settings={"max_steps": 10, "max_cost_usd": max_cost_usd},
        )

    with serve_in_thread(reply="ACTION: FIRE") as server:
        one_call = play(tmp_path / "probe", server.base_url, episodes=1, max_steps=1).cost_usd
        for where in ("atari_vlm.runner.load_model", "atari_vlm.bench.sweep.load_model"):
            monkeypatch.setattr(where, priced_loader(server.base_url))
        limit = one_call * 13.5
        run_bench(spec(limit))
        steps = [(p, s) for p in (tmp_path / "bench").rglob("steps.jsonl") for s in read_jsonl(p)]
        priced = [(p, s) for p, s in steps if s.get("cost_usd") is not None]
        assert sum(s["cost_usd"] for _, s in priced) <= limit and len(priced) == 13
        assert all("Pong" in str(p) for p, _ in priced)  # the sweep stopped there: Breakout never called
        run_bench(spec(one_call * 100))  # the same sweep again, with room to finish
    steps = [s for p in (tmp_path / "bench").rglob("steps.jsonl") for s in read_jsonl(p)]
    priced = [s for s in steps if s.get("cost_usd") is not None]
    assert len(priced) == 2 * 2 * 10  # 2 games x 2 seeds x 10 decisions, none counted twice


def test_train_max_cost_stops_in_time_and_resume_goes_on(tmp_path, monkeypatch):
    from atari_vlm.training import VLMTrainer

    with serve_in_thread(reply="ACTION: FIRE") as server:
        one_call = play(tmp_path / "probe", server.base_url, episodes=1, max_steps=1).cost_usd
        monkeypatch.setattr("atari_vlm.training.trainer.load_model", priced_loader(server.base_url))
        options = {"out_dir": tmp_path / "train", "eval_episodes": 1, "eval_every": 2, "max_steps": 5}
        limit = one_call * 7.5
        result = VLMTrainer("Pong", "openai:m", "basic", False, max_cost_usd=limit, **options).train(3)
        calls = len([r for r in server.requests if r.path.endswith("completions")]) - 1
        assert result.stopped and result.stopped.startswith("budget") and calls == 7
        summary = json.loads((tmp_path / "train" / "summary.json").read_text())
        assert summary["stopped"] == result.stopped
        resumed = VLMTrainer.resume(tmp_path / "train").train(3)
    assert resumed.stopped is None and len(resumed.episodes) == 3
    assert [row["episode"] for row in resumed.curve] == [0, 2, 3]


def test_dry_run_bounds_say_at_most_unless_every_episode_plays_its_full_budget(tmp_path):
    from atari_vlm.runner import estimate_cost

    with serve_in_thread(reply="ACTION: FIRE") as server:
        common = {"game": "Pong", "model": "openai:m", "base_url": server.base_url, "api_key": "k"}
        capped = estimate_cost(RunSpec.build(**common, episodes=3, max_steps=50))
        budget = {"total_env_steps": 100, "decision_interval": 2, "reset_on_game_over": True}
        fixed = estimate_cost(RunSpec.build(**common, episodes=2, **budget))
    assert (capped["decisions_bound"], capped["decisions"]) == ("at most", 150)  # a game over ends sooner
    assert (fixed["decisions_bound"], fixed["decisions"]) == ("exactly", 100)


def test_bench_max_cost_refuses_an_unpriced_model_before_spending_anything(tmp_path):
    from atari_vlm.bench.sweep import BenchSpec, run_bench
    from atari_vlm.errors import ConfigError

    with serve_in_thread(reply="ACTION: FIRE") as server:
        settings = {"max_steps": 3, "base_url": server.base_url, "api_key": "k", "max_cost_usd": 1.0}
        spec = BenchSpec(
            out=tmp_path / "bench",
            sweep=SweepSpec(games=("Pong",), models=("openai:m",), seeds=(0,)),  # behind --base-url: no price
            settings=settings,
        )
        with pytest.raises(ConfigError, match="known price"):
            run_bench(spec)
        assert not [r for r in server.requests if r.path.endswith("completions")]
        with pytest.raises(ConfigError, match="executor ray"):
            run_bench(dataclasses.replace(spec, settings={**settings, "executor": "ray"}))
    assert not list((tmp_path / "bench").rglob("steps.jsonl"))
