"""The seed's documented API: AtariVLMEnvironment, get_vlm_prompt, agents with select_action, and the
recommendation table of --show-recommendations."""

import re
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from atari_vlm.env import AtariVLMEnv
from atari_vlm.errors import ConfigError
from atari_vlm.models.presets import availabilities, get_preset, recommend
from atari_vlm.seed_api import (
    SEED_RECOMMENDATIONS,
    AtariVLMEnvironment,
    DemoAgent,
    GPT4VAgent,
    render_recommendations,
)

ROOT = Path(__file__).resolve().parent.parent
PONG_ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]


def test_environment_as_the_seed_documents_it():
    env = AtariVLMEnvironment(game_name="Pong-v5", resize_shape=(112, 112), frame_skip=8, frame_stack=2)
    obs = env.reset(seed=0)  # the observation alone, as the seed documents
    assert isinstance(obs, dict)
    assert isinstance(obs["image"], Image.Image) and obs["image"].size == (226, 112)  # 2 frames in a grid
    assert "paddle" in obs["text"]
    assert obs["action_space"] == PONG_ACTIONS
    assert [f.size for f in obs["frames"]] == [(112, 112), (112, 112)]
    assert env.reset_info["lives"] == 0 and env.reset_info["episode_frame_number"] == 0
    action = env.action_space.sample()
    obs, reward, done, truncated, info = env.step(action)
    assert info["episode_frame_number"] == 8
    assert isinstance(reward, float) and done is False and truncated is False
    for style in ("basic", "cot", "expert"):
        prompt = env.get_vlm_prompt(style)
        assert "Pong" in prompt and "ACTION: <name>" in prompt
    env.close()


def test_the_gymnasium_env_inside_keeps_gymnasiums_reset():
    """The seed's class differs from Gymnasium on purpose; ``env.env`` is make_env's env, unchanged."""
    with AtariVLMEnvironment("Pong", seed=5) as env:
        assert isinstance(env.env, AtariVLMEnv)
        obs, info = env.env.reset(seed=5)
        seed_obs = env.reset(seed=5)
        assert (seed_obs["pixels"] == obs["image"]).all() and seed_obs["text"] == obs["text"]
        assert env.reset_info == dict(info)
        assert env.render().shape == (210, 160, 3)


def test_the_constructor_seed_makes_the_first_reset_reproducible():
    def play(seed):
        env = AtariVLMEnvironment("Pong", seed=seed)
        obs = env.reset()
        for t in range(60):  # sticky actions (p=0.25) draw from the env's seeded generator
            obs, *_ = env.step(2 + t // 6 % 2)
        env.close()
        return obs["pixels"]

    assert (play(3) == play(3)).all()
    assert not (play(3) == play(4)).all()


def test_demo_agent_selects_a_legal_action():
    env = AtariVLMEnvironment("Pong")
    obs = env.reset(seed=1)
    agent = DemoAgent(max_tokens=8)
    action = agent.select_action(obs, env.get_vlm_prompt("basic"))
    assert 0 <= action < len(obs["action_space"])
    assert isinstance(agent.last_answer, str)
    agent.close()
    env.close()


def test_gpt4v_agent_without_a_key_is_a_clear_error(monkeypatch):
    pytest.importorskip("openai")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        GPT4VAgent()


# --- the recommendation table ------------------------------------------------------------------------


def rendered_recommendations(**options) -> str:
    console = Console(record=True, width=400, color_system=None)
    render_recommendations(console, **options)
    return console.export_text()


def test_recommendations_name_todays_presets_with_their_recorded_prices(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    text = rendered_recommendations(gpu=False)
    for pick in SEED_RECOMMENDATIONS:
        assert pick.seed_pick in text and pick.role in text
        for name in pick.today:
            preset = get_preset(name)  # today's names resolve to presets (a renamed preset fails here)
            if preset.is_api:
                prices = preset.prices
                price = f"${prices.input_per_mtok:g} / ${prices.output_per_mtok:g} (read {prices.date})"
                assert re.search(rf"{re.escape(name)}\s.*{re.escape(price)}", text), name
            else:
                assert re.search(rf"{re.escape(name)}\s.*open weights\s.*free \(your hardware\)", text), name
    retired = get_preset("claude-3.5-sonnet").capability.lifecycle
    assert retired.retired and f"claude-3.5-sonnet: retired by anthropic on {retired.date}" in text
    assert "gpt-4o-mini" in text and "claude-sonnet-5" in text and "qwen2.5-vl-3b" in text


def test_recommendations_say_what_is_usable_here(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    without = rendered_recommendations(gpu=False)
    assert re.search(r"gpt-4o-mini\s.*no: set OPENAI_API_KEY", without)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with_key = rendered_recommendations(gpu=False)
    assert re.search(r"gpt-4o-mini\s.*yes: OPENAI_API_KEY is set", with_key)
    assert "sk-test-not-a-real-key" not in with_key
    advice = recommend(availabilities(), gpu=False)
    assert advice.startswith("API key found") and f"For this machine: {advice}" in " ".join(with_key.split())


def test_recommendations_never_show_the_seeds_unsourced_figures():
    seed = (ROOT / "tests" / "seed_description.txt").read_text(encoding="utf-8")
    text = rendered_recommendations(gpu=False)
    # The seed's performance and cost tables, its ratings and speeds: none of their figures may appear.
    claims = re.findall(r"\d+(?:\.\d+)?-\d+(?:\.\d+)?", seed)  # "15-20", "$2.50-5", "~1-2s", "0.01-0.05"
    assert {"15-20", "200-300", "0.01-0.05", "1-2", "2.50-5"} <= set(claims)
    for claim in claims:
        assert claim not in text, claim
    assert "\u2b50" not in text and "stars" not in text.lower()
    assert "30%" not in text  # "boosts performance 30%+"
    assert "atari-vlm has played none of these models yet" in text


def benchmarks_sections() -> dict[int, str]:
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (\d+)\. ", text, flags=re.MULTILINE)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2], strict=True)}


def numbers(text: str) -> set[str]:
    return set(re.findall(r"\d[\d,]*(?:\.\d+)?", text))


def test_every_figure_of_the_table_is_in_the_benchmarks_section_it_cites():
    sections = benchmarks_sections()
    facts = [fact for pick in SEED_RECOMMENDATIONS for fact in pick.facts]
    assert len(facts) >= 4
    for fact in facts:
        section = sections[fact.section]
        missing = {n for n in numbers(fact.text) if n not in numbers(section)}
        assert not missing, f"{fact.text!r}: {sorted(missing)} not in BENCHMARKS.md section {fact.section}"
        if fact.kind == "not measured":
            assert "Not run" in section
        elif fact.kind == "computed":
            assert re.search(r"[Cc]omputed|documented formulas|documented rule", section)
    text = rendered_recommendations(gpu=False)
    for fact in facts:
        assert f"{fact.text} ({fact.kind}, section {fact.section})" in " ".join(text.split())
