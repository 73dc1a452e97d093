"""OpenAICompatVLM against a real HTTP server on 127.0.0.1 (in a thread, and once as a subprocess).

Backoff is tiny and seeded, so retry tests take milliseconds and always take the same path. Every
test runs on both of the SDK's HTTP transports (aiohttp, the default when installed, and httpx),
since each maps timeouts, resets and broken bodies to the SDK's errors its own way. A
non-JSON 200 body is treated as transient (a proxy's error page is usually a passing state): it is
retried, and when every try gets one the ModelError says the response was malformed and asks
whether base_url is right.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import logging
import os
import random
import subprocess
import sys
import threading
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from atari_vlm.errors import ConfigError, DependencyNotInstalled, ModelError
from atari_vlm.models.base import Completion, ImagePart, Message, Request, TextPart
from atari_vlm.models.capabilities import capability_for
from atari_vlm.models.costs import cost_usd
from atari_vlm.models.openai_compat import PLACEHOLDER_API_KEY, OpenAICompatVLM
from atari_vlm.models.presets import get_preset
from atari_vlm.models.retry import (
    RETRY_AFTER_CAP_S,
    RetryPolicy,
    Transient,
    describe_transport_error,
    parse_retry_after,
    with_retries,
)
from atari_vlm.testing import FakeOpenAIServer, Fault, serve_in_thread

MODEL = "fake-vlm-1"
FAKE_KEY = "sk-test-DO-NOT-LEAK-7f3a9c2e5b1d"
HAS_AIOHTTP = importlib.util.find_spec("aiohttp") is not None
_backend = {"name": "auto"}


@pytest.fixture(
    autouse=True,
    params=[
        pytest.param("aiohttp", marks=pytest.mark.skipif(not HAS_AIOHTTP, reason="aiohttp not installed")),
        "httpx",
    ],
)
def http_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test once per transport: ``make_vlm`` builds its client on this one."""
    _backend["name"] = request.param
    yield request.param
    _backend["name"] = "auto"


REPLY = "ACTION: UP"


@pytest.fixture(autouse=True)
def no_base_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's own OPENAI_BASE_URL would redirect every client built here."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with serve_in_thread(model=MODEL, reply=REPLY, hang_s=3.0) as srv:
        yield srv


def make_vlm(server: FakeOpenAIServer, **options: Any) -> OpenAICompatVLM:
    settings: dict[str, Any] = {
        "model": MODEL,
        "base_url": server.base_url,
        "api_key": FAKE_KEY,
        "timeout_s": 5.0,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
        "seed": 0,
        "http_backend": _backend["name"],
    }
    settings.update(options)
    return OpenAICompatVLM(**settings)


def generate(vlm: OpenAICompatVLM, request: Request, n: int = 1) -> list[Completion]:
    """Run ``n`` concurrent generate calls on a fresh event loop, then close the client."""

    async def go() -> list[Completion]:
        try:
            return list(await asyncio.gather(*(vlm.generate(request) for _ in range(n))))
        finally:
            await vlm.aclose()

    return asyncio.run(go())


def generate_error(vlm: OpenAICompatVLM, request: Request, error: type[Exception]) -> Exception:
    with pytest.raises(error) as info:
        generate(vlm, request)
    return info.value


