"""Example 1: the environment a VLM sees: image, state text, the game's own action names.

python examples/01_basic_environment.py
"""

from __future__ import annotations

from _common import example_args

from atari_vlm import AtariVLMEnvironment


def main() -> None:
    args = example_args(__doc__)
    env = AtariVLMEnvironment(game_name="Pong-v5", seed=0)
    obs = env.reset()  # the observation alone, as the seed documents (make_env's reset gives (obs, info))
    print("image:", obs["image"].size, "| frames:", len(obs["frames"]))
    print("actions:", obs["action_space"])
    print("state:", obs["text"])
    total = 0.0
    for _ in range(args.steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        if terminated or truncated:
            break
    print(f"random play for {args.steps} steps: return {total:g}; now: {obs['text'].splitlines()[-1]}")
    env.close()


if __name__ == "__main__":
    main()
