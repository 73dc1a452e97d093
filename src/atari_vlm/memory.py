"""Trajectory memory: episodes on disk per game, and the exemplars chosen from them for in-context
learning. Safe formats only (JSON + npz), never pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Exemplar:
    """One remembered decision shown to the model as an example: the frame it saw and what was done."""

    image: np.ndarray  # the image the model saw (as in the observation's "image")
    state_text: str
    action_name: str
    note: str = ""  # why this step matters, e.g. "2 steps before scoring +1"
