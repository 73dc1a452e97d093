"""The measured gain of fine-tuning: a random-init tiny VLM, trained on expert Pong demonstrations.

Steps: build a tiny random-weight checkpoint (atari_vlm.models.tiny); record expert Pong episodes
(atari_vlm.record); fine-tune on the best ``--top-k`` of them (atari_vlm.training.finetune: filtered
behaviour cloning, play-time prompts); then play Pong through the normal ``--model <dir>`` path
(``run_play``) on env seeds 0..N-1, before and after, beside the random agent on the same seeds. Prints
mean returns with t-based 95% confidence intervals and the training time as a Markdown section.

    python benchmarks/finetune_gain.py --out /tmp/ftgain            # full games (slow: see --max-steps)
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

from atari_vlm.models.registry import load_model
from atari_vlm.models.tiny import build_tiny_checkpoint
from atari_vlm.record import record
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec
from atari_vlm.training.finetune import finetune


def evaluate(label: str, agent: str, model: str, seeds: list[int], env: dict, out: Path) -> list[float]:
    spec = RunSpec.build(
        game="Pong", model=model, agent=agent, episodes=len(seeds), env_seeds=tuple(seeds), video=False, **env
    )
    start = time.perf_counter()
    summary = run_play(spec, out / f"eval-{label}", overwrite=True)
    returns = [e.episode_return for e in summary.episodes]
    steps = sum(e.steps for e in summary.episodes)
    print(f"{label}: returns {returns} ({steps} decisions, {time.perf_counter() - start:.0f} s)", flush=True)
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="a new folder for everything")
    parser.add_argument("--family", default="llava", help="tiny checkpoint family")
    parser.add_argument("--demos", type=int, default=5, help="expert episodes recorded")
    parser.add_argument("--top-k", type=int, default=3, help="fine-tune on the best K of them")
    parser.add_argument(
        "--expert-policy",
        default="track",
        help="track: follows the ball as the state text words it (clonable from the prompt); intercept: "
        "stronger, but it allows for the paddle's momentum, which the prompt does not state",
    )
    parser.add_argument("--demo-steps", type=int, default=None, help="decision cap per demonstration")
    parser.add_argument("--max-examples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation env seeds 0..N-1")
    parser.add_argument("--max-steps", type=int, default=None, help="decision cap per game (default: none)")
    parser.add_argument("--skip-before", action="store_true", help="do not evaluate the untrained model")
    args = parser.parse_args()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = {"resize_shape": (105, 80), "max_steps": args.max_steps}
    seeds = list(range(args.seeds))
    base = out / "base"
    if not (base / "config.json").is_file():
        build_tiny_checkpoint(args.family, base, seed=0)
    demos = out / "demos"
    if not demos.is_dir():
        start = time.perf_counter()
        # Demonstrations on seeds of their own (root seed 1000): never the evaluation games.
        metas = record(
            "Pong",
            "expert",
            args.demos,
            demos,
            seed=1000,
            max_steps=args.demo_steps,
            env_options={"resize_shape": (105, 80)},
            expert_policy=args.expert_policy,
        )
        print(
            f"expert demos: returns {[m.episode_return for m in metas]} "
            f"({sum(m.steps for m in metas)} steps, {time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    tuned = out / "tuned"
    if not tuned.is_dir():
        result = finetune(
            base,
            demos,
            tuned,
            lora=not args.full,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            top_k=args.top_k,
            max_examples=args.max_examples,
            seed=0,
            on_step=lambda s, loss: (
                print(f"  step {s}: loss {loss:.4f}", flush=True) if s % 25 == 0 else None
            ),
        )
        train = {
            "steps": result.steps,
            "wall_s": result.wall_s,
            "examples": result.examples,
            "first_loss": result.losses[0],
            "last_loss": float(np.mean(result.losses[-10:])),
        }
        (out / "train.json").write_text(json.dumps(train, indent=2))
    train = json.loads((out / "train.json").read_text())
    print(f"fine-tuning: {train}", flush=True)

    random_returns = evaluate("random", "random", "demo", seeds, env, out)
    before = None if args.skip_before else evaluate("before", "vlm", str(base), seeds, env, out)
    after = evaluate("after", "vlm", str(tuned), seeds, env, out)
    load_model(str(tuned))  # the adapter directory loads through the normal --model path

    cap = f"cap {args.max_steps} decisions per game" if args.max_steps else "full games (21 points)"
    rows = [("random agent", random_returns)]
    if before is not None:
        rows.append((f"tiny {args.family}, random init (before)", before))
    rows.append((f"tiny {args.family}, fine-tuned (after)", after))
    print(
        f"\n## Fine-tuning gain (Pong)\n\n{machine()}; env seeds {seeds}, {cap}, ALE v5 settings "
        f"(frame skip 4, sticky 0.25), frames 105x80.\n"
    )
    print("| agent | mean return | 95% CI | returns |\n|---|---:|---:|---|")
    for name, values in rows:
        mean, half = ci95(values)
        print(f"| {name} | {mean:.1f} | ±{half:.1f} | {', '.join(f'{v:g}' for v in values)} |")
    print(
        f"\nTraining: {'full' if args.full else 'LoRA'} fine-tuning, {train['examples']} examples, "
        f"{train['steps']} steps, {train['wall_s']:.0f} s (loss {train['first_loss']:.2f} -> "
        f"{train['last_loss']:.3f}). Gain over random: {np.mean(after) - np.mean(random_returns):+.1f}."
    )


if __name__ == "__main__":
    main()
