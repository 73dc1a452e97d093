"""Errors that cross module boundaries, so that the CLI can map them to exit codes.

``ConfigError`` means the user asked for something that cannot work (unknown game, bad size, missing
key, missing package): the CLI prints its one-line message and exits with code 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: the message says what was wrong and what would be right."""


class DependencyNotInstalled(ConfigError, ImportError):
    """An optional package is missing; the message names the pip command that installs it."""


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
