"""The run directory: everything one run produced, written so that nothing is half-written.

``config.json`` (written atomically, never holding a secret), ``steps.jsonl`` (one line per decision,
flushed as it goes), ``episodes.jsonl`` (one line per finished episode) and ``videos/``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from atari_vlm.errors import ConfigError

SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "secret", "password", "authorization"})


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it over: readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a run directory is meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def scrub_secrets(data: Any) -> Any:
    """A copy of ``data`` without any entry whose key names a secret."""
    if isinstance(data, dict):
        return {k: scrub_secrets(v) for k, v in data.items() if str(k).lower() not in SECRET_KEYS}
    if isinstance(data, (list, tuple)):
        return [scrub_secrets(v) for v in data]
    return data


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every line parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunDir:
    """One run's directory. ``open`` checks it can be written before any play starts.

    Raises:
        ConfigError: the directory already holds a run (and ``overwrite`` is off), or cannot be written.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.videos = self.path / "videos"
        self._steps: Any = None
        self._episodes: Any = None

    def open(self, config: dict[str, Any], *, overwrite: bool = False) -> RunDir:
        if (self.path / "steps.jsonl").exists() or (self.path / "config.json").exists():
            if not overwrite:
                raise ConfigError(
                    f"{self.path} already holds a run; choose another --out or pass --overwrite to replace it"
                )
            for name in ("steps.jsonl", "episodes.jsonl", "config.json"):
                (self.path / name).unlink(missing_ok=True)
        try:
            self.videos.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot write the run directory {self.path}: {exc.strerror or exc}") from exc
        write_json_atomic(self.path / "config.json", scrub_secrets(config))
        self._steps = open(self.path / "steps.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._episodes = open(self.path / "episodes.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        return self

    def log_step(self, record: dict[str, Any]) -> None:
        self._write(self._steps, record)

    def log_episode(self, record: dict[str, Any]) -> None:
        self._write(self._episodes, record)

    def video_path(self, episode: int) -> Path:
        return self.videos / f"episode_{episode:04d}.mp4"

    @staticmethod
    def _write(handle: Any, record: dict[str, Any]) -> None:
        line = json.dumps({k: _finite(v) for k, v in record.items()}, ensure_ascii=False, default=str)
        handle.write(line + "\n")
        handle.flush()

    def close(self) -> None:
        for handle in (self._steps, self._episodes):
            if handle is not None:
                handle.close()
        self._steps = self._episodes = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (a torn last line, from a crash mid-write, is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
