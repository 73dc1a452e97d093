"""The command line end to end: real games, real files, real videos."""

import json
import os
import subprocess
import sys

import pytest

from atari_vlm.cli import main
from atari_vlm.rundir import read_jsonl
from atari_vlm.video import read_video_info


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "atari_vlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def check_run_dir(out, episodes, max_steps, *, model_calls):
    config = json.loads((out / "config.json").read_text())
    steps = read_jsonl(out / "steps.jsonl")
    eps = read_jsonl(out / "episodes.jsonl")
    assert len(eps) == episodes and [e["episode"] for e in eps] == list(range(episodes))
    assert len(steps) == sum(e["steps"] for e in eps)
    for e in eps:
        mine = [s for s in steps if s["episode"] == e["episode"]]
        assert [s["step"] for s in mine] == list(range(1, e["steps"] + 1))
        assert sum(s["reward"] for s in mine) == pytest.approx(e["return"])
        assert e["steps"] <= max_steps
        assert e["decisions"] == (e["steps"] if model_calls else 0)
        info = read_video_info(out / e["video"])
        assert info["frames"] == e["steps"] + 1 and info["size"] == (320, 420)
    for s in steps:
        assert {"step", "action_name", "text", "reward", "input_tokens", "output_tokens", "latency_s"} <= set(
            s
        )
    return config, steps, eps


def test_play_random_agent_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "play",
        "--game",
        "ALE/Breakout-v5",
        "--agent",
        "random",
        "--episodes",
        "2",
        "--max-steps",
        "120",
        "--seed",
        "3",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    config, _steps, _eps = check_run_dir(out, 2, 120, model_calls=False)
    spec = config["spec"]
    assert spec["env"]["game"] == "Breakout" and spec["agent"] == "random" and spec["seed"] == 3
    assert "mean return" in result.stdout and "run directory" in result.stdout


def test_same_seed_same_run(tmp_path):
    for name in ("a", "b"):
        assert (
            main(
                [
                    "play",
                    "--game",
                    "Pong",
                    "--agent",
                    "random",
                    "--episodes",
                    "2",
                    "--max-steps",
                    "60",
                    "--seed",
                    "7",
                    "--no-video",
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "latency_s")} for r in rows]  # noqa: E731
    for f in ("steps.jsonl", "episodes.jsonl"):
        assert strip(read_jsonl(tmp_path / "a" / f)) == strip(read_jsonl(tmp_path / "b" / f))


