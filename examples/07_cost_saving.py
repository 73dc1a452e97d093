"""Example 7: settings that cut image cost: smaller frames, grayscale, fewer decisions.

Prints bytes per image for each setting (what an API is sent), then plays with the cheapest.

    python examples/07_cost_saving.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import example_args

from atari_vlm import imaging
from atari_vlm.env import make_env
from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec

SETTINGS = {
    "native 210x160 colour": {},
    "112x112 colour": {"resize_shape": (112, 112)},
    "112x112 grayscale": {"resize_shape": (112, 112), "grayscale": True},
    "84x84 grayscale, frame_skip 8": {"resize_shape": (84, 84), "grayscale": True, "frame_skip": 8},
}


def main() -> None:
    args = example_args(__doc__, steps=10)
    for label, options in SETTINGS.items():
        env = make_env("Pong", seed=0, **options)
        obs, _ = env.reset()
        for _ in range(30):
            obs, *_ = env.step(0)
        print(f"{label:32s} JPEG {len(imaging.encode(obs['image'])):6d} bytes")
        env.close()
    with tempfile.TemporaryDirectory() as tmp:
        cheapest = SETTINGS["84x84 grayscale, frame_skip 8"]
        spec = RunSpec.build(game="Pong", model=args.model, max_steps=args.steps, video=False, **cheapest)
        summary = run_play(spec, args.out or Path(tmp) / "run")
        print(summary.to_dict())


if __name__ == "__main__":
    main()
