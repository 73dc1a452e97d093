import asyncio

import numpy as np
import pytest

from atari_vlm.agent import VLMAgent
from atari_vlm.errors import ConfigError
from atari_vlm.games import game_info
from atari_vlm.memory import Exemplar
from atari_vlm.models.base import Completion, ImagePart, TextPart
from atari_vlm.prompts import PROMPT_STYLES, render_system_prompt, render_turn_prompt
from atari_vlm.prompts.builder import PromptBuilder
from atari_vlm.spec import DecodingSpec, ObservationSpec, PromptSpec


def policy(vlm, *, exemplars=(), max_tokens=None, state_text=True, decode="auto", **prompt):
    """The policy for Pong-like ACTIONS with prompt settings ``prompt`` (PromptSpec fields)."""
    builder = PromptBuilder(
        game_info("Pong"),
        ACTIONS,
        PromptSpec(**prompt),
        ObservationSpec(state_text=state_text),
        DecodingSpec(max_tokens=max_tokens, decode=decode),
    )
    return VLMAgent(vlm, builder, exemplars=exemplars)


RICH = ["Pong", "Breakout", "SpaceInvaders", "MsPacman", "Qbert", "Seaquest"]
ACTIONS = ["NOOP", "FIRE", "UP", "DOWN"]


@pytest.mark.parametrize("style", PROMPT_STYLES)
@pytest.mark.parametrize("game", [*RICH, "Asterix", "Zaxxon"])
def test_every_style_renders_for_every_game_group(style, game):
    info = game_info(game)
    text = render_system_prompt(style, info, ACTIONS)
    assert "${" not in text and info.name in text
    assert "0: NOOP" in text and "3: DOWN" in text
    assert "ACTION: <name>" in text
    if style == "expert":
        assert info.expert_tips.splitlines()[0] in text
    if style == "cot":
        assert "Think briefly" in text


def test_expert_tips_are_game_specific_for_the_six_and_generic_otherwise():
    assert "oxygen" in game_info("Seaquest").expert_tips
    assert "paddle" in game_info("Pong").expert_tips
    assert game_info("Asterix").expert_tips == game_info("Zaxxon").expert_tips


def test_json_answer_format():
    text = render_system_prompt("cot", game_info("Pong"), ACTIONS, answer_format="json")
    assert '{"reasoning": "<one short sentence>", "action": "<name>"}' in text
    assert '"action"' in render_turn_prompt("state", answer_format="json")
    with pytest.raises(ConfigError, match="answer format must be one of"):
        render_system_prompt("basic", game_info("Pong"), ACTIONS, answer_format="xml")


class Echo:
    name = "echo"

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []

    async def generate(self, request):
        self.requests.append(request)
        return Completion(self.answers.pop(0))

    async def aclose(self):
        pass


def obs(value=0):
    image = np.full((20, 16, 3), value, np.uint8)
    return {"image": image, "frames": image[None], "text": f"state {value}"}


def test_history_limits_text_and_images_separately():
    vlm = Echo([f"The ball is high. ACTION: {a}" for a in ["UP", "DOWN", "UP", "FIRE", "NOOP"]])
    agent = policy(vlm, history_steps=3, history_images=1)
    for i in range(5):
        asyncio.run(agent.act(obs(i)))
    last = vlm.requests[-1].messages[1]
    text = last.parts[-1].text
    assert "step 2: DOWN" in text and "step 4: FIRE (The ball is high)" in text
    assert "step 1:" not in text
    images = last.images
    assert len(images) == 2  # one remembered frame plus the current one
    assert int(images[0].pixels[0, 0, 0]) == 3 and int(images[1].pixels[0, 0, 0]) == 4
    agent.reset()
    assert agent.build_request(obs()).num_images == 1


def test_exemplars_come_first_as_frame_then_action_pairs():
    ex = [Exemplar(np.full((20, 16, 3), 200, np.uint8), "ball near", "UP", "2 steps before scoring +1")]
    vlm = Echo(["ACTION: UP"])
    agent = policy(vlm, exemplars=ex)
    request = agent.build_request(obs(7))
    parts = request.messages[1].parts
    assert isinstance(parts[1], ImagePart) and int(parts[1].pixels[0, 0, 0]) == 200
    assert isinstance(parts[2], TextPart) and "ACTION: UP (2 steps before scoring +1)" in parts[2].text
    assert int(request.messages[1].images[-1].pixels[0, 0, 0]) == 7
    agent.set_exemplars([])
    assert agent.build_request(obs(7)).num_images == 1


def test_style_defaults_for_max_tokens_and_bad_history():
    assert policy(Echo([]), prompt="cot").max_tokens == 256
    assert policy(Echo([]), prompt="basic", answer_format="json").max_tokens == 32 + 32
    assert policy(Echo([]), max_tokens=9).max_tokens == 9
    with pytest.raises(ConfigError, match="history_steps must be between 0 and 64, got -1"):
        policy(Echo([]), history_steps=-1)


def test_without_state_text_the_prompt_never_mentions_it():
    vlm = Echo(["ACTION: UP"])
    agent = policy(vlm, state_text=False)
    assert "description of the game state" not in agent.system_prompt
    asyncio.run(agent.act(obs(3)))
    turn = vlm.requests[0].messages[1].parts[-1].text
    assert "state 3" not in turn and "Game state" not in turn
    with_text = policy(Echo([]))
    assert "description of the game state" in with_text.system_prompt
    assert "Game state: state 3" in with_text.build_request(obs(3)).messages[1].parts[-1].text


def test_json_mode_asks_openai_compatible_servers_for_a_json_object():
    pytest.importorskip("openai")
    from atari_vlm.models.openai_compat import OpenAICompatVLM

    vlm = OpenAICompatVLM(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", server_kind="vllm")
    agent = policy(vlm, answer_format="json", decode="free")
    body = vlm.request_body(agent.build_request(obs()))
    assert body["response_format"] == {"type": "json_object"}
    plain = policy(vlm, decode="free")
    assert "response_format" not in vlm.request_body(plain.build_request(obs()))
    # With --decode auto a server that can constrain is asked to: vLLM's documented field.
    auto = policy(vlm).build_request(obs())
    assert auto.decode == "constrained" and auto.choices == tuple(ACTIONS)
    assert vlm.request_body(auto)["structured_outputs"] == {"choice": ACTIONS}