def test_games_lists_all_104_and_marks_rich_ones(capsys):
    assert main(["games"]) == 0
    text = capsys.readouterr().out
    assert "104 playable games" in text and "ALE/Zaxxon-v5" in text
    assert main(["games", "--rich-only"]) == 0
    assert "6 playable games" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--game", "Pongg"], "closest matches: Pong"),
        (["--game", "Pong", "--frame-stack", "0"], "frame_stack must be between 1 and 16"),
        (["--game", "Pong", "--resize", "84"], "expected HEIGHTxWIDTH"),
        (["--game", "Pong", "--episodes", "-1"], "episodes must be between 1 and 1000000, got -1"),
        (["--game", "Pong", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--game", "Pong", "--model", "openai:gpt-4o-mini"], "OPENAI_API_KEY"),
        (["--game", "Pong", "--prompt", "/nonexistent/prompt.txt"], "cannot read prompt file"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    result = run_cli("play", *args, "--out", str(out), env=env)
    assert result.returncode == 2, result.stderr
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path):
    args = [
        "play",
        "--game",
        "Pong",
        "--agent",
        "random",
        "--max-steps",
        "5",
        "--no-video",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0
    assert len(read_jsonl(tmp_path / "episodes.jsonl")) == 1


def test_play_with_the_demo_model_end_to_end(tmp_path):
    """The README's `make play` path, shortened: a real local VLM, real files, real videos."""
    out = tmp_path / "demo"
    result = run_cli(
        "play",
        "--game",
        "Pong",
        "--model",
        "demo",
        "--episodes",
        "2",
        "--max-steps",
        "12",
        "--seed",
        "0",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    config, steps, eps = check_run_dir(out, 2, 12, model_calls=True)
    assert config["model"] == {"spec": "demo", "provider": "local", "random_weights": True}
    assert "RANDOM WEIGHTS" in result.stderr and "RANDOM WEIGHTS" in result.stdout
    assert all(s["input_tokens"] > 0 and 0 < s["output_tokens"] <= 32 for s in steps)
    assert sum(e["unparsed"] for e in eps) == sum(not s["parsed"] for s in steps)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == 24 and summary["input_tokens"] == sum(s["input_tokens"] for s in steps)


def test_auto_uses_a_configured_server_and_its_served_model(tmp_path):
    from atari_vlm.testing.openai_server import serve_in_thread

    with serve_in_thread(model="served/tiny-vlm", reply="ACTION: FIRE") as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "", "ATARI_VLM_OPENAI_MODEL": ""}
        result = run_cli(
            "play",
            "--game",
            "Pong",
            "--model",
            "auto",
            "--max-steps",
            "3",
            "--no-video",
            "--out",
            str(tmp_path / "run"),
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert {r.body["model"] for r in server.requests if r.path.endswith("completions")} == {
            "served/tiny-vlm"
        }
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert [s["action_name"] for s in steps] == ["FIRE"] * 3
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["model"]["spec"]
        == "openai:served/tiny-vlm"
    )


def test_report_and_results_commands(tmp_path, capsys):
    runs = tmp_path / "runs"
    for agent_seed in (0, 1):
        assert (
            main(
                [
                    "play",
                    "--game",
                    "Breakout",
                    "--agent",
                    "random",
                    "--episodes",
                    "2",
                    "--max-steps",
                    "30",
                    "--seed",
                    str(agent_seed),
                    "--out",
                    str(runs / f"r{agent_seed}"),
                ]
            )
            == 0
        )
        assert (runs / f"r{agent_seed}" / "report.html").exists()  # written at the end of every run
    (runs / "r0" / "report.html").unlink()
    assert main(["report", str(runs / "r0")]) == 0
    assert "<html" in (runs / "r0" / "report.html").read_text()
    capsys.readouterr()
    results = ["results", str(runs), "--out", str(tmp_path / "results"), "--reps", "200"]
    assert main([*results, "--format", "md"]) == 0
    text = capsys.readouterr().out
    assert "| Breakout | random |" in text and "Published, not measured" in text
    assert text.startswith((tmp_path / "results" / "results.md").read_text())  # the file, then its paths
    assert {p.name for p in (tmp_path / "results").iterdir()} == {"results.md", "results.csv", "results.json"}
    assert main(["report", str(tmp_path / "nowhere")]) == 2


def test_video_overlay_adds_a_caption_strip(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "play",
                "--game",
                "Pong",
                "--agent",
                "random",
                "--max-steps",
                "5",
                "--video-overlay",
                "--no-report",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert read_video_info(out / "videos" / "episode_0000.mp4")["size"] == (320, 444)


def test_train_command_writes_curves_and_resumes(tmp_path):
    out = tmp_path / "train"
    base = [
        "train",
        "--game",
        "Pong-v5",
        "--vlm",
        "random",
        "--eval-every",
        "1",
        "--eval-seeds",
        "10000",
        "--max-steps",
        "5",
        "--out",
        str(out),
    ]
    assert main([*base, "--episodes", "2"]) == 0
    curve = read_jsonl(out / "learning_curve.jsonl")
    assert [row["episode"] for row in curve] == [0, 1, 2]
    assert (out / "learning_curve.csv").read_text().count("\n") == 4
    assert main([*base, "--episodes", "3", "--resume"]) == 0
    assert sorted(e["episode"] for e in read_jsonl(out / "episodes.jsonl")) == [0, 1, 2]
    assert main([*base, "--episodes", "3"]) == 2  # the run exists: --resume or --overwrite


def test_export_command(tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "play",
                "--game",
                "Pong",
                "--agent",
                "random",
                "--episodes",
                "2",
                "--max-steps",
                "8",
                "--no-video",
                "--no-report",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    assert main(["export", str(run), "--out", str(tmp_path / "hf"), "--top-k", "1"]) == 0
    rows = read_jsonl(tmp_path / "hf" / "data.jsonl")
    assert len(rows) == 8 and all((tmp_path / "hf" / r["image"]).exists() for r in rows)
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([], 1),
        (["--num-envs", "16"], 8),  # a hosted API: at most 8 in flight by default
        (["--num-envs", "16", "--base-url", "http://127.0.0.1:8000/v1"], 16),  # own server: one per game
        (["--num-envs", "16", "--concurrency", "3"], 3),
    ],
)
def test_concurrency_default_follows_the_games_and_the_server(extra, expected):
    from atari_vlm.cli import _run_spec, build_parser
    from atari_vlm.workers import model_spec_for

    args = build_parser().parse_args(["play", "--game", "Pong", *extra])
    assert model_spec_for(_run_spec("Pong", args)).concurrency == expected


def test_a_tiny_checkpoint_by_path_is_labelled_random(tmp_path, capsys):
    from atari_vlm.models.tiny import build_tiny_checkpoint

    checkpoint = build_tiny_checkpoint("llava", tmp_path / "tiny")
    out = tmp_path / "run"
    args = ["play", "--game", "Pong", "--model", str(checkpoint), "--episodes", "1", "--max-steps", "2"]
    assert main([*args, "--out", str(out), "--no-video", "--no-report"]) == 0
    printed = capsys.readouterr()
    assert "RANDOM WEIGHTS" in printed.out + printed.err
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == {"spec": str(checkpoint), "provider": "local", "random_weights": True}


def test_bench_ray_address_needs_the_ray_executor(tmp_path, capsys):
    args = ["bench", "--games", "Pong", "--models", "random", "--out", str(tmp_path / "b")]
    assert main([*args, "--ray-address", "auto"]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
