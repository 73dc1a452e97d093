"""Constrained decisions on hosted APIs and servers: the shapes that restrict an answer to the legal
actions, and reading the pick (and, where a provider returns log-probabilities, every legal action's
probability) back out of the answer.

Each backend sends the field its provider documents (OpenAI's strict ``json_schema``, vLLM's
``structured_outputs``, SGLang's ``regex``, llama.cpp's ``grammar`` / ``json_schema``, Anthropic's
forced tool, Gemini's ``text/x.enum``); the shapes are built here once. Nothing here trusts the
answer: the pick is only returned when it is a string of bounded length, and the agent still checks
that it is legal (a server may ignore the constraint).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from atari_vlm.errors import ModelError

__all__ = [
    "MAX_CHOICE_CHARS",
    "TOOL_NAME",
    "ConstraintRejected",
    "choice_gbnf",
    "choice_probs_from_logprobs",
    "choice_regex",
    "choice_schema",
    "read_choice",
    "read_tool_input",
]

TOOL_NAME = "choose_action"
MAX_CHOICE_CHARS = 64
MAX_REASONING_CHARS = 2000


class ConstraintRejected(ModelError):
    """A server answered a constrained request with a 4xx: it does not take the constraint field."""


def choice_schema(choices: Sequence[str], reasoning: bool) -> dict[str, Any]:
    """A JSON schema whose ``action`` is one of ``choices``; with ``reasoning``, a ``reasoning`` string
    comes first (the answer reasons before it commits). Strict-mode ready: every property required,
    no others allowed."""
    properties: dict[str, Any] = {}
    if reasoning:
        properties["reasoning"] = {"type": "string", "description": "Brief reasoning before the choice."}
    properties["action"] = {"type": "string", "enum": list(choices)}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def choice_regex(choices: Sequence[str]) -> str:
    """A regular expression matching exactly one of ``choices`` (longest first, so none shadows)."""
    return "(" + "|".join(re.escape(c) for c in sorted(choices, key=len, reverse=True)) + ")"


def choice_gbnf(choices: Sequence[str]) -> str:
    """A GBNF grammar (llama.cpp) whose only sentences are ``choices``."""
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def read_choice(text: str, *, as_json: bool) -> str | None:
    """The pick in a constrained answer: the whole text (choice, regex and grammar modes) or the
    ``action`` of its JSON object. None when the answer has no usable pick (the agent falls back)."""
    if as_json:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None
        pick = value.get("action") if isinstance(value, dict) else None
    else:
        pick = text.strip()
    if not isinstance(pick, str) or not pick or len(pick) > MAX_CHOICE_CHARS:
        return None
    return pick


def read_tool_input(value: Any) -> tuple[str | None, str]:
    """(pick, text) of a forced tool call's input: the ``action`` and a readable rendering."""
    if not isinstance(value, dict):
        return None, ""
    pick = value.get("action")
    reasoning = value.get("reasoning")
    text_parts = []
    if isinstance(reasoning, str):
        text_parts.append(reasoning[:MAX_REASONING_CHARS])
    if isinstance(pick, str) and pick and len(pick) <= MAX_CHOICE_CHARS:
        text_parts.append(f"ACTION: {pick}")
        return pick, "\n".join(text_parts)
    return None, "\n".join(text_parts)


def choice_probs_from_logprobs(
    tokens: Sequence[tuple[str, Sequence[tuple[str, float]]]], text: str, start: int, choices: Sequence[str]
) -> dict[str, float] | None:
    """Every legal choice's probability from the top log-probabilities at the token where the pick
    begins (``start``: its character offset in ``text``), renormalized over the choices.

    ``tokens``: (token text, [(alternative token text, log-probability), ...]) in output order. Only
    answered when it is unambiguous: the pick must begin exactly at a token boundary, and each
    alternative token must be the start of exactly one legal choice (``RIGHT`` as a first token could
    begin RIGHT or RIGHTFIRE: then nothing is claimed). Choices no alternative begins get 0.
    """
    offset = 0
    for token, alternatives in tokens:
        if offset == start:
            mass: dict[str, float] = dict.fromkeys(choices, 0.0)
            for alt, logprob in alternatives:
                if (
                    not isinstance(alt, str)
                    or not isinstance(logprob, (int, float))
                    or not math.isfinite(logprob)
                ):
                    continue
                alt = alt.strip()
                if not alt:
                    continue
                starting = [c for c in choices if c.startswith(alt)]
                if len(starting) > 1:
                    return None  # this first token begins several choices
                if len(starting) == 1:
                    mass[starting[0]] += math.exp(logprob)
            total = sum(mass.values())
            if total <= 0:
                return None
            return {c: m / total for c, m in mass.items()}
        if offset > start:
            return None
        offset += len(token)
    return None
