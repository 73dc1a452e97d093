"""Where episodes are played: in this process (``rollout.play_episodes``) or spread over a Ray cluster.

:class:`RayExecutor` starts Ray actors; each builds its own model and envs from the
:class:`~atari_vlm.spec.RunSpec` (models never travel between processes, only the spec does) and
plays the episodes the driver hands it, up to ``num_envs`` at once against its one model (so a local
model still batches). Everything an episode produced (its result, its step records, its video as
bytes) comes back in the task's return value, because a cluster's workers need not share a
filesystem; the driver writes it into the one run directory, which then holds the same files as a
local run. Episode ``i`` gets the seeds a local run gives it (``episode_seeds(seed, n)[i]``, or
``env_seeds[i]``) wherever it runs, so a deterministic backend gives the same per-episode results.

Each worker prices its own calls as a local run does; a spending cap (``max_cost_usd``) is enforced
within one process only, so the Ray executor refuses it rather than let each worker spend it all.

``ray`` is an optional extra (``pip install "atari-vlm[ray]"``), imported only when used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atari_vlm.errors import ConfigError, ModelError, require
from atari_vlm.framestore import FrameStore
from atari_vlm.models.base import Completion, Request
from atari_vlm.models.costs import BudgetedVLM
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.rollout import EpisodeResult, EpisodeSeeds, episode_seeds, explicit_seeds, play_episode
from atari_vlm.rundir import RunDir
from atari_vlm.spec import RunSpec
from atari_vlm.workers import model_spec_for, worker_factory

if TYPE_CHECKING:
    from atari_vlm.agent import Agent
    from atari_vlm.env import AtariVLMEnv

__all__ = [
    "EXECUTORS",
    "EpisodeOutput",
    "EpisodePlayer",
    "RayExecutor",
    "RemoteModel",
    "ray_session",
    "write_episode",
]

EXECUTORS: tuple[str, ...] = ("local", "ray")


@dataclass
class EpisodeOutput:
    """All one episode left behind, as plain data a Ray task can return to the driver."""

    result: EpisodeResult
    steps: list[dict[str, Any]]
    video: bytes | None
    stored: dict[str, bytes] = field(default_factory=dict)  # the frame store's files, by path in the run


class _CapturedRun(RunDir):
    """A run directory that keeps step records in memory; only the video goes to (worker) disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.videos.mkdir(parents=True, exist_ok=True)
        self.steps: list[dict[str, Any]] = []

    def log_step(self, record: dict[str, Any]) -> None:
        self.steps.append(record)

    def log_episode(self, record: dict[str, Any]) -> None:  # the driver logs episodes
        pass


