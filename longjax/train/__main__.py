"""Train or fine-tune a longjax model.

  python -m longjax.train --config configs/tiny.py --workdir /tmp/tiny
  python -m longjax.train --config configs/extend/yarn_s16.py --workdir /tmp/yarn \
      --config.train.init_from=/path/to/Llama-2-7b-hf

Rerunning the same command on the same workdir resumes from its newest checkpoint. With train.init_from,
the rope and tokenizer keys the config does not set (that equal configs/base.py's and no --config.KEY names)
are the source's.
"""

from absl import flags

from longjax import cli
from longjax.train.init import run_config
from longjax.train.loop import train_and_evaluate

_CONFIG = cli.define_config_flag("config", "A config file, e.g. configs/tiny.py[:args].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and config.json go.", required=True)


def main(argv):
  del argv
  config = run_config(_CONFIG.value, explicit=cli.override_keys("config"))
  cli.initialize_distributed(config.distributed)
  result = train_and_evaluate(config, _WORKDIR.value)
  print(f"done: {result}")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main)
