"""The run directory: everything one run produced, written so that nothing is half-written.

``config.json`` (written atomically, never holding a secret), ``steps.jsonl`` (one line per decision,
flushed as it goes), ``episodes.jsonl`` (one line per finished episode) and ``videos/``.

A run directory is written only inside itself: one that holds a symbolic link is refused
(:func:`refuse_links`), and every file is opened with ``O_NOFOLLOW`` (:func:`open_run_file`), so no
write, truncation or deletion reaches a file outside. Run files are data from outside when read back:
:func:`read_json_file` and :func:`read_jsonl_records` bound sizes, depths and integers, and
:func:`episode_problem` checks an episode record's fields, so a bad record is skipped and counted,
never fatal and never counted as an episode.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from atari_vlm import __version__
from atari_vlm.errors import ConfigError
from atari_vlm.framestore import FRAMES_DIR, HASH, PROMPTS_DIR
from atari_vlm.spec import FORMAT_VERSION, RunSpec, describe_differences, resume_conflicts

MIN_FREE_BYTES = 64 * 2**20  # checked before play starts: a full disk mid-run would cost the run
SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "secret", "password", "authorization"})

MAX_JSON_BYTES = 16 * 2**20  # config.json, summary.json: a few KB in practice
MAX_JSONL_BYTES = 4 * 2**30  # steps.jsonl of a very long run; beyond it the file is refused, not read
MAX_LINE_BYTES = 4 * 2**20  # one record (a step holds one capped model answer); longer lines are skipped
MAX_JSON_DEPTH = 64  # atari-vlm writes at most ~5 levels; deeper is a hand-made or hostile record
MAX_INT_DIGITS = 40  # far beyond any count or seed atari-vlm writes (int64 has 19 digits)
MAX_EPISODES = 10_000_000  # RunSpec's own bound on episodes


def _link_error(path: Path) -> ConfigError:
    return ConfigError(
        f"{path} is a symbolic link; atari-vlm writes a run directory only inside itself: "
        "remove the link (copy its target in if you need it) or choose another --out"
    )


def refuse_links(root: str | Path) -> None:
    """Raise if anything inside the run directory ``root`` is a symbolic link (``root`` itself may be one:
    that is the user's own choice of where runs live).

    Raises:
        ConfigError: naming the first link found.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for directory, dirs, files in os.walk(root, followlinks=False, onerror=None):
        for name in (*dirs, *files):  # os.walk lists a link to a directory among dirs, unfollowed
            path = Path(directory) / name
            if path.is_symlink():
                raise _link_error(path)


_OPEN_FLAGS = {
    "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    "a+": os.O_RDWR | os.O_APPEND | os.O_CREAT,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "r": os.O_RDONLY,
}


def open_run_file(path: str | Path, mode: str = "a", *, binary: bool = False) -> IO[Any]:
    """Open a file of a run directory without following a symbolic link (``O_NOFOLLOW``): modes
    ``a``, ``a+``, ``x`` (create, never overwrite) and ``r``.

    Raises:
        ConfigError: ``path`` is a symbolic link (even a dangling one).
    """
    path = Path(path)
    flags = _OPEN_FLAGS[mode] | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or path.is_symlink():
            raise _link_error(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file; a run directory holds only plain files there")
    text_mode = {"a": "a", "a+": "a+", "x": "w", "r": "r"}[mode]
    if binary:
        return os.fdopen(fd, text_mode + "b")
    return os.fdopen(fd, text_mode, encoding="utf-8", newline="" if mode != "r" else None)


def remove_run_file(path: str | Path) -> None:
    """Delete a file of a run directory (a link is refused, never followed; a missing file is fine)."""
    path = Path(path)
    if path.is_symlink():
        raise _link_error(path)
    path.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside ``path`` and rename it over: readers never see a partial file.

    Raises:
        ConfigError: ``path`` is a symbolic link (nothing is written through a link; the folders
            inside a run directory are checked by :func:`refuse_links`, and the run directory itself
            may be a link: where runs live is the user's choice).
    """
    if path.is_symlink():
        raise _link_error(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a run directory is meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON, written atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def scrub_secrets(data: Any) -> Any:
    """A copy of ``data`` without any entry whose key names a secret."""
    if isinstance(data, dict):
        return {k: scrub_secrets(v) for k, v in data.items() if str(k).lower() not in SECRET_KEYS}
    if isinstance(data, (list, tuple)):
        return [scrub_secrets(v) for v in data]
    return data


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_record(spec: RunSpec, *, kind: str, **extra: Any) -> dict[str, Any]:
    """What config.json holds: the spec (versioned, no secrets), its fingerprint, and ``extra``
    (what was loaded for it, the protocol's description), never a secret."""
    return scrub_secrets(
        {
            "kind": kind,
            "atari_vlm_version": __version__,
            "python": platform.python_version(),
            "spec": spec.record(),
            "fingerprint": spec.fingerprint(),
            **extra,
        }
    )


def read_run_spec(config: Any, where: str | Path) -> RunSpec:
    """The spec recorded in a config.json (parsed), with a clear error for files of other versions."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where} does not hold a JSON object")
    if not isinstance(config.get("spec"), dict):
        raise ConfigError(
            f"{where} holds no run spec: it was written by an older atari-vlm (before run spec format "
            f"{FORMAT_VERSION}); play the run again to use it here"
        )
    return RunSpec.from_record(config["spec"], where=str(where))


def resume_refusal(old: dict[str, Any], new: dict[str, Any], spec: RunSpec, where: Path) -> str | None:
    """Why the run recorded as ``old`` cannot go on as ``new`` (None when it can)."""
    if not isinstance(old, dict):
        raise ConfigError(f"cannot resume: {where} does not hold a JSON object")
    if old.get("kind", "play") != new.get("kind"):
        return f"it holds a {old.get('kind', 'play')} run, not a {new.get('kind')} run"
    recorded = read_run_spec(old, where)
    diffs = resume_conflicts(recorded, spec)
    old_model, new_model = (r.get("model") or {} for r in (old, new))
    if (
        isinstance(old_model, dict)
        and isinstance(new_model, dict)
        and old_model.get("spec") != new_model.get("spec")
    ):
        diffs.append(("model (as loaded)", old_model.get("spec"), new_model.get("spec")))
    if not diffs:
        return None
    return (
        f"these settings differ from the recorded run: {describe_differences(diffs)} (a resumed run may "
        "change only how many episodes, how fast, and what it writes)"
    )


class RunDir:
    """One run's directory. ``open`` locks it and checks it can be written before any play starts.

    A second process pointed at the same directory is refused while the first holds the lock (an
    ``flock``: the kernel drops it when the holder dies, even by ``kill -9``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.videos = self.path / "videos"
        self._steps: Any = None
        self._episodes: Any = None
        self._lock: Any = None
        self.kept_episodes: list[dict[str, Any]] = []  # finished episodes found by a resume
        self.skipped_records = 0  # bad lines a resume dropped from episodes.jsonl and steps.jsonl

    def open(
        self, config: dict[str, Any], spec: RunSpec, *, overwrite: bool = False, resume: bool = False
    ) -> RunDir:
        """Lock the directory and start (or resume) the run recorded in it; ``config`` is the
        :func:`run_record` of ``spec``.

        Raises:
            ConfigError: the directory is in use, already holds a run (without ``overwrite`` or
                ``resume``), holds a different run than the one resumed, or cannot be written.
        """
        if overwrite and resume:
            raise ConfigError("--overwrite and --resume contradict each other; choose one")
        existing = next(p for p in (self.path, *self.path.resolve().parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if free < MIN_FREE_BYTES:
            raise ConfigError(
                f"only {free // 2**20} MiB free on the disk holding {self.path}; a run needs at least "
                f"{MIN_FREE_BYTES // 2**20} MiB (steps, videos): free some space or choose another --out"
            )
        refuse_links(self.path)
        try:
            self.videos.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            remove_run_file(probe)  # left by a run killed between the two lines below
            with open_run_file(probe, "x", binary=True) as f:
                f.write(b"ok")
            remove_run_file(probe)
        except OSError as exc:
            raise ConfigError(f"cannot write the run directory {self.path}: {exc.strerror or exc}") from exc
        self._acquire_lock()
        try:
            self._prepare(scrub_secrets(config), spec, overwrite=overwrite, resume=resume)
            self._steps = open_run_file(self.path / "steps.jsonl", "a")
            self._episodes = open_run_file(self.path / "episodes.jsonl", "a")
        except BaseException:
            self.close()
            raise
        return self

    def _acquire_lock(self) -> None:
        import fcntl

        handle = open_run_file(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"{self.path} is in use by another atari-vlm run (pid {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def _prepare(self, config: dict[str, Any], spec: RunSpec, *, overwrite: bool, resume: bool) -> None:
        config_path = self.path / "config.json"
        has_run = (self.path / "steps.jsonl").exists() or config_path.exists()
        if resume:
            if not config_path.exists():
                raise ConfigError(f"nothing to resume in {self.path}: it holds no config.json")
            self._check_same_run(config_path, config, spec)
            self._drop_unfinished()
            return
        if has_run and not overwrite:
            raise ConfigError(
                f"{self.path} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        for name in ("steps.jsonl", "episodes.jsonl", "config.json", "summary.json"):
            remove_run_file(self.path / name)
        for video in self.videos.glob("*.mp4*"):
            remove_run_file(video)
        for folder, suffix in ((FRAMES_DIR, ".png"), (PROMPTS_DIR, ".txt")):  # the old run's store
            if (self.path / folder).is_dir():
                for item in (self.path / folder).iterdir():
                    if item.suffix == suffix and HASH.fullmatch(item.stem):
                        remove_run_file(item)
        write_json_atomic(config_path, config)

    def _check_same_run(self, config_path: Path, config: dict[str, Any], spec: RunSpec) -> None:
        try:
            old = read_json_file(config_path)
        except RunFileError as exc:
            reason = exc.reason
            raise ConfigError(f"cannot resume: {config_path} is unreadable or corrupt ({reason})") from None
        refusal = resume_refusal(old, config, spec, config_path)
        if refusal is not None:
            raise ConfigError(f"cannot resume {self.path}: {refusal}")
        write_json_atomic(config_path, config)

    def _drop_unfinished(self) -> None:
        """Keep every finished episode once; remove what an interrupted one left (its steps, its video).

        Bad records (unreadable, mistyped, out of range) are dropped too, and counted in
        ``skipped_records``: a resume replays what they claimed, it never counts them.
        """
        episodes_path, steps_path = self.path / "episodes.jsonl", self.path / "steps.jsonl"
        found = read_episode_records(episodes_path)
        self.skipped_records = found.skipped
        self.kept_episodes = found.records
        kept = {r["episode"] for r in found.records}
        _rewrite_jsonl(episodes_path, self.kept_episodes)
        if steps_path.exists():
            steps = read_jsonl_records(steps_path)
            numbered = [r for r in steps.records if _episode_number(r) is not None]
            self.skipped_records += steps.skipped + len(steps.records) - len(numbered)
            _rewrite_jsonl(steps_path, [r for r in numbered if r["episode"] in kept])
        wanted = {self.video_path(i).name for i in kept}
        for video in self.videos.glob("*.mp4*"):
            if video.name not in wanted:
                remove_run_file(video)

    def log_step(self, record: dict[str, Any]) -> None:
        self._write(self._steps, record)

    def log_episode(self, record: dict[str, Any]) -> None:
        self._write(self._episodes, record)

    def video_path(self, episode: int) -> Path:
        return self.videos / f"episode_{episode:04d}.mp4"

    def write_video(self, episode: int, data: bytes) -> Path:
        """Store an episode's finished video (made elsewhere: a Ray worker); a crash mid-write leaves a
        ``.part``, never a broken ``.mp4``. Returns its path."""
        path = self.video_path(episode)
        part = path.with_name(path.name + ".part")
        remove_run_file(part)
        try:
            with open_run_file(part, "x", binary=True) as f:
                f.write(data)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _write(handle: Any, record: dict[str, Any]) -> None:
        line = json.dumps({k: json_safe(v) for k, v in record.items()}, ensure_ascii=False, default=str)
        handle.write(line + "\n")
        handle.flush()

    def close(self) -> None:
        """Close the logs and drop the lock, all of them even when one fails (a full disk fails the
        flush of a close); the first such error is raised after."""
        error: BaseException | None = None
        for handle in (self._steps, self._episodes):
            if handle is not None:
                try:
                    handle.close()
                except OSError as exc:
                    error = error or exc
        self._steps = self._episodes = None
        self._release_lock()
        if error is not None:
            raise error

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (a crash mid-rewrite leaves the old file whole)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


class _Reject(ValueError):
    """A JSON value beyond the reader's bounds (an int of too many digits)."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Reject(f"an integer of {len(text)} digits")
    return int(text)


def _depth_ok(value: Any) -> bool:
    """True when ``value`` nests at most MAX_JSON_DEPTH levels (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def parse_json(text: str | bytes) -> Any:
    """One JSON value within the reader's bounds (depth, integer digits).

    Raises:
        ValueError: not JSON, or beyond a bound (the message says which).
    """
    try:
        value = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not _depth_ok(value):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


class RunFileError(ConfigError):
    """A run file that cannot be read: ``reason`` says why, the message names the file too."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.path, self.reason = path, reason


def read_json_file(path: str | Path, *, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A small JSON file of a run directory (config.json, summary.json), read within bounds.

    Raises:
        RunFileError: a link, too large, not UTF-8, not JSON, or nested too deep; one line naming it.
    """
    path = Path(path)
    try:
        with open_run_file(path, "r", binary=True) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise RunFileError(path, str(exc.strerror or exc)) from None
    except ConfigError as exc:  # a link, or not a regular file
        raise RunFileError(path, str(exc)) from None
    if len(data) > max_bytes:
        raise RunFileError(path, f"larger than {max_bytes // 2**20} MiB; it is not a run file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileError(path, f"it is not UTF-8 text (bad byte at {exc.start}); expected JSON") from None
    try:
        return parse_json(text)
    except ValueError as exc:
        raise RunFileError(path, f"not valid JSON ({str(exc)[:200]})") from None


@dataclass
class Records:
    """The JSON objects of a JSONL file, and how many lines were skipped as bad."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0


def read_jsonl_records(path: str | Path, *, max_bytes: int = MAX_JSONL_BYTES) -> Records:
    """Every JSON object of a JSONL file within bounds; a bad line (torn by a crash, not UTF-8, too
    long, too deep, too large an integer, not an object) is skipped and counted. A missing file reads
    as empty.

    Raises:
        ConfigError: the file is a link, or larger than ``max_bytes``.
    """
    path = Path(path)
    found = Records()
    try:
        f = open_run_file(path, "r", binary=True)
    except FileNotFoundError:
        return found
    with f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ConfigError(
                f"cannot read {path}: {size} bytes, more than the {max_bytes} a run file may hold"
            )
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            if len(line) > MAX_LINE_BYTES:
                found.skipped += 1
                while line and not line.endswith(b"\n"):  # the rest of the overlong line
                    line = f.readline(MAX_LINE_BYTES)
                continue
            if not line.strip():
                continue
            try:
                record = parse_json(line.decode("utf-8"))
            except ValueError:  # bad JSON, bad UTF-8, beyond a bound
                found.skipped += 1
                continue
            if isinstance(record, dict):
                found.records.append(record)
            else:
                found.skipped += 1
    return found


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (bad lines skipped): :func:`read_jsonl_records` without the count."""
    return read_jsonl_records(path).records


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _episode_number(record: dict[str, Any]) -> int | None:
    number = record.get("episode")
    return number if _is_int(number) and 0 <= number < MAX_EPISODES else None


_COUNTS = ("steps", "decisions", "unparsed")  # required, ints >= 0
_OPTIONAL_COUNTS = ("env_steps", "constraint_ignored", "retries")


def episode_problem(record: Any, episodes: int | None = None) -> str | None:
    """Why an ``episodes.jsonl`` record cannot count as a finished episode (None when it can):
    the fields :meth:`~atari_vlm.rollout.EpisodeResult.from_record` reads, typed and in range."""
    if not isinstance(record, dict):
        return "not an object"
    number = _episode_number(record)
    limit = MAX_EPISODES if episodes is None else episodes
    if number is None or number >= limit:
        return f"episode {record.get('episode')!r} is not an integer in 0..{limit - 1}"
    if not _is_int(record.get("seed")):
        return f"seed {record.get('seed')!r} is not an integer"
    value = record.get("return")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"return {value!r} is not a finite number"
    for key in _COUNTS:
        if not _is_int(record.get(key)) or record[key] < 0:
            return f"{key} {record.get(key)!r} is not an integer >= 0"
    for key in _OPTIONAL_COUNTS:
        if record.get(key) is not None and (not _is_int(record[key]) or record[key] < 0):
            return f"{key} {record[key]!r} is not an integer >= 0"
    for key in ("cost_usd", "model_latency_s", "wall_s"):
        value = record.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            return f"{key} {value!r} is not a finite number"
    if record.get("video") is not None and not isinstance(record["video"], str):
        return f"video {record['video']!r} is not a path"
    return None


def read_episode_records(path: str | Path, episodes: int | None = None) -> Records:
    """The finished episodes of an ``episodes.jsonl``: each number once (the first record), in order;
    bad records (:func:`episode_problem`, numbers of ``episodes`` and beyond) skipped and counted."""
    found = read_jsonl_records(path)
    kept: dict[int, dict[str, Any]] = {}
    skipped = found.skipped
    for record in found.records:
        if episode_problem(record, episodes) is not None:
            skipped += 1
        else:
            kept.setdefault(record["episode"], record)
    return Records([kept[i] for i in sorted(kept)], skipped)
