"""Example 5: in-context learning from expert play, and what it changes in the prompt.

The RAM expert plays one Pong game into a trajectory memory; the steps that mattered in it (just
before it scored, just before it conceded) come back as exemplars (frame, state text -> action)
shown in every later prompt. The example prints them, the prompt with and without them, and then
plays the same seed twice, without and with the exemplars.

In-context learning needs a model that can read examples and generalise from them, which takes a
large pretrained model (an API model, a 7B+ local checkpoint). The offline default here,
``pong-tiny`` (a tiny model trained by atari-vlm on RAM-expert demonstrations; not a general VLM),
was trained on prompts without exemplars: for it they are only a longer prompt, and whatever they
change in its play is not learning. ``demo`` (random weights) plays noise either way.

    python examples/05_in_context_learning.py                      # pong-tiny, offline
    python examples/05_in_context_learning.py --model openai:gpt-4o-mini --steps 100
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from _common import example_args

from atari_vlm.env import AtariVLMEnv
from atari_vlm.memory import TrajectoryStore, select_exemplars
from atari_vlm.models.base import ImagePart
from atari_vlm.models.registry import load_model
from atari_vlm.record import record
from atari_vlm.rollout import explicit_seeds, play_episode
from atari_vlm.spec import RunSpec
from atari_vlm.workers import prompt_builder, vlm_agent

DEMO_DECISIONS = 2000  # long enough for the expert to score a few points (a rally is long)
PLAY_SEED = 7  # the seed both games are played on (the demonstration's seeds come from 1000)


def show_prompt(label: str, request) -> None:
    """The user turn of a request as text, each image as a placeholder."""
    parts = request.messages[-1].parts
    images = sum(isinstance(p, ImagePart) for p in parts)
    text = "".join("<image>\n" if isinstance(p, ImagePart) else p.text + "\n" for p in parts)
    print(f"--- prompt {label}: {images} image(s), {len(text)} characters of user turn ---")
    print(text.rstrip())


async def play(spec: RunSpec, model, exemplars) -> float:
    env = AtariVLMEnv(spec.env, spec.observation)
    agent = vlm_agent(spec, env.action_names, model.vlm, exemplars=exemplars)
    try:
        result = await play_episode(env, agent, episode=0, seeds=explicit_seeds([PLAY_SEED])[0])
    finally:
        env.close()
    return result.episode_return


def main() -> None:
    args = example_args(__doc__, model="pong-tiny", steps=300)
    model = load_model(args.model)
    spec = RunSpec.build(game="Pong", model=model.spec, max_steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        store = TrajectoryStore(Path(args.out or tmp) / "memory")
        (meta,) = record("Pong", "expert", 1, store, seed=1000, max_steps=DEMO_DECISIONS)
        print(f"expert demonstration: {meta.steps} decisions, return {meta.episode_return:+g}")
        exemplars = select_exemplars(store, "Pong", top_k_episodes=1, image_budget=4)
        print(f"{len(exemplars)} exemplars chosen:", [f"{e.action_name} ({e.note})" for e in exemplars])

        env = AtariVLMEnv(spec.env, spec.observation)
        obs, _ = env.reset(seed=PLAY_SEED)
        builder = prompt_builder(spec, env.action_names)
        env.close()
        show_prompt("without exemplars", builder.request(obs))
        show_prompt("with exemplars", builder.request(obs, exemplars=builder.exemplar_parts(exemplars)))

        async def run() -> None:
            try:
                for label, shown in (("without", ()), ("with", exemplars)):
                    score = await play(spec, model, shown)
                    print(f"return {label} exemplars ({args.steps} decisions, seed {PLAY_SEED}): {score:+g}")
            finally:
                await model.vlm.aclose()

        asyncio.run(run())
        if model.warning:
            print(f"note: {model.warning}")


if __name__ == "__main__":
    main()
