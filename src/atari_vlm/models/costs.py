"""Dollar costs of completions, a spending limit for a run, and the estimate behind ``--dry-run``.

Costs come from the provider's token counts (``Completion.usage``) and a preset's prices. Image
tokens are part of the input tokens every provider reports, so they are not billed twice. Prompt
tokens read from the provider's cache are billed at its cache-read price and tokens written to it at
its cache-write price, where the preset knows them (else at the input price: never under-stated).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

from atari_vlm.errors import ConfigError
from atari_vlm.models.base import VLM, Completion, Request, Usage
from atari_vlm.models.presets import Preset, Prices

__all__ = [
    "BudgetExceeded",
    "BudgetedVLM",
    "cost_breakdown",
    "cost_usd",
    "estimate_request_usage",
    "estimate_run_cost",
    "with_cost",
]

CHARS_PER_TOKEN = 4
"""Text tokens are estimated at one per 4 characters (English text in the common BPE tokenizers)."""
MIN_IMAGE_TOKENS = 258
"""Tokens counted for any image before a provider has reported usage: the most any of the providers
here charges for a small image (Gemini bills 258 per image up to 384 px; OpenAI's high detail is 255
for one tile, Anthropic's is width x height / 750)."""


def _prices(preset_or_prices: Preset | Prices) -> Prices:
    return preset_or_prices.prices if isinstance(preset_or_prices, Preset) else preset_or_prices


def cost_usd(usage: Usage, preset_or_prices: Preset | Prices) -> float:
    """What ``usage`` costs at the given prices, in USD (cached and written prompt tokens at their rates)."""
    return _prices(preset_or_prices).cost_usd(
        usage.input_tokens, usage.output_tokens, usage.cached_input_tokens, usage.cache_write_tokens
    )


def cost_breakdown(usage: Usage, preset_or_prices: Preset | Prices) -> dict[str, float]:
    """USD of each kind of token: uncached input, cache reads, cache writes, output, and the total.

    ``cache_saving`` is what the cache reads saved against paying the plain input price for them,
    less what the writes cost above it (negative when a write was not repaid by reads).
    """
    prices = _prices(preset_or_prices)
    read_rate, write_rate = prices.cache_read_rate, prices.cache_write_rate
    parts = {
        "uncached_input_usd": usage.uncached_input_tokens * prices.input_per_mtok / 1e6,
        "cache_read_usd": usage.cached_input_tokens * read_rate / 1e6,
        "cache_write_usd": usage.cache_write_tokens * write_rate / 1e6,
        "output_usd": usage.output_tokens * prices.output_per_mtok / 1e6,
    }
    parts["total_usd"] = sum(parts.values())
    parts["cache_saving_usd"] = (
        usage.cached_input_tokens * (prices.input_per_mtok - read_rate)
        - usage.cache_write_tokens * (write_rate - prices.input_per_mtok)
    ) / 1e6
    return parts


def estimate_request_usage(request: Request) -> Usage:
    """A deliberately high guess of a request's usage before any provider has counted one.

    Text at :data:`CHARS_PER_TOKEN`, each image at ``max(MIN_IMAGE_TOKENS, h * w / 750)`` and the
    whole ``max_tokens`` as output: it only has to keep the first call of a budgeted run from
    starting when the budget cannot pay for it.
    """
    chars = sum(len(m.joined_text) for m in request.messages)
    image_tokens = 0
    for message in request.messages:
        for image in message.images:
            height, width = image.pixels.shape[:2]
            image_tokens += max(MIN_IMAGE_TOKENS, math.ceil(height * width / 750))
    return Usage(
        input_tokens=math.ceil(chars / CHARS_PER_TOKEN) + image_tokens,
        output_tokens=request.max_tokens,
        image_tokens=image_tokens,
    )


def estimate_run_cost(one_completion_usage: Usage, decisions: int, prices: Preset | Prices) -> float:
    """A run's cost in USD, from the usage of one measured decision times the number of decisions."""
    if decisions < 0:
        raise ConfigError(f"decisions must be >= 0, got {decisions}")
    return cost_usd(one_completion_usage, prices) * decisions


def with_cost(completion: Completion, usd: float | None) -> Completion:
    """``completion`` carrying its dollar cost, once :class:`Completion` has a ``cost_usd`` field."""
    if "cost_usd" in {f.name for f in dataclasses.fields(completion)}:
        return dataclasses.replace(completion, cost_usd=usd)
    return completion


class BudgetExceeded(RuntimeError):
    """The next call could take spending past the limit, so it was not made.

    Its message is read from the budget when it is shown, not when it was raised: by then the calls
    that were in flight have ended (the other games of the run are stopped first), so it says what
    was spent in all, the figure summary.json records as ``spent_usd``.
    """

    def __init__(
        self, spent_usd: float, limit_usd: float, next_call_usd: float, budget: BudgetedVLM | None = None
    ) -> None:
        super().__init__(spent_usd, limit_usd, next_call_usd)
        self.spent_usd = spent_usd  # when the call was refused
        self.limit_usd = limit_usd
        self.next_call_usd = next_call_usd
        self._budget = budget

    def __str__(self) -> str:
        if self._budget is not None:
            return self._budget.stop_message(self)
        return (
            f"stopped before spending more: ${self.spent_usd:.4f} spent of the ${self.limit_usd:.4f} limit "
            f"(--max-cost), and the next call could cost up to ${self.next_call_usd:.4f}"
        )


class BudgetedVLM:
    """A VLM wrapper that prices every completion and refuses calls the budget cannot pay for.

    Before each call it reserves the call's expected cost (the dearest call so far, or
    :func:`estimate_request_usage` before the first) and raises :class:`BudgetExceeded` if spent
    plus reserved would pass ``max_cost_usd``; reservations of calls in flight count too, so
    concurrent calls cannot all slip under the limit together. Spending can pass the limit only by
    what calls cost beyond their reservation: with one call at a time, by less than that call's
    cost; with N in flight, by what those N cost beyond what they reserved. ``max_cost_usd=None`` only
    counts; ``prices=None`` (unknown, e.g. a custom server) leaves completions' cost at None.
    Failed calls cost nothing here (providers do not bill errors); a call cancelled in flight (the
    other games of a run the budget stopped) is counted at its reservation, since a provider bills
    an answer it had started (``cancelled_calls``, ``cancelled_usd``).
    """

    def __init__(self, inner: VLM, max_cost_usd: float | None, prices: Preset | Prices | None) -> None:
        if max_cost_usd is not None and not max_cost_usd >= 0:
            raise ConfigError(f"--max-cost must be >= 0 USD, got {max_cost_usd}")
        if prices is None and max_cost_usd is not None:
            raise ConfigError(
                f"no price is known for model {inner.name!r}, so --max-cost cannot be enforced; "
                "use a preset with a price (see `atari-vlm models`)"
            )
        self.inner = inner
        self.name = inner.name
        self.max_cost_usd = max_cost_usd
        self.prices = None if prices is None else _prices(prices)
        self.spent_usd = 0.0
        self.calls = 0
        self.max_call_usd = 0.0
        self.cancelled_calls = 0
        self.cancelled_usd = 0.0
        self._reserved_usd = 0.0

    def __repr__(self) -> str:
        return (
            f"BudgetedVLM({self.inner!r}, max_cost_usd={self.max_cost_usd}, spent_usd={self.spent_usd:.6f})"
        )

    def __getattr__(self, name: str) -> Any:
        # Everything else (batch sizes, model paths) is the inner model's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def next_call_usd(self, request: Request) -> float:
        """The cost reserved for ``request``: the dearest call so far, else an estimate of this one."""
        if self.prices is None:
            return 0.0
        if self.calls:
            return self.max_call_usd
        return cost_usd(estimate_request_usage(request), self.prices)

    async def generate(self, request: Request) -> Completion:
        reserve = self.next_call_usd(request)
        # No await between the check and the reservation: concurrent calls see each other's.
        limit = self.max_cost_usd
        if limit is not None and self.spent_usd + self._reserved_usd + reserve > limit:
            raise BudgetExceeded(self.spent_usd, limit, reserve, self)
        self._reserved_usd += reserve
        try:
            completion = await self.inner.generate(request)
        except asyncio.CancelledError:
            self.cancelled_calls += 1
            self.cancelled_usd += reserve
            self.spent_usd += reserve
            raise
        finally:
            self._reserved_usd -= reserve
        self.calls += 1
        if self.prices is None:
            return with_cost(completion, None)
        usd = cost_usd(completion.usage, self.prices)
        self.spent_usd += usd
        self.max_call_usd = max(self.max_call_usd, usd)
        return with_cost(completion, usd)

    def stop_message(self, stop: BudgetExceeded) -> str:
        """Why a run stopped, with what is spent now (``spent_usd``): shown once every call has ended,
        the figure summary.json records, cancelled calls included."""
        cancelled = ""
        if self.cancelled_calls:
            cancelled = (
                f", of which ${self.cancelled_usd:.4f} for {self.cancelled_calls} call"
                f"{'s' if self.cancelled_calls != 1 else ''} cancelled in flight (at their estimated cost)"
            )
        return (
            f"stopped before spending more: ${self.spent_usd:.4f} spent{cancelled} of the "
            f"${stop.limit_usd:.4f} limit (--max-cost), and the next call could cost up to "
            f"${stop.next_call_usd:.4f}"
        )

    async def aclose(self) -> None:
        await self.inner.aclose()
