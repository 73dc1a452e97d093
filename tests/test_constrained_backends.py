"""Constrained decisions on OpenAI-compatible servers, each kind as it documents its field.

The test server passes for vLLM, SGLang, llama.cpp, Ollama or ``transformers serve`` (what it says of
itself, which constraint field it takes) and honours the constraint, ignores it, or rejects it with
a 400, so each rule is checked on the wire: the field sent, the pick read back, the probabilities
from ``top_logprobs``, and the fall back to free text once a server refuses the field.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import pytest

from atari_vlm.models.base import Completion, Message, Request
from atari_vlm.models.capabilities import capability_for
from atari_vlm.models.constrain import (
    choice_gbnf,
    choice_probs_from_logprobs,
    choice_regex,
    choice_schema,
    read_choice,
)
from atari_vlm.models.openai_compat import OpenAICompatVLM
from atari_vlm.testing import serve_in_thread

CHOICES = ("NOOP", "FIRE", "RIGHT", "LEFT")
ASK = Request((Message.text("user", "Which action?"),), max_tokens=16, choices=CHOICES, decode="constrained")
ASK_REASONING = Request(ASK.messages, max_tokens=64, choices=CHOICES, decode="constrained", reasoning=True)
SCHEMA_FIELDS = {"type": "json_schema", "json_schema": {"name": "choose_action", "strict": True}}


@pytest.fixture(autouse=True)
def no_base_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def client(server: Any, **options: Any) -> OpenAICompatVLM:
    settings = {"model": "m", "base_url": server.base_url, "api_key": "k", "backoff_base_s": 0.001, "seed": 0}
    return OpenAICompatVLM(**{**settings, **options})


def ask(vlm: OpenAICompatVLM, *requests: Request) -> list[Completion]:
    async def go() -> list[Completion]:
        try:
            return [await vlm.generate(r) for r in requests]
        finally:
            await vlm.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("vllm", "structured_outputs", {"choice": list(CHOICES)}),
        ("sglang", "regex", "(RIGHT|NOOP|FIRE|LEFT)"),
        ("llamacpp", "grammar", 'root ::= "NOOP" | "FIRE" | "RIGHT" | "LEFT"'),
        (
            "ollama",
            "response_format",
            {
                **SCHEMA_FIELDS,
                "json_schema": {**SCHEMA_FIELDS["json_schema"], "schema": choice_schema(CHOICES, False)},
            },
        ),
        (
            "generic",
            "response_format",
            {
                **SCHEMA_FIELDS,
                "json_schema": {**SCHEMA_FIELDS["json_schema"], "schema": choice_schema(CHOICES, False)},
            },
        ),
    ],
)
@pytest.mark.parametrize("detected", [False, True])
def test_each_server_kind_gets_its_documented_field(
    kind: str, field: str, value: Any, detected: bool
) -> None:
    with serve_in_thread(model="m", reply="I would go ACTION: LEFT", kind=kind) as srv:
        vlm = client(srv, server_kind="auto" if detected else kind)
        (answer,) = ask(vlm, ASK)
        body = srv.requests[-1].body
    assert vlm.server_kind == kind  # told by what the server says of itself (owned_by, /api/version)
    assert body[field] == value
    assert "guided_choice" not in body  # vLLM ignores it silently since v0.12
    assert (answer.obtained, answer.choice, answer.constraint_note) == ("constrained", "LEFT", None)


@pytest.mark.parametrize(
    ("kind", "field"),
    [("vllm", "structured_outputs"), ("sglang", "response_format"), ("llamacpp", "json_schema")],
)
def test_a_reasoning_style_gets_a_schema_with_reasoning_first(kind: str, field: str) -> None:
    with serve_in_thread(model="m", reply="ACTION: FIRE", kind=kind) as srv:
        (answer,) = ask(client(srv, server_kind=kind), ASK_REASONING)
        body = srv.requests[-1].body
    schema = body[field]["json"] if kind == "vllm" else body[field]
    schema = schema["json_schema"]["schema"] if field == "response_format" else schema
    assert list(schema["properties"]) == ["reasoning", "action"] and schema["required"] == [
        "reasoning",
        "action",
    ]
    assert schema["properties"]["action"]["enum"] == list(CHOICES)
    assert answer.choice == "FIRE" and answer.text.startswith('{"reasoning"')


def test_a_server_that_ignores_the_constraint_is_seen_by_its_answer() -> None:
    with serve_in_thread(model="m", reply="ACTION: JUMP", kind="generic", constraints="ignore") as srv:
        (answer,) = ask(client(srv, server_kind="generic"), ASK)
    # The field was sent and accepted but not honoured: there is no legal pick to read; the agent
    # checks legality, counts it and plays the fallback.
    assert answer.obtained == "constrained" and answer.choice is None and answer.text == "ACTION: JUMP"
    with serve_in_thread(model="m", reply="ACTION: JUMP", kind="vllm", constraints="ignore") as srv:
        (raw,) = ask(client(srv, server_kind="vllm"), ASK)
    assert raw.choice == "ACTION: JUMP" and raw.choice not in CHOICES


def test_a_rejected_constraint_falls_back_to_free_once_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with serve_in_thread(model="m", reply="ACTION: RIGHT", kind="vllm", constraints="reject") as srv:
        vlm = client(srv, server_kind="vllm")
        first, second = ask(vlm, ASK, ASK)
        bodies = [r.body for r in srv.requests]
    assert [("structured_outputs" in b) for b in bodies] == [True, False, False]  # refused once, then free
    assert (first.obtained, first.retries, first.choice) == ("free", 1, None)
    assert first.text == "ACTION: RIGHT" and "refused the constraint field" in (first.constraint_note or "")
    assert (
        second.obtained == "free" and second.retries == 0 and second.constraint_note == first.constraint_note
    )
    assert not vlm.supports_constrained
    assert sum("refused the constraint field" in r.message for r in caplog.records) == 1  # one warning


def test_transformers_serve_is_not_constrained_and_a_wrong_kind_falls_back() -> None:
    with serve_in_thread(model="m", reply="ACTION: FIRE", kind="transformers") as srv:
        vlm = client(srv, server_kind="transformers")
        assert not vlm.supports_constrained
        (answer,) = ask(vlm, ASK)
        assert (
            "structured_outputs" not in srv.requests[-1].body
            and "response_format" not in srv.requests[-1].body
        )
        assert answer.obtained == "free" and "cannot constrain" in (answer.constraint_note or "")
        (wrong,) = ask(client(srv, server_kind="vllm"), ASK)  # it answers 422 to a field it does not know
    assert wrong.obtained == "free" and wrong.retries == 1 and "422" in (wrong.constraint_note or "")


LOGPROBS = {"NOOP": math.log(0.1), "FIRE": math.log(0.2), "LEFT": math.log(0.6)}


@pytest.mark.parametrize(("kind", "request_"), [("vllm", ASK), ("generic", ASK), ("generic", ASK_REASONING)])
def test_every_legal_actions_probability_from_top_logprobs(kind: str, request_: Request) -> None:
    with serve_in_thread(model="m", reply="ACTION: LEFT", kind=kind, choice_logprobs=LOGPROBS) as srv:
        (answer,) = ask(client(srv, server_kind=kind), request_)
        body = srv.requests[-1].body
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert answer.choice == "LEFT" and answer.choice_probs is not None
    assert answer.choice_probs == pytest.approx(
        {"NOOP": 0.1 / 0.9, "FIRE": 0.2 / 0.9, "RIGHT": 0.0, "LEFT": 0.6 / 0.9}
    )


def test_no_probabilities_are_claimed_when_a_first_token_is_ambiguous() -> None:
    choices = ("RIGHT", "RIGHTFIRE", "NOOP")
    tokens = [("RIGHT", [("RIGHT", math.log(0.5)), ("NOOP", math.log(0.5))])]
    assert choice_probs_from_logprobs(tokens, "RIGHT", 0, choices) is None
    clear = [("NO", [("NO", math.log(0.25)), ("RIGHTF", math.log(0.75))])]
    assert choice_probs_from_logprobs(clear, "NOOP", 0, choices) == pytest.approx(
        {"RIGHT": 0.0, "RIGHTFIRE": 0.75, "NOOP": 0.25}
    )
    assert choice_probs_from_logprobs([("{", []), ('"a', [])], '{"a', 2, choices) is None  # mid-token start


def test_openai_models_by_the_capability_table() -> None:
    with serve_in_thread(model="gpt-4o-mini", reply="ACTION: NOOP") as srv:
        mini = client(srv, model="gpt-4o-mini", capability=capability_for("openai", "gpt-4o-mini"))
        assert mini.server_kind == "openai" and mini.supports_constrained
        (answer,) = ask(mini, ASK)
        fmt = srv.requests[-1].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False and answer.choice == "NOOP"
    turbo = OpenAICompatVLM(model="gpt-4-turbo", api_key="k")  # no Structured Outputs on gpt-4-turbo
    assert not turbo.supports_constrained


def test_the_shapes_are_exact() -> None:
    assert choice_regex(("UP", "UPFIRE", "A.B")) == r"(UPFIRE|A\.B|UP)"  # longest first, escaped
    assert choice_gbnf(("UP", 'SAY"HI')) == 'root ::= "UP" | "SAY\\"HI"'
    assert read_choice('{"action": "UP"}', as_json=True) == "UP"
    assert read_choice('{"action": 3}', as_json=True) is None
    assert read_choice("[" * 100_000, as_json=True) is None  # untrusted: bounded, never an exception
    assert read_choice("X" * 65, as_json=False) is None
    assert read_choice(" UP\n", as_json=False) == "UP"
