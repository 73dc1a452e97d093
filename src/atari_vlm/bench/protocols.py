"""Evaluation protocols as data: what "a score on game X" was measured under.

Two results are comparable only under the same protocol (sticky actions, episode cap, what the model
is shown, how often it decides, how much it remembers, how it answers). A :class:`Protocol` names
the run-spec settings it fixes (any setting of the env, observation, prompt and decoding sections of
:mod:`atari_vlm.spec`, by its flat name), plus the games and runs it asks for and the table it is
scored against. Built-in protocols are in :data:`PROTOCOLS`; users add their own in a JSON or TOML
file, optionally starting from a built-in one with ``base``::

    # my_protocol.toml
    name = "atari-gpt-sticky"
    base = "atari-gpt"
    repeat_action_probability = 0.25

A protocol's settings are applied by :func:`with_protocol`: they replace defaults, and a setting the
user gives that the protocol fixes otherwise is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from atari_vlm.errors import ConfigError
from atari_vlm.spec import V5_MAX_EPISODE_FRAMES, RunSpec

MAX_PROTOCOL_FILE_BYTES = 64 * 1024
PROTOCOL_FIELDS = ("name", "description", "source", "runs", "games", "table", "checks", "settings")
FIXABLE_SECTIONS = ("env", "observation", "prompt", "decoding")
"""The spec sections a protocol may fix: what is played and how it is asked, never which model plays,
the seeds, or where and how fast the run goes."""
LEGACY_FIELDS = {"context_pairs": ("history_steps", "history_images")}
"""Fields of atari-vlm 0.1's protocol files and the settings they set (``context_pairs`` = N: the last N
frame/answer pairs shown again, as images and text)."""


def fixable_settings() -> dict[str, tuple[str, Any, Any]]:
    """Flat name -> (section, setting, default) of every setting a protocol may fix."""
    return {
        name: (section, setting, default)
        for name, (section, setting, default) in RunSpec.flat_settings().items()
        if section in FIXABLE_SECTIONS and setting.cli and name != "game"
    }


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol. Every field is checked on construction (ConfigError names the field).

    Fields:
        name: identifier, e.g. "atari-gpt" (letters, digits, ``-``, ``_``, ``.``).
        description: one or two sentences for tables and reports.
        source: the paper or page the protocol comes from ("" for a user's own).
        settings: the run-spec settings it fixes, by flat name (``frame_skip``, ``state_text``,
            ``total_env_steps``, ``answer_format``, ...); the others keep the spec's defaults.
        runs: independent runs (seeds) per game that the protocol asks for.
        games: the games the protocol is defined on (canonical ALE names; empty: any game).
        table: reference table for human-normalized scores (a key of
            :data:`atari_vlm.bench.scores.TABLES`).
        checks: for a protocol that follows a paper, each point of it and where the paper says so.
    """

    name: str
    description: str = ""
    source: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    runs: int = 1
    games: tuple[str, ...] = ()
    table: str = "dqn_nature"
    checks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_str(self, "name", allow_empty=False)
        if not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"protocol field 'name' may hold only letters, digits, '-', '_' and '.', got {self.name!r}"
            )
        _check_str(self, "description")
        _check_str(self, "source")
        if isinstance(self.runs, bool) or not isinstance(self.runs, int) or self.runs < 1:
            raise ConfigError(_msg(self, "runs", "must be an integer >= 1", self.runs))
        if not isinstance(self.checks, (list, tuple)) or not all(isinstance(c, str) for c in self.checks):
            raise ConfigError(_msg(self, "checks", "must be a list of strings", self.checks))
        object.__setattr__(self, "checks", tuple(self.checks))
        object.__setattr__(self, "settings", MappingProxyType(self._checked_settings()))
        self._check_games()
        from atari_vlm.bench.scores import TABLES

        if self.table not in TABLES:
            raise ConfigError(_msg(self, "table", f"must be one of {sorted(TABLES)}", self.table))

    def _checked_settings(self) -> dict[str, Any]:
        if not isinstance(self.settings, Mapping):
            raise ConfigError(_msg(self, "settings", "must be a mapping of run-spec settings", self.settings))
        allowed = fixable_settings()
        out: dict[str, Any] = {}
        for name, value in self.settings.items():
            if name not in allowed:
                raise ConfigError(
                    f"protocol {self.name!r}: {name!r} is not a setting a protocol may fix; it may fix: "
                    f"{', '.join(sorted(allowed))}"
                )
            _, setting, _ = allowed[name]
            value = tuple(value) if isinstance(value, list) else value
            try:
                out[name] = setting.check(name, value)
            except ConfigError as exc:
                raise ConfigError(f"protocol {self.name!r}: field {exc}") from None
        if out.get("reset_on_game_over") and out.get("total_env_steps") is None:
            raise ConfigError(
                f"protocol {self.name!r}: 'reset_on_game_over' needs a 'total_env_steps' budget "
                "(without one, every episode is already played to its end)"
            )
        return out

    def _check_games(self) -> None:
        from atari_vlm.games import resolve_game

        games = self.games
        if isinstance(games, str) or not isinstance(games, (list, tuple)):
            raise ConfigError(_msg(self, "games", "must be a list of game names", games))
        resolved = []
        for i, game in enumerate(games):
            try:
                resolved.append(resolve_game(game))
            except ConfigError as exc:
                raise ConfigError(f"protocol {self.name!r}: field 'games[{i}]': {exc}") from exc
        object.__setattr__(self, "games", tuple(resolved))

    def setting(self, name: str) -> Any:
        """The value this protocol fixes for setting ``name``, else the spec's default."""
        if name in self.settings:
            return self.settings[name]
        return RunSpec.flat_settings()[name][2]

    @property
    def decisions_per_run(self) -> int | None:
        """Model calls in one budgeted run (``None`` without a budget)."""
        budget = self.setting("total_env_steps")
        return None if budget is None else math.ceil(budget / self.setting("decision_interval"))

    def fixed_settings(self) -> dict[str, Any]:
        """The run-spec settings this protocol fixes, by their flat names."""
        return dict(self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings.items()},
            "runs": self.runs,
            "games": list(self.games),
            "table": self.table,
            "checks": list(self.checks),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "protocol") -> Protocol:
        """Build a protocol from plain data (a parsed JSON/TOML file), with ``base`` inheritance.

        Settings may be given under ``settings`` or at the top level (``frame_skip = 4``).

        Raises:
            ConfigError: not a mapping, unknown or missing field, unknown base, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: a protocol must be a mapping of fields, got {type(data).__name__}")
        data = dict(data)
        base_name = data.pop("base", None)
        allowed = fixable_settings()
        settings = data.pop("settings", {})
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{origin}: protocol field 'settings' must be a mapping, got {settings!r}")
        settings = dict(settings)
        for key in [k for k in data if k in allowed or k in LEGACY_FIELDS]:
            value = data.pop(key)
            for name in LEGACY_FIELDS.get(key, (key,)):
                settings[name] = value
        unknown = sorted(str(k) for k in data if k not in PROTOCOL_FIELDS)
        if unknown:
            raise ConfigError(
                f"{origin}: unknown protocol field(s) {unknown}; known fields: {list(PROTOCOL_FIELDS)} and "
                f"the run-spec settings a protocol may fix: {sorted(allowed)}"
            )
        if "name" not in data:
            raise ConfigError(f"{origin}: protocol field 'name' is missing")
        fields: dict[str, Any] = {}
        if base_name is not None:
            if not isinstance(base_name, str) or base_name not in PROTOCOLS:
                raise ConfigError(
                    f"{origin}: protocol field 'base' must be one of {sorted(PROTOCOLS)}, got {base_name!r}"
                )
            base = PROTOCOLS[base_name]
            fields = {"description": base.description, "runs": base.runs, "games": base.games}
            fields.update(table=base.table, source=f"based on {base_name!r}")
            settings = {**base.settings, **settings}
        fields.update(data)
        fields["settings"] = settings
        for key in ("games", "checks"):
            if isinstance(fields.get(key), list):
                fields[key] = tuple(fields[key])
        try:
            return cls(**fields)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from exc


def _msg(p: Protocol, name: str, what: str, value: Any) -> str:
    return f"protocol {p.name!r}: field {name!r} {what}, got {value!r}"


def _check_str(p: Protocol, name: str, *, allow_empty: bool = True) -> None:
    value = getattr(p, name)
    if not isinstance(value, str):
        raise ConfigError(_msg(p, name, "must be a string", value))
    if not allow_empty and not value.strip():
        raise ConfigError(_msg(p, name, "must not be empty", value))


ATARI_GPT_SOURCE = (
    "Waytowich et al. 2024, 'Atari-GPT: Benchmarking Multimodal Large Language Models as Low-Level "
    "Policies in Atari Games', arXiv:2408.15950"
)

ATARI_GPT_CHECKS = (
    "observation: screen only - the models 'directly engage with game environments' from frames "
    "(arXiv:2408.15950v2 abstract); each request is frames and a fixed instruction, no state text "
    "(the authors' code)",
    "frames: 'the model was presented with two frames (the previous and the current frame)' (v1); v2 "
    "summaries speak of two previous frames and responses, the authors' code keeps three: here the "
    "previous frame and answer (history 1), as v1 states; a protocol file based on this one may keep more",
    "frame skip: 'a frame skipping interval of 8 frames' (v1): frame skip 4 and a decision every other "
    "env step, NOOP between, as the authors' code plays it",
    "budget: 'cumulative reward over 1000 steps' (v1), env steps with NOOPs counted; the code resets on "
    "game over and keeps summing rewards",
    "image size: 'resized to be 512x512x3 for all tested models' (v1); JPEG as in the code",
    "answer: JSON with keys reasoning and action (v1 and v2); the paper asks for the action's number, "
    "here its name or number is accepted (the parser reads both)",
    "invalid answers: 'The model was re-prompted when these edge cases occurred' (v1); the code re-asks "
    "at most 3 times, then plays action 0 (NOOP here)",
    "sticky actions: not stated; the code ran 5 of the 7 games as Deterministic-v4 (none) and Alien and "
    "Frogger as v5 (0.25): here 0 for all (the majority), a deliberate choice",
    "action space: 'the default action space available for each game' (v1): the minimal set",
    "sampling: temperature 1 in the authors' code for every model (the paper names none)",
    "runs: 'four rollouts of each model and each environment' (v1); benches play at least 5 seeds",
    "not reproduced: the code's 15 NOOP steps at the start of each run, and its per-game system prompt "
    "text beyond the opening sentences quoted in the atari-gpt prompt style",
)

PROTOCOLS: Mapping[str, Protocol] = MappingProxyType(
    {
        p.name: p
        for p in (
            Protocol(
                name="atari-gpt",
                description=(
                    "As Atari-GPT ran it: the screen only (no state text), the previous frame and answer "
                    "beside the current frame, 512x512 frames, the model deciding every other env step "
                    "(NOOP between: 8 frames apart) for 1000 env steps with game overs reset and rewards "
                    "summed, reasoning then action as JSON, re-asked up to 3 times on an invalid action."
                ),
                source=ATARI_GPT_SOURCE,
                settings={
                    "frame_skip": 4,
                    "decision_interval": 2,
                    "filler_action": "NOOP",
                    "total_env_steps": 1000,
                    "reset_on_game_over": True,
                    "repeat_action_probability": 0.0,
                    "full_action_space": False,
                    "max_pool": False,
                    "screen": True,
                    "state_text": False,
                    "resize_shape": (512, 512),
                    "frame_stack": 1,
                    "history_steps": 1,
                    "history_images": 1,
                    "prompt": "atari-gpt",
                    "answer_format": "json",
                    "decode": "free",
                    "reprompts": 3,
                    "temperature": 1.0,
                },
                runs=4,
                games=("Alien", "Breakout", "Frogger", "MsPacman", "Pong", "Seaquest", "SpaceInvaders"),
                checks=ATARI_GPT_CHECKS,
            ),
            Protocol(
                name="machado",
                description=(
                    "ALE v5's evaluation settings as Machado et al. 2018 recommend them: sticky actions "
                    "(0.25) for stochasticity in place of no-op starts, frame skip 4, episodes to game "
                    "over within the 108,000-frame (30-minute) cap; whole episodes, no history."
                ),
                source=(
                    "Machado et al. 2018, 'Revisiting the Arcade Learning Environment: Evaluation Protocols "
                    "and Open Problems for General Agents', JAIR 61 (sticky actions replace no-op starts); "
                    "the 108,000-frame cap is ALE v5's"
                ),
                settings={
                    "frame_skip": 4,
                    "repeat_action_probability": 0.25,
                    "noop_max": 0,
                    "max_episode_frames": V5_MAX_EPISODE_FRAMES,
                },
            ),
        )
    }
)


def _read_file(path: Path) -> Any:
    """Parse a protocol file by its suffix (.json, .toml); bounded, so a hostile file fails cleanly."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_PROTOCOL_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read protocol file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_PROTOCOL_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_PROTOCOL_FILE_BYTES // 1024} KiB; a protocol is a short file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"protocol file {path} must end in .json or .toml")
    try:
        if suffix == ".json":
            return json.loads(text)
        return _toml().loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a protocol") from None
    except ValueError as exc:  # bad JSON or TOML, or an integer of thousands of digits
        kind = "JSON" if suffix == ".json" else "TOML"
        raise ConfigError(f"{path}: not valid {kind} ({str(exc)[:200]})") from None


