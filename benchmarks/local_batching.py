"""Dynamic batching of the in-process model: 8 games batched vs 8 games answered one request at a time.

The tiny random-weight LLaVA checkpoint (``atari_vlm.models.tiny``, built into a temp dir) behind
:class:`~atari_vlm.models.local.LocalVLM`; 8 Pong games through ``rollout.play_episodes``. The same
model object serves both settings (``max_batch_size`` 8, then 1), and each repeat measures both, so
the ratio is taken within one run. Target: batched >= 4x one-at-a-time.

    python benchmarks/local_batching.py --max-tokens 4 16 32 --repeats 3

``max_tokens`` bounds each answer; the random weights often emit the end token after ~8 tokens (a
batch runs until its longest answer ends), so settings above 16 change little. Where batching pays
is the decoding steps; the prompt's prefill (~400 tokens: the system prompt, the state text, the
image) costs in proportion to the batch on a CPU, which bounds the ratio here.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _common import machine, median, pong_workers, print_table, steady_rate

from atari_vlm.models.local import LocalVLM
from atari_vlm.models.tiny import TINY_FAMILIES, build_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[4, 16, 32])
    parser.add_argument("--steps", type=int, default=40, help="decisions per game")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--family", nargs="+", default=["llava"], choices=TINY_FAMILIES)
    args = parser.parse_args()
    families = ", ".join(args.family)
    print(f"# local_batching: {args.games} games, tiny {families} (random weights) on CPU; {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.family:
            vlm = LocalVLM(build_tiny_checkpoint(family, Path(tmp) / family), max_batch_size=args.games)
            rows += measure(vlm, family, args)
    print_table(
        [
            "family",
            "max_tokens",
            "one at a time, decisions/s",
            f"batched (max {args.games}), decisions/s",
            "ratio (median)",
            "min",
            "max",
        ],
        rows,
    )


def measure(vlm: LocalVLM, family: str, args: argparse.Namespace) -> list[tuple]:
    """Rows of the table for one model: each repeat measures one-at-a-time, then batched."""
    rows = []
    for max_tokens in args.max_tokens:
        workers = pong_workers(vlm, max_steps=args.steps, max_tokens=max_tokens)
        batched, single, ratios = [], [], []
        for _ in range(args.repeats):
            vlm.max_batch_size = 1
            one = asyncio.run(steady_rate(workers, args.games))
            vlm.max_batch_size = args.games
            many = asyncio.run(steady_rate(workers, args.games))
            single.append(one)
            batched.append(many)
            ratios.append(many / one)
        rows.append(
            (
                family,
                max_tokens,
                median(single),
                median(batched),
                median(ratios),
                min(ratios),
                max(ratios),
            )
        )
    return rows


if __name__ == "__main__":
    main()
