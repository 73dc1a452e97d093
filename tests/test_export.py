"""Data export: real runs and a real trajectory memory become a Hugging Face-style folder or a Minari
dataset, filtered by return, written atomically, and readable by the libraries they are meant for."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atari_vlm import export
from atari_vlm.agent import RandomAgent
from atari_vlm.env import make_env
from atari_vlm.errors import ConfigError, DependencyNotInstalled
from atari_vlm.export import HF_FEATURES, default_dataset_id, export_hf, export_minari
from atari_vlm.memory import TrajectoryStore
from atari_vlm.rollout import play_episodes
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec
from atari_vlm.video import read_native_frames

PONG = {"game": "Pong", "resize_shape": (48, 48), "frame_skip": 8, "max_steps": 20}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "pong-random"
    run_play(RunSpec.build(game="Pong", agent="random", episodes=2, max_steps=20), out)
    return out


@pytest.fixture(scope="module")
def memory(tmp_path_factory) -> Path:
    """Pong memory: two real episodes recorded through the play loop's sink (return 0, 20 steps), plus
    'best' (return 2, 5 steps) and 'worst' (return -1, 3 steps), whose frame i is filled with 10 + i."""
    root = tmp_path_factory.mktemp("memory")
    store = TrajectoryStore(root)
    names = make_env(**PONG).action_names

    def make_worker():
        env = make_env(**PONG)
        return env, RandomAgent(env.action_names)

    def sink(i, seeds):
        return store.recorder("Pong", {"episode_id": f"ep{i}", "seed": seeds.env, "action_names": names})

    asyncio.run(play_episodes(make_worker, episodes=2, root_seed=3, uses_model=False, make_sink=sink))
    for episode_id, rewards in (("best", [0.0, 0.0, 1.0, 0.0, 1.0]), ("worst", [0.0, -1.0, 0.0])):
        recorder = store.recorder("Pong", {"episode_id": episode_id, "action_names": names, "model": "m"})
        for i, r in enumerate(rewards):
            recorder.add(np.full((48, 48, 3), 10 + i, np.uint8), f"state {i}", i % 6, names[i % 6], r, 0)
        recorder.finish(sum(rewards))
    return root / "Pong"


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --- Hugging Face folder ----------------------------------------------------------------------------


def test_a_run_becomes_one_row_per_decision_with_replayed_frames_and_state_text(run_dir, tmp_path):
    out = export_hf(run_dir, tmp_path / "hf")
    rows = rows_of(out)
    steps = read_jsonl(run_dir / "steps.jsonl")
    assert len(rows) == len(steps) == 40
    assert all(list(r) == list(HF_FEATURES) for r in rows)
    assert len({r["id"] for r in rows}) == 40
    for row, step in zip(rows, sorted(steps, key=lambda s: (s["episode"], s["step"])), strict=True):
        assert row["episode"] == f"episode_{step['episode']:04d}" and row["step"] == step["step"]
        assert (row["action"], row["action_name"], row["reward"]) == (
            step["action"],
            step["action_name"],
            step["reward"],
        )
        assert row["action_names"] == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
        assert row["done"] == (row["step"] == 20)
        assert row["state_text"].startswith("Your paddle")  # recovered by the verified replay
        assert (row["answer"], row["model"], row["game"]) == (None, "random", "Pong")
        assert row["source"] == f"run:pong-random/{row['episode']}"
        assert row["image"] == f"images/{row['episode']}/{row['step']:06d}.png"
    # The first screen is the reset screen: the replay reproduces it exactly, the video nearly.
    first = np.asarray(Image.open(out / rows[0]["image"]))
    env = make_env("Pong", max_steps=20)
    env.reset(seed=read_jsonl(run_dir / "episodes.jsonl")[0]["seed"])
    assert first.shape == (210, 160, 3) and np.array_equal(first, env.last_rgb_frame)
    video = next(read_native_frames(run_dir / "videos" / "episode_0000.mp4"))
    assert np.abs(video.astype(int) - first).mean() < 3
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["features"] == HF_FEATURES and info["splits"]["train"]["num_examples"] == 40
    assert info["atari_vlm"]["image_kinds"] == ["native_rgb"]
    assert info["atari_vlm"]["env_id"] == "ALE/Pong-v5"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and all(f"| `{name}` |" in card for name in HF_FEATURES)
    assert leftovers(tmp_path) == []


def test_the_folder_loads_with_datasets_under_its_declared_schema(run_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = export_hf(run_dir, tmp_path / "hf", top_k=1)
    features = datasets.Features.from_dict(json.loads((out / "dataset_info.json").read_text())["features"])
    ds = datasets.load_dataset(
        "json", data_files=str(out / "data.jsonl"), features=features, split="train", cache_dir=str(tmp_path)
    )
    assert len(ds) == 20 and ds.features == features
    ds = ds.map(lambda row: {"image": str(out / row["image"])}).cast_column("image", datasets.Image())
    assert ds[0]["image"].size == (160, 210) and ds[19]["done"] is True


def test_memory_episodes_are_filtered_by_return_and_keep_what_the_model_saw(memory, tmp_path):
    out = export_hf(memory, tmp_path / "top", top_k=2, image_format="jpg")
    rows = rows_of(out)
    assert [r["episode"] for r in rows] == ["best"] * 5 + ["ep0"] * 20  # best first
    best = rows[:5]
    assert [r["return_to_go"] for r in best] == [2.0, 2.0, 2.0, 1.0, 1.0]
    assert [r["state_text"] for r in best] == [f"state {i}" for i in range(5)]
    assert {r["episode_return"] for r in best} == {2.0} and best[0]["model"] == "m"
    assert best[0]["source"] == "memory:Pong/best" and best[0]["answer"] is None
    image = np.asarray(Image.open(out / best[2]["image"]))
    assert best[2]["image"].endswith(".jpg") and image.shape == (48, 48, 3)
    assert abs(int(image.mean()) - 12) <= 1  # frame 2 of 'best' is filled with 12
    assert json.loads((out / "dataset_info.json").read_text())["atari_vlm"]["image_kinds"] == ["model_input"]

    at_least_zero = rows_of(export_hf(memory, tmp_path / "min", min_return=0))
    assert sorted({r["episode"] for r in at_least_zero}) == ["best", "ep0", "ep1"]
    png = np.asarray(Image.open(tmp_path / "min" / at_least_zero[2]["image"]))
    assert np.array_equal(png, np.full((48, 48, 3), 12, np.uint8))  # png is lossless


@pytest.mark.filterwarnings("ignore:.*frames come from its video")
def test_without_a_replay_the_frames_come_from_the_video(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    records = read_jsonl(copy / "episodes.jsonl")
    records[0].pop("seed")  # episode 0: nothing to replay from
    (copy / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    steps = read_jsonl(copy / "steps.jsonl")
    steps[25]["lives"] = 3  # episode 1, step 6: a log the replay cannot reproduce
    (copy / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    with pytest.warns(UserWarning) as caught:
        out = export_hf(copy, tmp_path / "hf")
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "its episode seed is not recorded; frames come from its video and state_text is null",
        "the replay does not reproduce the log (step 6: replay gave reward 0, lives 0); frames come from "
        "its video and state_text is null",
    ]
    rows = rows_of(out)
    assert len(rows) == 40 and all(r["state_text"] is None for r in rows)
    replayed = np.asarray(Image.open(export_hf(run_dir, tmp_path / "exact") / rows[0]["image"]))
    decoded = np.asarray(Image.open(out / rows[0]["image"]))
    assert decoded.shape == (210, 160, 3) and np.abs(decoded.astype(int) - replayed).mean() < 3
    (copy / "videos" / "episode_0001.mp4").unlink()
    with pytest.raises(ConfigError, match=r"episode 1: the replay does not reproduce .*and it has no video"):
        export_hf(copy, tmp_path / "none")
    assert not (tmp_path / "none").exists() and leftovers(tmp_path) == []


def test_bad_requests_are_refused_before_anything_is_written(run_dir, memory, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        export_hf(run_dir, full)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_hf(run_dir, empty, top_k=1) == empty and len(rows_of(empty)) == 20
    with pytest.raises(ConfigError, match="neither a run directory"):
        export_hf(tmp_path / "empty" / "images", tmp_path / "a")
    with pytest.raises(ConfigError, match="no such directory"):
        export_hf(tmp_path / "missing", tmp_path / "a")
    with pytest.raises(ConfigError, match=r"export one game folder, e.g. .*Pong"):
        export_hf(memory.parent, tmp_path / "a")
    with pytest.raises(ConfigError, match="none of its 4 episodes has a return >= 5"):
        export_hf(memory, tmp_path / "a", min_return=5)
    with pytest.raises(ConfigError, match="top_k must be an integer >= 1"):
        export_hf(memory, tmp_path / "a", top_k=0)
    with pytest.raises(ConfigError, match="image_format"):
        export_hf(memory, tmp_path / "a", image_format="gif")
    with pytest.raises(ConfigError, match="inside the source"):
        export_hf(run_dir, run_dir / "export")
    assert not (tmp_path / "a").exists() and leftovers(tmp_path) == []


def test_an_export_that_fails_midway_leaves_nothing(memory, tmp_path, monkeypatch):
    calls = []

    def failing_save(*args):
        calls.append(args)
        if len(calls) == 7:
            raise OSError("disk full")

    monkeypatch.setattr(export, "_save_image", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_hf(memory, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


# --- Minari -----------------------------------------------------------------------------------------


def test_a_run_becomes_a_minari_dataset(run_dir, tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    dataset_id = default_dataset_id(run_dir)
    assert dataset_id == "atari-vlm/pong/pong-random-v0"
    path = export_minari(run_dir, dataset_id, out_dir=tmp_path)
    assert Path(path) == tmp_path / dataset_id and leftovers(tmp_path) == []
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = minari.load_dataset(dataset_id)
    assert (ds.total_episodes, ds.total_steps) == (2, 40)
    assert ds.spec.env_spec.id == "ALE/Pong-v5" and ds.spec.env_spec.kwargs["frameskip"] == 4
    steps = read_jsonl(run_dir / "steps.jsonl")
    for episode in ds.iterate_episodes():
        assert episode.observations.shape == (21, 210, 160, 3)  # the screen after the last step too
        logged = [s for s in steps if s["episode"] == episode.id]
        assert episode.actions.tolist() == [s["action"] for s in logged]
        assert episode.rewards.tolist() == [s["reward"] for s in logged]
        assert episode.truncations.tolist() == [False] * 19 + [True] and not episode.terminations.any()
    assert ds.recover_environment().action_space.n == 6
    with pytest.raises(ConfigError, match="already exists"):
        export_minari(run_dir, dataset_id, out_dir=tmp_path)


def test_memory_episodes_become_a_filtered_minari_dataset(memory, tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    assert default_dataset_id(memory) == f"atari-vlm/pong/{memory.parent.name}-v0"
    export_minari(memory, "pong-best-v1", top_k=1, out_dir=tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = minari.load_dataset("pong-best-v1")
    (episode,) = ds.iterate_episodes()
    assert episode.rewards.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert episode.observations.shape == (6, 48, 48, 3)
    # Lossless; the memory keeps no screen after the last step, so the last one stands in for it.
    assert [int(o[0, 0, 0]) for o in episode.observations] == [10, 11, 12, 13, 14, 14]


@pytest.mark.parametrize("bad", ["no-version", "../escape-v0", "/abs-v0", "a b-v0", ""])
def test_malformed_minari_ids_are_refused(memory, tmp_path, bad):
    with pytest.raises(ConfigError, match="malformed Minari dataset id"):
        export_minari(memory, bad, out_dir=tmp_path)


def test_minari_missing_names_the_extra(memory, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "minari", None)
    with pytest.raises(DependencyNotInstalled, match=r"atari-vlm\[minari\]"):
        export_minari(memory, "x-v0", out_dir=tmp_path)


def test_the_docs_list_every_column():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    assert all(f"| `{name}` | " in docs for name in HF_FEATURES)
