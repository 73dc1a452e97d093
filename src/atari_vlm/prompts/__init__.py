"""Prompts: what the model is told, rendered from template files a user can read and override.

Templates use ``string.Template`` syntax (``${name}``), so braces in game text never break them.
Variables of the system template: ``title``, ``description``, ``action_hints``, ``view``, ``actions``.
Variables of the per-turn template: ``state``, ``feedback``.
"""

from __future__ import annotations

import functools
import string
from importlib import resources
from pathlib import Path

from atari_vlm.errors import ConfigError
from atari_vlm.games import GameInfo
from atari_vlm.prompts.parse import ParsedAction, parse_action

__all__ = [
    "PROMPT_STYLES",
    "ParsedAction",
    "invalid_answer_feedback",
    "parse_action",
    "render_system_prompt",
    "render_turn_prompt",
    "view_phrase",
]

PROMPT_STYLES: tuple[str, ...] = ("basic",)


@functools.lru_cache(maxsize=32)
def _template(name: str) -> string.Template:
    path = resources.files("atari_vlm.prompts") / "templates" / f"{name}.txt"
    return string.Template(path.read_text(encoding="utf-8"))


def _template_for(style_or_path: str) -> string.Template:
    if style_or_path in PROMPT_STYLES:
        return _template(style_or_path)
    path = Path(style_or_path)
    if path.suffix == ".txt" or path.exists():
        try:
            return string.Template(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read prompt file {str(path)!r}: {exc.strerror}") from exc
    raise ConfigError(f"unknown prompt style {style_or_path!r}; choose one of {PROMPT_STYLES} or a .txt file")


def view_phrase(frame_stack: int, layout: str) -> str:
    """How the images are described to the model, so that it reads a grid or a sequence right."""
    if frame_stack == 1:
        return "the current game screen"
    if layout == "grid":
        return (
            f"one image holding the last {frame_stack} screens in a grid, read left to right and top to "
            "bottom, oldest first and the current screen last"
        )
    return f"the last {frame_stack} screens as separate images, oldest first and the current screen last"


def render_system_prompt(
    style: str, info: GameInfo, action_names: list[str], *, frame_stack: int = 1, layout: str = "grid"
) -> str:
    """The system prompt for a game: the goal, what the image shows, the legal actions, the format."""
    actions = "\n".join(f"{i}: {name}" for i, name in enumerate(action_names))
    try:
        text = _template_for(style).substitute(
            title=info.name,
            description=info.description,
            action_hints=info.action_hints,
            view=view_phrase(frame_stack, layout),
            actions=actions,
        )
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"prompt template {style!r} uses an unknown or malformed variable ({exc}); "
            "known: title, description, action_hints, view, actions"
        ) from exc
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def invalid_answer_feedback(fallback: str) -> str:
    return (
        f"Your previous answer did not name a legal action, so {fallback} was played. "
        "End your answer with ACTION: <name>.\n"
    )


def render_turn_prompt(state: str, feedback: str = "") -> str:
    """The text that goes with each turn's image(s)."""
    return _template("turn").substitute(state=state, feedback=feedback)
