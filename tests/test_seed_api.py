"""The seed's documented API: AtariVLMEnvironment, get_vlm_prompt, agents with select_action."""

import pytest
from PIL import Image

from atari_vlm.errors import ConfigError
from atari_vlm.seed_api import AtariVLMEnvironment, DemoAgent, GPT4VAgent


def test_environment_as_the_seed_documents_it():
    env = AtariVLMEnvironment(game_name="Pong-v5", resize_shape=(112, 112), frame_skip=8, frame_stack=2)
    obs, info = env.reset(seed=0)
    assert isinstance(obs["image"], Image.Image) and obs["image"].size == (226, 112)  # 2 frames in a grid
    assert "paddle" in obs["text"]
    assert obs["action_space"] == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    assert [f.size for f in obs["frames"]] == [(112, 112), (112, 112)]
    action = env.action_space.sample()
    obs, reward, done, truncated, info = env.step(action)
    assert info["episode_frame_number"] == 8
    for style in ("basic", "cot", "expert"):
        prompt = env.get_vlm_prompt(style)
        assert "Pong" in prompt and "ACTION: <name>" in prompt
    env.close()


def test_demo_agent_selects_a_legal_action():
    env = AtariVLMEnvironment("Pong")
    obs, _ = env.reset(seed=1)
    agent = DemoAgent(max_tokens=8)
    action = agent.select_action(obs, env.get_vlm_prompt("basic"))
    assert 0 <= action < len(obs["action_space"])
    assert isinstance(agent.last_answer, str)
    agent.close()
    env.close()


def test_gpt4v_agent_without_a_key_is_a_clear_error(monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        GPT4VAgent()
