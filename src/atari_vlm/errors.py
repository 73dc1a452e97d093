"""Errors that cross module boundaries, so that the CLI can map them to exit codes.

``ConfigError`` means the user asked for something that cannot work (unknown game, bad size, missing
key, missing package): the CLI prints its one-line message and exits with code 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: the message says what was wrong and what would be right."""


class DependencyNotInstalled(ConfigError, ImportError):
    """An optional package is missing; the message names the pip command that installs it."""


class DiskFull(OSError):
    """The disk filled up mid-run: the CLI prints one line (exit 1); finished episodes are kept and
    ``--resume`` replays the cut one once space is freed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM stopped the run: handled like Ctrl-C (finished episodes kept, summary written,
    resumable), told apart only for the exit code (143 rather than 130)."""


class ModelError(RuntimeError):
    """A model call failed in a way retrying will not fix (bad key, unknown model, bad request)."""


def require(module: str, extra: str, package: str | None = None):
    """Import an optional dependency or raise :class:`DependencyNotInstalled` with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyNotInstalled(
            f'{package or module} is not installed; run `pip install "atari-vlm[{extra}]"` ({exc})'
        ) from exc
