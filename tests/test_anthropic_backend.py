"""AnthropicVLM through the real ``anthropic`` SDK and a mock HTTP transport (offline).

Asserts the exact JSON on the wire, the parsing of documented response shapes, and the retry and
fatal paths; backoff sleeps are recorded, never slept.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

pytest.importorskip("anthropic")

import httpx2

from atari_vlm.errors import ConfigError
from atari_vlm.models.anthropic_backend import AnthropicVLM
from atari_vlm.models.base import ImagePart, Message, Request
from http_script import FRAME, REQUEST, HttpScript, build, decode_image, error, fails, run

MODEL = "claude-sonnet-4-20250514"
KEY = "sk-ant-test-DO-NOT-LEAK-4b2e9a"
BASE = "https://anthropic.test"

# The Messages API response, as documented (https://docs.anthropic.com/en/api/messages).
MESSAGE: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "ACTION: UP"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 1200,
        "output_tokens": 6,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    },
}


def anthropic_error(status: int, kind: str, message: str, **headers: str) -> httpx2.Response:
    return error(status, {"type": "error", "error": {"type": kind, "message": message}}, headers)


OK = httpx2.Response(200, json=MESSAGE)


def make(script: HttpScript, **options: Any) -> AnthropicVLM:
    return build(AnthropicVLM, script, **{"model": MODEL, "api_key": KEY, "base_url": BASE, **options})


def test_request_on_the_wire() -> None:
    script = HttpScript(OK)
    completion = run(make(script), REQUEST)
    assert completion.text == "ACTION: UP"
    (request,) = script.requests
    assert request.method == "POST" and str(request.url) == f"{BASE}/v1/messages"
    assert KEY in (request.headers.get("x-api-key", "") + request.headers.get("authorization", ""))
    assert request.headers["anthropic-version"]
    assert request.headers["x-stainless-retry-count"] == "0"  # the SDK's own retries are off
    body = script.bodies[0]
    assert body["model"] == MODEL and body["max_tokens"] == 64
    assert body["system"] == "You play Pong."
    assert "temperature" not in body  # current models reject sampling parameters
    (message,) = body["messages"]
    assert message["role"] == "user"
    text1, image, text2 = message["content"]
    assert text1 == {"type": "text", "text": "Frame:"} and text2 == {"type": "text", "text": "Your move?"}
    assert image["type"] == "image"
    assert image["source"]["type"] == "base64" and image["source"]["media_type"] == "image/jpeg"
    pixels = decode_image(base64.b64decode(image["source"]["data"]))
    assert pixels.shape == (210, 160, 3)
    assert pixels[105, 75].mean() > 200 and pixels[10, 10].mean() < 30


def test_temperature_only_when_the_model_takes_it() -> None:
    script = HttpScript(OK)
    run(make(script, send_temperature=True), REQUEST)
    assert script.bodies[0]["temperature"] == 0.0


def test_multi_turn_grayscale_png() -> None:
    script = HttpScript(OK)
    gray = np.full((50, 40), 128, np.uint8)
    request = Request(
        (
            Message.text("user", "first"),
            Message.text("assistant", "ACTION: NOOP"),
            Message("user", (ImagePart(gray),)),
        ),
        max_tokens=5,
    )
    run(make(script, image_format="png"), request)
    body = script.bodies[0]
    assert "system" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == [{"type": "text", "text": "ACTION: NOOP"}]
    source = body["messages"][2]["content"][0]["source"]
    assert source["media_type"] == "image/png"
    assert decode_image(base64.b64decode(source["data"])).shape == (50, 40)


def test_images_in_assistant_turns_are_refused() -> None:
    vlm = make(HttpScript(OK))
    with pytest.raises(ValueError, match="only allowed in user messages"):
        vlm.request_body(Request((Message("assistant", (ImagePart(FRAME),)),)))


def test_parses_usage_stop_reason_and_skips_thinking() -> None:
    body = {
        **MESSAGE,
        "content": [
            {"type": "thinking", "thinking": "the ball goes up", "signature": "sig"},
            {"type": "text", "text": "ACTION: "},
            {"type": "text", "text": "FIRE"},
        ],
        "stop_reason": "max_tokens",
        "usage": {
            "input_tokens": 100,
            "output_tokens": 64,
            "cache_creation_input_tokens": 20,
            "cache_read_input_tokens": 30,
        },
    }
    completion = run(make(HttpScript(httpx2.Response(200, json=body))), REQUEST)
    assert completion.text == "ACTION: FIRE"
    assert completion.finish_reason == "length"
    assert completion.usage.input_tokens == 150 and completion.usage.output_tokens == 64
    assert completion.model == MODEL and completion.retries == 0


def test_429_honours_retry_after_then_succeeds() -> None:
    script = HttpScript(OK).then(
        anthropic_error(429, "rate_limit_error", "slow down", **{"retry-after": "7"})
    )
    completion = run(make(script), REQUEST)
    assert completion.text == "ACTION: UP" and completion.retries == 1
    assert len(script.requests) == 2 and script.sleeps == [7.0]


@pytest.mark.parametrize("status,kind", [(529, "overloaded_error"), (500, "api_error"), (503, "api_error")])
def test_overloaded_and_server_errors_are_retried(status: int, kind: str) -> None:
    script = HttpScript(OK).then(anthropic_error(status, kind, "busy"), anthropic_error(status, kind, "busy"))
    completion = run(make(script, backoff_base_s=0.5), REQUEST)
    assert completion.retries == 2 and len(script.requests) == 3
    assert len(script.sleeps) == 2 and all(0 <= s <= 1.0 for s in script.sleeps)


def test_connection_errors_and_malformed_bodies_are_retried() -> None:
    script = HttpScript(OK).then(
        httpx2.ConnectError("connection refused"),
        httpx2.ReadTimeout("read timed out"),
        httpx2.Response(200, text="<html>bad gateway</html>", headers={"content-type": "text/html"}),
    )
    completion = run(make(script), REQUEST)
    assert completion.retries == 3 and len(script.requests) == 4


def test_gives_up_after_max_retries() -> None:
    script = HttpScript(anthropic_error(529, "overloaded_error", "Overloaded"))
    err = fails(make(script, max_retries=2), REQUEST)
    assert len(script.requests) == 3
    assert "failed 3 times" in str(err) and "HTTP 529" in str(err) and "Overloaded" in str(err)


def test_401_is_fatal_at_once_and_says_what_to_fix() -> None:
    script = HttpScript(anthropic_error(401, "authentication_error", f"invalid x-api-key {KEY}"))
    err = fails(make(script), REQUEST)
    assert len(script.requests) == 1 and script.sleeps == []
    assert "rejected the API key (HTTP 401)" in str(err) and "ANTHROPIC_API_KEY" in str(err)
    assert KEY not in str(err) and err.__cause__ is None and err.__suppress_context__


@pytest.mark.parametrize(
    "status,kind,expect",
    [
        (400, "invalid_request_error", "refused the request as bad (HTTP 400): image too large"),
        (403, "permission_error", "rejected the API key (HTTP 403)"),
        (404, "not_found_error", f"model {MODEL!r} was not found"),
    ],
)
def test_other_client_errors_are_fatal(status: int, kind: str, expect: str) -> None:
    script = HttpScript(anthropic_error(status, kind, "image too large"))
    err = fails(make(script), REQUEST)
    assert len(script.requests) == 1 and expect in str(err)


def test_server_text_echoing_the_key_is_redacted() -> None:
    script = HttpScript(anthropic_error(400, "invalid_request_error", f"bad header {KEY}"))
    err = fails(make(script), REQUEST)
    assert KEY not in str(err) and "***" in str(err)


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicVLM(model=MODEL)


def test_key_from_the_environment_stays_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    script = HttpScript(OK)
    vlm = make(script, api_key=None)
    assert KEY not in repr(vlm) and KEY not in str(vlm) and MODEL in repr(vlm)
    run(vlm, REQUEST)
    headers = script.requests[0].headers
    assert KEY in (headers.get("x-api-key", "") + headers.get("authorization", ""))


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        make(HttpScript(OK), concurrency=0)
    with pytest.raises(ConfigError, match="jpeg_quality"):
        make(HttpScript(OK), jpeg_quality=0)
