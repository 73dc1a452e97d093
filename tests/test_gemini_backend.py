"""GeminiVLM through the real ``google-genai`` SDK and a mock HTTP transport (offline).

Asserts the exact JSON on the wire (each model's thinking control: ``thinking_budget`` for 2.5,
``thinking_level`` for 3.x), the parsing of documented response shapes (implicit-cache hits, thinking
tokens), and the retry and fatal paths; backoff sleeps are recorded, never slept.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

pytest.importorskip("google.genai")

import httpx2

from atari_vlm.errors import ConfigError
from atari_vlm.models.base import ImagePart, Message, Request
from atari_vlm.models.gemini_backend import GeminiVLM
from http_script import REQUEST, HttpScript, build, decode_image, error, fails, run

MODEL = "gemini-2.5-flash"
CURRENT = "gemini-3.5-flash-lite"
KEY = "AIzaSy-test-DO-NOT-LEAK-93kd02"
BASE = "https://gemini.test"

# generateContent's response, as documented (https://ai.google.dev/api/generate-content#v1beta.GenerateContentResponse).
RESPONSE: dict[str, Any] = {
    "candidates": [
        {
            "content": {"parts": [{"text": "ACTION: UP"}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}],
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 300,
        "candidatesTokenCount": 4,
        "totalTokenCount": 304,
        "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 42},
            {"modality": "IMAGE", "tokenCount": 258},
        ],
    },
    "modelVersion": MODEL,
    "responseId": "abc123",
}
OK = httpx2.Response(200, json=RESPONSE)


def google_error(status: int, code: str, message: str, details: list[Any] | None = None, **headers: str):
    body = {"error": {"code": status, "message": message, "status": code, "details": details or []}}
    return error(status, body, headers)


def make(script: HttpScript, **options: Any) -> GeminiVLM:
    return build(GeminiVLM, script, **{"model": MODEL, "api_key": KEY, "base_url": BASE, **options})


@pytest.fixture(autouse=True)
def no_base_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)


def thinking_of(config: dict[str, Any]) -> dict[str, Any]:
    """The thinking config, whichever spelling the SDK used (the API's proto-JSON takes both)."""
    raw = config.get("thinkingConfig") or config["thinking_config"]
    return {
        {"thinkingBudget": "thinking_budget", "thinkingLevel": "thinking_level"}.get(k, k): v
        for k, v in raw.items()
    }


def inline_bytes(part: dict[str, Any]) -> tuple[bytes, str]:
    blob = part.get("inlineData") or part["inline_data"]
    data = blob["data"]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)), blob.get("mimeType") or blob["mime_type"]


def test_request_on_the_wire() -> None:
    script = HttpScript(OK)
    completion = run(make(script), REQUEST)
    assert completion.text == "ACTION: UP"
    (request,) = script.requests
    assert request.method == "POST"
    assert str(request.url).startswith(BASE) and request.url.path.endswith(f"/models/{MODEL}:generateContent")
    assert request.headers["x-goog-api-key"] == KEY
    body = script.bodies[0]
    assert body["systemInstruction"]["parts"] == [{"text": "You play Pong."}]
    config = body["generationConfig"]
    assert thinking_of(config) == {"thinking_budget": 0}  # 2.5 Flash: thinking off for play
    assert {k: v for k, v in config.items() if "hinking" not in k} == {
        "temperature": 0.0,
        "maxOutputTokens": 64,
    }
    (content,) = body["contents"]
    assert content["role"] == "user"
    text1, image, text2 = content["parts"]
    assert text1 == {"text": "Frame:"} and text2 == {"text": "Your move?"}
    data, mime = inline_bytes(image)
    assert mime == "image/jpeg"
    pixels = decode_image(data)
    assert pixels.shape == (210, 160, 3)
    assert pixels[105, 75].mean() > 200 and pixels[10, 10].mean() < 30


def test_options_json_mode_and_roles_on_the_wire() -> None:
    script = HttpScript(OK)
    request = Request(
        (
            Message.text("user", "first"),
            Message.text("assistant", "ACTION: NOOP"),
            Message("user", (ImagePart(np.full((50, 40), 128, np.uint8)),)),
        ),
        max_tokens=5,
        temperature=0.5,
        json_mode=True,
    )
    run(make(script, thinking_budget=0, image_format="png"), request)
    body = script.bodies[0]
    assert "systemInstruction" not in body
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    config = body["generationConfig"]
    # The SDK sends some fields in snake_case; the API's proto-JSON parser takes both spellings.
    assert thinking_of(config) == {"thinking_budget": 0}
    assert config["responseMimeType"] == "application/json"
    assert config["maxOutputTokens"] == 5 and config["temperature"] == 0.5
    data, mime = inline_bytes(body["contents"][2]["parts"][0])
    assert mime == "image/png" and decode_image(data).shape == (50, 40)


