"""The seed's training script and module: ``atari-vlm train`` and ``VLMTrainer`` under the seed's names.

    python train_atari_vlm.py --game Pong-v5 --vlm qwen-vl --use-icl
    python train_atari_vlm.py --game Pong-v5 --vlm gpt-4o --api-key YOUR_KEY
    python train_atari_vlm.py --show-recommendations
    python train_atari_vlm.py --help

    from train_atari_vlm import VLMTrainer

A thin layer: the command is ``atari-vlm train`` (same options, same exit codes) and the class is
:class:`atari_vlm.training.VLMTrainer`. Importable after ``pip install -e .``, from any directory.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from atari_vlm.training import VLMTrainer

__all__ = ["VLMTrainer", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``atari-vlm train`` with ``argv`` (default: this process's command line); its exit code."""
    from atari_vlm.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
