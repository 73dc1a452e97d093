"""Example 2: an API model picks actions (the seed's GPT4VAgent). Needs OPENAI_API_KEY, or any
OpenAI-compatible server via --model openai:<name> and OPENAI_BASE_URL; without either it falls back
to the demo model so the example still runs (and says so).

    OPENAI_API_KEY=... python examples/02_gpt4v_agent.py --model openai:gpt-4o
"""

from __future__ import annotations

import os

from _common import example_args

from atari_vlm import AtariVLMEnvironment, GPT4VAgent, ModelAgent


def main() -> None:
    args = example_args(__doc__, model="auto", steps=5)
    env = AtariVLMEnvironment("Pong-v5", resize_shape=(105, 80), seed=0)
    if os.environ.get("OPENAI_API_KEY") and args.model in ("auto", "gpt-4o", "openai:gpt-4o"):
        agent: ModelAgent = GPT4VAgent()  # key from OPENAI_API_KEY
    else:
        agent = ModelAgent(args.model)
    if agent.loaded.warning:
        print("NOTE:", agent.loaded.warning)
    obs = env.reset()
    prompt = env.get_vlm_prompt("expert")
    for step in range(args.steps):
        action = agent.select_action(obs, prompt)
        obs, reward, terminated, truncated, _ = env.step(action)
        print(f"step {step}: {env.action_names[action]:>9s}  answer: {agent.last_answer[:60]!r}")
        if terminated or truncated:
            break
    agent.close()
    env.close()


if __name__ == "__main__":
    main()
