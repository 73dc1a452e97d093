"""Example 3: a local Hugging Face VLM in-process (Qwen2-VL, LLaVA-1.6, Idefics3, ...).

Point --model at a downloaded checkpoint directory (e.g. Qwen/Qwen2-VL-2B-Instruct). Offline, the
example builds a tiny random-weight Qwen2-VL checkpoint of the same layout, so the code path is real
and the moves are noise.

    python examples/03_local_checkpoint.py --model ~/models/Qwen2-VL-2B-Instruct
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import example_args

from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec


def main() -> None:
    args = example_args(__doc__, model="", steps=10)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model:
            from atari_vlm.models.tiny import build_tiny_checkpoint

            model = str(build_tiny_checkpoint("qwen2_vl", Path(tmp) / "tiny-qwen2-vl"))
            print("no --model given: using a tiny RANDOM-WEIGHT Qwen2-VL checkpoint at", model)
        spec = RunSpec.build(
            game="Breakout",
            model=model,
            episodes=1,
            max_steps=args.steps,
            resize_shape=(105, 80),
            video=False,
        )
        summary = run_play(spec, args.out or Path(tmp) / "run")
        print(summary.to_dict())


if __name__ == "__main__":
    main()
