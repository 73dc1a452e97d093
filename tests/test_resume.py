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
from atari_vlm.spec import RunSpec
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


def _open(path, spec, **options):
    from atari_vlm.rundir import RunDir, run_record

    return RunDir(path).open(run_record(spec, kind="play"), spec, **options)


PONG = RunSpec.build(game="Pong", agent="vlm", model="demo", seed=1, episodes=2, train=True)
ALTERNATIVES = {
    "game": "Breakout",
    "filler_action": "FIRE",
    "reset_on_game_over": {"reset_on_game_over": True, "total_env_steps": 100},  # it needs a budget
    "resize_shape": (84, 84),
    "prompt": "cot",
    "model": "openai:gpt-4o-mini",
    "device": "cuda",
    "quantize": "4bit",
    "protocol": "machado",
    "env_seeds": (5, 6),
    "eval_seeds": (7,),
    "demos": ("demos/Pong",),
    "ray_address": {"ray_address": "auto", "executor": "ray"},  # it needs the ray executor
    "api_key": "sk-another-key",
    "prompt_cache_key": "run-7",
    "base_url": "http://127.0.0.1:1/v1",
    "max_cost_usd": 1.0,
    "finetune_lr": 0.01,
}


def _other_value(name, setting, default):
    """A valid value of setting ``name`` other than ``default`` (its value in PONG)."""
    if name in ALTERNATIVES:
        return ALTERNATIVES[name]
    if setting.choices:
        return next(c for c in setting.choices if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, float):
        return default + 0.5 if default < 1 else default / 2
    if isinstance(default, int):
        return default + 1
    if default is None:
        return 3  # the optional integers (max_steps, total_env_steps, max_tokens, concurrency, ...)
    raise AssertionError(f"no alternative value for {name}")


# template_sha256 is derived from a prompt file's text: test_spec.py edits a file and resumes.
@pytest.mark.parametrize("name", sorted(set(RunSpec.flat_settings()) - {"template_sha256"}))
def test_resume_refuses_every_setting_that_changes_play_and_accepts_the_rest(tmp_path, name):
    """Derived from the spec: whatever field is added, its role decides what a resume does with it."""
    from atari_vlm.errors import ConfigError

    _, setting, _ = RunSpec.flat_settings()[name]
    value = _other_value(name, setting, PONG.get(name))
    _open(tmp_path, PONG.replace(api_key="sk-first-key")).close()
    changed = PONG.replace(**(value if isinstance(value, dict) else {name: value}))
    if setting.role in ("play", "sample"):
        with pytest.raises(ConfigError, match=rf"these settings differ from the recorded run: {name} "):
            _open(tmp_path, changed, resume=True)
    else:
        _open(tmp_path, changed, resume=True).close()
        assert b"sk-" not in (tmp_path / "config.json").read_bytes()  # a key is never recorded


def test_a_growing_list_of_seeds_resumes_and_any_other_change_is_refused(tmp_path):
    from atari_vlm.errors import ConfigError

    seeds = PONG.replace(env_seeds=(0, 1))
    _open(tmp_path, seeds).close()
    _open(tmp_path, seeds.replace(env_seeds=(0, 1, 2), episodes=3), resume=True).close()
    for other in ((0,), (1, 0, 2), (0, 2, 3)):
        with pytest.raises(ConfigError, match="env_seeds"):
            _open(tmp_path, seeds.replace(env_seeds=other, episodes=1), resume=True)


def test_a_reference_agent_resumes_whatever_the_model_settings(tmp_path):
    """The random agent reads no prompt and calls no model: only its env settings and seeds count."""
    from atari_vlm.errors import ConfigError

    random = PONG.replace(agent="random")
    _open(tmp_path, random).close()
    _open(tmp_path, random.replace(base_url="http://127.0.0.1:1/v1", prompt="cot"), resume=True).close()
    with pytest.raises(ConfigError, match="frame_skip 4 -> 8"):
        _open(tmp_path, random.replace(frame_skip=8), resume=True)


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    from atari_vlm.errors import ConfigError

    first = _open(tmp_path, PONG)
    try:
        with pytest.raises(ConfigError, match=r"is in use by another atari-vlm run \(pid \d+\)"):
            _open(tmp_path, PONG, resume=True)
    finally:
        first.close()
    _open(tmp_path, PONG, resume=True).close()  # free again once the first is closed


