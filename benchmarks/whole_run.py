"""Whole-run decisions per second: N games x D decisions through ``run_play`` against a server that
answers after L seconds, set-up included (env creation, seeded resets, video writers, the run dir).

Ideal is N x D decisions in D x L seconds (every game waiting on the server together):
ratio = (N x D / wall) / (N / L). The server runs in its own process, as a real one does.

    python benchmarks/whole_run.py --games 1 16 64 --decisions 20 --latency 0.2 --repeats 3

It also times N game starts alone ("starts s"): building an env and its seeded reset load the ROM
twice in ale-py, which holds the GIL meanwhile, so they cannot overlap however they are scheduled.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import machine, median, print_table
from api_throughput import server_process

from atari_vlm.env import AtariVLMEnv
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec


def one_run(base_url: str, games: int, decisions: int, video: bool) -> float:
    """Wall seconds of the whole run."""
    spec = RunSpec.build(
        game="Pong",
        model="openai:bench",
        base_url=base_url,
        api_key="not-needed",
        episodes=games,
        num_envs=games,
        max_steps=decisions,
        video=video,
        decode="free",
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_play(spec, Path(tmp) / "run")
        wall = time.perf_counter() - start
    assert sum(e.decisions for e in summary.episodes) == games * decisions
    return wall


def game_starts(games: int) -> float:
    """Seconds to start ``games`` games as a run does (build the env, seeded reset), one after another:
    the part of a run's set-up that the GIL serialises."""
    start = time.perf_counter()
    for seed in range(games):
        env = AtariVLMEnv(RunSpec.build(game="Pong").env)
        env.reset(seed=seed)
        env.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--games", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--decisions", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-video", dest="video", action="store_false")
    args = parser.parse_args()
    print(
        f"# whole_run: L = {args.latency * 1000:.0f} ms, {args.decisions} decisions/game, video {args.video}"
    )
    print(f"# {machine()}")
    rows = []
    with server_process(args.latency) as base_url:
        for n in args.games:
            walls = [one_run(base_url, n, args.decisions, args.video) for _ in range(args.repeats)]
            starts = median([game_starts(n) for _ in range(args.repeats)])
            rate = n * args.decisions / median(walls)
            ideal = n / args.latency
            ratios = [n * args.decisions / w / ideal for w in walls]
            best = n * args.decisions / (starts + args.decisions * args.latency) / ideal
            rows.append(
                (n, median(walls), starts, rate, ideal, median(ratios), min(ratios), max(ratios), best)
            )
    headers = ["games N", "wall s", "starts s", "decisions/s", "ideal N/L", "ratio (median)", "min", "max"]
    print_table([*headers, "bound with serial starts"], rows)


if __name__ == "__main__":
    main()
