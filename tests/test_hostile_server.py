"""What a hostile or broken model server can still do to a run (issue 17, the server-side rows).

Every test talks to the project's own OpenAI-compatible test server on 127.0.0.1 (or, for the
Anthropic and Gemini SDKs, to scripted answers through their own HTTP layer), scripted to send one
kind of bad answer. Backoff runs on an injected clock and sleep: no test waits for a retry, and no
assertion is about elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

from atari_vlm.cli import main
from atari_vlm.errors import ModelError
from atari_vlm.models.base import Completion, ImagePart, Message, Request, TextPart
from atari_vlm.models.openai_compat import OpenAICompatVLM
from atari_vlm.models.presets import Prices
from atari_vlm.models.registry import LoadedModel, load_model
from atari_vlm.models.retry import RETRY_AFTER_CAP_S, RETRY_S
from atari_vlm.models.transport import CUT_MARK, MAX_ANSWER_CHARS
from atari_vlm.models.usage_check import expected_usage
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import run_play
from atari_vlm.spec import ModelSpec, RunSpec
from atari_vlm.testing import FakeOpenAIServer, serve_in_thread
from http_script import REQUEST, HttpScript, build

REPLY = "ACTION: FIRE"
PRICES = Prices(input_per_mtok=2.5, output_per_mtok=10.0, date="test")
KEY = "sk-hostile-test-key-5c1e"
FRAME = np.zeros((210, 160, 3), np.uint8)
DECISION = Request(
    (
        Message.text("system", "You play Pong. Answer with ACTION: <name> on the last line. " * 8),
        Message("user", (TextPart("The screen:"), ImagePart(FRAME), TextPart("Your move?"))),
    ),
    max_tokens=32,
)


class FakeClock:
    """Time that passes only when the backoff sleeps: retries take no real time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def vlm_for(server: FakeOpenAIServer, **options: Any) -> OpenAICompatVLM:
    settings: dict[str, Any] = {
        "model": "m",
        "base_url": server.base_url,
        "api_key": KEY,
        "timeout_s": 10.0,
        "seed": 0,
    }
    return OpenAICompatVLM(**{**settings, **options})


def generate(vlm: Any, request: Request = DECISION) -> Completion:
    async def go() -> Completion:
        try:
            return await vlm.generate(request)
        finally:
            await vlm.aclose()

    return asyncio.run(go())


def fails(vlm: Any, request: Request = DECISION) -> ModelError:
    with pytest.raises(ModelError) as info:
        generate(vlm, request)
    return info.value


def priced(server: FakeOpenAIServer, **options: Any) -> LoadedModel:
    clock = FakeClock()
    vlm = vlm_for(server, sleep=clock.sleep, clock=clock, **options)
    return LoadedModel(vlm, "openai:m", "openai", prices=PRICES)


def play(out: Path, loaded: LoadedModel, **settings: Any):
    defaults = {
        "game": "Pong",
        "model": "openai:m",
        "episodes": 1,
        "max_steps": 60,
        "video": False,
        "decode": "free",  # the answer as the server wrote it (no constraint field)
    }
    spec = RunSpec.build(**{**defaults, **settings})
    return run_play(spec, out, loaded=loaded, close_loaded=True)


# -- 1. usage numbers from the server ---------------------------------------------------------------

GOOD_USAGE = {"prompt_tokens": 400, "completion_tokens": 3, "total_tokens": 403}
BAD_USAGES = {
    "missing": None,
    "zero": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    "negative": {"prompt_tokens": -100_000_000, "completion_tokens": -5, "total_tokens": -100_000_005},
    "strings": {"prompt_tokens": "many", "completion_tokens": "3 or so", "total_tokens": ""},
    "numeric strings below": {"prompt_tokens": "5", "completion_tokens": "0"},  # the SDK reads them as ints
    "floats": {"prompt_tokens": 400.5, "completion_tokens": 3.0, "total_tokens": 403.5},
    "far below": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    "not an object": "lots",
    "cached above prompt": {
        "prompt_tokens": 400,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 10_000},
    },
}