def test_resume_refuses_a_different_run_and_a_corrupt_config(tmp_path):
    from atari_vlm.errors import ConfigError

    _open(tmp_path, PONG).close()
    _open(tmp_path, PONG.replace(episodes=5), resume=True).close()  # more episodes: fine
    with pytest.raises(ConfigError, match="these settings differ from the recorded run: seed 1 -> 2"):
        _open(tmp_path, PONG.replace(seed=2), resume=True)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "spec": {**config["spec"], "format_version": 1}})
    )
    with pytest.raises(ConfigError, match="run spec format 1 is not this atari-vlm's"):
        _open(tmp_path, PONG, resume=True)
    (tmp_path / "config.json").write_text(json.dumps({"game": "Pong", "seed": 1}))
    with pytest.raises(ConfigError, match="written by an older atari-vlm"):
        _open(tmp_path, PONG, resume=True)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable or corrupt"):
        _open(tmp_path, PONG, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        _open(tmp_path / "empty", PONG, resume=True)
    with pytest.raises(ConfigError, match="contradict"):
        _open(tmp_path / "x", PONG, resume=True, overwrite=True)


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


def wait_for(condition, what, proc, limit_s=120):
    """Wait for a state of the run or the server (never a fixed sleep); fail if the run ends first."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} after {limit_s} s"
        time.sleep(0.02)


def finished_episodes(out):
    path = out / "episodes.jsonl"
    return [e["episode"] for e in read_jsonl(path)] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)])
def test_sigterm_or_two_sigints_mid_request_end_the_run_like_ctrl_c_and_resume_finishes_it(tmp_path, signals):
    """A stalled request (the server holds it), then SIGTERM (or Ctrl-C twice): a message, no
    traceback, summary.json of the finished episodes, and --resume plays the rest, none lost or doubled."""
    with serve_in_thread(reply=reply, hang_s=120) as server:
        reference = tmp_path / "reference"
        done = subprocess.run(
            play_args(server.base_url, reference), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr

        out = tmp_path / "stopped"
        env = {**os.environ, "COLUMNS": "400"}
        proc = subprocess.Popen(
            play_args(server.base_url, out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        wait_for(lambda: finished_episodes(out) == [0], "episode 0 finished", proc)
        server.add_faults(*["hang"] * 20)  # every request from here on stalls (retries included)
        wait_for(
            lambda: server.stats()["in_flight"] >= 1 and server.pending_faults < 20, "a stalled request", proc
        )
        for signum in signals:  # a second Ctrl-C comes while the first is still being handled
            os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=120)
        server.clear_faults()

        name = "SIGTERM" if signals[0] == signal.SIGTERM else "SIGINT"
        assert proc.returncode == (143 if name == "SIGTERM" else 130), stderr
        assert "Traceback" not in stderr, stderr
        assert f"interrupted: interrupted by {name}: 1 of 3 episodes finished" in stderr, stderr
        assert "--resume" in stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["episodes"] == 1 and summary["stopped"] == f"interrupted by {name}"
        assert not list((out / "videos").glob("episode_0001*"))  # the cut episode left no video

        resumed = subprocess.run(
            play_args(server.base_url, out, "--resume"), capture_output=True, text=True, timeout=300
        )
        assert resumed.returncode == 0, resumed.stderr

    assert finished_episodes(out) == [0, 1, 2]
    assert per_episode(out) == per_episode(reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 3 and summary["stopped"] is None


@pytest.fixture
def default_signals():
    """Python's own SIGINT/SIGTERM handlers for the test (the run installs its handler only over
    those): an earlier test's library (``ray.init`` sets a SIGTERM handler in the driver) may have
    left others, and a SIGTERM sent to this process would then end pytest itself."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in old.items():
        signal.signal(s, handler)


def sigterm_after_first(result):
    """An on_episode callback that sends this process SIGTERM once episode 0 is on disk (only while
    the run's own handler is in place: never the default, which would end pytest)."""
    if result.episode == 0:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise AssertionError("the run installed no SIGTERM handler")
        os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_in_process_stops_play_with_a_summary_and_resume_finishes(tmp_path, default_signals):
    from atari_vlm.errors import Terminated
    from atari_vlm.runner import run_play

    spec = RunSpec.build(game="Pong", agent="random", seed=5, episodes=3, max_steps=6)
    reference = run_play(spec, tmp_path / "reference")
    out = tmp_path / "run"
    with pytest.raises(Terminated, match=r"interrupted by SIGTERM: 1 of 3 episodes finished"):
        run_play(spec, out, on_episode=sigterm_after_first)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone with it
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 1 and summary["stopped"] == "interrupted by SIGTERM"
    resumed = run_play(spec, out, resume=True)
    assert [(e.episode, e.steps, e.episode_return) for e in resumed.episodes] == [
        (e.episode, e.steps, e.episode_return) for e in reference.episodes
    ]
    assert per_episode(out) == per_episode(tmp_path / "reference")


def test_sigterm_stops_training_with_a_summary_and_resume_finishes(tmp_path, default_signals):
    from atari_vlm.errors import Terminated
    from atari_vlm.training import VLMTrainer

    settings = dict(eval_every=5, eval_seeds=(10_000,), max_steps=5, env_options={"frame_skip": 8})
    out = tmp_path / "train"
    with pytest.raises(Terminated, match=r"interrupted by SIGTERM: 1 of 3 training episodes finished"):
        VLMTrainer("Pong", "random", out_dir=out, **settings).train(3, on_episode=sigterm_after_first)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "interrupted by SIGTERM"
    result = VLMTrainer.resume(out).train(3)
    assert [e.episode for e in result.episodes] == [0, 1, 2]
    assert sorted(e["episode"] for e in read_jsonl(out / "episodes.jsonl")) == [0, 1, 2]
