"""The run directory: everything one run produced, written so that nothing is half-written.

``config.json`` (written atomically, never holding a secret), ``steps.jsonl`` (one line per decision,
flushed as it goes), ``episodes.jsonl`` (one line per finished episode) and ``videos/``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from atari_vlm import __version__
from atari_vlm.errors import ConfigError
from atari_vlm.spec import FORMAT_VERSION, RunSpec, describe_differences, resume_conflicts

MIN_FREE_BYTES = 64 * 2**20  # checked before play starts: a full disk mid-run would cost the run
SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "secret", "password", "authorization"})


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file beside ``path`` and rename it over: readers never see a partial file."""
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
        try:
            self.videos.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write the run directory {self.path}: {exc.strerror or exc}") from exc
        self._acquire_lock()
        try:
            self._prepare(scrub_secrets(config), spec, overwrite=overwrite, resume=resume)
        except BaseException:
            self._release_lock()
            raise
        self._steps = open(self.path / "steps.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._episodes = open(self.path / "episodes.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        return self

    def _acquire_lock(self) -> None:
        import fcntl

        handle = open(self.path / ".lock", "a+", encoding="utf-8")  # noqa: SIM115
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
            (self.path / name).unlink(missing_ok=True)
        for video in self.videos.glob("*.mp4*"):
            video.unlink()
        write_json_atomic(config_path, config)

    def _check_same_run(self, config_path: Path, config: dict[str, Any], spec: RunSpec) -> None:
        try:
            old = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError covers bad JSON and bytes that are not UTF-8
            raise ConfigError(f"cannot resume: {config_path} is unreadable or corrupt ({exc})") from exc
        refusal = resume_refusal(old, config, spec, config_path)
        if refusal is not None:
            raise ConfigError(f"cannot resume {self.path}: {refusal}")
        write_json_atomic(config_path, config)

    def _drop_unfinished(self) -> None:
        """Keep every finished episode once; remove what an interrupted one left (its steps, its video)."""
        episodes_path, steps_path = self.path / "episodes.jsonl", self.path / "steps.jsonl"
        kept: dict[int, dict[str, Any]] = {}
        if episodes_path.exists():
            for record in read_jsonl(episodes_path):
                if isinstance(record.get("episode"), int):
                    kept.setdefault(record["episode"], record)
        self.kept_episodes = [kept[i] for i in sorted(kept)]
        _rewrite_jsonl(episodes_path, self.kept_episodes)
        if steps_path.exists():
            _rewrite_jsonl(steps_path, [r for r in read_jsonl(steps_path) if r.get("episode") in kept])
        wanted = {self.video_path(i).name for i in kept}
        for video in self.videos.glob("*.mp4*"):
            if video.name not in wanted:
                video.unlink()

    def log_step(self, record: dict[str, Any]) -> None:
        self._write(self._steps, record)

    def log_episode(self, record: dict[str, Any]) -> None:
        self._write(self._episodes, record)

    def video_path(self, episode: int) -> Path:
        return self.videos / f"episode_{episode:04d}.mp4"

    @staticmethod
    def _write(handle: Any, record: dict[str, Any]) -> None:
        line = json.dumps({k: json_safe(v) for k, v in record.items()}, ensure_ascii=False, default=str)
        handle.write(line + "\n")
        handle.flush()

    def close(self) -> None:
        for handle in (self._steps, self._episodes):
            if handle is not None:
                handle.close()
        self._steps = self._episodes = None
        self._release_lock()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (a crash mid-rewrite leaves the old file whole)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file (a torn last line, from a crash mid-write, is skipped)."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:  # a corrupt line fails to parse, alone
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
