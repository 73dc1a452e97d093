"""The seed's training framework: a VLM plays better by remembering its own (and others') play.

``VLMTrainer(...).train(N)`` repeats: play a batch of training episodes, each stored in the trajectory
memory (the experience replay); refresh the in-context exemplars from the memory; and at episode 0,
every ``eval_every`` episodes and at the end, evaluate on fixed held-out seeds with the exemplars
frozen, beside the random agent on the same seeds (played once, then cached). No weights change: what
improves is the memory and what is chosen from it (:mod:`atari_vlm.memory`).

A run directory holds::

    config.json, steps.jsonl, episodes.jsonl  the training episodes, as ``atari-vlm play`` writes them
    memory/<Game>/train-NNNNNN/               the trajectory memory (plus imported demonstrations)
    learning_curve.jsonl, learning_curve.csv  one row per evaluation point
    evaluations.jsonl                         one line per evaluation episode (evaluation steps are not
                                              logged in steps.jsonl, which holds training episodes only)
    frames/, prompts/                         what each training decision sent (atari_vlm.framestore)
    report.html                               rewritten after every evaluation (atari_vlm.report)
    trainer_state.json                        the checkpoint, written atomically after every batch
    tensorboard/                              when tensorboardX or tensorboard is installed
    summary.json                              at the end

Resume (``VLMTrainer.resume(out_dir).train(N)`` or ``train(N, resume=True)``): the checkpoint says how
many episodes are done; episodes of the interrupted batch that finished are kept once (their lines and
their memory entries), the others are played again with the seeds of their number, and the exemplars of
a batch come from the memory as it was when the batch began, so a resumed run is the run that was not
interrupted. ``N`` is the total number of training episodes of the run, not a number to add.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import importlib
import importlib.util
import io
import json
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atari_vlm.agent import Agent, Decision, VLMAgent
from atari_vlm.env import ENV_OPTIONS, AtariVLMEnv
from atari_vlm.errors import ConfigError
from atari_vlm.framestore import FrameStore
from atari_vlm.memory import (
    Exemplar,
    TrajectoryStore,
    demonstration_paths,
    import_demonstration,
    select_exemplars,
)
from atari_vlm.models.base import VLM
from atari_vlm.models.costs import BudgetedVLM, BudgetExceeded
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.rollout import EpisodeResult, EpisodeSeeds, episode_seeds, play_episodes
from atari_vlm.rundir import (
    RunDir,
    read_json_file,
    read_jsonl,
    read_run_spec,
    remove_run_file,
    run_record,
    write_json_atomic,
    write_text_atomic,
)
from atari_vlm.runner import decisions_bound
from atari_vlm.spec import ModelSpec, RunSpec, check_int
from atari_vlm.stopping import StopOnSignals, signal_name
from atari_vlm.workers import action_names, build_agent, model_spec_for, prompt_builder

STATE_VERSION = 1
CURVE_FIELDS: tuple[str, ...] = (
    "episode",
    "eval_mean_return",
    "eval_std",
    "eval_returns",
    "random_mean_return",
    "train_return",
    "n_exemplars",
    "wall_s",
    "finetune_round",  # fine-tuning rounds done before this evaluation (0 without finetune_every)
)
AGENT_OPTIONS = frozenset({"temperature", "answer_format", "history_steps", "history_images", "decode"})
FINETUNE_OPTIONS = {
    "lora": "finetune_full",
    "epochs": "finetune_epochs",
    "lr": "finetune_lr",
    "batch_size": "finetune_batch_size",
    "max_examples": "finetune_max_examples",
}
"""The seed's ``finetune_options`` keys and the train-section settings they set."""
RANDOM = "random"  # vlm_type of a run whose agent is the random baseline (no model)
CUSTOM_PREFIX = "custom:"  # how a run played by a model object (not a spec string) is recorded
_TRAIN_ID = re.compile(r"train-(\d{6,})")


def train_episode_id(episode: int) -> str:
    """The memory id of training episode ``episode`` (its number, so a replay finds its leftovers)."""
    return f"train-{episode:06d}"


