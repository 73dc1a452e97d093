"""Local decoding: scored choices vs free text, in decisions per second and in unplayable answers.

Two measurements on the tiny random-weight checkpoints (``atari_vlm.models.tiny``) behind
:class:`~atari_vlm.models.local.LocalVLM`, driven by the run spec's own agent (``workers.vlm_agent``),
which resolves ``auto`` on a local model (``score`` for the basic style; ``constrained`` after free
reasoning for cot and expert):

``rate``: Pong games through ``rollout.play_episodes``, ``B`` games on a model with
``max_batch_size`` B (B = 1: one request at a time), basic style and its default 32 tokens, free vs
score on the same model object within each repeat. Target: score >= 5x free at every B.

    python benchmarks/local_decode.py rate --family llava qwen2_vl --batch 1 8 --repeats 3

``unplayable``: every decision of a few Pong games of the demo checkpoint (the tiny llava, seed 0,
as ``--model demo``), free vs auto, for each prompt style and answer format: how many answers hold
no legal action (free: the agent's parser finds none; auto: the backend's choice is not a legal
action, or its text does not parse back to it). Target: 0 under auto.

    python benchmarks/local_decode.py unplayable --games 2 --steps 300
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import machine, median, print_table, steady_rate

from atari_vlm.agent import Agent
from atari_vlm.env import AtariVLMEnv
from atari_vlm.models.local import LocalVLM
from atari_vlm.models.tiny import DEMO_FAMILY, TINY_FAMILIES, build_tiny_checkpoint
from atari_vlm.prompts import parse_action
from atari_vlm.spec import RunSpec
from atari_vlm.workers import vlm_agent

REASONING_STYLES = ("cot", "expert")


def spec_for(decode: str, *, steps: int, style: str = "basic", answer_format: str = "line") -> RunSpec:
    """A Pong run as ``play --model demo`` would make it, with ``decode`` (``auto`` resolves as the
    agent resolves it on a local model: ``score``, or ``constrained`` after reasoning for cot/expert)."""
    return RunSpec.build(
        game="Pong", max_steps=steps, decode=decode, prompt=style, answer_format=answer_format
    )


def workers(vlm: LocalVLM, decode: str, *, steps: int) -> Callable[[], tuple[AtariVLMEnv, Agent]]:
    """``make_worker`` for ``play_episodes``: a Pong env and the spec's VLM agent on ``vlm``."""
    spec = spec_for(decode, steps=steps)

    def make_worker() -> tuple[AtariVLMEnv, Agent]:
        env = AtariVLMEnv(spec.env, spec.observation)
        return env, vlm_agent(spec, env.action_names, vlm)

    return make_worker


def measure_rates(args: argparse.Namespace, tmp: Path) -> None:
    rows = []
    for family in args.family:
        vlm = LocalVLM(build_tiny_checkpoint(family, tmp / family), max_batch_size=max(args.batch))
        for batch in args.batch:
            free, score, ratios = [], [], []
            for _ in range(args.repeats):
                vlm.max_batch_size = batch
                one = asyncio.run(steady_rate(workers(vlm, "free", steps=args.steps), batch))
                two = asyncio.run(steady_rate(workers(vlm, "score", steps=args.steps), batch))
                free.append(one)
                score.append(two)
                ratios.append(two / one)
            rows.append(
                (family, batch, median(free), median(score), median(ratios), min(ratios), max(ratios))
            )
        asyncio.run(vlm.aclose())
    print_table(
        ["family", "batch", "free, decisions/s", "score, decisions/s", "ratio (median)", "min", "max"], rows
    )


async def count_unplayable(
    vlm: LocalVLM, decode: str, style: str, answer_format: str, games: int, steps: int
) -> tuple[int, int]:
    """(decisions, unplayable answers) over ``games`` concurrent Pong games of ``steps`` decisions:
    under ``free`` an answer the agent's parser finds no legal action in; otherwise a backend choice
    that is not a legal action, or whose text does not parse back to it."""
    spec = spec_for(decode, steps=steps, style=style, answer_format=answer_format)

    async def game(seed: int) -> tuple[int, int]:
        env = AtariVLMEnv(spec.env, spec.observation)
        names = env.action_names
        agent = vlm_agent(spec, names, vlm)
        obs, _ = env.reset(seed=seed)
        decisions = unplayable = 0
        for _ in range(steps):
            completion = await vlm.generate(agent.build_request(obs))
            parsed = parse_action(completion.text, names).index
            if decode == "free":
                bad = parsed is None
            else:
                bad = completion.choice not in names or parsed != names.index(completion.choice)
            decisions += 1
            unplayable += bad
            action = agent.decide(completion).action
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        env.close()
        return decisions, unplayable

    results = await asyncio.gather(*(game(seed) for seed in range(games)))
    return sum(d for d, _ in results), sum(u for _, u in results)


def measure_unplayable(args: argparse.Namespace, tmp: Path) -> None:
    vlm = LocalVLM(build_tiny_checkpoint(DEMO_FAMILY, tmp / "demo"), max_batch_size=max(args.games, 1))
    rows = []
    for style in args.style:
        for answer_format in args.answer_format:
            label = "constrained after reasoning" if style in REASONING_STYLES else "score"
            counts = [
                asyncio.run(count_unplayable(vlm, mode, style, answer_format, args.games, args.steps))
                for mode in ("free", "auto")
            ]
            rows.append((style, answer_format, label, *counts[0], *counts[1]))
    asyncio.run(vlm.aclose())
    print_table(
        ["style", "format", "auto on a local model", "free: decisions", "unplayable", "auto: decisions",
         "unplayable"],
        rows,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    rate = sub.add_parser("rate", help="decisions/s, score vs free")
    rate.add_argument("--family", nargs="+", default=list(TINY_FAMILIES), choices=TINY_FAMILIES)
    rate.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    rate.add_argument("--steps", type=int, default=40, help="decisions per game")
    rate.add_argument("--repeats", type=int, default=3)
    bad = sub.add_parser("unplayable", help="answers without a legal action, free vs auto")
    bad.add_argument("--games", type=int, default=2)
    bad.add_argument("--steps", type=int, default=300, help="decisions per game (at most)")
    bad.add_argument("--style", nargs="+", default=["basic", "cot", "expert"])
    bad.add_argument("--answer-format", nargs="+", default=["line", "json"])
    args = parser.parse_args()
    print(f"# local_decode {args.what}: tiny random-weight checkpoints via LocalVLM; {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        (measure_rates if args.what == "rate" else measure_unplayable)(args, Path(tmp))


if __name__ == "__main__":
    main()
