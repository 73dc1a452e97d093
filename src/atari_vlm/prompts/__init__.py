"""Prompts: what the model is told, rendered from template files a user can read and override.

Templates use ``string.Template`` syntax (``${name}``), so braces in game text never break them.

System template variables: ``title``, ``description``, ``action_hints``, ``expert_tips``, ``view``,
``actions``, ``answer_instruction``. Turn template variables: ``state``, ``feedback``, ``history``,
``turn_instruction``. A user's own template (``--prompt my.txt``) may use any of the system ones.
"""

from __future__ import annotations

import functools
import string
from importlib import resources
from pathlib import Path

from atari_vlm.errors import ConfigError
from atari_vlm.games import GameInfo
from atari_vlm.prompts.parse import ParsedAction, parse_action
from atari_vlm.spec import MAX_PROMPT_FILE_BYTES, PROMPT_STYLES

__all__ = [
    "ANSWER_FORMATS",
    "DEFAULT_MAX_TOKENS",
    "PROMPT_STYLES",
    "ParsedAction",
    "answer_instruction",
    "invalid_answer_feedback",
    "parse_action",
    "render_system_prompt",
    "render_turn_prompt",
    "reprompt_feedback",
    "view_phrase",
]

ANSWER_FORMATS: tuple[str, ...] = ("line", "json")
# Tokens a style needs to finish its answer: reasoning styles need room to reason before the action.
DEFAULT_MAX_TOKENS: dict[str, int] = {"basic": 32, "cot": 256, "expert": 160, "atari-gpt": 512}
SYSTEM_VARIABLES = "title, description, action_hints, expert_tips, view, actions, answer_instruction"


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
            with open(path, "rb") as f:  # bounded: a device or a huge file must not fill memory
                data = f.read(MAX_PROMPT_FILE_BYTES + 1)
            if len(data) > MAX_PROMPT_FILE_BYTES:
                raise ConfigError(
                    f"prompt file {str(path)!r} is larger than {MAX_PROMPT_FILE_BYTES // 1024} KiB; "
                    "a prompt template is a short text file"
                )
            return string.Template(data.decode("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"cannot read prompt file {str(path)!r}: {reason}") from exc
    raise ConfigError(
        f"unknown prompt style {style_or_path!r}; choose one of {PROMPT_STYLES} or a .txt template file"
    )


def answer_instruction(answer_format: str = "line") -> str:
    """The sentence that tells the model how to give its action (it follows "Then" in templates)."""
    if answer_format == "line":
        return "end your answer with one line: ACTION: <name>"
    if answer_format == "json":
        return 'reply with only a JSON object: {"reasoning": "<one short sentence>", "action": "<name>"}'
    raise ConfigError(f"answer format must be one of {ANSWER_FORMATS}, got {answer_format!r}")


def view_phrase(frame_stack: int, layout: str, state_text: bool = True, screen: bool = True) -> str:
    """How the images (and the state text, when shown) are described to the model, so that it reads a
    grid or a sequence right."""
    if not screen:
        return "a short description of the game state (you do not see the screen)"
    if frame_stack == 1:
        images = "the current game screen"
    elif layout == "grid":
        images = (
            f"one image holding the last {frame_stack} screens in a grid, read left to right and top to "
            "bottom, oldest first and the current screen last"
        )
    else:
        images = (
            f"the last {frame_stack} screens as separate images, oldest first and the current screen last"
        )
    return f"{images} and a short description of the game state" if state_text else images


def render_system_prompt(
    style: str,
    info: GameInfo,
    action_names: list[str],
    *,
    frame_stack: int = 1,
    layout: str = "grid",
    answer_format: str = "line",
    state_text: bool = True,
    screen: bool = True,
) -> str:
    """The system prompt for a game: the goal, what the image shows, the legal actions, the format."""
    actions = "\n".join(f"{i}: {name}" for i, name in enumerate(action_names))
    try:
        text = _template_for(style).substitute(
            title=info.name,
            description=info.description,
            action_hints=info.action_hints,
            expert_tips=info.expert_tips,
            view=view_phrase(frame_stack, layout, state_text, screen),
            actions=actions,
            answer_instruction=answer_instruction(answer_format),
        )
    except ConfigError:
        raise  # an unreadable prompt file says so itself (a ConfigError is a ValueError too)
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"prompt template {style!r} uses an unknown or malformed variable ({exc}); "
            f"known: {SYSTEM_VARIABLES}"
        ) from exc
    return "\n".join(line for line in text.splitlines() if line.strip()) + "\n"


def reprompt_feedback() -> str:
    """What the model is told when its answer named no legal action and it is asked again."""
    return "Your answer did not name a legal action. Answer again, in the required format.\n"


def invalid_answer_feedback(fallback: str) -> str:
    return (
        f"Your previous answer did not name a legal action, so {fallback} was played. "
        "Remember to give your action in the required format.\n"
    )


def render_turn_prompt(state: str, feedback: str = "", history: str = "", answer_format: str = "line") -> str:
    """The text that goes with each turn's image(s); ``state`` "" (state text off) leaves its line out."""
    instruction = answer_instruction(answer_format)
    return _template("turn").substitute(
        state=f"Game state: {state}\n" if state else "",
        feedback=feedback,
        history=history,
        turn_instruction=f"Choose your next action; {instruction}.",
    )
