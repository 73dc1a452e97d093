"""Evaluation protocols as data: what "a score on game X" was measured under.

Two results are comparable only under the same protocol (sticky actions, episode cap, no-op starts,
how often the model decides, how much it remembers). A :class:`Protocol` writes those choices down;
the runner applies them. Built-in protocols are in :data:`PROTOCOLS`; users add their own in a JSON or
TOML file, optionally starting from a built-in one with ``base``::

    # my_protocol.toml
    name = "atari-gpt-sticky"
    base = "atari-gpt"
    repeat_action_probability = 0.25
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from atari_vlm.errors import ConfigError
from atari_vlm.spec import V5_MAX_EPISODE_FRAMES


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol. Every field is checked on construction (ConfigError names the field).

    Units: an *env step* is one call of ``env.step`` (``frame_skip`` emulator frames); a *frame* is one
    emulator frame (60 per second of game time).

    Fields:
        name: identifier, e.g. "atari-gpt" (letters, digits, ``-``, ``_``, ``.``).
        description: one or two sentences for tables and reports.
        source: the paper or page the protocol comes from ("" for a user's own).
        frame_skip: emulator frames per env step; the chosen action repeats over them (ALE v5: 4).
        repeat_action_probability: sticky actions: at every emulator frame the previous action is
            kept with this probability instead of the chosen one (Machado et al. 2018: 0.25; 0 off).
        full_action_space: all 18 ALE actions instead of the game's minimal set.
        noop_max: at each reset, play a uniformly random number of NOOP env steps in
            ``[0, noop_max]`` before the agent's first decision (DQN Nature: up to 30; 0 off). They count
            towards ``max_episode_frames`` but are not decisions.
        max_episode_frames: truncate an episode after this many emulator frames (``None``: no cap).
            108,000 frames (ALE v5's own cap, the default) is 30 minutes of play.
        total_env_steps: the evaluation budget in env steps for one *run* on one game (``None``: play
            whole episodes instead). With a budget, the run lasts exactly this many env steps.
        reset_on_game_over: with a budget: when the game ends before the budget is spent, reset and
            keep playing; the run's score is the sum of rewards over all its episodes. Without it, the
            run stops at the first game over.
        decision_interval: the model decides at every ``decision_interval``-th env step (1: every
            step); the env steps in between play ``filler_action`` and are not model calls.
        filler_action: the action played on env steps without a decision (an action name of the
            game, normally "NOOP").
        context_pairs: how many of the most recent (frame the model saw, the model's answer) pairs are
            shown again with each new request, oldest first (a rolling window; 0: no history).
            Cleared at every reset.
        runs: independent runs (seeds) per game that the protocol asks for.
        games: the games the protocol is defined on (canonical ALE names; empty: any game).
        table: reference table for human-normalized scores (a key of
            :data:`atari_vlm.bench.scores.TABLES`).
    """

    name: str
    description: str = ""
    source: str = ""
    frame_skip: int = 4
    repeat_action_probability: float = 0.25
    full_action_space: bool = False
    noop_max: int = 0
    max_episode_frames: int | None = V5_MAX_EPISODE_FRAMES
    total_env_steps: int | None = None
    reset_on_game_over: bool = False
    decision_interval: int = 1
    filler_action: str = "NOOP"
    context_pairs: int = 0
    runs: int = 1
    games: tuple[str, ...] = ()
    table: str = "dqn_nature"

    def __post_init__(self) -> None:
        _check_str(self, "name", allow_empty=False)
        if not all(c.isalnum() or c in "-_." for c in self.name):
            raise ConfigError(
                f"protocol field 'name' may hold only letters, digits, '-', '_' and '.', got {self.name!r}"
            )
        _check_str(self, "description")
        _check_str(self, "source")
        _check_int(self, "frame_skip", low=1)
        _check_bool(self, "full_action_space")
        _check_int(self, "noop_max", low=0)
        _check_int(self, "max_episode_frames", low=1, optional=True)
        _check_int(self, "total_env_steps", low=1, optional=True)
        _check_bool(self, "reset_on_game_over")
        _check_int(self, "decision_interval", low=1)
        _check_str(self, "filler_action", allow_empty=False)
        _check_int(self, "context_pairs", low=0)
        _check_int(self, "runs", low=1)
        p = self.repeat_action_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise ConfigError(_msg(self, "repeat_action_probability", "must be a number", p))
        if not 0.0 <= p <= 1.0:
            raise ConfigError(_msg(self, "repeat_action_probability", "must be between 0 and 1", p))
        object.__setattr__(self, "repeat_action_probability", float(p))
        object.__setattr__(self, "filler_action", self.filler_action.strip().upper())
        self._check_games()
        from atari_vlm.bench.scores import TABLES

        if self.table not in TABLES:
            raise ConfigError(_msg(self, "table", f"must be one of {sorted(TABLES)}", self.table))
        if self.reset_on_game_over and self.total_env_steps is None:
            raise ConfigError(
                f"protocol {self.name!r}: 'reset_on_game_over' needs a 'total_env_steps' budget "
                "(without one, every episode is already played to its end)"
            )

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

    @property
    def decisions_per_run(self) -> int | None:
        """Model calls in one budgeted run (``None`` without a budget)."""
        if self.total_env_steps is None:
            return None
        return math.ceil(self.total_env_steps / self.decision_interval)

    def fixed_settings(self) -> dict[str, Any]:
        """The run-spec settings this protocol fixes, by their flat names (see :mod:`atari_vlm.spec`)."""
        return {
            "frame_skip": self.frame_skip,
            "repeat_action_probability": self.repeat_action_probability,
            "full_action_space": self.full_action_space,
            "noop_max": self.noop_max,
            "max_episode_frames": self.max_episode_frames,
            "total_env_steps": self.total_env_steps,
            "reset_on_game_over": self.reset_on_game_over,
            "decision_interval": self.decision_interval,
            "filler_action": self.filler_action,
            "history_steps": self.context_pairs,
            "history_images": self.context_pairs,
        }

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["games"] = list(self.games)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "protocol") -> Protocol:
        """Build a protocol from plain data (a parsed JSON/TOML file), with ``base`` inheritance.

        Raises:
            ConfigError: not a mapping, unknown or missing field, unknown base, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{origin}: a protocol must be a mapping of fields, got {type(data).__name__}")
        data = dict(data)
        base_name = data.pop("base", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{origin}: unknown protocol field(s) {unknown}; known fields: {sorted(known)}")
        if "name" not in data:
            raise ConfigError(f"{origin}: protocol field 'name' is missing")
        fields: dict[str, Any] = {}
        if base_name is not None:
            if not isinstance(base_name, str) or base_name not in PROTOCOLS:
                raise ConfigError(
                    f"{origin}: protocol field 'base' must be one of {sorted(PROTOCOLS)}, got {base_name!r}"
                )
            fields = dataclasses.asdict(PROTOCOLS[base_name])
            fields["source"] = f"based on {base_name!r}"
        fields.update(data)
        if isinstance(fields.get("games"), list):
            fields["games"] = tuple(fields["games"])
        try:
            return cls(**fields)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from exc


def _msg(p: Protocol, field: str, what: str, value: Any) -> str:
    return f"protocol {p.name!r}: field {field!r} {what}, got {value!r}"


def _check_int(p: Protocol, field: str, *, low: int, optional: bool = False) -> None:
    value = getattr(p, field)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or null" if optional else "an integer"
        raise ConfigError(_msg(p, field, f"must be {kind}", value))
    if value < low:
        raise ConfigError(_msg(p, field, f"must be >= {low}", value))


def _check_bool(p: Protocol, field: str) -> None:
    value = getattr(p, field)
    if not isinstance(value, bool):
        raise ConfigError(_msg(p, field, "must be true or false", value))


def _check_str(p: Protocol, field: str, *, allow_empty: bool = True) -> None:
    value = getattr(p, field)
    if not isinstance(value, str):
        raise ConfigError(_msg(p, field, "must be a string", value))
    if not allow_empty and not value.strip():
        raise ConfigError(_msg(p, field, "must not be empty", value))


PROTOCOLS: Mapping[str, Protocol] = MappingProxyType(
    {
        p.name: p
        for p in (
            Protocol(
                name="atari-gpt",
                description=(
                    "1000 env steps at frame skip 4; the model decides every other step (NOOP between) "
                    "with its last 4 frame/answer pairs as context; game over resets and rewards add up. "
                    "ALE v5 defaults otherwise."
                ),
                source=(
                    "Waytowich et al. 2024, 'Atari-GPT: Benchmarking Multimodal Large Language Models as "
                    "Low-Level Policies in Atari Games', arXiv:2408.15950"
                ),
                frame_skip=4,
                total_env_steps=1000,
                reset_on_game_over=True,
                decision_interval=2,
                filler_action="NOOP",
                context_pairs=4,
                games=("Alien", "Breakout", "Frogger", "MsPacman", "Pong", "Seaquest", "SpaceInvaders"),
            ),
            Protocol(
                name="machado",
                description=(
                    "Sticky actions (0.25), frame skip 4, episodes capped at 108,000 frames (30 minutes), "
                    "up to 30 NOOP starts; whole episodes, no history."
                ),
                source=(
                    "Machado et al. 2018, 'Revisiting the Arcade Learning Environment', JAIR 61 (sticky "
                    "actions); 108,000-frame cap and 30 NOOP starts as in the DQN-family evaluations"
                ),
                frame_skip=4,
                repeat_action_probability=0.25,
                noop_max=30,
                max_episode_frames=108_000,
            ),
        )
    }
)


def _read_file(path: Path) -> Any:
    """Parse a protocol file by its suffix (.json, .toml)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read protocol file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: tomllib is new in 3.11
            try:
                import tomli as tomllib
            except ModuleNotFoundError as exc:
                raise ConfigError(f"{path}: TOML needs Python 3.11+ or `pip install tomli`") from exc
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    raise ConfigError(f"protocol file {path} must end in .json or .toml")


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A built-in protocol by name, or a user's protocol from a .json/.toml file.

    Example:
        >>> load_protocol("atari-gpt").decision_interval
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
        if key in given and key in settings and settings[key] != value
    ]
    if clashes:
        raise ConfigError(
            f"protocol {protocol.name!r} fixes settings given otherwise: {'; '.join(clashes)}; drop them, "
            f'or write a protocol file based on it (base = "{protocol.name}")'
        )
    return {**settings, **fixed, "protocol": str(name)}