class EpisodePlayer:
    """One Ray actor's state: a model built from the spec and a pool of idle (env, agent) pairs.

    Its ``play`` is a coroutine, so Ray runs it as an async actor: concurrent calls share one event
    loop and one model, as the ``num_envs`` workers of a local run do.
    """

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.model: LoadedModel | None = None
        self._idle: list[tuple[AtariVLMEnv, Agent]] = []
        # A failure here is kept for ``loaded`` to raise: Ray reports an error in an actor's
        # constructor as the actor's death, not as the error (a bad model path, a missing key).
        self._error: Exception | None = None
        try:
            if spec.agent == "vlm":
                loaded = load_model(model_spec_for(spec))
                # Priced as in a local run (runner.run_play), so episodes record the same cost_usd.
                self.model = dataclasses.replace(loaded, vlm=BudgetedVLM(loaded.vlm, None, loaded.prices))
            self._factory = worker_factory(spec, self.model.vlm if self.model else None)
        except Exception as exc:
            self._error = exc

    def loaded(self) -> LoadedModel | None:
        """What this worker loaded, for the driver: everything but the model itself."""
        if self._error is not None:
            raise self._error
        if self.model is None:
            return None
        return dataclasses.replace(self.model, vlm=RemoteModel(self.model.vlm.name))

    def seeds(self, episode: int) -> EpisodeSeeds:
        """Episode ``episode``'s seeds, as ``rollout.play_episodes`` gives them."""
        if self.spec.env_seeds is not None:
            return explicit_seeds(self.spec.env_seeds)[episode]
        return episode_seeds(self.spec.seed, episode + 1)[episode]

    async def play(self, episode: int) -> EpisodeOutput:
        env, agent = self._idle.pop() if self._idle else self._factory()
        seeds = self.seeds(episode)
        with tempfile.TemporaryDirectory(prefix="atari-vlm-episode-") as tmp:
            run = _CapturedRun(Path(tmp))
            frames = FrameStore(run.path, images=self.spec.frames)
            try:
                result = await play_episode(
                    env,
                    agent,
                    episode=episode,
                    seeds=seeds,
                    run=run,
                    video=self.spec.video,
                    video_overlay=self.spec.video_overlay,
                    uses_model=self.model is not None,
                    frames=frames,
                )
            except BaseException:
                env.close()  # a failed episode may leave its env mid-game: do not reuse it
                raise
            self._idle.append((env, agent))
            video = (run.path / result.video).read_bytes() if result.video else None
            stored = frames.files()
        return EpisodeOutput(result, run.steps, video, stored)

    async def close(self) -> None:
        for env, _ in self._idle:
            env.close()
        self._idle.clear()
        if self.model is not None:
            await self.model.vlm.aclose()


@dataclass(frozen=True)
class RemoteModel:
    """Stands in for the model on the driver, where it never answers: the workers hold the real one."""

    name: str

    async def generate(self, request: Request) -> Completion:
        raise ModelError(f"{self.name} runs on the Ray workers, not in the driver")

    async def aclose(self) -> None:
        pass


StepCallback = Callable[[int], None]
EpisodeCallback = Callable[[EpisodeResult], None]


