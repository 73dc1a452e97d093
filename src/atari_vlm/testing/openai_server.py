"""A small, real OpenAI-compatible HTTP server for tests and benchmarks (stdlib only, loopback only).

Real sockets and real HTTP make the client's whole path run (SDK, connection pool, timeouts, resets),
which a mocked transport would skip. Faults are scripted per request, so a test can say "the next
request gets a 429 with Retry-After: 1, then answer normally" and assert on exactly what was sent.

In-process::

    with serve_in_thread(model="m", reply="ACTION: UP") as server:
        server.add_faults(429, "reset")
        ...  # point a client at server.base_url
        server.requests[-1].body  # the exact JSON the client sent

As a subprocess (prints ``LISTENING <port>`` once bound)::

    python -m atari_vlm.testing.openai_server --port 0 --latency 0.2 --reply "ACTION: UP"

and script faults with ``POST /control/faults`` (a JSON list of fault specs, see :meth:`Fault.parse`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import logging
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FAULT_KINDS", "FakeOpenAIServer", "Fault", "RecordedRequest", "main", "serve_in_thread"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
FAULT_KINDS = (
    "status",
    "hang",
    "reset",
    "truncated",
    "not_json",
    "empty",
    "null_content",
    "usage",
    "body",
    "trickle",
    "ok",
)
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_FAULTS = 10_000
MAX_HANG_S = 300.0
ROLES = ("system", "developer", "user", "assistant", "tool")
DETAILS = ("auto", "low", "high")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SERVER_KINDS = ("generic", "vllm", "sglang", "llamacpp", "ollama", "transformers")
"""Kinds of server this one can pass for: what it says of itself (``owned_by``, Ollama's
``/api/version``) and which constraint field it takes, each as that server documents it."""
CONSTRAINT_MODES = ("honour", "ignore", "reject")
OWNED_BY = {
    "generic": "atari-vlm",
    "vllm": "vllm",
    "sglang": "sglang",
    "llamacpp": "llamacpp",
    "ollama": "library",
}
KIND_FIELDS = {
    # the constraint fields each kind takes (vLLM also takes response_format; its old guided_* fields
    # are ignored since v0.12; transformers serve ignores response_format and refuses the others)
    "generic": ("response_format",),
    "ollama": ("response_format",),
    "vllm": ("structured_outputs", "response_format"),
    "sglang": ("regex", "response_format"),
    "llamacpp": ("grammar", "json_schema", "response_format"),
    "transformers": (),
}
CONSTRAINT_FIELD_NAMES = ("response_format", "structured_outputs", "regex", "grammar", "json_schema")
_GBNF_ROOT = re.compile(r"^root\s*::=\s*(.+)$")
"""``reasoning_effort`` values the openai SDK documents (which ones a model takes is its own rule)."""
MAX_PREFIXES = 4096

Reply = str | Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Fault:
    """What to do to one chat request instead of answering it normally.

    ``status``: answer with HTTP ``status`` and an OpenAI-style error body (optional Retry-After /
    retry-after-ms headers, message and code). ``hang``: wait ``hang_s`` (the server's) before
    answering, past a short client timeout. ``reset``: send part of the headers, then an RST.
    ``truncated``: promise a full JSON body, send half, close. ``not_json``: a 200 whose body is HTML.
    ``empty`` / ``null_content``: a normal 200 whose message content is ``""`` / ``null``.
    ``usage``: a normal answer whose ``usage`` is ``usage`` as given (any JSON value; ``None`` leaves
    the field out). ``body``: a 200 whose body is ``body``: bytes or str sent as they are (non-UTF-8
    included), anything else as JSON. ``trickle``: a normal answer sent one byte every ``trickle_s``
    seconds after ``hang_s`` (the server's) of leading spaces; the server counts a client that
    hangs up on it (``FakeOpenAIServer.hung_up``). ``ok``: answer normally (a place in the queue).
    """

    kind: str
    status: int = 500
    retry_after: str | None = None
    retry_after_ms: int | None = None
    message: str | None = None
    code: str | None = None
    usage: Any = None
    body: Any = None
    trickle_s: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"a status fault needs a 4xx/5xx status, got {self.status}")
        if not 0.001 <= self.trickle_s <= 60:
            raise ValueError(f"trickle_s must be in [0.001, 60], got {self.trickle_s}")

    @classmethod
    def parse(cls, spec: FaultSpec) -> Fault:
        """``429`` or ``"503"`` (a status), ``"reset"`` (a kind), or a dict of the fields."""
        if isinstance(spec, Fault):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"not a fault spec: {spec!r}")
        if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
            return cls("status", status=int(spec))
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, Mapping):
            unknown = set(spec) - {
                "kind",
                "status",
                "retry_after",
                "retry_after_ms",
                "message",
                "code",
                "usage",
                "body",
                "trickle_s",
            }
            if unknown:
                raise ValueError(f"unknown fault fields {sorted(unknown)}")
            fields = dict(spec)
            if "retry_after" in fields and fields["retry_after"] is not None:
                fields["retry_after"] = str(fields["retry_after"])
            fields.setdefault("kind", "status")
            return cls(**fields)
        raise ValueError(f"not a fault spec: {spec!r}")


FaultSpec = Fault | str | int | Mapping[str, Any]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it: the parsed JSON body (or the raw text if not JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    fault: Fault | None = None
    received_at: float = field(default_factory=time.monotonic)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _validate_chat(body: Any) -> None:
    """Raise :class:`_BadRequest` where the body is not a chat completion request a server accepts."""
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _BadRequest("'model' must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _BadRequest(f"{where} must be an object with a role in {ROLES}", where)
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise _BadRequest(f"{where}.content must be a string or a non-empty list of parts", where)
        for j, part in enumerate(content):
            _validate_part(part, f"{where}.content[{j}]")
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise _BadRequest(f"'{name}' must be a positive integer", name)
    if "max_tokens" in body and "max_completion_tokens" in body:
        raise _BadRequest("send 'max_tokens' or 'max_completion_tokens', not both", "max_tokens")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise _BadRequest(f"'reasoning_effort' must be one of {REASONING_EFFORTS}", "reasoning_effort")
    key = body.get("prompt_cache_key")
    if key is not None and (not isinstance(key, str) or not key):
        raise _BadRequest("'prompt_cache_key' must be a non-empty string", "prompt_cache_key")
    if "logprobs" in body and not isinstance(body["logprobs"], bool):
        raise _BadRequest("'logprobs' must be a boolean", "logprobs")
    top = body.get("top_logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20):
        raise _BadRequest("'top_logprobs' must be an integer in [0, 20]", "top_logprobs")
    if top is not None and body.get("logprobs") is not True:
        raise _BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, (int, float))
        or isinstance(temperature, bool)
        or not 0 <= temperature <= 2
    ):
        raise _BadRequest("'temperature' must be a number in [0, 2]", "temperature")


def _validate_part(part: Any, where: str) -> None:
    if not isinstance(part, dict):
        raise _BadRequest(f"{where} must be an object", where)
    if part.get("type") == "text":
        if not isinstance(part.get("text"), str):
            raise _BadRequest(f"{where}.text must be a string", where)
    elif part.get("type") == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise _BadRequest(f"{where}.image_url must be an object with a string 'url'", where)
        if not image["url"].startswith(("data:image/", "http://", "https://")):
            raise _BadRequest(f"{where}.image_url.url must be a data:image/ URL or http(s) URL", where)
        if image.get("detail", "auto") not in DETAILS:
            raise _BadRequest(f"{where}.image_url.detail must be one of {DETAILS}", where)
    else:
        raise _BadRequest(f"{where}.type must be 'text' or 'image_url'", where)


def _count_prompt(body: dict[str, Any]) -> tuple[int, int]:
    """(words of text, number of images) in the request's messages."""
    words = images = 0
    for message in body["messages"]:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part["type"] == "text":
                words += len(part["text"].split())
            else:
                images += 1
    return words, images


def _prompt_pieces(body: dict[str, Any], image_tokens: int, overhead: int) -> list[tuple[str, int]]:
    """The prompt as (canonical JSON of a piece, its tokens), in order: what a prefix cache keys on."""
    pieces: list[tuple[str, int]] = []
    for message in body["messages"]:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        pieces.append((json.dumps({"role": message["role"]}), overhead))
        for part in parts:
            tokens = len(part["text"].split()) if part["type"] == "text" else image_tokens
            pieces.append((json.dumps(part, sort_keys=True), tokens))
    return pieces


def _error_body(
    message: str, *, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _schema_choices(schema: Any, where: str) -> tuple[list[str], bool]:
    """(the enum of ``action``, whether a ``reasoning`` string comes first) of a choice schema."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _BadRequest(f"{where} must be an object schema", where)
    properties = schema.get("properties")
    action = properties.get("action") if isinstance(properties, dict) else None
    enum = action.get("enum") if isinstance(action, dict) else None
    if not isinstance(enum, list) or not enum or not all(isinstance(c, str) for c in enum):
        raise _BadRequest(f"{where}.properties.action.enum must be a non-empty list of strings", where)
    return enum, "reasoning" in properties


def _response_format(value: Any) -> tuple[list[str], bool] | None:
    """OpenAI's ``response_format``: the choices of a strict ``json_schema``, or None (json_object)."""
    if not isinstance(value, dict) or value.get("type") not in ("json_schema", "json_object", "text"):
        raise _BadRequest(
            "'response_format.type' must be json_schema, json_object or text", "response_format"
        )
    if value["type"] != "json_schema":
        return None
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or "schema" not in spec:
        raise _BadRequest("'response_format.json_schema' needs a name and a schema", "response_format")
    if "strict" in spec and not isinstance(spec["strict"], bool):
        raise _BadRequest("'response_format.json_schema.strict' must be a boolean", "response_format")
    if spec.get("strict") and spec["schema"].get("additionalProperties") is not False:
        raise _BadRequest("strict schemas need additionalProperties: false", "response_format")
    return _schema_choices(spec["schema"], "response_format.json_schema.schema")


def _constraint(body: dict[str, Any], kind: str) -> tuple[str, list[str], bool] | None:
    """(field, choices, JSON answer with reasoning?) of the constraint this kind of server honours."""
    for key in KIND_FIELDS[kind]:
        if key not in body:
            continue
        value = body[key]
        if key == "response_format":
            found = _response_format(value)
            if found is not None:
                return key, found[0], found[1]
        elif key == "structured_outputs":
            if not isinstance(value, dict) or len(value) != 1:
                raise _BadRequest(
                    "'structured_outputs' needs exactly one of choice, json, regex, grammar", key
                )
            ((name, spec),) = value.items()
            if name == "choice":
                if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
                    raise _BadRequest("'structured_outputs.choice' must be a list of strings", key)
                return "structured_outputs.choice", spec, False
            if name == "json":
                choices, reasoning = _schema_choices(spec, "structured_outputs.json")
                return "structured_outputs.json", choices, reasoning
            raise _BadRequest(f"structured_outputs.{name} is not emulated here", key)
        elif key == "regex":
            if not isinstance(value, str):
                raise _BadRequest("'regex' must be a string", key)
            inner = value[1:-1] if value.startswith("(") and value.endswith(")") else value
            choices = [re.sub(r"\\(.)", r"\1", c) for c in inner.split("|")]
            if not all(re.fullmatch(value, c) for c in choices):
                raise _BadRequest("'regex' must be an alternation of literal choices here", key)
            return key, choices, False
        elif key == "grammar":
            match = _GBNF_ROOT.match(value) if isinstance(value, str) else None
            if match is None:
                raise _BadRequest("'grammar' must be a GBNF root rule", key)
            try:
                choices = [json.loads(alt.strip()) for alt in match.group(1).split(" | ")]
            except ValueError:
                raise _BadRequest("'grammar' alternatives must be quoted strings", key) from None
            return key, choices, False
        elif key == "json_schema":
            if "grammar" in body:
                raise _BadRequest('Either "json_schema" or "grammar" can be specified, but not both', key)
            choices, reasoning = _schema_choices(value, "json_schema")
            return key, choices, reasoning
    return None


class FakeOpenAIServer(ThreadingHTTPServer):
    """The server: configuration, the fault queue and what it received. Binds 127.0.0.1 only.

    ``hold_until=N`` holds the first chat requests until N of them are in flight at once (then all
    answer; at most ``hang_s``), so a test of concurrent clients gets overlap by construction, not
    by timing: a client that sends one request at a time never reaches N.

    Everything is bounded: request bodies (32 MiB), the fault queue, recorded requests
    (``max_recorded``, oldest dropped), hang time, open connections (``max_connections``), idle
    keep-alive connections (closed after ``idle_timeout_s``).
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: socketserver's 5 resets some of a burst of 64 connects

    def __init__(
        self,
        port: int = 0,
        *,
        model: str | None = None,
        reply: Reply = "ACTION: NOOP",
        latency_s: float = 0.0,
        api_key: str | None = None,
        image_tokens: int = 85,
        prompt_overhead_tokens: int = 3,
        hang_s: float = 10.0,
        max_recorded: int = 1000,
        fault_rate: float = 0.0,
        fault_mix: Sequence[FaultSpec] = (),
        fault_seed: int = 0,
        max_connections: int = 1024,
        idle_timeout_s: float = 30.0,
        hold_until: int = 0,
        cache_min_tokens: int | None = None,
        kind: str = "generic",
        constraints: str = "honour",
        choice_logprobs: Mapping[str, float] | None = None,
        report_usage: bool = True,
    ) -> None:
        """``cache_min_tokens``: answer like OpenAI's prompt cache: a request whose leading messages and
        parts repeat ones already seen reports those tokens as ``cached_tokens``, once they reach this
        many (OpenAI's own minimum is 1024); None: no cache. ``kind``: which server to pass for (see
        :data:`SERVER_KINDS`). ``constraints``: ``honour`` the constraint field the kind takes (answer
        with a legal choice: the first one the reply names, else the first), ``ignore`` it (answer the
        reply as it is), or ``reject`` it with a 400. ``choice_logprobs``: the log-probability each
        choice gets in ``top_logprobs`` when a constrained request asks for ``logprobs``.
        ``report_usage=False``: answer with no ``usage`` (servers that count no tokens)."""
        if kind not in SERVER_KINDS or constraints not in CONSTRAINT_MODES:
            raise ValueError(f"kind must be one of {SERVER_KINDS} and constraints one of {CONSTRAINT_MODES}")
        self.kind = kind
        self.constraints = constraints
        self.choice_logprobs = dict(choice_logprobs or {})
        self.report_usage = report_usage
        if latency_s < 0 or not 0 <= hang_s <= MAX_HANG_S:
            raise ValueError(f"need latency_s >= 0 and 0 <= hang_s <= {MAX_HANG_S}")
        self.model = model
        self.reply = reply
        self.latency_s = latency_s
        self.api_key = api_key
        self.image_tokens = image_tokens
        self.prompt_overhead_tokens = prompt_overhead_tokens
        self.hang_s = hang_s
        self.idle_timeout_s = idle_timeout_s
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._faults: deque[Fault] = deque()
        # Random faults: each chat request (with no scripted fault queued) fails with probability
        # fault_rate, drawing its fault from fault_mix with a seeded RNG, so a run's faults repeat.
        if not 0.0 <= fault_rate <= 1.0 or (fault_rate and not fault_mix):
            raise ValueError("fault_rate must be in [0, 1], and a positive rate needs a fault_mix")
        self.fault_rate = fault_rate
        self._fault_mix = [Fault.parse(spec) for spec in fault_mix]
        self._fault_rng = random.Random(fault_seed)
        self.random_faults = 0
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self.cache_min_tokens = cache_min_tokens
        self._prefixes: set[str] = set()  # digests of prompt prefixes seen (bounded)
        self._connections = threading.BoundedSemaphore(max_connections)
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._hung_up = 0
        self._max_in_flight = 0
        self._chat_requests = 0
        # Overlap by construction, not by timing: the first chat requests are held until
        # ``hold_until`` of them are in flight together (at most ``hang_s``), then all answer.
        self.hold_until = hold_until
        self._held = threading.Condition(self._lock)
        self._released = False
        super().__init__((HOST, port), _Handler)

    # -- what tests look at ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Chat requests received (all of them, faulted ones included), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def max_in_flight(self) -> int:
        """The most chat requests this server was handling at the same moment."""
        with self._lock:
            return self._max_in_flight

    @property
    def hung_up(self) -> int:
        """Answers a client hung up on before the server had sent them whole (a ``trickle`` fault)."""
        with self._lock:
            return self._hung_up

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "chat_requests": self._chat_requests,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "pending_faults": len(self._faults),
            }

    # -- scripting ---------------------------------------------------------------------------------

    def add_faults(self, *specs: FaultSpec) -> None:
        """Queue faults; each chat request consumes the next one (none left: answer normally)."""
        faults = [Fault.parse(spec) for spec in specs]
        with self._lock:
            if len(self._faults) + len(faults) > MAX_FAULTS:
                raise ValueError(f"at most {MAX_FAULTS} faults may be queued")
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget faults, recorded requests and counters (between benchmark phases)."""
        with self._lock:
            self._faults.clear()
            self._requests.clear()
            self._max_in_flight = self._in_flight
            self._chat_requests = 0
            self._released = False

    def stop(self) -> None:
        """Stop serving; wakes requests sleeping in a hang or in latency so they end promptly."""
        self._stopping.set()
        self.shutdown()
        self.server_close()

    # -- used by the handler -----------------------------------------------------------------------

    def _begin_chat(self, record: Callable[[Fault | None], RecordedRequest]) -> Fault | None:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            if fault is None and self.fault_rate and self._fault_rng.random() < self.fault_rate:
                fault = self._fault_rng.choice(self._fault_mix)
                self.random_faults += 1
            self._requests.append(record(fault))
            self._chat_requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if self.hold_until and not self._released:
                if self._in_flight >= self.hold_until:
                    self._released = True
                    self._held.notify_all()
                else:
                    self._held.wait_for(lambda: self._released, timeout=self.hang_s)
        return fault

    def _end_chat(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _cached_tokens(self, pieces: list[tuple[str, int]]) -> int:
        """Tokens of the longest prefix of ``pieces`` seen before (0 below ``cache_min_tokens``); the
        prefixes of this prompt are remembered for the next request."""
        if self.cache_min_tokens is None:
            return 0
        digest = hashlib.sha256()
        digests, sums, total = [], [], 0
        for piece, tokens in pieces:
            digest.update(piece.encode())
            digests.append(digest.hexdigest())
            total += tokens
            sums.append(total)
        with self._lock:
            hit = 0
            for d, tokens in zip(digests, sums, strict=True):
                if d in self._prefixes:
                    hit = tokens
            if len(self._prefixes) + len(digests) > MAX_PREFIXES:
                self._prefixes.clear()
            self._prefixes.update(digests)
        return hit if hit >= self.cache_min_tokens else 0

    def _wait(self, seconds: float) -> None:
        """Sleep that ends early when the server stops, so no handler outlives it by long."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._connections.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (timeouts, resets we caused) are expected here, not worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers and pooled clients use
    # TCP_NODELAY, as real servers set: without it the body, written after the headers, waits for the
    # client's delayed ACK of the headers (40 ms on Linux), adding 40 ms to every answer.
    disable_nagle_algorithm = True
    server: FakeOpenAIServer

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- routing ---------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            ids = [self.server.model or "fake-model"]
            owner = OWNED_BY.get(self.server.kind, "atari-vlm")
            data = [{"id": i, "object": "model", "created": 0, "owned_by": owner} for i in ids]
            self._send_json(200, {"object": "list", "data": data})
        elif path == "/api/version" and self.server.kind == "ollama":
            self._send_json(200, {"version": "0.40.12"})
        elif path == "/control/stats":
            self._send_json(200, self.server.stats())
        else:
            self._send_json(404, _error_body(f"no route GET {path}", code="not_found"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self._read_body()
        if raw is None:
            return
        if path == "/v1/chat/completions":
            self._chat(raw)
        elif path == "/control/faults":
            try:
                specs = json.loads(raw)
                if not isinstance(specs, list):
                    raise ValueError("expected a JSON list of fault specs")
                self.server.add_faults(*specs)
            except (ValueError, TypeError) as exc:
                self._send_json(400, _error_body(f"bad fault list: {exc}"))
                return
            self._send_json(200, {"pending_faults": self.server.pending_faults})
        elif path == "/control/reset":
            self.server.reset()
            self._send_json(200, self.server.stats())
        else:
            self._send_json(404, _error_body(f"no route POST {path}", code="not_found"))

    def do_DELETE(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/control/faults":
            self.server.clear_faults()
            self._send_json(200, {"pending_faults": 0})
        else:
            self._send_json(404, _error_body(f"no route DELETE {path}", code="not_found"))

    # -- chat completions -----------------------------------------------------------------------------

    def _chat(self, raw: bytes) -> None:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        recorded_body = body if body is not None else raw[:4096].decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = self.server._begin_chat(
            lambda f: RecordedRequest("POST", self.path, headers, recorded_body, f)
        )
        try:
            self.server._wait(self.server.latency_s)
            if fault is not None and fault.kind in (
                "status",
                "hang",
                "reset",
                "truncated",
                "not_json",
                "body",
            ):
                self._fault(fault)
                return
            if body is None:
                self._send_json(400, _error_body("request body is not valid JSON"))
                return
            self._answer(body, fault)
        finally:
            self.server._end_chat()

    def _answer(self, body: Any, fault: Fault | None) -> None:
        server = self.server
        if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
            # Echo the key the client sent, as some servers do: tests check clients never repeat it.
            sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {sent}."
            self._send_json(401, _error_body(message, code="invalid_api_key"))
            return
        try:
            _validate_chat(body)
            if server.kind == "transformers":
                # transformers serve refuses fields it does not know (422) and ignores response_format
                unknown = sorted(set(body) & (set(CONSTRAINT_FIELD_NAMES) - {"response_format"}))
                if unknown:
                    self._send_json(422, {"detail": f"Unexpected fields in the request: {set(unknown)}"})
                    return
            constraint = _constraint(body, server.kind)
        except _BadRequest as exc:
            self._send_json(400, _error_body(str(exc), param=exc.param))
            return
        if constraint is not None and server.constraints == "reject":
            message = (
                f"Unsupported parameter: '{constraint[0].split('.')[0]}' is not supported by this server."
            )
            self._send_json(400, _error_body(message, param=constraint[0].split(".")[0]))
            return
        if server.model is not None and body["model"] != server.model:
            message = f"The model `{body['model']}` does not exist or you do not have access to it."
            self._send_json(404, _error_body(message, code="model_not_found"))
            return
        try:
            text = server.reply(body) if callable(server.reply) else server.reply
        except Exception as exc:  # a broken reply callable is the test's bug: say so loudly
            self._send_json(500, _error_body(f"reply callable failed: {exc!r}", type_="server_error"))
            return
        tokens: list[tuple[str, str | None]] | None = None  # (token, choice it is the pick of)
        if constraint is not None and server.constraints == "honour":
            _, choices, as_json = constraint
            named = [c for c in choices if re.search(rf"\b{re.escape(c)}\b", text)]
            pick = named[-1] if named else choices[0]
            if constraint[0] in ("structured_outputs.choice", "regex", "grammar"):
                tokens = [(pick, pick)]
            elif as_json:
                tokens = [('{"reasoning": "it is the move", "action": "', None), (pick, pick), ('"}', None)]
            else:
                tokens = [('{"action": "', None), (pick, pick), ('"}', None)]
            text = "".join(t for t, _ in tokens)
        words = text.split()
        finish_reason = "stop"
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and len(words) > max_tokens:
            words, finish_reason = words[:max_tokens], "length"
            text = " ".join(words)
        prompt_words, images = _count_prompt(body)
        image_tokens = images * server.image_tokens
        prompt_tokens = prompt_words + image_tokens + server.prompt_overhead_tokens * len(body["messages"])
        cached_tokens = 0
        if server.cache_min_tokens is not None:  # only then: it costs the server CPU per request
            pieces = _prompt_pieces(body, server.image_tokens, server.prompt_overhead_tokens)
            cached_tokens = server._cached_tokens(pieces)
        content: str | None = text
        if fault is not None and fault.kind in ("empty", "null_content"):
            content = "" if fault.kind == "empty" else None
            words = []
        logprobs = None
        if tokens is not None and body.get("logprobs") and server.kind != "transformers":
            logprobs = {"content": [self._token_logprobs(t, pick_of, constraint[1]) for t, pick_of in tokens]}
        answer = {
            "id": f"chatcmpl-{next(server._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": logprobs,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
                "prompt_tokens_details": {"image_tokens": image_tokens, "cached_tokens": cached_tokens},
            },
        }
        if not server.report_usage:
            answer["usage"] = None
        if fault is not None and fault.kind == "usage":
            answer.pop("usage")
            if fault.usage is not None:
                answer["usage"] = fault.usage
        if fault is not None and fault.kind == "trickle":
            self._trickle(json.dumps(answer).encode(), fault.trickle_s)
            return
        self._send_json(200, answer)

    def _trickle(self, payload: bytes, every_s: float) -> None:
        """Send ``payload`` after ``hang_s`` of leading spaces, one byte every ``every_s`` seconds."""
        padding = max(1, int(self.server.hang_s / every_s))
        body = b" " * padding + payload
        try:
            self._send_head(200, "application/json", len(body))
            self.wfile.flush()
            for i in range(padding):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                if self.server._stopping.wait(every_s):
                    break
            else:
                self.wfile.write(body[padding:])
                self.wfile.flush()
                return
        except (BrokenPipeError, ConnectionResetError):
            with self.server._lock:
                self.server._hung_up += 1
        self.close_connection = True

    def _token_logprobs(self, token: str, pick_of: str | None, choices: list[str]) -> dict[str, Any]:
        """One token's entry of ``logprobs.content``; the pick's token lists every choice's logprob."""
        top: list[dict[str, Any]] = []
        if pick_of is not None:
            known = self.server.choice_logprobs
            top = [{"token": c, "logprob": known[c], "bytes": None} for c in choices if c in known]
            top.sort(key=lambda t: -t["logprob"])
        logprob = self.server.choice_logprobs.get(pick_of, 0.0) if pick_of is not None else 0.0
        return {"token": token, "logprob": logprob, "bytes": None, "top_logprobs": top}

    def _fault(self, fault: Fault) -> None:
        if fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            message = fault.message or f"injected fault: HTTP {fault.status}"
            type_ = "server_error" if fault.status >= 500 else "invalid_request_error"
            self._send_json(fault.status, _error_body(message, type_=type_, code=fault.code), headers)
        elif fault.kind == "hang":
            self.server._wait(self.server.hang_s)
            self._send_json(503, _error_body("hung request finally answered", type_="server_error"))
        elif fault.kind == "reset":
            self._reset_connection()
        elif fault.kind == "truncated":
            payload = json.dumps({"id": "chatcmpl-truncated", "choices": []}).encode() + b" " * 64
            self._send_head(200, "application/json", len(payload))
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
        elif fault.kind == "not_json":
            payload = b"<html><body>502 Bad Gateway (but sent as 200)</body></html>"
            self._send_head(200, "application/json", len(payload))
            self.wfile.write(payload)
        elif fault.kind == "body":
            body = fault.body
            payload = (
                body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body))
            )
            payload = payload.encode() if isinstance(payload, str) else payload
            self._send_head(200, "application/json", len(payload))
            self.wfile.write(payload)

    def _reset_connection(self) -> None:
        """Start a response, then abort the TCP connection (RST, not FIN)."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the file holds a reference that would delay the close
        self.connection.close()
        self.rfile, self.wfile = io.BytesIO(), io.BytesIO()  # type: ignore[assignment]
        self.close_connection = True

    # -- plumbing ----------------------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(413, _error_body(f"body must declare a length of at most {MAX_BODY_BYTES}"))
            return None
        return self.rfile.read(length)

    def _send_head(
        self, status: int, content_type: str, length: int, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        payload = json.dumps(obj).encode()
        try:
            self._send_head(status, "application/json", len(payload), headers)
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): fine
            self.close_connection = True


@contextlib.contextmanager
def serve_in_thread(**options: Any) -> Iterator[FakeOpenAIServer]:
    """Run a :class:`FakeOpenAIServer` (same keyword options) in a daemon thread for a ``with`` block."""
    server = FakeOpenAIServer(**options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m atari_vlm.testing.openai_server",
        description="A fake OpenAI-compatible chat completions server for tests and benchmarks.",
    )
    parser.add_argument("--host", default=HOST, choices=[HOST], help="only loopback is served")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--model", default=None, help="answer 404 model_not_found for other models")
    parser.add_argument("--reply", default="ACTION: NOOP", help="the text of every answer")
    parser.add_argument(
        "--reply-padding",
        type=int,
        default=0,
        help="this many characters of filler before the reply (huge answers)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat request")
    parser.add_argument("--api-key", default=None, help="answer 401 unless this bearer key is sent")
    parser.add_argument("--image-tokens", type=int, default=85, help="prompt tokens counted per image")
    parser.add_argument("--hang", type=float, default=10.0, help="seconds a 'hang' fault waits")
    parser.add_argument("--faults", default="[]", help="JSON list of fault specs to start with")
    parser.add_argument(
        "--cache-min-tokens", type=int, default=None, help="report repeated prompt prefixes as cached_tokens"
    )
    parser.add_argument("--kind", default="generic", choices=SERVER_KINDS, help="the server to pass for")
    parser.add_argument("--constraints", default="honour", choices=CONSTRAINT_MODES, help="constraint fields")
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        args.port,
        model=args.model,
        reply="x" * max(args.reply_padding, 0) + "\n" + args.reply if args.reply_padding else args.reply,
        latency_s=args.latency,
        api_key=args.api_key,
        image_tokens=args.image_tokens,
        hang_s=args.hang,
        cache_min_tokens=args.cache_min_tokens,
        kind=args.kind,
        constraints=args.constraints,
    )
    server.add_faults(*json.loads(args.faults))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"LISTENING {server.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server._stopping.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
