"""examples_atari_vlm.py, the seed's one command for its nine examples.

The whole tour (``python examples_atari_vlm.py``, every example offline) runs in
tests/test_seed_description.py, as the seed's own command; here: choosing, listing, offline defaults
and failures, on one cheap example or on example folders made for the test.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A script of the repository root (not packaged: it runs the examples beside it), loaded from its file.
_spec = importlib.util.spec_from_file_location("examples_atari_vlm", ROOT / "examples_atari_vlm.py")
tour = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tour)


def test_the_tour_holds_every_example_file_in_order():
    examples = tour.find_examples()
    assert list(examples) == list(range(1, 10))
    assert [p.name for p in examples.values()] == sorted(
        p.name for p in (ROOT / "examples").glob("[0-9]*.py")
    )
    assert tour.title(examples[9]) == "Example 9: many games at once against one model"


def test_one_example_by_number(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert tour.main(["1", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "random play for 5 steps" in out
    assert out.count("=== example ") == 1 and "1 of 1 example(s) ran" in out
    assert sys.argv[0] != str(tour.find_examples()[1])  # argv restored


def test_example_2_is_offline_unless_a_model_is_named():
    path = tour.find_examples()[2]
    assert tour.example_argv(2, path, 2, None) == [str(path), "--steps", "2", "--model", "demo"]
    assert tour.example_argv(2, path, 4, "gpt-4o-mini")[-2:] == ["--model", "gpt-4o-mini"]
    assert "--model" not in tour.example_argv(3, tour.find_examples()[3], 2, None)  # its own tiny checkpoint


def test_list_and_bad_numbers(capsys):
    assert tour.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 and lines[2].startswith("3: Example 3: a local Hugging Face VLM in-process")
    with pytest.raises(SystemExit) as exc:
        tour.main(["10"])
    assert exc.value.code == 2
    assert "no example 10; the examples are 1-9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tour.main(["--steps", "0"])


def write_examples(directory: Path, bodies: dict[str, str]) -> Path:
    directory.mkdir()
    for name, body in bodies.items():
        (directory / name).write_text(f'"""{name}: a test example."""\n{body}\n')
    return directory


def test_a_failure_is_reported_and_the_tour_goes_on(tmp_path, capsys):
    examples = write_examples(
        tmp_path / "examples",
        {
            "01_fails.py": "raise RuntimeError('boom')",
            "02_needs_extra.py": (
                "from atari_vlm.errors import DependencyNotInstalled\n"
                "raise DependencyNotInstalled('needs bitsandbytes; run `pip install bitsandbytes`')"
            ),
            "03_exits_3.py": "raise SystemExit(3)",
            "04_prints_argv.py": "import sys\nprint('argv', sys.argv[1:])",
        },
    )
    assert tour.main([], directory=examples) == 1
    out = capsys.readouterr()
    assert "RuntimeError: boom" in out.err
    assert "skipped: needs bitsandbytes" in out.out
    assert "argv ['--steps', '2']" in out.out  # ran after the failures, with the tour's default
    assert "1 of 4 example(s) ran; skipped: [2]; failed: [1, 3]" in out.out
    assert tour.main(["2", "4"], directory=examples) == 0  # a skip is not a failure