class RayExecutor:
    """Plays a run's episodes on Ray actors and gathers them into the driver's run directory.

    Args:
        address: a running cluster (``ray://host:10001``, ``auto``); ``None`` joins the Ray instance
            already initialized in this process, else starts a local one.
        num_cpus: CPUs of a local instance this executor starts (ignored when joining a cluster).
        workers: actors to start (each loads the model once); default one per CPU (one per GPU when
            the model runs on ``cuda``: Ray gives each worker one GPU, which it sees as ``cuda:0``),
            at most one per episode.

    Use ``start`` (loads the models; returns what describes them), ``play`` (any number of times),
    then ``close``.
    """

    def __init__(
        self, address: str | None = None, *, num_cpus: int | None = None, workers: int | None = None
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        if num_cpus is not None and num_cpus < 1:
            raise ConfigError(f"num_cpus must be at least 1, got {num_cpus}")
        self.address = address
        self.num_cpus = num_cpus
        self.workers = workers
        self._ray: Any = None
        self._started_ray = False
        self._actors: list[Any] = []
        self._per_actor = 1

    # --- lifecycle ---

    def start(self, spec: RunSpec) -> LoadedModel | None:
        """Start the actors and load a model in each; returns what they loaded, with a
        :class:`RemoteModel` in place of the model (``None`` for a reference agent).

        Raises:
            ConfigError: ray is missing, ``max_cost_usd`` is set, or the workers resolved
                ``spec.model`` differently.
        """
        ray = self._ray = require("ray", extra="ray")
        if spec.max_cost_usd is not None:
            raise ConfigError(
                "--max-cost is enforced within one process; with --executor ray each worker would "
                "spend it all, so it is refused: run locally, or without a cap"
            )
        self._started_ray = _init_ray(ray, self.address, self.num_cpus)
        gpu = spec.agent == "vlm" and spec.model.device.startswith("cuda")
        resources = ray.cluster_resources()
        capacity = int(resources.get("GPU" if gpu else "CPU", 1)) or 1
        count = max(1, min(self.workers or capacity, spec.episodes))
        self._per_actor = spec.num_envs
        actor_class = ray.remote(EpisodePlayer).options(
            num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0, max_concurrency=spec.num_envs
        )
        self._actors = [actor_class.remote(spec) for _ in range(count)]
        try:
            loaded = ray.get([actor.loaded.remote() for actor in self._actors])
        except Exception as exc:
            self.close()
            raise _unwrap(exc) from None
        if any(other != loaded[0] for other in loaded[1:]):
            self.close()
            raise ConfigError(
                f"the Ray workers loaded --model {spec.model.model!r} differently ({loaded}); "
                "name the model explicitly rather than 'auto', or give every node the same environment"
            )
        return loaded[0]

    def close(self) -> None:
        """Stop the actors (and the local Ray instance this executor started). Safe to call twice."""
        ray, actors, self._actors = self._ray, self._actors, []
        if ray is None:
            return
        if actors and ray.is_initialized():
            # Let each actor close its model (an HTTP pool, a batching task), then make sure it is gone.
            with contextlib.suppress(Exception):
                ray.get([actor.close.remote() for actor in actors], timeout=10)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- playing ---

    def play(
        self,
        *,
        episode_ids: Sequence[int],
        run: RunDir,
        on_step: StepCallback | None = None,
        on_episode: EpisodeCallback | None = None,
    ) -> list[EpisodeResult]:
        """Play ``episode_ids`` on the actors; results in that order, files written into ``run``.

        Each actor gets at most ``num_envs`` episodes at a time and a new one as soon as one ends, so
        slow episodes do not hold up the rest. The first failure stops the run and is raised as the
        worker raised it (Ray's error is also an instance of the original exception's class).
        """
        ray = self._ray
        if ray is None or not self._actors:
            raise RuntimeError("RayExecutor.play needs start() first")
        todo = deque(episode_ids)
        load = [0] * len(self._actors)
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (actor index, episode)
        results: dict[int, EpisodeResult] = {}
        try:
            while todo or in_flight:
                for index, actor in enumerate(self._actors):
                    while todo and load[index] < self._per_actor:
                        episode = todo.popleft()
                        in_flight[actor.play.remote(episode)] = (index, episode)
                        load[index] += 1
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    index, episode = in_flight.pop(ref)
                    load[index] -= 1
                    try:
                        output: EpisodeOutput = ray.get(ref)
                    except Exception as exc:
                        raise _unwrap(exc) from None
                    results[episode] = write_episode(run, output)
                    if on_step is not None:
                        on_step(len(output.steps))
                    if on_episode is not None:
                        on_episode(results[episode])
        except BaseException:
            for ref in in_flight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise
        return [results[i] for i in episode_ids]


def _init_ray(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Join the Ray instance this process already has, else start or join ``address``'s; True when
    this call initialized Ray (so the caller shuts it down)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address is None:
        options["num_cpus"] = num_cpus
    ray.init(address=address, **options)
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Ray for a whole sweep: every run's :class:`RayExecutor` joins it, so Ray starts once rather than
    once per run; shut down at the end if this started it."""
    ray = require("ray", extra="ray")
    started = _init_ray(ray, address, num_cpus)
    try:
        yield ray
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def _unwrap(exc: Exception) -> Exception:
    """The worker's own error (a ConfigError, a ModelError) rather than Ray's wrapper around it, so
    the CLI reports it as it would from a local run."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def write_episode(run: RunDir, output: EpisodeOutput) -> EpisodeResult:
    """Write one worker's episode into the driver's run directory, exactly as a local run would."""
    result = output.result
    store = FrameStore(run.path)
    for relative, data in output.stored.items():  # before the steps that refer to them
        store.put_file(relative, data)
    for record in output.steps:
        run.log_step(record)
    if output.video is not None:
        path = run.write_video(result.episode, output.video)
        result.video = str(path.relative_to(run.path))
    run.log_episode(result.to_record())
    return result
