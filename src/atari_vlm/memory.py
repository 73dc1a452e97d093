"""Trajectory memory: episodes on disk per game, and the exemplars chosen from them for in-context
learning. Safe formats only (JSON + npz read with ``allow_pickle=False``), never pickle.

Layout of a :class:`TrajectoryStore`::

    <root>/<Game>/<episode_id>/meta.json    what the episode was (:class:`EpisodeMeta`)
                              steps.jsonl   one line per decision: step (from 1), action, action_name,
                                            reward, lives (after the step), state_text
                              frames.npz    one uint8 array ``frames``, (T, H, W) or (T, H, W, 3):
                                            the image the model saw before each decision

An episode is built in a hidden ``.tmp-*`` directory beside its final place and renamed into it, so a
reader sees a whole episode or none; an interrupted one leaves nothing (a process killed in the middle
of the rename's preparation leaves a hidden directory that listings ignore and
:meth:`TrajectoryStore.remove_incomplete` deletes). Everything read is validated before use: a corrupt
or hostile file is a :class:`~atari_vlm.errors.ConfigError` naming the file and what is wrong, never an
allocation of a declared-but-absurd array or an unpickling.

Exemplars come from the best episodes (:func:`select_exemplars`): the decisions just before a reward
and just before a life (or a point) was lost, within an image budget, or the stored screens most like
the current one (:func:`retrieve_similar`). Demonstrations from elsewhere enter the same memory through
:func:`import_demonstration`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from atari_vlm.errors import ConfigError
from atari_vlm.games import resolve_game
from atari_vlm.rundir import parse_json

SCHEMA_VERSION = 1
SOURCES: tuple[str, ...] = ("self", "demo", "expert", "human")
STRATEGIES: tuple[str, ...] = ("key_moments", "similar")
MAX_IMAGE_SIDE = 4096  # a 4x4 grid of 1024-pixel frames still fits
MAX_EPISODE_STEPS = 1_000_000
MAX_FRAMES_BYTES = 2**31  # 2 GiB of decoded pixels per episode: beyond it a file is refused, not loaded
MAX_NPZ_EXPANSION = 600
"""How many times its stored size an npz member may expand to. Real Atari frames deflate 96-362x (1000
random-action frames of Freeway, MontezumaRevenge, Breakout, Pong; 112-410x for one frame repeated);
zeros reach deflate's limit, ~1030x: a small file declaring a huge array is refused before decoding."""
MAX_META_BYTES = 2**20
MAX_STEP_LINE_BYTES = 2**14
MAX_TEXT_LENGTH = 4096
MAX_ACTIONS = 64
SIGNATURE_SIDE = 16  # frames are compared as 16x16 luminance thumbnails
OUTCOME_HORIZON = 10  # a retrieved step's note tells what happened within this many decisions
_EPISODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_META_FILE, _STEPS_FILE, _FRAMES_FILE = "meta.json", "steps.jsonl", "frames.npz"


@dataclass(frozen=True)
class Exemplar:
    """One remembered decision shown to the model as an example: the frame it saw and what was done."""

    image: np.ndarray  # the image the model saw (as in the observation's "image")
    state_text: str
    action_name: str
    note: str = ""  # why this step matters, e.g. "2 steps before scoring +1"


@dataclass(frozen=True)
class EpisodeMeta:
    """What one stored episode was: enough to rank it without reading its frames."""

    game: str
    episode_id: str
    episode_return: float
    steps: int
    source: str
    image_shape: tuple[int, ...]
    action_names: tuple[str, ...]
    seed: int | None = None
    model: str | None = None
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "game": self.game,
            "episode_id": self.episode_id,
            "return": self.episode_return,
            "steps": self.steps,
            "seed": self.seed,
            "source": self.source,
            "model": self.model,
            "created": self.created,
            "image_shape": list(self.image_shape),
            "action_names": list(self.action_names),
        }


@dataclass(frozen=True)
class StepRecord:
    """One decision: what was done after seeing frame ``step - 1`` and what came of it."""

    step: int
    action: int
    action_name: str
    reward: float
    lives: int
    state_text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "action": self.action,
            "action_name": self.action_name,
            "reward": self.reward,
            "lives": self.lives,
            "state_text": self.state_text,
        }


@dataclass(frozen=True)
class Trajectory:
    """A whole stored episode. ``frames`` is read-only: it may be shared with the store's cache."""

    meta: EpisodeMeta
    steps: tuple[StepRecord, ...]
    frames: np.ndarray

    @property
    def rewards(self) -> np.ndarray:
        return np.array([s.reward for s in self.steps], dtype=np.float64)

    @property
    def lives(self) -> np.ndarray:
        return np.array([s.lives for s in self.steps], dtype=np.int64)


# --- validation -------------------------------------------------------------------------------------


