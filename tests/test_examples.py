"""Every example runs offline with the demo model (in-process through runpy, to share imports)."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, *args, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setattr(sys, "argv", [name, *args])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


CASES = {
    "01_basic_environment.py": ["--steps", "20"],
    "02_gpt4v_agent.py": ["--steps", "2"],
    "03_local_checkpoint.py": ["--steps", "3"],
    "04_prompt_styles.py": ["--steps", "2"],
    "05_in_context_learning.py": ["--steps", "30"],
    "06_training.py": ["--steps", "3"],
    "07_cost_saving.py": ["--steps", "3"],
    "08_quantized_local.py": ["--steps", "2"],
    "09_parallel_games.py": ["--num-envs", "2", "--steps", "3"],
}


def test_every_example_file_is_tested():
    names = {p.name for p in EXAMPLES.glob("[0-9]*.py")}
    assert names == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_offline(name, monkeypatch, tmp_path, capsys):
    if name.startswith("08"):
        pytest.importorskip("bitsandbytes")
    run_example(name, *CASES[name], monkeypatch=monkeypatch, tmp_path=tmp_path)
    out = capsys.readouterr().out
    assert out.strip()
