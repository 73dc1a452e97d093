"""A whole run: validate everything, load the model, play, and leave a complete run directory.

Validation and model loading come before the run directory is touched, so a bad option leaves
nothing behind. The CLI is a thin layer over :func:`run_play`, which takes a
:class:`~atari_vlm.spec.RunSpec`.

Example:
    >>> from atari_vlm.runner import run_play
    >>> from atari_vlm.spec import RunSpec
    >>> spec = RunSpec.build(game="Pong", model="demo", max_steps=20)
    >>> summary = run_play(spec, "runs/quick")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from atari_vlm.bench.protocols import load_protocol
from atari_vlm.errors import ConfigError, DiskFull, Terminated
from atari_vlm.framestore import FrameStore
from atari_vlm.models.base import Usage
from atari_vlm.models.costs import BudgetedVLM, BudgetExceeded, cost_usd, estimate_request_usage
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.rollout import EpisodeResult, episode_seeds, explicit_seeds, play_episodes
from atari_vlm.rundir import RunDir, read_episode_records, run_record, write_json_atomic
from atari_vlm.spec import RunSpec
from atari_vlm.stopping import StopOnSignals, signal_name
from atari_vlm.workers import action_names, model_spec_for, prompt_builder, worker_factory

__all__ = [
    "Executor",
    "MeasuredDecision",
    "RunSummary",
    "decisions_bound",
    "estimate_cost",
    "measure_decision",
    "project",
    "run_play",
    "validate",
]

DRY_RUN_FRAME_CAP = 108_000
"""ALE v5's cap, the bound of an episode that sets none shorter (for ``--dry-run``'s projection)."""


def validate(spec: RunSpec) -> None:
    """Everything that can be checked before a model loads: the prompt renders for this game's
    actions (a broken template fails at once), the protocol loads."""
    if spec.protocol is not None:
        load_protocol(spec.protocol)
    if spec.agent == "vlm":
        prompt_builder(spec, action_names(spec))


class Executor(Protocol):
    """Where a run's episodes are played when not in this process (``atari_vlm.executors``)."""

    def start(self, spec: RunSpec) -> LoadedModel | None: ...

    def play(self, *, episode_ids: list[int], run: RunDir, on_step: Any, on_episode: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass
class RunSummary:
    out: Path
    game: str
    model: dict[str, Any]
    episodes: list[EpisodeResult]
    wall_s: float
    warning: str | None = None
    cancelled_calls: int = 0  # calls cancelled in flight when the budget stopped (in spent_usd, estimated)
    stopped: str | None = None  # why the run ended early (a budget, a signal), None when it played all
    spent_usd: float | None = None  # what this invocation's calls cost (a resumed run's earlier ones not)
    skipped_records: int = 0  # bad lines in the run's files, skipped (never counted as episodes)

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
            "env_steps": sum(e.env_steps for e in self.episodes),
            "decisions": sum(e.decisions for e in self.episodes),
            "unparsed": sum(e.unparsed for e in self.episodes),
            "constraint_ignored": sum(e.constraint_ignored for e in self.episodes),
            "constraint_note": next((e.constraint_note for e in self.episodes if e.constraint_note), None),
            "retries": sum(e.retries for e in self.episodes),
            "usage_estimated": sum(e.usage_estimated for e in self.episodes),
            "answers_truncated": sum(e.answers_truncated for e in self.episodes),
            "cancelled_calls": self.cancelled_calls,
            **usage.to_record(),
            "cost_usd": self.cost_usd,
            "wall_s": round(self.wall_s, 3),
            "warning": self.warning,
            "stopped": self.stopped,
            "spent_usd": self.spent_usd,
            "skipped_records": self.skipped_records,
        }


def _describe(model: LoadedModel | None, spec: RunSpec) -> dict[str, Any]:
    if model is not None:
        return model.describe()
    return {"spec": spec.agent, "provider": "none", "random_weights": False}


