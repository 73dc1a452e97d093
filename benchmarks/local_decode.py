"""Local decoding: scored choices vs free text, in decisions per second and in unplayable answers.

Two measurements on the tiny random-weight checkpoints (``atari_vlm.models.tiny``) behind
:class:`~atari_vlm.models.local.LocalVLM`, driven by the run spec's own agent (``workers.vlm_agent``),
which resolves ``auto`` on a local model (``score`` for the basic style; ``constrained`` after free
reasoning for cot and expert):

``rate``: Pong games through ``rollout.play_episodes``, ``B`` games on a model with
``max_batch_size`` B (B = 1: one request at a time), basic style and its default 32 tokens, free vs
score on the same model object within each repeat. Target: score >= 5x free at every B. Besides
decisions per second (wall clock, while every game plays), it reports what a loaded machine
distorts less: the process's CPU time per decision over the same window, the part of it spent in
the model (the batch worker thread's CPU time in ``LocalVLM``: processor, vision tower, forwards),
and the CPU time of one prompt forward (``prefill``, per request) and of one decoding step of
``generate`` (per batch), the two costs that bound the ratio.

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
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import SteadyClock, machine, median, print_table

from atari_vlm.agent import Agent
from atari_vlm.env import AtariVLMEnv
from atari_vlm.models.local import LocalVLM
from atari_vlm.models.tiny import DEMO_FAMILY, TINY_FAMILIES, build_tiny_checkpoint
from atari_vlm.prompts import parse_action
from atari_vlm.rollout import play_episodes
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


@dataclass
class ModelMeter:
    """CPU time spent inside a :class:`LocalVLM`, measured on the batch worker thread itself
    (``time.thread_time``: other threads and processes do not count, torch's other intra-op threads
    included): every batch, and every forward of the model by the number of query tokens (a prompt,
    or one decoding step)."""

    batches: list[tuple[float, float]] = field(default_factory=list)  # (finished at, CPU s)
    prefill: list[float] = field(default_factory=list)  # CPU s per request of a prompt forward
    steps: list[float] = field(default_factory=list)  # CPU s of a one-token forward (per batch)

    def install(self, vlm: LocalVLM) -> None:
        batch, forward = vlm._generate_batch, vlm.model.forward

        @functools.wraps(batch)
        def timed_batch(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            out = batch(*args, **kwargs)
            self.batches.append((time.perf_counter(), time.thread_time() - start))
            return out

        @functools.wraps(forward)  # generate() reads the forward's signature
        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            out = forward(*args, **kwargs)
            spent = time.thread_time() - start
            ids = kwargs.get("input_ids")
            if ids is not None and ids.shape[1] == 1:
                self.steps.append(spent)
            elif ids is not None and ids.shape[1] >= 16:  # a prompt (and, once, the system prefix)
                self.prefill.append(spent / ids.shape[0])
            return out

        vlm._generate_batch = timed_batch  # type: ignore[method-assign]
        vlm.model.forward = timed_forward

    def clear(self) -> None:
        self.batches.clear()
        self.prefill.clear()
        self.steps.clear()


@dataclass
class Rate:
    """One run's figures: decisions/s (wall), and CPU ms per decision of the process and of the model."""

    per_s: float
    cpu_ms: float
    model_ms: float


async def measure_rate(
    make_worker: Callable[[], tuple[AtariVLMEnv, Agent]], games: int, meter: ModelMeter
) -> Rate:
    """``games`` concurrent one-episode games; every figure over the window while all of them play
    (:class:`~_common.SteadyClock`), the process's CPU time read at each decision's timestamp."""
    clock = SteadyClock()
    cpu_at: dict[float, float] = {}

    class Sink:
        def __init__(self, inner: Any) -> None:
            self.inner, self.add_times = inner, inner._times

        def add(self, *args: Any) -> None:
            self.inner.add(*args)
            cpu_at[self.add_times[-1]] = time.process_time()

        def finish(self, episode_return: float) -> None:
            self.inner.finish(episode_return)

        def abort(self) -> None:
            self.inner.abort()

    meter.clear()
    await play_episodes(
        make_worker,
        episodes=games,
        root_seed=0,
        num_envs=games,
        make_sink=lambda episode, seeds: Sink(clock.sink(episode, seeds)),
    )
    per_s, inside = clock.rate()
    start = max(t[0] for t in clock.times.values())
    end = min(t[-1] for t in clock.times.values())
    model = sum(cpu for done, cpu in meter.batches if start < done <= end)
    return Rate(per_s, 1000 * (cpu_at[end] - cpu_at[start]) / inside, 1000 * model / inside)


def measure_rates(args: argparse.Namespace, tmp: Path) -> None:
    rows = []
    for family in args.family:
        vlm = LocalVLM(build_tiny_checkpoint(family, tmp / family), max_batch_size=max(args.batch))
        meter = ModelMeter()
        meter.install(vlm)
        for batch in args.batch:
            runs: dict[str, list[Rate]] = {"free": [], "score": []}
            prefill: dict[str, list[float]] = {"free": [], "score": []}
            steps: list[float] = []
            for _ in range(args.repeats):
                vlm.max_batch_size = batch
                for decode, got in runs.items():
                    got.append(
                        asyncio.run(measure_rate(workers(vlm, decode, steps=args.steps), batch, meter))
                    )
                    prefill[decode].extend(meter.prefill)
                    if decode == "free":
                        steps.extend(meter.steps)
            free, score = runs["free"], runs["score"]
            ratios = [b.per_s / a.per_s for a, b in zip(free, score, strict=True)]
            cpu_ratios = [a.cpu_ms / b.cpu_ms for a, b in zip(free, score, strict=True)]
            rows.append(
                (
                    family,
                    batch,
                    median([r.per_s for r in free]),
                    median([r.per_s for r in score]),
                    median(ratios),
                    min(ratios),
                    max(ratios),
                    median([r.cpu_ms for r in free]),
                    median([r.cpu_ms for r in score]),
                    median(cpu_ratios),
                    median([r.model_ms for r in free]),
                    median([r.model_ms for r in score]),
                    1000 * median(prefill["free"]),
                    1000 * median(prefill["score"]),
                    1000 * median(steps),
                )
            )
            print(f"# done: {family} batch {batch}", file=sys.stderr, flush=True)
        asyncio.run(vlm.aclose())
    print_table(
        [
            "family", "batch", "free, decisions/s", "score, decisions/s", "ratio (median)", "min", "max",
            "free, CPU ms/decision", "score, CPU ms/decision", "CPU ratio", "free: model CPU ms",
            "score: model CPU ms", "free prefill ms/request", "score forward ms/request",
            "decode step ms/batch",
        ],
        rows,
    )  # fmt: skip


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
