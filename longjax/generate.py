"""Generate text from a trained run.

  python -m longjax.generate --workdir /tmp/tiny --prompt "def fibonacci(n):" --max_new_tokens 64
  python -m longjax.generate --workdir /tmp/tiny --prompt "import os" --temperature 0.8 --top_k 40 --top_p 0.95
  python -m longjax.generate --workdir /tmp/tiny --prompt "import os" --kv_policy h2o --kv_budget 256
"""

from absl import flags

from longjax import cli, load
from longjax.inference import kv_policies

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; the newest by default.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy.", lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).", lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample from the smallest set of tokens whose probability reaches p.",
                            lower_bound=0.0, upper_bound=1.0)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_KV_POLICY = flags.DEFINE_string("kv_policy", "full", f"KV-cache policy: {', '.join(kv_policies.KV_POLICIES)}.")
_KV_BUDGET = flags.DEFINE_integer("kv_budget", None, "Tokens the cache keeps per layer (streaming, h2o, snapkv).")


def main(argv):
  del argv
  kv_policies.make_policy(_KV_POLICY.value, _KV_BUDGET.value)  # a bad policy or budget fails before loading
  run = load(_WORKDIR.value, _STEP.value)
  text = run.generate(_PROMPT.value, max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value,
                      top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value, kv_policy=_KV_POLICY.value,
                      kv_budget=_KV_BUDGET.value)
  print(_PROMPT.value + text)


if __name__ == "__main__":
  cli.run(main)
