"""Fair science: protocols as the papers ran them, what the model observes as a setting, reference
agents beside the models, stuck episodes, and sweeps that check everything before they play and grow
without replaying anything (issue 14)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from atari_vlm.bench.protocols import with_protocol
from atari_vlm.bench.results import build_results
from atari_vlm.bench.sweep import BenchSpec, plan, run_bench
from atari_vlm.cli import main
from atari_vlm.env import AtariVLMEnv
from atari_vlm.errors import ConfigError
from atari_vlm.models.base import Completion, ImagePart, Request, TextPart, Usage
from atari_vlm.rundir import read_jsonl
from atari_vlm.spec import RunSpec, SweepSpec
from atari_vlm.workers import vlm_agent


class Scripted:
    """Answers from a list, keeping every request."""

    name = "scripted"

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.requests: list[Request] = []

    async def generate(self, request: Request) -> Completion:
        self.requests.append(request)
        return Completion(self.answers.pop(0), Usage(100, 10), latency_s=0.5, cost_usd=0.001)

    async def aclose(self) -> None:
        pass


def _texts(request: Request, role: str = "user") -> str:
    return "\n".join(
        p.text for m in request.messages if m.role == role for p in m.parts if isinstance(p, TextPart)
    )


def test_the_atari_gpt_protocol_shows_what_the_papers_models_saw():
    """Screen only (no RAM text), the previous frame and answer beside the current one, 512x512 frames,
    JSON answers, free decoding at temperature 1, and an invalid answer asked again up to 3 times."""
    settings = with_protocol({"protocol": "atari-gpt", "model": "m"}, set())
    spec = RunSpec.build(game="Pong", **settings)
    env = AtariVLMEnv(spec.env, spec.observation)
    model = Scripted(['{"reasoning": "r", "action": "FIRE"}', "nonsense", "more nonsense", '{"action": 3}'])
    agent = vlm_agent(spec, env.action_names, model)

    async def two_decisions():
        obs, _ = env.reset(seed=0)
        first = await agent.act(obs)
        obs, *_ = env.step(first.action)
        return first, await agent.act(obs)

    first, second = asyncio.run(two_decisions())
    env.close()
    assert first.action_name == "FIRE" and second.action_name == "LEFT"
    assert (
        second.reprompts == 2 and second.usage.input_tokens == 300 and second.cost_usd == pytest.approx(0.003)
    )
    opening, *_, last = model.requests
    assert [p.pixels.shape for p in opening.messages[1].parts if isinstance(p, ImagePart)] == [(512, 512, 3)]
    assert len(last.messages[1].images) == 2  # the previous screen and the current one
    for request in model.requests:
        assert "Game state" not in _texts(request) and "y=" not in _texts(request)  # no RAM text
        assert request.json_mode and request.decode == "free" and request.temperature == 1.0
    assert "Answer again" in _texts(model.requests[2])  # nothing was played yet: asked again
    assert "game playing assistant" in opening.messages[0].parts[0].text  # the paper's prompt


def test_a_protocol_refuses_a_setting_it_fixes_otherwise():
    with pytest.raises(ConfigError, match=r"fixes settings given otherwise: state_text=True"):
        with_protocol({"protocol": "atari-gpt", "state_text": True}, {"state_text"})
    assert (
        with_protocol({"protocol": "atari-gpt", "state_text": False}, {"state_text"})["state_text"] is False
    )
    with pytest.raises(ConfigError, match="so --observations cannot sweep it"):
        plan(
            BenchSpec(
                Path("x"),
                SweepSpec(games=("Pong",), models=("demo",), observations=("screen", "text")),
                {"protocol": "atari-gpt"},
            )
        )


def test_what_the_model_observes_is_a_factor_of_a_sweep(tmp_path):
    sweep = SweepSpec(games=("Pong",), models=("demo",), observations=("screen", "screen+text"), seeds=(0,))
    combos, _, _ = plan(BenchSpec(tmp_path, sweep, {"max_steps": 3}))
    models = [c for c in combos if c.agent == "vlm"]
    assert [(c.spec.observation.screen, c.spec.observation.state_text) for c in models] == [
        (True, False),
        (True, True),
    ]
    assert len({c.out for c in models}) == 2 and models[0].spec.fingerprint() != models[1].spec.fingerprint()


def test_a_sweep_checks_every_model_and_prompt_before_its_first_step(tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "bench",
        "--games",
        "Pong",
        "--models",
        "demo,gpt-9",
        "--seeds",
        "0",
        "--max-steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the sweep was not started" in err and "gpt-9" in err
    assert not out.exists()  # nothing written: not even demo's runs
    bad = tmp_path / "broken.txt"
    bad.write_text("Play ${nonsense}")
    args = ["bench", "--games", "Pong", "--models", "demo", "--prompts", f"basic,{bad}", "--seeds", "0"]
    assert main([*args, "--out", str(out)]) == 2
    assert "unknown or malformed variable" in capsys.readouterr().err and not out.exists()


def test_a_sweep_grows_by_seeds_replaying_nothing(tmp_path):
    sweep = SweepSpec(games=("Breakout",), models=("demo",), seeds=(0, 1))
    run_bench(BenchSpec(tmp_path, sweep, {"max_steps": 4, "max_tokens": 2}))
    random_run = tmp_path / "Breakout" / "random"
    first = read_jsonl(random_run / "steps.jsonl")
    assert sorted({s["episode"] for s in first}) == [0, 1]
    grown = SweepSpec(games=("Breakout",), models=("demo",), seeds=(0, 1, 2))
    run_bench(BenchSpec(tmp_path, grown, {"max_steps": 4, "max_tokens": 2}))
    steps = read_jsonl(random_run / "steps.jsonl")
    assert steps[: len(first)] == first  # the first two episodes were kept, not replayed
    assert [e["seed"] for e in read_jsonl(random_run / "episodes.jsonl")] == [0, 1, 2]
    demo = read_jsonl(tmp_path / "Breakout" / "demo" / "basic" / "episodes.jsonl")
    assert [e["episode"] for e in demo] == [0, 1, 2]
    # A setting that changes play still blocks the same sweep, for every run, before anything plays.
    with pytest.raises(ConfigError, match=r"the sweep was not started.*max_steps 4 -> 5"):
        run_bench(BenchSpec(tmp_path, grown, {"max_steps": 5, "max_tokens": 2}))


def test_the_expert_and_the_random_agent_stand_beside_every_model(tmp_path):
    sweep = SweepSpec(games=("Pong",), models=("demo",), seeds=(0, 1))
    results = run_bench(BenchSpec(tmp_path, sweep, {"max_steps": 30, "max_tokens": 2}))
    (row,) = [r for r in results["rows"] if r["agent"] == "vlm"]
    expert = read_jsonl(tmp_path / "Pong" / "expert" / "episodes.jsonl")
    assert row["expert_same_seeds"]["mean_return"] == pytest.approx(np.mean([e["return"] for e in expert]))
    assert row["random_same_seeds"]["episodes"] == 2
    text = (tmp_path / "results" / "results.md").read_text()
    assert "expert, same seeds" in text and "\u2020" in text  # 2 seeds: flagged as too few


def test_a_stuck_episode_ends_and_is_counted(tmp_path):
    """Breakout never launches without FIRE: an agent that only answers NOOP sees a frozen screen."""
    from atari_vlm.runner import run_play

    spec = RunSpec.build(game="Breakout", model="m", stuck_decisions=20, video=False, max_pool=False)
    noop = Scripted(["ACTION: NOOP"] * 500)
    from atari_vlm.models.registry import LoadedModel

    summary = run_play(spec, tmp_path / "run", loaded=LoadedModel(noop, "m", "test"), close_loaded=True)
    (episode,) = summary.episodes
    assert episode.stuck and episode.truncated and not episode.terminated
    assert 20 <= episode.steps <= 30 and len(noop.requests) == episode.steps  # stopped billing at once
    record = read_jsonl(tmp_path / "run" / "episodes.jsonl")[0]
    assert record["stuck"] is True
    row = build_results([tmp_path / "run"], reps=100)["rows"][0]
    assert row["stuck_episodes"] == 1 and row["truncated_episodes"] == 0


def test_seeds_default_to_at_least_five(tmp_path):
    _, _, seeds = plan(BenchSpec(tmp_path, SweepSpec(games=("Pong",), models=("demo",))))
    assert seeds == (0, 1, 2, 3, 4)


def test_every_protocol_check_is_recorded_in_config(tmp_path):
    settings = with_protocol(
        {"protocol": "atari-gpt", "agent": "random", "max_steps": 2, "video": False}, set()
    )
    from atari_vlm.runner import run_play

    run_play(RunSpec.build(game="Pong", **settings), tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["protocol"]["name"] == "atari-gpt" and len(config["protocol"]["checks"]) >= 10
    assert config["spec"]["observation"]["state_text"] is False
