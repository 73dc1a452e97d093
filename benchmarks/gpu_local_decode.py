"""Scored choices vs free text on a GPU, with a real-size architecture: decisions/s at batch 1, 8, 32.

The checkpoint is the one of ``gpu_local.py``: Qwen2-VL-2B's architecture (its published sizes) with
random weights in bf16, Qwen2-VL's real default image resolution (48 image tokens a native frame),
loaded through ``LocalVLM``. B Pong games play through ``rollout.play_episodes`` on a model with
``max_batch_size`` B, basic prompt style, first with free text (``--max-tokens``, the basic style's
default 32; random weights seldom stop early) and then with scored choices (one prefill, the six
Pong actions scored over its KV cache), on the same model object within each repeat.

    python benchmarks/gpu_local_decode.py --batch 1 8 32 --repeats 3

Without a CUDA device it says so and exits (status 0). ``--device cpu --dtype float32 --text-layers 1
--vision-depth 1 --batch 1 2 --steps 6 --repeats 1`` runs the same code path on a CPU with the real
widths but one layer each, to check the script itself.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _common import machine, median, print_table, steady_rate
from gpu_local import QWEN2_VL_2B_TEXT, QWEN2_VL_2B_VISION, build_checkpoint
from local_decode import workers


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=32, help="free answers (the basic default)")
    parser.add_argument("--steps", type=int, default=None, help="decisions per game (default 2B + 20)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--text-layers", type=int, default=QWEN2_VL_2B_TEXT["num_hidden_layers"])
    parser.add_argument("--vision-depth", type=int, default=QWEN2_VL_2B_VISION["depth"])
    parser.add_argument("--workdir", default=None, help="where the checkpoint is written (default: temp)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print('gpu_local_decode.py needs torch (pip install "atari-vlm[local]"); nothing was measured')
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: gpu_local_decode.py measures a GPU, so nothing was measured")
        return 0

    from atari_vlm.models.local import LocalVLM

    print(
        f"# gpu_local_decode: Qwen2-VL-2B architecture, random weights, {args.dtype} on {args.device}; "
        f"{machine()}"
    )
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = build_checkpoint(
            Path(tmp) / "qwen2-vl-2b-random",
            args.device,
            getattr(torch, args.dtype),
            args.text_layers,
            args.vision_depth,
        )
        vlm = LocalVLM(path, device=args.device, dtype=args.dtype, max_batch_size=max(args.batch))
        for batch in args.batch:
            vlm.max_batch_size = batch
            steps = args.steps or 2 * batch + 20
            free, score, ratios = [], [], []
            for _ in range(args.repeats):
                one = asyncio.run(
                    steady_rate(workers(vlm, "free", steps=steps, max_tokens=args.max_tokens), batch)
                )
                two = asyncio.run(steady_rate(workers(vlm, "score", steps=steps), batch))
                free.append(one)
                score.append(two)
                ratios.append(two / one)
            rows.append((batch, steps, median(free), median(score), median(ratios), min(ratios), max(ratios)))
        asyncio.run(vlm.aclose())
    print_table(
        [
            "batch (games)",
            "steps/game",
            "free, decisions/s",
            "score, decisions/s",
            "ratio (median)",
            "min",
            "max",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
