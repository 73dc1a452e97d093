"""Example 9: many games at once against one model. A local model batches the concurrent requests
into one generate; an API model overlaps them (up to --concurrency).

    python examples/09_parallel_games.py --num-envs 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for num_envs in (1, args.num_envs):
            start = time.perf_counter()
            spec = RunSpec.build(
                game="Breakout",
                model=args.model,
                episodes=args.num_envs,
                num_envs=num_envs,
                max_steps=args.steps,
                video=False,
            )
            summary = run_play(spec, Path(tmp) / f"n{num_envs}")
            data = summary.to_dict()
            rate = data["decisions"] / (time.perf_counter() - start)
            print(f"{num_envs:3d} games at once: {data['decisions']} decisions, {rate:6.1f} decisions/s")


if __name__ == "__main__":
    main()
