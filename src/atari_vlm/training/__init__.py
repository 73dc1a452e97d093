"""Training: the seed's ``VLMTrainer`` loop (play, remember, evaluate, checkpoint, resume)."""

from __future__ import annotations

from atari_vlm.training.trainer import TrainingResult, VLMTrainer

__all__ = ["TrainingResult", "VLMTrainer"]
