"""``--model pong-tiny``: a tiny VLM that atari-vlm trains itself, on first use, to play Pong.

The random-weight ``demo`` model (:mod:`atari_vlm.models.tiny`) tests the pipeline but plays noise.
This one is the same tiny LLaVA architecture after behaviour cloning: the RAM expert's ``track``
policy (:class:`atari_vlm.experts.PongTrack`: move toward the ball as the state text words it,
"N px below/above your paddle") plays a few Pong games (:func:`atari_vlm.record.record`), and
:func:`atari_vlm.training.finetune.finetune` trains every weight on exactly the prompts play sends
(the basic prompt, the screen and the state text, scored answers ``ACTION: <name>``). It learns
from the state text; the screen goes through its 28-pixel vision tower, 4 image tokens.

Built on first use (about 20 s on 2 idle CPU cores; BENCHMARKS.md) and cached beside the demo
checkpoint (:func:`~atari_vlm.models.tiny.demo_cache_root`), under a name that carries
:data:`TRAINED_VERSION`, so a change to :data:`RECIPE` builds a fresh one. It is **not** a
general VLM: it has seen one game, one prompt style and one observation setting (the defaults),
and says so wherever it appears (:data:`TRAINED_LABEL`). Measured against random and the
expert: BENCHMARKS.md, "pong-tiny".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atari_vlm.errors import ConfigError

__all__ = [
    "RECIPE",
    "TRAINED_LABEL",
    "TRAINED_MARKER",
    "TRAINED_MODEL",
    "TRAINED_VERSION",
    "BuildReport",
    "Recipe",
    "action_agreement",
    "build_trained_player",
    "trained_checkpoint",
]

TRAINED_MODEL = "pong-tiny"
TRAINED_LABEL = "tiny model trained by atari-vlm on RAM-expert demonstrations; not a general VLM"
TRAINED_VERSION = "1"
TRAINED_MARKER = "atari_vlm_trained.json"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (the cache name carries :data:`TRAINED_VERSION`:
    bump it with any change here)."""

    game: str = "Pong"
    expert_policy: str = "track"  # each action follows from one phrase of the state text
    episodes: int = 2  # demonstrations recorded
    demo_steps: int = 600  # decisions per demonstration
    demo_seed: int = 1000  # root seed of the demonstrations: play's --seed 0..999 never meets them
    family: str = "llava"
    epochs: int = 1  # 150 optimizer steps: held-out agreement with the expert reaches 1.0
    batch_size: int = 8
    lr: float = 3e-3  # full fine-tuning of a random-init model (LoRA barely moves it)
    max_examples: int | None = None  # every recorded step
    seed: int = 0  # weight init, example order


RECIPE = Recipe()


@dataclass
class BuildReport:
    """What one build did: the checkpoint, the losses, and what it cost."""

    path: Path
    losses: list[float]
    examples: int
    demo_returns: list[float]
    wall_s: float
    cpu_s: float  # this process's CPU time (all threads), time.process_time
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage


def _check_recipe(recipe: Recipe) -> None:
    from atari_vlm.experts import expert_policies
    from atari_vlm.models.tiny import TINY_FAMILIES

    if recipe.expert_policy not in expert_policies(recipe.game):
        raise ConfigError(
            f"recipe: no {recipe.expert_policy!r} expert for {recipe.game}; "
            f"choose one of {', '.join(expert_policies(recipe.game)) or '(none)'}"
        )
    if recipe.family not in TINY_FAMILIES:
        raise ConfigError(f"recipe: unknown tiny family {recipe.family!r}; choose one of {TINY_FAMILIES}")


