"""The seed's own words work: every code block of the original description runs as written.

``tests/seed_description.txt`` is a verbatim copy of the user's original description (its sha256 is
checked below). Each of its code blocks is a *snippet* (a Python block, or one command line of a shell
block), and every snippet is either run by a test here (``RUNS``) or listed in ``NOT_RUN`` with the
reason, which a test checks still holds.

How a snippet is run:

- Python blocks: verbatim, statement by statement as a REPL runs them (so a test can look at ``obs``
  right after ``obs = env.reset()``), in a fresh namespace, in a temporary directory, with the
  repository root importable as after ``pip install -e .``. Nothing in the library knows it is tested:
  ``YOUR_KEY`` goes to the project's own OpenAI-compatible server on 127.0.0.1 through the SDK's own
  variable ``OPENAI_BASE_URL`` (the server accepts no other key), and ``qwen-vl`` loads from a Hugging
  Face cache (``HF_HUB_CACHE``) holding a tiny random-weight Qwen2-VL checkpoint under the preset's
  model id: the path a user with downloaded weights takes, with tiny weights.
- Shell commands: as subprocesses from a view of the repository root (a temporary directory of links
  to its entries, so that run directories land there, not in the checkout); ``python`` is this
  interpreter and ``pip`` is ``python -m pip``.

``OVERRIDES`` says what a run changes beyond that, and why.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "tests" / "seed_description.txt"
SEED_SHA256 = "e146f9635a3d84e4a9aeab9d764addf5167679cc113aaaeaec2f8559b6b21b64"
PONG_ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
POLL_LIMIT_S = 300.0
"""How long a long-running command may take to show that it works before the test fails (a guard
against a hang, not a measure: nothing asserted depends on how fast it goes)."""

NOT_RUN: dict[str, str] = {
    "pip install gymnasium[atari] opencv-python pillow numpy torch transformers": (
        "it would download opencv-python, which atari-vlm does not use (its dependency is "
        "opencv-python-headless, and installing both puts two builds of cv2 side by side); "
        "requirements_atari_vlm.txt is the install that is checked (test_the_requirements_file_...)"
    ),
    "Speed Up Local Models": (
        "it downloads the 16 GB Qwen/Qwen2-VL-7B-Instruct weights and needs a CUDA GPU for "
        "bitsandbytes' 4-bit (as written it also stops at once with a NameError: AutoModel is never "
        "imported); atari-vlm's way is `--vlm qwen-vl --quantize 4bit --device cuda`, and example 8 "
        "of examples_atari_vlm.py loads a tiny checkpoint in 4-bit offline"
    ),
}

OVERRIDES: dict[str, str] = {
    "Example 2: Train with Qwen-VL": (
        "run with two of VLMTrainer's keyword defaults lowered for this test (max_steps None -> 1 "
        "decision per episode, max_tokens None -> 8): the snippet's 50 training episodes, 11 "
        "evaluations of 3 held-out games and checkpoints all run, but 86 whole games of Pong with "
        "chain-of-thought answers would take far longer than a test may"
    ),
    "Reduce API Costs": (
        "run after the import it presupposes, Example 1's first line "
        "(`from atari_vlm_env import AtariVLMEnvironment`), as a reader of the seed would"
    ),
    "pip install gymnasium[accept-rom-license]": (
        "run with --dry-run --no-index added: a test never downloads or changes the environment"
    ),
    "python train_atari_vlm.py --game Pong-v5 --vlm qwen-vl --use-icl": (
        "stopped with Ctrl-C (SIGINT) once its run directory records the loaded model: its 10 "
        "training episodes are whole Pong games"
    ),
    "python train_atari_vlm.py --game Pong-v5 --vlm gpt-4o --api-key YOUR_KEY": (
        "stopped with Ctrl-C (SIGINT) after the server has answered a few of its requests"
    ),
}


# --- the snippets --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    key: str  # the block's heading (Python) or the command itself (shell)
    language: str
    code: str


def seed_snippets() -> list[Snippet]:
    """Every Python block of the seed, and every command line of its shell blocks, in order."""
    text = SEED.read_text(encoding="utf-8")
    snippets = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        language, code = match.group(1), match.group(2)
        headings = re.findall(r"^#{2,4} (.+)$", text[: match.start()], flags=re.MULTILINE)
        heading = re.sub(r"[^\w\s:./-]", "", headings[-1]).strip().rstrip(":")
        if language == "python":
            snippets.append(Snippet(heading, language, code))
            continue
        assert language == "bash", f"a {language!r} block under {heading!r}: teach this test to run it"
        for line in code.splitlines():
            command = " ".join(shlex.split(line, comments=True))
            if command:
                snippets.append(Snippet(command, "bash", command))
    return snippets


def snippet(key: str) -> Snippet:
    (found,) = [s for s in seed_snippets() if s.key == key]
    return found


RUNS: dict[str, str] = {}
"""Snippet key -> the test that runs it."""


def runs(key: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(test: Callable[..., Any]) -> Callable[..., Any]:
        RUNS[key] = test.__name__
        return test

    return register


def test_the_seed_copy_is_verbatim():
    assert hashlib.sha256(SEED.read_bytes()).hexdigest() == SEED_SHA256


def test_every_snippet_is_run_or_listed_with_its_reason():
    keys = [s.key for s in seed_snippets()]
    assert len(keys) == len(set(keys)) == 12  # 5 Python blocks, 7 commands in 5 shell blocks
    assert set(keys) == set(RUNS) | set(NOT_RUN), "a snippet nobody runs, or a listed one that is gone"
    assert not set(RUNS) & set(NOT_RUN)
    assert len(NOT_RUN) <= 2
    assert set(OVERRIDES) <= set(RUNS)
    names = {name for name, value in globals().items() if callable(value) and name.startswith("test_")}
    assert set(RUNS.values()) <= names


# --- running Python blocks ---------------------------------------------------------------------------


@dataclass
class Statement:
    source: str
    value: Any  # an expression statement's value (what a REPL would print), else None
    bound: dict[str, Any]  # the names an assignment bound, with their values right after it


def run_verbatim(code: str, namespace: dict[str, Any]) -> list[Statement]:
    """Run ``code`` (the seed's own text, not outside input) one top-level statement at a time."""
    tree = ast.parse(code)
    done = []
    for node in tree.body:
        compiled_from = f"<seed line {node.lineno}>"
        if isinstance(node, ast.Expr):
            value = eval(compile(ast.Expression(node.value), compiled_from, "eval"), namespace)
        else:
            exec(compile(ast.Module([node], type_ignores=[]), compiled_from, "exec"), namespace)
            value = None
        names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        done.append(
            Statement(ast.get_source_segment(code, node) or "", value, {n: namespace[n] for n in names})
        )
    return done


@pytest.fixture
def new_user(tmp_path, monkeypatch):
    """A fresh directory, the repository root importable (as after `pip install -e .`), no key set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ATARI_VLM_OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def openai_server():
    """The project's OpenAI-compatible server, serving gpt-4o to the seed's key and no other."""
    pytest.importorskip("openai")
    from atari_vlm.testing import serve_in_thread

    with serve_in_thread(model="gpt-4o", api_key="YOUR_KEY", reply="ACTION: LEFT") as server:
        yield server


def authorization(request: Any) -> str | None:
    return {k.lower(): v for k, v in request.headers.items()}.get("authorization")


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding a tiny random-weight Qwen2-VL checkpoint as qwen-vl's model id, laid
    out as `hf download` leaves it (refs/main naming a snapshot)."""
    pytest.importorskip("transformers")
    from atari_vlm.models.presets import get_preset
    from atari_vlm.models.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("hf-hub")
    repo = root / ("models--" + get_preset("qwen-vl").model_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    build_tiny_checkpoint("qwen2_vl", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return root


@pytest.fixture
def qwen_weights_cached(hub_cache, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))  # read at import
    return hub_cache


@runs("Example 1: Basic Environment")
def test_example_1_basic_environment(new_user):
    from PIL import Image

    namespace: dict[str, Any] = {}
    done = run_verbatim(snippet("Example 1: Basic Environment").code, namespace)
    first = next(s for s in done if s.source == "obs = env.reset()").bound["obs"]
    # "obs contains: 'image': PIL Image for VLM, 'text': Game state description, 'action_space':
    # Available actions, 'frames': Stacked frames"
    assert isinstance(first, dict)
    assert isinstance(first["image"], Image.Image) and first["image"].size == (160, 210)
    assert first["text"].startswith("Your paddle (right) is at y=")
    assert first["action_space"] == PONG_ACTIONS
    assert [f.size for f in first["frames"]] == [(160, 210)]
    obs, reward, done_, truncated, info = (
        namespace[n] for n in ("obs", "reward", "done", "truncated", "info")
    )
    assert obs["action_space"] == PONG_ACTIONS and isinstance(obs["image"], Image.Image)
    assert reward == 0.0 and done_ is False and truncated is False
    assert info["episode_frame_number"] == 4 and info["step"] == 1  # one step of ALE v5's 4 frames
    assert namespace["env"].reset_info["episode_frame_number"] == 0
    namespace["env"].close()


@runs("Example 2: Train with Qwen-VL")
@pytest.mark.slow
def test_example_2_train_with_qwen_vl(new_user, qwen_weights_cached, monkeypatch):
    from train_atari_vlm import VLMTrainer

    for name, value in (("max_steps", 1), ("max_tokens", 8)):  # see OVERRIDES
        monkeypatch.setitem(VLMTrainer.__init__.__kwdefaults__, name, value)
    namespace: dict[str, Any] = {}
    done = run_verbatim(snippet("Example 2: Train with Qwen-VL").code, namespace)
    result = done[-1].value
    trainer = namespace["trainer"]
    assert trainer.out_dir == Path("runs/train-Pong-qwen-vl-s0")
    assert len(result.episodes) == 50 and [e.episode for e in result.episodes] == list(range(50))
    assert [row["episode"] for row in result.curve] == list(range(0, 51, 5))
    assert all(len(row["eval_returns"]) == 3 for row in result.curve)
    assert len(result.random_returns) == 3
    config = json.loads((trainer.out_dir / "config.json").read_text())
    # qwen-vl loaded from the cache: the tiny checkpoint's marker says its weights are random
    assert config["model"] == {"spec": "qwen-vl", "provider": "local", "random_weights": True}
    spec = config["spec"]
    assert spec["model"]["model"] == "qwen-vl" and spec["prompt"]["prompt"] == "cot"
    assert spec["train"]["use_icl"] is True and spec["env"]["game"] == "Pong"
    assert len(trainer.store.episodes("Pong")) == 50


@runs("Example 3: Use GPT-4V")
def test_example_3_use_gpt4v(new_user, openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)  # the SDK's own variable
    namespace: dict[str, Any] = {}
    try:
        run_verbatim(snippet("Example 3: Use GPT-4V").code, namespace)
    finally:
        for name in ("agent", "env"):
            if name in namespace:
                namespace[name].close()
    assert namespace["action"] == PONG_ACTIONS.index("LEFT")  # the server's answer, parsed
    (request,) = openai_server.requests
    assert authorization(request) == "Bearer YOUR_KEY"
    assert request.body["model"] == "gpt-4o"
    messages = request.body["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"] == namespace["prompt"]
    assert "expert player" in namespace["prompt"]
    user = messages[-1]["content"]
    assert any(part["type"] == "image_url" for part in user)
    assert any(part["type"] == "text" and "Your paddle" in part["text"] for part in user)


@runs("Reduce API Costs")
def test_reduce_api_costs(new_user):
    namespace: dict[str, Any] = {}
    run_verbatim(snippet("Example 1: Basic Environment").code.splitlines()[0], namespace)  # see OVERRIDES
    run_verbatim(snippet("Reduce API Costs").code, namespace)
    env = namespace["env"]
    obs = env.reset()
    assert obs["image"].size == (112, 112)  # "Smaller images"
    obs, reward, terminated, truncated, info = env.step(0)
    assert info["episode_frame_number"] == 8  # "Skip more frames"
    env.close()


def test_not_run_speed_up_local_models_reason_holds():
    """The snippet uses ``AutoModel`` without importing or defining it."""
    tree = ast.parse(snippet("Speed Up Local Models").code)
    bound = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    bound |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert "AutoModel" in used - bound
    assert "Qwen/Qwen2-VL-7B-Instruct" in snippet("Speed Up Local Models").code


# --- running shell commands --------------------------------------------------------------------------


@pytest.fixture
def repo_root_view(tmp_path):
    """A directory that looks like the repository root (links to its entries), to run commands in."""
    view = tmp_path / "repo"
    view.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in ("runs", "build", "dist"):
            (view / entry.name).symlink_to(entry)
    return view


def argv_of(command: str) -> list[str]:
    words = shlex.split(command)
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] == "pip":
        return [sys.executable, "-m", "pip", *words[1:]]
    raise AssertionError(f"no way to run {command!r}")


def command_env(**extra: str) -> dict[str, str]:
    """This process's environment (offline: conftest), this checkout's package first, no keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PIP_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env["PIP_CONFIG_FILE"] = os.devnull  # no index or wheel folder from a config: only what is installed
    env["COLUMNS"] = "200"
    return {**env, **extra}


def run_command(command: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv_of(command), cwd=cwd, env=command_env(**extra), capture_output=True, text=True, timeout=600
    )


def run_until(command: str, cwd: Path, ready: Callable[[], bool], **extra: str) -> tuple[int, str, str]:
    """Start ``command``, wait until ``ready()``, then stop it as a user would (Ctrl-C)."""
    process = subprocess.Popen(
        argv_of(command),
        cwd=cwd,
        env=command_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + POLL_LIMIT_S
    try:
        while not ready():
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"{command!r} ended with {process.returncode} first:\n{out}\n{err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} did not get there in {POLL_LIMIT_S:g} s")
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


@runs("python train_atari_vlm.py --show-recommendations")
def test_show_recommendations_needs_no_other_flag(repo_root_view):
    result = run_command("python train_atari_vlm.py --show-recommendations", repo_root_view, COLUMNS="400")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "The seed's VLM recommendations, today" in text
    for name in ("gpt-4o", "gpt-4o-mini", "qwen-vl", "qwen2.5-vl-3b", "claude-sonnet-5"):
        assert f" {name} " in text
    assert (
        "Claude 3.5 Sonnet (Anthropic), preset claude-3.5-sonnet: retired by anthropic on 2025-10-22" in text
    )
    assert "15-20" not in text and "$0.01-0.05" not in text  # the seed's unsourced scores and costs


@runs("python train_atari_vlm.py --help")
def test_help(repo_root_view):
    result = run_command("python train_atari_vlm.py --help", repo_root_view)
    assert result.returncode == 0, result.stderr
    for flag in ("--game", "--vlm", "--use-icl", "--api-key", "--show-recommendations", "--episodes"):
        assert flag in result.stdout


@runs("python train_atari_vlm.py --game Pong-v5 --vlm gpt-4o --api-key YOUR_KEY")
@pytest.mark.slow
def test_train_with_gpt4o_and_the_seeds_key(repo_root_view, openai_server):
    command = "python train_atari_vlm.py --game Pong-v5 --vlm gpt-4o --api-key YOUR_KEY"
    code, out, err = run_until(
        command,
        repo_root_view,
        lambda: len(openai_server.requests) >= 3,
        OPENAI_BASE_URL=openai_server.base_url,
    )
    assert code == 130 and "interrupted" in err, err
    for request in openai_server.requests:
        assert authorization(request) == "Bearer YOUR_KEY"
        assert request.body["model"] == "gpt-4o"
    run = repo_root_view / "runs" / "train-Pong-gpt-4o-s0"
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "train" and config["model"]["spec"] == "openai:gpt-4o"
    assert config["spec"]["model"]["model"] == "gpt-4o" and config["spec"]["env"]["game"] == "Pong"
    assert config["spec"]["train"]["use_icl"] is False and config["spec"]["episodes"] == 10
    for path in run.rglob("*"):  # the key is used, never written
        assert not path.is_file() or b"YOUR_KEY" not in path.read_bytes(), path


@runs("python train_atari_vlm.py --game Pong-v5 --vlm qwen-vl --use-icl")
@pytest.mark.slow
def test_train_with_qwen_vl_and_icl(repo_root_view, hub_cache):
    config_file = repo_root_view / "runs" / "train-Pong-qwen-vl-s0" / "config.json"
    command = "python train_atari_vlm.py --game Pong-v5 --vlm qwen-vl --use-icl"
    code, out, err = run_until(command, repo_root_view, config_file.is_file, HF_HUB_CACHE=str(hub_cache))
    assert code == 130 and "interrupted" in err, err
    config = json.loads(config_file.read_text())
    assert config["model"] == {"spec": "qwen-vl", "provider": "local", "random_weights": True}
    assert config["spec"]["train"]["use_icl"] is True and config["spec"]["env"]["game"] == "Pong"


@runs("python examples_atari_vlm.py")
@pytest.mark.slow
def test_the_examples_run_offline(repo_root_view, openai_server):
    # A key and a server in the environment must not be used: the tour is offline by default.
    result = run_command(
        "python examples_atari_vlm.py",
        repo_root_view,
        OPENAI_API_KEY="YOUR_KEY",
        OPENAI_BASE_URL=openai_server.base_url,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "9 of 9 example(s) ran" in out
    for number in range(1, 10):
        assert f"=== example {number}: done in " in out
    assert "actions: ['NOOP', 'FIRE', 'RIGHT', 'LEFT', 'RIGHTFIRE', 'LEFTFIRE']" in out  # example 1
    assert "NOTE: model 'demo' has RANDOM WEIGHTS" in out  # example 2, offline
    assert "tiny RANDOM-WEIGHT Qwen2-VL checkpoint" in out  # example 3
    assert "4 exemplars chosen" in out and "Example 4: state: " in out  # example 5: real exemplars
    assert "--- prompt with exemplars: 5 image(s)" in out  # ... that the prompt shows
    assert "episode,eval_mean_return,eval_std" in out  # example 6's learning curve
    assert "4 games at once: 8 decisions" in out  # example 9: 4 games of 2 decisions
    assert openai_server.requests == []


@runs("pip install gymnasium[accept-rom-license]")
def test_the_rom_license_extra_is_obsolete(repo_root_view):
    result = run_command("pip install --dry-run --no-index gymnasium[accept-rom-license]", repo_root_view)
    assert result.returncode == 0, result.stderr
    # ale-py ships the ROMs; Gymnasium 1.x dropped the extra, so pip only warns and installs nothing
    assert re.search(r"gymnasium \S+ does not provide the extra 'accept-rom-license'", result.stderr)
    assert "Would install" not in result.stdout


def test_not_run_seed_install_line_reason_holds(repo_root_view):
    result = run_command(
        "pip install --dry-run --no-index gymnasium[atari] opencv-python pillow numpy torch transformers",
        repo_root_view,
    )
    if result.returncode != 0:  # offline it can fail for opencv-python alone: all else is here
        assert re.findall(r"No matching distribution found for (\S+)", result.stderr) == ["opencv-python"]


def test_the_requirements_file_installs_what_the_snippets_need():
    """requirements_atari_vlm.txt is this project with the extras the snippets use, and everything it
    names is installed here at a version it allows (checked without installing anything)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    lines = [
        line.strip()
        for line in (ROOT / "requirements_atari_vlm.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines == ["-e .[openai,local]"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted, todo = [], [Requirement(f"{project['name']}[openai,local]")]
    while todo:
        requirement = todo.pop()
        if requirement.name == project["name"]:
            todo += [Requirement(r) for r in project["dependencies"]] if not wanted else []
            for extra in requirement.extras:
                todo += [Requirement(r) for r in project["optional-dependencies"][extra]]
            wanted.append(requirement)
            continue
        if requirement.marker is None or requirement.marker.evaluate():
            wanted.append(requirement)
    names = {r.name for r in wanted}
    assert {"gymnasium", "ale-py", "pillow", "numpy", "torch", "transformers", "openai"} <= names
    for requirement in wanted:
        if requirement.name == project["name"]:
            continue
        version = metadata.version(requirement.name)
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


def test_the_seeds_modules_are_packaged():
    """`pip install -e .` installs the seed's two modules beside the package (pyproject's py-modules)."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["py-modules"] == ["atari_vlm_env", "train_atari_vlm"]
    for module in setuptools["py-modules"]:
        assert (ROOT / setuptools["package-dir"][""] / f"{module}.py").is_file()
    assert (ROOT / setuptools["package-dir"]["atari_vlm"] / "__init__.py").is_file()
