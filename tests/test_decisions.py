"""Every answer a legal action (issue 13, the agent's side): --decode picks the strongest form the
backend offers, every constrained or scored answer is still checked, a server that ignores or refuses
the constraint is seen and said, and steps.jsonl records how each action was obtained."""

from __future__ import annotations

import json

import pytest

from atari_vlm.agent import resolve_decode, supported_decodes
from atari_vlm.errors import ConfigError
from atari_vlm.rundir import read_jsonl
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec
from atari_vlm.testing import serve_in_thread


class Backend:
    def __init__(self, name: str, **attributes: object) -> None:
        self.name = name
        self.__dict__.update(attributes)


@pytest.mark.parametrize(
    ("backend", "reasoning", "expected"),
    [
        (Backend("local", decode_modes=("free", "constrained", "score")), False, "score"),
        (Backend("local", decode_modes=("free", "constrained", "score")), True, "constrained"),
        (Backend("api", supports_constrained=True), False, "constrained"),
        (Backend("api", supports_constrained=False), False, "free"),
        (Backend("plain"), True, "free"),
    ],
)
def test_auto_is_the_strongest_decoding_the_backend_offers(backend, reasoning, expected):
    assert resolve_decode("auto", backend, reasoning=reasoning) == expected


def test_an_explicit_decoding_the_backend_cannot_do_is_refused():
    with pytest.raises(ConfigError, match="--decode score is not something plain can do; it offers free"):
        resolve_decode("score", Backend("plain"), reasoning=False)
    local = Backend("local", decode_modes=("free", "constrained", "score"))
    assert resolve_decode("score", local, reasoning=True) == "score"  # reasons first, then scores
    assert resolve_decode("free", local, reasoning=False) == "free"
    assert supported_decodes(Backend("odd", decode_modes="nonsense")) == ("free",)


def _play(tmp_path, server, **settings):
    spec = RunSpec.build(
        game="Pong",
        model="openai:m",
        base_url=server.base_url,
        api_key="k",
        max_steps=6,
        video=False,
        **settings,
    )
    summary = run_play(spec, tmp_path / "run")
    return summary.to_dict(), read_jsonl(tmp_path / "run" / "steps.jsonl")


def test_a_constraint_the_server_honours_gives_legal_actions(tmp_path):
    with serve_in_thread(reply="RIGHT", kind="vllm", constraints="honour") as server:
        summary, steps = _play(tmp_path, server, server_kind="vllm")
        body = server.requests[0].body
    assert body["structured_outputs"] == {
        "choice": ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    }
    assert {s["obtained"] for s in steps} == {"constrained"} and {s["action_name"] for s in steps} == {
        "RIGHT"
    }
    assert summary["unparsed"] == 0 and summary["constraint_ignored"] == 0


def test_a_server_that_ignores_the_constraint_is_counted_apart(tmp_path):
    """An old vLLM that drops the field answers free text: that must not pass as 'unparsable answers'."""
    with serve_in_thread(reply="I like turtles", kind="vllm", constraints="ignore") as server:
        summary, steps = _play(tmp_path, server, server_kind="vllm")
    assert summary["constraint_ignored"] == 6 and summary["unparsed"] == 0
    assert all(s["obtained"] == "fallback" and s["action_name"] == "NOOP" for s in steps)


def test_a_server_that_refuses_the_constraint_plays_on_free_and_says_so(tmp_path):
    with serve_in_thread(reply="ACTION: FIRE", kind="vllm", constraints="reject") as server:
        summary, steps = _play(tmp_path, server, server_kind="vllm")
        sent = [r.body for r in server.requests]
    assert len(steps) == 6 and {s["action_name"] for s in steps} == {"FIRE"}
    assert {s["obtained"] for s in steps} == {"parsed"}  # free text, parsed, after the refusal
    assert "structured_outputs" in sent[0] and all("structured_outputs" not in b for b in sent[2:])
    assert summary["constraint_note"] and "400" in summary["constraint_note"]
    assert steps[0]["constraint_note"]  # the step that met the refusal says so; later ones ask free text
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["constraint_note"] == summary["constraint_note"]


def test_free_decoding_parses_and_records_how(tmp_path):
    with serve_in_thread(reply='{"action": "LEFT", "reasoning": "... action: RIGHT"}') as server:
        _, steps = _play(tmp_path, server, decode="free", answer_format="json")
    assert {s["action_name"] for s in steps} == {"LEFT"}  # JSON read as JSON, not the last 'action:'
    assert {s["obtained"] for s in steps} == {"parsed"} and all(s["probs"] is None for s in steps)