@pytest.mark.parametrize("usage", list(BAD_USAGES.values()), ids=list(BAD_USAGES))
def test_unbelievable_usage_is_replaced_by_the_estimate_and_flagged(usage: Any) -> None:
    with serve_in_thread(
        reply=REPLY, fault_rate=1.0, fault_mix=[{"kind": "usage", "usage": usage}]
    ) as server:
        completion = generate(vlm_for(server))
    expected = expected_usage(DECISION, REPLY, provider="openai")
    assert completion.usage_estimated
    assert completion.usage == expected
    assert expected.input_tokens > 255  # the image by OpenAI's tile formula, plus the text


def test_believable_usage_is_kept_as_sent() -> None:
    fault = {"kind": "usage", "usage": GOOD_USAGE}
    with serve_in_thread(reply=REPLY, fault_rate=1.0, fault_mix=[fault]) as server:
        completion = generate(vlm_for(server))
    assert not completion.usage_estimated
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (400, 3)


@pytest.mark.parametrize("kind", ["missing", "zero", "negative", "strings"])
def test_a_budget_holds_whatever_usage_the_server_sends(tmp_path: Path, kind: str) -> None:
    with serve_in_thread(reply=REPLY) as honest:
        one_call = play(tmp_path / "probe", priced(honest), max_steps=1).cost_usd
    limit = 30 * one_call  # the estimate is dearer than the honest count: about 15 calls
    mix = [{"kind": "usage", "usage": BAD_USAGES[kind]}]
    with serve_in_thread(reply=REPLY, fault_rate=1.0, fault_mix=mix) as server:
        summary = play(tmp_path / "run", priced(server), episodes=6, max_steps=10, max_cost_usd=limit)
        calls = len(server.requests)
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert summary.stopped is not None and summary.stopped.startswith("budget")
    assert 10 < calls < 60 and len(steps) == calls  # not 60 of 60
    assert all(s["usage_estimated"] is True and s["cost_usd"] > 0 for s in steps)
    assert 0 < sum(s["cost_usd"] for s in steps) <= limit
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert recorded["usage_estimated"] == 10 * recorded["episodes"] > 0  # finished episodes' steps


# -- 2. the budget with 8 games at once ---------------------------------------------------------------


def test_calls_in_flight_when_the_budget_stops_are_counted_and_the_message_agrees(tmp_path: Path) -> None:
    # The 8 games' first calls are held until all 8 are in flight, then answered. Each call costs c
    # (the server counts 600 tokens per image: more than the first call's reservation). The budget,
    # 15.5 c, lets 7 second calls start (they hang at the server) and refuses the 8th: at that moment
    # 7 calls are in flight, by construction. They are cancelled, and billed at c each.
    with serve_in_thread(reply=REPLY, image_tokens=600) as honest:
        c = play(tmp_path / "probe", priced(honest), max_steps=1).cost_usd
    with serve_in_thread(reply=REPLY, image_tokens=600, hold_until=8, hang_s=30.0) as server:
        server.add_faults(*["ok"] * 8, *["hang"] * 7)
        summary = play(
            tmp_path / "run",
            priced(server, concurrency=8),
            episodes=8,
            num_envs=8,
            max_steps=5,
            max_cost_usd=15.5 * c,
        )
        received = len(server.requests)
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert len(steps) == 8 and received <= 15
    assert recorded["cancelled_calls"] == 7
    assert recorded["spent_usd"] == pytest.approx(15 * c, rel=0.01)
    assert summary.stopped is not None
    said = re.search(r"\$(\d+\.\d+) spent", summary.stopped)
    assert said is not None and float(said.group(1)) == pytest.approx(recorded["spent_usd"], abs=1e-4)
    assert recorded["stopped"] == summary.stopped
    assert "7 calls cancelled in flight" in summary.stopped


