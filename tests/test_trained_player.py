"""``--model pong-tiny``: the recipe that trains it still trains (at reduced size: the loss falls and
the model picks the expert's action on a demonstration it never saw, well above the majority class),
the cache builds once, and the model is labelled for what it is wherever it shows."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rich.console import Console

from atari_vlm.errors import ConfigError
from atari_vlm.memory import TrajectoryStore
from atari_vlm.models import trained
from atari_vlm.models.registry import load_model
from atari_vlm.models.table import models_data, render_models_table
from atari_vlm.models.trained import (
    RECIPE,
    TRAINED_LABEL,
    TRAINED_MARKER,
    TRAINED_MODEL,
    Recipe,
    action_agreement,
    build_trained_player,
    trained_checkpoint,
)
from atari_vlm.record import record
from atari_vlm.report.html import write_report
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec

# The recipe at reduced size: one demonstration, fewer decisions; the same model, prompt and lr.
SMALL = dataclasses.replace(RECIPE, episodes=1, demo_steps=400, epochs=3)


@pytest.fixture(scope="module")
def small_player(tmp_path_factory) -> tuple[Path, trained.BuildReport]:
    root = tmp_path_factory.mktemp("player")
    report = build_trained_player(root / "model", SMALL, demos_dir=root / "demos")
    return root / "model", report


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> list:
    """A track demonstration on seeds of its own (root seed 77: neither the recipe's nor play's)."""
    root = tmp_path_factory.mktemp("held-out")
    (meta,) = record("Pong", "expert", 1, root, seed=77, max_steps=300, expert_policy="track")
    return [TrajectoryStore(root).load("Pong", meta.episode_id)]


def test_the_recipe_trains_a_player(small_player, held_out) -> None:
    path, report = small_player
    assert report.examples == SMALL.episodes * SMALL.demo_steps
    first, last = report.losses[0], sum(report.losses[-5:]) / 5
    assert last < 0.2 * first, (first, last)
    agreement, majority, chosen = action_agreement(path, held_out)
    # Action frequencies alone would give the majority rate; the player reads the state text.
    assert agreement >= majority + 0.3 and agreement >= 0.8, (agreement, majority, chosen)
    assert {"NOOP", "LEFT", "RIGHT"} <= set(chosen)


def test_the_checkpoint_records_its_recipe_and_is_labelled(small_player) -> None:
    path, report = small_player
    marker = json.loads((path / TRAINED_MARKER).read_text())
    assert marker["recipe"] == dataclasses.asdict(SMALL) and marker["random_weights"] is False
    assert marker["label"] == TRAINED_LABEL and marker["examples"] == report.examples
    assert not (path / "atari_vlm_demo.json").exists()  # trained: not the random-weights marker
    loaded = load_model(str(path))  # a checkpoint directory of it is labelled too
    assert loaded.label == TRAINED_LABEL and TRAINED_LABEL in (loaded.warning or "")
    assert loaded.random_weights is False and loaded.describe()["label"] == TRAINED_LABEL


def test_pong_tiny_builds_once_then_comes_from_the_cache(small_player, monkeypatch, tmp_path) -> None:
    path, _ = small_player
    calls: list[Path] = []

    def build(out, recipe):  # the real build is tested above; here, where and how often it runs
        calls.append(Path(out))
        Path(out).mkdir(parents=True)
        for entry in path.iterdir():
            (Path(out) / entry.name).write_bytes(entry.read_bytes())

    monkeypatch.setattr(trained, "build_trained_player", build)
    monkeypatch.setenv("ATARI_VLM_CACHE", str(tmp_path))
    notes: list[str] = []
    first = trained_checkpoint(notify=notes.append)
    assert first == tmp_path / f"{TRAINED_MODEL}-v{trained.TRAINED_VERSION}" and calls == [first]
    assert TRAINED_LABEL in notes[0]
    assert trained_checkpoint(notify=notes.append) == first and len(calls) == 1 and len(notes) == 1

    loaded = load_model(TRAINED_MODEL)
    assert loaded.spec == TRAINED_MODEL and loaded.label == TRAINED_LABEL and len(calls) == 1
    assert not loaded.random_weights and TRAINED_LABEL in (loaded.warning or "")


def test_a_run_and_its_report_say_what_the_model_is(small_player, monkeypatch, tmp_path) -> None:
    path, _ = small_player
    spec = RunSpec.build(game="Pong", model=str(path), max_steps=3, episodes=1, video=False)
    run_play(spec, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["label"] == TRAINED_LABEL
    html = write_report(tmp_path / "run").read_text()
    assert TRAINED_LABEL in html and "RANDOM WEIGHTS" not in html


def test_make_play_plays_pong_tiny_labelled(small_player, tmp_path) -> None:
    """`make play`'s command, shortened, with the small player standing in the cache for pong-tiny."""
    path, _ = small_player
    shutil.copytree(path, tmp_path / "cache" / f"{TRAINED_MODEL}-v{trained.TRAINED_VERSION}")
    out = tmp_path / "run"
    args = ["play", "--game", "Pong", "--model", TRAINED_MODEL, "--episodes", "1", "--max-steps", "60"]
    result = subprocess.run(
        [sys.executable, "-m", "atari_vlm.cli", *args, "--seed", "0", "--out", str(out), "--no-video"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "ATARI_VLM_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    assert TRAINED_LABEL in " ".join(result.stderr.split()) and "RANDOM WEIGHTS" not in result.stderr
    assert "building" not in result.stderr  # it came from the cache
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == {
        "spec": TRAINED_MODEL,
        "provider": "local",
        "random_weights": False,
        "label": TRAINED_LABEL,
    }
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 60 and all(s["obtained"] == "scored" for s in steps)
    assert len({s["action_name"] for s in steps}) >= 2  # it moves: not one constant answer


def test_the_models_list_names_both_built_in_models() -> None:
    rows = {r["name"]: r for r in models_data(gpu=False)["models"]}
    assert TRAINED_LABEL in rows[TRAINED_MODEL]["good_at"]
    assert "RANDOM WEIGHTS" in rows["demo"]["good_at"] and "RANDOM" not in rows[TRAINED_MODEL]["good_at"]
    console = Console(record=True, width=900)  # wide enough that no column wraps
    render_models_table(console, gpu=False)
    lines = console.export_text().splitlines()
    assert any(TRAINED_MODEL in line and TRAINED_LABEL in line for line in lines), lines


def test_a_bad_recipe_is_refused_before_anything_is_built(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no 'dance' expert for Pong"):
        build_trained_player(tmp_path / "x", Recipe(expert_policy="dance"))
    with pytest.raises(ConfigError, match="unknown tiny family"):
        build_trained_player(tmp_path / "x", Recipe(family="gpt5"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        build_trained_player(tmp_path / "full", SMALL)
    assert not (tmp_path / "x").exists()