def _bad(where: Path | str, what: str) -> ConfigError:
    """An error about a file (a ``Path``) or about data on its way in (a ``str`` naming it)."""
    prefix = f"invalid trajectory file {where}" if isinstance(where, Path) else where
    return ConfigError(f"{prefix}: {what}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(path: Path | str, name: str, value: Any, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise _bad(path, f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_number(path: Path | str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(path, f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_str(path: Path | str, name: str, value: Any, max_length: int = MAX_TEXT_LENGTH) -> str:
    if not isinstance(value, str) or len(value) > max_length:
        raise _bad(path, f"{name} must be a string of at most {max_length} characters, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_episode_id(episode_id: Any) -> str:
    if not isinstance(episode_id, str) or not _EPISODE_ID.fullmatch(episode_id):
        raise ConfigError(
            f"episode id must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit; "
            f"got {_short(episode_id)}"
        )
    return episode_id


def _check_image_shape(path: Path | str, name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    if len(shape) not in (2, 3) or not all(_is_int(v) for v in shape):
        raise _bad(path, f"{name} must be (height, width) or (height, width, 3), got {_short(shape)}")
    if not all(1 <= v <= MAX_IMAGE_SIDE for v in shape[:2]) or (len(shape) == 3 and shape[2] != 3):
        raise _bad(
            path, f"{name} {tuple(shape)} is out of bounds: sides 1..{MAX_IMAGE_SIDE}, 3 channels or none"
        )
    return tuple(int(v) for v in shape)


def _check_action_names(path: Path | str, value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_ACTIONS
        or not all(isinstance(n, str) and 0 < len(n) <= 64 for n in value)
        or len(set(value)) != len(value)
    ):
        raise _bad(
            path, f"action_names must be 1..{MAX_ACTIONS} distinct non-empty names, got {_short(value)}"
        )
    return tuple(value)


def _read_json(path: Path, max_bytes: int) -> Any:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _bad(path, "the file is missing") from None
    if size > max_bytes:
        raise _bad(path, f"{size} bytes, more than the {max_bytes} a trajectory file may have")
    try:
        return parse_json(path.read_text(encoding="utf-8"))  # bounded depth and integer digits
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"not readable JSON ({exc})") from exc


def _parse_meta(data: Any, path: Path) -> EpisodeMeta:
    if not isinstance(data, dict):
        raise _bad(path, "must hold a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _bad(
            path, f"schema_version {_short(version)} is not supported (this atari-vlm reads {SCHEMA_VERSION})"
        )
    missing = sorted(
        {"game", "episode_id", "return", "steps", "source", "image_shape", "action_names"} - set(data)
    )
    if missing:
        raise _bad(path, f"missing field(s) {missing}")
    source = data["source"]
    if source not in SOURCES:
        raise _bad(path, f"source must be one of {SOURCES}, got {_short(source)}")
    seed, model = data.get("seed"), data.get("model")
    if seed is not None:
        _check_int(path, "seed", seed, 0, 2**64)
    if model is not None:
        _check_str(path, "model", model, 512)
    shape = data["image_shape"]
    if not isinstance(shape, list):
        raise _bad(path, f"image_shape must be a list, got {_short(shape)}")
    return EpisodeMeta(
        game=_check_str(path, "game", data["game"], 64),
        episode_id=_check_episode_id(data["episode_id"]),
        episode_return=_check_number(path, "return", data["return"]),
        steps=_check_int(path, "steps", data["steps"], 1, MAX_EPISODE_STEPS),
        source=source,
        image_shape=_check_image_shape(path, "image_shape", shape),
        action_names=_check_action_names(path, data["action_names"]),
        seed=seed,
        model=model,
        created=_check_str(path, "created", data.get("created", ""), 64),
    )


def _parse_step(record: Any, index: int, path: Path | str, action_names: Sequence[str]) -> StepRecord:
    where = f"step {index + 1}"
    if not isinstance(record, dict):
        raise _bad(path, f"{where} is not a JSON object")
    fields = {"step", "action", "action_name", "reward", "lives", "state_text"}
    missing = sorted(fields - set(record))
    if missing:
        raise _bad(path, f"{where} lacks field(s) {missing}")
    step = _check_int(path, f"{where}: step", record["step"], index + 1, index + 1)
    action = _check_int(path, f"{where}: action", record["action"], 0, len(action_names) - 1)
    name = record["action_name"]
    if name != action_names[action]:
        raise _bad(
            path,
            f"{where}: action_name {_short(name)} is not listed action {action} ({action_names[action]!r})",
        )
    return StepRecord(
        step=step,
        action=action,
        action_name=name,
        reward=_check_number(path, f"{where}: reward", record["reward"]),
        lives=_check_int(path, f"{where}: lives", record["lives"], 0, 1_000_000),
        state_text=_check_str(path, f"{where}: state_text", record["state_text"]),
    )


def _read_steps(path: Path, meta: EpisodeMeta) -> tuple[StepRecord, ...]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _bad(path, "the file is missing") from None
    if size > meta.steps * MAX_STEP_LINE_BYTES:
        raise _bad(path, f"{size} bytes is too large for {meta.steps} steps")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not readable text ({exc})") from exc
    if len(lines) != meta.steps:
        raise _bad(path, f"{len(lines)} steps, but meta.json says {meta.steps}")
    steps = []
    for i, line in enumerate(lines):
        try:
            record = parse_json(line)
        except ValueError as exc:
            raise _bad(path, f"line {i + 1} is not JSON ({exc})") from exc
        steps.append(_parse_step(record, i, path, meta.action_names))
    return tuple(steps)


def _check_return(path: Path, episode_return: float, rewards: Iterable[float]) -> None:
    total = math.fsum(rewards)
    if not math.isclose(total, episode_return, rel_tol=1e-6, abs_tol=1e-6):
        raise _bad(path, f"return {episode_return:g} is not the sum of the step rewards ({total:g})")


def _npy_header(handle: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return shape, dtype


_UINT8 = ("u1",)
_INTEGERS = ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
_NUMBERS = (*_INTEGERS, "f2", "f4", "f8")
_NPZ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    OSError,
    ValueError,
    EOFError,
    RuntimeError,
    NotImplementedError,
)


def _read_npz(
    path: Path, dtypes: Mapping[str, tuple[str, ...]], required: Iterable[str], length: int | None
) -> dict[str, np.ndarray]:
    """Arrays of an npz, each checked from its header (dtype, declared size) before a byte is decoded.

    ``dtypes`` maps each allowed array name to its allowed dtypes as kind + size (``"u1"``, ``"f8"``);
    ``length`` is the first dimension every array must have (``None``: whatever ``frames`` has).
    """
    if not path.is_file():
        raise _bad(path, "the file is missing")
    try:
        with zipfile.ZipFile(path) as archive:
            headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if name not in dtypes or not info.filename.endswith(".npy") or name in headers:
                    raise _bad(path, f"unexpected member {info.filename!r}; allowed: {sorted(dtypes)}")
                with archive.open(info) as handle:
                    headers[name] = _npy_header(handle)
                if info.file_size > MAX_NPZ_EXPANSION * max(info.compress_size, 1) + 2**16:
                    raise _bad(
                        path,
                        f"{info.filename} expands from {info.compress_size} to {info.file_size} bytes, more "
                        f"than {MAX_NPZ_EXPANSION} times: not frames an episode holds (a zip bomb?)",
                    )
    except ConfigError:
        raise
    except _NPZ_ERRORS as exc:
        raise _bad(path, f"not a readable npz archive ({exc})") from exc
    missing = sorted(set(required) - set(headers))
    if missing:
        raise _bad(path, f"missing array(s) {missing}")
    total = 0
    for name, (shape, dtype) in headers.items():
        if dtype.hasobject:
            raise _bad(path, f"{name} holds Python objects (a pickle); only numeric arrays are read")
        if f"{dtype.kind}{dtype.itemsize}" not in dtypes[name]:
            raise _bad(path, f"{name} has dtype {dtype}; expected one of {', '.join(dtypes[name])}")
        if not shape or not all(_is_int(v) and v >= 0 for v in shape):
            raise _bad(path, f"{name} has shape {shape}; expected at least one dimension")
        total += math.prod(shape) * dtype.itemsize
        if total > MAX_FRAMES_BYTES:
            raise _bad(path, f"{name} declares shape {shape}: more than the {MAX_FRAMES_BYTES} bytes allowed")
    if "frames" in headers:
        _check_image_shape(path, "frames' image shape", headers["frames"][0][1:])
    want = headers["frames"][0][0] if length is None and "frames" in headers else length
    for name, (shape, _) in headers.items():
        if shape[0] != want:
            raise _bad(path, f"{name} has {shape[0]} entries, expected {want} (one per step)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in headers}
    except _NPZ_ERRORS as exc:
        raise _bad(path, f"truncated or corrupt array data ({exc})") from exc


def _check_frames(path: Path, frames: np.ndarray, image_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = _check_image_shape(path, "frames' image shape", frames.shape[1:])
    if image_shape is not None and shape != image_shape:
        raise _bad(path, f"frames are {shape}, but meta.json says image_shape {image_shape}")
    return shape


# --- writing ----------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write: Any, mode: str = "w") -> None:
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EpisodeRecorder:
    """Collects one episode as it is played (a :class:`~atari_vlm.rollout.EpisodeSink`).

    Frames are kept in a list until :meth:`finish`: the cost is steps x image bytes (3000 steps of
    84x84 RGB: 64 MB; of native 210x160 RGB: 300 MB), twice that for a moment while they are stacked
    for writing.
    Nothing touches the disk before :meth:`finish`; :meth:`abort` just drops what was collected.
    """

    def __init__(self, store: TrajectoryStore, game: str, meta: Mapping[str, Any]):
        allowed = {"episode_id", "seed", "source", "model", "action_names"}
        unknown = sorted(set(meta) - allowed)
        if unknown:
            raise ConfigError(f"unknown recorder meta key(s) {unknown}; allowed: {sorted(allowed)}")
        if "action_names" not in meta:
            raise ConfigError("recorder meta needs 'action_names' (the env's legal actions, in index order)")
        names = list(meta["action_names"])
        _check_action_names("recorder meta", names)
        source = meta.get("source", "self")
        if source not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES}, got {source!r}")
        seed = meta.get("seed")
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
        model = meta.get("model")
        if model is not None and (not isinstance(model, str) or len(model) > 512):
            raise ConfigError(
                f"model must be a model spec string (at most 512 characters) or None, got {model!r}"
            )
        self._store = store
        self.game = resolve_game(game)
        self.episode_id = _check_episode_id(meta.get("episode_id") or store.new_episode_id(source))
        self._names = tuple(names)
        self._source, self._seed, self._model = source, seed, model
        self._frames: list[np.ndarray] = []
        self._steps: list[StepRecord] = []

    def add(
        self, image: np.ndarray, state_text: str, action: int, action_name: str, reward: float, lives: int
    ) -> None:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ConfigError("a recorded image must be a uint8 numpy array")
        where = f"cannot record episode {self.episode_id}"
        shape = _check_image_shape(where, "image", image.shape)
        if self._frames and shape != self._frames[0].shape:
            raise ConfigError(
                f"image shape changed within episode {self.episode_id}: {self._frames[0].shape} -> {shape}"
            )
        record = _parse_step(
            {
                "step": len(self._steps) + 1,
                "action": int(action),
                "action_name": action_name,
                "reward": float(reward),
                "lives": int(lives),
                "state_text": state_text,
            },
            len(self._steps),
            where,
            self._names,
        )
        self._frames.append(np.array(image, copy=True))
        self._steps.append(record)

    def finish(self, episode_return: float) -> Path:
        """Write the episode (atomically) and return its directory."""
        if not self._steps:
            raise ConfigError(f"episode {self.episode_id} has no steps; nothing to store")
        meta = EpisodeMeta(
            game=self.game,
            episode_id=self.episode_id,
            episode_return=_check_number(f"cannot store episode {self.episode_id}", "return", episode_return),
            steps=len(self._steps),
            source=self._source,
            image_shape=tuple(self._frames[0].shape),
            action_names=self._names,
            seed=self._seed,
            model=self._model,
            created=_now(),
        )
        frames, steps = np.stack(self._frames), tuple(self._steps)
        self.abort()  # the lists are no longer needed; drop them before the (compressed) copy is made
        return self._store._write(meta, steps, frames)

    def abort(self) -> None:
        self._frames, self._steps = [], []


class TrajectoryStore:
    """Episodes on disk under ``root``, per game. Safe for one writer per game at a time (the trainer
    holds its run directory's lock); readers may run beside it, as episodes appear whole.

    Loaded episodes are cached in memory (up to ``cache_bytes`` of frames), which is sound because a
    stored episode never changes: it is written once and only ever deleted whole.
    """

    def __init__(self, root: str | Path, *, cache_bytes: int = 256 * 2**20):
        self.root = Path(root)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, str], Trajectory] = OrderedDict()
        self._metas: dict[tuple[str, str], EpisodeMeta] = {}
        self._signatures: dict[tuple[str, str], tuple[np.ndarray, tuple[str, ...]]] = {}

    def game_dir(self, game: str) -> Path:
        return self.root / resolve_game(game)

    def new_episode_id(self, source: str) -> str:
        return f"{source}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.urandom(4).hex()}"

    def recorder(self, game: str, meta: Mapping[str, Any]) -> EpisodeRecorder:
        """A sink for one episode. ``meta``: ``action_names`` (required), ``episode_id`` (default: a
        fresh unique one), ``seed``, ``source`` (default ``"self"``), ``model`` (the model spec)."""
        return EpisodeRecorder(self, game, meta)

    def episodes(self, game: str) -> list[EpisodeMeta]:
        """Every stored episode of ``game``, best return first (ties: by episode id)."""
        directory = self.game_dir(game)
        if not directory.is_dir():
            return []
        metas = [
            self._read_meta(directory, entry.name)
            for entry in directory.iterdir()
            if not entry.name.startswith(".") and entry.is_dir()
        ]
        return sorted(metas, key=lambda m: (-m.episode_return, m.episode_id))

    def has(self, game: str, episode_id: str) -> bool:
        return (self.game_dir(game) / _check_episode_id(episode_id)).is_dir()

    def load(self, game: str, episode_id: str) -> Trajectory:
        """One whole episode, validated (frames, steps and meta agree with each other).

        Raises:
            ConfigError: the episode is missing, or one of its files is corrupt or hostile.
        """
        key = (resolve_game(game), _check_episode_id(episode_id))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        directory = self.root / key[0]
        meta = self._read_meta(directory, key[1])
        path = directory / key[1]
        steps = _read_steps(path / _STEPS_FILE, meta)
        _check_return(path / _STEPS_FILE, meta.episode_return, (s.reward for s in steps))
        frames = _read_npz(path / _FRAMES_FILE, {"frames": _UINT8}, ["frames"], meta.steps)["frames"]
        _check_frames(path / _FRAMES_FILE, frames, meta.image_shape)
        frames.flags.writeable = False
        trajectory = Trajectory(meta, steps, frames)
        self._remember(key, trajectory)
        return trajectory

    def delete(self, game: str, episode_id: str) -> bool:
        """Remove one episode (whole); False when there was none."""
        key = (resolve_game(game), _check_episode_id(episode_id))
        self._cache.pop(key, None)
        self._metas.pop(key, None)
        self._signatures.pop(key, None)
        path = self.root / key[0] / key[1]
        if not path.is_dir():
            return False
        trash = path.with_name(f".del-{key[1]}-{os.urandom(4).hex()}")
        os.rename(path, trash)  # gone from listings at once; the removal itself may then take its time
        shutil.rmtree(trash)
        return True

    def remove_incomplete(self, game: str) -> int:
        """Delete what writers killed mid-write left (hidden ``.tmp-``/``.del-`` directories).

        Call it only when no other process writes to this game (e.g. while holding a run's lock).
        """
        directory = self.game_dir(game)
        if not directory.is_dir():
            return 0
        leftovers = [p for p in directory.iterdir() if p.name.startswith((".tmp-", ".del-"))]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)

    def _read_meta(self, directory: Path, episode_id: str) -> EpisodeMeta:
        """An episode's meta, validated once (per-decision retrieval lists the memory at every step)."""
        key = (directory.name, episode_id)
        if key in self._metas and (directory / episode_id).is_dir():
            return self._metas[key]
        path = directory / episode_id
        if not path.is_dir():
            raise ConfigError(f"no episode {episode_id!r} in {directory}")
        meta_path = path / _META_FILE
        meta = _parse_meta(_read_json(meta_path, MAX_META_BYTES), meta_path)
        if (meta.game, meta.episode_id) != (directory.name, episode_id):
            raise _bad(
                meta_path,
                f"it describes {meta.game}/{meta.episode_id}, but lies in {directory.name}/{episode_id}",
            )
        self._metas[key] = meta
        return meta

    def _remember(self, key: tuple[str, str], trajectory: Trajectory) -> None:
        self._cache[key] = trajectory
        while sum(t.frames.nbytes for t in self._cache.values()) > self.cache_bytes and len(self._cache) > 1:
            self._cache.popitem(last=False)

    def _write(self, meta: EpisodeMeta, steps: Sequence[StepRecord], frames: np.ndarray) -> Path:
        directory = self.root / meta.game
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / meta.episode_id
        if final.exists():
            raise ConfigError(
                f"episode {meta.episode_id!r} is already stored in {directory}; ids must be unique"
            )
        tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".tmp-{meta.episode_id}-"))
        try:
            text = json.dumps(meta.to_json(), indent=2, allow_nan=False) + "\n"
            _write_file(tmp / _META_FILE, lambda f: f.write(text))
            lines = "".join(
                json.dumps(s.to_json(), ensure_ascii=False, allow_nan=False) + "\n" for s in steps
            )
            _write_file(tmp / _STEPS_FILE, lambda f: f.write(lines))
            _write_file(tmp / _FRAMES_FILE, lambda f: np.savez_compressed(f, frames=frames), "wb")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a memory is meant to be shared
            try:
                os.rename(tmp, final)
            except OSError as exc:  # another writer stored the same id meanwhile
                raise ConfigError(f"cannot store episode {meta.episode_id!r} in {directory}: {exc}") from exc
            _fsync_dir(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


# --- exemplar selection -----------------------------------------------------------------------------


def _plural(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


@dataclass(frozen=True)
class _Event:
    step: int  # index of the step whose outcome this is
    good: bool
    reward: float
    life_lost: bool

    def note(self, before: int, action_name: str) -> str:
        if self.good:
            return f"{_plural(before)} before scoring {self.reward:+g}"
        what = "losing a life" if self.life_lost else f"scoring {self.reward:+g}"
        return f"{_plural(before)} before {what}: avoid this; {action_name} led to it"


def _events(trajectory: Trajectory) -> list[_Event]:
    """Rewards and losses in time order. A life counts as lost when ``lives`` drops from one step to
    the next; a negative reward (a point for the opponent, as in Pong, which has no lives) is a loss."""
    events = []
    previous = None
    for i, s in enumerate(trajectory.steps):
        life_lost = previous is not None and s.lives < previous
        previous = s.lives
        if s.reward > 0:
            events.append(_Event(i, True, s.reward, False))
        if life_lost or s.reward < 0:
            events.append(_Event(i, False, s.reward, life_lost))
    return events


def _exemplar(trajectory: Trajectory, index: int, note: str) -> Exemplar:
    step = trajectory.steps[index]
    return Exemplar(trajectory.frames[index], step.state_text, step.action_name, note)


def _check_positive(name: str, value: Any, low: int = 1) -> int:
    if not _is_int(value) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _ranked(store: TrajectoryStore, game: str, episode_ids: Iterable[str] | None) -> list[EpisodeMeta]:
    metas = store.episodes(game)
    if episode_ids is None:
        return metas
    wanted = set(episode_ids)
    return [m for m in metas if m.episode_id in wanted]


def select_exemplars(
    store: TrajectoryStore,
    game: str,
    *,
    top_k_episodes: int = 3,
    image_budget: int = 8,
    strategy: str = "key_moments",
    lead: int = 1,
    image: np.ndarray | None = None,
    episode_ids: Iterable[str] | None = None,
) -> list[Exemplar]:
    """Exemplars for in-context learning from the ``top_k_episodes`` best stored episodes.

    ``key_moments``: the decision ``lead`` steps before each positive reward (noted "N steps before
    scoring +R") and before each loss (a life lost or a negative reward, noted "...: avoid this; <action>
    led to it"). Rewards are taken largest first, losses earliest first, alternating so both kinds are
    shown, until ``image_budget`` images; they are returned by episode rank, then in time order.
    ``similar``: the ``image_budget`` stored steps of those episodes nearest to ``image`` (the current
    frame; see :func:`retrieve_similar`). ``episode_ids`` restricts the candidates (a snapshot of the
    memory, so that concurrent writers do not change a selection). Deterministic.
    """
    _check_positive("top_k_episodes", top_k_episodes)
    _check_positive("image_budget", image_budget, 0)
    _check_positive("lead", lead)
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    ranked = _ranked(store, game, episode_ids)[:top_k_episodes]
    if strategy == "similar":
        if image is None:
            raise ConfigError("strategy 'similar' needs the current frame: pass image=obs['image']")
        return retrieve_similar(store, game, image, image_budget, episode_ids=[m.episode_id for m in ranked])
    good: list[tuple[float, int, int, int, str]] = []  # (sort key..., rank, index, note)
    bad: list[tuple[float, int, int, int, str]] = []
    trajectories = [store.load(game, m.episode_id) for m in ranked]
    for rank, trajectory in enumerate(trajectories):
        for event in _events(trajectory):
            index = max(0, event.step - lead + 1)
            note = event.note(event.step - index + 1, trajectory.steps[index].action_name)
            if event.good:
                good.append((-event.reward, rank, event.step, index, note))
            else:
                bad.append((0.0, rank, event.step, index, note))
    queues = [sorted(good, reverse=True), sorted(bad, reverse=True)]  # popped from the end: best first
    chosen: dict[tuple[int, int], str] = {}
    turn = 0
    while len(chosen) < image_budget and (queues[0] or queues[1]):
        queue = queues[turn % 2] or queues[(turn + 1) % 2]
        _, rank, _, index, note = queue.pop()
        chosen.setdefault((rank, index), note)
        turn += 1
    return [_exemplar(trajectories[rank], index, chosen[rank, index]) for rank, index in sorted(chosen)]


def frame_signatures(frames: np.ndarray, side: int = SIGNATURE_SIDE, chunk: int = 256) -> np.ndarray:
    """(T, H, W[, 3]) uint8 -> (T, side*side) float32: luminance averaged over a side x side grid of
    cells (frames smaller than ``side`` repeat pixels). Vectorised; ``chunk`` frames at a time."""
    h, w = frames.shape[1:3]
    edges = [np.floor(np.linspace(0, n, side + 1)).astype(np.int64) for n in (h, w)]
    starts = [np.minimum(e[:-1], n - 1) for e, n in zip(edges, (h, w), strict=True)]
    counts = np.outer(*(np.maximum(np.diff(e), 1) for e in edges)).astype(np.float32)
    out = np.empty((len(frames), side * side), np.float32)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    for i in range(0, len(frames), chunk):
        x = frames[i : i + chunk].astype(np.float32)
        if x.ndim == 4:
            x = x @ luma
        x = np.add.reduceat(np.add.reduceat(x, starts[0], axis=1), starts[1], axis=2)
        out[i : i + chunk] = (x / counts).reshape(len(x), -1)
    return out


def _outcome_notes(trajectory: Trajectory) -> tuple[str, ...]:
    """For each step, what followed within :data:`OUTCOME_HORIZON` decisions (the nearest event)."""
    notes = [""] * len(trajectory.steps)
    events = _events(trajectory)
    j = 0
    for i in range(len(notes)):
        while j < len(events) and events[j].step < i:
            j += 1
        if j < len(events) and events[j].step - i < OUTCOME_HORIZON:
            notes[i] = events[j].note(events[j].step - i + 1, trajectory.steps[i].action_name)
    return tuple(notes)


def retrieve_similar(
    store: TrajectoryStore,
    game: str,
    image: np.ndarray,
    n: int,
    *,
    episode_ids: Iterable[str] | None = None,
) -> list[Exemplar]:
    """The ``n`` stored steps whose frames are nearest to ``image`` (L2 over 16x16 luminance
    thumbnails), nearest first; ties go to the better episode, then the earlier step. Each note says
    what followed the step, when something did soon. Thumbnails are computed once per episode and
    kept by the store."""
    _check_positive("n", n, 0)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ConfigError("image must be a uint8 (H, W) or (H, W, 3) array")
    ranked = _ranked(store, game, episode_ids)
    if n == 0 or not ranked:
        return []
    canonical = resolve_game(game)
    blocks, notes = [], []
    for meta in ranked:
        key = (canonical, meta.episode_id)
        if key not in store._signatures:
            trajectory = store.load(game, meta.episode_id)
            store._signatures[key] = (frame_signatures(trajectory.frames), _outcome_notes(trajectory))
        blocks.append(store._signatures[key][0])
        notes.append(store._signatures[key][1])
    distances = ((np.concatenate(blocks) - frame_signatures(image[None])[0]) ** 2).sum(axis=1)
    order = np.argsort(distances, kind="stable")[:n]
    offsets = np.cumsum([0] + [len(b) for b in blocks])
    found = []
    for flat in order.tolist():
        e = int(np.searchsorted(offsets, flat, side="right")) - 1
        index = flat - int(offsets[e])
        meta = ranked[e]
        note = f"a similar screen from a past game that scored {meta.episode_return:g}"
        if notes[e][index]:
            note += f"; {notes[e][index]}"
        found.append(_exemplar(store.load(game, meta.episode_id), index, note))
    return found


# --- demonstrations ---------------------------------------------------------------------------------


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _read_pair(json_path: Path, npz_path: Path) -> tuple[dict[str, Any], tuple[StepRecord, ...], np.ndarray]:
    info = _read_json(json_path, MAX_META_BYTES)
    if not isinstance(info, dict):
        raise _bad(json_path, "must hold a JSON object")
    for key in ("game", "action_names"):
        if key not in info:
            raise _bad(json_path, f"missing field {key!r}")
    names = _check_action_names(json_path, info["action_names"])
    dtypes = {"frames": _UINT8, "actions": _INTEGERS, "rewards": _NUMBERS, "lives": _INTEGERS}
    arrays = _read_npz(npz_path, dtypes, ["frames", "actions", "rewards"], None)
    frames = arrays["frames"]
    _check_frames(npz_path, frames, None)
    t = len(frames)
    if not 1 <= t <= MAX_EPISODE_STEPS:
        raise _bad(npz_path, f"{t} steps; expected 1..{MAX_EPISODE_STEPS}")
    for name in ("actions", "rewards", "lives"):
        if name in arrays and arrays[name].ndim != 1:
            raise _bad(
                npz_path,
                f"{name} must be one-dimensional (one entry per step), got shape {arrays[name].shape}",
            )
    texts = info.get("state_texts", [""] * t)
    if not isinstance(texts, list) or len(texts) != t:
        raise _bad(json_path, f"state_texts must be a list of {t} strings (one per step)")
    lives = arrays.get("lives", np.zeros(t, np.int64))
    steps = tuple(
        _parse_step(
            {
                "step": i + 1,
                "action": int(a),
                "action_name": names[int(a)] if 0 <= int(a) < len(names) else None,
                "reward": float(r),
                "lives": int(lv),
                "state_text": s,
            },
            i,
            npz_path,
            names,
        )
        for i, (a, r, lv, s) in enumerate(
            zip(arrays["actions"].tolist(), arrays["rewards"].tolist(), lives.tolist(), texts, strict=True)
        )
    )
    return info, steps, frames


def _episode_dirs(folder: Path) -> list[Path]:
    return sorted(
        e for e in folder.iterdir() if e.name[0] != "." and e.is_dir() and (e / _META_FILE).is_file()
    )


def is_game_folder(path: Path) -> bool:
    """Whether ``path`` is one game's folder of a trajectory store (``<store>/<Game>``, what
    ``atari-vlm record`` prints): episode directories inside, not an episode itself."""
    return path.is_dir() and not (path / _META_FILE).is_file() and bool(_episode_dirs(path))


def demonstration_paths(path: str | Path, game: str) -> list[Path]:
    """The recorded episodes a ``--demo`` path names, for :func:`import_demonstration`: an episode
    directory or a ``NAME.npz`` + ``NAME.json`` pair (itself), a store's game folder (every episode
    in it), or a store root (every episode of ``game`` in it).

    Raises:
        ConfigError: nothing there, or no ``game`` episodes in the folder.
    """
    path = Path(path).expanduser()
    expected = (
        "expected an episode folder, the game folder `atari-vlm record` prints (e.g. demos/Pong), "
        "the store it is in (demos), or a NAME.npz + NAME.json pair"
    )
    if path.suffix in (".npz", ".json") and not path.is_dir():
        if not (path.with_suffix(".npz").is_file() and path.with_suffix(".json").is_file()):
            raise ConfigError(f"no demonstration at {path}: {path.with_suffix('')}.npz and .json needed")
        return [path]
    if not path.is_dir():
        raise ConfigError(f"no demonstrations at {path}: {expected}")
    if (path / _META_FILE).is_file():
        return [path]
    folder = path / resolve_game(game)
    episodes = _episode_dirs(folder) if folder.is_dir() else _episode_dirs(path)
    if not episodes:
        raise ConfigError(f"no {resolve_game(game)} episodes in {path}: {expected}")
    return episodes


def import_demonstration(
    store: TrajectoryStore,
    path: str | Path,
    source: str = "demo",
    *,
    game: str | None = None,
    episode_id: str | None = None,
) -> EpisodeMeta:
    """Store a recorded episode from elsewhere, validated like the memory's own; returns its meta.

    Two file formats are read:

    - a directory in the store's own episode format (``meta.json``, ``steps.jsonl``, ``frames.npz``;
      e.g. copied from another memory);
    - a pair ``NAME.npz`` + ``NAME.json`` (pass either): the npz holds ``frames`` (T, H, W[, 3]) uint8,
      ``actions`` (T,) integer indices into ``action_names``, ``rewards`` (T,) numbers and optionally
      ``lives`` (T,) integers (after each step); the JSON holds ``game``, ``action_names`` (the
      game's actions in index order), and optionally ``return`` (must equal the sum of the rewards),
      ``seed``, ``model`` and ``state_texts`` (T strings).

    The episode id defaults to ``<source>-<content hash>``, so importing the same file twice stores it
    once (the second import returns the stored meta).

    Raises:
        ConfigError: a missing or invalid file, a game other than ``game``, or an unknown ``source``.
    """
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {SOURCES}, got {source!r}")
    path = Path(path)
    if path.is_dir():
        meta = _parse_meta(_read_json(path / _META_FILE, MAX_META_BYTES), path / _META_FILE)
        steps = _read_steps(path / _STEPS_FILE, meta)
        frames = _read_npz(path / _FRAMES_FILE, {"frames": _UINT8}, ["frames"], meta.steps)["frames"]
        _check_frames(path / _FRAMES_FILE, frames, meta.image_shape)
        info: dict[str, Any] = {
            "game": meta.game,
            "return": meta.episode_return,
            "seed": meta.seed,
            "model": meta.model,
        }
        names, where = meta.action_names, path / _META_FILE
    elif path.suffix in (".npz", ".json"):
        where = path.with_suffix(".json")
        info, steps, frames = _read_pair(where, path.with_suffix(".npz"))
        names = tuple(info["action_names"])
    else:
        raise ConfigError(
            f"cannot import {path}: expected an episode directory or a NAME.npz + NAME.json pair"
        )
    try:
        file_game = resolve_game(_check_str(where, "game", info["game"], 64))
    except ConfigError as exc:
        raise _bad(where, str(exc)) from exc
    if game is not None and resolve_game(game) != file_game:
        raise ConfigError(f"{path} is a {file_game} episode, not {resolve_game(game)}")
    rewards = [s.reward for s in steps]
    episode_return = _check_number(where, "return", info.get("return", math.fsum(rewards)))
    _check_return(where, episode_return, rewards)
    seed, model = info.get("seed"), info.get("model")
    if seed is not None:
        _check_int(where, "seed", seed, 0, 2**64)
    if model is not None:
        _check_str(where, "model", model, 512)
    actions = np.array([s.action for s in steps])
    episode_id = _check_episode_id(episode_id or f"{source}-{_digest(frames, actions, np.array(rewards))}")
    if store.has(file_game, episode_id):
        return store._read_meta(store.game_dir(file_game), episode_id)
    meta = EpisodeMeta(
        game=file_game,
        episode_id=episode_id,
        episode_return=episode_return,
        steps=len(steps),
        source=source,
        image_shape=tuple(frames.shape[1:]),
        action_names=tuple(names),
        seed=seed,
        model=model,
        created=_now(),
    )
    store._write(meta, steps, frames)
    return meta
