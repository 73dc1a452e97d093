"""The local backend on a GPU with a real-size architecture: decisions per second at batch 1, 8, 32.

No download: the model is Qwen2-VL-2B's architecture (its published config sizes) with random
weights in bf16, written as a safetensors checkpoint next to the tiny Qwen2-VL checkpoint's
tokenizer, chat template and processor (set to Qwen2-VL's real default resolution, so a native
Atari frame is 48 image tokens). It loads through ``LocalVLM`` like any checkpoint, and B Pong games
play through ``rollout.play_episodes`` with ``max_batch_size`` B. Random weights never stop early, so
every answer is ``--max-tokens`` long.

    python benchmarks/gpu_local.py --batch 1 8 32 --max-tokens 16

Without a CUDA device it says so and exits (status 0). ``--device cpu --text-layers 1
--vision-depth 1`` runs the same code path on a CPU with the real widths but one layer each, to check
the script itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from _common import machine, pong_workers, print_table, steady_rate

# Qwen2-VL-2B-Instruct's config.json (text model and vision tower), without its token ids: those come
# from the tiny checkpoint's tokenizer, whose ids all fit in this vocabulary.
QWEN2_VL_2B_TEXT = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "vocab_size": 151936,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN2_VL_2B_VISION = {
    "depth": 32,
    "embed_dim": 1280,
    "hidden_size": 1536,
    "mlp_ratio": 4,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
QWEN2_VL_2B_TIE_EMBEDDINGS = True
# Qwen2-VL's default image resolution bounds, in pixels (min 4 x 28 x 28, max 1280 x 28 x 28).
QWEN2_VL_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}


def build_checkpoint(out: Path, device: str, dtype: Any, text_layers: int, vision_depth: int) -> Path:
    """A Qwen2-VL-2B-sized random-weight checkpoint in ``out`` (weights initialised on ``device``)."""
    import torch
    import transformers

    from atari_vlm.models.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint("qwen2_vl", out)
    config = json.loads((path / "config.json").read_text())
    config["text_config"].update(QWEN2_VL_2B_TEXT, num_hidden_layers=text_layers)
    config["text_config"].pop("layer_types", None)  # derived from the layer count
    config["vision_config"].update(QWEN2_VL_2B_VISION, depth=vision_depth)
    config["tie_word_embeddings"] = QWEN2_VL_2B_TIE_EMBEDDINGS
    processor = json.loads((path / "processor_config.json").read_text())
    for part in ("image_processor", "video_processor"):
        processor[part]["size"] = dict(QWEN2_VL_PIXELS)
    (path / "processor_config.json").write_text(json.dumps(processor, indent=2))

    generation = transformers.GenerationConfig.from_pretrained(path)
    for name in ("model.safetensors", "config.json", "atari_vlm_demo.json"):
        (path / name).unlink()
    with torch.device(device):
        model = transformers.AutoModelForImageTextToText.from_config(
            transformers.Qwen2VLConfig.from_dict(config), dtype=dtype
        )
    model.generation_config = generation
    transformers.utils.logging.disable_progress_bar()
    model.save_pretrained(path)
    params = sum(p.numel() for p in model.parameters())
    print(f"# built a {params / 1e9:.2f} B-parameter Qwen2-VL ({text_layers} text layers, "
          f"{vision_depth} vision blocks) in {path}", flush=True)  # fmt: skip
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="decisions per game (default 2B + 20)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--text-layers", type=int, default=QWEN2_VL_2B_TEXT["num_hidden_layers"])
    parser.add_argument("--vision-depth", type=int, default=QWEN2_VL_2B_VISION["depth"])
    parser.add_argument(
        "--workdir", default=None, help="where the checkpoint is written (default: a temp dir)"
    )
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print('gpu_local.py needs torch (pip install "atari-vlm[local]"); nothing was measured')
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: gpu_local.py measures a GPU, so nothing was measured")
        return 0

    from atari_vlm.models.local import LocalVLM

    print(
        f"# gpu_local: Qwen2-VL-2B architecture, random weights, {args.dtype} on {args.device}; {machine()}"
    )
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        dtype = getattr(torch, args.dtype)
        path = build_checkpoint(Path(tmp) / "qwen2-vl-2b-random", args.device, dtype, args.text_layers,
                                args.vision_depth)  # fmt: skip
        vlm = LocalVLM(path, device=args.device, dtype=args.dtype, max_batch_size=max(args.batch))
        base = None
        for batch in args.batch:
            vlm.max_batch_size = batch
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            steps = args.steps or 2 * batch + 20
            workers = pong_workers(vlm, max_steps=steps, max_tokens=args.max_tokens)
            rate = asyncio.run(steady_rate(workers, batch))
            base = base or rate
            memory = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
            rows.append((batch, steps, rate, 1000 / rate, rate / base, "-" if memory is None else memory))
        asyncio.run(vlm.aclose())
    print_table(
        [
            "batch (games)",
            "steps/game",
            "decisions/s",
            "ms/decision",
            f"vs batch {args.batch[0]}",
            "peak GPU GiB",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
