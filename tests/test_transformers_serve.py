"""OpenAICompatVLM against a real ``transformers serve`` process hosting a tiny random-weight LLaVA.

This is the one test of the OpenAI path against a server we did not write. The checkpoint is built
locally and the server runs with the Hub offline, so the test needs no network. The served model
name is the checkpoint path exactly as given on the command line (the server is pinned to it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from atari_vlm.errors import ModelError
from atari_vlm.models.base import Completion, ImagePart, Message, Request, TextPart
from atari_vlm.models.openai_compat import OpenAICompatVLM

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 180.0
MAX_TOKENS = 4


def transformers_cli() -> str:
    """The ``transformers`` executable of this interpreter's environment, or skip saying why."""
    for module in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"`transformers serve` needs {module}: pip install 'transformers[serving]'")
    local = Path(sys.executable).with_name("transformers")
    cli = str(local) if local.exists() else shutil.which("transformers")
    if cli is None:
        pytest.skip("no `transformers` command line in this environment")
    probe = subprocess.run([cli, "serve", "--help"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 or "--port" not in probe.stdout:
        pytest.skip(f"this transformers CLI has no usable `serve` command: {probe.stderr.strip()[-300:]}")
    return cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"transformers serve not healthy after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base_url, served model name) of a running ``transformers serve`` with a tiny LLaVA."""
    cli = transformers_cli()
    from atari_vlm.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve")
    checkpoint = str(build_tiny_checkpoint("llava", root / "tiny-llava"))
    port = free_port()
    log = root / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    command = [cli, "serve", checkpoint, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}/health", log)
        yield f"http://127.0.0.1:{port}/v1", checkpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask(base_url: str, model: str) -> Completion:
    frame = np.random.default_rng(0).integers(0, 256, size=(210, 160, 3), dtype=np.uint8)
    request = Request(
        (
            Message.text("system", "You play Pong."),
            Message("user", (TextPart("Which action?"), ImagePart(frame))),
        ),
        max_tokens=MAX_TOKENS,
    )

    async def go() -> Completion:
        vlm = OpenAICompatVLM(model=model, base_url=base_url, timeout_s=120.0, max_retries=1)
        try:
            return await vlm.generate(request)
        finally:
            await vlm.aclose()

    return asyncio.run(go())


def test_one_real_request_through_transformers_serve(served: tuple[str, str]) -> None:
    base_url, model = served
    completion = ask(base_url, model)
    assert isinstance(completion.text, str)  # random weights: any text, possibly empty
    assert completion.usage.input_tokens > 0
    assert 1 <= completion.usage.output_tokens <= MAX_TOKENS
    assert completion.finish_reason in ("length", "stop")
    assert completion.model.startswith(model)
    assert completion.retries == 0


def test_wrong_model_name_is_a_clear_fatal_error(served: tuple[str, str]) -> None:
    base_url, model = served
    # The server is pinned to the checkpoint path and answers 400 "pinned to ..." for any other name.
    with pytest.raises(ModelError, match="pinned") as info:
        ask(base_url, "not-the-served-model")
    assert "HTTP 400" in str(info.value) and model in str(info.value)


def test_atari_vlm_plays_through_transformers_serve(served: tuple[str, str], tmp_path: Path) -> None:
    """The whole pipeline against a real OpenAI-compatible server process serving a tiny checkpoint."""
    import json

    from atari_vlm.cli import main
    from atari_vlm.rundir import read_jsonl

    base_url, checkpoint = served
    out = tmp_path / "run"
    code = main(
        [
            "play",
            "--game",
            "Pong",
            "--model",
            f"openai:{checkpoint}",
            "--base-url",
            base_url,
            "--max-steps",
            "3",
            "--max-tokens",
            "4",
            "--no-video",
            "--no-report",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    steps = read_jsonl(out / "steps.jsonl")
    assert len(steps) == 3 and all(s["input_tokens"] > 0 for s in steps)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"] == 3
    spec = json.loads((out / "config.json").read_text())["spec"]
    assert spec["decoding"]["decode"] == "auto"  # the default, asking the server to constrain
    # Whatever transformers serve does with the constraint (honour, ignore, refuse), the run plays on
    # and says how each action was obtained.
    assert all(s["obtained"] in ("constrained", "parsed", "fallback") for s in steps)
    # transformers serve 5.2x ignores response_format: those answers are counted as constraints the
    # server ignored, not passed off as parsed text.
    assert summary["constraint_ignored"] == sum(s["constraint_ignored"] for s in steps)
    assert all(
        s["constraint_ignored"] == (s["obtained"] == "fallback") for s in steps if s["obtained"] != "parsed"
    )