# -- 3. one total deadline per model call --------------------------------------------------------------


@pytest.mark.parametrize("http_backend", ["httpx", "aiohttp"])
def test_a_trickling_server_times_out_at_the_deadline(http_backend: str) -> None:
    # hang_s=8 of leading spaces at a byte every 0.3 s: each byte is well inside a per-read timeout of
    # 1 s, so only a deadline on the whole attempt stops it; the server sees the client hang up.
    with serve_in_thread(reply=REPLY, hang_s=8.0) as server:
        server.add_faults({"kind": "trickle", "trickle_s": 0.3})
        err = fails(vlm_for(server, timeout_s=1.0, max_retries=0, http_backend=http_backend))
        deadline = time.monotonic() + 10
        while server.hung_up == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.hung_up == 1
    assert "within timeout_s=1" in str(err)
    assert "after 1 attempt" in str(err)


class Trickle(httpx2.AsyncByteStream):
    """A body of spaces, one every 50 ms for 10 s (each well inside any per-read timeout)."""

    async def __aiter__(self):
        for _ in range(200):
            await asyncio.sleep(0.05)
            yield b" "


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_the_deadline_holds_for_every_sdk(provider: str) -> None:
    if provider == "anthropic":
        from atari_vlm.models.anthropic_backend import AnthropicVLM as backend
    else:
        from atari_vlm.models.gemini_backend import GeminiVLM as backend
    script = HttpScript(lambda request: httpx2.Response(200, stream=Trickle()))
    vlm = build(
        backend, script, model="m", api_key=KEY, base_url="https://api.test", timeout_s=0.3, max_retries=0
    )
    err = fails(vlm, REQUEST)
    assert "within timeout_s=0.3" in str(err)


def test_timeout_and_retry_time_reach_every_backend_from_the_spec() -> None:
    for model in ("openai:m", "anthropic:claude-sonnet-5", "gemini:gemini-2.5-flash"):
        spec = ModelSpec(model=model, base_url="http://127.0.0.1:9/v1", api_key=KEY, timeout_s=3, retry_s=7)
        vlm = load_model(spec).vlm
        assert (vlm.timeout_s, vlm._policy.retry_s) == (3.0, 7.0)
        asyncio.run(vlm.aclose())


def test_play_takes_timeout_and_retry_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["play", "--help"])
    shown = capsys.readouterr().out
    assert "--timeout" in shown and "--retry-time" in shown


# -- 4. a retry policy that rides out a short outage -----------------------------------------------------


@pytest.mark.parametrize("status", [500, 429])
def test_a_short_outage_without_retry_after_is_ridden_out(status: int) -> None:
    clock = FakeClock()
    with serve_in_thread(reply=REPLY) as server:
        server.add_faults(*[status] * 12)
        completion = generate(vlm_for(server, sleep=clock.sleep, clock=clock))
    assert (completion.text, completion.retries) == (REPLY, 12)
    assert sum(clock.sleeps) <= RETRY_S
    ceilings = [min(30.0, 0.5 * 2**i) for i in range(12)]
    assert all(0 <= s <= c for s, c in zip(clock.sleeps, ceilings, strict=True))


