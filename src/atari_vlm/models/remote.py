"""What every hosted-API backend shares: settings, the key, bounded concurrency, retries, redaction.

A provider backend (:mod:`~atari_vlm.models.anthropic_backend`, :mod:`~atari_vlm.models.gemini_backend`)
only says how a :class:`~atari_vlm.models.base.Request` becomes its SDK call, how the SDK's answer
becomes text and usage, and how the SDK's exceptions read (status, message, Retry-After). The retry
loop, the wall-clock latency, the concurrency bound, keeping the key out of every message, the base
URL (explicit, else the SDK's own variable, else the provider's API), the model's capability entry
(:mod:`~atari_vlm.models.capabilities`) and the reasoning level live here once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from atari_vlm import imaging
from atari_vlm.errors import ConfigError, ModelError
from atari_vlm.models.base import (
    REASONING_LEVELS,
    Completion,
    ImagePart,
    Message,
    ReasoningLevel,
    Request,
    Usage,
)
from atari_vlm.models.capabilities import Capability, capability_for, reasoning_allowance
from atari_vlm.models.constrain import ConstraintRejected
from atari_vlm.models.endpoints import BASE_URL_ENV_VARS, safe_url, validate_base_url
from atari_vlm.models.retry import (
    RETRY_S,
    RetryPolicy,
    SharedBackoff,
    Sleep,
    Transient,
    clip,
    describe_transport_error,
    redact,
    with_retries,
)
from atari_vlm.models.transport import BodyTooLarge, cut_answer
from atari_vlm.models.usage_check import checked_usage, expected_usage
from atari_vlm.urls import split_query

__all__ = ["MalformedResponse", "Parsed", "RemoteVLM", "resolve_key"]

log = logging.getLogger(__name__)
REJECTION_STATUSES = frozenset({400, 422})
"""What a server answers a field it does not take (FastAPI-based servers: 422)."""


class MalformedResponse(Exception):
    """A 200 whose body is not a usable answer (a proxy's HTML page, a cut-off body): retried."""


class DeadlineExceeded(Exception):
    """One attempt took longer than ``timeout_s`` in all (connect, first byte and whole body)."""


MALFORMED = (MalformedResponse, BodyTooLarge, UnicodeDecodeError, json.JSONDecodeError)
"""What an answer that came back but cannot be used raises (retried, never a traceback)."""
PARSE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)
"""What reading a body of the wrong shape raises (``{"message": null}``, a string for a choice):
turned into :class:`MalformedResponse` where the body is read."""


@dataclass(frozen=True)
class Parsed:
    """The parts of a provider's answer that become a :class:`Completion`."""

    text: str
    usage: Usage
    model: str
    finish_reason: str
    choice: str | None = None  # the constrained pick, read from the answer
    choice_probs: dict[str, float] | None = None  # each legal choice's probability, where returned


def resolve_key(api_key: str | None, env_vars: tuple[str, ...], provider: str) -> str:
    """The explicit key, else the first of ``env_vars`` that is set; a ConfigError naming them if none."""
    if api_key:
        return api_key
    for name in env_vars:
        if value := os.environ.get(name):
            return value
    names = " or ".join(env_vars)
    raise ConfigError(f"no {provider} API key: set the {names} environment variable or pass --api-key")