def _train_number(episode_id: str) -> int | None:
    match = _TRAIN_ID.fullmatch(episode_id)
    return int(match.group(1)) if match else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (0 for a single value): the spread of an evaluation."""
    if not values:
        return None
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _jsonl(records: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records)


def _curve_csv(curve: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CURVE_FIELDS)
    for row in curve:
        cells = [row.get(name) for name in CURVE_FIELDS]
        cells[CURVE_FIELDS.index("eval_returns")] = " ".join(f"{x:g}" for x in row["eval_returns"])
        writer.writerow(["" if c is None else c for c in cells])
    return buffer.getvalue()


def _summary_writer(log_dir: Path) -> Any | None:
    """A TensorBoard ``SummaryWriter`` when tensorboardX or tensorboard is installed, else None.

    Only the absence of both packages is silent; a broken installation raises.
    """
    if importlib.util.find_spec("tensorboardX") is not None:
        return importlib.import_module("tensorboardX").SummaryWriter(str(log_dir))
    if importlib.util.find_spec("tensorboard") is not None and importlib.util.find_spec("torch") is not None:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter(str(log_dir))
    return None


@dataclass
class _State:
    """The checkpoint: what is done, and what must not be done again."""

    episodes_done: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    random_returns: list[float] | None = None  # the random agent on the evaluation seeds, once
    wall_s: float = 0.0  # training time over every session of the run
    finetune_rounds: list[dict[str, Any]] = field(default_factory=list)  # expert iteration (finetune_every)

    @classmethod
    def read(cls, path: Path) -> _State:
        if not path.exists():  # interrupted before the first checkpoint: nothing is done
            return cls()
        try:
            data = read_json_file(path)
        except ConfigError as exc:
            raise ConfigError(f"cannot resume: {exc}") from None
        ok = (
            isinstance(data, dict)
            and data.get("schema_version") == STATE_VERSION
            and isinstance(data.get("episodes_done"), int)
            and data["episodes_done"] >= 0
            and isinstance(data.get("curve"), list)
            and all(isinstance(r, dict) and isinstance(r.get("episode"), int) for r in data["curve"])
            and isinstance(data.get("evaluations"), list)
            and (data.get("random_returns") is None or isinstance(data["random_returns"], list))
        )
        if not ok:
            raise ConfigError(f"cannot resume: {path} is not a trainer checkpoint of schema {STATE_VERSION}")
        return cls(
            data["episodes_done"],
            data["curve"],
            data["evaluations"],
            data.get("random_returns"),
            float(data.get("wall_s") or 0.0),
            list(data.get("finetune_rounds") or []),
        )

    def to_json(self, root_seed: int) -> dict[str, Any]:
        following = episode_seeds(root_seed, self.episodes_done + 1)[self.episodes_done]
        return {
            "schema_version": STATE_VERSION,
            "episodes_done": self.episodes_done,
            "root_seed": root_seed,
            "next_episode_seeds": asdict(following),  # for the reader: episode i always gets seeds i
            "curve": self.curve,
            "evaluations": self.evaluations,
            "random_returns": self.random_returns,
            "wall_s": round(self.wall_s, 3),
            "finetune_rounds": self.finetune_rounds,
        }


@dataclass
class TrainingResult:
    """What a training run produced (also in its run directory)."""

    out_dir: Path
    episodes: list[EpisodeResult]  # every training episode of the run, in order
    curve: list[dict[str, Any]]  # the learning curve rows (see CURVE_FIELDS)
    random_returns: list[float]  # the random agent on the evaluation seeds
    wall_s: float
    stopped: str | None = None  # why training ended early (a --max-cost budget), None otherwise

    @property
    def final_eval_mean_return(self) -> float | None:
        return self.curve[-1]["eval_mean_return"] if self.curve else None

    def to_dict(self) -> dict[str, Any]:
        returns = [e.episode_return for e in self.episodes]
        return {
            "episodes": len(self.episodes),
            "train_returns": returns,
            "train_mean_return": _mean(returns),
            "curve": self.curve,
            "random_mean_return": _mean(self.random_returns),
            "final_eval_mean_return": self.final_eval_mean_return,
            "wall_s": round(self.wall_s, 3),
            "stopped": self.stopped,
        }


class _RetrievingAgent:
    """A VLM agent whose exemplars, at each decision, are the remembered screens nearest the current
    one (``exemplar_strategy="similar"``), from a fixed snapshot of the memory."""

    def __init__(self, agent: VLMAgent, choose: Callable[[np.ndarray], list[Exemplar]]):
        self._agent, self._choose = agent, choose

    def reset(self, seed: int | None = None) -> None:
        self._agent.reset(seed)

    async def act(self, obs: dict[str, Any]) -> Decision:
        self._agent.set_exemplars(self._choose(obs["image"]))
        return await self._agent.act(obs)


class VLMTrainer:
    """Play, remember, evaluate, checkpoint; resumable. See the module docstring for the run layout.

    The seed's constructor below maps its arguments onto a :class:`~atari_vlm.spec.RunSpec` with a
    train section (:meth:`from_spec` takes one directly, as ``atari-vlm train`` does); the spec is
    what config.json records and what a resume must match.

    Args:
        game_name: any spelling of an ALE game ("Pong-v5", "Pong", "ALE/Pong-v5").
        vlm_type: a ``--model`` spec (``demo``, ``openai:<model>``, a checkpoint directory, ``auto``),
            ``"random"`` for the random agent, or an object implementing the ``VLM`` protocol.
        prompt_type: ``basic``, ``cot``, ``expert`` or a template file.
        use_in_context_learning: show the model exemplars chosen from the memory.
        out_dir: the run directory (default ``runs/train-<game>-<model>-s<seed>``).
        eval_every: evaluate after every this many training episodes (and at 0 and at the end).
        eval_episodes, eval_seeds: the held-out evaluation episodes and their env seeds; the seeds default
            to ``10_000, 10_001, ...`` (``eval_episodes`` of them, 3 by default); given seeds fix the count.
        max_steps: decisions per episode at most (training and evaluation).
        seed: root seed: training episode ``i`` always gets the ``i``-th seeds derived from it.
        num_envs: episodes played at once; also the batch size between exemplar refreshes.
        top_k_episodes, image_budget, exemplar_strategy: exemplar selection (see
            :func:`atari_vlm.memory.select_exemplars`).
        env_options: further env and observation settings (resize_shape, frame_skip, ...).
        model_options: further model settings (base_url, device, api_key, ...); a key is used, never
            recorded.
        max_tokens: per answer (default: the prompt style's).
        agent_options: further prompt and decoding settings: temperature, answer_format,
            history_steps, history_images.
        demonstrations: recorded episodes to import into the memory first (see
            :func:`atari_vlm.memory.import_demonstration`).
        overwrite: replace a run already in ``out_dir``.
        finetune_every: expert iteration: after every this many training episodes, fine-tune the model
            on the ``top_k_episodes`` best episodes of the memory (demonstrations included) and play on
            with the new weights (:func:`atari_vlm.training.finetune.finetune`; each round starts again
            from the original checkpoint, which must be local). Round ``n`` is saved in
            ``finetune/round-NNN``; learning-curve rows count the rounds done in ``finetune_round``.
        finetune_options: ``lora`` (default True), ``epochs``, ``lr``, ``batch_size``, ``max_examples``.
        max_cost_usd: stop before a call could take this run's spending past it.
    """

    def __init__(
        self,
        game_name: str = "Pong-v5",
        vlm_type: str | VLM = "demo",
        prompt_type: str = "basic",
        use_in_context_learning: bool = False,
        *,
        out_dir: str | Path | None = None,
        eval_every: int = 5,
        eval_episodes: int | None = None,
        eval_seeds: Sequence[int] | None = None,
        max_steps: int | None = None,
        seed: int = 0,
        num_envs: int = 1,
        top_k_episodes: int = 3,
        image_budget: int = 8,
        exemplar_strategy: str = "key_moments",
        env_options: Mapping[str, Any] | None = None,
        model_options: Mapping[str, Any] | ModelSpec | None = None,
        max_tokens: int | None = None,
        agent_options: Mapping[str, Any] | None = None,
        demonstrations: Sequence[str | Path] = (),
        overwrite: bool = False,
        finetune_every: int | None = None,
        finetune_options: Mapping[str, Any] | None = None,
        max_cost_usd: float | None = None,
    ):
        flat: dict[str, Any] = {}
        for what, options, allowed in (
            ("env_options", env_options, ENV_OPTIONS),
            ("agent_options", agent_options, AGENT_OPTIONS),
            ("finetune_options", finetune_options, frozenset(FINETUNE_OPTIONS)),
        ):
            options = dict(options or {})
            reserved = sorted({"game", "seed", "max_steps"} & set(options))
            if reserved:
                raise ConfigError(f"{what} may not set {reserved}: they are the trainer's own arguments")
            unknown = sorted(set(options) - allowed)
            if unknown:
                raise ConfigError(
                    f"unknown {what.split('_')[0]} option(s) {unknown}; valid: {sorted(allowed)}"
                )
            flat.update(
                {
                    FINETUNE_OPTIONS.get(k, k) if what == "finetune_options" else k: v
                    for k, v in options.items()
                }
            )
        if "finetune_full" in flat:
            flat["finetune_full"] = not flat["finetune_full"]  # the seed's option is ``lora``
        if isinstance(model_options, ModelSpec):
            model_options = {name: getattr(model_options, name) for name, *_ in ModelSpec.settings()}
            model_options.pop("model")
        model_options = dict(model_options or {})
        unknown = sorted(
            set(model_options) - {name for name, *_ in ModelSpec.settings()}
            | ({"model"} & set(model_options))
        )
        if unknown:
            raise ConfigError(
                f"bad model_options {unknown}: valid are the fields of atari_vlm.spec.ModelSpec but model"
            )
        flat.update(model_options)
        vlm: VLM | None = None
        if isinstance(vlm_type, str):
            if not vlm_type.strip():
                raise ConfigError("vlm_type must be a model spec, 'random', or a VLM object")
            agent, model = ("random", "auto") if vlm_type.strip() == RANDOM else ("vlm", vlm_type.strip())
        elif callable(getattr(vlm_type, "generate", None)):
            vlm = vlm_type
            agent, model = "vlm", f"{CUSTOM_PREFIX}{getattr(vlm_type, 'name', type(vlm_type).__name__)}"
        else:
            raise ConfigError(f"vlm_type must be a model spec string or a VLM object, got {vlm_type!r}")
        if eval_seeds is None:
            count = 3 if eval_episodes is None else check_int("eval_episodes", eval_episodes, 1, 10_000)
            eval_seeds = range(10_000, 10_000 + count)
        eval_seeds = tuple(eval_seeds)
        if eval_episodes is not None and eval_episodes != len(eval_seeds):
            raise ConfigError(f"eval_episodes={eval_episodes} but {len(eval_seeds)} eval_seeds were given")
        spec = RunSpec.build(
            game=game_name,
            agent=agent,
            model=model,
            prompt=prompt_type,
            use_icl=use_in_context_learning,
            eval_every=eval_every,
            eval_seeds=eval_seeds,
            max_steps=max_steps,
            seed=seed,
            num_envs=num_envs,
            top_k=top_k_episodes,
            image_budget=image_budget,
            exemplars=exemplar_strategy,
            max_tokens=max_tokens,
            demos=tuple(str(p) for p in demonstrations),
            finetune_every=finetune_every,
            max_cost_usd=max_cost_usd,
            video=False,
            train=True,
            **flat,
        )
        self._setup(spec, out_dir=out_dir, overwrite=overwrite, vlm=vlm)

    @classmethod
    def from_spec(
        cls,
        spec: RunSpec,
        *,
        out_dir: str | Path | None = None,
        overwrite: bool = False,
        vlm: VLM | None = None,
    ) -> VLMTrainer:
        """The trainer of ``spec`` (which needs a train section); ``vlm`` plays instead of loading
        ``spec.model`` (a model object; the spec then names it ``custom:<name>``)."""
        trainer = cls.__new__(cls)
        trainer._setup(spec, out_dir=out_dir, overwrite=overwrite, vlm=vlm)
        return trainer

    def _setup(self, spec: RunSpec, *, out_dir: str | Path | None, overwrite: bool, vlm: VLM | None) -> None:
        if spec.train is None:
            spec = spec.replace(use_icl=False)  # a spec without a train section gets its defaults
        train = spec.train
        assert train is not None
        if spec.agent == "expert":
            raise ConfigError("the trainer trains a model; the expert agent plays (atari-vlm record) instead")
        if spec.agent == "random" and train.use_icl:
            raise ConfigError("in-context learning needs a model: the random agent reads no exemplars")
        if spec.agent == "random" and train.finetune_every is not None:
            raise ConfigError("finetune_every needs a model: the random agent has no weights")
        custom = spec.agent == "vlm" and spec.model.model.startswith(CUSTOM_PREFIX)
        if custom and vlm is None:
            raise ConfigError(
                f"the run names a model object ({spec.model.model}); pass it again: "
                "VLMTrainer.resume(out_dir, vlm_type=model)"
            )
        if vlm is not None and spec.max_cost_usd is not None:
            raise ConfigError("max_cost_usd needs a model spec with a known price, not a model object")
        self.spec = spec
        self.train_spec = train
        self.game = spec.game
        self._vlm: VLM | None = vlm
        self.model_spec = "random" if spec.agent == "random" else spec.model.model
        self.action_names = action_names(spec)
        # A bad prompt (an unknown style, a broken template file) fails here, before any model load.
        if spec.agent == "vlm":
            prompt_builder(spec, self.action_names)
        default_out = (
            Path("runs")
            / f"train-{self.game}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.model_spec)}-s{spec.seed}"
        )
        self.out_dir = Path(out_dir) if out_dir is not None else default_out
        self.overwrite = overwrite
        self._finetune_base: Path | None = None
        self.store = TrajectoryStore(self.out_dir / "memory")
        self._resume = False

    # The spec's settings under the names the trainer's code reads.
    @property
    def use_icl(self) -> bool:
        return self.train_spec.use_icl

    @property
    def eval_every(self) -> int:
        return self.train_spec.eval_every

    @property
    def eval_seeds(self) -> tuple[int, ...]:
        return self.train_spec.eval_seeds

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def num_envs(self) -> int:
        return self.spec.num_envs

    @property
    def top_k_episodes(self) -> int:
        return self.train_spec.top_k

    @property
    def image_budget(self) -> int:
        return self.train_spec.image_budget

    @property
    def exemplar_strategy(self) -> str:
        return self.train_spec.exemplars

    @property
    def finetune_every(self) -> int | None:
        return self.train_spec.finetune_every

    @property
    def max_cost_usd(self) -> float | None:
        return self.spec.max_cost_usd

    @classmethod
    def resume(cls, out_dir: str | Path, *, vlm_type: VLM | None = None, **changes: Any) -> VLMTrainer:
        """The trainer of the run recorded in ``out_dir``, set to continue it at the next ``train``.

        ``vlm_type`` passes the model object again for a run played by one; ``changes`` are flat spec
        settings to change (a new ``api_key``, ``num_envs``, a ``max_cost_usd`` for this invocation:
        a budget caps one invocation, so a recorded one is not carried over): settings that change
        play must match the record, or ``train`` refuses.

        Raises:
            ConfigError: ``out_dir`` holds no training run.
        """
        path = Path(out_dir) / "config.json"
        try:
            config = read_json_file(path)
        except ConfigError as exc:
            raise ConfigError(f"nothing to resume in {out_dir}: {exc}") from None
        if not isinstance(config, dict) or config.get("kind") != "train":
            raise ConfigError(f"nothing to resume in {out_dir}: it holds no training run")
        spec = read_run_spec(config, path).replace(**{"max_cost_usd": None, **changes})
        trainer = cls.from_spec(spec, out_dir=out_dir, vlm=vlm_type)
        trainer._resume = True
        return trainer

    # --- the run ------------------------------------------------------------------------------------

    def train(
        self,
        num_episodes: int,
        *,
        resume: bool | None = None,
        on_episode: Callable[[EpisodeResult], None] | None = None,
        on_evaluation: Callable[[dict[str, Any]], None] | None = None,
    ) -> TrainingResult:
        """Train until the run holds ``num_episodes`` training episodes; returns what it produced.

        ``resume`` (default: True for a trainer from :meth:`resume`) continues the run in ``out_dir``.

        Raises:
            ConfigError: a bad setting, a run directory in use or already holding another run, or an
                unreadable checkpoint; found before anything is played.
        """
        check_int("num_episodes", num_episodes, 1, 10_000_000)
        resume = self._resume if resume is None else resume
        demos = [p for path in self.train_spec.demos for p in demonstration_paths(path, self.game)]
        if self._vlm is not None or self.spec.agent != "vlm":
            loaded = None
        else:
            loaded = load_model(model_spec_for(self.spec))
            try:  # every call priced (the run's cost), and none made that the budget cannot pay for
                self._vlm = BudgetedVLM(loaded.vlm, self.max_cost_usd, loaded.prices)
            except BaseException:
                asyncio.run(loaded.vlm.aclose())
                raise
        try:
            spec = self.spec.replace(episodes=num_episodes)
            run = RunDir(self.out_dir).open(
                self._config(spec, loaded), spec, overwrite=self.overwrite, resume=resume
            )
        except BaseException:
            if loaded is not None:
                asyncio.run(loaded.vlm.aclose())
            raise
        writer = None
        stopped = None
        interrupt: KeyboardInterrupt | None = None
        start = time.perf_counter()
        with StopOnSignals() as stopper:  # Ctrl-C and SIGTERM alike: a summary, then resumable
            try:
                if resume:
                    state = _State.read(self.out_dir / "trainer_state.json")
                else:
                    self._clear_outputs()
                    state = _State()
                kept = {r["episode"]: EpisodeResult.from_record(r) for r in run.kept_episodes}
                self.store.remove_incomplete(self.game)
                for path in demos:
                    import_demonstration(self.store, path, game=self.game)
                writer = _summary_writer(self.out_dir / "tensorboard")
                context = _Session(run, state, kept, writer, start, state.wall_s, on_episode, on_evaluation)
                try:
                    stopper.run(self._train(num_episodes, context, close=loaded is not None))
                except BudgetExceeded as exc:
                    stopped = f"budget: {exc}"  # finished batches stand; train again with resume to go on
                except KeyboardInterrupt as exc:
                    interrupt, stopped = exc, f"interrupted by {signal_name(exc)}"
            finally:
                run.close()
                if writer is not None:
                    writer.close()
            return self._finish(num_episodes, kept, state, stopped, interrupt)

    def _finish(
        self,
        num_episodes: int,
        kept: dict[int, EpisodeResult],
        state: _State,
        stopped: str | None,
        interrupt: KeyboardInterrupt | None,
    ) -> TrainingResult:
        result = TrainingResult(
            out_dir=self.out_dir,
            episodes=[kept[i] for i in sorted(kept) if i < num_episodes],
            curve=state.curve,
            random_returns=list(state.random_returns or []),
            wall_s=state.wall_s,
            stopped=stopped,
        )
        write_json_atomic(self.out_dir / "summary.json", result.to_dict())
        if interrupt is not None:
            raise type(interrupt)(
                f"{stopped}: {len(result.episodes)} of {num_episodes} training episodes finished, summary in "
                f"{self.out_dir / 'summary.json'}; continue with train --resume --out {self.out_dir}"
            ) from None
        return result

    def _config(self, spec: RunSpec, loaded: LoadedModel | None) -> dict[str, Any]:
        model = loaded.describe() if loaded else {"spec": self.model_spec}
        return run_record(spec, kind="train", model=model, protocol=None)

    def _clear_outputs(self) -> None:
        """A fresh run starts from nothing (RunDir has cleared its own files, or there were none)."""
        for name in ("trainer_state.json", "learning_curve.jsonl", "learning_curve.csv", "evaluations.jsonl"):
            remove_run_file(self.out_dir / name)
        for name in ("memory", "tensorboard"):
            shutil.rmtree(self.out_dir / name, ignore_errors=True)

    def eval_points(self, num_episodes: int) -> list[int]:
        """Training-episode counts at which the agent is evaluated: 0, every ``eval_every``, the end."""
        return sorted({0, num_episodes, *range(self.eval_every, num_episodes, self.eval_every)})

    def model_decisions(self, num_episodes: int) -> int:
        """Model calls a run of ``num_episodes`` makes at most (``--dry-run``): every training episode
        and every evaluation episode at each of :meth:`eval_points`, each up to its decision bound
        (the random baseline's episodes call no model)."""
        if self.spec.agent != "vlm":
            return 0
        evaluations = len(self.eval_points(num_episodes)) * len(self.eval_seeds)
        return (num_episodes + evaluations) * decisions_bound(self.spec)[0]

    async def _train(self, num_episodes: int, s: _Session, *, close: bool) -> None:
        points = self.eval_points(num_episodes)
        try:
            if self.finetune_every:
                await self._start_finetuning(s)
            while True:
                done = s.state.episodes_done
                if done in points and all(row["episode"] != done for row in s.state.curve):
                    await self._evaluate(done, s)
                if done >= num_episodes:
                    return
                rounds = self._finetune_points(num_episodes)
                end = min(done + self.num_envs, min(p for p in [*points, *rounds] if p > done))
                await self._play_batch(done, end, s)
                s.state.episodes_done = end
                self._checkpoint(s)
                if end in rounds and all(r["episode"] != end for r in s.state.finetune_rounds):
                    await self._finetune_round(end, s)
        finally:
            if close and self._vlm is not None:
                await self._vlm.aclose()

    def _finetune_points(self, num_episodes: int) -> list[int]:
        """Training-episode counts after which the model is fine-tuned (not at the very end)."""
        if not self.finetune_every:
            return []
        return list(range(self.finetune_every, num_episodes, self.finetune_every))

    async def _start_finetuning(self, s: _Session) -> None:
        """Remember the original checkpoint; on resume, play on with the last round's weights."""
        base = getattr(self._vlm, "path", None)
        if base is None or not Path(base).is_dir():
            raise ConfigError(
                f"finetune_every needs a local checkpoint (a directory or 'demo'), not {self.model_spec!r}"
            )
        self._finetune_base = Path(base)
        if s.state.finetune_rounds:
            await self._swap_model(self.out_dir / s.state.finetune_rounds[-1]["model_dir"])

    async def _swap_model(self, path: Path) -> None:
        loaded = await asyncio.to_thread(
            load_model, dataclasses.replace(model_spec_for(self.spec), model=str(path))
        )
        old, self._vlm = self._vlm, BudgetedVLM(loaded.vlm, self.max_cost_usd, loaded.prices)
        if old is not None:
            await old.aclose()

    async def _finetune_round(self, done: int, s: _Session) -> None:
        """Fine-tune the original checkpoint on the best episodes in memory, then play with it."""
        from atari_vlm.training.finetune import finetune

        number = len(s.state.finetune_rounds) + 1
        relative = Path("finetune") / f"round-{number:03d}"
        target = self.out_dir / relative
        shutil.rmtree(target, ignore_errors=True)  # a round interrupted before it was recorded
        snapshot = self._snapshot(done)
        best = [self.store.load(self.game, i) for i in snapshot]
        train = self.train_spec
        result = await asyncio.to_thread(
            finetune,
            self._finetune_base,
            best,
            target,
            top_k=self.top_k_episodes,
            prompt_style=self.spec.prompt.prompt,
            frame_stack=self.spec.observation.frame_stack,
            frame_layout=self.spec.observation.frame_layout,
            lora=not train.finetune_full,
            epochs=train.finetune_epochs,
            lr=train.finetune_lr,
            batch_size=train.finetune_batch_size,
            max_examples=train.finetune_max_examples,
            device=self.spec.model.device,
        )
        await self._swap_model(target)
        s.state.finetune_rounds.append(
            {
                "round": number,
                "episode": done,
                "model_dir": str(relative),
                "episodes": result.episodes,
                "steps": result.steps,
                "final_loss": result.losses[-1] if result.losses else None,
                "wall_s": round(result.wall_s, 3),
            }
        )
        self._checkpoint(s)

    def _snapshot(self, before: int) -> list[str]:
        """The memory as it was when training episode ``before`` began: everything but later training."""
        ids = []
        for meta in self.store.episodes(self.game):
            number = _train_number(meta.episode_id)
            if number is None or number < before:
                ids.append(meta.episode_id)
        return ids

    def _exemplars(self, snapshot: list[str]) -> tuple[list[Exemplar], int]:
        """The fixed exemplars of a batch or evaluation, and how many images of exemplars a request has."""
        if not self.use_icl or not snapshot:
            return [], 0
        if self.exemplar_strategy == "similar":
            return [], self.image_budget
        chosen = select_exemplars(
            self.store,
            self.game,
            top_k_episodes=self.top_k_episodes,
            image_budget=self.image_budget,
            episode_ids=snapshot,
        )
        return chosen, len(chosen)

    def _worker_factory(
        self, snapshot: list[str] | None, exemplars: Sequence[Exemplar]
    ) -> Callable[[], tuple[AtariVLMEnv, Agent]]:
        """Env + agent builders; ``snapshot=None`` (or no model) builds the random agent."""
        spec = (
            self.spec if self._vlm is not None and snapshot is not None else self.spec.replace(agent="random")
        )

        def make_worker() -> tuple[AtariVLMEnv, Agent]:
            env = AtariVLMEnv(spec.env, spec.observation)
            agent = build_agent(spec, env, self._vlm, exemplars=exemplars)
            if (
                isinstance(agent, VLMAgent)
                and self.use_icl
                and self.exemplar_strategy == "similar"
                and snapshot
            ):
                ranked = snapshot

                def choose(image: np.ndarray) -> list[Exemplar]:
                    return select_exemplars(
                        self.store,
                        self.game,
                        top_k_episodes=self.top_k_episodes,
                        image_budget=self.image_budget,
                        strategy="similar",
                        image=image,
                        episode_ids=ranked,
                    )

                return env, _RetrievingAgent(agent, choose)
            return env, agent

        return make_worker

    async def _play_batch(self, start: int, end: int, s: _Session) -> None:
        todo = [i for i in range(start, end) if i not in s.kept]
        for i in todo:  # an episode stored just before a crash, but never logged: it is played again
            self.store.delete(self.game, train_episode_id(i))
        snapshot = self._snapshot(start)
        exemplars, _ = self._exemplars(snapshot)

        def sink(i: int, seeds: EpisodeSeeds) -> Any:
            meta = {
                "episode_id": train_episode_id(i),
                "seed": seeds.env,
                "source": "self",
                "model": self.model_spec,
                "action_names": self.action_names,
            }
            return self.store.recorder(self.game, meta)

        def finished(result: EpisodeResult) -> None:
            s.kept[result.episode] = result
            if s.on_episode is not None:
                s.on_episode(result)

        await play_episodes(
            self._worker_factory(snapshot, exemplars),
            episodes=len(todo),
            episode_ids=todo,
            root_seed=self.seed,
            num_envs=self.num_envs,
            run=s.run,
            uses_model=self._vlm is not None,
            make_sink=sink,
            frames=FrameStore(s.run.path, images=self.spec.frames),
            on_episode=finished,
        )

    async def _evaluate(self, done: int, s: _Session) -> None:
        snapshot = self._snapshot(done)
        exemplars, n_exemplars = self._exemplars(snapshot)
        # Evaluation episodes are played on the held-out env seeds exactly as a bench plays its seeds
        # (rollout.explicit_seeds), so the random baseline here is the one a bench measures.
        if s.state.random_returns is None:
            baseline = await play_episodes(
                self._worker_factory(None, ()),
                episodes=len(self.eval_seeds),
                root_seed=0,
                env_seeds=self.eval_seeds,
                num_envs=self.num_envs,
                uses_model=False,
            )
            s.state.random_returns = [r.episode_return for r in baseline]
        results = await play_episodes(
            self._worker_factory(snapshot, exemplars),
            episodes=len(self.eval_seeds),
            root_seed=0,
            env_seeds=self.eval_seeds,
            num_envs=self.num_envs,
            uses_model=self._vlm is not None,
        )
        returns = [r.episode_return for r in results]
        previous = max((row["episode"] for row in s.state.curve if row["episode"] < done), default=0)
        trained = [s.kept[i].episode_return for i in range(previous, done) if i in s.kept]
        row = {
            "episode": done,
            "eval_mean_return": _mean(returns),
            "eval_std": _std(returns),
            "eval_returns": returns,
            "random_mean_return": _mean(s.state.random_returns),
            "train_return": _mean(trained),
            "n_exemplars": n_exemplars,
            "wall_s": round(s.elapsed(), 3),
            "finetune_round": len([r for r in s.state.finetune_rounds if r["episode"] <= done]),
        }
        s.state.curve = sorted([*s.state.curve, row], key=lambda r: r["episode"])
        s.state.evaluations.extend({"at_episode": done, **r.to_record()} for r in results)
        if s.writer is not None:
            for tag, key in (
                ("eval/mean_return", "eval_mean_return"),
                ("eval/std", "eval_std"),
                ("eval/random_mean_return", "random_mean_return"),
                ("train/mean_return", "train_return"),
                ("icl/n_exemplars", "n_exemplars"),
            ):
                if row[key] is not None:
                    s.writer.add_scalar(tag, row[key], done)
            s.writer.flush()
        self._checkpoint(s)
        self._write_report()
        if s.on_evaluation is not None:
            s.on_evaluation(row)

    def _write_report(self) -> None:
        """report.html after every evaluation: learning curve, evaluation vs random, costs, the viewer
        of the training episodes (skipped, silently, without the report extra)."""
        from atari_vlm.errors import DependencyNotInstalled
        from atari_vlm.report import write_report

        with contextlib.suppress(DependencyNotInstalled):
            write_report(self.out_dir)

    def _checkpoint(self, s: _Session) -> None:
        """Derived files first, the state last: a crash between them is repaired by the resume."""
        s.state.wall_s = s.elapsed()
        write_text_atomic(self.out_dir / "learning_curve.jsonl", _jsonl(s.state.curve))
        write_text_atomic(self.out_dir / "learning_curve.csv", _curve_csv(s.state.curve))
        write_text_atomic(self.out_dir / "evaluations.jsonl", _jsonl(s.state.evaluations))
        write_json_atomic(self.out_dir / "trainer_state.json", s.state.to_json(self.seed))


@dataclass
class _Session:
    """What one ``train`` call works with."""

    run: RunDir
    state: _State
    kept: dict[int, EpisodeResult]
    writer: Any
    start: float
    wall_before: float
    on_episode: Callable[[EpisodeResult], None] | None
    on_evaluation: Callable[[dict[str, Any]], None] | None

    def elapsed(self) -> float:
        return self.wall_before + time.perf_counter() - self.start


def read_learning_curve(out_dir: str | Path) -> list[dict[str, Any]]:
    """The learning curve rows of a training run directory."""
    path = Path(out_dir) / "learning_curve.jsonl"
    if not path.exists():
        raise ConfigError(f"{out_dir} holds no learning curve (learning_curve.jsonl)")
    return read_jsonl(path)


__all__ = ["CURVE_FIELDS", "TrainingResult", "VLMTrainer", "read_learning_curve", "train_episode_id"]
