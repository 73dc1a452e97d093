"""Example 8: a local model loaded in 4-bit through bitsandbytes (`pip install "atari-vlm[quantize]"`).

On a GPU, point --model at a real checkpoint: `--model ~/models/Qwen2.5-VL-7B-Instruct --device cuda`.
Offline, the example quantizes a tiny random-weight LLaVA checkpoint on the CPU.

    python examples/08_quantized_local.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from atari_vlm.runner import run_play
from atari_vlm.spec import RunSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model:
            from atari_vlm.models.tiny import build_tiny_checkpoint

            model = str(build_tiny_checkpoint("llava", Path(tmp) / "tiny-llava"))
            print("no --model given: quantizing a tiny RANDOM-WEIGHT LLaVA checkpoint:", model)
        spec = RunSpec.build(
            game="Pong", model=model, max_steps=args.steps, video=False, quantize="4bit", device=args.device
        )
        summary = run_play(spec, Path(tmp) / "run")
        print(summary.to_dict())


if __name__ == "__main__":
    main()
