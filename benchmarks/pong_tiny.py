"""``--model pong-tiny``: what building it costs, and how it plays against random and the expert.

Builds the player with the shipped recipe (:data:`atari_vlm.models.trained.RECIPE`: the RAM
expert's ``track`` policy plays Pong, full fine-tuning of the tiny LLaVA on every decision) into
``--out``, timing it (wall, and this process's CPU time over all its threads), then plays Pong through
the normal ``run_play`` path on seeds the recipe never saw (play's ``--seed`` root, default 0; the
demonstrations come from root 1000): pong-tiny, the random agent and the default RAM expert
(``intercept``), each on the same seeds and decision cap; and how often pong-tiny picks the ``track``
expert's action on a demonstration of its own (root seed 2000). Prints mean returns with t-based 95%
confidence intervals as Markdown.

    python benchmarks/pong_tiny.py --out /tmp/pong-tiny                 # build, then 5 seeds x 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import ci95, machine

from atari_vlm.memory import TrajectoryStore
from atari_vlm.models.trained import RECIPE, TRAINED_MARKER, action_agreement, build_trained_player
from atari_vlm.record import record
from atari_vlm.rollout import episode_seeds
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec


def play(label: str, out: Path, seeds: int, root: int, max_steps: int, **settings) -> list[float]:
    spec = RunSpec.build(
        game="Pong", episodes=seeds, seed=root, max_steps=max_steps, video=False, **settings
    )
    start = time.perf_counter()
    summary = run_play(spec, out / f"eval-{label}", overwrite=True)
    returns = [e.episode_return for e in summary.episodes]
    print(f"{label}: {returns} ({time.perf_counter() - start:.0f} s)", flush=True)
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="a folder for the model and the runs")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation games")
    parser.add_argument("--root-seed", type=int, default=0, help="play's --seed for the evaluation games")
    parser.add_argument("--max-steps", type=int, default=1000, help="decisions per evaluation game")
    parser.add_argument("--build-only", action="store_true", help="time the build, play nothing")
    args = parser.parse_args()
    out: Path = args.out
    model = out / "model"
    if not (model / TRAINED_MARKER).is_file():
        report = build_trained_player(model, RECIPE, demos_dir=out / "demos")
        print(
            f"build: {report.wall_s:.1f} s wall, {report.cpu_s:.1f} s CPU; stages {report.timings}; "
            f"{report.examples} examples, {len(report.losses)} steps, loss {report.losses[0]:.3f} -> "
            f"{np.mean(report.losses[-10:]):.4f}; demo returns {report.demo_returns}",
            flush=True,
        )
    marker = json.loads((model / TRAINED_MARKER).read_text())
    if args.build_only:
        return
    demo_seeds = sorted(m.seed for m in TrajectoryStore(out / "demos").episodes("Pong"))
    eval_seeds = [s.env for s in episode_seeds(args.root_seed, args.seeds)]
    assert not set(demo_seeds) & set(eval_seeds), "evaluation seeds overlap the demonstrations"
    held = out / "held-out"
    if not held.is_dir():
        record("Pong", "expert", 1, held, seed=2000, max_steps=600, expert_policy="track")
    store = TrajectoryStore(held)
    trajectories = [store.load("Pong", m.episode_id) for m in store.episodes("Pong")]
    agreement, majority, _ = action_agreement(model, trajectories)
    common = {"seeds": args.seeds, "root": args.root_seed, "max_steps": args.max_steps}
    rows = [
        ("pong-tiny", play("pong-tiny", out, model=str(model), **common)),
        ("random agent", play("random", out, agent="random", **common)),
        ("RAM expert, intercept (default)", play("expert", out, agent="expert", **common)),
    ]
    print(
        f"\n{machine()}. Evaluation: env seeds {eval_seeds} (play --seed {args.root_seed}), "
        f"{args.max_steps} decisions per game, ALE v5 settings; demonstrations on env seeds {demo_seeds}.\n"
        f"Build (recorded in the checkpoint): {marker['wall_s']} s wall, {marker['cpu_s']} s CPU, "
        f"{marker['examples']} examples, loss {marker['first_loss']} -> {marker['last_loss']}.\n"
        f"Held-out action agreement with the track expert (600 decisions, root seed 2000): "
        f"{agreement:.3f} (majority class {majority:.3f}).\n"
    )
    print("| agent | mean return | 95% CI | returns |\n|---|---:|---:|---|")
    for name, values in rows:
        mean, half = ci95(values)
        print(f"| {name} | {mean:.1f} | ±{half:.1f} | {', '.join(f'{v:g}' for v in values)} |")
    gap = np.mean(rows[0][1]) - np.mean(rows[1][1])
    print(f"\npong-tiny minus random: {gap:+.1f}")


if __name__ == "__main__":
    main()