def test_the_current_model_gets_its_minimal_thinking_level_and_no_temperature() -> None:
    script = HttpScript(OK)
    run(make(script, model=CURRENT), REQUEST)
    config = script.bodies[0]["generationConfig"]
    assert thinking_of(config) == {"thinking_level": "MINIMAL"}
    assert "temperature" not in config and config["maxOutputTokens"] == 64  # custom values are ignored


@pytest.mark.parametrize(
    ("model", "level", "expect", "extra"),
    [
        (CURRENT, "high", {"thinking_level": "HIGH"}, 16384),
        (CURRENT, "low", {"thinking_level": "LOW"}, 1024),
        (MODEL, "medium", {"thinking_budget": 4096}, 4096),
        (MODEL, "high", {"thinking_budget": -1}, 16384),
    ],
)
def test_reasoning_levels_on_each_thinking_control(
    model: str, level: str, expect: dict[str, Any], extra: int
) -> None:
    script = HttpScript(OK)
    run(make(script, model=model, reasoning=level), REQUEST)
    config = script.bodies[0]["generationConfig"]
    assert thinking_of(config) == expect and config["maxOutputTokens"] == 64 + extra


def test_an_unknown_gemini_model_gets_no_thinking_config() -> None:
    script = HttpScript(OK)
    run(make(script, model="gemini-9-experimental"), REQUEST)
    config = script.bodies[0]["generationConfig"]
    assert "thinkingConfig" not in config and "thinking_config" not in config


def test_implicit_cache_hits_are_read_from_usage() -> None:
    meta = {**RESPONSE["usageMetadata"], "cachedContentTokenCount": 4100, "promptTokenCount": 5000}
    completion = run(
        make(HttpScript(httpx2.Response(200, json={**RESPONSE, "usageMetadata": meta}))), REQUEST
    )
    assert completion.usage.input_tokens == 5000 and completion.usage.cached_input_tokens == 4100
    assert completion.usage.uncached_input_tokens == 900


def test_the_sdk_base_url_variable_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "https://proxy.example.test")
    script = HttpScript(OK)
    vlm = build(GeminiVLM, script, model=MODEL, api_key=KEY)
    run(vlm, REQUEST)
    assert script.requests[0].url.host == "proxy.example.test"


def test_parses_usage_with_thinking_and_image_tokens() -> None:
    body = {
        **RESPONSE,
        "candidates": [
            {
                "content": {
                    "parts": [{"text": "plan", "thought": True}, {"text": "ACTION: FIRE"}],
                    "role": "model",
                },
                "finishReason": "MAX_TOKENS",
            }
        ],
        "usageMetadata": {**RESPONSE["usageMetadata"], "thoughtsTokenCount": 20},
    }
    completion = run(make(HttpScript(httpx2.Response(200, json=body))), REQUEST)
    assert completion.text == "ACTION: FIRE" and completion.finish_reason == "length"
    assert completion.usage.input_tokens == 300
    assert completion.usage.output_tokens == 24  # thinking tokens are billed as output
    assert completion.usage.reasoning_tokens == 20
    assert completion.usage.image_tokens == 258
    assert completion.model == MODEL and completion.retries == 0


def test_a_blocked_prompt_is_reported_not_retried() -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 300}}
    script = HttpScript(httpx2.Response(200, json=body))
    completion = run(make(script), REQUEST)
    assert completion.text == "" and completion.finish_reason == "blocked: SAFETY"
    assert len(script.requests) == 1 and completion.usage.input_tokens == 300


def test_429_honours_the_retry_info_delay_then_succeeds() -> None:
    retry_info = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
    script = HttpScript(OK).then(google_error(429, "RESOURCE_EXHAUSTED", "quota", retry_info))
    completion = run(make(script), REQUEST)
    assert completion.retries == 1 and len(script.requests) == 2 and script.sleeps == [7.0]


def test_429_honours_a_retry_after_header() -> None:
    script = HttpScript(OK).then(google_error(429, "RESOURCE_EXHAUSTED", "quota", **{"retry-after": "3"}))
    completion = run(make(script), REQUEST)
    assert completion.retries == 1 and script.sleeps == [3.0]


def test_server_errors_timeouts_and_resets_are_retried() -> None:
    script = HttpScript(OK).then(
        google_error(503, "UNAVAILABLE", "The model is overloaded."),
        google_error(500, "INTERNAL", "internal error"),
        httpx2.ReadTimeout("read timed out"),
        httpx2.RemoteProtocolError("peer closed connection"),
        httpx2.Response(200, text="<html>bad gateway</html>", headers={"content-type": "text/html"}),
    )
    completion = run(make(script, max_retries=5), REQUEST)
    assert completion.text == "ACTION: UP" and completion.retries == 5 and len(script.requests) == 6


