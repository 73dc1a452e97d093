"""The trainer: learning curves on fixed evaluation seeds, the random baseline beside them, exemplars
from the memory in the requests, and a resume after an interruption that continues where it stopped."""

from __future__ import annotations

import csv
import importlib.machinery
import json
import sys
import types

import pytest

from atari_vlm.errors import ConfigError
from atari_vlm.memory import TrajectoryStore
from atari_vlm.models.base import Completion, ImagePart, Request, TextPart, Usage
from atari_vlm.rollout import episode_seeds
from atari_vlm.rundir import read_jsonl
from atari_vlm.training import VLMTrainer, trainer
from atari_vlm.training.trainer import CURVE_FIELDS, train_episode_id

# Small frames and 8-frame decisions: Pong's first point (-1 for a still paddle) comes near step 30.
ENV = {"resize_shape": (48, 48), "frame_skip": 8}
STEPS = 40


class FakeVLM:
    """Answers FIRE, keeps the requests, and fails on call ``fail_on`` (an outage mid-run)."""

    name = "fake"

    def __init__(self, fail_on: int | None = None):
        self.fail_on = fail_on
        self.calls = 0
        self.requests: list[Request] = []

    async def generate(self, request: Request) -> Completion:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("the model went away")
        self.requests.append(request)
        return Completion("I will serve. ACTION: FIRE", Usage(10, 3), latency_s=0.001, model=self.name)

    async def aclose(self) -> None:
        pass


def episodes_logged(out):
    return [r["episode"] for r in read_jsonl(out / "episodes.jsonl")]


def memory_ids(out):
    return sorted(m.episode_id for m in TrajectoryStore(out / "memory").episodes("Pong"))


def exemplar_texts(request: Request) -> list[str]:
    parts = request.messages[-1].parts
    return [p.text for p in parts if isinstance(p, TextPart) and p.text.startswith("Example ")]