def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomllib is new in 3.11
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise ConfigError("TOML protocol files need Python 3.11+ or `pip install tomli`") from exc
    return tomllib


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A built-in protocol by name, or a user's protocol from a .json/.toml file.

    Example:
        >>> load_protocol("atari-gpt").setting("decision_interval")
        2

    Raises:
        ConfigError: neither a built-in name nor a readable, valid protocol file.
    """
    if isinstance(name_or_path, str) and name_or_path in PROTOCOLS:
        return PROTOCOLS[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise ConfigError(
            f"unknown protocol {str(name_or_path)!r}: not a built-in one ({sorted(PROTOCOLS)}) "
            "and no such .json/.toml file"
        )
    return Protocol.from_dict(_read_file(path), origin=str(path))


def with_protocol(settings: Mapping[str, Any], given: set[str] | frozenset[str]) -> dict[str, Any]:
    """``settings`` (flat run-spec settings) with the protocol they name applied.

    The protocol's fixed settings replace defaults; a setting the user gave (``given``) that the
    protocol fixes to another value is refused, so that a score labelled with a protocol was played
    under it.

    Raises:
        ConfigError: an unknown protocol, or a given setting that contradicts it.
    """
    name = settings.get("protocol")
    if name is None:
        return dict(settings)
    protocol = load_protocol(name)
    fixed = protocol.fixed_settings()
    clashes = [
        f"{key}={settings[key]!r} (the protocol fixes {value!r})"
        for key, value in fixed.items()
        if key in given and key in settings and _normal(settings[key]) != _normal(value)
    ]
    if clashes:
        raise ConfigError(
            f"protocol {protocol.name!r} fixes settings given otherwise: {'; '.join(clashes)}; drop them, "
            f'or write a protocol file based on it (base = "{protocol.name}")'
        )
    return {**settings, **fixed, "protocol": str(name)}


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
