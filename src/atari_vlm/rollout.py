"""Play episodes: one game loop, run by one or many concurrent workers against one model.

Each worker owns an env and an agent and takes episode numbers from a shared queue, so ``num_envs``
games talk to the model at once (an API backend overlaps their requests; a local backend batches
them). Seeds come from one root ``SeedSequence``: episode ``i`` gets the same seeds whichever worker
plays it, so a deterministic backend repeats a run exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from atari_vlm.agent import Agent, Decision
from atari_vlm.env import AtariVLMEnv
from atari_vlm.framestore import FrameStore, sent_record
from atari_vlm.models.base import Usage
from atari_vlm.rundir import RunDir
from atari_vlm.video import VideoWriter


@dataclass(frozen=True)
class EpisodeSeeds:
    env: int
    agent: int


def episode_seeds(root_seed: int, episodes: int) -> list[EpisodeSeeds]:
    """Independent env and agent seeds for each episode, derived from one root seed."""
    children = np.random.SeedSequence(root_seed).spawn(episodes)
    return [EpisodeSeeds(*(int(s) for s in child.generate_state(2))) for child in children]


def explicit_seeds(env_seeds: Sequence[int]) -> list[EpisodeSeeds]:
    """Episodes on the given env seeds (a benchmark's "seeds 0-4"), each agent seed derived from its own."""
    return [EpisodeSeeds(int(s), int(np.random.SeedSequence(int(s)).generate_state(1)[0])) for s in env_seeds]


@dataclass
class EpisodeResult:
    episode: int
    seed: int
    episode_return: float = 0.0
    steps: int = 0  # decisions taken (one env.step of the VLM env each)
    env_steps: int = 0  # ALE steps played (more than decisions with a decision interval)
    decisions: int = 0  # model calls (0 for agents without a model)
    unparsed: int = 0  # answers with no legal action, played as the fallback
    constraint_ignored: int = 0  # constrained answers outside the legal set (the backend ignored it)
    constraint_note: str | None = None  # why the backend answered free when asked to constrain, if it did
    retries: int = 0
    usage_estimated: int = 0  # decisions whose server usage was unbelievable (counted at the estimate)
    answers_truncated: int = 0  # decisions whose answer was cut to the backend's limit
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    model_latency_s: float = 0.0
    wall_s: float = 0.0
    terminated: bool = False
    truncated: bool = False
    stuck: bool = False  # ended because the screen stopped changing (EnvSpec.stuck_decisions)
    video: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EpisodeResult:
        """Back from an ``episodes.jsonl`` line (a resumed run reports the episodes it kept)."""
        return cls(
            episode=int(record["episode"]),
            seed=int(record["seed"]),
            episode_return=float(record["return"]),
            steps=int(record["steps"]),
            env_steps=int(record.get("env_steps") or 0),
            decisions=int(record["decisions"]),
            unparsed=int(record["unparsed"]),
            constraint_ignored=int(record.get("constraint_ignored") or 0),
            constraint_note=record.get("constraint_note")
            if isinstance(record.get("constraint_note"), str)
            else None,
            retries=int(record.get("retries", 0)),
            usage_estimated=_count(record.get("usage_estimated")),
            answers_truncated=_count(record.get("answers_truncated")),
            usage=Usage.from_record(record),
            model_latency_s=float(record.get("model_latency_s") or 0.0),
            cost_usd=record.get("cost_usd"),
            wall_s=float(record.get("wall_s") or 0.0),
            terminated=bool(record.get("terminated")),
            truncated=bool(record.get("truncated")),
            stuck=record.get("stuck") is True,
            video=record.get("video"),
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "seed": self.seed,
            "return": self.episode_return,
            "steps": self.steps,
            "env_steps": self.env_steps,
            "decisions": self.decisions,
            "unparsed": self.unparsed,
            "constraint_ignored": self.constraint_ignored,
            "constraint_note": self.constraint_note,
            "retries": self.retries,
            "usage_estimated": self.usage_estimated,
            "answers_truncated": self.answers_truncated,
            **self.usage.to_record(),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
            "model_latency_s": round(self.model_latency_s, 4),
            "wall_s": round(self.wall_s, 3),
            "terminated": self.terminated,
            "truncated": self.truncated,
            "stuck": self.stuck,
            "video": self.video,
        }


StepCallback = Callable[[int], None]


def _count(value: Any) -> int:
    """A count read back from a run file: a non-negative int, else 0 (records written before it)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class EpisodeSink(Protocol):
    """Receives one episode as it is played (the trajectory memory is one): what the model saw, what
    it did, and what came of it. ``finish`` is called when the episode ends, ``abort`` if it fails."""

    def add(
        self, image: np.ndarray, state_text: str, action: int, action_name: str, reward: float, lives: int
    ) -> None: ...

    def finish(self, episode_return: float) -> Any: ...

    def abort(self) -> None: ...


SinkFactory = Callable[[int, EpisodeSeeds], "EpisodeSink | None"]


async def play_episode(
    env: AtariVLMEnv,
    agent: Agent,
    *,
    episode: int,
    seeds: EpisodeSeeds,
    run: RunDir | None = None,
    video: bool = False,
    video_overlay: bool = False,
    on_step: StepCallback | None = None,
    uses_model: bool = True,
    sink: EpisodeSink | None = None,
    frames: FrameStore | None = None,
) -> EpisodeResult:
    """Play one episode to its end (or truncation), logging every decision as it happens: with
    ``frames`` (the run's store), each step also records what its request sent and the screen it was
    decided on, by reference to the store."""
    start = time.perf_counter()
    result = EpisodeResult(episode=episode, seed=seeds.env)
    finished = False
    agent.reset(seeds.agent)
    # A seeded reset reloads the ROM (0.1-0.2 s): off the event loop, so other games keep playing.
    obs, info = await asyncio.to_thread(env.reset, seed=seeds.env)
    writer = None
    if video and run is not None:
        fps = 60.0 / (env.env_spec.frame_skip * env.env_spec.decision_interval)
        writer = VideoWriter(run.video_path(episode), fps=fps, overlay=video_overlay)
        writer.add(env.last_rgb_frame, f"episode {episode} start")
    try:
        while True:
            screen = env.last_rgb_frame if frames is not None and frames.images else None
            decision: Decision = await agent.act(obs)
            if sink is not None:
                seen_image, seen_text = obs["image"], obs["text"]
            obs, reward, terminated, truncated, info = env.step(decision.action)
            if sink is not None:
                sink.add(seen_image, seen_text, decision.action, decision.action_name, reward, info["lives"])
            result.steps += 1
            result.env_steps = int(info.get("env_steps", result.steps))
            result.episode_return += reward
            if uses_model:
                result.decisions += 1
                result.unparsed += not decision.parsed and not decision.constraint_ignored
                result.constraint_ignored += decision.constraint_ignored
                result.constraint_note = result.constraint_note or decision.constraint_note
                result.retries += decision.retries
                result.usage_estimated += decision.usage_estimated
                result.answers_truncated += decision.answer_truncated
                result.usage = result.usage + decision.usage
                result.model_latency_s += decision.latency_s
                if decision.cost_usd is not None:
                    result.cost_usd = (result.cost_usd or 0.0) + decision.cost_usd
            if writer is not None:
                writer.add(
                    env.last_rgb_frame,
                    f"step {result.steps}: {decision.action_name}  reward {reward:g}  "
                    f"return {result.episode_return:g}",
                )
            if run is not None:
                recorded: dict[str, Any] = {}
                if frames is not None:
                    if screen is not None:
                        recorded["screen"] = frames.put_image(screen)
                    if decision.request is not None:
                        recorded["sent"] = sent_record(decision.request, frames)
                run.log_step(
                    {
                        "episode": episode,
                        "step": result.steps,
                        "action": decision.action,
                        "action_name": decision.action_name,
                        "text": decision.text,
                        "parsed": decision.parsed,
                        "obtained": decision.obtained,
                        "probs": decision.probs,
                        "constraint_ignored": decision.constraint_ignored,
                        "constraint_note": decision.constraint_note,
                        "reward": reward,
                        "return": result.episode_return,
                        "lives": info["lives"],
                        **decision.usage.to_record(),
                        "latency_s": round(decision.latency_s, 4),
                        "retries": decision.retries,
                        "reprompts": decision.reprompts,
                        "cost_usd": decision.cost_usd,
                        "usage_estimated": decision.usage_estimated,
                        "answer_truncated": decision.answer_truncated,
                        **recorded,
                    }
                )
            if on_step is not None:
                on_step(1)
            if terminated or truncated:
                result.terminated, result.truncated = terminated, truncated
                result.stuck = bool(info.get("stuck"))
                break
        finished = True
    finally:
        if sink is not None:
            if finished:
                sink.finish(result.episode_return)
            else:
                sink.abort()
        if writer is not None and not finished:
            writer.abort()  # no .mp4 for an episode that did not end: a resume plays it again
        elif writer is not None:
            path = writer.close()
            if path is not None and run is not None:
                result.video = str(path.relative_to(run.path))
    result.wall_s = time.perf_counter() - start
    return result


async def play_episodes(
    make_worker: Callable[[], tuple[AtariVLMEnv, Agent]],
    *,
    episodes: int,
    root_seed: int,
    num_envs: int = 1,
    run: RunDir | None = None,
    video: bool = False,
    video_overlay: bool = False,
    on_step: StepCallback | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    uses_model: bool = True,
    make_sink: SinkFactory | None = None,
    episode_offset: int = 0,
    episode_ids: Sequence[int] | None = None,
    env_seeds: Sequence[int] | None = None,
    build_in_thread: bool = True,
    frames: FrameStore | None = None,
) -> list[EpisodeResult]:
    """Play ``episodes`` episodes on ``num_envs`` concurrent workers; results in episode order.

    Workers are built in a thread (an env loads its ROM), so the event loop keeps serving the games
    already playing; ``build_in_thread=False`` builds them on the loop's thread (a keyboard player's
    window must live there).

    Episodes are numbered from ``episode_offset``, or are exactly ``episode_ids`` when given (a resumed
    run plays only the ones it lacks). Episode ``i`` always gets the ``i``-th seeds of ``root_seed``,
    so numbering, not scheduling, decides what an episode is; with ``env_seeds``, episode ``i`` is
    played on env seed ``env_seeds[i]`` instead. ``frames`` (with ``run``) records what each decision
    sent (:func:`play_episode`).
    """
    ids = (
        list(episode_ids)
        if episode_ids is not None
        else list(range(episode_offset, episode_offset + episodes))
    )
    if not ids:
        return []
    if env_seeds is not None:
        if max(ids) >= len(env_seeds):
            raise ValueError(f"episode {max(ids)} has no seed: only {len(env_seeds)} env seeds were given")
        seeds = explicit_seeds(env_seeds)
    else:
        seeds = episode_seeds(root_seed, max(ids) + 1)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in ids:
        queue.put_nowait(i)
    results: dict[int, EpisodeResult] = {}

    async def worker() -> None:
        env, agent = await asyncio.to_thread(make_worker) if build_in_thread else make_worker()
        try:
            while not queue.empty():
                i = queue.get_nowait()
                result = await play_episode(
                    env,
                    agent,
                    episode=i,
                    seeds=seeds[i],
                    run=run,
                    video=video,
                    video_overlay=video_overlay,
                    on_step=on_step,
                    uses_model=uses_model,
                    sink=make_sink(i, seeds[i]) if make_sink is not None else None,
                    frames=frames if run is not None else None,
                )
                results[i] = result
                if run is not None:
                    run.log_episode(result.to_record())
                if on_episode is not None:
                    on_episode(result)
        finally:
            env.close()

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(num_envs, len(ids))))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        # One game failed (a budget stop, a dead server): the others stop here, before the run ends,
        # so that their calls in flight are cancelled (and counted) while the run is still open.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [results[i] for i in ids]
