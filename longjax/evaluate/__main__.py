"""Evaluate a trained run: perplexity against length (the default), passkey, needle, loss by position, KV cache.

  python -m longjax.evaluate --workdir /tmp/tiny
  python -m longjax.evaluate --workdir /tmp/tiny --config configs/tiny.py:rope=yarn --name yarn_x4
  python -m longjax.evaluate --workdir /tmp/tiny --task passkey --lengths 128,256,512 --depths 0,0.5,1 --digits 2
  python -m longjax.evaluate --workdir /tmp/tiny --task loss_by_position --config configs/tiny.py:rope=yarn
  python -m longjax.evaluate --workdir /tmp/tiny --task kv_cache --lengths 4096,16384 --dtype bfloat16
  python -m longjax.evaluate --workdir /tmp/tiny --task passkey --lengths 512 --kv_policy h2o --kv_budget 128
  # an imported model (python -m longjax.convert --gguf/--hf_dir), on text files, YaRN x2 over its own rope
  python -m longjax.evaluate --workdir /ckpt/smollm2 --task perplexity --text /data/essays --lengths 8192,16384 \
      --config configs/base.py --config.model.rope.rope_type=yarn --config.model.rope.factor=2
  # every host of a slice or cluster runs the same command (JAX_COORDINATOR_ADDRESS etc., or TPU/SLURM detected):
  # the parameters are cut over the mesh (here fsdp over all devices), process 0 writes the results
  python launch/local.py --num_processes 2 -- python -m longjax.evaluate --workdir gs://bucket/run \
      --config configs/base.py --config.mesh.data=1 --config.mesh.fsdp=-1

With --config, the run's weights are evaluated with the `model.rope`, `model.attention`, `eval` and `mesh` keys
that the config sets (`config.merge_onto`: keys that differ from configs/base.py, and every --config.KEY
flag); every other key stays the run's, and a rope method that needs L gets the run's trained length
(model.max_position_embeddings). Shapes stay the run's. loss_by_position draws one curve for the run's own
method and one for the override. --text replaces the run's evaluation data (perplexity, loss_by_position)
by a UTF-8 file or a directory of them, one document a file. Writes WORKDIR/eval/<task>_<name>.json and
.png (name: --name, default the evaluated rope_type) and prints a table.

With several processes (the config's `distributed` keys, JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID,
or a detected TPU or SLURM cluster) each restores only the blocks of the parameters its devices hold under the
mesh (the run's `mesh` keys, or --config's) and all run every forward together; process 0 writes and prints.
--kv_policy/--kv_budget (tokens, or --kv_budget_bytes) generate (passkey, needle, RULER) and size (kv_cache) under a
KV-cache policy (`longjax.inference.kv_policies`).
"""

import os

import jax
from absl import flags

from longjax import checkpoint, cli, load, sharding
from longjax.config import Config, ConfigError, merge_onto
from longjax.data import get_tokenizer
from longjax.evaluate import write_json
from longjax.evaluate.tasks import TASKS, EvalRun, TaskOptions
from longjax.inference import kv_policies

_CONFIG = cli.define_config_flag("config", "Optional config whose rope/attention/eval sections apply.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; the newest by default.")
_TASK = flags.DEFINE_enum("task", "perplexity", list(TASKS), "What to evaluate.")
_NAME = flags.DEFINE_string("name", None, "Name of this evaluation (default: the rope_type).")
_LENGTHS = flags.DEFINE_list("lengths", None, "Lengths in tokens (default: eval.lengths for perplexity and "
                             "loss_by_position, the trained length x 1, 2, 4, 8 otherwise).")
