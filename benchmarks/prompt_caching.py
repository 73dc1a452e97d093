"""What prompt caching saves per decision of an in-context-learning run, at each provider's prices.

The request is the one ``VLMAgent`` builds for Pong (the ``basic`` prompt, native 210x160 frames)
with 4 exemplar images: system prompt, then the exemplars (the stable prefix), then the current frame
and the turn text. Its stable prefix is the system message and the exemplar parts
(``Request.stable_prefix = 1 + len(agent._exemplar_parts)``, what the agent is to set).

Tokens: text at ``costs.CHARS_PER_TOKEN`` (4) characters a token, an *estimate* (no provider
tokenizer is available offline; Claude Sonnet 5's tokenizer counts about 30% more for the same text,
per Anthropic's migration guide); images by each provider's documented rule (OpenAI's tile rule from
``image_cost.py``; gpt-4o-mini's 2833 + 5667 per tile; Anthropic's width x height / 750). Prices:
``presets.json``. Per decision, with the cache warm (decisions come seconds apart, inside Anthropic's
5-minute and OpenAI's in-memory windows):

    saving = P x (input price - cache-read price)      if P >= the model's minimum cacheable prefix
    first decision (Anthropic): pays P x (write price - input price) more, once per run

where P is the prefix's tokens. Nothing is sent anywhere: this is arithmetic on the real request.

    python benchmarks/prompt_caching.py --decisions 300
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from _common import machine, print_table
from image_cost import openai_tile_tokens

from atari_vlm.env import make_env
from atari_vlm.games import game_info
from atari_vlm.memory import Exemplar
from atari_vlm.models.base import ImagePart, Request, TextPart
from atari_vlm.models.costs import CHARS_PER_TOKEN
from atari_vlm.models.presets import get_preset
from atari_vlm.prompts.builder import PromptBuilder
from atari_vlm.spec import PromptSpec

OUTPUT_TOKENS = 8  # "ACTION: <name>" and a little: the basic prompt's answer; the same with or without cache


def icl_request(exemplars: int, style: str) -> Request:
    """The agent's request for one decision, with ``exemplars`` exemplar frames from a real Pong game."""
    env = make_env("Pong", seed=0)
    obs, _ = env.reset(seed=0)
    frames = []
    for step in range(exemplars):
        obs, *_ = env.step(step % len(env.action_names))
        frames.append(Exemplar(obs["image"], obs["text"], env.action_names[step % 2 + 2], "before a point"))
    builder = PromptBuilder(game_info("Pong"), env.action_names, PromptSpec(prompt=style))
    request = builder.request(obs, exemplars=builder.exemplar_parts(frames))  # stable_prefix: 1 + exemplars
    env.close()
    return request


def split(request: Request) -> tuple[list[TextPart | ImagePart], list[TextPart | ImagePart]]:
    """(prefix parts, the rest) of a request."""
    inside = set(request.prefix_parts())
    prefix, rest = [], []
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.parts):
            (prefix if (i, j) in inside else rest).append(part)
    return prefix, rest


def tokens(parts: list, image_tokens) -> tuple[int, int, int]:
    """(text tokens, image tokens, images) of some parts."""
    chars = sum(len(p.text) for p in parts if isinstance(p, TextPart))
    images = [p for p in parts if isinstance(p, ImagePart)]
    return math.ceil(chars / CHARS_PER_TOKEN), sum(image_tokens(p.pixels) for p in images), len(images)


def anthropic_image(pixels: np.ndarray) -> int:
    height, width = pixels.shape[:2]
    return math.ceil(width * height / 750)


def gpt4o_image(pixels: np.ndarray) -> int:
    height, width = pixels.shape[:2]
    return openai_tile_tokens(width, height, "high")  # detail "auto" picks high for these sizes


def gpt4o_mini_image(pixels: np.ndarray) -> int:
    height, width = pixels.shape[:2]
    tiles = (openai_tile_tokens(width, height, "high") - 85) // 170
    return 2833 + 5667 * tiles


MODELS = (
    # preset, image rule, minimum cacheable prefix (tokens; capabilities.json)
    ("gpt-4o", gpt4o_image, 1024),
    ("gpt-4o-mini", gpt4o_mini_image, 1024),
    ("claude-sonnet-5", anthropic_image, 1024),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exemplars", type=int, default=4)
    parser.add_argument(
        "--decisions", type=int, default=300, help="decisions a run amortizes its one write over"
    )
    parser.add_argument("--prompt", default="basic", help="prompt style: basic, cot or expert")
    args = parser.parse_args()
    request = icl_request(args.exemplars, args.prompt)
    prefix, rest = split(request)
    print(machine())
    prefix_chars = sum(len(p.text) for p in prefix if isinstance(p, TextPart))
    rest_chars = sum(len(p.text) for p in rest if isinstance(p, TextPart))
    prefix_images = sum(isinstance(p, ImagePart) for p in prefix)
    print(
        f"Pong, {args.prompt} prompt, {args.exemplars} exemplars: prefix = {len(prefix)} parts "
        f"({prefix_chars} text chars, {prefix_images} images); the rest = {len(rest)} parts "
        f"({rest_chars} chars, 1 image); {OUTPUT_TOKENS} output tokens assumed"
    )
    rows = []
    for name, image_rule, minimum in MODELS:
        prices = get_preset(name).prices
        pt, pi, _ = tokens(prefix, image_rule)
        rt, ri, _ = tokens(rest, image_rule)
        p, v = pt + pi, rt + ri
        read = prices.cached_input_per_mtok
        write = prices.cache_write_per_mtok
        plain = ((p + v) * prices.input_per_mtok + OUTPUT_TOKENS * prices.output_per_mtok) / 1e6
        cacheable = p >= minimum and read is not None
        saving = p * (prices.input_per_mtok - read) / 1e6 if cacheable else 0.0
        first_extra = p * (write - prices.input_per_mtok) / 1e6 if cacheable and write is not None else 0.0
        net = saving - first_extra / args.decisions
        rows.append(
            (
                name,
                f"{p} ({pt} text + {pi} img)",
                f"{v}",
                f"{minimum}",
                f"{prices.input_per_mtok:g} / {read if read is not None else 'unknown'}",
                f"{plain:.6f}",
                f"{plain - saving:.6f}",
                f"{saving:.6f} ({saving / plain:.0%})",
                f"{first_extra:.6f}",
                f"{net * args.decisions:.4f}",
            )
        )
    print_table(
        (
            "model",
            "prefix tokens",
            "rest tokens",
            "min cacheable",
            "$/M in / cached",
            "$ per decision, no cache",
            "$ with the cache warm",
            "$ saved per decision",
            "$ extra on the first (write)",
            f"$ saved per {args.decisions}-decision run",
        ),
        rows,
    )


if __name__ == "__main__":
    main()