def frame(height: int, width: int, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(height * 1000 + width)
    shape = (height, width) if gray else (height, width, 3)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


TEXT_ONLY = Request((Message.text("user", "Which action?"),), max_tokens=8)
IMAGES = Request(
    (
        Message.text("system", "You play Pong."),
        Message(
            "user",
            (
                TextPart("Previous frame:"),
                ImagePart(frame(30, 40)),
                TextPart("Current frame:"),
                ImagePart(frame(20, 10, gray=True)),
                TextPart("Answer with ACTION: <name>."),
            ),
        ),
    ),
    max_tokens=7,
    temperature=0.3,
)


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    raw = base64.b64decode(url[len(prefix) :])
    assert raw[:3] == b"\xff\xd8\xff", "not a JPEG"
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


# -- the wire format --------------------------------------------------------------------------------


def test_request_on_the_wire_is_exact(server: FakeOpenAIServer) -> None:
    generate(make_vlm(server, image_detail="low"), IMAGES)

    (received,) = server.requests
    assert received.path == "/v1/chat/completions"
    assert received.headers["authorization"] == f"Bearer {FAKE_KEY}"
    body = received.body
    assert set(body) == {"model", "messages", "max_tokens", "temperature"}
    assert (body["model"], body["max_tokens"], body["temperature"]) == (MODEL, 7, 0.3)
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You play Pong."}
    assert user["role"] == "user"
    content = user["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "text", "image_url", "text"]
    assert [p["text"] for p in content if p["type"] == "text"] == [
        "Previous frame:",
        "Current frame:",
        "Answer with ACTION: <name>.",
    ]
    images = [p["image_url"] for p in content if p["type"] == "image_url"]
    assert [i["detail"] for i in images] == ["low", "low"]
    assert decode_data_url(images[0]["url"]).shape[:2] == (30, 40)
    assert decode_data_url(images[1]["url"]).shape[:2] == (20, 10)


def test_request_body_matches_what_is_sent(server: FakeOpenAIServer) -> None:
    vlm = make_vlm(server)
    expected = vlm.request_body(IMAGES)
    generate(vlm, IMAGES)
    assert server.requests[0].body == expected


def test_openai_itself_gets_max_completion_tokens_other_servers_max_tokens(server: FakeOpenAIServer) -> None:
    official = OpenAICompatVLM(model="gpt-5-mini", api_key=FAKE_KEY, http_backend=_backend["name"])
    body = official.request_body(IMAGES)
    assert body["max_completion_tokens"] == IMAGES.max_tokens and "max_tokens" not in body
    custom = make_vlm(server).request_body(IMAGES)
    assert custom["max_tokens"] == IMAGES.max_tokens and "max_completion_tokens" not in custom


def test_images_outside_user_messages_are_refused(server: FakeOpenAIServer) -> None:
    bad = Request((Message("system", (ImagePart(frame(4, 4)),)),))
    with pytest.raises(ValueError, match="only allowed in user messages"):
        make_vlm(server).request_body(bad)


# -- responses --------------------------------------------------------------------------------------


def test_response_is_parsed_into_a_completion(server: FakeOpenAIServer) -> None:
    (completion,) = generate(make_vlm(server), IMAGES)
    assert completion.text == REPLY
    assert completion.model == MODEL
    assert completion.finish_reason == "stop"
    assert completion.retries == 0
    assert 0 < completion.latency_s < 30
    usage = completion.usage
    assert usage.output_tokens == 2
    assert usage.image_tokens == 2 * 85
    # words of text + images + a per-message overhead: what the server counted
    texts = ("You play Pong.", "Previous frame:", "Current frame:", "Answer with ACTION: <name>.")
    text_words = sum(len(t.split()) for t in texts)
    assert usage.input_tokens == text_words + 2 * 85 + 2 * 3


def test_length_limit_is_reported() -> None:
    with serve_in_thread(model=MODEL, reply="one two three four five") as srv:
        (completion,) = generate(make_vlm(srv), Request((Message.text("user", "go"),), max_tokens=2))
    assert (completion.text, completion.finish_reason, completion.usage.output_tokens) == (
        "one two",
        "length",
        2,
    )


@pytest.mark.parametrize("fault", ["empty", "null_content"])
def test_empty_content_is_returned_not_retried(server: FakeOpenAIServer, fault: str) -> None:
    server.add_faults(fault)
    (completion,) = generate(make_vlm(server), TEXT_ONLY)
    assert completion.text == ""
    assert completion.retries == 0
    assert len(server.requests) == 1


def test_reply_callable_sees_the_request() -> None:
    def reply(body: dict[str, Any]) -> str:
        return f"ACTION: {body['messages'][-1]['content'][0]['text'].upper()}"

    with serve_in_thread(reply=reply) as srv:
        (completion,) = generate(make_vlm(srv), Request((Message.text("user", "fire"),)))
    assert completion.text == "ACTION: FIRE"


def test_concurrency_bound_is_respected() -> None:
    with serve_in_thread(model=MODEL, latency_s=0.05) as srv:
        completions = generate(make_vlm(srv, concurrency=3), TEXT_ONLY, n=12)
        assert len(completions) == 12
        assert 2 <= srv.max_in_flight <= 3
        assert len(srv.requests) == 12


# -- transient failures are retried -----------------------------------------------------------------


class SleepRecorder:
    """An injected sleep: records what the backoff asked for and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.mark.parametrize(
    ("fault", "backoff_max_s", "expected_sleep"),
    [
        ({"status": 429, "retry_after": "2"}, 30.0, 2.0),
        ({"status": 429, "retry_after_ms": 1500}, 30.0, 1.5),
        ({"status": 429, "retry_after": "3600"}, 5.0, RETRY_AFTER_CAP_S),  # capped at the stated cap
        ({"status": 429, "retry_after": "86400"}, 5.0, RETRY_AFTER_CAP_S),  # a day
        ({"status": 429, "retry_after": "Thu, 01 Jan 2099 00:00:00 GMT"}, 5.0, RETRY_AFTER_CAP_S),
    ],
)
def test_429_honours_retry_after(
    server: FakeOpenAIServer, fault: dict[str, Any], backoff_max_s: float, expected_sleep: float
) -> None:
    sleep = SleepRecorder()
    server.add_faults(fault)
    (completion,) = generate(make_vlm(server, sleep=sleep, backoff_max_s=backoff_max_s), TEXT_ONLY)
    assert completion.text == REPLY
    assert completion.retries == 1
    assert sleep.calls == [expected_sleep]
    assert len(server.requests) == 2


def test_429_without_retry_after_uses_jittered_backoff(server: FakeOpenAIServer) -> None:
    sleep = SleepRecorder()
    server.add_faults(429, 429, 429)
    (completion,) = generate(make_vlm(server, sleep=sleep, backoff_base_s=1.0, backoff_max_s=3.0), TEXT_ONLY)
    assert completion.retries == 3
    ceilings = [1.0, 2.0, 3.0]
    assert len(sleep.calls) == 3
    assert all(0 <= s <= c for s, c in zip(sleep.calls, ceilings, strict=True))
    rng = random.Random(0)  # same seed, same jitter: the schedule is reproducible
    assert sleep.calls == [rng.uniform(0, c) for c in ceilings]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_then_success(server: FakeOpenAIServer, status: int) -> None:
    server.add_faults(status)
    (completion,) = generate(make_vlm(server), TEXT_ONLY)
    assert (completion.text, completion.retries) == (REPLY, 1)
    assert len(server.requests) == 2


def test_timeout_then_success(server: FakeOpenAIServer) -> None:
    server.add_faults("hang")
    (completion,) = generate(make_vlm(server, timeout_s=0.5), TEXT_ONLY)
    assert (completion.text, completion.retries) == (REPLY, 1)
    assert completion.latency_s >= 0.5


@pytest.mark.parametrize("fault", ["reset", "truncated", "not_json"])
def test_broken_responses_then_success(server: FakeOpenAIServer, fault: str) -> None:
    server.add_faults(fault)
    (completion,) = generate(make_vlm(server), TEXT_ONLY)
    assert (completion.text, completion.retries) == (REPLY, 1)
    assert len(server.requests) == 2


def test_not_json_every_time_gives_a_clear_error(server: FakeOpenAIServer) -> None:
    server.add_faults(*["not_json"] * 3)
    err = generate_error(make_vlm(server, max_retries=2), TEXT_ONLY, ModelError)
    assert "malformed response" in str(err)
    assert server.base_url in str(err)


def test_retries_exhausted_names_the_attempts(server: FakeOpenAIServer) -> None:
    server.add_faults(503, 503, 503, 503)
    err = generate_error(make_vlm(server, max_retries=2), TEXT_ONLY, ModelError)
    assert "after 3 attempts over" in str(err)
    assert "HTTP 503" in str(err)
    assert len(server.requests) == 3
    assert server.pending_faults == 1


def test_no_retries_means_one_try(server: FakeOpenAIServer) -> None:
    server.add_faults(500)
    err = generate_error(make_vlm(server, max_retries=0), TEXT_ONLY, ModelError)
    assert "after 1 attempt over" in str(err)
    assert len(server.requests) == 1


# -- fatal failures are raised at once ---------------------------------------------------------------


def assert_no_key(err: BaseException) -> None:
    rendered = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    for text in (str(err), repr(err), rendered):
        assert FAKE_KEY not in text


def test_401_is_fatal_and_does_not_leak_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # This server echoes the key it got in its 401 message, as some real ones do.
    with serve_in_thread(model=MODEL, api_key="the-right-key") as srv:
        err = generate_error(make_vlm(srv), TEXT_ONLY, ModelError)
        assert len(srv.requests) == 1
    assert "HTTP 401" in str(err) and "API key" in str(err)
    assert err.__cause__ is None
    assert_no_key(err)
    assert FAKE_KEY not in caplog.text


def test_403_is_fatal(server: FakeOpenAIServer) -> None:
    server.add_faults({"status": 403, "message": f"key {FAKE_KEY} may not use this model"})
    err = generate_error(make_vlm(server), TEXT_ONLY, ModelError)
    assert "HTTP 403" in str(err)
    assert len(server.requests) == 1
    assert_no_key(err)


def test_unknown_model_is_fatal_and_named(server: FakeOpenAIServer) -> None:
    err = generate_error(make_vlm(server, model="no-such-model"), TEXT_ONLY, ModelError)
    assert "'no-such-model'" in str(err)
    assert server.base_url in str(err)
    assert "model name" in str(err)
    assert len(server.requests) == 1


def test_bad_request_is_fatal_with_the_server_message_truncated(server: FakeOpenAIServer) -> None:
    server.add_faults({"status": 400, "message": "max_tokens is too large " + "x" * 5000})
    err = generate_error(make_vlm(server), TEXT_ONLY, ModelError)
    assert "HTTP 400" in str(err) and "max_tokens is too large" in str(err)
    assert len(str(err)) < 600
    assert len(server.requests) == 1


def test_quota_exhausted_429_is_fatal(server: FakeOpenAIServer) -> None:
    server.add_faults({"status": 429, "code": "insufficient_quota", "message": "You exceeded your quota"})
    err = generate_error(make_vlm(server), TEXT_ONLY, ModelError)
    assert "quota" in str(err)
    assert len(server.requests) == 1


# -- configuration and the key ----------------------------------------------------------------------


def test_missing_key_for_the_default_endpoint_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY.*--api-key"):
        OpenAICompatVLM(model="gpt-4o-mini")


def test_key_from_the_environment(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    assert "api.openai.com" in repr(OpenAICompatVLM(model="gpt-4o-mini"))
    generate(make_vlm(server, api_key=None), TEXT_ONLY)
    assert server.requests[0].headers["authorization"] == f"Bearer {FAKE_KEY}"


def test_custom_server_without_a_key_gets_a_placeholder(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    generate(make_vlm(server, api_key=None), TEXT_ONLY)
    assert server.requests[0].headers["authorization"] == f"Bearer {PLACEHOLDER_API_KEY}"


def test_repr_and_str_hide_the_key(server: FakeOpenAIServer) -> None:
    vlm = make_vlm(server)
    assert FAKE_KEY not in repr(vlm) and FAKE_KEY not in str(vlm)
    assert MODEL in repr(vlm)


@pytest.mark.parametrize(
    "options",
    [
        {"image_detail": "ultra"},
        {"image_format": "gif"},
        {"jpeg_quality": 0},
        {"concurrency": 0},
        {"timeout_s": 0},
        {"max_retries": -1},
        {"model": ""},
        {"http_backend": "requests"},
    ],
)
def test_bad_options_are_config_errors(server: FakeOpenAIServer, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        make_vlm(server, **options)


# -- current model rules, prompt caching, endpoints -------------------------------------------------


def official(server: FakeOpenAIServer, model: str, **options: Any) -> OpenAICompatVLM:
    """A client for one of OpenAI's models, pointed at the recording server as at a proxy of OpenAI."""
    return make_vlm(server, model=model, capability=capability_for("openai", model), **options)


def test_a_gpt_4o_class_request_is_exactly_what_openai_documents() -> None:
    with serve_in_thread(model="gpt-4o-mini") as srv:
        generate(official(srv, "gpt-4o-mini"), IMAGES)
        body = srv.requests[0].body
    assert set(body) == {"model", "messages", "max_completion_tokens", "temperature", "prompt_cache_key"}
    assert body["max_completion_tokens"] == 7 and body["temperature"] == 0.3
    assert body["prompt_cache_key"].startswith("atari-vlm-") and len(body["prompt_cache_key"]) <= 64


@pytest.mark.parametrize(
    ("model", "level", "effort", "limit"),
    [
        ("gpt-5-mini", "off", "minimal", 7),  # gpt-5 takes no "none": minimal is the least
        ("gpt-5.1", "off", "none", 7),  # gpt-5.1 defaults to none and refuses minimal
        ("gpt-5-mini", "high", "high", 7 + 16384),
        ("o4-mini", "off", "low", 7),  # o-series cannot be turned off
    ],
)
def test_reasoning_models_get_reasoning_effort_and_no_temperature(
    model: str, level: str, effort: str, limit: int
) -> None:
    with serve_in_thread(model=model) as srv:
        generate(official(srv, model, reasoning=level), IMAGES)
        body = srv.requests[0].body
    assert body["reasoning_effort"] == effort and body["max_completion_tokens"] == limit
    assert "temperature" not in body and "max_tokens" not in body


def test_a_server_of_ones_own_gets_only_the_classic_fields(server: FakeOpenAIServer) -> None:
    generate(make_vlm(server), IMAGES)
    assert set(server.requests[0].body) == {"model", "messages", "max_tokens", "temperature"}
    with pytest.raises(ConfigError, match="no documented reasoning control"):
        make_vlm(server, reasoning="medium")


def test_cached_tokens_are_read_and_priced_at_the_cache_rate() -> None:
    exemplars = (TextPart("Examples: " + "word " * 30), ImagePart(frame(30, 40)), TextPart("ACTION: UP"))

    def decision(now: np.ndarray) -> Request:
        user = Message("user", (*exemplars, TextPart("The screen now:"), ImagePart(now), TextPart("Move?")))
        return Request((Message.text("system", "You play Pong."), user), max_tokens=4, stable_prefix=4)

    with serve_in_thread(model="gpt-4o-mini", cache_min_tokens=20) as srv:
        first, second = (
            generate(official(srv, "gpt-4o-mini"), decision(frame(20, 10 + i)))[0] for i in range(2)
        )
        keys = {r.body["prompt_cache_key"] for r in srv.requests}
    assert first.usage.cached_input_tokens == 0
    # the system message (3 overhead + 3 words), the user message's overhead (3), the three exemplar
    # parts (31 words, 85 image tokens, 2 words) and "The screen now:" (3 words) repeat; the new frame
    # does not, and nothing after it counts
    assert second.usage.cached_input_tokens == (3 + 3) + 3 + 31 + 85 + 2 + 3
    assert len(keys) == 1  # the same prefix: the same key, whatever the current frame
    prices = get_preset("gpt-4o-mini").prices
    u = second.usage
    expected = (
        (u.input_tokens - u.cached_input_tokens) * 0.15 + u.cached_input_tokens * 0.075 + 2 * 0.6
    ) / 1e6
    assert cost_usd(u, prices) == pytest.approx(expected)


def test_the_cache_key_follows_the_prefix_and_an_explicit_key_wins(server: FakeOpenAIServer) -> None:
    vlm = official(server, "gpt-4o-mini")

    def key(exemplar: str, now: str, **options: Any) -> str:
        request = Request(
            (Message.text("system", "You play Pong."), Message("user", (TextPart(exemplar), TextPart(now)))),
            stable_prefix=2,
        )
        return (official(server, "gpt-4o-mini", **options) if options else vlm).request_body(request)[
            "prompt_cache_key"
        ]

    assert key("ex A", "frame 1") == key("ex A", "frame 2") != key("ex B", "frame 1")
    assert key("ex A", "frame 1", prompt_cache_key="run-42") == "run-42"
    with pytest.raises(ConfigError, match="prompt_cache_key"):
        official(server, "gpt-4o-mini", prompt_cache_key="x" * 65)


def test_openai_base_url_is_honoured_and_shown_without_credentials(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "?token=t0ps3cret")
    vlm = make_vlm(server, base_url=None)
    assert vlm.public_url == server.base_url
    for text in (repr(vlm), vlm.where if hasattr(vlm, "where") else ""):
        assert "t0ps3cret" not in text
    (completion,) = generate(vlm, TEXT_ONLY)  # the query goes with the request, to the right path
    assert completion.text == REPLY
    assert server.requests[-1].path == "/v1/chat/completions?token=t0ps3cret"
    # A user and password would travel in every request and into logs: refused, without showing them.
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url.replace("http://", "http://alice:hunter2@"))
    with pytest.raises(ConfigError, match="must not hold a user name or password") as refused:
        make_vlm(server, base_url=None)
    assert "hunter2" not in str(refused.value) and "alice" not in str(refused.value)
    monkeypatch.setenv("OPENAI_BASE_URL", "notaurl")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL must be an http"):
        make_vlm(server, base_url=None)


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_refused_connection_is_named_on_both_transports() -> None:
    port = closed_port()
    vlm = OpenAICompatVLM(
        model=MODEL,
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=FAKE_KEY,
        max_retries=0,
        http_backend=_backend["name"],
    )
    err = generate_error(vlm, TEXT_ONLY, ModelError)
    assert f"connection refused by 127.0.0.1:{port}" in str(err) and "timeout" not in str(err)


def test_tls_against_a_plain_http_server_is_named(server: FakeOpenAIServer) -> None:
    vlm = make_vlm(server, base_url=server.base_url.replace("http://", "https://"), max_retries=0)
    err = generate_error(vlm, TEXT_ONLY, ModelError)
    assert f"TLS failure talking to 127.0.0.1:{server.port}" in str(err)


@pytest.mark.parametrize(
    ("root", "expect"),
    [
        (__import__("socket").gaierror(-2, "Name or service not known"), "DNS lookup failed for api.test"),
        (ConnectionRefusedError(111, "refused"), "connection refused by api.test:443"),
        (TimeoutError("timed out"), "no answer from api.test:443 within timeout_s=2.0"),
        (ConnectionResetError(104, "reset"), "connection to api.test:443 dropped"),
    ],
)
def test_transport_errors_are_named_from_their_root_cause(root: BaseException, expect: str) -> None:
    class APITimeoutError(Exception):  # what the SDK on aiohttp wraps a refused connection in
        pass

    wrapper = APITimeoutError("Request timed out.")
    wrapper.__cause__ = OSError("Cannot connect to host")
    wrapper.__cause__.__cause__ = root
    assert expect in describe_transport_error(wrapper, base_url="https://api.test/v1", timeout_s=2.0)


# -- the retry helper alone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "junk", "retry-after": "1.5"}, 1.5),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


@given(
    retry=st.integers(0, 100),
    base=st.floats(0, 10),
    cap=st.floats(0, 60),
    retry_after=st.none() | st.floats(-5, 1e6),
)
def test_backoff_delay_is_bounded(retry: int, base: float, cap: float, retry_after: float | None) -> None:
    delay = RetryPolicy(3, base, cap).delay_s(retry, random.Random(retry), retry_after)
    if retry_after is None or retry_after < 0:  # a negative Retry-After is ignored: own backoff
        assert 0 <= delay <= min(cap, base * 2.0**retry)
    else:
        assert delay == min(retry_after, RETRY_AFTER_CAP_S)


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_with_retries_passes_unknown_errors_through() -> None:
    class Bug(Exception):
        pass

    async def attempt() -> None:
        raise Bug("a bug, not a provider failure")

    with pytest.raises(Bug):
        asyncio.run(
            with_retries(attempt, classify=lambda exc: None, policy=RetryPolicy(), rng=random.Random(0))
        )


def test_with_retries_counts_retries() -> None:
    outcomes = iter([ConnectionError("x"), ConnectionError("y"), "ok"])

    async def attempt() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def no_sleep(seconds: float) -> None:
        pass

    result = asyncio.run(
        with_retries(
            attempt,
            classify=lambda exc: Transient(str(exc)),
            policy=RetryPolicy(max_retries=5),
            rng=random.Random(0),
            sleep=no_sleep,
        )
    )
    assert result == ("ok", 2)


# -- the server itself, and as a subprocess ---------------------------------------------------------


def http(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            "messages[0].content[0]",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ],
)
def test_server_rejects_malformed_requests(server: FakeOpenAIServer, body: Any, param: str) -> None:
    status, payload = http("POST", f"{server.base_url}/chat/completions", body)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param


