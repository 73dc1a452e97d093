"""Turn a model's free-form answer into a legal action, or say that it holds none.

Models write "ACTION: UP", "action: 2", "**Action:** Move Up", ``{"action": "UP"}``, or reason
about several actions before deciding. The rule: the last ``ACTION: X`` line wins; without one, an
answer that is only an action name or number counts; otherwise exactly one distinct legal action
named in the text counts. Anything else is unparsable, and the caller falls back (and counts it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# "ACTION: UP", "**Action:** up", "action = 2", and the JSON answer format's "action": "UP".
_ACTION_LINE = re.compile(r"action[\"']?\s*[:=\-]\s*[*\"'`]*\s*([A-Za-z0-9_ \-]{1,40})", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+|\d+")


@dataclass(frozen=True)
class ParsedAction:
    index: int | None  # None when no legal action was found
    how: str  # "action_line", "bare", "mention" or "none"


def _is_number(token: str) -> bool:
    """ASCII digits only: "²".isdigit() is True in Python, and int("²") raises."""
    return token.isascii() and token.isdigit() and len(token) <= 6


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-*`'\".]", "", text).upper()


def _match(candidate: str, names: list[str]) -> int | None:
    """Index of the action that ``candidate`` spells, by name (any case/spacing) or number."""
    token = _norm(candidate)
    if _is_number(token):
        index = int(token)
        return index if index < len(names) else None
    lookup = {_norm(name): i for i, name in enumerate(names)}
    if token in lookup:
        return lookup[token]
    # "UP then fire" or "UP." after the name: try the longest prefix of words that spells a name.
    words = _WORD.findall(candidate)
    for end in range(len(words), 0, -1):
        key = _norm("".join(words[:end]))
        if key in lookup:
            return lookup[key]
        if _is_number(key):
            index = int(key)
            return index if index < len(names) else None
    return None


def parse_action(text: str, action_names: list[str]) -> ParsedAction:
    """Find the action a model chose. Never raises, whatever the text holds."""
    if not isinstance(text, str) or not text:
        return ParsedAction(None, "none")
    text = text[-20_000:]  # the decision is at the end; bound the work on huge answers
    for candidate in reversed(_ACTION_LINE.findall(text)):
        index = _match(candidate, action_names)
        if index is not None:
            return ParsedAction(index, "action_line")
    bare = text.strip().strip(".!*`'\"")
    if len(bare) <= 40:
        index = _match(bare, action_names) if _norm(bare) else None
        if index is not None and (_norm(bare) in {_norm(n) for n in action_names} or _is_number(_norm(bare))):
            return ParsedAction(index, "bare")
    lookup = {_norm(name): i for i, name in enumerate(action_names)}
    # Only words written in capitals count as mentions: "wrap up" is not the action UP.
    mentioned = {lookup[w] for w in _WORD.findall(text) if w.isupper() and w in lookup}
    if len(mentioned) == 1:
        return ParsedAction(mentioned.pop(), "mention")
    return ParsedAction(None, "none")
