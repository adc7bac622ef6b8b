"""Training: optimizer, pure train/eval steps, the loop. `python -m longjax.train` runs it."""

from longjax.train.loop import Trainer, TrainingError, train_and_evaluate

__all__ = ["Trainer", "TrainingError", "train_and_evaluate"]
