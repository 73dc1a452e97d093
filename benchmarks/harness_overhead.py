"""Harness cost per decision vs one raw ALE step (issue: parallel play, benchmark 1).

The model is replaced by an instant one that answers "ACTION: NOOP", so what is timed is everything
atari-vlm adds: observation (resize, stack, RAM state text), request building, image encoding as an
API backend would do it (JPEG data URL), parsing, env step, and the step record written to disk.

    python benchmarks/harness_overhead.py --steps 2000 --repeats 5

Prints the median over repeats of (harness time per decision - raw step time) / raw step time, i.e.
the extra cost in units of one raw `ALE/Pong-v5` step. Times are CPU time of this process
(``time.process_time``, every thread counted), so that other work on the machine does not land in
one side of the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import ale_py
import gymnasium as gym

from atari_vlm import imaging
from atari_vlm.env import AtariVLMEnv
from atari_vlm.models.base import Completion, Request, Usage
from atari_vlm.rollout import EpisodeSeeds, play_episode
from atari_vlm.rundir import RunDir, run_record
from atari_vlm.spec import RunSpec
from atari_vlm.workers import vlm_agent


class InstantVLM:
    """Answers at once, but encodes every image as an API backend would, so that cost is counted."""

    name = "instant"

    def __init__(self, encode: bool):
        self.encode = encode

    async def generate(self, request: Request) -> Completion:
        if self.encode:
            for message in request.messages:
                for image in message.images:
                    imaging.data_url(image.pixels)
        return Completion("ACTION: NOOP", Usage(100, 3))

    async def aclose(self) -> None:
        pass


def raw_steps(steps: int) -> float:
    gym.register_envs(ale_py)
    env = gym.make("ALE/Pong-v5", repeat_action_probability=0.0)
    env.reset(seed=0)
    start = time.process_time()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(0)
        if term or trunc:
            env.reset()
    elapsed = time.process_time() - start
    env.close()
    return elapsed / steps


def harness_steps(steps: int, encode: bool, options: dict) -> float:
    spec = RunSpec.build(game="Pong", max_steps=steps, repeat_action_probability=0.0, **options)
    env = AtariVLMEnv(spec.env, spec.observation)
    agent = vlm_agent(spec, env.action_names, InstantVLM(encode))
    # ale-py reloads the ROM on a seeded reset (~0.2 s): time it apart and take it out, since it is
    # paid once per episode, not per decision.
    start = time.process_time()
    env.reset(seed=0)
    reset_s = time.process_time() - start
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp).open(run_record(spec, kind="play"), spec)
        start = time.process_time()
        result = asyncio.run(play_episode(env, agent, episode=0, seeds=EpisodeSeeds(0, 0), run=run))
        elapsed = time.process_time() - start - reset_s
        run.close()
    env.close()
    return elapsed / result.steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    settings = {
        "default (max-pooled frame, JPEG data URL)": ({}, True),
        "default, no encoding (local backend)": ({}, False),
        "default without max-pooling (--no-max-pool)": ({"max_pool": False}, True),
        "frame_stack=4 grid, 105x80": ({"frame_stack": 4, "resize_shape": (105, 80)}, True),
    }
    print(f"{'setting':45s} raw step us  harness us  extra/raw (median of {args.repeats})")
    for label, (options, encode) in settings.items():
        ratios, raws, harnesses = [], [], []
        for _ in range(args.repeats):
            raw = raw_steps(args.steps)
            harness = harness_steps(args.steps, encode, options)
            raws.append(raw)
            harnesses.append(harness)
            ratios.append((harness - raw) / raw)
        print(
            f"{label:45s} {statistics.median(raws) * 1e6:10.0f} {statistics.median(harnesses) * 1e6:11.0f}"
            f"  {statistics.median(ratios):8.2f}x"
        )


if __name__ == "__main__":
    main()
