"""The run specification: every setting of a run, defined once.

A run is described by a :class:`RunSpec` made of frozen sections: :class:`EnvSpec` (the emulator and
the episode), :class:`ObservationSpec` (what the model is shown), :class:`PromptSpec`,
:class:`DecodingSpec`, :class:`ModelSpec` and, for ``atari-vlm train``, :class:`TrainSpec`. Each
field carries a :class:`Setting`: its help text, its validation, and its *role*:

- ``play``: it changes what is played or how it scores. A resumed run must keep it, and results of
  runs that differ in it never share a row (:meth:`RunSpec.fingerprint`).
- ``sample``: it chooses which episodes are played (seeds). A resumed run must keep it (a list of
  seeds may grow); results pool over it, since seeds are what a confidence interval resamples.
- ``output``, ``runtime``: what is written, and how fast or where it runs (videos, episode count,
  concurrency, a budget). They are recorded and may change when a run is resumed.
- ``secret``: never recorded anywhere (an API key).

Everything else is derived from these declarations: the CLI flags of ``play``, ``bench`` and
``train`` (:func:`cli_settings`), ``config.json`` (:meth:`RunSpec.to_dict` with a format version),
what ``--resume`` accepts (:func:`resume_conflicts`), how results are grouped (the fingerprint) and
what a Ray worker or the trainer receives (the spec itself). Adding a setting is adding one field.

Units, used the same way everywhere: a *frame* is one emulator frame (60 per second of game time);
an *env step* is one ALE step of ``frame_skip`` frames; a *decision* is one action the agent chooses
(one line of steps.jsonl), which plays ``decision_interval`` env steps.

This module imports nothing of atari-vlm above the game catalog.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from atari_vlm.errors import ConfigError
from atari_vlm.games import resolve_game
from atari_vlm.urls import safe_url, validate_base_url

__all__ = [
    "AGENTS",
    "DECODE_CHOICES",
    "FORMAT_VERSION",
    "PROMPT_STYLES",
    "DecodingSpec",
    "EnvSpec",
    "ModelSpec",
    "ObservationSpec",
    "PromptSpec",
    "Role",
    "RunSpec",
    "Setting",
    "SweepSpec",
    "TrainSpec",
    "check_int",
    "is_finite_number",
    "is_integer",
    "parse_seeds",
    "resume_conflicts",
]

FORMAT_VERSION = 2
"""Version of the spec as stored in config.json (1: the flat, hand-written config of atari-vlm 0.1)."""
V5_MAX_EPISODE_FRAMES = 108_000
BENCH_STUCK_DECISIONS = 100
"""Benchmarks end an episode whose screen has not changed for this many decisions (400 frames, 6.7 s of
game time at frame skip 4): a model that never presses FIRE neither plays on to the frame cap nor bills."""
"""The episode cap ALE registers for every ``ALE/*-v5`` id: 30 minutes of game time."""
AGENTS: tuple[str, ...] = ("vlm", "random", "expert")
PROMPT_STYLES: tuple[str, ...] = ("basic", "cot", "expert", "atari-gpt")
DECODE_CHOICES: tuple[str, ...] = ("auto", "free", "constrained", "score")
REASONING_LEVELS: tuple[str, ...] = ("off", "low", "medium", "high")
"""How much a model may think before it answers: off asks for the least each model allows."""
SERVER_KINDS: tuple[str, ...] = (
    "auto",
    "openai",
    "vllm",
    "sglang",
    "llamacpp",
    "ollama",
    "transformers",
    "generic",
)
"""What an OpenAI-compatible endpoint is; it decides which documented field asks for constrained
decoding. ``auto``: ask the server; ``generic``: an unknown server, sent OpenAI's own json_schema."""
MAX_PROMPT_FILE_BYTES = 256 * 1024

Role = Literal["play", "sample", "output", "runtime", "secret"]
ROLES: tuple[str, ...] = ("play", "sample", "output", "runtime", "secret")
BLOCKS_RESUME: frozenset[str] = frozenset({"play", "sample"})

Check = Callable[[str, Any], Any]
"""A validator: ``check(name, value)`` returns the canonical value or raises ConfigError."""


# --- validators (the only ones: everything that checks a setting uses these) ---------------------------


def is_integer(value: object) -> bool:
    """An int (numpy's included), not a bool: the one test of "an integer" every check shares."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_number(value: object) -> bool:
    """True for an int or float that is finite (not a bool, NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``, or a ConfigError naming ``name`` and the range."""
    if not is_integer(value):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return int(value)


def integer(low: int, high: int, *, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> int | None:
        if value is None and optional:
            return None
        return check_int(name, value, low, high)

    check.__doc__ = f"an integer in [{low}, {high}]" + (" or none" if optional else "")
    check.parse = int  # type: ignore[attr-defined]  # how the CLI reads it
    return check


def number(low: float, high: float, *, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> float | None:
        if value is None and optional:
            return None
        if not is_finite_number(value):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not low <= float(value) <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value}")
        return float(value)

    check.__doc__ = f"a number in [{low:g}, {high:g}]" + (" or none" if optional else "")
    check.parse = float  # type: ignore[attr-defined]
    return check


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def choice(*options: str, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> str | None:
        if value is None and optional:
            return None
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")
        return str(value)

    check.choices = options  # type: ignore[attr-defined]
    return check


def text(*, optional: bool = False, max_length: int = 1000, upper: bool = False) -> Check:
    def check(name: str, value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        if len(value) > max_length:
            raise ConfigError(f"{name} must be at most {max_length} characters long")
        value = value.strip()
        return value.upper() if upper else value

    check.parse = str  # type: ignore[attr-defined]
    return check


def _shape(name: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{name} must be a (height, width) pair of integers or none, got {value!r}")
    h, w = (check_int(name, v, 8, 1024) for v in value)
    return (h, w)


def _seed_list(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a list of seeds such as 0-4 or 1,5,9, got {value!r}")
    seeds = tuple(check_int(f"{name}[{i}]", s, 0, 2**32 - 1) for i, s in enumerate(value))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{name} must hold distinct seeds, at least one; got {list(seeds)}")
    return seeds


def _paths(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, Path)):
        value = (value,)
    if not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a list of paths, got {value!r}")
    return tuple(str(text()(name, str(v))) for v in value)


def _prompt_style(name: str, value: Any) -> str:
    style = text(max_length=4096)(name, value)
    if style in PROMPT_STYLES:
        return style
    path = Path(style)
    if path.suffix == ".txt" or path.exists():
        return style
    raise ConfigError(
        f"{name} must be one of {', '.join(PROMPT_STYLES)} or a .txt template file; got {style!r}"
    )


def _game(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a game name such as Pong, got {value!r}")
    return resolve_game(value)


def _url(name: str, value: Any) -> str | None:
    if value is None:
        return None
    return validate_base_url(text(max_length=2048)(name, value), what=name)


def parse_seeds(text_value: str) -> tuple[int, ...]:
    """ "0-4" -> (0, 1, 2, 3, 4); "1,5,9" -> (1, 5, 9); both may mix ("0-2,7")."""
    seeds: list[int] = []
    for part in str(text_value).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d{1,10})(?:-(\d{1,10}))?", part)
        if not match:
            raise ConfigError(
                f"seeds must look like 0-4 or 1,5,9 (non-negative integers), got {text_value!r}"
            )
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ConfigError(f"seed range {part!r} runs backwards; write it low-high")
        if high - low > 100_000:
            raise ConfigError(f"seed range {part!r} is too long (at most 100,000 seeds)")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds repeat in {text_value!r}: every seed once, please")
    return tuple(seeds)


# --- CLI text parsers -----------------------------------------------------------------------------------


def _parse_shape(value: str) -> tuple[int, int] | None:
    """ "84x84" or "84,84" as (height, width); "none" keeps the native size."""
    if value.strip().lower() in {"none", "native"}:
        return None
    parts = value.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected HEIGHTxWIDTH such as 105x80, got {value!r}")
    return int(parts[0]), int(parts[1])


def _parse_optional_int(value: str) -> int | None:
    return None if value.strip().lower() in {"none", "off"} else int(value)


def _parse_on_off(value: str) -> bool:
    words = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}
    if value.strip().lower() not in words:
        raise ValueError(f"expected on or off, got {value!r}")
    return words[value.strip().lower()]


# --- the declaration of a setting ----------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """What atari-vlm knows about one field of the spec.

    ``flag`` is its CLI option (None: the field has none), ``parse`` turns the option's text into a
    value (``None``: ``int``/``float``/``str`` from the default's type, a switch for booleans),
    ``on_off`` makes a boolean an ``--x on|off`` option rather than a ``--x/--no-x`` switch.
    """

    help: str
    check: Check
    role: Role = "play"
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    on_off: bool = False
    cli: bool = True
    record: Callable[[Any], Any] | None = None  # how the value is written down (a URL without credentials)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")

    @property
    def choices(self) -> tuple[str, ...] | None:
        return getattr(self.check, "choices", None)

    @property
    def read(self) -> Callable[[str], Any]:
        """How the CLI turns the option's text into a value (the validator checks it after)."""
        if self.parse is not None:
            return self.parse
        return _parse_on_off if self.on_off else getattr(self.check, "parse", str)


def setting(default: Any = dataclasses.MISSING, *, help: str, check: Check, **options: Any) -> Any:
    """A dataclass field carrying its :class:`Setting`."""
    meta = {"setting": Setting(help=help, check=check, **options)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in the spec")
    return field(default=default, metadata=meta)


class _Section:
    """What every section shares: validation on construction, and plain-data views."""

    section_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            spec: Setting | None = f.metadata.get("setting")
            if spec is not None:
                object.__setattr__(self, f.name, spec.check(f.name, getattr(self, f.name)))
        self._check_together()

    def _check_together(self) -> None:
        """Checks that involve several fields (override in a section)."""

    @classmethod
    def settings(cls) -> Iterator[tuple[str, Setting, Any]]:
        """(name, setting, default) of every field, in declaration order."""
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if "setting" in f.metadata:
                yield f.name, f.metadata["setting"], f.default

    def to_dict(self, roles: frozenset[str] | None = None) -> dict[str, Any]:
        """The fields as JSON-ready data (tuples as lists), secrets never; ``roles`` filters."""
        out: dict[str, Any] = {}
        for name, spec, _ in self.settings():
            if spec.role == "secret" or (roles is not None and spec.role not in roles):
                continue
            value = getattr(self, name)
            if spec.record is not None and value is not None:
                value = spec.record(value)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "spec") -> Any:
        """The section from plain data (a parsed config.json); unknown or bad fields raise ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{where}: expected an object of {cls.section_name} settings, got {_short(data)}"
            )
        known = {name for name, spec, _ in cls.settings() if spec.role != "secret"}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown {cls.section_name} setting(s) {unknown}")
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _short(value: Any) -> str:
    text_value = repr(value)
    return text_value if len(text_value) <= 60 else text_value[:57] + "..."


# --- the sections ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvSpec(_Section):
    """The emulator and the episode: what ALE plays, for how long, and how often the agent decides.

    Defaults are ALE v5's own (frame skip 4, sticky actions 0.25, a 108,000-frame cap).
    """

    section_name: ClassVar[str] = "env"

    game: str = setting(
        help="any ALE game: Pong, pong, Pong-v5, ALE/Pong-v5, ...", check=_game, flag="--game", cli=False
    )
    frame_skip: int = setting(
        4, help="emulator frames per env step; the action repeats over them (ALE v5: 4)", check=integer(1, 64)
    )
    repeat_action_probability: float = setting(
        0.25,
        help="sticky actions: each frame keeps the previous action with this probability (ALE v5: 0.25)",
        check=number(0.0, 1.0),
        flag="--sticky",
        metavar="P",
    )
    full_action_space: bool = setting(
        False, help="all 18 Atari actions instead of the game's minimal set", check=boolean
    )
    max_episode_frames: int | None = setting(
        V5_MAX_EPISODE_FRAMES,
        help="truncate an episode after this many emulator frames (ALE v5: 108000; none: no cap)",
        check=integer(1, 10_000_000, optional=True),
        parse=_parse_optional_int,
        metavar="FRAMES",
    )
    max_steps: int | None = setting(
        None,
        help="truncate an episode after this many decisions (quick looks; results flag capped episodes)",
        check=integer(1, 10_000_000, optional=True),
        parse=_parse_optional_int,
        metavar="N",
    )
    noop_max: int = setting(
        0,
        help="at each reset, up to N random NOOP env steps before the first decision (0: off)",
        check=integer(0, 1000),
    )
    decision_interval: int = setting(
        1,
        help="env steps per decision; the steps between decisions play --filler-action",
        check=integer(1, 100),
    )
    filler_action: str = setting(
        "NOOP", help="the action played on env steps between decisions", check=text(max_length=32, upper=True)
    )
    total_env_steps: int | None = setting(
        None,
        help="an episode is this many env steps (with --reset-on-game-over, games restart until it is spent)",
        check=integer(1, 10_000_000, optional=True),
        parse=_parse_optional_int,
        metavar="N",
    )
    reset_on_game_over: bool = setting(
        False,
        help="with --total-env-steps: a game over restarts the game and rewards keep adding up",
        check=boolean,
    )
    stuck_decisions: int | None = setting(
        None,
        help="end an episode (as stuck) once the screen the model sees has not changed for N decisions, "
        "e.g. Breakout waiting for FIRE (benchmarks: 100; none: never)",
        check=integer(2, 1_000_000, optional=True),
        parse=_parse_optional_int,
        metavar="N",
    )

    def _check_together(self) -> None:
        if self.reset_on_game_over and self.total_env_steps is None:
            raise ConfigError(
                "reset_on_game_over needs a total_env_steps budget (else every game ends the episode)"
            )


@dataclass(frozen=True)
class ObservationSpec(_Section):
    """What the model is shown at each decision."""

    section_name: ClassVar[str] = "observation"

    resize_shape: tuple[int, int] | None = setting(
        None,
        help="HEIGHTxWIDTH of each frame the model sees (none: native 210x160)",
        check=_shape,
        flag="--resize",
        parse=_parse_shape,
        metavar="HxW",
    )
    grayscale: bool = setting(False, help="show the model luminance only", check=boolean)
    frame_stack: int = setting(1, help="recent frames shown at each decision", check=integer(1, 16))
    frame_layout: str = setting(
        "grid",
        help="grid: the stacked frames in one image; sequence: one image per frame",
        check=choice("grid", "sequence"),
    )
    max_pool: bool = setting(
        True,
        help="each frame the model sees is the pixel-wise max of the last two emulator frames of the "
        "skip (flickering sprites stay visible)",
        check=boolean,
    )
    screen: bool = setting(True, help="show the model the screen(s)", check=boolean, on_off=True)
    state_text: bool = setting(
        True, help="add a text description of the game state read from RAM", check=boolean, on_off=True
    )

    def _check_together(self) -> None:
        if not (self.screen or self.state_text):
            raise ConfigError("the model must observe something: --screen on, --state-text on, or both")

    @property
    def label(self) -> str:
        """What the model observes, as sweeps name it: screen, text or screen+text."""
        return "+".join(name for name, on in (("screen", self.screen), ("text", self.state_text)) if on)


@dataclass(frozen=True)
class PromptSpec(_Section):
    """What the model is told."""

    section_name: ClassVar[str] = "prompt"

    prompt: str = setting(
        "basic",
        help="basic | cot | expert | atari-gpt (the paper's wording) | a template .txt file",
        check=_prompt_style,
        aliases=("--prompt-file",),
        metavar="STYLE",
    )
    answer_format: str = setting(
        "line",
        help="line: end with ACTION: <name>; json: a {reasoning, action} object",
        check=choice("line", "json"),
    )
    history_steps: int = setting(0, help="past decisions recalled in text", check=integer(0, 64))
    history_images: int = setting(0, help="past frames shown again", check=integer(0, 64))

    template_sha256: str | None = setting(
        None,
        help="sha256 of a template file's text, taken when the spec is made (an edited file is another "
        "prompt)",
        check=text(optional=True, max_length=64),
        cli=False,
    )

    def _check_together(self) -> None:
        if self.prompt in PROMPT_STYLES:
            object.__setattr__(self, "template_sha256", None)
        elif self.template_sha256 is None:
            object.__setattr__(self, "template_sha256", _file_digest(self.prompt))


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPT_FILE_BYTES + 1)
    except OSError:
        return None  # the renderer says what is wrong with the file
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True)
class DecodingSpec(_Section):
    """How an answer is produced."""

    section_name: ClassVar[str] = "decoding"

    max_tokens: int | None = setting(
        None,
        help="answer tokens at most (default: the prompt style's own)",
        check=integer(1, 32_768, optional=True),
    )
    temperature: float = setting(0.0, help="sampling temperature; 0 is greedy", check=number(0.0, 2.0))
    decode: str = setting(
        "auto",
        help="how an answer becomes an action: score (local models: likelihood of every action), "
        "constrained (the backend can only answer a legal action), free (text, parsed), auto (the "
        "strongest the backend offers)",
        check=choice(*DECODE_CHOICES),
    )
    reprompts: int = setting(
        0,
        help="after an answer that names no legal action, ask again (saying why) up to N times before "
        "playing the fallback",
        check=integer(0, 10),
        metavar="N",
    )


RETRY_AFTER_CAP_S = 60.0
"""The longest Retry-After a model call honours: a server asking for a day (or a date in 2099) waits
this long, then the call is tried again (within ``ModelSpec.retry_s``)."""


@dataclass(frozen=True)
class ModelSpec(_Section):
    """Which model answers, and how it is reached or loaded."""

    section_name: ClassVar[str] = "model"

    model: str = setting(
        "auto",
        help="a preset (see `atari-vlm models`) | demo | pong-tiny | auto | "
        "openai:|anthropic:|gemini:<model> | local:<hf id> | <checkpoint dir>",
        check=text(max_length=4096),
        metavar="MODEL",
    )
    base_url: str | None = setting(
        None,
        help="the model's endpoint: an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) or a "
        "proxy for a preset; default: the SDK's own variable (OPENAI_BASE_URL, ...), else the provider's API",
        check=_url,
        metavar="URL",
        record=safe_url,  # credentials in a URL stay in memory, never in a file
    )
    api_key: str | None = setting(
        None,
        help="else OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY / GOOGLE_API_KEY (safer: "
        "a command line is visible to other users); never written",
        check=text(optional=True, max_length=4096),
        role="secret",
        metavar="KEY",
    )
    image_detail: str = setting("auto", help="OpenAI image detail", check=choice("auto", "low", "high"))
    device: str = setting("cpu", help="local models: cpu, cuda, cuda:1, mps", check=text(max_length=64))
    dtype: str = setting(
        "auto", help="local models: weight dtype", check=choice("auto", "float32", "bfloat16", "float16")
    )
    quantize: str | None = setting(
        None, help="local models: bitsandbytes 4bit or 8bit", check=choice("4bit", "8bit", optional=True)
    )
    trust_remote_code: bool = setting(
        False, help="local models: run a checkpoint's own code", check=boolean, role="runtime"
    )
    concurrency: int | None = setting(
        None,
        help="API requests in flight at most (default: one per game for a --base-url server, else up to 8)",
        check=integer(1, 4096, optional=True),
        role="runtime",
    )
    max_batch_size: int = setting(
        8,
        help="local models: requests batched into one forward pass at most",
        check=integer(1, 1024),
        role="runtime",
    )
    reasoning: str = setting(
        "off",
        help="how much the model may think before it answers (off: the least it allows; more raises the "
        "token limit to fit)",
        check=choice(*REASONING_LEVELS),
    )
    server_kind: str = setting(
        "auto",
        help="which kind of OpenAI-compatible server --base-url is (it decides the constrained-decoding "
        "field); auto asks the server",
        check=choice(*SERVER_KINDS),
    )
    timeout_s: float = setting(
        60.0,
        help="seconds one API call may take in all before it fails (and is retried)",
        check=number(0.1, 3600.0),
        role="runtime",
        flag="--timeout",
        metavar="SECONDS",
    )
    retry_s: float = setting(
        120.0,
        help="seconds one API call may keep retrying transient failures (5xx, 429, timeouts, malformed "
        "answers), with exponential backoff and jitter, Retry-After honoured up to "
        f"{RETRY_AFTER_CAP_S:g} s; then the run stops",
        check=number(0.0, 86400.0),
        role="runtime",
        flag="--retry-time",
        metavar="SECONDS",
    )
    prompt_cache_key: str | None = setting(
        None,
        help="OpenAI's prompt_cache_key (default: derived from the model and the stable prefix)",
        check=text(optional=True, max_length=64),
        role="runtime",
        cli=False,
    )


@dataclass(frozen=True)
class TrainSpec(_Section):
    """``atari-vlm train``: in-context learning, evaluation, expert iteration."""

    section_name: ClassVar[str] = "train"

    use_icl: bool = setting(False, help="show exemplars from the memory (in-context learning)", check=boolean)
    exemplars: str = setting(
        "key_moments", help="how exemplars are chosen", check=choice("key_moments", "similar")
    )
    top_k: int = setting(3, help="exemplars come from the best K episodes", check=integer(1, 1000))
    image_budget: int = setting(8, help="exemplar images per request at most", check=integer(0, 256))
    eval_every: int = setting(5, help="evaluate after every N training episodes", check=integer(1, 1_000_000))
    eval_seeds: tuple[int, ...] = setting(
        (10_000, 10_001, 10_002),
        help="held-out evaluation env seeds, e.g. 10000-10002",
        check=_seed_list,
        parse=parse_seeds,
        metavar="SEEDS",
    )
    demos: tuple[str, ...] = setting(
        (), help="recorded demonstrations to import into the memory first", check=_paths, cli=False
    )
    finetune_every: int | None = setting(
        None,
        help="expert iteration: every K episodes fine-tune the (local) model on the best --top-k episodes",
        check=integer(1, 1_000_000, optional=True),
        metavar="K",
    )
    finetune_full: bool = setting(False, help="full fine-tuning instead of LoRA", check=boolean)
    finetune_epochs: int = setting(1, help="epochs per fine-tuning round", check=integer(1, 1000))
    finetune_batch_size: int = setting(8, help="fine-tuning batch size", check=integer(1, 4096))
    finetune_max_examples: int | None = setting(
        None,
        help="fine-tune on a seeded sample of at most N steps",
        check=integer(1, 10_000_000, optional=True),
    )
    finetune_lr: float | None = setting(
        None,
        help="fine-tuning learning rate (default: 1e-3 LoRA, 1e-4 full)",
        check=number(0.0, 1.0, optional=True),
    )


def _names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, Sequence):
        raise ConfigError(f"{name} must be a comma-separated list, got {value!r}")
    return tuple(text(max_length=4096)(name, v) for v in value)


OBSERVATIONS: dict[str, dict[str, bool]] = {
    "screen": {"screen": True, "state_text": False},
    "text": {"screen": False, "state_text": True},
    "screen+text": {"screen": True, "state_text": True},
}
"""What a sweep's observation factor means, in ObservationSpec settings."""


def _observations(name: str, value: Any) -> tuple[str, ...]:
    kinds = _names(name, value)
    bad = [k for k in kinds if k not in OBSERVATIONS]
    if bad or len(set(kinds)) != len(kinds):
        raise ConfigError(f"{name} must be distinct kinds among {', '.join(OBSERVATIONS)}; got {list(kinds)}")
    return kinds


def _parse_names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class SweepSpec(_Section):
    """``atari-vlm bench``: the factors of a sweep. Every game x model x prompt plays on the same seeds,
    beside the reference agents on those seeds."""

    section_name: ClassVar[str] = "sweep"

    games: tuple[str, ...] = setting(
        (),
        help="comma-separated games (default: the protocol's games)",
        check=_names,
        parse=_parse_names,
        metavar="GAMES",
    )
    models: tuple[str, ...] = setting(
        (), help="comma-separated --model values", check=_names, parse=_parse_names, metavar="MODELS"
    )
    prompts: tuple[str, ...] = setting(
        ("basic",),
        help="comma-separated prompt styles or template files",
        check=_names,
        parse=_parse_names,
        metavar="STYLES",
    )
    observations: tuple[str, ...] = setting(
        (),
        help="comma-separated: what the model observes, each a factor of the sweep: screen, text, "
        "screen+text (none: what --screen and --state-text say)",
        check=_observations,
        parse=_parse_names,
        metavar="KINDS",
    )
    seeds: tuple[int, ...] | None = setting(
        None,
        help="env seeds, e.g. 0-4 or 1,5,9 (default: the protocol's runs, at least 5)",
        check=_seed_list,
        parse=parse_seeds,
        metavar="SEEDS",
    )


@dataclass(frozen=True)
class RunSpec(_Section):
    """A whole run: its sections, its agent, its episodes and seeds, and what it writes.

    Build one from flat settings with :meth:`build` (``RunSpec.build(game="Pong", model="demo",
    frame_skip=8)``); each name belongs to exactly one section.
    """

    section_name: ClassVar[str] = "run"
    SECTIONS: ClassVar[dict[str, type]] = {}  # filled below: name -> section class

    env: EnvSpec
    observation: ObservationSpec = field(default_factory=ObservationSpec)
    prompt: PromptSpec = field(default_factory=PromptSpec)
    decoding: DecodingSpec = field(default_factory=DecodingSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec | None = None

    agent: str = setting(
        "vlm",
        help="vlm: the model plays; random or expert (RAM policy): a reference agent",
        check=choice(*AGENTS),
    )
    protocol: str | None = setting(
        None,
        help="an evaluation protocol, which fixes the settings it names: atari-gpt | machado | "
        "a .json/.toml file",
        check=text(optional=True, max_length=4096),
        metavar="PROTOCOL",
    )
    seed: int = setting(0, help="root seed of the whole run", check=integer(0, 2**32 - 1), role="sample")
    env_seeds: tuple[int, ...] | None = setting(
        None,
        help="play episode i on env seed i of this list (benchmarks); default: seeds derived from --seed",
        check=_seed_list,
        role="sample",
        parse=parse_seeds,
        metavar="SEEDS",
        cli=False,
    )
    episodes: int = setting(1, help="episodes to play", check=integer(1, 1_000_000), role="runtime")
    num_envs: int = setting(1, help="games played concurrently", check=integer(1, 1024), role="runtime")
    max_cost_usd: float | None = setting(
        None,
        help="stop before a call could take this invocation's spending past USD",
        check=number(0.0, 1e9, optional=True),
        role="runtime",
        flag="--max-cost",
        metavar="USD",
    )
    executor: str = setting(
        "local",
        help="local: this process; ray: episodes spread over Ray workers, each loading its own model "
        '(pip install "atari-vlm[ray]")',
        check=choice("local", "ray"),
        role="runtime",
    )
    ray_address: str | None = setting(
        None,
        help="Ray cluster to join (auto, ray://host:10001); default: start a local Ray instance",
        check=text(optional=True, max_length=2048),
        role="runtime",
    )
    video: bool = setting(True, help="an mp4 per episode", check=boolean, role="output")
    frames: bool = setting(
        True,
        help="keep each image a decision sent, and the screen, once each in frames/ (PNG by content "
        "hash) for the report's viewer",
        check=boolean,
        role="output",
    )
    video_overlay: bool = setting(
        False, help="caption each video frame with the action", check=boolean, role="output"
    )

    def _check_together(self) -> None:
        for name, cls in self.SECTIONS.items():
            value = getattr(self, name)
            if name == "train" and value is None:
                continue
            if not isinstance(value, cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {_short(value)}")
        if self.env_seeds is not None and len(self.env_seeds) < self.episodes:
            raise ConfigError(f"{len(self.env_seeds)} env seeds given for {self.episodes} episodes")
        if self.ray_address is not None and self.executor != "ray":
            raise ConfigError("ray_address needs executor ray")

    # --- building ---

    @classmethod
    def flat_settings(cls) -> dict[str, tuple[str | None, Setting, Any]]:
        """Every setting by its (unique) name: (section name or None for the run's own, setting, default)."""
        out: dict[str, tuple[str | None, Setting, Any]] = {}
        for section, section_cls in cls.SECTIONS.items():
            for name, spec, default in section_cls.settings():
                out[name] = (section, spec, default)
        for name, spec, default in cls.settings():
            out[name] = (None, spec, default)
        return out

    @classmethod
    def build(cls, **flat: Any) -> RunSpec:
        """A spec from flat settings (``game=``, ``frame_skip=``, ``prompt=``, ``model=``, ...).

        ``train=True`` (or a dict of :class:`TrainSpec` fields given flat) adds the train section.

        Raises:
            ConfigError: an unknown name (with the valid ones) or a bad value.
        """
        table = cls.flat_settings()
        with_train = bool(flat.pop("train", False))
        unknown = sorted(set(flat) - set(table))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; valid: {sorted(table)}")
        per_section: dict[str, dict[str, Any]] = {name: {} for name in cls.SECTIONS}
        own: dict[str, Any] = {}
        for name, value in flat.items():
            section = table[name][0]
            (own if section is None else per_section[section])[name] = value
        if "game" not in per_section["env"]:
            raise ConfigError("a run needs a game (game='Pong', --game Pong)")
        if per_section["train"]:
            with_train = True
        sections = {
            name: section_cls(**per_section[name])
            for name, section_cls in cls.SECTIONS.items()
            if name != "train" or with_train
        }
        return cls(**sections, **own)

    def replace(self, **flat: Any) -> RunSpec:
        """A copy with some flat settings changed (validated again)."""
        table = self.flat_settings()
        unknown = sorted(set(flat) - set(table))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; valid: {sorted(table)}")
        if "prompt" in flat:
            flat.setdefault("template_sha256", None)  # a new prompt file: its own digest
        changes: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            section = table[name][0]
            if section is None:
                changes[name] = value
            else:
                grouped.setdefault(section, {})[name] = value
        for section, values in grouped.items():
            current = getattr(self, section)
            if current is None:  # the train section of a spec that had none
                current = self.SECTIONS[section]()
            changes[section] = dataclasses.replace(current, **values)
        return dataclasses.replace(self, **changes)

    def get(self, name: str) -> Any:
        """A setting by its flat name."""
        section = self.flat_settings()[name][0]
        return getattr(self if section is None else getattr(self, section), name)

    # --- views ---

    @property
    def game(self) -> str:
        return self.env.game

    def relevant_sections(self) -> tuple[str, ...]:
        """The sections that shape play: a reference agent (random, expert) reads no prompt, sees no
        image and calls no model, so only its env section counts."""
        if self.agent != "vlm":
            return ("env",)
        return tuple(name for name in self.SECTIONS if getattr(self, name) is not None)

    def to_dict(self, roles: frozenset[str] | None = None) -> dict[str, Any]:  # type: ignore[override]
        out = super().to_dict(roles)
        for name in self.SECTIONS:
            section = getattr(self, name)
            out[name] = None if section is None else section.to_dict(roles)
        return out

    def record(self) -> dict[str, Any]:
        """The spec as config.json stores it: versioned, without secrets."""
        return {"format_version": FORMAT_VERSION, **self.to_dict()}

    @classmethod
    def from_record(cls, data: Any, *, where: str = "config.json") -> RunSpec:
        """The spec stored by :meth:`record`.

        Raises:
            ConfigError: another format version, an unknown field, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: the spec is not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"{where}: run spec format {version!r} is not this atari-vlm's ({FORMAT_VERSION}); "
                "it was written by another version: start a new run"
            )
        data = dict(data)
        data.pop("format_version")
        sections: dict[str, Any] = {}
        for name, section_cls in cls.SECTIONS.items():
            raw = data.pop(name, None)
            if raw is None:
                if name == "train":
                    sections[name] = None
                    continue
                raise ConfigError(f"{where}: the spec has no {name!r} section")
            sections[name] = section_cls.from_dict(raw, where=f"{where}: {name}")
        own = cls._own_from_dict(data, where)
        try:
            return cls(**sections, **own)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    @classmethod
    def _own_from_dict(cls, data: Mapping[str, Any], where: str) -> dict[str, Any]:
        known = {name for name, spec, _ in cls.settings() if spec.role != "secret"}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown run setting(s) {unknown}")
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}

    def scored(self) -> dict[str, Any]:
        """The settings that decide what a score measures: ``play`` fields of the relevant sections,
        plus what the agent is. Two runs with equal ``scored()`` may share a results row."""
        full = self.to_dict(frozenset({"play"}))
        return {
            **{k: v for k, v in full.items() if k not in self.SECTIONS},
            **{name: full[name] for name in self.relevant_sections()},
        }

    def fingerprint(self) -> str:
        """A short digest of :meth:`scored`: equal settings, equal fingerprint."""
        return digest(self.scored())

    def env_fingerprint(self) -> str:
        """A digest of the env section's play settings alone: what a reference agent's episodes on
        the same seeds must share with a model's to be its baseline."""
        return digest(self.env.to_dict(frozenset({"play"})))

    def episode_env_seed(self, episode: int) -> int | None:
        """The env seed an episode is played on when the spec lists them (None: derived from ``seed``)."""
        return None if self.env_seeds is None else self.env_seeds[episode]


RunSpec.SECTIONS.update(
    {
        "env": EnvSpec,
        "observation": ObservationSpec,
        "prompt": PromptSpec,
        "decoding": DecodingSpec,
        "model": ModelSpec,
        "train": TrainSpec,
    }
)


def digest(data: Any) -> str:
    """A 12-hex-digit digest of JSON-ready data, independent of key order."""
    text_value = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text_value.encode("utf-8")).hexdigest()[:12]


def _flatten(spec_dict: Mapping[str, Any], sections: Sequence[str]) -> dict[str, Any]:
    out = {k: v for k, v in spec_dict.items() if k not in RunSpec.SECTIONS}
    for name in sections:
        section = spec_dict.get(name)
        if isinstance(section, Mapping):
            for key, value in section.items():
                out[key] = value
    return out


def differences(old: RunSpec, new: RunSpec, roles: frozenset[str]) -> list[tuple[str, Any, Any]]:
    """(flat name, old value, new value) of every setting of ``roles`` that differs, in the sections
    that shape play of either spec."""
    sections = sorted(
        set(old.relevant_sections()) | set(new.relevant_sections()), key=list(RunSpec.SECTIONS).index
    )
    a, b = _flatten(old.to_dict(roles), sections), _flatten(new.to_dict(roles), sections)
    if (old.train is None) != (new.train is None):
        a.setdefault("train", old.train is not None)
        b.setdefault("train", new.train is not None)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def resume_conflicts(recorded: RunSpec, wanted: RunSpec) -> list[tuple[str, Any, Any]]:
    """The settings that forbid finishing ``recorded``'s run under ``wanted``: every play or sample
    setting that differs, except a list of env seeds that only grows (its first seeds kept)."""
    out = []
    for name, old, new in differences(recorded, wanted, BLOCKS_RESUME):
        if name == "env_seeds" and isinstance(old, list) and isinstance(new, list) and new[: len(old)] == old:
            continue
        out.append((name, old, new))
    return out


def value_text(value: Any) -> str:
    """A setting's value as messages show it: none, on/off, 84x84, 0,1,2."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    text_value = str(value)
    return text_value if len(text_value) <= 60 else text_value[:57] + "..."


def describe_differences(diffs: Sequence[tuple[str, Any, Any]]) -> str:
    """ "frame_skip 4 -> 8, prompt basic -> cot" for messages."""
    return ", ".join(f"{name} {value_text(old)} -> {value_text(new)}" for name, old, new in diffs)
