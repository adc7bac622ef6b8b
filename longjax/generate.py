"""Generate text from a trained run.

  python -m longjax.generate --workdir /tmp/tiny --prompt "def fibonacci(n):" --max_new_tokens 64
  python -m longjax.generate --workdir /tmp/tiny --prompt "import os" --temperature 0.8 --top_k 40 --top_p 0.95
  python -m longjax.generate --workdir /tmp/tiny --prompt "import os" --kv_policy h2o --kv_budget 256
  # on every host of a slice or cluster (JAX_COORDINATOR_ADDRESS etc., or TPU/SLURM detected), parameters cut
  # over fsdp; process 0 prints
  python launch/local.py --num_processes 2 -- python -m longjax.generate --workdir gs://bucket/run --prompt "import" \
      --config configs/base.py --config.mesh.data=1 --config.mesh.fsdp=-1

The parameters are cut over the run's mesh (its `mesh` keys), or over --config's `mesh` keys; --config's
`distributed` keys join a multi-process run as training's do. Its other sections are not read.
"""

import jax
from absl import flags

from longjax import checkpoint, cli, load, sharding
from longjax.config import Config, merge_onto
from longjax.data import get_tokenizer
from longjax.inference import kv_policies
from longjax.inference.generate import GenerationError, check_cache_length, check_sampling

_CONFIG = cli.define_config_flag("config", "Optional config whose mesh and distributed sections apply.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; the newest by default.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate (>= 1).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Tokens the cache holds, prompt included (default: the "
                                   "prompt plus max_new_tokens).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy (>= 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens whose probability reaches p, in "
                            "(0, 1].")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_KV_POLICY = flags.DEFINE_string("kv_policy", "full", f"KV-cache policy: {', '.join(kv_policies.KV_POLICIES)}.")
_KV_BUDGET = flags.DEFINE_integer("kv_budget", None, "Tokens the cache keeps per layer (streaming, h2o, snapkv).")
_KV_BUDGET_BYTES = flags.DEFINE_integer("kv_budget_bytes", None, "Or bytes of cache per sequence, all layers, in the "
                                        "model's dtype: the largest token budget that fits (streaming, h2o, snapkv).")


def main(argv):
  del argv
  if _KV_BUDGET_BYTES.value is None:
    kv_policies.make_policy(_KV_POLICY.value, _KV_BUDGET.value)  # a bad policy or budget fails before loading
  check_sampling(_MAX_NEW_TOKENS.value, _TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
  trained = checkpoint.read_config(_WORKDIR.value)
  kv_budget = kv_policies.resolve_budget(_KV_POLICY.value, _KV_BUDGET.value, _KV_BUDGET_BYTES.value, trained.model)
  prompt_tokens = len(get_tokenizer(trained.data).encode(_PROMPT.value, bos=trained.data.add_bos))
  check_cache_length(prompt_tokens, _MAX_NEW_TOKENS.value, _MAX_LENGTH.value)
  if prompt_tokens == 0:
    raise GenerationError(f"--prompt={_PROMPT.value!r} holds no token (and the run adds no BOS); allowed: text")
  mesh_config, distributed = trained.mesh, Config().distributed
  if _CONFIG.value is not None:
    explicit = cli.override_keys("config")
    mesh_config = merge_onto(trained, _CONFIG.value, ("mesh",), explicit=explicit).mesh
    distributed = merge_onto(Config(), _CONFIG.value, ("distributed",), explicit=explicit).distributed
  cli.initialize_distributed(distributed)
  run = load(_WORKDIR.value, _STEP.value, mesh=sharding.make_mesh(mesh_config))
  text = run.generate(_PROMPT.value, max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
                      top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value, max_length=_MAX_LENGTH.value,
                      kv_policy=_KV_POLICY.value, kv_budget=kv_budget)
  if jax.process_index() == 0:
    print(_PROMPT.value + text)


if __name__ == "__main__":
  cli.run(main)
