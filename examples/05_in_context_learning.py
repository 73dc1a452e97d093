"""Example 5: in-context learning from the model's own best play.

Episodes land in a trajectory memory; the steps that mattered in the best ones (just before a reward,
just before a loss) come back as example (frame -> action) pairs in later prompts.

    python examples/05_in_context_learning.py --model openai:gpt-4o-mini
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from _common import example_args

from atari_vlm.env import AtariVLMEnv
from atari_vlm.memory import TrajectoryStore, select_exemplars
from atari_vlm.models.registry import load_model
from atari_vlm.rollout import explicit_seeds, play_episode
from atari_vlm.spec import RunSpec
from atari_vlm.workers import vlm_agent


async def play(store: TrajectoryStore, model, episodes: int, steps: int, use_icl: bool) -> list[float]:
    spec = RunSpec.build(
        game="Pong", model=model.spec, max_steps=steps, resize_shape=(105, 80), max_tokens=16
    )
    env = AtariVLMEnv(spec.env, spec.observation)
    agent = vlm_agent(spec, env.action_names, model.vlm)
    returns = []
    for episode in range(episodes):
        if use_icl:
            agent.set_exemplars(select_exemplars(store, "Pong", top_k_episodes=2, image_budget=4))
        sink = store.recorder("Pong", {"action_names": env.action_names, "seed": episode, "source": "self"})
        seeds = explicit_seeds([episode])[0]
        result = await play_episode(env, agent, episode=episode, seeds=seeds, sink=sink)
        returns.append(result.episode_return)
    env.close()
    return returns


def main() -> None:
    args = example_args(__doc__, steps=60)
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        store = TrajectoryStore(Path(args.out or tmp) / "memory")

        async def run() -> None:
            try:
                print("without exemplars:", await play(store, model, 2, args.steps, use_icl=False))
                exemplars = select_exemplars(store, "Pong", top_k_episodes=2, image_budget=4)
                print(
                    f"{len(exemplars)} exemplars chosen:", [f"{e.action_name} ({e.note})" for e in exemplars]
                )
                print("with exemplars:   ", await play(store, model, 2, args.steps, use_icl=True))
            finally:
                await model.vlm.aclose()

        asyncio.run(run())
        print("episodes in memory:", [(m.episode_id, m.episode_return) for m in store.episodes("Pong")])


if __name__ == "__main__":
    main()