def run_play(
    spec: RunSpec,
    out: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    on_start: Callable[[LoadedModel | None, int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
    loaded: LoadedModel | None = None,
    close_loaded: bool = False,
    executor: Executor | None = None,
) -> RunSummary:
    """Play ``spec.episodes`` episodes and write the run directory ``out``; returns the summary.

    ``loaded`` reuses a model already loaded (a benchmark plays many runs with one local model); the
    caller closes it, unless ``close_loaded`` hands that over (API clients belong to one event loop, so
    one made for a single run should be closed inside it). ``executor`` plays the episodes elsewhere
    (:class:`~atari_vlm.executors.RayExecutor`): its workers each load the model from the spec, the
    run directory is the same as a local run's, and the executor is closed when the run ends.

    Raises:
        ConfigError: any bad setting, or a resume under other settings, found before anything is written.
    """
    try:
        return _run_play(
            spec, Path(out), overwrite, resume, on_start, on_step, on_episode, loaded, close_loaded, executor
        )
    finally:
        if executor is not None:
            executor.close()


def _run_play(
    spec: RunSpec,
    out: Path,
    overwrite: bool,
    resume: bool,
    on_start: Callable[[LoadedModel | None, int], None] | None,
    on_step: Callable[[int], None] | None,
    on_episode: Callable[[EpisodeResult], None] | None,
    loaded: LoadedModel | None,
    close_loaded: bool,
    executor: Executor | None,
) -> RunSummary:
    if executor is not None and loaded is not None:
        raise ConfigError("an executor's workers load their own model: pass no loaded model with it")
    validate(spec)
    if executor is not None:
        model = executor.start(spec)  # the workers load the model; this stands in for it here
    elif spec.agent != "vlm":
        model = None
    elif loaded is not None:
        model = loaded
    else:
        model = load_model(model_spec_for(spec))
    if model is not None:
        # Every run prices its own calls (and stops before the call the budget cannot pay for).
        model = dataclasses.replace(model, vlm=BudgetedVLM(model.vlm, spec.max_cost_usd, model.prices))
    protocol = load_protocol(spec.protocol).to_dict() if spec.protocol else None
    record = run_record(spec, kind="play", model=_describe(model, spec), protocol=protocol)
    try:
        run = RunDir(out).open(record, spec, overwrite=overwrite, resume=resume)
    except BaseException:
        if model is not None and executor is None and (loaded is None or close_loaded):
            asyncio.run(model.vlm.aclose())
        raise
    kept = {r["episode"] for r in run.kept_episodes}
    todo = sorted(set(range(spec.episodes)) - kept)
    if on_start is not None:
        on_start(model, len(todo) * decisions_bound(spec)[0])  # each episode's bound: see decisions_bound
    start = time.perf_counter()
    stopped = None
    interrupt: KeyboardInterrupt | None = None
    with StopOnSignals() as stopper:
        try:
            try:
                if executor is not None:
                    executor.play(episode_ids=todo, run=run, on_step=on_step, on_episode=on_episode)
                else:
                    stopper.run(
                        _play_and_close(
                            spec,
                            model,
                            close_model=loaded is None or close_loaded,
                            run=run,
                            episode_ids=todo,
                            on_step=on_step,
                            on_episode=on_episode,
                        )
                    )
            except BudgetExceeded as exc:
                stopped = f"budget: {exc}"  # finished episodes stand; the cut one replays on --resume
            except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the same, a summary and a resumable run
                interrupt = exc
                stopped = f"interrupted by {signal_name(exc)}"
            finally:
                run.close()
        except OSError as exc:
            if not _disk_full(exc, run.path):
                raise
            raise DiskFull(
                f"the disk holding {run.path} is full ({exc.strerror or 'no space left'}); the finished "
                f"episodes are kept: free some space and continue with --resume --out {run.path}"
            ) from None
        # The run directory is the record: the summary is read back from it, whatever happened above.
        finished = read_episode_records(run.path / "episodes.jsonl", spec.episodes)
        summary = RunSummary(
            out=run.path,
            game=spec.game,
            model=_describe(model, spec),
            episodes=[EpisodeResult.from_record(r) for r in finished.records],
            wall_s=time.perf_counter() - start,
            warning=model.warning if model else None,
            cancelled_calls=model.vlm.cancelled_calls if model and executor is None else 0,
            stopped=stopped,
            spent_usd=model.vlm.spent_usd if model and model.prices and executor is None else None,
            skipped_records=finished.skipped + run.skipped_records,  # this read's, and the resume's
        )
        write_json_atomic(run.path / "summary.json", summary.to_dict())
    if interrupt is not None:
        done = len(summary.episodes)
        message = (
            f"{stopped}: {done} of {spec.episodes} episodes finished, summary in "
            f"{run.path / 'summary.json'}; continue with --resume --out {run.path}"
        )
        raise (Terminated if isinstance(interrupt, Terminated) else KeyboardInterrupt)(message) from None
    return summary


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _disk_full(exc: OSError, path: Path) -> bool:
    """Whether ``exc`` came of a full disk: by its errno, or (ffmpeg's broken pipe, which carries
    none) by the disk now having almost nothing free."""
    if exc.errno in DISK_FULL_ERRNOS:
        return True
    try:
        return shutil.disk_usage(path).free < 2**20
    except OSError:
        return False


async def _play_and_close(
    spec: RunSpec,
    model: LoadedModel | None,
    *,
    close_model: bool,
    run: RunDir,
    episode_ids: list[int],
    on_step: Callable[[int], None] | None,
    on_episode: Callable[[EpisodeResult], None] | None,
) -> list[EpisodeResult]:
    try:
        return await play_episodes(
            worker_factory(spec, model.vlm if model else None),
            episodes=len(episode_ids),
            episode_ids=episode_ids,
            root_seed=spec.seed,
            num_envs=spec.num_envs,
            run=run,
            video=spec.video,
            video_overlay=spec.video_overlay,
            on_step=on_step,
            on_episode=on_episode,
            uses_model=model is not None,
            env_seeds=spec.env_seeds,
            frames=FrameStore(run.path, images=spec.frames),
        )
    finally:
        if model is not None and close_model:
            await model.vlm.aclose()


def decisions_bound(spec: RunSpec) -> tuple[int, str]:
    """Decisions one episode takes: (count, "exactly" or "at most")."""
    env = spec.env
    if env.max_steps is not None:
        return env.max_steps, "at most"  # a game over can end an episode sooner
    if env.total_env_steps is not None and env.reset_on_game_over:
        return -(-env.total_env_steps // env.decision_interval), "exactly"
    frames = env.max_episode_frames or DRY_RUN_FRAME_CAP
    return -(-frames // (env.frame_skip * env.decision_interval)), "at most"


@dataclass(frozen=True)
class MeasuredDecision:
    """One real decision of a model under a spec: what ``--dry-run`` projects a run from."""

    model: dict[str, Any]
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None: no price is known for the model
    latency_s: float
    tokens_estimated: bool = False  # the server reported no usage: tokens estimated from the request

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None


class _LastRequest:
    """Keeps the last request a model was sent, to estimate its tokens if the server counts none."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.request = inner, None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def generate(self, request: Any) -> Any:
        self.request = request
        return await self.inner.generate(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def measure_decision(spec: RunSpec, *, loaded: LoadedModel | None = None) -> MeasuredDecision:
    """Play the first decision of ``spec``'s first episode against its model (``loaded``, or loaded
    here and closed after), for real. Writes nothing.

    Raises:
        ConfigError: the random and expert agents make no model calls; any bad setting.
    """
    if spec.agent != "vlm":
        raise ConfigError("--dry-run prices model calls; the random and expert agents make none")
    validate(spec)
    model = loaded or load_model(model_spec_for(spec))
    recorder = _LastRequest(BudgetedVLM(model.vlm, None, model.prices))
    env, agent = worker_factory(spec, recorder)()  # type: ignore[arg-type]
    seeds = explicit_seeds(spec.env_seeds) if spec.env_seeds else episode_seeds(spec.seed, 1)

    async def one_decision():
        try:
            agent.reset(seeds[0].agent)
            obs, _ = env.reset(seed=seeds[0].env)
            return await agent.act(obs)
        finally:
            if loaded is None:
                await model.vlm.aclose()

    try:
        decision = asyncio.run(one_decision())
    finally:
        env.close()
    usage, estimated = decision.usage, decision.usage_estimated
    if usage.input_tokens == 0 and recorder.request is not None:  # a server that counts no tokens
        usage, estimated = estimate_request_usage(recorder.request), True
    cost = decision.cost_usd
    if estimated and model.prices is not None:
        cost = cost_usd(usage, model.prices)
    return MeasuredDecision(
        model.describe(), usage.input_tokens, usage.output_tokens, cost, decision.latency_s, estimated
    )


def project(spec: RunSpec, measured: MeasuredDecision, *, decisions: int | None = None) -> dict[str, Any]:
    """A whole run projected from one measured decision: tokens, dollars (None: no price) and model
    time, over ``decisions`` (default: ``episodes x`` :func:`decisions_bound`)."""
    per_episode, bound = decisions_bound(spec)
    decisions = per_episode * spec.episodes if decisions is None else decisions
    parallel = max(1, min(spec.num_envs, model_spec_for(spec).concurrency or spec.num_envs))
    per = measured.cost_usd
    return {
        "model": measured.model,
        "input_tokens": measured.input_tokens,
        "output_tokens": measured.output_tokens,
        "tokens_estimated": measured.tokens_estimated,
        "cost_per_decision_usd": per,
        "latency_s": round(measured.latency_s, 3),
        "decisions": decisions,
        "decisions_bound": bound,
        "parallel": parallel,
        "projected_input_tokens": measured.input_tokens * decisions,
        "projected_output_tokens": measured.output_tokens * decisions,
        "estimated_cost_usd": None if per is None else round(per * decisions, 6),
        "projected_model_time_s": round(measured.latency_s * decisions / parallel, 1),
    }


def estimate_cost(spec: RunSpec) -> dict[str, Any]:
    """``--dry-run``: measure one real decision, then project the whole run from it. Writes nothing.

    The run's decisions are ``episodes x`` :func:`decisions_bound`; with no known price the tokens and
    the time are still projected, and ``estimated_cost_usd`` is None.
    """
    return project(spec, measure_decision(spec))