def test_gives_up_after_max_retries() -> None:
    script = HttpScript(google_error(503, "UNAVAILABLE", "The model is overloaded."))
    err = fails(make(script, max_retries=1), REQUEST)
    assert len(script.requests) == 2 and "after 2 attempts" in str(err) and "overloaded" in str(err)


def test_bad_key_is_fatal_at_once() -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    script = HttpScript(google_error(400, "INVALID_ARGUMENT", f"API key not valid: {KEY}", details))
    err = fails(make(script), REQUEST)
    assert len(script.requests) == 1 and script.sleeps == []
    assert (
        "rejected the API key" in str(err) and "GEMINI_API_KEY" in str(err) and "GOOGLE_API_KEY" in str(err)
    )
    assert KEY not in str(err) and err.__cause__ is None


@pytest.mark.parametrize(
    "status,code,expect",
    [
        (400, "INVALID_ARGUMENT", "refused the request as bad (HTTP 400): INVALID_ARGUMENT: nope"),
        (401, "UNAUTHENTICATED", "rejected the API key (HTTP 401)"),
        (403, "PERMISSION_DENIED", "rejected the API key (HTTP 403)"),
        (404, "NOT_FOUND", f"model {MODEL!r} was not found"),
    ],
)
def test_client_errors_are_fatal(status: int, code: str, expect: str) -> None:
    script = HttpScript(google_error(status, code, "nope"))
    err = fails(make(script), REQUEST)
    assert len(script.requests) == 1 and expect in str(err)


def test_missing_key_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="GEMINI_API_KEY or GOOGLE_API_KEY"):
        GeminiVLM(model=MODEL)


@pytest.mark.parametrize("variable", ["GEMINI_API_KEY", "GOOGLE_API_KEY"])
def test_key_from_either_variable_stays_out_of_repr(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv(variable, KEY)
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")  # must not switch the backend to Vertex AI
    script = HttpScript(OK)
    vlm = make(script, api_key=None)
    assert KEY not in repr(vlm) and KEY not in str(vlm)
    run(vlm, REQUEST)
    assert script.requests[0].headers["x-goog-api-key"] == KEY
    assert script.requests[0].url.host == "gemini.test"


# -- constrained decisions: text/x.enum with the legal actions ----------------------------------------

CHOICES = ("NOOP", "FIRE", "UP", "DOWN")
CONSTRAINED = Request(REQUEST.messages, max_tokens=64, choices=CHOICES, decode="constrained")


def enum_answer(text: str, top: list[tuple[str, float]]) -> httpx2.Response:
    candidate = {
        **RESPONSE["candidates"][0],
        "content": {"parts": [{"text": text}], "role": "model"},
        "logprobsResult": {
            "chosenCandidates": [{"token": text, "logProbability": top[0][1]}],
            "topCandidates": [{"candidates": [{"token": t, "logProbability": lp} for t, lp in top]}],
        },
    }
    return httpx2.Response(200, json={**RESPONSE, "candidates": [candidate]})


def test_a_constrained_decision_asks_for_the_enum_and_reads_its_probabilities() -> None:
    import math

    top = [("UP", math.log(0.6)), ("DOWN", math.log(0.3)), ("NOOP", math.log(0.1))]
    script = HttpScript(enum_answer("UP", top))
    completion = run(make(script, model=CURRENT), CONSTRAINED)
    config = script.bodies[0]["generationConfig"]
    assert config["responseMimeType"] == "text/x.enum"
    schema = config.get("responseSchema") or config["response_schema"]
    assert schema["enum"] == list(CHOICES) and schema["type"].upper() == "STRING"
    assert config["responseLogprobs"] is True and config["logprobs"] == 5
    assert (completion.obtained, completion.choice) == ("constrained", "UP")
    assert completion.choice_probs == pytest.approx({"NOOP": 0.1, "FIRE": 0.0, "UP": 0.6, "DOWN": 0.3})


def test_with_reasoning_a_json_schema_with_reasoning_first() -> None:
    text = '{"reasoning": "ball above", "action": "FIRE"}'
    script = HttpScript(enum_answer(text, [(text, 0.0)]))
    request = Request(REQUEST.messages, choices=CHOICES, decode="constrained", reasoning=True)
    completion = run(make(script, model=CURRENT), request)
    config = script.bodies[0]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    schema = config.get("responseSchema") or config["response_schema"]
    ordering = schema.get("propertyOrdering") or schema["property_ordering"]
    assert ordering == ["reasoning", "action"] and schema["properties"]["action"]["enum"] == list(CHOICES)
    assert completion.choice == "FIRE" and completion.choice_probs is None
