"""Shared flags for the examples: every example runs offline with the `demo` model by default."""

from __future__ import annotations

import argparse


def example_args(description: str, *, model: str = "demo", steps: int = 20) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=model, help="demo | openai:<model> | <checkpoint dir> | auto")
    parser.add_argument("--steps", type=int, default=steps, help="decisions to play")
    parser.add_argument("--out", default=None, help="run directory, where the example writes one")
    return parser.parse_args()
