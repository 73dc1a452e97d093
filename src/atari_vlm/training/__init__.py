"""Training: the seed's ``VLMTrainer`` loop (play, remember, evaluate, checkpoint, resume).

``VLMTrainer`` and ``TrainingResult`` are imported on first use, so that importing a submodule
(:mod:`atari_vlm.training.finetune`, which :mod:`atari_vlm.models.trained` builds on) does not pull
in the trainer and, through it, the model registry that loads the trained model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atari_vlm.training.trainer import TrainingResult, VLMTrainer

__all__ = ["TrainingResult", "VLMTrainer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from atari_vlm.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
