"""Export played episodes as training data: a Hugging Face ``datasets``-style folder or a Minari dataset.

A source is either

- a **run directory** (what ``atari-vlm play`` writes: ``config.json``, ``steps.jsonl``,
  ``episodes.jsonl``, ``videos/``). It stores no frames and no state text, so each finished episode is
  *replayed*: the recorded actions are played again on the recorded env settings and episode seed (ALE
  is deterministic, sticky actions included) and every step's reward and lives are checked against the
  log. A verified replay gives the exact native 210x160 RGB frames and the state text the model was
  shown. When the replay does not reproduce the log (another ale-py version, say), the frames are read
  from the episode's video instead (frame ``k-1`` is the screen before decision ``k``, at 2x scale;
  H.264 is lossy) and the state text is left empty (``null``);
- a **trajectory store game folder** (``<memory root>/<Game>``, written by
  :class:`atari_vlm.memory.TrajectoryStore`), read through the store's validating API. Its images are
  exactly what the model saw (resized, grayscale or a frame grid, as that run was configured).

Both exports are atomic: they are built in a hidden temporary directory beside the destination and
renamed into place at the end, so an interrupted export leaves nothing behind. The schemas are
documented in ``docs/datasets.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from atari_vlm import __version__
from atari_vlm.errors import ConfigError, require
from atari_vlm.games import game_info, resolve_game
from atari_vlm.rundir import read_json_file, read_jsonl, read_run_spec
from atari_vlm.spec import RunSpec, is_finite_number, is_integer
from atari_vlm.video import read_native_frames

FORMATS: tuple[str, ...] = ("hf", "minari")
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg")
NATIVE_SHAPE = (210, 160, 3)
DATASET_ID_RE = re.compile(r"(?:[-_\w][-_\w/]*[-_\w]/)?[-_\w]+-v\d+", re.ASCII)

# The columns of data.jsonl, in the serialised form of ``datasets.Features`` (``Features.from_dict``).
HF_FEATURES: dict[str, Any] = {
    "id": {"dtype": "string", "_type": "Value"},
    "game": {"dtype": "string", "_type": "Value"},
    "episode": {"dtype": "string", "_type": "Value"},
    "step": {"dtype": "int64", "_type": "Value"},
    "image": {"dtype": "string", "_type": "Value"},
    "state_text": {"dtype": "string", "_type": "Value"},
    "action": {"dtype": "int64", "_type": "Value"},
    "action_name": {"dtype": "string", "_type": "Value"},
    "action_names": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
    "reward": {"dtype": "float64", "_type": "Value"},
    "return_to_go": {"dtype": "float64", "_type": "Value"},
    "episode_return": {"dtype": "float64", "_type": "Value"},
    "lives": {"dtype": "int64", "_type": "Value"},
    "done": {"dtype": "bool", "_type": "Value"},
    "answer": {"dtype": "string", "_type": "Value"},
    "model": {"dtype": "string", "_type": "Value"},
    "source": {"dtype": "string", "_type": "Value"},
}

_COLUMN_DOCS: dict[str, str] = {
    "id": "unique row id, `<episode>/<step>`",
    "game": "canonical game name (`Pong`); the Gymnasium id is `ALE/<game>-v5`",
    "episode": "episode name, unique in the dataset (also the image folder)",
    "step": "decision number within the episode, from 1",
    "image": "path of the screen seen before this decision, relative to the dataset folder",
    "state_text": "the state description the model was shown (null when it could not be recovered)",
    "action": "index of the action taken in `action_names`",
    "action_name": "name of the action taken",
    "action_names": "the legal actions, in index order",
    "reward": "reward received for this decision",
    "return_to_go": "sum of the rewards from this decision to the episode's end (this one included)",
    "episode_return": "the whole episode's return",
    "lives": "lives left after this decision",
    "done": "true on the episode's last decision",
    "answer": "the model's raw answer text (null for agents without a model and for the memory)",
    "model": "model spec that played (`random` for the random agent; null when unknown)",
    "source": "where the row came from: `run:<run dir name>/<episode>` or `memory:<Game>/<episode id>`",
}


# --- sources ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    action: int
    action_name: str
    reward: float
    lives: int
    state_text: str | None
    answer: str | None


@dataclass(frozen=True)
class _Loaded:
    steps: list[_Step]
    frames: Iterator[np.ndarray]  # one before each decision, then (when known) the one after the last
    image_kind: str  # "native_rgb", "video_rgb" or "model_input"


@dataclass
class _Episode:
    name: str
    game: str
    episode_return: float
    action_names: tuple[str, ...]
    image_shape: tuple[int, ...]
    source: str
    load: Callable[[], _Loaded]
    model: str | None = None
    seed: int | None = None
    terminated: bool = False  # unknown endings (the memory's) count as truncated, not terminated


@dataclass
class _Source:
    kind: str  # "run" or "memory"
    path: Path
    game: str
    episodes: list[_Episode]
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # ale-py kwargs the episodes were played with


def _open_source(source: str | Path) -> _Source:
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(
            f"cannot export {path}: no such directory (expected a run directory or a game folder)"
        )
    if (path / "config.json").is_file() and (path / "episodes.jsonl").is_file():
        return _open_run(path)
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    episode_dirs = subdirs and all((p / "meta.json").is_file() for p in subdirs)
    if episode_dirs or (not subdirs and _is_game(path.name) and resolve_game(path.name) == path.name):
        return _open_memory(path)
    games = [p.name for p in subdirs if _is_game(p.name) and p.name == resolve_game(p.name)]
    if games:
        raise ConfigError(
            f"{path} is a trajectory memory holding {', '.join(sorted(games))}; export one game folder, "
            f"e.g. {path / sorted(games)[0]}"
        )
    raise ConfigError(
        f"cannot export {path}: it is neither a run directory (config.json + episodes.jsonl) nor a "
        "trajectory store game folder (<memory>/<Game>/<episode>/meta.json)"
    )


def _is_game(name: str) -> bool:
    try:
        resolve_game(name)
    except ConfigError:
        return False
    return True


def _open_memory(path: Path) -> _Source:
    from atari_vlm.memory import TrajectoryStore

    if not _is_game(path.name) or resolve_game(path.name) != path.name:
        raise ConfigError(
            f"{path} looks like a trajectory store game folder, but {path.name!r} is not a canonical game "
            "name (the store keeps each game under its canonical name, e.g. Pong, SpaceInvaders)"
        )
    store = TrajectoryStore(path.parent, cache_bytes=0)
    game = path.name
    episodes = []
    for meta in store.episodes(game):  # validated metas, best first

        def load(meta=meta) -> _Loaded:
            trajectory = store.load(game, meta.episode_id)
            steps = [
                _Step(s.action, s.action_name, s.reward, s.lives, s.state_text, None)
                for s in trajectory.steps
            ]
            return _Loaded(steps, iter(trajectory.frames), "model_input")

        episodes.append(
            _Episode(
                name=meta.episode_id,
                game=game,
                episode_return=meta.episode_return,
                action_names=meta.action_names,
                image_shape=meta.image_shape,
                source=f"memory:{game}/{meta.episode_id}",
                load=load,
                model=meta.model,
                seed=meta.seed,
            )
        )
    full = len(episodes) > 0 and len(episodes[0].action_names) == 18
    return _Source("memory", path, game, episodes, {"full_action_space": full})


def _read_config(path: Path) -> tuple[dict[str, Any], RunSpec]:
    config = read_json_file(path)
    return config, read_run_spec(config, path)


def _open_run(path: Path) -> _Source:
    from atari_vlm.env import AtariVLMEnv

    config, run_spec = _read_config(path / "config.json")
    env_config = (run_spec.env, run_spec.observation)
    env = AtariVLMEnv(*env_config)
    names = tuple(env.action_names)
    env.close()
    game = run_spec.game
    model = config.get("model")
    spec = model.get("spec") if isinstance(model, dict) and run_spec.agent == "vlm" else run_spec.agent
    steps_path = path / "steps.jsonl"
    by_episode: dict[int, list[dict[str, Any]]] = {}
    if steps_path.is_file():
        for record in read_jsonl(steps_path):
            if is_integer(record.get("episode")):
                by_episode.setdefault(record["episode"], []).append(record)
    finished: dict[int, dict[str, Any]] = {}
    for record in read_jsonl(path / "episodes.jsonl"):  # bad lines skipped; each field checked as used
        number = record.get("episode")
        if is_integer(number) and 0 <= number < run_spec.episodes:
            finished.setdefault(number, record)
    episodes = []
    for number in sorted(finished):
        record = finished[number]
        steps = _run_steps(steps_path, number, by_episode.get(number, []), names, record)
        name = f"episode_{number:04d}"
        seed = record.get("seed")
        video = path / "videos" / f"{name}.mp4"

        def load(steps=steps, seed=seed, video=video, number=number) -> _Loaded:
            return _load_run_episode(env_config, steps, seed, video, f"{path} episode {number}")

        episodes.append(
            _Episode(
                name=name,
                game=game,
                episode_return=math.fsum(s.reward for s in steps),
                action_names=names,
                image_shape=NATIVE_SHAPE,
                source=f"run:{path.resolve().name}/{name}",
                load=load,
                model=spec,
                seed=seed if is_integer(seed) and seed >= 0 else None,
                terminated=bool(record.get("terminated")),
            )
        )
    env_kwargs = {
        "frameskip": run_spec.env.frame_skip,
        "repeat_action_probability": run_spec.env.repeat_action_probability,
        "full_action_space": run_spec.env.full_action_space,
    }
    if run_spec.env.max_episode_frames is not None:
        env_kwargs["max_num_frames_per_episode"] = run_spec.env.max_episode_frames
    return _Source("run", path, game, episodes, env_kwargs)


def _run_steps(
    path: Path, number: int, records: list[dict[str, Any]], names: Sequence[str], episode: dict[str, Any]
) -> list[_Step]:
    records = sorted(records, key=lambda r: r.get("step") if is_integer(r.get("step")) else -1)
    where = f"{path}: episode {number}"
    if not records or [r.get("step") for r in records] != list(range(1, len(records) + 1)):
        raise ConfigError(f"{where} does not log its steps 1..n exactly once (a damaged run directory)")
    if is_integer(episode.get("steps")) and episode["steps"] != len(records):
        raise ConfigError(f"{where} logs {len(records)} steps, but episodes.jsonl says {episode['steps']}")
    steps = []
    for r in records:
        action, name, reward, lives = r.get("action"), r.get("action_name"), r.get("reward"), r.get("lives")
        if not is_integer(action) or not 0 <= action < len(names) or name != names[action]:
            raise ConfigError(f"{where} step {r['step']}: action {action!r} ({name!r}) is not a legal action")
        if not is_finite_number(reward) or not is_integer(lives):
            raise ConfigError(f"{where} step {r['step']}: reward and lives must be numbers")
        text = r.get("text")
        answer = text if isinstance(text, str) and text else None
        steps.append(_Step(action, name, float(reward), lives, None, answer))
    total = math.fsum(s.reward for s in steps)
    if is_finite_number(episode.get("return")) and not math.isclose(total, episode["return"], abs_tol=1e-6):
        raise ConfigError(
            f"{where}: the step rewards sum to {total:g}, but episodes.jsonl says {episode['return']}"
        )
    return steps


class _Diverged(Exception):
    pass


def _replay(env_config: Any, seed: int, steps: Sequence[_Step]) -> Iterator[tuple[np.ndarray, str]]:
    """(native RGB frame, state text) before each decision and after the last, checked against the log;
    ``env_config`` is the run's (env, observation) spec sections."""
    from atari_vlm.env import AtariVLMEnv

    env = AtariVLMEnv(*env_config)
    try:
        obs, _ = env.reset(seed=seed)
        yield env.last_rgb_frame, obs["text"]
        for k, step in enumerate(steps, start=1):
            obs, reward, terminated, truncated, info = env.step(step.action)
            if not math.isclose(reward, step.reward, abs_tol=1e-9) or info["lives"] != step.lives:
                raise _Diverged(f"step {k}: replay gave reward {reward:g}, lives {info['lives']}")
            if (terminated or truncated) and k < len(steps):
                raise _Diverged(f"step {k}: the replayed episode ended early")
            yield env.last_rgb_frame, obs["text"]
    finally:
        env.close()


