"""Results tables from real run directories (random-agent runs on real ALE games)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from atari_vlm.bench.results import build_results, collect_run_dirs, load_run, write_results
from atari_vlm.bench.scores import human_normalized
from atari_vlm.errors import ConfigError
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec


def _play(out, game, *, seed=0, max_steps=50, **settings):
    spec = RunSpec.build(
        game=game, agent="random", episodes=2, seed=seed, max_steps=max_steps, video=False, **settings
    )
    run_play(spec, out)
    return out


def _as_model_run(
    random_run, out, *, spec="openai:fake-vlm", prompt="basic", cost=None, random_weights=False
):
    """A hand-edited copy of a random run standing in for a model run on the same seeds (no model needed)."""
    shutil.copytree(random_run, out)
    config = json.loads((out / "config.json").read_text())
    config["spec"].update(agent="vlm")
    config["spec"]["prompt"]["prompt"] = prompt
    config["spec"]["model"]["model"] = spec
    config["model"] = {"spec": spec, "provider": "openai", "random_weights": random_weights}
    (out / "config.json").write_text(json.dumps(config))
    episodes = read_jsonl(out / "episodes.jsonl")
    for i, e in enumerate(episodes):
        e["return"] = e["return"] + 3.0 + i  # the "model" plays a little better
        if cost is not None:
            e["cost_usd"] = cost
    (out / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    pong = _play(root / "pong_random", "Pong")
    breakout = _play(root / "breakout_random", "Breakout")
    return {
        "root": root,
        "pong_random": pong,
        "breakout_random": breakout,
        "pong_model": _as_model_run(pong, root / "pong_model", cost=0.01),
        "breakout_model": _as_model_run(breakout, root / "breakout_model", cost=0.02),
        "pong_other_prompt": _as_model_run(pong, root / "pong_cot", prompt="cot", random_weights=True),
    }


def _row(results, game, model, prompt):
    (row,) = [r for r in results["rows"] if (r["game"], r["model"], r["prompt"]) == (game, model, prompt)]
    return row


def test_rows_per_game_model_prompt(runs, tmp_path):
    results = write_results([runs["root"]], tmp_path / "out", reps=500)
    keys = {(r["game"], r["model"], r["prompt"]) for r in results["rows"]}
    assert keys == {
        ("Pong", "random", "-"),
        ("Breakout", "random", "-"),
        ("Pong", "openai:fake-vlm", "basic"),
        ("Breakout", "openai:fake-vlm", "basic"),
        ("Pong", "openai:fake-vlm", "cot"),
    }
    pong_returns = [e["return"] for e in read_jsonl(runs["pong_model"] / "episodes.jsonl")]
    row = _row(results, "Pong", "openai:fake-vlm", "basic")
    assert row["episodes"] == 2 and row["runs"] == 1 and row["truncated_episodes"] == 2
    assert row["mean_return"]["point"] == pytest.approx(np.mean(pong_returns))
    assert row["mean_return"]["low"] <= row["mean_return"]["point"] <= row["mean_return"]["high"]
    assert row["human_normalized"]["point"] == pytest.approx(np.mean(human_normalized("Pong", pong_returns)))
    assert row["cost_usd"] == pytest.approx(0.02)
    # The random baseline on the same seeds and env settings sits beside the model's row.
    random_returns = [e["return"] for e in read_jsonl(runs["pong_random"] / "episodes.jsonl")]
    assert row["random_same_seeds"] == {"mean_return": pytest.approx(np.mean(random_returns)), "episodes": 2}
    assert _row(results, "Pong", "random", "-")["random_same_seeds"] is None
    assert _row(results, "Pong", "openai:fake-vlm", "cot")["random_weights"] is True


def test_aggregates_over_games(runs, tmp_path):
    results = build_results([runs["pong_model"], runs["breakout_model"], runs["pong_random"]], reps=500)
    (agg,) = [a for a in results["aggregates"] if a["model"] == "openai:fake-vlm"]
    assert agg["games"] == ["Breakout", "Pong"]
    per_game = {
        g: np.mean(
            human_normalized(
                g, [e["return"] for e in read_jsonl(runs[f"{g.lower()}_model"] / "episodes.jsonl")]
            )
        )
        for g in ("Pong", "Breakout")
    }
    assert agg["mean"]["point"] == pytest.approx(np.mean(list(per_game.values())))
    for k in ("mean", "median", "iqm"):
        assert agg[k]["low"] <= agg[k]["point"] <= agg[k]["high"]
    assert build_results([runs["root"]], reps=500) == build_results([runs["root"]], reps=500)  # seeded


def test_written_files(runs, tmp_path):
    out = tmp_path / "out"
    results = write_results([runs["pong_model"], runs["pong_random"]], out, reps=300, table="atari57")
    assert set(results["files"]) == {"markdown", "csv", "json"}
    md = (out / "results.md").read_text()
    assert "## Published, not measured" in md and "23.2%" in md and "GPT-4o" in md
    assert "Atari-57" in md and "not comparable" in md  # truncated episodes are flagged
    assert "openai:fake-vlm" in md
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert len(rows) == 2 and {r["model"] for r in rows} == {"random", "openai:fake-vlm"}
    model_csv = next(r for r in rows if r["model"] != "random")
    model_row = _row(results, "Pong", "openai:fake-vlm", "basic")
    assert float(model_csv["random_same_seeds_mean_return"]) == model_row["random_same_seeds"]["mean_return"]
    assert float(model_csv["hns_ci_low"]) == model_row["human_normalized"]["low"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["table"]["name"] == "atari57" and saved["published"][0]["label"] == "published, not measured"
    assert len(saved["rows"]) == 2


def test_random_baseline_needs_same_seeds_and_settings(runs, tmp_path):
    other_seed = _play(tmp_path / "pong_random_seed9", "Pong", seed=9)
    other_cap = _play(tmp_path / "pong_random_cap30", "Pong", max_steps=30)
    results = build_results([runs["pong_model"], other_seed, other_cap], reps=200)
    assert _row(results, "Pong", "openai:fake-vlm", "basic")["random_same_seeds"] is None


def test_untrusted_names_cannot_break_the_markdown(runs, tmp_path):
    hostile = _as_model_run(runs["pong_random"], tmp_path / "hostile", spec="a|b\n<script>x</script>")
    results = write_results([hostile], tmp_path / "out", reps=100)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "<script>" not in md and "a\\|b &lt;script&gt;" in md
    assert results["rows"][0]["model"] == "a|b\n<script>x</script>"


def test_errors_and_skips(runs, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_results([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no run directories found"):
        build_results([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="unknown reference table"):
        build_results([runs["pong_random"]], table="mine")
    with pytest.raises(ConfigError, match="not a run directory"):
        load_run(tmp_path)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["pong_random"], unfinished)
    (unfinished / "episodes.jsonl").write_text("")
    with pytest.raises(ConfigError, match="none of the run directories has a finished episode"):
        build_results([unfinished])
    results = build_results([unfinished, runs["pong_random"]], reps=100)
    assert results["skipped"] == [{"path": str(unfinished), "reason": "no finished episode"}]
    assert collect_run_dirs([runs["pong_random"], runs["pong_random"]]) == [runs["pong_random"]]


def test_runs_under_other_settings_never_share_a_row_and_say_what_differs(tmp_path):
    """Frame skip 4 and frame skip 8 are two measurements; seeds 0 and 1 of the same settings pool."""
    _play(tmp_path / "fs4", "Pong", max_steps=20)
    _play(tmp_path / "fs8", "Pong", max_steps=20, frame_skip=8)
    _play(tmp_path / "fs4-seed1", "Pong", max_steps=20, seed=1)
    rows = build_results([tmp_path], reps=200)["rows"]
    by_settings = {r["settings"]: r for r in rows}
    assert set(by_settings) == {"frame_skip=4", "frame_skip=8"}
    assert by_settings["frame_skip=4"]["episodes"] == 4 and by_settings["frame_skip=4"]["runs"] == 2
    assert by_settings["frame_skip=8"]["episodes"] == 2
    assert by_settings["frame_skip=4"]["fingerprint"] != by_settings["frame_skip=8"]["fingerprint"]
    md = write_results([tmp_path], tmp_path / "out", reps=200)["files"]["markdown"]
    text = Path(md).read_text()
    assert "random [frame_skip=4]" in text and "random [frame_skip=8]" in text


def test_the_results_command_uses_the_reference_table_it_is_given(runs, tmp_path):
    from atari_vlm.cli import main

    returns = [e["return"] for e in read_jsonl(runs["pong_model"] / "episodes.jsonl")]
    points = {}
    for table in ("dqn_nature", "atari57"):
        out = tmp_path / table
        assert (
            main(["results", str(runs["pong_model"]), "--out", str(out), "--table", table, "--reps", "100"])
            == 0
        )
        (row,) = json.loads((out / "results.json").read_text())["rows"]
        points[table] = row["human_normalized"]["point"]
        assert points[table] == pytest.approx(np.mean(human_normalized("Pong", returns, table)))
    assert points["dqn_nature"] != pytest.approx(points["atari57"])