def build_trained_player(
    out_dir: str | Path,
    recipe: Recipe = RECIPE,
    *,
    demos_dir: str | Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> BuildReport:
    """Build the trained player into ``out_dir`` (a new directory, written atomically).

    Steps: a tiny random-init checkpoint (:func:`~atari_vlm.models.tiny.build_tiny_checkpoint`),
    ``recipe.episodes`` expert demonstrations (kept in ``demos_dir`` when given, else discarded),
    full fine-tuning on all of them. ``out_dir`` is a full checkpoint that loads with ``--model``
    and carries :data:`TRAINED_MARKER` (the recipe, the losses, the timings).

    Raises:
        ConfigError: ``out_dir`` exists and is not empty, or a bad recipe.
    """
    from atari_vlm.models.tiny import build_tiny_checkpoint
    from atari_vlm.record import record
    from atari_vlm.training.finetune import finetune

    _check_recipe(recipe)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory; pass a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        base = build_tiny_checkpoint(recipe.family, work / "base", seed=recipe.seed)
        timings["base_s"] = time.perf_counter() - start
        demos = Path(demos_dir).expanduser() if demos_dir is not None else work / "demos"
        metas = record(
            recipe.game,
            "expert",
            recipe.episodes,
            demos,
            seed=recipe.demo_seed,
            max_steps=recipe.demo_steps,
            expert_policy=recipe.expert_policy,
        )
        timings["record_s"] = time.perf_counter() - start - timings["base_s"]
        ids = {m.episode_id for m in metas}
        from atari_vlm.memory import TrajectoryStore

        store = TrajectoryStore(demos)
        trajectories = [store.load(recipe.game, i) for i in sorted(ids)]
        result = finetune(
            base,
            trajectories,
            work / "model",
            lora=False,
            epochs=recipe.epochs,
            lr=recipe.lr,
            batch_size=recipe.batch_size,
            top_k=None,
            seed=recipe.seed,
            max_examples=recipe.max_examples,
            on_step=on_step,
        )
        timings["finetune_s"] = result.wall_s
        report = BuildReport(
            path=out,
            losses=result.losses,
            examples=result.examples,
            demo_returns=[m.episode_return for m in metas],
            wall_s=time.perf_counter() - start,
            cpu_s=time.process_time() - cpu_start,
            timings={k: round(v, 2) for k, v in timings.items()},
        )
        marker = {
            "atari_vlm_trained": True,
            "random_weights": False,
            "name": TRAINED_MODEL,
            "label": TRAINED_LABEL,
            "version": TRAINED_VERSION,
            "recipe": dataclasses.asdict(recipe),
            "examples": report.examples,
            "demo_returns": report.demo_returns,
            "first_loss": round(report.losses[0], 5),
            "last_loss": round(report.losses[-1], 5),
            "wall_s": round(report.wall_s, 2),
            "cpu_s": round(report.cpu_s, 2),
            "timings": report.timings,
        }
        model = work / "model"
        (model / TRAINED_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above; fails if another builder filled it meanwhile
        os.replace(model, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def trained_checkpoint(
    cache_dir: Path | None = None, *, notify: Callable[[str], None] | None = _stderr
) -> Path:
    """The checkpoint behind ``--model pong-tiny``: built on first use (about 20 s on 2 idle cores),
    then reused from the cache (``$ATARI_VLM_CACHE``, else ``~/.cache/atari-vlm``)."""
    from atari_vlm.models.tiny import demo_cache_root

    root = Path(cache_dir).expanduser() if cache_dir is not None else demo_cache_root()
    path = root / f"{TRAINED_MODEL}-v{TRAINED_VERSION}"
    if (path / TRAINED_MARKER).is_file():
        return path
    if path.exists() and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    if notify is not None:
        notify(
            f"building {TRAINED_MODEL} ({TRAINED_LABEL}) on first use: recording expert Pong games and "
            f"fine-tuning, about 20 s on 2 idle cores; cached in {path}"
        )
    try:
        build_trained_player(path, RECIPE)
    except (OSError, ConfigError):
        if (path / TRAINED_MARKER).is_file():  # another process built it first
            return path
        raise
    return path


def action_agreement(
    model_dir: str | Path, trajectories: Sequence[Any], *, max_batch_size: int = 8
) -> tuple[float, float, Counter[str]]:
    """How often the model, scoring the legal actions as play does (basic prompt, screen and state
    text, greedy), picks the action the demonstration took, over every step of ``trajectories``.

    Returns (agreement, the majority-class rate of those steps, the model's action counts): a model
    that only learnt the action frequencies scores the majority rate, not more.
    """
    from atari_vlm.games import game_info
    from atari_vlm.models.local import LocalVLM
    from atari_vlm.prompts.builder import PromptBuilder

    vlm = LocalVLM(model_dir, dtype="float32", max_batch_size=max_batch_size)
    steps = [(t, i) for t in trajectories for i in range(len(t.steps))]
    if not steps:
        raise ConfigError("action_agreement needs at least one step")
    builders: dict[tuple[str, tuple[str, ...]], PromptBuilder] = {}

    def request(t: Any, i: int) -> Any:
        key = (t.meta.game, tuple(t.meta.action_names))
        if key not in builders:
            builders[key] = PromptBuilder(game_info(t.meta.game), list(t.meta.action_names))
        image = t.frames[i]
        obs = {"image": image, "frames": image[None], "text": t.steps[i].state_text}
        return builders[key].request(obs, decode="score")

    async def run() -> list[str]:
        try:
            chosen: list[str] = []
            for k in range(0, len(steps), max_batch_size):
                chunk = steps[k : k + max_batch_size]
                done = await asyncio.gather(*(vlm.generate(request(t, i)) for t, i in chunk))
                chosen.extend(str(c.choice) for c in done)
            return chosen
        finally:
            await vlm.aclose()

    chosen = asyncio.run(run())
    wanted = [t.steps[i].action_name for t, i in steps]
    agreement = sum(a == b for a, b in zip(chosen, wanted, strict=True)) / len(steps)
    majority = Counter(wanted).most_common(1)[0][1] / len(steps)
    return agreement, majority, Counter(chosen)