def test_a_long_outage_gives_up_in_one_line_after_the_retry_time() -> None:
    clock = FakeClock()
    with serve_in_thread(reply=REPLY, fault_rate=1.0, fault_mix=[503]) as server:
        err = fails(vlm_for(server, sleep=clock.sleep, clock=clock, retry_s=120))
        attempts = len(server.requests)
    message = str(err)
    assert "\n" not in message
    match = re.search(
        r"after (\d+) attempts over (\d+\.\d) s \(retry time 120 s\); last error: HTTP 503", message
    )
    assert match is not None, message
    assert int(match.group(1)) == attempts == len(clock.sleeps) + 1
    assert float(match.group(2)) == pytest.approx(120.0, abs=0.05)  # the fake clock, not real time
    assert sum(clock.sleeps) == pytest.approx(120.0)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("7", 7.0),
        ("86400", RETRY_AFTER_CAP_S),  # a day
        ("Thu, 01 Jan 2099 00:00:00 GMT", RETRY_AFTER_CAP_S),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date past
        ("-5", None),  # ignored: own backoff
        ("soon", None),
        ("1e999", None),
    ],
)
def test_retry_after_is_honoured_up_to_the_cap_and_garbage_ignored(
    retry_after: str, expected: float | None
) -> None:
    clock = FakeClock()
    with serve_in_thread(reply=REPLY) as server:
        server.add_faults({"status": 429, "retry_after": retry_after})
        completion = generate(vlm_for(server, sleep=clock.sleep, clock=clock))
    assert completion.retries == 1
    (slept,) = clock.sleeps
    if expected is None:
        assert 0 <= slept <= 0.5  # the first backoff step
    else:
        assert slept == pytest.approx(expected, abs=1e-6)


# -- 5. malformed 200 answers ----------------------------------------------------------------------------


def completion_body(**message: Any) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": GOOD_USAGE,
    }


