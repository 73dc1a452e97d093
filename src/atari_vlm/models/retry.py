"""One retry policy for every remote provider: bounded exponential backoff with full jitter.

Providers differ only in which failures are worth retrying, so each passes a *classifier* that maps
an exception to :class:`Transient` (retry), :class:`~atari_vlm.errors.ModelError` (fatal: raise it
now) or ``None`` (not a provider failure: a bug, re-raised untouched). Provider SDKs' own retries
must be off, or the two policies multiply.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

from atari_vlm.errors import ConfigError, ModelError
from atari_vlm.spec import RETRY_AFTER_CAP_S, ModelSpec

__all__ = [
    "RETRY_AFTER_CAP_S",
    "RETRY_S",
    "RETRY_STATUSES",
    "Classifier",
    "RetryPolicy",
    "Sleep",
    "Transient",
    "classify_status",
    "clip",
    "describe_transport_error",
    "parse_retry_after",
    "redact",
    "with_retries",
]

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Transient:
    """A failure that may pass if the same request is sent again, and why."""

    reason: str
    retry_after_s: float | None = None
    """What the server asked us to wait (Retry-After), if it said."""
    rate_limited: bool = False
    """A 429: the provider wants fewer requests, so every caller of the model backs off (SharedBackoff)."""


class SharedBackoff:
    """One pause shared by every request to a model: when the provider says 429, the other games'
    requests wait out the same backoff instead of each hitting the limit again on its own."""

    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic() before which no request is sent
        self.holds = 0  # how many times a 429 paused everyone (for tests and logs)

    def hold(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + seconds)
        self.holds += 1

    async def wait(self, sleep: Sleep) -> None:
        delay = self.until - time.monotonic()
        if delay > 0:
            await sleep(delay)


Classifier = Callable[[Exception], "Transient | ModelError | None"]


RETRY_S: float = ModelSpec.__dataclass_fields__["retry_s"].default
"""How long one model call may keep retrying transient failures by default (the run spec's
``retry_s``): long enough to ride out a short outage, short enough that a dead server ends the run."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how patiently to retry transient failures.

    A call is retried until ``retry_s`` seconds have passed since its first try (attempts included,
    so a server that never answers gives up after about ``retry_s`` plus one timeout), or after
    ``max_retries`` retries where that is set. Waits are exponential with full jitter, capped at
    ``backoff_max_s``; a server's Retry-After wins, capped at ``retry_after_cap_s``; no wait goes past
    the retry time left.
    """

    max_retries: int | None = None
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_s: float = RETRY_S
    retry_after_cap_s: float = RETRY_AFTER_CAP_S

    def __post_init__(self) -> None:
        if self.max_retries is not None and (isinstance(self.max_retries, bool) or self.max_retries < 0):
            raise ConfigError(f"max_retries must be >= 0 (None: bounded by retry_s), got {self.max_retries}")
        times = (self.backoff_base_s, self.backoff_max_s, self.retry_s, self.retry_after_cap_s)
        if not all(isinstance(t, (int, float)) and math.isfinite(t) and t >= 0 for t in times):
            raise ConfigError(
                f"backoff and retry times must be finite and >= 0, got base={self.backoff_base_s} "
                f"max={self.backoff_max_s} retry_s={self.retry_s} retry_after_cap={self.retry_after_cap_s}"
            )

    def delay_s(self, retry: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        A server's Retry-After wins (it knows its own rate window) but is capped at
        ``retry_after_cap_s`` so that a hostile or buggy header cannot stall a run; a negative or
        non-finite one is ignored. Otherwise full jitter, which spreads many clients that failed
        together instead of retrying them in lockstep.
        """
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s >= 0:
            return min(retry_after_s, self.retry_after_cap_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** min(retry, 62))
        return rng.uniform(0.0, ceiling)

    def describe(self) -> str:
        """The policy in a few words, for the give-up line."""
        n = self.max_retries
        retries = "" if n is None else f", at most {n} retr{'y' if n == 1 else 'ies'}"
        return f"retry time {self.retry_s:g} s{retries}"


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None if absent,
    negative or not a number or date (the caller then backs off on its own)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        try:
            return max(when.timestamp() - now(), 0.0)
        except (OverflowError, ValueError, OSError):
            return None
    return value if math.isfinite(value) and value >= 0 else None


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    classify: Classifier,
    policy: RetryPolicy,
    rng: random.Random,
    sleep: Sleep = asyncio.sleep,
    what: str = "request",
    gate: SharedBackoff | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds; return its result and how many retries it took.

    Raises the classifier's :class:`ModelError` at once for fatal failures, and, once the policy's
    retry time (or retry count) is spent, a :class:`ModelError` in one line: how many attempts over
    how long, and the last failure. ModelErrors are raised ``from None``: provider exceptions carry
    request objects (headers with credentials) that must not travel up in ``__cause__``.
    ``clock``/``sleep``: injected by tests, so that no test waits.
    """
    retry = 0
    started = clock()
    slept = False  # a request that just waited out its own backoff does not wait on the gate again
    while True:
        if gate is not None and not slept:
            await gate.wait(sleep)
        slept = False
        try:
            return await attempt(), retry
        except Exception as exc:
            verdict = classify(exc)
            if verdict is None:
                raise
            if isinstance(verdict, ModelError):
                raise verdict from None
            elapsed = max(clock() - started, 0.0)
            left = policy.retry_s - elapsed
            if left <= 0 or (policy.max_retries is not None and retry >= policy.max_retries):
                tries = retry + 1
                raise ModelError(
                    f"gave up on {what} after {tries} attempt{'s' if tries != 1 else ''} over "
                    f"{elapsed:.1f} s ({policy.describe()}); last error: {verdict.reason}"
                ) from None
            delay = min(policy.delay_s(retry, rng, verdict.retry_after_s), left)
            if gate is not None and verdict.rate_limited:
                gate.hold(delay)
            await sleep(delay)
            slept = True
            retry += 1


# -- shared failure classification -------------------------------------------------------------------
# Every HTTP provider maps a status code to "retry" or "stop and say what to fix" the same way; only
# how a status, a server message and a Retry-After are read out of an SDK's exception differs.

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
"""Statuses worth retrying: timeouts, rate limits, server errors, and Anthropic's 529 "overloaded"."""