def test_random_agent_training_writes_the_learning_curve_and_the_memory(tmp_path, monkeypatch):
    logged = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            logged.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            logged.append("closed")

    fake_tb = types.ModuleType("tensorboardX")
    fake_tb.__spec__ = importlib.machinery.ModuleSpec("tensorboardX", None)
    fake_tb.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "tensorboardX", fake_tb)
    out = tmp_path / "run"
    seeds = (10_000, 10_001)
    result = VLMTrainer(
        "Pong-v5", "random", out_dir=out, eval_every=2, eval_seeds=seeds, max_steps=30, env_options=ENV
    ).train(3)

    rows = read_jsonl(out / "learning_curve.jsonl")
    assert [r["episode"] for r in rows] == [0, 2, 3] and rows == result.curve
    assert all(set(r) == set(CURVE_FIELDS) for r in rows)
    # The trained agent is the random agent here, so it plays exactly as the baseline on the same seeds.
    assert all(r["eval_mean_return"] == r["random_mean_return"] for r in rows)
    assert all(len(r["eval_returns"]) == 2 and r["n_exemplars"] == 0 for r in rows)
    assert rows[0]["train_return"] is None and rows[1]["train_return"] == pytest.approx(
        (result.episodes[0].episode_return + result.episodes[1].episode_return) / 2
    )
    assert rows[2]["train_return"] == result.episodes[2].episode_return
    with open(out / "learning_curve.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(r["episode"]) for r in table] == [0, 2, 3] and list(table[0]) == list(CURVE_FIELDS)
    assert (
        table[0]["train_return"] == "" and float(table[1]["eval_mean_return"]) == rows[1]["eval_mean_return"]
    )

    evaluations = read_jsonl(out / "evaluations.jsonl")
    assert [(e["at_episode"], e["seed"]) for e in evaluations] == [(p, s) for p in (0, 2, 3) for s in seeds]
    assert all(e["steps"] == 30 for e in evaluations)
    assert episodes_logged(out) == [0, 1, 2]
    steps = read_jsonl(out / "steps.jsonl")
    assert len(steps) == 90 and {s["episode"] for s in steps} == {0, 1, 2}  # training steps only
    assert memory_ids(out) == ["train-000000", "train-000001", "train-000002"]
    train_seeds = episode_seeds(0, 3)
    for i, meta in enumerate(
        sorted(TrajectoryStore(out / "memory").episodes("Pong"), key=lambda m: m.episode_id)
    ):
        assert meta.seed == train_seeds[i].env and meta.episode_return == result.episodes[i].episode_return
    config = json.loads((out / "config.json").read_text())
    spec = config["spec"]
    assert (config["kind"], spec["env"]["game"], spec["agent"]) == ("train", "Pong", "random")
    assert spec["episodes"] == 3
    assert spec["train"]["eval_seeds"] == list(seeds) and spec["train"]["eval_every"] == 2
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["episodes_done"] == 3 and state["curve"] == rows
    assert ("eval/mean_return", rows[1]["eval_mean_return"], 2) in logged and logged[-1] == "closed"
    assert not any(t == "train/mean_return" and step == 0 for t, _, step in logged[:-1])


def test_icl_exemplars_appear_once_the_memory_has_key_moments(tmp_path, monkeypatch):
    baselines = []
    real = trainer.play_episodes

    async def counting(make_worker, **options):
        if options.get("env_seeds") is not None:  # an evaluation (training episodes derive their seeds)
            baselines.append(options["uses_model"])
        return await real(make_worker, **options)

    monkeypatch.setattr(trainer, "play_episodes", counting)
    model = FakeVLM()
    out = tmp_path / "icl"
    result = VLMTrainer(
        "Pong",
        model,
        "cot",
        True,
        out_dir=out,
        eval_every=1,
        eval_seeds=(10_000,),
        max_steps=STEPS,
        env_options=ENV,
    ).train(2)
    assert baselines == [False, True, True, True]  # the random baseline once, then one evaluation per point
    rows = result.curve
    assert [r["episode"] for r in rows] == [0, 1, 2] and rows[0]["n_exemplars"] == 0
    assert rows[1]["n_exemplars"] >= 1 and result.random_returns == [rows[0]["random_mean_return"]]
    # Evaluation at 0 and episode 0 see an empty memory; evaluation at 1 and episode 1 see episode 0;
    # the evaluation at 2 sees both.
    first, later, last = (model.requests[i * STEPS : (i + 2) * STEPS] for i in (0, 2, 4))
    assert len(model.requests) == 5 * STEPS and len(last) == STEPS
    assert all(r.num_images == 1 and not exemplar_texts(r) for r in first)
    assert all(r.num_images == 1 + rows[1]["n_exemplars"] for r in later)
    assert all(r.num_images == 1 + rows[2]["n_exemplars"] for r in last)
    texts = exemplar_texts(later[0])
    assert any("before scoring -1: avoid this; FIRE led to it" in t for t in texts), texts
    stored = TrajectoryStore(out / "memory").load("Pong", "train-000000").frames
    shown = [p.pixels for p in later[0].messages[-1].parts if isinstance(p, ImagePart)][:-1]
    assert all(any((img == f).all() for f in stored) for img in shown)  # exemplars are remembered frames


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    out = tmp_path / "resume"
    settings = dict(out_dir=out, eval_every=2, eval_seeds=(10_000,), max_steps=STEPS, env_options=ENV)
    # Calls: evaluation at 0 (40), episode 0 (40), then episode 1 fails at its 15th decision.
    broken = FakeVLM(fail_on=95)
    with pytest.raises(RuntimeError, match="went away"):
        VLMTrainer("Pong", broken, "basic", True, **settings).train(4)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["episodes_done"] == 1 and [r["episode"] for r in state["curve"]] == [0]
    assert episodes_logged(out) == [0] and memory_ids(out) == ["train-000000"]
    # A crash after an episode was stored but before it was logged leaves it in the memory alone.
    store = TrajectoryStore(out / "memory")
    orphan = store.recorder("Pong", {"episode_id": "train-000001", "action_names": ["NOOP", "FIRE"]})
    orphan.add(store.load("Pong", "train-000000").frames[0], "s", 1, "FIRE", 5.0, 0)
    orphan.finish(5.0)

    with pytest.raises(ConfigError, match="pass it again"):
        VLMTrainer.resume(out)
    with pytest.raises(ConfigError, match="differ from the recorded run: prompt basic -> cot"):
        VLMTrainer("Pong", FakeVLM(), "cot", True, **settings).train(4, resume=True)

    model = FakeVLM()
    result = VLMTrainer.resume(out, vlm_type=model).train(4)
    assert model.calls == STEPS * 3 + STEPS * 2  # episodes 1, 2, 3 and evaluations at 2 and 4: none twice
    assert [e.episode for e in result.episodes] == [0, 1, 2, 3]
    assert episodes_logged(out) == [0, 1, 2, 3]
    steps = read_jsonl(out / "steps.jsonl")
    assert [sum(s["episode"] == i for s in steps) for i in range(4)] == [STEPS] * 4
    assert memory_ids(out) == [train_episode_id(i) for i in range(4)]
    seeds = episode_seeds(0, 4)
    metas = sorted(TrajectoryStore(out / "memory").episodes("Pong"), key=lambda m: m.episode_id)
    assert [m.seed for m in metas] == [s.env for s in seeds] and all(m.steps == STEPS for m in metas)
    assert [r["episode"] for r in read_jsonl(out / "learning_curve.jsonl")] == [0, 2, 4]
    assert json.loads((out / "trainer_state.json").read_text())["episodes_done"] == 4
    assert [e["at_episode"] for e in read_jsonl(out / "evaluations.jsonl")] == [0, 2, 4]

    # Asking for what is done plays nothing; asking for more continues the numbering.
    idle = FakeVLM()
    assert len(VLMTrainer.resume(out, vlm_type=idle).train(4).episodes) == 4 and idle.calls == 0
    more = FakeVLM()
    assert [e.episode for e in VLMTrainer.resume(out, vlm_type=more).train(5).episodes] == [0, 1, 2, 3, 4]
    assert more.calls == 2 * STEPS and episodes_logged(out) == [0, 1, 2, 3, 4]  # episode 4, evaluation at 5
    assert [r["episode"] for r in read_jsonl(out / "learning_curve.jsonl")] == [0, 2, 4, 5]


def test_a_finished_run_is_not_overwritten_unless_asked(tmp_path):
    out = tmp_path / "r"
    settings = dict(out_dir=out, eval_every=5, eval_seeds=(10_000,), max_steps=5, env_options=ENV)
    VLMTrainer("Pong", "random", **settings).train(1)
    with pytest.raises(ConfigError, match="already holds a run"):
        VLMTrainer("Pong", "random", **settings).train(1)
    VLMTrainer("Pong", "random", overwrite=True, **settings).train(1)
    assert memory_ids(out) == ["train-000000"] and episodes_logged(out) == [0]


def test_similar_strategy_retrieves_exemplars_for_each_decision(tmp_path):
    model = FakeVLM()
    VLMTrainer(
        "Pong",
        model,
        use_in_context_learning=True,
        out_dir=tmp_path / "sim",
        eval_every=2,
        eval_seeds=(10_000,),
        max_steps=10,
        image_budget=2,
        exemplar_strategy="similar",
        env_options=ENV,
    ).train(2)
    # evaluation at 0 and episode 0 see an empty memory; episode 1 and the last evaluation see 2 frames
    assert [r.num_images for r in model.requests] == [1] * 20 + [3] * 20
    assert all(len(exemplar_texts(r)) == 2 for r in model.requests[20:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vlm_type": "random", "use_in_context_learning": True}, "in-context learning needs a model"),
        ({"eval_seeds": (1, 1)}, "distinct"),
        ({"eval_seeds": (1, 2), "eval_episodes": 3}, "eval_episodes=3 but 2 eval_seeds"),
        ({"env_options": {"max_steps": 3}}, "may not set \\['max_steps'\\]"),
        ({"env_options": {"colour": True}}, "unknown env option"),
        ({"prompt_type": "no-such-style"}, "prompt"),
        ({"exemplar_strategy": "best"}, "exemplars must be one of key_moments, similar"),
        ({"agent_options": {"top_p": 1}}, "unknown agent option"),
        ({"model_options": {"nope": 1}}, "bad model_options"),
        ({"finetune_options": {"warmup": 1}}, "unknown finetune option"),
        ({"eval_every": 0}, "eval_every must be"),
        ({"game_name": "Pongg"}, "unknown game"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    settings = {"game_name": "Pong", "vlm_type": "random", "out_dir": tmp_path / "x", **kwargs}
    with pytest.raises(ConfigError, match=message):
        VLMTrainer(**settings)
    assert not (tmp_path / "x").exists()


def test_resume_needs_a_training_run(tmp_path):
    with pytest.raises(ConfigError, match="nothing to resume"):
        VLMTrainer.resume(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"game": "Pong"}))
    with pytest.raises(ConfigError, match="holds no training run"):
        VLMTrainer.resume(tmp_path)


@pytest.mark.slow
def test_the_demo_model_trains_end_to_end(tmp_path):
    result = VLMTrainer(
        "Pong-v5",
        "demo",
        "basic",
        True,
        out_dir=tmp_path / "demo",
        eval_every=1,
        eval_seeds=(10_000,),
        max_steps=3,
        max_tokens=4,
        env_options={"resize_shape": (32, 32)},
    ).train(1)
    assert [r["episode"] for r in result.curve] == [0, 1] and len(result.episodes) == 1
    assert json.loads((tmp_path / "demo" / "config.json").read_text())["model"]["random_weights"] is True


def test_the_trainers_random_baseline_is_the_benchs_on_the_same_seeds(tmp_path):
    """One rule turns an env seed into an episode's seeds (env and agent), in train and in bench."""
    from atari_vlm.runner import run_play
    from atari_vlm.spec import RunSpec

    seeds = (10_000, 10_001, 10_002)
    result = VLMTrainer(
        "Pong",
        "random",
        out_dir=tmp_path / "t",
        eval_every=1,
        eval_seeds=seeds,
        max_steps=250,
        env_options=ENV,
    ).train(1)
    spec = RunSpec.build(
        game="Pong", agent="random", env_seeds=seeds, episodes=3, max_steps=250, video=False, **ENV
    )
    summary = run_play(spec, tmp_path / "b")
    assert result.random_returns == [e.episode_return for e in summary.episodes]
    actions = {s["episode"]: [] for s in read_jsonl(tmp_path / "b" / "steps.jsonl")}
    for s in read_jsonl(tmp_path / "b" / "steps.jsonl"):
        actions[s["episode"]].append(s["action"])
    assert len({tuple(a) for a in actions.values()}) == 3  # each seed its own random actions
