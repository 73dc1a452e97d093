"""Fault injection: runs survive transient failures with nothing lost, stop at once on fatal ones,
and never leak the key."""

import os
import subprocess
import sys

import pytest

from atari_vlm.testing.chaos import run_with_faults
from atari_vlm.testing.openai_server import serve_in_thread


def test_twenty_percent_transient_failures_change_nothing():
    report = run_with_faults(fault_rate=0.2, episodes=2, max_steps=30, fault_seed=1)
    assert report["injected_total"] >= 5  # the seeded mix really injected faults
    assert report["retries"] == report["injected_total"]
    assert report["episodes_completed"] == 2 and report["episodes_counted_twice"] == 0
    assert report["steps_identical_to_reference"] and report["steps_lost_or_changed"] == 0


def test_empty_completions_are_counted_as_unparsable_not_swallowed():
    report = run_with_faults(fault_rate=0.25, fault_mix=("empty", "null_content"), episodes=1, max_steps=30)
    assert report["injected_total"] > 0
    assert report["retries"] == 0  # an empty answer is an answer: counted, never retried or hidden
    assert report["unparsed"] == report["injected_total"]
    assert report["episodes_completed"] == 1


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "atari_vlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_a_wrong_key_stops_the_run_at_once_and_never_shows_the_key(tmp_path):
    secret = "sk-this-is-a-secret-key-4242"
    with serve_in_thread(api_key="the-right-key") as server:
        result = run_cli(
            "play",
            "--game",
            "Pong",
            "--model",
            "openai:m",
            "--base-url",
            server.base_url,
            "--api-key",
            secret,
            "--max-steps",
            "50",
            "--out",
            str(tmp_path / "run"),
        )
        assert len(server.requests) == 1  # fatal: no retry
    assert result.returncode == 1
    assert "API key" in result.stderr
    assert secret not in result.stdout + result.stderr
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("command", ["play", "bench"])
def test_help_never_shows_keys_from_the_environment(command):
    secret = "sk-env-secret-in-help-777"
    result = run_cli(command, "--help", env={"OPENAI_API_KEY": secret, "ANTHROPIC_API_KEY": secret})
    assert result.returncode == 0 and secret not in result.stdout