SERVER_MESSAGE_CHARS = 300


def clip(text: str, limit: int = SERVER_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters: a server's error page must not flood a log line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret of 4+ characters replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def classify_status(
    status: int,
    *,
    where: str,
    model: str,
    server_says: str,
    key_hint: str,
    retry_after_s: float | None = None,
    label: str | None = None,
) -> Transient | ModelError:
    """The verdict on an HTTP error status, with a message that says what to fix.

    ``where`` names the endpoint ("the Anthropic API at https://..."), ``key_hint`` says where the key
    came from, ``label`` how the status is shown when the provider's own code differs from ``status``
    (Gemini answers a bad key with 400). The server's text is left out of key errors: some servers
    echo the (masked) key.
    """
    shown = label or f"HTTP {status}"
    if status in RETRY_STATUSES:
        return Transient(f"{shown}: {clip(server_says)}", retry_after_s, rate_limited=status == 429)
    if status in (401, 403):
        return ModelError(
            f"{where} rejected the API key ({shown}); {key_hint}, and that it may use model {model!r}"
        )
    if status == 404:
        return ModelError(
            f"model {model!r} was not found at {where} ({shown}: {clip(server_says)}); check the model "
            "name (`atari-vlm models` lists the presets; retired models answer 404)"
        )
    if status in (400, 413, 422):
        return ModelError(f"{where} refused the request as bad ({shown}): {clip(server_says)}")
    return ModelError(f"{where} answered {shown}: {clip(server_says)}")


# -- transport failures, named ------------------------------------------------------------------------
# The SDKs wrap what went wrong in their own exceptions (the openai SDK on aiohttp reports a refused
# connection as a *timeout*), so the cause chain is read down to the operating system's own error.


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _endpoint(base_url: str) -> str:
    parsed = urlparse(base_url)
    host = parsed.hostname or base_url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{host}:{port}"


def describe_transport_error(exc: BaseException, *, base_url: str, timeout_s: float) -> str:
    """What happened to a request that got no HTTP answer: connection refused, DNS failure, TLS
    failure, a dropped connection, or a timeout; named from the root cause, not the SDK's wrapper."""
    chain = list(_chain(exc))
    where = _endpoint(base_url)
    host = where.rsplit(":", 1)[0]
    names = [type(e).__name__ for e in chain]
    if any(isinstance(e, socket.gaierror) for e in chain) or any("DNS" in n for n in names):
        return f"DNS lookup failed for {host} (is the host name in the base URL right?)"
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None or any("SSL" in n or "Certificate" in n for n in names):
        reason = getattr(tls, "reason", None) or (str(tls) if tls else names[0])
        return (
            f"TLS failure talking to {where} ({clip(str(reason), 120)}); an http:// server behind an "
            "https:// base URL, or a certificate this machine does not trust"
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"connection refused by {where} (is the server running and listening there?)"
    if any(
        isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) for e in chain
    ) or any(n in ("RemoteProtocolError", "ServerDisconnectedError", "ClientPayloadError") for n in names):
        return f"connection to {where} dropped before a whole answer came back"
    if any(
        isinstance(e, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(e).__name__ for e in chain
    ):
        return f"no answer from {where} within timeout_s={timeout_s}"
    root = chain[-1]
    return f"connection error talking to {where}: {type(root).__name__}: {clip(str(root), 200)}"
