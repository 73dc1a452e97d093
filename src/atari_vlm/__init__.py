"""atari-vlm: vision-language models play Atari 2600 games.

Start with :func:`atari_vlm.env.make_env` (the environment), :func:`atari_vlm.models.registry.load_model`
(a model from a ``--model`` string), :class:`atari_vlm.spec.RunSpec` (every setting of a run) and
:func:`atari_vlm.runner.run_play` (a whole recorded run). The
seed's API (``AtariVLMEnvironment``, ``GPT4VAgent`` and friends, ``VLMTrainer``) is importable from here;
names load lazily so ``import atari_vlm`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "AtariVLMEnvironment": "atari_vlm.seed_api",
    "ModelAgent": "atari_vlm.seed_api",
    "DemoAgent": "atari_vlm.seed_api",
    "GPT4VAgent": "atari_vlm.seed_api",
    "ClaudeAgent": "atari_vlm.seed_api",
    "GeminiAgent": "atari_vlm.seed_api",
    "QwenVLAgent": "atari_vlm.seed_api",
    "LLaVAAgent": "atari_vlm.seed_api",
    "VLMTrainer": "atari_vlm.training",
    "make_env": "atari_vlm.env",
    "load_model": "atari_vlm.models.registry",
    "run_play": "atari_vlm.runner",
    "RunSpec": "atari_vlm.spec",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atari_vlm' has no attribute {name!r}")
