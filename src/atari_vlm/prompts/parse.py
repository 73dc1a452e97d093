"""Turn a model's free-form answer into a legal action, or say that it holds none.

Models write "ACTION: UP", "action: 2", "**Action:** Move Up", ``{"action": "UP"}``, or reason
about several actions before deciding ("Do not FIRE now; move LEFT."). The rules, in order:

1. A JSON object with an ``action`` key decides (the last such object, if several): its value is the
   action, whatever the rest of the text says; an illegal value makes the answer unparsable.
2. The last ``ACTION: X`` line that names a legal action (by name, in any case or spacing, after
   verbs such as "move" or "press", or by number).
3. An answer that is only an action name or number.
4. Exactly one distinct legal action named in capitals and not negated ("not", "don't", "avoid",
   "instead of" ... within the few words before it, in the same clause).

Anything else is unparsable, and the caller falls back (and counts it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# "ACTION: UP", "**Action:** up", "action = 2", and the JSON answer format's "action": "UP".
_ACTION_LINE = re.compile(r"\baction[\"']?\s*[:=\-]\s*[*\"'`]*\s*([A-Za-z0-9_ \-]{1,40})", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+")
# Words that may come before the action's name on an action line: "Move Up", "press the FIRE button".
_FILLER = frozenset({"MOVE", "GO", "PRESS", "PUSH", "HOLD", "CHOOSE", "SELECT", "PLAY", "TAKE", "USE", "THE"})
# A mention is negated by one of these among the few words before it in its clause.
_NEGATIONS = frozenset(
    {"NOT", "DON'T", "DONT", "NEVER", "AVOID", "NO", "WITHOUT", "INSTEAD", "RATHER", "STOP", "NOR"}
    | {"SHOULDN'T", "WON'T", "CAN'T", "CANNOT", "MUSTN'T", "ISN'T", "WOULDN'T", "DOESN'T"}
)
_NEGATION_WINDOW = 3  # words
_CLAUSE = re.compile(r"[.,;:!?\n()]")
_MAX_JSON_STARTS = 64  # "{" positions tried as the start of a JSON object, bounding the work


@dataclass(frozen=True)
class ParsedAction:
    index: int | None  # None when no legal action was found
    how: str  # "json", "action_line", "bare", "mention" or "none"


def _is_number(token: str) -> bool:
    """ASCII digits only: "²".isdigit() is True in Python, and int("²") raises."""
    return token.isascii() and token.isdigit() and len(token) <= 6


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-*`'\".]", "", text).upper()


def _legal_number(token: str, names: list[str]) -> int | None:
    """The action numbered ``token``, if there is one (numbers run from 0 to len(names) - 1)."""
    index = int(token)
    return index if index < len(names) else None


def _match(candidate: str, names: list[str]) -> int | None:
    """Index of the action that ``candidate`` spells, by name (any case/spacing) or number."""
    token = _norm(candidate)
    if _is_number(token):
        return _legal_number(token, names)
    lookup = {_norm(name): i for i, name in enumerate(names)}
    if token in lookup:
        return lookup[token]
    # "Move Up", "UP then fire" or "UP." after the name: the longest run of words, after any leading
    # verbs, that spells a name.
    words = _WORD.findall(candidate)
    while words and words[0].upper() in _FILLER:
        words = words[1:]
    for end in range(len(words), 0, -1):
        key = _norm("".join(words[:end]))
        if key in lookup:
            return lookup[key]
        if _is_number(key):
            return _legal_number(key, names)
    return None


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects in ``text`` (in code fences or not), outermost ones only, in order."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    position, tries = 0, 0
    while tries < _MAX_JSON_STARTS and (start := text.find("{", position)) != -1:
        tries += 1
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            position = start + 1
            continue
        if isinstance(value, dict):
            found.append(value)
        position = end
    return found


def _json_action(text: str, names: list[str]) -> ParsedAction | None:
    """The answer's JSON ``action``, if it has one (None: no JSON object with that key)."""
    for obj in reversed(_json_objects(text)):
        key = next((k for k in obj if isinstance(k, str) and k.strip().lower() == "action"), None)
        if key is None:
            continue
        value = obj[key]
        index = None
        if isinstance(value, str) and len(value) <= 40:
            index = _match(value, names)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            index = _legal_number(str(value), names) if _is_number(str(value)) else None
        return ParsedAction(index, "json" if index is not None else "none")
    return None


def _mentions(text: str, lookup: dict[str, int]) -> set[int]:
    """Actions named in capitals ("wrap up" is not the action UP) and not negated before, in their clause."""
    mentioned = set()
    for clause in _CLAUSE.split(text):
        words = _WORD.findall(clause)
        for i, word in enumerate(words):
            if not (word.isupper() and word in lookup):
                continue
            before = {w.upper() for w in words[max(0, i - _NEGATION_WINDOW) : i]}
            if not before & _NEGATIONS:
                mentioned.add(lookup[word])
    return mentioned


def parse_action(text: str, action_names: list[str]) -> ParsedAction:
    """Find the action a model chose. Never raises, whatever the text holds."""
    if not isinstance(text, str) or not text:
        return ParsedAction(None, "none")
    text = text[-20_000:]  # the decision is at the end; bound the work on huge answers
    if (from_json := _json_action(text, action_names)) is not None:
        return from_json
    for candidate in reversed(_ACTION_LINE.findall(text)):
        index = _match(candidate, action_names)
        if index is not None:
            return ParsedAction(index, "action_line")
    bare = text.strip().strip(".!*`'\"")
    if len(bare) <= 40 and _norm(bare):
        norm = _norm(bare)
        if norm in {_norm(n) for n in action_names} or _is_number(norm):
            index = _match(bare, action_names)
            if index is not None:
                return ParsedAction(index, "bare")
    lookup = {_norm(name): i for i, name in enumerate(action_names)}
    mentioned = _mentions(text, lookup)
    if len(mentioned) == 1:
        return ParsedAction(mentioned.pop(), "mention")
    return ParsedAction(None, "none")
