"""The trajectory memory: recording real play, atomic writes, exemplar selection, retrieval, imports,
and refusing corrupt or hostile files with a clear error."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from atari_vlm.agent import RandomAgent
from atari_vlm.env import make_env
from atari_vlm.errors import ConfigError
from atari_vlm.memory import (
    TrajectoryStore,
    import_demonstration,
    retrieve_similar,
    select_exemplars,
)
from atari_vlm.rollout import episode_seeds, play_episodes

NAMES = ["NOOP", "FIRE", "UP", "DOWN"]
PONG = {"game": "Pong", "resize_shape": (48, 48), "frame_skip": 8, "max_steps": 20}


def frame(code: int, shape=(12, 10, 3)) -> np.ndarray:
    """A frame that says which step it is: every pixel holds ``code``."""
    return np.full(shape, code % 256, np.uint8)


def store_episode(store, episode_id, rewards, lives=None, actions=None, game="Pong", base=0, frames=None):
    """A hand-made episode: frame i is ``frame(base + i)``, action i is ``actions[i]`` (default i % 4)."""
    lives = lives or [0] * len(rewards)
    actions = actions or [i % len(NAMES) for i in range(len(rewards))]
    recorder = store.recorder(game, {"episode_id": episode_id, "action_names": NAMES, "seed": 7})
    for i, (r, lv, a) in enumerate(zip(rewards, lives, actions, strict=True)):
        image = frame(base + i) if frames is None else frames[i]
        recorder.add(image, f"state {episode_id} {i}", a, NAMES[a], r, lv)
    return recorder.finish(float(sum(rewards)))


def code_of(image: np.ndarray) -> int:
    return int(image.flat[0])


# --- recording --------------------------------------------------------------------------------------


def test_real_pong_play_is_recorded_through_the_sink(tmp_path):
    store = TrajectoryStore(tmp_path)
    names = make_env(**PONG).action_names

    def make_worker():
        env = make_env(**PONG)
        return env, RandomAgent(env.action_names)

    def sink(i, seeds):
        return store.recorder("Pong-v5", {"episode_id": f"ep{i}", "seed": seeds.env, "action_names": names})

    results = asyncio.run(
        play_episodes(make_worker, episodes=2, root_seed=3, uses_model=False, make_sink=sink)
    )
    metas = {m.episode_id: m for m in store.episodes("Pong")}
    assert sorted(metas) == ["ep0", "ep1"]
    seeds = episode_seeds(3, 2)
    for result in results:
        trajectory = store.load("ALE/Pong-v5", f"ep{result.episode}")
        meta = trajectory.meta
        assert (meta.game, meta.source, meta.steps, meta.seed) == (
            "Pong",
            "self",
            20,
            seeds[result.episode].env,
        )
        assert meta.episode_return == result.episode_return == trajectory.rewards.sum()
        assert trajectory.frames.shape == (20, 48, 48, 3) and trajectory.frames.dtype == np.uint8
        assert [s.step for s in trajectory.steps] == list(range(1, 21))
        assert all(s.action_name == names[s.action] for s in trajectory.steps)
        first, _ = make_env(**PONG).reset(seed=seeds[result.episode].env)
        assert np.array_equal(trajectory.frames[0], first["image"])  # the image the model saw first
        assert trajectory.steps[0].state_text == first["text"]
    assert [m.episode_return for m in store.episodes("Pong")] == sorted(
        (r.episode_return for r in results), reverse=True
    )


def test_abort_leaves_nothing_and_a_failed_episode_is_not_stored(tmp_path):
    store = TrajectoryStore(tmp_path)
    recorder = store.recorder("Pong", {"episode_id": "gone", "action_names": NAMES})
    recorder.add(frame(1), "s", 1, "FIRE", 0.0, 0)
    recorder.abort()
    assert not (tmp_path / "Pong").exists() and store.episodes("Pong") == []

    class Failing(RandomAgent):
        async def act(self, obs):
            raise RuntimeError("model down")

    def make_worker():
        env = make_env(**PONG)
        return env, Failing(env.action_names)

    sink = lambda i, s: store.recorder("Pong", {"episode_id": "x", "action_names": NAMES})  # noqa: E731
    with pytest.raises(RuntimeError, match="model down"):
        asyncio.run(play_episodes(make_worker, episodes=1, root_seed=0, uses_model=False, make_sink=sink))
    assert store.episodes("Pong") == []


def test_a_write_that_fails_midway_leaves_no_partial_episode(tmp_path, monkeypatch):
    store = TrajectoryStore(tmp_path)

    def broken_savez(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        store_episode(store, "half", [0, 1])
    assert store.episodes("Pong") == [] and list((tmp_path / "Pong").iterdir()) == []


def test_a_process_killed_mid_write_leaves_no_episode_only_a_hidden_leftover(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from atari_vlm import memory
        store = memory.TrajectoryStore({str(tmp_path)!r})
        rec = store.recorder("Pong", {{"episode_id": "killed", "action_names": ["NOOP", "FIRE"]}})
        rec.add(np.zeros((8, 8, 3), np.uint8), "s", 1, "FIRE", 1.0, 0)
        memory.os.rename = lambda *a: os._exit(9)  # dies just before the episode would appear
        rec.finish(1.0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    store = TrajectoryStore(tmp_path)
    assert store.episodes("Pong") == [] and not store.has("Pong", "killed")
    assert [p.name.startswith(".tmp-killed-") for p in (tmp_path / "Pong").iterdir()] == [True]
    assert store.remove_incomplete("Pong") == 1 and list((tmp_path / "Pong").iterdir()) == []


def test_episode_ids_are_unique_and_safe(tmp_path):
    store = TrajectoryStore(tmp_path)
    store_episode(store, "once", [1])
    with pytest.raises(ConfigError, match="already stored"):
        store_episode(store, "once", [1])
    for bad in ("../escape", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ConfigError, match="episode id must be"):
            store.recorder("Pong", {"episode_id": bad, "action_names": NAMES})
    with pytest.raises(ConfigError, match="action must be an integer in"):
        store.recorder("Pong", {"action_names": NAMES}).add(frame(0), "s", 9, "FIRE", 0.0, 0)


# --- exemplar selection on hand-made trajectories ---------------------------------------------------


@pytest.fixture
def hand_made(tmp_path):
    """A: return 3 (+1 at step 2, a life lost at 4, +2 at 5); B: return 1 (+1 at 1, a life lost at 2);
    D: return 0 (-1 at 1, +1 at 2); C: return -1 (-1 at 1)."""
    store = TrajectoryStore(tmp_path)
    store_episode(store, "A", [0, 0, 1, 0, 0, 2, 0, 0], lives=[3, 3, 3, 3, 2, 2, 2, 2], base=10)
    store_episode(store, "B", [0, 1, 0, 0], lives=[2, 2, 1, 1], base=20)
    store_episode(store, "D", [0, -1, 1], base=30)
    store_episode(store, "C", [0, -1, 0], base=40)
    return store


def describe(exemplars):
    return [(code_of(e.image), e.action_name, e.note) for e in exemplars]


def test_episodes_are_ranked_by_return(hand_made):
    assert [(m.episode_id, m.episode_return) for m in hand_made.episodes("Pong")] == [
        ("A", 3.0),
        ("B", 1.0),
        ("D", 0.0),
        ("C", -1.0),
    ]


def test_key_moments_of_the_top_episodes_with_their_notes(hand_made):
    chosen = select_exemplars(hand_made, "Pong", top_k_episodes=2, image_budget=8)
    assert describe(chosen) == [
        (12, "UP", "1 step before scoring +1"),
        (14, "NOOP", "1 step before losing a life: avoid this; NOOP led to it"),
        (15, "FIRE", "1 step before scoring +2"),
        (21, "FIRE", "1 step before scoring +1"),
        (22, "UP", "1 step before losing a life: avoid this; UP led to it"),
    ]
    assert chosen[0].state_text == "state A 2"


def test_the_image_budget_takes_the_biggest_rewards_and_the_first_losses_in_turn(hand_made):
    chosen = select_exemplars(hand_made, "Pong", top_k_episodes=2, image_budget=3)
    assert [code_of(e.image) for e in chosen] == [12, 14, 15]  # +2, the first loss, then +1 (A before B)
    assert select_exemplars(hand_made, "Pong", image_budget=0) == []
    again = select_exemplars(hand_made, "Pong", top_k_episodes=2, image_budget=3)
    assert describe(again) == describe(chosen)  # deterministic


def test_negative_rewards_count_as_losses_and_lead_looks_further_back(hand_made):
    top3 = select_exemplars(hand_made, "Pong", top_k_episodes=3, image_budget=8)
    assert describe(top3)[-2:] == [
        (31, "FIRE", "1 step before scoring -1: avoid this; FIRE led to it"),
        (32, "UP", "1 step before scoring +1"),
    ]
    earlier = select_exemplars(hand_made, "Pong", top_k_episodes=1, image_budget=8, lead=2)
    assert describe(earlier) == [
        (11, "FIRE", "2 steps before scoring +1"),
        (13, "DOWN", "2 steps before losing a life: avoid this; DOWN led to it"),
        (14, "NOOP", "2 steps before scoring +2"),
    ]


def test_selection_can_be_limited_to_a_snapshot_and_an_empty_memory_gives_none(hand_made, tmp_path):
    chosen = select_exemplars(hand_made, "Pong", top_k_episodes=1, episode_ids=["B", "C"])
    assert [code_of(e.image) for e in chosen] == [21, 22]
    assert select_exemplars(TrajectoryStore(tmp_path / "empty"), "Pong") == []
    with pytest.raises(ConfigError, match="strategy"):
        select_exemplars(hand_made, "Pong", strategy="best")
    with pytest.raises(ConfigError, match="needs the current frame"):
        select_exemplars(hand_made, "Pong", strategy="similar")


def test_similar_retrieval_returns_the_identical_frame_first(tmp_path):
    rng = np.random.default_rng(0)
    store = TrajectoryStore(tmp_path)
    frames = {name: rng.integers(0, 256, (6, 20, 16, 3), dtype=np.uint8) for name in ("P", "Q")}
    store_episode(store, "P", [0, 0, 0, 1, 0, 0], frames=frames["P"])
    store_episode(store, "Q", [0, 0, 0, 0, 0, -1], frames=frames["Q"])
    query = frames["Q"][2]
    found = retrieve_similar(store, "Pong", query, 3)
    assert len(found) == 3 and np.array_equal(found[0].image, query)
    assert found[0].action_name == "UP" and found[0].state_text == "state Q 2"
    assert found[0].note == (
        "a similar screen from a past game that scored -1; "
        "4 steps before scoring -1: avoid this; UP led to it"
    )
    noisy = np.clip(frames["P"][3].astype(int) + 3, 0, 255).astype(np.uint8)
    assert np.array_equal(retrieve_similar(store, "Pong", noisy, 1)[0].image, frames["P"][3])
    via_select = select_exemplars(store, "Pong", strategy="similar", image=query, image_budget=2)
    assert [e.note for e in via_select] == [e.note for e in found[:2]]
    grey = retrieve_similar(store, "Pong", query.mean(axis=2).astype(np.uint8), 1)  # any channel count
    assert np.array_equal(grey[0].image, query)
    assert retrieve_similar(store, "Pong", query, 0) == []


# --- demonstrations ---------------------------------------------------------------------------------


def write_pair(directory: Path, name="demo", rewards=(0, 1, 0), actions=(1, 2, 3), **json_fields):
    t = len(rewards)
    frames = np.stack([frame(50 + i) for i in range(t)])
    np.savez_compressed(
        directory / f"{name}.npz", frames=frames, actions=np.array(actions), rewards=np.array(rewards, float)
    )
    info = {"game": "Pong-v5", "action_names": NAMES, **json_fields}
    (directory / f"{name}.json").write_text(json.dumps(info))
    return directory / f"{name}.npz"


def test_a_demonstration_pair_is_imported_once_and_used_like_own_play(tmp_path):
    store = TrajectoryStore(tmp_path / "memory")
    path = write_pair(tmp_path, state_texts=["a", "b", "c"])
    meta = import_demonstration(store, path)
    assert (meta.source, meta.episode_return, meta.steps, meta.game) == ("demo", 1.0, 3, "Pong")
    assert import_demonstration(store, path.with_suffix(".json")) == meta  # same content, stored once
    assert [m.episode_id for m in store.episodes("Pong")] == [meta.episode_id]
    chosen = select_exemplars(store, "Pong")
    assert describe(chosen) == [(51, "UP", "1 step before scoring +1")] and chosen[0].state_text == "b"
    expert = import_demonstration(store, write_pair(tmp_path, "other", (0, 0, 5)), source="expert")
    assert store.episodes("Pong")[0] == expert and expert.source == "expert"


def test_an_episode_directory_from_another_memory_is_imported(tmp_path):
    other = TrajectoryStore(tmp_path / "other")
    source_dir = store_episode(other, "theirs", [0, 2], base=50)
    store = TrajectoryStore(tmp_path / "mine")
    meta = import_demonstration(store, source_dir, source="human", game="Pong")
    mine = store.load("Pong", meta.episode_id)
    assert mine.meta.source == "human" and np.array_equal(mine.frames, other.load("Pong", "theirs").frames)
    with pytest.raises(ConfigError, match="is a Pong episode, not Breakout"):
        import_demonstration(store, source_dir, game="Breakout")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actions": (1, 2, 9)}, "action must be an integer in \\[0, 3\\]"),
        ({"rewards": (0, float("nan"), 0)}, "reward must be a finite number"),
        ({"return": 5}, "return 5 is not the sum of the step rewards"),
        ({"state_texts": ["only one"]}, "state_texts must be a list of 3 strings"),
    ],
)
def test_a_bad_demonstration_is_refused_naming_the_file(tmp_path, change, message):
    json_fields = {k: v for k, v in change.items() if k in ("return", "state_texts")}
    arrays = {k: v for k, v in change.items() if k in ("actions", "rewards")}
    path = write_pair(tmp_path, **arrays, **json_fields)
    with pytest.raises(ConfigError, match=message) as info:
        import_demonstration(TrajectoryStore(tmp_path / "m"), path)
    assert "demo." in str(info.value)
    assert not (tmp_path / "m" / "Pong").exists() or store_is_empty(tmp_path / "m")


def store_is_empty(root: Path) -> bool:
    return TrajectoryStore(root).episodes("Pong") == []


def test_an_unknown_source_or_file_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="source must be one of"):
        import_demonstration(TrajectoryStore(tmp_path), write_pair(tmp_path), source="internet")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"expected an episode directory or a NAME\.npz"):
        import_demonstration(TrajectoryStore(tmp_path), tmp_path / "x.txt")


# --- validation of stored files ---------------------------------------------------------------------


def rewrite_json(path: Path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def rewrite_steps(path: Path, edit):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines = edit(lines) or lines
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def replace_line(path: Path, index: int, text: str) -> None:
    """Put raw ``text`` (not necessarily JSON a Python json.dumps would write) in place of line ``index``."""
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def npz_declaring(path: Path, shape, dtype="|u1", payload=b""):
    """An npz whose ``frames`` header declares ``shape`` but which holds only ``payload``."""
    with zipfile.ZipFile(path, "w") as archive, archive.open("frames.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": dtype, "fortran_order": False, "shape": shape})
        member.write(payload)


def corrupt_frames_count(d):
    np.savez_compressed(d / "frames.npz", frames=np.zeros((2, 12, 10, 3), np.uint8))


def corrupt_frames_shape(d):
    np.savez_compressed(d / "frames.npz", frames=np.zeros((3, 12, 10, 4), np.uint8))


def corrupt_frames_dtype(d):
    np.savez_compressed(d / "frames.npz", frames=np.zeros((3, 12, 10, 3), np.float32))


def pickle_in_npz(d):
    np.savez(d / "frames.npz", frames=np.array([{"evil": 1}, None, 3], dtype=object))


def pickle_beside_frames(d):
    np.savez(d / "frames.npz", frames=np.zeros((3, 12, 10, 3), np.uint8), extra=np.array([object()]))


def truncated_npz(d):
    data = (d / "frames.npz").read_bytes()
    (d / "frames.npz").write_bytes(data[: len(data) // 2])


CORRUPTIONS = [
    (
        lambda d: rewrite_json(d / "meta.json", lambda m: m.update({"return": float("nan")})),
        "meta.json",
        "finite",
    ),
    (lambda d: (d / "meta.json").write_text('{"return": NaN'), "meta.json", "not readable JSON"),
    (
        lambda d: rewrite_json(d / "meta.json", lambda m: m.update(schema_version=99)),
        "meta.json",
        "schema_version 99",
    ),
    (lambda d: rewrite_json(d / "meta.json", lambda m: m.pop("steps")), "meta.json", "missing field"),
    (lambda d: rewrite_json(d / "meta.json", lambda m: m.update(steps="3")), "meta.json", "steps must be"),
    (
        lambda d: rewrite_json(d / "meta.json", lambda m: m.update(image_shape=[12, 99999, 3])),
        "meta.json",
        "out of bounds",
    ),
    (
        lambda d: rewrite_json(d / "meta.json", lambda m: m.update(image_shape=[12, 11, 3])),
        "frames.npz",
        "image_shape",
    ),
    (lambda d: rewrite_json(d / "meta.json", lambda m: m.update(episode_id="Z")), "meta.json", "lies in"),
    (lambda d: (d / "meta.json").write_text(" " * (2**20 + 1)), "meta.json", "bytes, more than"),
    (lambda d: (d / "steps.jsonl").unlink(), "steps.jsonl", "missing"),
    (lambda d: (d / "frames.npz").unlink(), "frames.npz", "missing"),
    (
        lambda d: rewrite_steps(d / "steps.jsonl", lambda rows: rows[:2]),
        "steps.jsonl",
        "2 steps, but meta.json says 3",
    ),
    (
        lambda d: rewrite_steps(d / "steps.jsonl", lambda rows: rows[0].update(action=17)),
        "steps.jsonl",
        "action must be",
    ),
    (
        lambda d: rewrite_steps(d / "steps.jsonl", lambda rows: rows[1].update(action_name="JUMP")),
        "steps.jsonl",
        "'JUMP' is not listed action 1",
    ),
    (
        lambda d: rewrite_steps(d / "steps.jsonl", lambda rows: rows[2].update(reward=1e400)),
        "steps.jsonl",
        "finite",
    ),
    (
        lambda d: rewrite_steps(d / "steps.jsonl", lambda rows: rows[2].update(reward=7)),
        "steps.jsonl",
        "not the sum",
    ),
    (
        lambda d: rewrite_steps(d / "steps.jsonl", lambda rows: rows[0].update(step=5)),
        "steps.jsonl",
        "step must be",
    ),
    (
        lambda d: rewrite_steps(d / "steps.jsonl", lambda rows: rows[0].update(state_text=["x"])),
        "steps.jsonl",
        "state_text",
    ),
    (lambda d: replace_line(d / "steps.jsonl", 1, "[" * 5000 + "]" * 5000), "steps.jsonl", "nested deeper"),
    (
        lambda d: replace_line(d / "steps.jsonl", 0, '{"step": 0, "reward": 1' + "0" * 5000 + "}"),
        "steps.jsonl",
        "5001 digits",
    ),
    (
        lambda d: (d / "meta.json").write_text('{"steps": 1' + "0" * 5000 + "}"),
        "meta.json",
        "5001 digits",
    ),
    (corrupt_frames_count, "frames.npz", "2 entries, expected 3"),
    (corrupt_frames_shape, "frames.npz", "out of bounds"),
    (corrupt_frames_dtype, "frames.npz", "dtype float32"),
    (lambda d: npz_declaring(d / "frames.npz", (3, 10**6, 10**6, 3)), "frames.npz", "bytes allowed"),
    (
        lambda d: npz_declaring(d / "frames.npz", (3, 12, 10, 3), payload=b"\x00" * 10),
        "frames.npz",
        "truncated",
    ),
    (lambda d: npz_declaring(d / "frames.npz", (3, 12, 10, 3), dtype="|O"), "frames.npz", "Python objects"),
    (pickle_in_npz, "frames.npz", "Python objects"),
    (pickle_beside_frames, "frames.npz", "unexpected member 'extra.npy'"),
    (truncated_npz, "frames.npz", "not a readable npz"),
    (lambda d: (d / "frames.npz").write_bytes(b"\x93NUMPY not a zip"), "frames.npz", "not a readable npz"),
]


@pytest.mark.parametrize(("corrupt", "file", "message"), CORRUPTIONS)
def test_a_corrupt_or_hostile_episode_is_refused_naming_the_file(tmp_path, corrupt, file, message):
    store = TrajectoryStore(tmp_path)
    directory = store_episode(store, "E", [0, 1, 0])
    corrupt(directory)
    fresh = TrajectoryStore(tmp_path)  # no cache
    with pytest.raises(ConfigError, match=message) as info:
        fresh.load("Pong", "E")
        fresh.episodes("Pong")
    assert str(directory / file) in str(info.value)


def test_loading_a_missing_episode_says_so(tmp_path):
    with pytest.raises(ConfigError, match="no episode 'nope'"):
        TrajectoryStore(tmp_path).load("Pong", "nope")


def test_a_deleted_episode_is_gone_from_listings_and_caches(tmp_path):
    store = TrajectoryStore(tmp_path)
    store_episode(store, "E", [1])
    store.load("Pong", "E")
    assert store.delete("Pong", "E") and not store.delete("Pong", "E")
    assert store.episodes("Pong") == [] and os.listdir(tmp_path / "Pong") == []
    with pytest.raises(ConfigError, match="no episode"):
        store.load("Pong", "E")
    shutil.rmtree(tmp_path / "Pong")
