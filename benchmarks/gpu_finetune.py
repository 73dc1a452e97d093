"""LoRA fine-tuning throughput on a real-size VLM architecture (random weights from a config), on a GPU.

Builds Qwen2-VL-2B's architecture (or ``--layers`` fewer decoder layers) with random weights, wraps it
with the same LoRA targets as :mod:`atari_vlm.training.finetune`, and times optimizer steps on
play-sized inputs (one Atari frame of ``--image`` pixels per example plus a ~400-token prompt and an
``ACTION: <name>`` target). Prints training steps/s and examples/s. Exits cleanly (status 0, a
message) when no CUDA device is present: the figure is about GPUs.

    python benchmarks/gpu_finetune.py --steps 20 --batch-size 8
"""

from __future__ import annotations

import argparse
import sys
import time

from atari_vlm.errors import require
from atari_vlm.training.finetune import LORA_TARGETS


def qwen2_vl_2b_config(t, layers: int | None):
    """Qwen2-VL-2B-Instruct's published sizes (config.json of the hub checkpoint)."""
    text = {
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": layers or 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": True,
    }
    vision = {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 1536,
        "num_heads": 16,
        "mlp_ratio": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return t.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--image", type=int, default=224, help="square frame side in pixels (multiple of 28)")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers (default: all 28)")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    torch = require("torch", extra="local")
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures LoRA training on a GPU; not run")
        return 0
    t = require("transformers", extra="local")
    peft = require("peft", extra="finetune")
    config = qwen2_vl_2b_config(t, args.layers)
    model = t.Qwen2VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).cuda()
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=LORA_TARGETS)
    )
    model.print_trainable_parameters()
    grid = args.image // 14
    patches = grid * grid  # one image: (1, grid, grid) patches of 3*2*14*14 values
    merged = patches // 4
    b = args.batch_size
    ids = torch.randint(0, 150000, (b, args.prompt_tokens + merged + 8), device="cuda")
    ids[:, 10] = 151652
    ids[:, 11 : 11 + merged] = 151655
    ids[:, 11 + merged] = 151653
    labels = torch.full_like(ids, -100)
    labels[:, -8:] = ids[:, -8:]
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": torch.randn(b * patches, 3 * 2 * 14 * 14, device="cuda", dtype=torch.bfloat16),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * b, device="cuda"),
    }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    layers = config.text_config.num_hidden_layers
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(
        f"{torch.cuda.get_device_name(0)}: Qwen2-VL-2B architecture ({layers} layers), "
        f"LoRA r={args.rank}, batch {b} x {ids.shape[1]} tokens: {args.steps / elapsed:.2f} steps/s, "
        f"{args.steps * b / elapsed:.1f} examples/s, peak memory {peak:.1f} GiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
