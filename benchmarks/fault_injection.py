"""Fault injection at scale: the figures in RELIABILITY.md.

For each failure rate, plays a reference run and a run against a server that fails that fraction of
calls with a seeded mix of transient faults (429 with and without Retry-After, 500, 502, 503, a
connection reset, a truncated body, a non-JSON body, a response that never comes), then compares.

    python benchmarks/fault_injection.py --episodes 3 --max-steps 100 --rates 0.1,0.2,0.4
"""

from __future__ import annotations

import argparse
import json

from atari_vlm.testing.chaos import run_with_faults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--rates", default="0.1,0.2,0.4")
    parser.add_argument("--game", default="Pong")
    args = parser.parse_args()
    print(
        "| failure rate | calls | faults injected (by kind) | retries | episodes completed | "
        "counted twice | steps lost or changed |"
    )
    print("|---|---|---|---|---|---|---|")
    for rate in (float(r) for r in args.rates.split(",")):
        r = run_with_faults(fault_rate=rate, episodes=args.episodes, max_steps=args.max_steps, game=args.game)
        kinds = ", ".join(f"{k}: {v}" for k, v in r["injected"].items())
        print(
            f"| {rate:.0%} | {r['calls']} | {r['injected_total']} ({kinds}) | {r['retries']} | "
            f"{r['episodes_completed']}/{r['episodes_expected']} | {r['episodes_counted_twice']} | "
            f"{r['steps_lost_or_changed']} |",
            flush=True,
        )
    print(json.dumps({"episodes": args.episodes, "max_steps": args.max_steps, "game": args.game}))


if __name__ == "__main__":
    main()
