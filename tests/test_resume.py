"""Runs survive a crash: kill -9 mid-episode, then --resume keeps every finished episode once and
replays the interrupted one from its start; a second run on the same directory is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from atari_vlm.rundir import read_jsonl
from atari_vlm.testing.openai_server import serve_in_thread


def reply(request):
    """Deterministic answers that depend on what the model is shown, so replays must match exactly."""
    text = json.dumps(request["messages"][-1]["content"][-1]["text"])
    return f"ACTION: {['RIGHT', 'LEFT', 'FIRE', 'NOOP'][sum(map(ord, text)) % 4]}"


def play_args(base_url, out, *extra):
    return [
        sys.executable,
        "-m",
        "atari_vlm.cli",
        "play",
        "--game",
        "Pong",
        "--model",
        "openai:m",
        "--base-url",
        base_url,
        "--api-key",
        "sk-test-resume",
        "--episodes",
        "3",
        "--max-steps",
        "40",
        "--seed",
        "11",
        "--out",
        str(out),
        *extra,
    ]


def per_episode(out):
    steps = read_jsonl(out / "steps.jsonl")
    return {
        e: [(s["step"], s["action_name"], s["reward"]) for s in steps if s["episode"] == e]
        for e in sorted({s["episode"] for s in steps})
    }


@pytest.mark.slow
def test_kill_9_mid_episode_then_resume_loses_nothing_and_counts_nothing_twice(tmp_path):
    with serve_in_thread(reply=reply, latency_s=0.02) as server:
        reference = tmp_path / "reference"
        done = subprocess.run(
            play_args(server.base_url, reference), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr

        out = tmp_path / "killed"
        proc = subprocess.Popen(
            play_args(server.base_url, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until episode 1 is under way, then kill -9
            if (out / "episodes.jsonl").exists() and any(
                s["episode"] == 1 for s in read_jsonl(out / "steps.jsonl")
            ):
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        finished = [e["episode"] for e in read_jsonl(out / "episodes.jsonl")]
        assert finished == [0], "the kill should land inside episode 1"
        assert any(s["episode"] == 1 for s in read_jsonl(out / "steps.jsonl"))

        again = subprocess.run(play_args(server.base_url, out), capture_output=True, text=True, timeout=300)
        assert again.returncode == 2 and "--resume" in again.stderr

        resumed = subprocess.run(
            play_args(server.base_url, out, "--resume"), capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr

    episodes = read_jsonl(out / "episodes.jsonl")
    assert sorted(e["episode"] for e in episodes) == [0, 1, 2]
    assert per_episode(out) == per_episode(reference)
    ref_returns = {e["episode"]: e["return"] for e in read_jsonl(reference / "episodes.jsonl")}
    assert {e["episode"]: e["return"] for e in episodes} == ref_returns
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"episode_000{i}.mp4" for i in range(3)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 3 and summary["steps"] == sum(e["steps"] for e in episodes)
    for path in out.rglob("*"):
        if path.is_file():
            assert b"sk-test-resume" not in path.read_bytes(), path


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    from atari_vlm.errors import ConfigError
    from atari_vlm.rundir import RunDir

    first = RunDir(tmp_path).open({"game": "Pong"})
    try:
        with pytest.raises(ConfigError, match=r"is in use by another atari-vlm run \(pid \d+\)"):
            RunDir(tmp_path).open({"game": "Pong"}, resume=True)
    finally:
        first.close()
    RunDir(tmp_path).open({"game": "Pong"}, resume=True).close()  # free again once the first is closed


def test_resume_refuses_a_different_run_and_a_corrupt_config(tmp_path):
    from atari_vlm.errors import ConfigError
    from atari_vlm.rundir import RunDir

    RunDir(tmp_path).open({"game": "Pong", "seed": 1, "episodes": 2}).close()
    RunDir(tmp_path).open(
        {"game": "Pong", "seed": 1, "episodes": 5}, resume=True
    ).close()  # more episodes: fine
    with pytest.raises(ConfigError, match="these settings differ from the recorded run: seed"):
        RunDir(tmp_path).open({"game": "Pong", "seed": 2, "episodes": 2}, resume=True)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable or corrupt"):
        RunDir(tmp_path).open({"game": "Pong"}, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        RunDir(tmp_path / "empty").open({"game": "Pong"}, resume=True)
    with pytest.raises(ConfigError, match="contradict"):
        RunDir(tmp_path / "x").open({}, resume=True, overwrite=True)


def test_unwritable_output_directory_is_a_clear_error_before_play(tmp_path):
    from atari_vlm.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["play", "--game", "Pong", "--agent", "random", "--out", str(blocker / "run")]) == 2


def test_a_nearly_full_disk_is_a_clear_error_before_play(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from atari_vlm.cli import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    out = tmp_path / "run"
    assert main(["play", "--game", "Pong", "--agent", "random", "--out", str(out)]) == 2
    assert not out.exists()