def _load_run_episode(env_config: Any, steps: list[_Step], seed: Any, video: Path, where: str) -> _Loaded:
    why = "its episode seed is not recorded"
    if is_integer(seed) and seed >= 0:
        try:
            texts = [text for _, text in _replay(env_config, seed, steps)]
        except _Diverged as exc:
            why = f"the replay does not reproduce the log ({exc})"
        else:
            with_text = [
                _Step(s.action, s.action_name, s.reward, s.lives, text, s.answer)
                for s, text in zip(steps, texts, strict=False)
            ]
            frames = (np.array(frame, copy=True) for frame, _ in _replay(env_config, seed, steps))
            return _Loaded(with_text, frames, "native_rgb")
    if not video.is_file():
        raise ConfigError(f"cannot recover the frames of {where}: {why}, and it has no video ({video})")
    warnings.warn(f"{where}: {why}; frames come from its video and state_text is null", stacklevel=4)
    return _Loaded(steps, read_native_frames(video), "video_rgb")


# --- selection and output ---------------------------------------------------------------------------


def _select(episodes: list[_Episode], top_k: int | None, min_return: float | None) -> list[_Episode]:
    if top_k is not None and (not is_integer(top_k) or top_k < 1):
        raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
    if min_return is not None and not is_finite_number(min_return):
        raise ConfigError(f"min_return must be a finite number, got {min_return!r}")
    ranked = sorted(episodes, key=lambda e: (-e.episode_return, e.name))
    if min_return is not None:
        ranked = [e for e in ranked if e.episode_return >= min_return]
    return ranked[:top_k] if top_k is not None else ranked


