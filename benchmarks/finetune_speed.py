"""How long `atari-vlm finetune` takes on this machine, per tiny family: wall and CPU time.

Builds a tiny random-weight checkpoint per ``--families`` entry (atari_vlm.models.tiny), records RAM
expert Pong demonstrations once (atari_vlm.record, native 210x160 frames, as `atari-vlm record`
writes them), then runs :func:`atari_vlm.training.finetune.finetune` (what `atari-vlm finetune`
calls) ``--repeats`` times per family and mode into fresh directories. Reports the fastest and the
median run: the whole call's wall time, its CPU time (``time.process_time``: every thread of this
process, so it can exceed the wall time) and the wall time of the optimizer steps alone, with the
1-minute load average seen. On a shared machine both times grow with the other load (torch's
threads spin while they wait for a core), so the fastest run is the closest to a quiet machine.

    python benchmarks/finetune_speed.py --out /tmp/ftspeed --families llava qwen2_vl
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, print_table

from atari_vlm.models.tiny import build_tiny_checkpoint
from atari_vlm.record import record
from atari_vlm.training.finetune import finetune


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="a folder for checkpoints and demos")
    parser.add_argument("--families", nargs="+", default=["llava", "qwen2_vl"])
    parser.add_argument("--modes", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    parser.add_argument("--demos", type=int, default=2, help="expert episodes recorded")
    parser.add_argument("--demo-steps", type=int, default=200, help="decisions per demonstration")
    parser.add_argument("--max-examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    demos = out / "demos"
    if not demos.is_dir():
        record("Pong", "expert", args.demos, demos, seed=1000, max_steps=args.demo_steps)
    rows = []
    for family in args.families:
        base = out / f"base-{family}"
        if not (base / "config.json").is_file():
            build_tiny_checkpoint(family, base)
        for mode in args.modes:
            walls, cpus, trains, loads = [], [], [], []
            for repeat in range(args.repeats):
                target = out / f"tuned-{family}-{mode}-{repeat}"
                shutil.rmtree(target, ignore_errors=True)
                result = finetune(
                    base,
                    demos,
                    target,
                    lora=mode == "lora",
                    batch_size=args.batch_size,
                    max_examples=args.max_examples,
                    top_k=None,
                )
                walls.append(result.wall_s)
                cpus.append(result.cpu_s)
                trains.append(result.train_s)
                loads.append(os.getloadavg()[0])
                print(
                    f"{family} {mode} #{repeat}: {result.steps} steps, {result.examples} examples, "
                    f"wall {result.wall_s:.1f} s, CPU {result.cpu_s:.1f} s, steps {result.train_s:.1f} s, "
                    f"loss {result.losses[0]:.2f} -> {result.losses[-1]:.2f}, load {loads[-1]:.1f}",
                    flush=True,
                )
            fastest = min(range(len(walls)), key=walls.__getitem__)
            rows.append(
                [
                    family,
                    mode,
                    result.examples,
                    result.steps,
                    args.batch_size,
                    f"{result.losses[0]:.2f} -> {result.losses[-1]:.2f}",
                    f"{walls[fastest]:.1f} / {statistics.median(walls):.1f}",
                    f"{cpus[fastest]:.1f} / {statistics.median(cpus):.1f}",
                    f"{trains[fastest]:.1f} / {statistics.median(trains):.1f}",
                    f"{min(loads):.1f}-{max(loads):.1f}",
                ]
            )
    print(f"\n{machine()}; torch threads: {_threads()}; fastest / median of {args.repeats} runs\n")
    print_table(
        [
            "family",
            "mode",
            "examples",
            "steps",
            "batch",
            "loss",
            "wall s",
            "CPU s",
            "steps' wall s",
            "load avg",
        ],
        rows,
    )


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
