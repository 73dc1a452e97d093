"""Token counts from a server checked against atari-vlm's own count of the request.

A budget (``--max-cost``) is only as good as the usage it is fed, and a server's usage is untrusted
input: missing, zero, negative, a string, or far from what the request can have cost. Such usage is
replaced by :func:`expected_usage` (text at 4 characters a token, images by the provider's formula,
the answer's text plus the reasoning allowance as output) and the completion says so
(``Completion.usage_estimated``).
"""

from __future__ import annotations

import math
from typing import Any

from atari_vlm.models.base import Request, Usage

__all__ = ["CHARS_PER_TOKEN", "TOLERANCE", "checked_usage", "expected_usage", "image_tokens", "read_count"]

CHARS_PER_TOKEN = 4
"""Text tokens are estimated at one per 4 characters (English text in the common BPE tokenizers)."""
TOLERANCE = 4.0
"""Reported input down to the estimate over this factor is believed (tokenizers and image formulas
differ by less); below it, the usage would under-state the bill and the estimate is used."""
MAX_INPUT_TOKENS = 2_000_000
"""More input than this in one call is no real count (no model here takes a longer context). Above
the estimate, reported usage is otherwise believed: a provider bills what it reports, and some count
far more than the formula for the same price (gpt-4o-mini: 2833 + 5667 tokens per image tile)."""
SLACK_TOKENS = 2048
"""Output tokens a provider may report above the answer limit (a tool call's wrapping)."""


def read_count(value: Any) -> int | None:
    """A token count as a server sent it: a non-negative int, else None (missing, bool, float, str)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def image_tokens(provider: str, height: int, width: int, detail: str = "auto") -> int:
    """Input tokens of one image by the provider's documented formula.

    OpenAI (tile models, the Images and vision guide's "Calculating costs"): ``low`` 85; otherwise fit
    in 2048 px, shortest side 768 px, 85 + 170 per 512 px tile (``benchmarks/image_cost.py``).
    Anthropic: width x height / 750 after fitting the long side in 1568 px. Gemini: 258 for an image
    up to 384 px on both sides, else 258 per 768 px tile.
    """
    if provider == "anthropic":
        scale = min(1.0, 1568 / max(height, width))
        return max(1, math.ceil(height * scale * width * scale / 750))
    if provider == "gemini":
        if height <= 384 and width <= 384:
            return 258
        return 258 * math.ceil(height / 768) * math.ceil(width / 768)
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(height, width))
    h, w = height * scale, width * scale
    scale = min(1.0, 768 / min(h, w))
    return 85 + 170 * math.ceil(h * scale / 512) * math.ceil(w * scale / 512)


def expected_usage(
    request: Request, answer: str, *, provider: str, detail: str = "auto", reasoning_tokens: int = 0
) -> Usage:
    """atari-vlm's own count of what ``request`` and its ``answer`` cost, in tokens."""
    chars = sum(len(m.joined_text) for m in request.messages)
    images = sum(
        image_tokens(provider, *image.pixels.shape[:2], detail)
        for message in request.messages
        for image in message.images
    )
    output = math.ceil(len(answer) / CHARS_PER_TOKEN) + reasoning_tokens
    return Usage(
        input_tokens=math.ceil(chars / CHARS_PER_TOKEN) + images,
        output_tokens=output,
        image_tokens=images,
    )


def checked_usage(reported: Usage, expected: Usage, *, answer: str, answer_limit: int) -> tuple[Usage, bool]:
    """``reported`` if it is believable, else ``expected``; and whether the estimate was used.

    Believable: every count a non-negative int, input at least the estimate over :data:`TOLERANCE`
    and at most :data:`MAX_INPUT_TOKENS`, cached and written tokens within the input, and output at
    least a :data:`TOLERANCE`-th of the ``answer`` text's own count and at most
    ``TOLERANCE x answer_limit`` (plus the slack).
    """
    counts = (
        reported.input_tokens,
        reported.output_tokens,
        reported.cached_input_tokens,
        reported.cache_write_tokens,
        reported.reasoning_tokens,
    )
    if any(read_count(c) is None for c in counts):
        return expected, True
    low_in = expected.input_tokens / TOLERANCE
    high_in = MAX_INPUT_TOKENS
    text_out = math.ceil(len(answer) / CHARS_PER_TOKEN)  # the visible answer alone (no thinking)
    believable = (
        low_in <= reported.input_tokens <= high_in
        and reported.cached_input_tokens + reported.cache_write_tokens <= reported.input_tokens
        and reported.output_tokens * TOLERANCE >= min(text_out, answer_limit)
        and reported.output_tokens <= answer_limit * TOLERANCE + SLACK_TOKENS
        and reported.reasoning_tokens <= reported.output_tokens
    )
    return (reported, False) if believable else (expected, True)
