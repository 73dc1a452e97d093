"""The seed's ``atari_vlm_env`` module: its environment and agents, under the seed's names.

    from atari_vlm_env import AtariVLMEnvironment, GPT4VAgent

A thin layer for the original description's imports; the code is :mod:`atari_vlm.seed_api`, and the
primary API is the ``atari_vlm`` package (``from atari_vlm.env import make_env``). Importable after
``pip install -e .`` (``make play`` or ``make test`` do it), from any directory.
"""

from __future__ import annotations

from atari_vlm.seed_api import (
    AtariVLMEnvironment,
    ClaudeAgent,
    DemoAgent,
    GeminiAgent,
    GPT4VAgent,
    LLaVAAgent,
    ModelAgent,
    QwenVLAgent,
)

__all__ = [
    "AtariVLMEnvironment",
    "ClaudeAgent",
    "DemoAgent",
    "GPT4VAgent",
    "GeminiAgent",
    "LLaVAAgent",
    "ModelAgent",
    "QwenVLAgent",
]
