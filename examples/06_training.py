"""Example 6: the trainer (the seed's training framework): play, remember, refresh exemplars,
evaluate on fixed held-out seeds against the random agent, checkpoint, resume.

    python examples/06_training.py --model openai:gpt-4o-mini --steps 200
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import example_args

from atari_vlm import VLMTrainer


def main() -> None:
    args = example_args(__doc__, steps=10)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = VLMTrainer(
            game_name="Pong-v5",
            vlm_type=args.model,
            prompt_type="cot",
            use_in_context_learning=True,
            out_dir=Path(args.out or tmp) / "train",
            eval_every=2,
            eval_seeds=(10_000,),
            max_steps=args.steps,
            max_tokens=24,
        )
        result = trainer.train(num_episodes=2)
        for row in (result.out_dir / "learning_curve.csv").read_text().splitlines():
            print(row)


if __name__ == "__main__":
    main()