def _selected(source: _Source, top_k: int | None, min_return: float | None) -> list[_Episode]:
    chosen = _select(source.episodes, top_k, min_return)
    if not chosen:
        found = len(source.episodes)
        why = (
            f"none of its {found} episodes has a return >= {min_return:g}"
            if found
            else "it has no finished episode"
        )
        raise ConfigError(f"nothing to export from {source.path}: {why}")
    return chosen


def _check_destination(out: Path, source: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty directory; choose another --out")
    resolved, src = out.resolve(), source.resolve()
    if resolved == src or resolved.is_relative_to(src):
        raise ConfigError(f"{out} is inside the source {source}; write the export elsewhere")


def _temp_beside(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset is meant to be shared
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise ConfigError(f"{out} was filled while exporting; the export is not written")
        out.rmdir()
    os.rename(tmp, out)


def _returns_to_go(rewards: Sequence[float]) -> list[float]:
    out, total = [0.0] * len(rewards), 0.0
    for i in range(len(rewards) - 1, -1, -1):
        total += rewards[i]
        out[i] = total
    return out


def _save_image(frame: np.ndarray, path: Path, image_format: str) -> None:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    if image_format == "png":
        image.save(path, format="PNG", compress_level=6)
    else:
        image.save(path, format="JPEG", quality=95)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _frame_or_fail(frames: Iterator[np.ndarray], episode: _Episode, step: int) -> np.ndarray:
    frame = next(frames, None)
    if frame is None:
        raise ConfigError(f"{episode.source}: no frame for step {step} (its frames end early)")
    return frame


def export_hf(
    source: str | Path,
    out_dir: str | Path,
    *,
    top_k: int | None = None,
    min_return: float | None = None,
    image_format: str = "png",
) -> Path:
    """Write a Hugging Face ``datasets``-style folder of the source's episodes; returns its path.

    ``out_dir`` gets ``data.jsonl`` (one row per decision, columns in :data:`HF_FEATURES`),
    ``images/<episode>/<step>.<png|jpg>``, ``dataset_info.json`` and a ``README.md`` dataset card.
    ``min_return`` keeps the episodes whose return is at least that; ``top_k`` then keeps the best k.
    Episodes are written best first. Load with::

        datasets.load_dataset("json", data_files=f"{out_dir}/data.jsonl", split="train")

    Raises:
        ConfigError: a source that is neither a run directory nor a game folder, corrupt source files,
            a bad filter, nothing left after filtering, or an ``out_dir`` that is not empty.
    """
    image_format = {"jpeg": "jpg"}.get(str(image_format).lower(), str(image_format).lower())
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    out, src_path = Path(out_dir), Path(source)
    _check_destination(out, src_path)
    src = _open_source(src_path)
    episodes = _selected(src, top_k, min_return)
    tmp = _temp_beside(out)
    try:
        rows, kinds = 0, set()
        with open(tmp / "data.jsonl", "w", encoding="utf-8") as f:
            for episode in episodes:
                loaded = episode.load()
                kinds.add(loaded.image_kind)
                folder = tmp / "images" / episode.name
                folder.mkdir(parents=True)
                rewards = [s.reward for s in loaded.steps]
                to_go = _returns_to_go(rewards)
                for i, step in enumerate(loaded.steps, start=1):
                    relative = f"images/{episode.name}/{i:06d}.{image_format}"
                    _save_image(_frame_or_fail(loaded.frames, episode, i), tmp / relative, image_format)
                    row = {
                        "id": f"{episode.name}/{i:06d}",
                        "game": episode.game,
                        "episode": episode.name,
                        "step": i,
                        "image": relative,
                        "state_text": step.state_text,
                        "action": step.action,
                        "action_name": step.action_name,
                        "action_names": list(episode.action_names),
                        "reward": float(step.reward),
                        "return_to_go": float(to_go[i - 1]),
                        "episode_return": float(episode.episode_return),
                        "lives": step.lives,
                        "done": i == len(loaded.steps),
                        "answer": step.answer,
                        "model": episode.model,
                        "source": episode.source,
                    }
                    f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                    rows += 1
        info = _hf_info(src, episodes, rows, sorted(kinds), image_format, top_k, min_return)
        (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_dataset_card(info), encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _hf_info(
    src: _Source,
    episodes: list[_Episode],
    rows: int,
    image_kinds: list[str],
    image_format: str,
    top_k: int | None,
    min_return: float | None,
) -> dict[str, Any]:
    returns = [e.episode_return for e in episodes]
    return {
        "description": f"{src.game} decisions exported by atari-vlm from a {src.kind} source",
        "features": HF_FEATURES,
        "splits": {"train": {"name": "train", "num_examples": rows}},
        "atari_vlm": {
            "version": __version__,
            "created": _now(),
            "game": src.game,
            "env_id": game_info(src.game).env_id,
            "source_kind": src.kind,
            "source": src.path.resolve().name,
            "episodes": len(episodes),
            "rows": rows,
            "returns": returns,
            "mean_return": float(np.mean(returns)),
            "filters": {"top_k": top_k, "min_return": min_return},
            "image_format": image_format,
            "image_kinds": image_kinds,
            "env_kwargs": src.env_kwargs,
        },
    }


_IMAGE_KIND_DOCS = {
    "native_rgb": "the native 210x160 RGB screen, recovered exactly by replaying the run",
    "video_rgb": "the native 210x160 RGB screen, decoded from the run's H.264 video (lossy)",
    "model_input": "exactly the image the model was shown (resized / grayscale / frame grid as configured)",
}


def _dataset_card(info: dict[str, Any]) -> str:
    meta = info["atari_vlm"]
    columns = "\n".join(
        f"| `{name}` | {_feature_type(spec)} | {_COLUMN_DOCS[name]} |" for name, spec in HF_FEATURES.items()
    )
    kinds = "\n".join(f"- `{k}`: {_IMAGE_KIND_DOCS[k]}" for k in meta["image_kinds"])
    filters = ", ".join(f"{k}={v}" for k, v in meta["filters"].items() if v is not None) or "none"
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data.jsonl
tags:
- atari
- reinforcement-learning
- vision-language-model
---

# {meta["game"]} decisions (atari-vlm export)

{meta["rows"]} decisions from {meta["episodes"]} episode(s) of `{meta["env_id"]}`, exported by
atari-vlm {meta["version"]} on {meta["created"]} from the {meta["source_kind"]} `{meta["source"]}`.
Filters: {filters}. Episode returns: mean {meta["mean_return"]:g}, best {max(meta["returns"]):g}.

Images ({meta["image_format"]}):
{kinds}

## Loading

```python
import os
from datasets import Image, load_dataset

root = "path/to/this/folder"
ds = load_dataset("json", data_files=os.path.join(root, "data.jsonl"), split="train")
ds = ds.map(lambda row: {{"image": os.path.join(root, row["image"])}}).cast_column("image", Image())
```

## Columns (`data.jsonl`, one row per decision)

| column | type | meaning |
|---|---|---|
{columns}

`dataset_info.json` holds the same schema as serialised `datasets.Features`
(`Features.from_dict(info["features"])`) and the export's provenance under `atari_vlm`.
"""


def _feature_type(spec: dict[str, Any]) -> str:
    return f"list[{spec['feature']['dtype']}]" if spec["_type"] == "Sequence" else spec["dtype"]


# --- Minari -----------------------------------------------------------------------------------------


def default_dataset_id(source: str | Path) -> str:
    """A Minari id for a source: ``atari-vlm/<game>/<run dir or memory root name>-v0``."""
    src = _open_source(source)
    folder = src.path.resolve()
    folder = folder.parent if src.kind == "memory" else folder  # a memory's game folder is just the game
    name = re.sub(r"[^-_A-Za-z0-9]+", "-", folder.name).strip("-_") or "export"
    return f"atari-vlm/{src.game.lower()}/{name}-v0"


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _minari_root(out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    configured = os.environ.get("MINARI_DATASETS_PATH")
    return Path(configured) if configured else Path.home() / ".minari" / "datasets"


def export_minari(
    source: str | Path,
    dataset_id: str,
    *,
    top_k: int | None = None,
    min_return: float | None = None,
    out_dir: str | Path | None = None,
) -> str:
    """Write the source's episodes as the Minari dataset ``dataset_id``; returns the dataset's directory.

    ``out_dir`` is the Minari datasets root the dataset is written under (default: Minari's own,
    ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``); load it with ``minari.load_dataset(dataset_id)``
    with ``MINARI_DATASETS_PATH`` set to that root. Observations are the stored images (a ``Box`` of
    uint8, stored losslessly), actions a ``Discrete`` over the legal actions; the env spec is the
    game's ``ALE/<Game>-v5`` with the run's frame skip, sticky actions and action set. Filters as in
    :func:`export_hf`. Needs the ``minari`` extra.

    Raises:
        ConfigError: as :func:`export_hf`; also a malformed or existing ``dataset_id``, or episodes
            whose images or actions differ in shape (one dataset has one observation space).
        DependencyNotInstalled: minari (or pyarrow) is missing.
    """
    if not isinstance(dataset_id, str) or not DATASET_ID_RE.fullmatch(dataset_id):
        raise ConfigError(
            f"malformed Minari dataset id {dataset_id!r}: expected (namespace/)name-v<version>, "
            "e.g. atari-vlm/pong/random-v0 (letters, digits, '-' and '_')"
        )
    minari = require("minari", extra="minari")
    require("pyarrow", extra="minari")
    from minari.data_collector.episode_buffer import EpisodeBuffer

    root = _minari_root(out_dir)
    final = root / dataset_id
    if final.exists():
        raise ConfigError(
            f"a Minari dataset {dataset_id!r} already exists in {root}; choose another id or version"
        )
    src = _open_source(source)
    if root.resolve().is_relative_to(src.path.resolve()):
        raise ConfigError(f"{root} is inside the source {src.path}; write the export elsewhere")
    episodes = _selected(src, top_k, min_return)
    shapes = {(e.image_shape, e.action_names) for e in episodes}
    if len(shapes) > 1:
        raise ConfigError(
            f"the episodes of {src.path} differ in image shape or action set ({len(shapes)} kinds); "
            "a Minari dataset has one observation and action space: export them with the hf format"
        )
    image_shape, action_names = episodes[0].image_shape, episodes[0].action_names

    import ale_py
    import gymnasium as gym
    from gymnasium import spaces

    gym.register_envs(ale_py)
    base = gym.spec(game_info(src.game).env_id)
    spec = dataclasses.replace(base, kwargs={**base.kwargs, **src.env_kwargs})

    def buffers() -> Iterator[Any]:
        for index, episode in enumerate(episodes):
            loaded = episode.load()
            n = len(loaded.steps)
            observations = [_frame_or_fail(loaded.frames, episode, i) for i in range(1, n + 1)]
            # The memory keeps no screen after the last decision: the last one stands in for it.
            observations.append(next(loaded.frames, observations[-1]))
            yield EpisodeBuffer(
                id=index,
                seed=episode.seed,
                observations=observations,
                actions=[s.action for s in loaded.steps],
                rewards=[s.reward for s in loaded.steps],
                terminations=[False] * (n - 1) + [episode.terminated],
                truncations=[False] * (n - 1) + [not episode.terminated],
            )

    description = (
        f"{src.game} episodes played by atari-vlm ({src.kind} source {src.path.resolve().name}); "
        f"actions: {', '.join(f'{i}={n}' for i, n in enumerate(action_names))}. "
        f"Filters: top_k={top_k}, min_return={min_return}."
    )
    models = sorted({e.model for e in episodes if e.model})
    root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(dir=root, prefix=".atari-vlm-minari-"))
    try:
        kwargs: dict[str, Any] = {}
        if "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters:
            kwargs["jpeg_encoding"] = False  # Atari screens: lossless
        with _environ("MINARI_DATASETS_PATH", str(tmp_root)), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # minari nags about author e-mail and code links
            minari.create_dataset_from_buffers(
                dataset_id,
                buffers(),
                env=spec,
                eval_env=spec,
                observation_space=spaces.Box(0, 255, image_shape, np.uint8),
                action_space=spaces.Discrete(len(action_names)),
                algorithm_name=", ".join(models) or None,
                author="atari-vlm",
                description=description,
                data_format="arrow",
                requirements=[f"ale-py=={ale_py.__version__}"],
                **kwargs,
            )
        _place_minari(tmp_root, root, dataset_id)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return str(final)


def _place_minari(tmp_root: Path, root: Path, dataset_id: str) -> None:
    """Move a dataset built under ``tmp_root`` to ``root``, with the namespace files it needs."""
    parts = dataset_id.split("/")
    for depth in range(1, len(parts)):
        namespace = "/".join(parts[:depth])
        (root / namespace).mkdir(parents=True, exist_ok=True)
        marker = tmp_root / namespace / "namespace_metadata.json"
        if marker.is_file() and not (root / namespace / marker.name).exists():
            shutil.copyfile(marker, root / namespace / marker.name)
    final = root / dataset_id
    if final.exists():
        raise ConfigError(f"a Minari dataset {dataset_id!r} appeared in {root} while exporting; not replaced")
    os.rename(tmp_root / dataset_id, final)