MALFORMED = {
    "message null": {
        "id": "x",
        "model": "m",
        "choices": [{"index": 0, "message": None}],
        "usage": GOOD_USAGE,
    },
    "string for a choice": {"id": "x", "model": "m", "choices": ["ACTION: FIRE"]},
    "choices a string": {"id": "x", "model": "m", "choices": "ACTION: FIRE"},
    "no choices": {"id": "x", "model": "m"},
    "empty object": {},
    "a list": [1, 2, 3],
    "content a number": completion_body(content=42),
    "content a list": completion_body(content=[{"type": "text", "text": "ACTION: FIRE"}]),
    "content an object": completion_body(content={"text": "ACTION: FIRE"}),
    "non-UTF-8": b'{"choices": [{"message": {"content": "\xff\xfe\xfa"}}]}',
    "not JSON at all": b"\x00\x01\x02",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_200_is_a_retried_model_error(body: Any) -> None:
    with serve_in_thread(reply=REPLY) as server:
        server.add_faults({"kind": "body", "body": body})
        completion = generate(vlm_for(server, sleep=FakeClock().sleep))
        assert (completion.text, completion.retries) == (REPLY, 1)
        server.add_faults(*[{"kind": "body", "body": body}] * 3)
        err = fails(vlm_for(server, max_retries=2, sleep=FakeClock().sleep))
    assert "malformed response" in str(err) and "after 3 attempts" in str(err)


def test_answers_that_are_not_text_never_reach_the_run(tmp_path: Path) -> None:
    bad = [{"kind": "body", "body": completion_body(content=c)} for c in (7, ["UP"], {"a": 1})]
    with serve_in_thread(reply=REPLY) as server:
        server.add_faults(*bad, "ok", *bad)
        summary = play(tmp_path / "run", priced(server), max_steps=4, history_steps=2)
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert len(steps) == 4 and all(s["text"] == REPLY for s in steps)
    assert summary.to_dict()["retries"] == 6


# -- 6. answers capped in size --------------------------------------------------------------------------


def test_a_20_mb_answer_is_cut_and_flagged(tmp_path: Path) -> None:
    huge = "I think. " + "x" * 20_000_000 + "\nACTION: FIRE"
    with serve_in_thread(reply=lambda body: huge) as server:
        completion = generate(vlm_for(server))
        assert completion.answer_truncated and len(completion.text) == MAX_ANSWER_CHARS
        head, tail = completion.text.split(CUT_MARK)
        assert huge.startswith(head) and huge.endswith(tail) and tail.endswith("ACTION: FIRE")
        play(tmp_path / "run", priced(server), max_steps=2)
    steps = read_jsonl(tmp_path / "run" / "steps.jsonl")
    assert [len(s["text"]) for s in steps] == [MAX_ANSWER_CHARS] * 2
    assert all(s["answer_truncated"] is True and s["action_name"] == "FIRE" for s in steps)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["answers_truncated"] == 2
    assert (tmp_path / "run" / "steps.jsonl").stat().st_size < 4 * MAX_ANSWER_CHARS


def test_a_body_over_the_byte_cap_is_refused_before_it_is_read_whole() -> None:
    from atari_vlm.models import transport

    huge = "x" * (transport.MAX_BODY_BYTES + 1)
    with serve_in_thread(reply=lambda body: huge) as server:
        err = fails(vlm_for(server, max_retries=0))
    assert "malformed response" in str(err) and f"over {transport.MAX_BODY_BYTES}" in str(err)


# -- 7. credentials in the base URL ----------------------------------------------------------------------

SECRETS = ("Secret-PW-1234", "Query-Key-5678")


def test_credentials_in_the_base_url_reach_no_file_no_page_no_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_in_thread(reply=REPLY) as server:
        userinfo = server.base_url.replace("http://", "http://user1:Secret-PW-1234@")
        base = ["play", "--game", "Pong", "--model", "openai:m", "--episodes", "1", "--max-steps", "2"]
        refused = main([*base, "--base-url", userinfo, "--out", str(tmp_path / "a")])
        query = f"{server.base_url}?api-key=Query-Key-5678"
        played = main([*base, "--base-url", query, "--out", str(tmp_path / "b")])
        assert server.requests[-1].path.endswith("?api-key=Query-Key-5678")  # the query is honoured
        server.add_faults(*[500] * 3)
        failed = main([*base, "--base-url", query, "--retry-time", "0", "--out", str(tmp_path / "c")])
    shown = capsys.readouterr()
    assert (refused, played, failed) == (2, 0, 1)
    assert "must not hold a user name or password" in shown.err
    assert main(["report", str(tmp_path / "b")]) == 0
    written = "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())
    for secret in SECRETS:
        assert secret not in shown.out + shown.err + capsys.readouterr().out
        assert secret not in written
    assert not (tmp_path / "a").exists()


def test_url_secrets_are_redacted_from_server_messages() -> None:
    with serve_in_thread(reply=REPLY) as server:
        server.add_faults({"status": 400, "message": "bad key Query-Key-5678 in ?api-key=Query-Key-5678"})
        err = fails(vlm_for(server, base_url=f"{server.base_url}?api-key=Query-Key-5678"))
    assert "Query-Key-5678" not in str(err) and "***" in str(err)


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_other_sdks_retry_a_word_for_a_count_and_estimate_a_negative_one(provider: str) -> None:
    if provider == "anthropic":
        from test_anthropic_backend import MESSAGE as good
        from test_anthropic_backend import make

        word, negative = (
            {"input_tokens": "many", "output_tokens": 3},
            {"input_tokens": -5, "output_tokens": 3},
        )
        field = "usage"
    else:
        from test_gemini_backend import RESPONSE as good
        from test_gemini_backend import make

        word, negative = {"promptTokenCount": "many"}, {"promptTokenCount": -5, "candidatesTokenCount": 3}
        field = "usageMetadata"
    script = HttpScript(httpx2.Response(200, json={**good, field: negative}))
    script.then(httpx2.Response(200, json={**good, field: word}))
    completion = asyncio.run(_generate_closed(make(script), REQUEST))
    assert completion.retries == 1 and len(script.requests) == 2  # the word: a malformed answer
    assert completion.usage_estimated  # the negative count: atari-vlm's own, by the provider's image formula
    assert completion.usage == expected_usage(REQUEST, completion.text, provider=provider)


async def _generate_closed(vlm: Any, request: Request) -> Completion:
    try:
        return await vlm.generate(request)
    finally:
        await vlm.aclose()
