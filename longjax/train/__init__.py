"""Training: optimizer, pure train/eval steps, the loop. `python -m longjax.train` runs it.

The loop (and with it the data pipeline, Orbax and TensorBoard) is imported on first use, so that
`longjax.train.step` and `longjax.train.optimizer` stay light (benchmarks, accelerator images).
"""

_LOOP_NAMES = ("Trainer", "TrainingError", "train_and_evaluate")


def __getattr__(name):
  if name in _LOOP_NAMES:
    from longjax.train import loop

    return getattr(loop, name)
  raise AttributeError(f"module 'longjax.train' has no attribute {name!r}")


__all__ = list(_LOOP_NAMES)
