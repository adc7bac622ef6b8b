"""`python -m longjax.real_model`: flags -> `longjax.real_model.run` (see that module for the parts and cells)."""

import os

from absl import flags

from longjax import cli, real_model
from longjax.config import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", "real_out", "Where the imported model, runs and report go.")
_CELLS = flags.DEFINE_string("cells", None, "Where measurement cells are read and written (default WORKDIR/cells).")
_PARTS = flags.DEFINE_list("parts", list(real_model.PARTS), f"Parts to run: {', '.join(real_model.PARTS)}.")
_METHODS = flags.DEFINE_list("methods", None, "Training-free methods to evaluate (default: all nine).")
_LOSS_LENGTH = flags.DEFINE_integer("loss_length", None, "Loss-by-position window (default 2x the trained length).")
_DOCUMENTS = flags.DEFINE_list("documents", ["topics", "decimal"], "Loss-by-position documents: topics, decimal.")
_PASSKEY_LENGTHS = flags.DEFINE_list("passkey_lengths", ["4096", "8192", "12288", "16384"], "Passkey lengths.")
_DEPTHS = flags.DEFINE_list("depths", ["0.1", "0.5", "0.9"], "Passkey depths in [0, 1].")
_KEYS = flags.DEFINE_integer("keys", 1, "Passkeys per (length, depth) cell.")
_RULER_LENGTHS = flags.DEFINE_list("ruler_lengths", ["8192", "16384"], "RULER niah_single_1 lengths.")
_RULER_SAMPLES = flags.DEFINE_integer("ruler_samples", 2, "RULER prompts per length.")
_RULER_SEED = flags.DEFINE_integer("ruler_seed", 0, "RULER prompts' seed: another seed adds other prompts to the pool.")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", 30, "Fine-tuning steps per method.")
_FINETUNE_WINDOW = flags.DEFINE_integer("finetune_window", 1024, "Fine-tuning rows (tokens); PoSE spans 2x.")
_TASK_ORDER = flags.DEFINE_list("tasks", ["loss", "passkey", "ruler"], "Which evaluations, in this order.")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "Where report.md, results.json and plots go (default WORKDIR).")
_KV_DIR = flags.DEFINE_string("kv_dir", None, "A KV-compression report's folder (`python -m "
                              "longjax.real_model.kv_compression --out DIR`): its table and plot join the report.")


def main(argv):
  del argv
  parts = tuple(_PARTS.value)
  if any(p not in real_model.PARTS for p in parts):
    raise ConfigError(f"--parts={','.join(parts)} is invalid; allowed: {', '.join(real_model.PARTS)}")
  if any(t not in real_model.TASKS for t in _TASK_ORDER.value):
    raise ConfigError(f"--tasks={','.join(_TASK_ORDER.value)} is invalid; allowed: {', '.join(real_model.TASKS)}")
  docs = real_model.documents()
  unknown = [d for d in _DOCUMENTS.value if d not in docs]
  if unknown:
    raise ConfigError(f"--documents={','.join(_DOCUMENTS.value)} is invalid; allowed: {', '.join(docs)}")
  try:
    settings = real_model.Settings(
        documents={d: docs[d] for d in _DOCUMENTS.value}, loss_length=_LOSS_LENGTH.value,
        passkey_lengths=tuple(int(n) for n in _PASSKEY_LENGTHS.value),
        depths=tuple(float(d) for d in _DEPTHS.value), keys=_KEYS.value,
        ruler_lengths=tuple(int(n) for n in _RULER_LENGTHS.value), ruler_samples=_RULER_SAMPLES.value,
        tasks=tuple(_TASK_ORDER.value), ruler_seed=_RULER_SEED.value)
  except ValueError as e:
    raise ConfigError(f"--passkey_lengths/--depths/--ruler_lengths: {e}; give comma-separated numbers") from None
  out = os.path.abspath(_WORKDIR.value)
  cells = os.path.abspath(_CELLS.value or os.path.join(out, "cells"))
  report_dir = os.path.abspath(_REPORT_DIR.value) if _REPORT_DIR.value else None
  path = real_model.run(out, parts, settings, _METHODS.value, cells, _FINETUNE_STEPS.value, _FINETUNE_WINDOW.value,
                        report_dir=report_dir, kv_dir=os.path.abspath(_KV_DIR.value) if _KV_DIR.value else None)
  print(open(path).read(), flush=True)


if __name__ == "__main__":
  cli.run(main)