_DEPTHS = flags.DEFINE_list("depths", ["0", "0.25", "0.5", "0.75", "1"], "passkey/needle depths in [0, 1].")
_TRIALS = flags.DEFINE_integer("trials", 5, "passkey/needle prompts per (length, depth) cell.")
_DIGITS = flags.DEFINE_integer("digits", None, "passkey/needle key digits (default: keys uniform in 1..50000).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the keys.")
_BINS = flags.DEFINE_integer("bins", 16, "loss_by_position: position bins.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "kv_cache: sequences.")
_DTYPE = flags.DEFINE_string("dtype", "float16", "kv_cache: the K/V storage dtype.")
_KV_POLICY = flags.DEFINE_string("kv_policy", "full", f"KV-cache policy: {', '.join(kv_policies.KV_POLICIES)}.")
_KV_BUDGET = flags.DEFINE_integer("kv_budget", None, "Tokens the cache keeps per layer (streaming, h2o, snapkv).")
_KV_BUDGET_BYTES = flags.DEFINE_integer("kv_budget_bytes", None, "Or bytes of cache per sequence, all layers, in the "
                                        "model's dtype: the largest token budget that fits (streaming, h2o, snapkv).")
_TEXT = flags.DEFINE_string("text", None, "perplexity, loss_by_position: a UTF-8 text file, or a directory of them "
                            "(one document a file), evaluated instead of the run's data.")
# The sections an evaluation --config may change: the weights' shapes stay the run's.
OVERRIDE_SECTIONS = ("model.rope", "model.attention", "eval", "mesh")


def _read_texts(path: str) -> tuple[str, ...]:
  """The documents of --text: the file, or every file under the directory (sorted), each read as UTF-8."""
  if os.path.isdir(path):
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
  elif os.path.isfile(path):
    files = [path]
  else:
    raise ConfigError(f"--text={path}: no such file or directory; allowed: a UTF-8 text file or a directory of them")
  if not files:
    raise ConfigError(f"--text={path}: the directory holds no file; allowed: a UTF-8 text file or a directory of them")
  texts = []
  for file in files:
    try:
      with open(file, encoding="utf-8") as f:
        text = f.read()
    except UnicodeDecodeError as e:
      raise ConfigError(f"--text: {file} is not UTF-8 text (byte {e.start}); allowed: UTF-8 text files") from None
    if not text.strip():
      raise ConfigError(f"--text: {file} is empty; allowed: files holding text")
    texts.append(text)
  return tuple(texts)


def _options() -> TaskOptions:
  try:
    lengths = tuple(int(n) for n in _LENGTHS.value) if _LENGTHS.value else None
    depths = tuple(float(d) for d in _DEPTHS.value)
  except ValueError as e:
    raise ConfigError(f"--lengths/--depths: {e}; give comma-separated numbers") from None
  if lengths and min(lengths) < 1:
    raise ConfigError(f"--lengths={','.join(_LENGTHS.value)} is invalid: lengths must be positive")
  if not all(0.0 <= d <= 1.0 for d in depths):
    raise ConfigError(f"--depths={','.join(_DEPTHS.value)} is invalid: depths must be in [0, 1]")
  if _DIGITS.value is not None and _DIGITS.value < 1:
    raise ConfigError(f"--digits={_DIGITS.value} is invalid: must be >= 1")
  if _TEXT.value is not None and _TASK.value not in ("perplexity", "loss_by_position"):
    raise ConfigError(f"--text is for --task perplexity or loss_by_position, not {_TASK.value}")
  texts = _read_texts(_TEXT.value) if _TEXT.value is not None else None
  return TaskOptions(lengths, depths, _TRIALS.value, _DIGITS.value, _SEED.value, _BINS.value, _BATCH.value,
                     _DTYPE.value, texts)


def main(argv):
  del argv
  options = _options()
  if _KV_BUDGET_BYTES.value is None:
    kv_policies.make_policy(_KV_POLICY.value, _KV_BUDGET.value)  # a bad policy or budget fails before loading
  task = TASKS[_TASK.value]
  trained = checkpoint.read_config(_WORKDIR.value)
  kv_budget = kv_policies.resolve_budget(_KV_POLICY.value, _KV_BUDGET.value, _KV_BUDGET_BYTES.value, trained.model)
  generate_options = {} if _KV_POLICY.value == "full" else {"kv_policy": _KV_POLICY.value, "kv_budget": kv_budget}
  methods = {trained.model.rope.rope_type: trained}
  distributed = Config().distributed
  if _CONFIG.value is not None:
    explicit = cli.override_keys("config")
    evaluated = merge_onto(trained, _CONFIG.value, OVERRIDE_SECTIONS, explicit=explicit)
    distributed = merge_onto(Config(), _CONFIG.value, ("distributed",), explicit=explicit).distributed
    name = _NAME.value or evaluated.model.rope.rope_type
    methods = {f"{key} (trained)" if key == name else key: config for key, config in methods.items()}
    methods[name] = evaluated
  elif _NAME.value:
    methods = {_NAME.value: trained}
  run = EvalRun(trained, methods, None, get_tokenizer(trained.data), generate_options)
  task.check(run, options)  # before any device work: a length a method cannot hold
  cli.initialize_distributed(distributed)
  mesh = sharding.make_mesh(run.config.mesh)
  if task.needs_params:
    run.params = load(_WORKDIR.value, _STEP.value, mesh=mesh).params
  with sharding.use_mesh(mesh):
    report = task.run(run, options)
  if jax.process_index() == 0:
    out = f"{checkpoint.workdir_path(_WORKDIR.value)}/eval/{_TASK.value}_{run.name}"
    write_json(report.results, out + ".json")
    report.plot(out + ".png")
    print(report.table)


if __name__ == "__main__":
  cli.run(main)
