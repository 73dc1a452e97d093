"""atari-vlm: vision-language models play Atari 2600 games.

Start with :func:`atari_vlm.env.make_env` (the environment), :func:`atari_vlm.models.registry.load_model`
(a model from a ``--model`` string) and :func:`atari_vlm.runner.run_play` (a whole recorded run).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
