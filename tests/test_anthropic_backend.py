"""AnthropicVLM through the real ``anthropic`` SDK and a mock HTTP transport (offline).

Asserts the exact JSON on the wire (current model rules included: Claude Sonnet 5 is sent
``thinking: {"type": "disabled"}`` and no temperature; prompt-cache breakpoints sit on the stable
prefix), the parsing of documented response shapes (cache reads and writes), and the retry and fatal
paths; backoff sleeps are recorded, never slept.
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
from atari_vlm.models.base import ImagePart, Message, Request, TextPart, Usage
from atari_vlm.models.costs import cost_usd
from atari_vlm.models.presets import get_preset
from http_script import FRAME, REQUEST, HttpScript, build, decode_image, error, fails, run

MODEL = "claude-sonnet-5"
OLD_MODEL = "claude-sonnet-4-20250514"  # retired; took temperature and manual extended thinking
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


@pytest.fixture(autouse=True)
def no_base_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


SYSTEM_CACHED = [{"type": "text", "text": "You play Pong.", "cache_control": {"type": "ephemeral"}}]


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
    # Exactly these fields: Sonnet 5 thinks by default, so play turns it off; it answers 400 to a
    # non-default temperature, so none is sent; the system prompt is the stable prefix (cached).
    assert set(body) == {"model", "max_tokens", "system", "messages", "thinking"}
    assert body["model"] == MODEL and body["max_tokens"] == 64
    assert body["thinking"] == {"type": "disabled"}
    assert body["system"] == SYSTEM_CACHED
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
    old = HttpScript(OK)
    run(make(old, model=OLD_MODEL), REQUEST)  # the capability table: the retired Sonnet 4 took it
    assert old.bodies[0]["temperature"] == 0.0 and "thinking" not in old.bodies[0]


@pytest.mark.parametrize(("level", "extra"), [("low", 1024), ("medium", 4096), ("high", 16384)])
def test_reasoning_levels_ask_for_adaptive_thinking_with_room_to_think(level: str, extra: int) -> None:
    script = HttpScript(OK)
    run(make(script, reasoning=level), REQUEST)
    body = script.bodies[0]
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": level}
    assert body["max_tokens"] == 64 + extra  # max_tokens bounds thinking plus the answer
    assert "temperature" not in body


def test_manual_thinking_budget_for_the_older_model_and_no_temperature_with_it() -> None:
    script = HttpScript(OK)
    run(make(script, model=OLD_MODEL, reasoning="low"), REQUEST)
    body = script.bodies[0]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 64 + 1024 and "temperature" not in body


def test_an_unknown_claude_model_gets_the_safe_defaults() -> None:
    script = HttpScript(OK)
    run(make(script, model="claude-future-9"), REQUEST)
    body = script.bodies[0]
    assert "thinking" not in body and "temperature" not in body and body["max_tokens"] == 64
    with pytest.raises(ConfigError, match="no documented reasoning control"):
        make(HttpScript(OK), model="claude-future-9", reasoning="high")


EXEMPLAR = np.full((20, 20, 3), 90, np.uint8)
ICL = Request(
    (
        Message.text("system", "You play Pong."),
        Message(
            "user",
            (
                TextPart("Examples:"),
                ImagePart(EXEMPLAR),
                TextPart("Example 1: ACTION: UP"),
                TextPart("The screen now:"),
                ImagePart(FRAME),
                TextPart("Your move?"),
            ),
        ),
    ),
    max_tokens=16,
    stable_prefix=4,  # the system prompt and the three exemplar parts
)


def test_cache_breakpoints_end_the_stable_prefix_and_nothing_else() -> None:
    script = HttpScript(OK)
    run(make(script), ICL)
    body = script.bodies[0]
    assert body["system"] == SYSTEM_CACHED
    content = body["messages"][0]["content"]
    marked = [i for i, block in enumerate(content) if "cache_control" in block]
    assert marked == [2] and content[2]["cache_control"] == {"type": "ephemeral"}
    assert content[2]["text"] == "Example 1: ACTION: UP"
    assert sum("cache_control" in b for b in content) + 1 <= 4  # Anthropic allows at most 4 breakpoints


def test_no_caching_hints_when_nothing_is_stable() -> None:
    script = HttpScript(OK)
    run(make(script), Request(ICL.messages, max_tokens=16, stable_prefix=0))
    body = script.bodies[0]
    assert body["system"] == "You play Pong."
    assert not any("cache_control" in b for b in body["messages"][0]["content"])


def test_cache_reads_and_writes_are_counted_and_priced() -> None:
    usage = {
        "input_tokens": 40,
        "output_tokens": 6,
        "cache_read_input_tokens": 900,
        "cache_creation_input_tokens": 0,
    }
    completion = run(make(HttpScript(httpx2.Response(200, json={**MESSAGE, "usage": usage}))), ICL)
    assert completion.usage == Usage(940, 6, None, cached_input_tokens=900, cache_write_tokens=0)
    prices = get_preset("claude-sonnet-5").prices
    # 40 plain at $2/M, 900 cache reads at $0.20/M, 6 output at $10/M
    assert cost_usd(completion.usage, prices) == pytest.approx((40 * 3 + 900 * 0.3 + 6 * 15) / 1e6)
    write = {**usage, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 900}
    first = run(make(HttpScript(httpx2.Response(200, json={**MESSAGE, "usage": write}))), ICL)
    assert first.usage.cache_write_tokens == 900 and first.usage.cached_input_tokens == 0
    assert cost_usd(first.usage, prices) == pytest.approx((40 * 3 + 900 * 3.75 + 6 * 15) / 1e6)


def test_the_sdk_base_url_variable_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gateway.example.test/anthropic")
    script = HttpScript(OK)
    vlm = build(AnthropicVLM, script, model=MODEL, api_key=KEY)
    assert vlm.base_url == "https://gateway.example.test/anthropic"
    run(vlm, REQUEST)
    assert str(script.requests[0].url) == "https://gateway.example.test/anthropic/v1/messages"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "gateway without scheme")
    with pytest.raises(ConfigError, match="ANTHROPIC_BASE_URL"):
        build(AnthropicVLM, HttpScript(OK), model=MODEL, api_key=KEY)


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


def test_a_refused_connection_is_named_not_called_a_timeout() -> None:
    refused = httpx2.ConnectError("All connection attempts failed")
    refused.__context__ = ConnectionRefusedError(111, "Connect call failed")
    err = fails(make(HttpScript(refused), max_retries=0), REQUEST)
    assert "connection refused by anthropic.test:443" in str(err) and "timeout" not in str(err)


def test_gives_up_after_max_retries() -> None:
    script = HttpScript(anthropic_error(529, "overloaded_error", "Overloaded"))
    err = fails(make(script, max_retries=2), REQUEST)
    assert len(script.requests) == 3
    assert "after 3 attempts" in str(err) and "HTTP 529" in str(err) and "Overloaded" in str(err)


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


# -- constrained decisions: a forced tool whose input schema holds the legal actions -----------------

CHOICES = ("NOOP", "FIRE", "UP", "DOWN")
CONSTRAINED = Request(REQUEST.messages, max_tokens=64, choices=CHOICES, decode="constrained")


def tool_answer(tool_input: Any) -> httpx2.Response:
    block = {"type": "tool_use", "id": "toolu_01", "name": "choose_action", "input": tool_input}
    return httpx2.Response(200, json={**MESSAGE, "content": [block], "stop_reason": "tool_use"})


def test_a_constrained_decision_forces_the_tool_with_thinking_off() -> None:
    script = HttpScript(tool_answer({"action": "UP"}))
    completion = run(make(script, reasoning="high"), CONSTRAINED)  # forced tool use excludes thinking
    body = script.bodies[0]
    (tool,) = body["tools"]
    assert tool["name"] == "choose_action" and body["tool_choice"] == {
        "type": "tool",
        "name": "choose_action",
    }
    assert tool["input_schema"]["properties"]["action"] == {"type": "string", "enum": list(CHOICES)}
    assert tool["input_schema"]["required"] == ["action"]
    assert body["thinking"] == {"type": "disabled"} and "output_config" not in body
    assert (completion.obtained, completion.choice, completion.text) == ("constrained", "UP", "ACTION: UP")


def test_with_reasoning_the_tool_input_reasons_first() -> None:
    script = HttpScript(tool_answer({"reasoning": "ball is above", "action": "UP"}))
    completion = run(
        make(script), Request(REQUEST.messages, choices=CHOICES, decode="constrained", reasoning=True)
    )
    schema = script.bodies[0]["tools"][0]["input_schema"]
    assert list(schema["properties"]) == ["reasoning", "action"]
    assert completion.choice == "UP" and completion.text == "ball is above\nACTION: UP"


def test_a_model_that_refuses_forced_tools_falls_back_to_free() -> None:
    refusal = anthropic_error(400, "invalid_request_error", "tool_choice forcing a tool is not supported")
    script = HttpScript(OK).then(refusal)
    vlm = make(script)
    completion = run(vlm, CONSTRAINED)
    assert [("tools" in b) for b in script.bodies] == [True, False]
    assert completion.obtained == "free" and completion.text == "ACTION: UP" and completion.retries == 1
    assert (
        "refused the constraint field" in (completion.constraint_note or "") and not vlm.supports_constrained
    )
