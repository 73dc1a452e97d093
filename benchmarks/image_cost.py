"""Image cost per decision for each image setting: bytes on the wire and image tokens.

For every combination of frame size, grayscale and frame stacking (one frame; four as a 2x2 grid;
four as a sequence of images), a Pong episode is played with a fixed action sequence and the images
``VLMAgent`` would send at each decision are measured:

- bytes: ``imaging.encode`` as JPEG q90 and as PNG (an API request carries them base64: x 4/3);
- OpenAI tokens by the documented formulas (:func:`openai_tile_tokens`, :func:`openai_patch_tokens`);
- local tokens, by running the processors: the tiny LLaVA and Qwen2-VL checkpoints through
  ``LocalVLM.generate`` (its reported ``usage.image_tokens``), and Qwen2-VL's image processor at its
  real default resolution settings (``Qwen2VLImageProcessorPil()``: 56x56 to 1280 x 28x28 pixels).

    python benchmarks/image_cost.py --decisions 60
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from _common import machine, print_table

from atari_vlm import imaging
from atari_vlm.env import make_env
from atari_vlm.games import game_info
from atari_vlm.models.base import Request
from atari_vlm.models.local import LocalVLM
from atari_vlm.models.tiny import build_tiny_checkpoint
from atari_vlm.prompts.builder import PromptBuilder
from atari_vlm.spec import ObservationSpec


def openai_tile_tokens(width: int, height: int, detail: str = "high") -> int:
    """Image tokens of one image for GPT-4o / GPT-4.1 / o-series style models (tile-based).

    Source: OpenAI platform docs, "Images and vision" guide, section "Calculating costs"
    (https://platform.openai.com/docs/guides/images-vision#calculating-costs): ``detail: low`` costs
    85 tokens; ``high`` scales the image to fit in 2048 x 2048, then so that its shortest side is
    768 px, and costs 85 + 170 per 512 px tile. As in OpenAI's own examples, images are only ever
    scaled down, so an Atari frame is one tile. (gpt-4o-mini counts 2833 + 5667 per tile instead,
    at a price per token that makes the bill the same.)
    """
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return 85 + 170 * math.ceil(width / 512) * math.ceil(height / 512)


def openai_patch_tokens(width: int, height: int) -> int:
    """Image tokens of one image for patch-based models (gpt-4.1-mini, gpt-4.1-nano, o4-mini).

    Source: the same OpenAI guide and section: one token per 32 x 32 px patch,
    ``ceil(w / 32) * ceil(h / 32)``, capped at 1536 (larger images are scaled down first; Atari
    images never are), then multiplied by a per-model factor (1.62 for gpt-4.1-mini, 2.46 for
    gpt-4.1-nano, 1.72 for o4-mini) for billing. Reported here before that factor.
    """
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches > 1536:
        raise ValueError("image above the 1536-patch cap: the scaling step is not implemented here")
    return patches


@dataclass(frozen=True)
class Setting:
    size: tuple[int, int] | None  # None: native 210x160
    grayscale: bool
    stack: int
    layout: str

    @property
    def label(self) -> tuple[str, str, str]:
        size = "210x160" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        frames = "1" if self.stack == 1 else f"{self.stack} {self.layout}"
        return size, "gray" if self.grayscale else "rgb", frames


def decision_images(setting: Setting, decisions: int) -> tuple[list[list[np.ndarray]], Request]:
    """The images sent at each decision of a Pong episode (fixed actions), and the last request."""
    env = make_env(
        "Pong",
        resize_shape=setting.size,
        grayscale=setting.grayscale,
        frame_stack=setting.stack,
        frame_layout=setting.layout,
        repeat_action_probability=0.0,
    )
    builder = PromptBuilder(
        game_info("Pong"),
        env.action_names,
        observation=ObservationSpec(frame_stack=setting.stack, frame_layout=setting.layout),
    )
    actions = np.random.default_rng(0).integers(env.action_space.n, size=decisions)
    obs, _ = env.reset(seed=0)
    images, request = [], builder.request(obs)
    for action in actions:
        request = builder.request(obs)
        images.append([part.pixels for message in request.messages for part in message.images])
        obs, *_ = env.step(int(action))
    env.close()
    return images, request


def local_image_tokens(vlm: LocalVLM, request: Request) -> int | None:
    completion = asyncio.run(vlm.generate(replace(request, max_tokens=1)))
    return completion.usage.image_tokens


def qwen_default_tokens(processor: Any, images: list[np.ndarray]) -> int:
    """Qwen2-VL tokens at its real default resolution: grid patches / merge_size**2, summed."""
    grid = processor(images=[imaging.to_pil(imaging.to_rgb(i)) for i in images], return_tensors="np")
    return int(np.prod(grid["image_grid_thw"], axis=1).sum()) // processor.merge_size**2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=60, help="decisions measured per setting")
    args = parser.parse_args()
    import transformers

    settings = [
        Setting(size, gray, stack, layout)
        for size in (None, (105, 80), (84, 84))
        for gray in (False, True)
        for stack, layout in ((1, "grid"), (4, "grid"), (4, "sequence"))
    ]
    print(f"# image_cost: per decision, mean over {args.decisions} Pong decisions; {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = {
            family: LocalVLM(build_tiny_checkpoint(family, Path(tmp) / family))
            for family in ("llava", "qwen2_vl")
        }
        qwen_default = transformers.Qwen2VLImageProcessorPil()
        for setting in settings:
            images, request = decision_images(setting, args.decisions)
            shapes = [i.shape for i in images[-1]]
            jpeg = np.mean([sum(len(imaging.encode(i, "jpeg", 90)) for i in d) for d in images])
            png = np.mean([sum(len(imaging.encode(i, "png")) for i in d) for d in images])
            rows.append(
                (
                    *setting.label,
                    " + ".join(f"{s[0]}x{s[1]}" for s in dict.fromkeys(shapes)) + f" (x{len(shapes)})",
                    f"{jpeg / 1024:.1f}",
                    f"{png / 1024:.1f}",
                    85 * len(shapes),
                    sum(openai_tile_tokens(s[1], s[0]) for s in shapes),
                    sum(openai_patch_tokens(s[1], s[0]) for s in shapes),
                    qwen_default_tokens(qwen_default, images[-1]),
                    local_image_tokens(local["qwen2_vl"], request),
                    local_image_tokens(local["llava"], request),
                )
            )
        for vlm in local.values():
            asyncio.run(vlm.aclose())
    print_table(
        [
            "frame",
            "colour",
            "frames",
            "images sent",
            "JPEG q90 KiB",
            "PNG KiB",
            "OpenAI low",
            "OpenAI high",
            "OpenAI patch",
            "Qwen2-VL default",
            "tiny qwen2_vl",
            "tiny llava",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