def test_server_lists_its_model_and_rejects_bad_faults(server: FakeOpenAIServer) -> None:
    status, payload = http("GET", f"{server.base_url}/models")
    assert status == 200 and [m["id"] for m in payload["data"]] == [MODEL]
    status, _ = http("POST", f"http://127.0.0.1:{server.port}/control/faults", ["explode"])
    assert status == 400
    with pytest.raises(ValueError):
        Fault.parse({"kind": "status", "status": 200})


def start_subprocess_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "atari_vlm.testing.openai_server", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=30)
    if not lines or not lines[0].startswith("LISTENING "):
        proc.kill()
        raise AssertionError(f"server did not start: {lines!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, int(lines[0].split()[1])


def test_subprocess_server_with_faults_over_http() -> None:
    proc, port = start_subprocess_server("--model", MODEL, "--reply", "ACTION: FIRE", "--latency", "0.01")
    try:
        control = f"http://127.0.0.1:{port}/control"
        assert http("POST", f"{control}/faults", [503, {"status": 429, "retry_after": "0"}]) == (
            200,
            {"pending_faults": 2},
        )
        vlm = OpenAICompatVLM(
            model=MODEL,
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=FAKE_KEY,
            backoff_base_s=0.001,
            seed=0,
            http_backend=_backend["name"],
        )
        (completion,) = generate(vlm, IMAGES)
        assert (completion.text, completion.retries) == ("ACTION: FIRE", 2)
        assert completion.usage.image_tokens == 2 * 85
        status, stats = http("GET", f"{control}/stats")
        assert status == 200
        assert stats["chat_requests"] == 3 and stats["pending_faults"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_auto_picks_aiohttp_when_installed_and_httpx_otherwise(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    auto = make_vlm(server, http_backend="auto")
    assert auto.http_backend == ("aiohttp" if HAS_AIOHTTP else "httpx") and len(auto._clients) == 1
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "aiohttp" else real(name, *a)
    )
    fallback = make_vlm(server, http_backend="auto", concurrency=40)
    assert fallback.http_backend == "httpx" and len(fallback._clients) == 3  # a pool per 16 in flight
    with pytest.raises(DependencyNotInstalled, match=r"openai\[aiohttp\]"):
        make_vlm(server, http_backend="aiohttp")