class RemoteVLM(ABC):
    """A :class:`~atari_vlm.models.base.VLM` behind a hosted API, with this project's retry policy.

    ``latency_s`` of a completion is the wall time of the whole :meth:`generate` call (waiting for
    a free slot, retries and backoff included): what the agent waited. ``concurrency`` bounds the
    requests in flight; a request waiting out a backoff does not hold a slot. The key is held only
    by the SDK client and :meth:`_redact`; it is in no ``repr`` and no error message.
    """

    provider: ClassVar[str]
    """Human name of the provider, for messages ("Anthropic")."""
    provider_id: ClassVar[str]
    """The provider's key in the capability table and the SDK's base-URL variable ("anthropic")."""
    key_env_vars: ClassVar[tuple[str, ...]]
    """Environment variables the key is read from, in order."""
    default_base_url: ClassVar[str]

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        image_format: imaging.ImageFormat = "jpeg",
        jpeg_quality: int = 90,
        timeout_s: float = 60.0,
        max_retries: int | None = None,
        retry_s: float = RETRY_S,
        concurrency: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        seed: int | None = None,
        sleep: Sleep | None = None,
        clock: Callable[[], float] = time.monotonic,
        reasoning: ReasoningLevel = "off",
        capability: Capability | None = None,
    ) -> None:
        """``base_url`` None: the SDK's own variable (``OPENAI_BASE_URL`` ...) if set, else the provider's
        API. ``reasoning``: see :data:`~atari_vlm.models.base.REASONING_LEVELS`. ``capability``: the
        model's rules; None looks them up by model id (on the provider's own API, or a proxy of it).
        ``timeout_s``: the whole of one attempt (connect, first byte, body); ``retry_s``: how long a
        call keeps retrying transient failures (``max_retries``, if set, bounds the count too).
        ``sleep``/``clock``: injected by tests, so that backoff takes no real time."""
        if not model:
            raise ConfigError("model must be a non-empty model name")
        if image_format not in imaging.IMAGE_FORMATS:
            raise ConfigError(f"image_format must be one of {imaging.IMAGE_FORMATS}, got {image_format!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        if reasoning not in REASONING_LEVELS:
            raise ConfigError(f"reasoning must be one of {REASONING_LEVELS}, got {reasoning!r}")
        self._policy = RetryPolicy(max_retries, backoff_base_s, backoff_max_s, retry_s)
        self.backoff = SharedBackoff()  # every game using this model pauses together on a 429
        self.name = model
        self.model = model
        env_var = BASE_URL_ENV_VARS.get(self.provider_id)
        if base_url is None and env_var and os.environ.get(env_var):
            base_url = validate_base_url(os.environ[env_var], what=env_var)
        elif base_url is not None:
            base_url = validate_base_url(base_url)
        self._url_secrets = url_secrets(base_url or "")
        # A query in the base URL (``?api-key=...``, ``?api-version=...``) goes with every request as
        # the SDK's default query; it is in no message, repr or run file.
        self.base_url, self.base_query = split_query(base_url or self.default_base_url)
        self.public_url = safe_url(self.base_url)  # what messages, repr and run files show
        self.custom_endpoint = self.base_url != self.default_base_url.rstrip("/")
        self.capability = capability or capability_for(
            self.provider_id, model, official=not self.custom_endpoint
        )
        self.reasoning = reasoning
        self.reasoning_value = self.capability.reasoning_value(reasoning)  # ConfigError if not supported
        self.image_format = image_format
        self.jpeg_quality = jpeg_quality
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._key = self._resolve_key(api_key, base_url if self.custom_endpoint else None)
        self._rng = random.Random(seed)
        self._sleep: Sleep = sleep or asyncio.sleep
        self._clock = clock
        self._semaphore = asyncio.Semaphore(concurrency)
        self._constraint_refused: str | None = None
        self._usage_warned = False

    def _resolve_key(self, api_key: str | None, base_url: str | None) -> str:
        """The key to send; ``base_url`` is the caller's (None: the default endpoint)."""
        return resolve_key(api_key, self.key_env_vars, self.provider)

    def _repr_settings(self) -> dict[str, object]:
        """What ``repr`` shows, in order; never the key."""
        return {
            "model": self.model,
            "base_url": self.public_url,
            "reasoning": self.reasoning,
            "image_format": self.image_format,
            "timeout_s": self.timeout_s,
            "retry_s": self._policy.retry_s,
            "concurrency": self.concurrency,
        }

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self._repr_settings().items())
        return f"{type(self).__name__}({settings})"

    __str__ = __repr__

    @property
    def where(self) -> str:
        return f"the {self.provider} API at {self.public_url}"

    def answer_limit(self, request: Request) -> int:
        """The answer-length limit to send: the request's, plus room to think at a reasoning level."""
        return request.max_tokens + reasoning_allowance(self.reasoning)

    @property
    def sends_temperature(self) -> bool:
        """Whether this model takes a sampling temperature (current reasoning models refuse any)."""
        return self.capability.sampling == "any"

    @property
    def key_hint(self) -> str:
        return f"check the key passed with --api-key or set in {' / '.join(self.key_env_vars)}"

    # -- VLM protocol --------------------------------------------------------------------------------

    @property
    def supports_constrained(self) -> bool:
        """Whether a ``decode="constrained"`` request is answered with a constraint (the agent asks
        this before choosing the decode mode). False once the server has refused the constraint."""
        return self._constraint_kind() is not None and self._constraint_refused is None

    def _constraint_kind(self) -> str | None:
        """How this backend constrains an answer (a provider names its field), or None if it cannot."""
        return None

    async def generate(self, request: Request) -> Completion:
        """Send one request, retrying transient failures (see the class docstring).

        A constrained request gets the provider's constraint field where the backend has one; if the
        server answers that request with a 400/422, it is sent again without the field, the backend
        stays free from then on (one warning), and the completion says so in ``constraint_note``.
        """
        wanted = request.decode == "constrained"
        constrained = wanted and self.supports_constrained
        note = None
        if wanted and not constrained:
            note = self._constraint_refused or (
                f"the {self.provider} backend for {self.model!r} cannot constrain an answer; answered free"
            )
        elif request.decode == "score":
            note = "scoring needs the choices' likelihoods, which a hosted API does not give; answered free"
        start = time.perf_counter()
        try:
            parsed, retries = await self._run(request, constrained)
        except ConstraintRejected as exc:
            self._constraint_refused = (
                f"{self.public_url} refused the constraint field for model {self.model!r} ({exc}); "
                "answering free from now on"
            )
            log.warning("%s", self._constraint_refused)
            note, constrained = self._constraint_refused, False
            parsed, retries = await self._run(request, False)
            retries += 1  # the refused try
        latency = time.perf_counter() - start
        text, truncated = cut_answer(parsed.text)
        usage, estimated = checked_usage(
            parsed.usage,
            expected_usage(
                request,
                parsed.text,  # the whole answer, as billed (the cut one is what is kept)
                provider=self.provider_id,
                detail=self._image_detail,
                reasoning_tokens=(
                    0 if self.reasoning == "off" else self.answer_limit(request) - request.max_tokens
                ),
            ),
            answer=parsed.text,
            answer_limit=self.answer_limit(request),
        )
        if estimated and not self._usage_warned:
            self._usage_warned = True  # once per backend: the steps say which calls (usage_estimated)
            log.warning(
                "%s reported unbelievable usage %s; counted at atari-vlm's estimate %s",
                self.public_url,
                clip(repr(parsed.usage), 200),
                usage.to_record(),
            )
        return Completion(
            text=text,
            usage=usage,
            latency_s=latency,
            model=parsed.model or self.model,
            finish_reason=parsed.finish_reason,
            retries=retries,
            obtained="constrained" if constrained else "free",
            choice=parsed.choice if constrained else None,
            choice_probs=parsed.choice_probs if constrained else None,
            constraint_note=note,
            usage_estimated=estimated,
            answer_truncated=truncated,
        )

    async def _run(self, request: Request, constrained: bool) -> tuple[Parsed, int]:
        body = self.request_body(request, constrained=constrained)
        return await with_retries(
            lambda: self._attempt(body, request if constrained else None),
            classify=lambda exc: self._classify(exc, constrained),
            policy=self._policy,
            rng=self._rng,
            sleep=self._sleep,
            what=self._what(),
            gate=self.backoff,
            clock=self._clock,
        )

    @abstractmethod
    async def aclose(self) -> None: ...

    # -- what a provider fills in --------------------------------------------------------------------

    @abstractmethod
    def request_body(self, request: Request, *, constrained: bool | None = None) -> dict[str, Any]:
        """The keyword arguments of the SDK call for ``request`` (what goes on the wire).

        ``constrained``: add the constraint field (None: when the request asks for it and this backend
        supports it)."""

    @abstractmethod
    async def _send(self, body: dict[str, Any]) -> Any:
        """One SDK call; raises the SDK's exceptions or :class:`MalformedResponse`."""

    @abstractmethod
    def _parse(self, response: Any, request: Request | None = None) -> Parsed:
        """Text, usage and finish reason of a response; :class:`MalformedResponse` if it has none.
        ``request``: the constrained request it answers (None for a free one): read its pick too."""

    @abstractmethod
    def _verdict(self, exc: Exception) -> Transient | ModelError | None:
        """Transient (retry), fatal (a ModelError saying what to fix) or not ours (None: re-raise)."""

    def _status(self, exc: Exception) -> int | None:
        """The HTTP status of an SDK error, if it is one."""
        status = getattr(exc, "status_code", None)
        return status if isinstance(status, int) else None

    def _wants_constraint(self, request: Request, constrained: bool | None) -> bool:
        if constrained is None:
            return request.decode == "constrained" and self.supports_constrained
        return constrained

    # -- shared helpers ------------------------------------------------------------------------------

    def _what(self) -> str:
        """How a request is named in the error raised once its retries are spent."""
        return f"request to model {self.model!r} at {self.public_url}"

    def _sdk_transport_verdict(self, sdk: Any, exc: Exception) -> Transient | None:
        """Timeouts and connection errors of the ``openai`` / ``anthropic`` SDKs (same exception names),
        named from their root cause (APITimeoutError subclasses APIConnectionError)."""
        if isinstance(exc, sdk.APIConnectionError):
            return self._transport(exc)
        return None

    def _transport(self, exc: BaseException) -> Transient:
        return Transient(describe_transport_error(exc, base_url=self.base_url, timeout_s=self.timeout_s))

    def _image_bytes(self, part: ImagePart) -> tuple[bytes, str]:
        """The encoded image and its MIME type."""
        mime = "image/jpeg" if self.image_format == "jpeg" else "image/png"
        return imaging.encode(part.pixels, self.image_format, self.jpeg_quality), mime

    @staticmethod
    def _system_text(messages: tuple[Message, ...]) -> str | None:
        """All system turns joined: both APIs take the system prompt apart from the conversation."""
        texts = [m.joined_text for m in messages if m.role == "system"]
        if any(m.images for m in messages if m.role == "system"):
            raise ValueError("images are not allowed in system messages")
        return "\n\n".join(texts) if texts else None

    @property
    def _image_detail(self) -> str:
        return str(getattr(self, "image_detail", "auto"))

    async def _attempt(self, body: dict[str, Any], request: Request | None = None) -> Parsed:
        async with self._semaphore:
            try:
                # One deadline for the whole attempt: an SDK's timeout restarts with every byte read,
                # so a server trickling a byte a second would never time out on its own.
                async with asyncio.timeout(self.timeout_s):
                    response = await self._send(body)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no whole answer from {self.public_url} within timeout_s={self.timeout_s:g} "
                    "(connect, first byte and body together)"
                ) from None
        try:  # inside the retry loop: a malformed body is retried
            parsed = self._parse(response, request)
        except PARSE_ERRORS as exc:
            if isinstance(exc, MALFORMED):
                raise
            raise MalformedResponse(f"the answer has the wrong shape ({type(exc).__name__})") from None
        if not isinstance(parsed.text, str):
            raise MalformedResponse(f"the answer's text is a {type(parsed.text).__name__}, not a string")
        return parsed

    def _classify(self, exc: Exception, constrained: bool = False) -> Transient | ModelError | None:
        if constrained and self._status(exc) in REJECTION_STATUSES:
            verdict = self._verdict(exc)
            return ConstraintRejected(self._redact(str(verdict) if verdict else f"HTTP {self._status(exc)}"))
        too_large = next((e for e in _causes(exc) if isinstance(e, BodyTooLarge)), None)
        if isinstance(exc, DeadlineExceeded):
            verdict: Transient | ModelError | None = Transient(str(exc))
        elif isinstance(exc, MALFORMED) or too_large is not None:
            verdict = Transient(
                f"malformed response ({clip(str(too_large or exc))}); is base_url {self.public_url} right?"
            )
        else:
            verdict = self._verdict(exc)
        if isinstance(verdict, Transient):
            return Transient(self._redact(verdict.reason), verdict.retry_after_s, verdict.rate_limited)
        if isinstance(verdict, ModelError):
            return ModelError(self._redact(str(verdict)))
        return None

    def _redact(self, text: str) -> str:
        return redact(text, self._key, *self._url_secrets)


def url_secrets(url: str) -> tuple[str, ...]:
    """What in a base URL must not be shown: its user, password and query values (``?api-key=``)."""
    parsed = urlsplit(url)
    found = [parsed.username or "", parsed.password or ""]
    found += [unquote(s) for s in found]
    found += [value for _, value in parse_qsl(parsed.query, keep_blank_values=False)]
    found += [value for _, value in parse_qsl(parsed.query.replace("+", "%2B"))]
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def _causes(exc: BaseException) -> list[BaseException]:
    chain, current = [], exc
    while current is not None and len(chain) < 32 and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
