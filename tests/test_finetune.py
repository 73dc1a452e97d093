"""Fine-tuning a local VLM on demonstrations: play-time prompts, a falling loss, adapters that load and
play through ``--model <dir>``, and the trainer's expert-iteration rounds."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft", reason="fine-tuning needs the `finetune` extra (peft)")

from atari_vlm.errors import ConfigError
from atari_vlm.models import tiny

try:
    tiny.check_transformers()
except ConfigError as exc:  # the tiny families are pinned to the tested transformers range
    pytest.skip(str(exc), allow_module_level=True)

from atari_vlm.agent import VLMAgent
from atari_vlm.cli import main
from atari_vlm.env import make_env
from atari_vlm.games import game_info
from atari_vlm.memory import TrajectoryStore, demonstration_paths
from atari_vlm.models.base import Usage
from atari_vlm.models.local import LocalVLM, _Row, _to_chat
from atari_vlm.models.registry import load_model
from atari_vlm.models.tiny import TINY_FAMILIES, build_tiny_checkpoint
from atari_vlm.prompts.builder import PromptBuilder
from atari_vlm.record import record
from atari_vlm.rollout import EpisodeSeeds, play_episode
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec
from atari_vlm.training import VLMTrainer
from atari_vlm.training.finetune import _collate, _lora, _to_device, build_examples, finetune

SHAPE = (42, 32)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_tiny_checkpoint("llava", tmp_path_factory.mktemp("ckpt") / "llava")


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demos")
    # 40 decisions: past the serve, so the state texts (and prompt lengths) and actions vary.
    record("Pong", "expert", 2, root, seed=0, max_steps=40, env_options={"resize_shape": SHAPE})
    return root


def test_examples_are_the_prompts_played(base: Path, tmp_path: Path) -> None:
    """Play a few decisions with the model, capturing what it was fed; rebuild them from the record.

    The answers are legal actions, as in demonstrations: after an unparsable answer play adds a
    feedback line that a stored step does not record."""
    vlm = LocalVLM(base)
    fed: list[tuple[str, list[int]]] = []

    def capture(batch):
        for p in batch:
            ids = vlm.processor(text=[p.prompt], images=[p.images], return_tensors="pt")["input_ids"]
            fed.append((p.prompt, ids[0].tolist()))
        return [_Row("ACTION: RIGHT", Usage(), "stop") for _ in batch]

    vlm._generate_batch = capture  # type: ignore[method-assign]
    env = make_env("Pong", resize_shape=SHAPE, max_steps=3)
    agent = VLMAgent(vlm, PromptBuilder(game_info("Pong"), env.action_names))
    store = TrajectoryStore(tmp_path)
    sink = store.recorder("Pong", {"action_names": env.action_names, "episode_id": "played"})
    asyncio.run(play_episode(env, agent, episode=0, seeds=EpisodeSeeds(5, 5), sink=sink))
    env.close()

    trajectory = store.load("Pong", "played")
    examples = build_examples(vlm, [trajectory])
    assert [e.prompt for e in examples] == [prompt for prompt, _ in fed]
    assert [e.input_ids[: e.prompt_len] for e in examples] == [ids for _, ids in fed]
    # ... and the same text the chat template renders from the prompt builder's request directly.
    step = trajectory.steps[1]
    obs = {"image": trajectory.frames[1], "frames": trajectory.frames[1][None], "text": step.state_text}
    request = PromptBuilder(game_info("Pong"), env.action_names).request(obs)
    direct = vlm.processor.apply_chat_template(
        _to_chat(request.messages), add_generation_prompt=True, tokenize=False
    )
    assert examples[1].prompt == direct
    target = examples[1].input_ids[examples[1].prompt_len :]
    assert target[-1] == vlm.tokenizer.eos_token_id
    assert vlm.tokenizer.decode(target[:-1]) == f"ACTION: {step.action_name}"


def test_a_few_steps_lower_the_loss(base: Path, demos: Path) -> None:
    import torch

    torch.manual_seed(0)
    vlm = LocalVLM(base, dtype="float32")
    trajectories = [
        TrajectoryStore(demos).load("Pong", m.episode_id) for m in TrajectoryStore(demos).episodes("Pong")
    ]
    batch = _collate(build_examples(vlm, trajectories, max_examples=3), vlm.tokenizer.pad_token_id, torch)
    assert int((batch["labels"] != -100).sum()) > 0
    model = _lora(vlm.model, None, rank=8)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_adapter_saves_loads_and_plays(base: Path, demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    result = finetune(base, demos, out, epochs=1, batch_size=4, max_examples=8, top_k=1)
    assert result.steps == 2 and len(result.losses) == 2 and result.out_dir == out
    assert len(result.episodes) == 1  # top_k=1: the best episode only
    assert {"adapter_model.safetensors", "adapter_config.json", "chat_template.jinja"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "config.json").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == base.resolve()

    loaded = load_model(str(out))
    assert isinstance(loaded.vlm, LocalVLM) and loaded.vlm.base_path == base.resolve()
    tuned_weights = dict(loaded.vlm.model.named_parameters())
    base_weights = dict(LocalVLM(base).model.named_parameters())
    name = next(n for n in base_weights if "language_model" in n and n.endswith("q_proj.weight"))
    assert not tuned_weights[name].allclose(base_weights[name])  # the adapter was merged in
    asyncio.run(loaded.vlm.aclose())

    summary = run_play(
        RunSpec.build(game="Pong", model=str(out), resize_shape=SHAPE, max_steps=3, video=False),
        tmp_path / "run",
    )
    assert summary.episodes[0].decisions == 3

    again = finetune(out, demos, tmp_path / "continued", epochs=1, batch_size=8, max_examples=8)
    assert again.steps == 1  # an adapter directory continues its adapter


def test_full_finetune_writes_a_checkpoint(base: Path, demos: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    finetune(base, demos, out, lora=False, batch_size=8, max_examples=8)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    asyncio.run(LocalVLM(out).aclose())


def test_bad_requests_are_refused(base: Path, demos: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an empty directory"):
        finetune(base, demos, demos)
    with pytest.raises(ConfigError, match="no trajectories"):
        finetune(base, tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ConfigError, match="epochs"):
        finetune(base, demos, tmp_path / "out", epochs=0)
    with pytest.raises(ConfigError, match="holds Pong episodes, not Breakout"):
        finetune(base, demos / "Pong", tmp_path / "out", game="Breakout")
    adapter = tmp_path / "orphan"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/remote-model"}))
    with pytest.raises(ConfigError, match="not a local checkpoint"):
        LocalVLM(adapter)


def test_trainer_finetune_every_runs_a_round(base: Path, demos: Path, tmp_path: Path) -> None:
    demo_files = [p for p in (demos / "Pong").iterdir() if p.is_dir()]
    trainer = VLMTrainer(
        "Pong",
        str(base),
        out_dir=tmp_path / "run",
        eval_every=2,
        eval_episodes=1,
        max_steps=3,
        env_options={"resize_shape": SHAPE},
        demonstrations=demo_files,
        finetune_every=1,
        finetune_options={"max_examples": 8, "batch_size": 8},
    )
    result = trainer.train(2)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert [r["episode"] for r in state["finetune_rounds"]] == [1]  # after episode 1, not at the end
    assert (tmp_path / "run" / "finetune" / "round-001" / "adapter_model.safetensors").is_file()
    assert [row["finetune_round"] for row in result.curve] == [0, 1]
    with pytest.raises(ConfigError, match="random agent has no weights"):
        VLMTrainer("Pong", "random", out_dir=tmp_path / "r", finetune_every=1)


# --- every family the local backend loads -----------------------------------------------------------


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: build_tiny_checkpoint(family, root / family) for family in TINY_FAMILIES}


def _trajectories(demos: Path) -> list:
    store = TrajectoryStore(demos)
    return [store.load("Pong", m.episode_id) for m in store.episodes("Pong")]


def _loss(model, batch: dict, torch) -> float:
    with torch.no_grad():
        return float(model(**_to_device(batch, model)).loss)


@pytest.fixture(scope="module")
def native_demos(tmp_path_factory) -> Path:
    """Expert steps at the native 210x160: more image patches (Qwen) than the 42x32 ones."""
    root = tmp_path_factory.mktemp("native")
    record("Pong", "expert", 1, root, seed=1, max_steps=20)
    return root


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_padded_batch_is_each_example_alone(
    bases: dict[str, Path], demos: Path, native_demos: Path, family: str
) -> None:
    """Right padding, per-token processor outputs and image tensors collate per family: every row's
    logits in a batch of prompts of different lengths and frame sizes are those of the example alone."""
    import torch

    vlm = LocalVLM(bases[family], dtype="float32")
    small = build_examples(vlm, _trajectories(demos), max_examples=4, seed=1)
    native = build_examples(vlm, _trajectories(native_demos), max_examples=4, seed=1)
    batch = [small[0], next(e for e in native if len(e.input_ids) != len(small[0].input_ids)), small[1]]
    pad = vlm.tokenizer.pad_token_id
    with torch.no_grad():
        together = vlm.model(**_to_device(_collate(batch, pad, torch), vlm.model)).logits
        for row, example in enumerate(batch):
            alone = vlm.model(**_to_device(_collate([example], pad, torch), vlm.model)).logits[0]
            n = len(example.input_ids)
            assert torch.allclose(together[row, :n], alone, atol=1e-4), (family, row)
    asyncio.run(vlm.aclose())


def test_image_inputs_of_different_sizes_are_zero_padded_then_concatenated() -> None:
    """As the processors batch them: LLaVA-NeXT's patches, Idefics' images and pixel masks."""
    import torch

    from atari_vlm.training.finetune import _stack_images

    a, b = torch.ones(1, 2, 3, 4, 5), torch.full((1, 3, 3, 4, 6), 2.0)
    stacked = _stack_images([a, b], "pixel_values", torch)
    assert stacked.shape == (2, 3, 3, 4, 6)
    assert (
        stacked[0, :2, :, :, :5].eq(1).all() and stacked[0, 2].eq(0).all() and stacked[0, ..., 5].eq(0).all()
    )
    assert stacked[1].eq(2).all()
    patches = _stack_images([torch.ones(24, 8), torch.ones(48, 8)], "pixel_values", torch)  # Qwen
    assert patches.shape == (72, 8)
    assert _stack_images([[1], [2, 3]], "sizes", torch) == [1, 2, 3]
    with pytest.raises(ConfigError, match="cannot batch"):
        _stack_images([torch.ones(2, 2), "text"], "odd", torch)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_learns_saves_loads_and_plays(
    bases: dict[str, Path], demos: Path, tmp_path: Path, family: str, lora: bool
) -> None:
    """A few optimizer steps on expert Pong steps lower the loss; the saved adapter (or checkpoint)
    loads back through ``--model <dir>`` with the trained weights and plays a real decision."""
    import torch

    out = tmp_path / "tuned"
    options = {"max_examples": 2, "seed": 3, "top_k": None}
    result = finetune(
        bases[family], demos, out, lora=lora, epochs=4, batch_size=2, lr=1e-2 if lora else 3e-3, **options
    )
    assert result.steps == 4 and result.examples == 2  # one batch of both, four times over
    assert result.losses[-1] < result.losses[0] - 0.3, result.losses
    assert result.wall_s > result.train_s > 0 and result.cpu_s > 0
    files = {p.name for p in out.iterdir()}
    assert ("adapter_model.safetensors" in files) is lora and ("config.json" in files) is not lora
    assert "atari_vlm_demo.json" not in files  # trained: not the random-weights marker

    loaded = load_model(str(out))
    vlm = loaded.vlm
    assert isinstance(vlm, LocalVLM) and loaded.random_weights is False
    # The weights that play are the trained ones: the loss on the same examples has fallen as well.
    batch = _collate(
        build_examples(vlm, _trajectories(demos), **{k: options[k] for k in ("max_examples", "seed")}),
        vlm.tokenizer.pad_token_id,
        torch,
    )
    assert _loss(vlm.model, batch, torch) < result.losses[0] - 0.3

    env = make_env("Pong", resize_shape=SHAPE, max_steps=1)
    agent = VLMAgent(vlm, PromptBuilder(game_info("Pong"), env.action_names))
    played = asyncio.run(play_episode(env, agent, episode=0, seeds=EpisodeSeeds(7, 7)))
    env.close()
    assert played.decisions == 1 and played.usage.input_tokens > 0
    asyncio.run(vlm.aclose())


# --- the command line: the folder `record` prints, `--model demo`, progress and time -----------------


def test_record_then_train_and_finetune_on_the_folder_it_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    record_args = ["record", "--game", "Pong", "--out", "demos", "--max-steps", "24", "--resize", "42x32"]
    assert main(record_args) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1].rsplit(" in ", 1)[1]
    assert folder == str(Path("demos") / "Pong")
    episode = next(Path(folder).iterdir())
    # The root, the game folder and the episode name the same recorded episode.
    assert demonstration_paths("demos", "Pong") == demonstration_paths(folder, "Pong") == [episode]
    assert demonstration_paths(episode, "Pong") == [episode]

    train = ["train", "--game", "Pong", "--vlm", "random", "--episodes", "1", "--max-steps", "3"]
    assert main([*train, "--demo", folder, "--out", "run", "--eval-every", "1"]) == 0
    imported = TrajectoryStore("run/memory").episodes("Pong")
    assert [(m.source, m.steps) for m in imported if m.source == "demo"] == [("demo", 24)]
    capsys.readouterr()
    assert main([*train, "--demo", "demos/Breakout", "--out", "bad"]) == 2
    error = capsys.readouterr().err
    assert "no demonstrations at demos/Breakout" in error and "demos/Pong" in error
    assert not Path("bad").exists()  # refused before the run directory was made

    assert main(["finetune", "--model", "demo", "--data", folder, "--out", "tuned", "--batch-size", "6"]) == 0
    captured = capsys.readouterr()
    assert "24 examples, 4 optimizer steps" in captured.err
    steps = re.findall(r"step (\d+)/4: loss ([\d.]+)", captured.err)
    assert [int(s) for s, _ in steps] == [1, 2, 3, 4]  # one line per step when not a terminal
    record = json.loads(Path("tuned/atari_vlm_finetune.json").read_text())
    assert [f"{x:.4f}" for x in record["losses"]] == [loss for _, loss in steps]
    wall = float(re.search(r"; ([\d.]+) s wall", captured.out).group(1))
    assert wall >= record["train_s"] > 0  # the whole command's time, not "0 s"
    assert Path(record["base"]).name.startswith("demo-llava")  # `demo` is the demo checkpoint
    assert load_model("tuned").random_weights is False


def test_tiny_families_are_pinned_to_the_tested_transformers(
    bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import transformers

    installed = transformers.__version__
    assert tiny.check_transformers() == installed
    marker = json.loads((bases["qwen2_vl"] / "atari_vlm_demo.json").read_text())
    assert marker["transformers"] == installed and marker["transformers_tested"] == tiny.tested_range()
    # pyproject's `local` extra pins the same range the tiny families are tested with.
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"transformers{tiny.tested_range()}"' in pyproject
    low, high = tiny.TRANSFORMERS_TESTED
    for version in ("4.57.1", f"{high}.0.0", "not-a-version"):
        monkeypatch.setattr(transformers, "__version__", version)
        with pytest.raises(ConfigError, match=re.escape(f"tested with transformers >={low},<{high}")):
            build_tiny_checkpoint("llava", tmp_path / version)
        assert not (tmp_path / version).exists()
    monkeypatch.setattr(transformers, "__version__", low)
    assert tiny.check_transformers() == low
