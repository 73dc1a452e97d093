"""Setup shared by the benchmark scripts: the machine line, tables, Pong workers and a steady-state clock.

Benchmarks run from the repository root (``python benchmarks/<name>.py``), so this module is imported
as ``_common`` from the scripts' own directory.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atari_vlm.agent import Agent
from atari_vlm.env import AtariVLMEnv
from atari_vlm.models.base import VLM
from atari_vlm.rollout import play_episodes
from atari_vlm.spec import RunSpec
from atari_vlm.workers import vlm_agent


def machine() -> str:
    """One line naming what the figures were measured on."""
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return (
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), {gpu}, "
        f"Python {platform.python_version()}, {datetime.date.today().isoformat()}"
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the t-based 95% confidence interval (nan for one value)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, float("nan")
    return mean, _T975.get(n - 1, 1.96) * float(np.std(values, ddof=1)) / n**0.5


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (pastes straight into BENCHMARKS.md, reads fine in a terminal)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    print("\n".join(lines), flush=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def pong_workers(
    vlm: VLM, *, max_steps: int, max_tokens: int | None = None, **env_options: Any
) -> Callable[[], tuple[AtariVLMEnv, Agent]]:
    """``make_worker`` for ``rollout.play_episodes``: a Pong env and a VLM agent at default settings."""

    spec = RunSpec.build(game="Pong", max_steps=max_steps, max_tokens=max_tokens, **env_options)

    def make_worker() -> tuple[AtariVLMEnv, Agent]:
        env = AtariVLMEnv(spec.env, spec.observation)
        return env, vlm_agent(spec, env.action_names, vlm)

    return make_worker


async def steady_rate(make_worker: Callable[[], tuple[AtariVLMEnv, Agent]], games: int) -> float:
    """Decisions per second of ``games`` concurrent one-episode games while all of them play."""
    clock = SteadyClock()
    await play_episodes(make_worker, episodes=games, root_seed=0, num_envs=games, make_sink=clock.sink)
    return clock.rate()[0]


@dataclass
class SteadyClock:
    """Decision timestamps per game, to measure throughput only while every game is playing.

    Games start one after another (making an env and a seeded reset cost ~0.2 s each, once per
    episode) and end one after another, so the rate is taken between the moment the last game made
    its first decision and the moment the first game made its last one. Pass ``sink`` as
    ``play_episodes(make_sink=...)``.
    """

    times: dict[int, list[float]] = field(default_factory=dict)

    def sink(self, episode: int, _seeds: Any) -> _TimingSink:
        return _TimingSink(self.times.setdefault(episode, []))

    def rate(self) -> tuple[float, int]:
        """(decisions per second in the steady window, decisions in it)."""
        start = max(t[0] for t in self.times.values())
        end = min(t[-1] for t in self.times.values())
        if end <= start:
            raise RuntimeError("no window with every game playing: make episodes longer (--steps)")
        stamps = np.concatenate([np.asarray(t) for t in self.times.values()])
        inside = int(((stamps > start) & (stamps <= end)).sum())
        return inside / (end - start), inside


class _TimingSink:
    def __init__(self, times: list[float]) -> None:
        self._times = times

    def add(self, *_args: Any) -> None:
        self._times.append(time.perf_counter())

    def finish(self, episode_return: float) -> None:
        pass

    def abort(self) -> None:
        pass
