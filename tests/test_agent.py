import asyncio

import numpy as np
import pytest

from atari_vlm.agent import RandomAgent
from atari_vlm.env import AtariVLMEnv
from atari_vlm.errors import ConfigError
from atari_vlm.models.base import Completion, ImagePart, Request, TextPart, Usage
from atari_vlm.spec import RunSpec
from atari_vlm.workers import vlm_agent


class ScriptedVLM:
    """A model that answers from a list and keeps every request it got."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[Request] = []

    async def generate(self, request: Request) -> Completion:
        self.requests.append(request)
        return Completion(self.answers.pop(0), Usage(10, 2), latency_s=0.01, model=self.name)

    async def aclose(self) -> None:
        pass


def make_agent(answers, **settings):
    """An env and the policy the run spec of ``settings`` (flat names) builds, over a scripted model."""
    spec = RunSpec.build(game="Pong", model="scripted", **settings)
    env = AtariVLMEnv(spec.env, spec.observation, seed=0)
    vlm = ScriptedVLM(answers)
    return env, vlm, vlm_agent(spec, env.action_names, vlm)


def test_the_system_prompt_names_the_game_the_actions_and_the_answer_format():
    _, _, agent = make_agent([])
    prompt = agent.system_prompt
    assert "Pong" in prompt and "RIGHT moves your paddle up" in prompt
    for i, name in enumerate(["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]):
        assert f"{i}: {name}" in prompt
    assert "ACTION: <name>" in prompt and "current game screen" in prompt


def test_request_carries_the_frame_and_state_text():
    env, vlm, agent = make_agent(["ACTION: LEFT"], max_tokens=7)
    obs, _ = env.reset()
    decision = asyncio.run(agent.act(obs))
    assert (decision.action, decision.action_name, decision.parsed) == (3, "LEFT", True)
    request = vlm.requests[0]
    assert request.max_tokens == 7 and request.temperature == 0.0
    system, user = request.messages
    assert system.role == "system" and user.role == "user"
    image, text = user.parts
    assert isinstance(image, ImagePart) and np.array_equal(image.pixels, obs["image"])
    assert isinstance(text, TextPart) and obs["text"] in text.text


def test_sequence_layout_sends_every_stacked_frame():
    env, vlm, agent = make_agent(["ACTION: FIRE"], frame_stack=3, frame_layout="sequence")
    obs, _ = env.reset()
    asyncio.run(agent.act(obs))
    assert vlm.requests[0].num_images == 3
    assert "last 3 screens as separate images" in agent.system_prompt


def test_unparsable_answer_plays_noop_is_counted_and_the_next_prompt_says_so():
    env, vlm, agent = make_agent(["I like turtles", "ACTION: FIRE", "ACTION: FIRE"])
    obs, _ = env.reset()
    first = asyncio.run(agent.act(obs))
    assert (first.action_name, first.parsed) == ("NOOP", False)
    asyncio.run(agent.act(obs))
    assert "did not name a legal action, so NOOP was played" in vlm.requests[1].messages[1].parts[-1].text
    asyncio.run(agent.act(obs))
    assert "did not name" not in vlm.requests[2].messages[1].parts[-1].text


def test_a_custom_prompt_file_is_used_and_a_missing_one_is_a_clear_error(tmp_path):
    template = tmp_path / "mine.txt"
    template.write_text("Play ${title}. Actions: ${actions}")
    _, _, agent = make_agent([], prompt=str(template))
    assert agent.system_prompt.startswith("Play Pong. Actions: 0: NOOP")
    with pytest.raises(ConfigError, match="cannot read prompt file"):
        make_agent([], prompt=str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("Play ${nonsense}")
    with pytest.raises(ConfigError, match="unknown or malformed variable"):
        make_agent([], prompt=str(bad))
    with pytest.raises(ConfigError, match=r"prompt must be one of basic, cot, expert, atari-gpt or a \.txt"):
        make_agent([], prompt="fancy")


def test_random_agent_is_seeded_and_legal():
    names = ["NOOP", "FIRE", "UP"]
    a, b = RandomAgent(names, seed=5), RandomAgent(names, seed=5)
    xs = [asyncio.run(a.act({})).action for _ in range(50)]
    assert xs == [asyncio.run(b.act({})).action for _ in range(50)]
    assert set(xs) == {0, 1, 2}


def test_prompt_file_flag_is_an_alias_of_prompt(tmp_path):
    from atari_vlm.cli import build_parser

    args = build_parser().parse_args(["play", "--game", "Pong", "--prompt-file", str(tmp_path / "p.txt")])
    assert args.prompt == str(tmp_path / "p.txt")
