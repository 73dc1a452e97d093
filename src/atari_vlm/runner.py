"""A whole run: validate everything, load the model, play, and leave a complete run directory.

Validation and model loading come before the run directory is touched, so a bad option leaves
nothing behind. The CLI is a thin layer over :func:`run_play`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atari_vlm import __version__
from atari_vlm.agent import Agent, RandomAgent, VLMAgent
from atari_vlm.env import AtariVLMEnv, EnvConfig
from atari_vlm.errors import ConfigError
from atari_vlm.games import game_info
from atari_vlm.models.base import Usage
from atari_vlm.models.costs import BudgetedVLM, BudgetExceeded
from atari_vlm.models.registry import LoadedModel, ModelOptions, load_model
from atari_vlm.prompts import render_system_prompt
from atari_vlm.rollout import EpisodeResult, play_episodes
from atari_vlm.rundir import RunDir, read_jsonl, write_json_atomic

if TYPE_CHECKING:
    from atari_vlm.executors import RayExecutor

AGENTS: tuple[str, ...] = ("vlm", "random")


@dataclass(frozen=True)
class PlaySettings:
    """Everything ``atari-vlm play`` needs. ``env`` holds :class:`EnvConfig` options except the seed."""

    game: str
    out: str | Path
    model: str = "auto"
    agent: str = "vlm"
    episodes: int = 1
    seed: int = 0
    num_envs: int = 1
    env: dict[str, Any] = field(default_factory=dict)
    prompt: str = "basic"
    max_tokens: int | None = None  # None: the prompt style's default
    temperature: float = 0.0
    answer_format: str = "line"
    history_steps: int = 0
    history_images: int = 0
    env_seeds: tuple[int, ...] | None = None  # play episode i on env seed env_seeds[i] (benchmarks)
    protocol: dict[str, Any] | None = None  # recorded in config.json; its settings are already in env
    video: bool = True
    video_overlay: bool = False
    max_cost_usd: float | None = None  # stop before the call that could pass this spend
    overwrite: bool = False
    resume: bool = False
    model_options: ModelOptions = field(default_factory=ModelOptions)

    def validate(self) -> EnvConfig:
        if self.agent not in AGENTS:
            raise ConfigError(f"--agent must be one of {AGENTS}, got {self.agent!r}")
        for name, value, low in (
            ("episodes", self.episodes, 1),
            ("num_envs", self.num_envs, 1),
            ("max_tokens", 1 if self.max_tokens is None else self.max_tokens, 1),
            ("seed", self.seed, 0),
            ("history_steps", self.history_steps, 0),
            ("history_images", self.history_images, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.env_seeds is not None and len(self.env_seeds) != self.episodes:
            raise ConfigError(f"{len(self.env_seeds)} env seeds given for {self.episodes} episodes")
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise ConfigError(f"temperature must be between 0 and 2, got {self.temperature}")
        return EnvConfig(game=self.game, **self.env)


@dataclass
class RunSummary:
    out: Path
    game: str
    model: dict[str, Any]
    episodes: list[EpisodeResult]
    wall_s: float
    warning: str | None = None
    stopped: str | None = None  # why the run ended early (a budget), None when it played everything
    spent_usd: float | None = None  # what this invocation's calls cost (a resumed run's earlier ones not)

    @property
    def usage(self) -> Usage:
        total = Usage()
        for e in self.episodes:
            total = total + e.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        """Dollars spent (None when no price is known for the model)."""
        costs = [e.cost_usd for e in self.episodes if e.cost_usd is not None]
        return round(sum(costs), 8) if costs else None

    def to_dict(self) -> dict[str, Any]:
        returns = [e.episode_return for e in self.episodes]
        usage = self.usage
        return {
            "game": self.game,
            "model": self.model,
            "episodes": len(self.episodes),
            "returns": returns,
            "mean_return": float(np.mean(returns)) if returns else None,
            "steps": sum(e.steps for e in self.episodes),
            "decisions": sum(e.decisions for e in self.episodes),
            "unparsed": sum(e.unparsed for e in self.episodes),
            "retries": sum(e.retries for e in self.episodes),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "image_tokens": usage.image_tokens,
            "cost_usd": self.cost_usd,
            "wall_s": round(self.wall_s, 3),
            "warning": self.warning,
            "stopped": self.stopped,
            "spent_usd": self.spent_usd,
        }


def _make_worker_factory(
    settings: PlaySettings, env_config: EnvConfig, model: LoadedModel | None
) -> Callable[[], tuple[AtariVLMEnv, Agent]]:
    info = game_info(env_config.game)

    def make_worker() -> tuple[AtariVLMEnv, Agent]:
        env = AtariVLMEnv(env_config)
        agent: Agent
        if model is None:
            agent = RandomAgent(env.action_names)
        else:
            agent = VLMAgent(
                model.vlm,
                info,
                env.action_names,
                prompt_style=settings.prompt,
                frame_stack=env_config.frame_stack,
                frame_layout=env_config.frame_layout,
                max_tokens=settings.max_tokens,
                temperature=settings.temperature,
                answer_format=settings.answer_format,
                history_steps=settings.history_steps,
                history_images=settings.history_images,
            )
        return env, agent

    return make_worker


def run_play(
    settings: PlaySettings,
    *,
    on_start: Callable[[LoadedModel | None, int | None], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    loaded: LoadedModel | None = None,
    close_loaded: bool = False,
    executor: RayExecutor | None = None,
) -> RunSummary:
    """Play ``settings.episodes`` episodes and write the run directory; returns the summary.

    ``loaded`` reuses a model already loaded (a benchmark plays many runs with one local model); the
    caller closes it, unless ``close_loaded`` hands that over (API clients belong to one event loop, so
    one made for a single run should be closed inside it).

    ``executor`` plays the episodes elsewhere (:class:`~atari_vlm.executors.RayExecutor`): its workers
    each load the model from the settings, the run directory is the same as a local run's, and the
    executor is closed when the run ends.

    Raises:
        ConfigError: any bad setting, found before anything is written.
    """
    if executor is None:
        return _run_play(settings, on_start, on_step, on_episode, loaded, close_loaded, None)
    if loaded is not None:
        raise ConfigError("an executor's workers load their own model: pass no loaded model with it")
    try:
        return _run_play(settings, on_start, on_step, on_episode, None, False, executor)
    finally:
        executor.close()


def _run_play(
    settings: PlaySettings,
    on_start: Callable[[LoadedModel | None, int | None], None] | None,
    on_step: Callable[[int], None] | None,
    on_episode: Callable[[EpisodeResult], None] | None,
    loaded: LoadedModel | None,
    close_loaded: bool,
    executor: RayExecutor | None,
) -> RunSummary:
    env_config = settings.validate()
    if settings.agent == "vlm":
        # Render the prompt once, before the (slow) model load: a bad prompt file fails at once.
        probe_env = AtariVLMEnv(env_config)
        probe_env.close()
        render_system_prompt(
            settings.prompt,
            game_info(env_config.game),
            probe_env.action_names,
            answer_format=settings.answer_format,
        )
    if executor is not None:
        model = executor.start(settings)  # the workers load the model; this stands in for it here
    elif settings.agent == "random":
        model = None
    elif loaded is not None:
        model = loaded
    else:
        model = load_model(settings.model, settings.model_options)
    if model is not None:
        # Every run prices its own calls (and stops before the call the budget cannot pay for).
        budgeted = BudgetedVLM(model.vlm, settings.max_cost_usd, model.prices)
        model = dataclasses.replace(model, vlm=budgeted)
    factory = _make_worker_factory(settings, env_config, model)
    config = {
        "atari_vlm_version": __version__,
        "python": platform.python_version(),
        "game": env_config.game,
        "env": env_config.to_dict(),
        "agent": settings.agent,
        "model": model.describe() if model else None,
        "base_url": settings.model_options.base_url,
        "prompt": settings.prompt,
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
        "answer_format": settings.answer_format,
        "history_steps": settings.history_steps,
        "history_images": settings.history_images,
        "episodes": settings.episodes,
        "seed": settings.seed,
        "num_envs": settings.num_envs,
        "env_seeds": list(settings.env_seeds) if settings.env_seeds is not None else None,
        "protocol": settings.protocol,
        "video": settings.video,
        "max_cost_usd": settings.max_cost_usd,
    }
    run = RunDir(settings.out).open(config, overwrite=settings.overwrite, resume=settings.resume)
    kept = {r["episode"] for r in run.kept_episodes}
    todo = sorted(set(range(settings.episodes)) - kept)
    if on_start is not None:
        total = len(todo) * env_config.max_steps if env_config.max_steps else None
        on_start(model, total)
    start = time.perf_counter()
    stopped = None
    try:
        if executor is not None:
            executor.play(episode_ids=todo, run=run, on_step=on_step, on_episode=on_episode)
        else:
            asyncio.run(
                _play_and_close(
                    factory,
                    model,
                    close_model=loaded is None or close_loaded,
                    episodes=len(todo),
                    episode_ids=todo,
                    root_seed=settings.seed,
                    num_envs=settings.num_envs,
                    run=run,
                    video=settings.video,
                    video_overlay=settings.video_overlay,
                    on_step=on_step,
                    on_episode=on_episode,
                    env_seeds=settings.env_seeds,
                )
            )
    except BudgetExceeded as exc:
        stopped = f"budget: {exc}"  # finished episodes stand; the interrupted one replays on --resume
    finally:
        run.close()
    # The run directory is the record: the summary is read back from it, whatever happened above.
    finished = {
        r["episode"]: r for r in read_jsonl(run.path / "episodes.jsonl") if r["episode"] < settings.episodes
    }
    summary = RunSummary(
        out=run.path,
        game=env_config.game,
        model=model.describe() if model else {"spec": "random", "provider": "none", "random_weights": False},
        episodes=[EpisodeResult.from_record(finished[i]) for i in sorted(finished)],
        wall_s=time.perf_counter() - start,
        warning=model.warning if model else None,
        stopped=stopped,
        spent_usd=model.vlm.spent_usd if model and model.prices and executor is None else None,
    )
    write_json_atomic(run.path / "summary.json", summary.to_dict())
    return summary


async def _play_and_close(
    factory, model: LoadedModel | None, *, close_model: bool, **kwargs: Any
) -> list[EpisodeResult]:
    try:
        return await play_episodes(factory, uses_model=model is not None, **kwargs)
    finally:
        if model is not None and close_model:
            await model.vlm.aclose()


def estimate_cost(settings: PlaySettings) -> dict[str, Any]:
    """``--dry-run``: measure one real decision, then price the whole run from it. Writes nothing.

    The run's decisions are ``episodes x max_steps`` (or the env-step budget over the decision
    interval, or ALE's 108,000-frame cap as an upper bound when nothing shorter is set).
    """
    env_config = settings.validate()
    if settings.agent != "vlm":
        raise ConfigError("--dry-run prices model calls; the random agent makes none")
    loaded = load_model(settings.model, settings.model_options)
    model = dataclasses.replace(loaded, vlm=BudgetedVLM(loaded.vlm, None, loaded.prices))
    env, agent = _make_worker_factory(settings, env_config, model)()

    async def one_decision():
        try:
            obs, _ = env.reset(seed=settings.env_seeds[0] if settings.env_seeds else settings.seed)
            return await agent.act(obs)
        finally:
            await model.vlm.aclose()

    try:
        decision = asyncio.run(one_decision())
    finally:
        env.close()
    per_episode, bound = env_config.max_steps, "at most"  # a game over can end an episode sooner
    if per_episode is None and env_config.total_env_steps is not None:
        # A fixed budget of env steps (resets on game over): every episode takes all of it.
        per_episode, bound = -(-env_config.total_env_steps // env_config.decision_interval), "exactly"
    if per_episode is None:
        frames = env_config.max_episode_frames or 108_000
        per_episode, bound = -(-frames // (env_config.frame_skip * env_config.decision_interval)), "at most"
    decisions = per_episode * settings.episodes
    per_decision = decision.cost_usd
    return {
        "model": model.describe(),
        "input_tokens": decision.usage.input_tokens,
        "output_tokens": decision.usage.output_tokens,
        "cost_per_decision_usd": per_decision,
        "decisions": decisions,
        "decisions_bound": bound,
        "estimated_cost_usd": None if per_decision is None else round(per_decision * decisions, 6),
        "latency_s": round(decision.latency_s, 3),
    }
