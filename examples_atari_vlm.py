"""The seed's nine examples in one command, offline by default.

    python examples_atari_vlm.py              # all nine, a few decisions each
    python examples_atari_vlm.py 3 6          # examples 3 and 6
    python examples_atari_vlm.py --list       # what each one shows
    python examples_atari_vlm.py 2 --model gpt-4o-mini --steps 20   # a real model, longer

Each example is a script in ``examples/`` (run one alone with ``python examples/06_training.py``);
this runs the chosen ones in one process, so the libraries load once, and goes on after a failure
(the exit code is 1 if any failed). Offline by default: every example plays the ``demo`` model or a
tiny random-weight checkpoint it builds (their moves are noise), and example 2, whose own default
``auto`` would use an API key found in the environment, is given ``demo`` unless ``--model`` names a
model. Run from the repository root (the examples live beside this file).
"""

from __future__ import annotations

import argparse
import ast
import re
import runpy
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from atari_vlm.errors import DependencyNotInstalled

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
DEFAULT_STEPS = 2
"""Decisions per example by default: enough to see each one work in about a minute in all."""
OFFLINE_MODELS = {2: "demo"}
"""Examples whose own default model may reach an API, and the offline one the tour gives them."""
_NAME = re.compile(r"(\d{2})_[a-z0-9_]+\.py")


def find_examples(directory: Path = EXAMPLES_DIR) -> dict[int, Path]:
    """The example scripts by number (``examples/NN_name.py``), in order."""
    found = {int(m.group(1)): p for p in directory.glob("*.py") if (m := _NAME.fullmatch(p.name))}
    return dict(sorted(found.items()))


def title(path: Path) -> str:
    """The first sentence of an example's docstring ("Example 9: many games at once against one model")."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or path.stem
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".")


def example_argv(number: int, path: Path, steps: int, model: str | None) -> list[str]:
    """The command line the tour gives example ``number``."""
    argv = [str(path), "--steps", str(steps)]
    model = model or OFFLINE_MODELS.get(number)
    return [*argv, "--model", model] if model else argv


def run_example(argv: list[str]) -> None:
    """Run one example script as ``__main__`` with ``argv``, restoring this process's argv and path."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, str(Path(argv[0]).parent))  # the examples import their shared _common module
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def main(argv: Sequence[str] | None = None, *, directory: Path = EXAMPLES_DIR) -> int:
    """Run the examples ``argv`` chooses (see the module docstring); 0 when none failed, else 1."""
    examples = find_examples(directory)
    parser = argparse.ArgumentParser(
        prog="examples_atari_vlm.py",
        description="Run the seed's examples (all of them by default), offline unless --model names a model.",
    )
    parser.add_argument(
        "numbers", nargs="*", type=int, metavar="N", help=f"example numbers ({_span(examples)})"
    )
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"decisions per example (default: {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a --model for every example (default: each one's offline model: demo or a tiny checkpoint)",
    )
    parser.add_argument("--list", action="store_true", help="list the examples and exit")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.numbers) - set(examples))
    if unknown:
        parser.error(f"no example {', '.join(map(str, unknown))}; the examples are {_span(examples)}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.list:
        for number, path in examples.items():
            print(f"{number}: {title(path)}  (examples/{path.name})")
        return 0
    chosen = args.numbers or list(examples)
    failed: list[int] = []
    skipped: list[int] = []
    for number in chosen:
        path = examples[number]
        print(f"\n=== {title(path)}  (examples/{path.name}) ===", flush=True)
        start = time.perf_counter()
        try:
            run_example(example_argv(number, path, args.steps, args.model))
        except SystemExit as exc:  # an example's own argument error or exit status
            if exc.code not in (0, None):
                failed.append(number)
        except DependencyNotInstalled as exc:  # an optional extra (bitsandbytes for example 8)
            print(f"skipped: {exc}")
            skipped.append(number)
        except Exception:
            traceback.print_exc()
            failed.append(number)
        outcome = "FAILED" if number in failed else "skipped" if number in skipped else "done"
        print(f"=== example {number}: {outcome} in {time.perf_counter() - start:.1f} s ===", flush=True)
    ran = len(chosen) - len(failed) - len(skipped)
    summary = f"\n{ran} of {len(chosen)} example(s) ran"
    if skipped:
        summary += f"; skipped: {skipped}"
    if failed:
        summary += f"; failed: {failed}"
    print(summary)
    return 1 if failed else 0


def _span(examples: dict[int, Path]) -> str:
    return f"{min(examples)}-{max(examples)}" if examples else "none"


if __name__ == "__main__":
    sys.exit(main())
