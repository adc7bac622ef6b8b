"""A longjax workdir <-> a Hugging Face directory: the library behind `python -m longjax.convert`.

`export_hf(workdir, out_dir)` restores a run's checkpoint (newest step by default), folds LoRA into
the kernels, unscans scanned layers and writes a `transformers.LlamaForCausalLM` directory.
`import_hf(hf_dir, out_dir)` writes a Hugging Face model as a workdir, as a training run leaves
one: `config.json` (a full Config whose model section is the HF model's) and the parameters at
step 0 of `checkpoints/`. `train.init_from=out_dir` and `longjax.load(out_dir)` read it.
"""

import os
import shutil

import jax

from longjax import checkpoint
from longjax.config import Config, DataConfig
from longjax.convert import hf
from longjax.nn import abstract_params
from longjax.nn.lora import merge_lora

# A Hugging Face LLaMA directory's SentencePiece model; an import copies it and makes it the run's tokenizer.
SENTENCEPIECE_MODEL = "tokenizer.model"


def _refuse_existing(out_dir: str, flag: str) -> None:
  """Never write over an earlier conversion or a run: `out_dir` must be new or empty."""
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise hf.ConversionError(f"{flag}={out_dir}: already exists and is not empty; allowed: a new or empty directory")


def _restore_params(workdir: str, config: Config, step: int | None) -> tuple[int, dict]:
  """(step, params) of `step` (newest restorable by default), restored onto one device."""
  abstract, _ = abstract_params(config.model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
  checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return checkpointer.restore_params(abstract, step)
  finally:
    checkpointer.close()


def export_hf(workdir: str, out_dir: str, *, step: int | None = None, torch_dtype: str = "float32") -> int:
  """Write the run in `workdir` (LoRA merged, layers unscanned) as a transformers directory; returns the step."""
  _refuse_existing(out_dir, "--to_hf")
  config = checkpoint.read_config(workdir)
  hf.config_to_hf(config.model)  # a model transformers cannot express fails before the restore
  step, params = _restore_params(workdir, config, step)
  params, model = merge_lora(params, config.model)
  hf.save(model, checkpoint.host_params(params), out_dir, torch_dtype=torch_dtype)
  return step


def import_hf(hf_dir: str, out_dir: str) -> Config:
  """Write the transformers LLaMA in `hf_dir` as a longjax workdir `out_dir` (parameters at step 0)."""
  _refuse_existing(out_dir, "--out_dir")
  model, params = hf.load(hf_dir)
  data = DataConfig()
  tokenizer = os.path.join(hf_dir, SENTENCEPIECE_MODEL)
  os.makedirs(out_dir, exist_ok=True)
  if os.path.isfile(tokenizer):
    copy = os.path.join(os.path.abspath(out_dir), SENTENCEPIECE_MODEL)
    shutil.copyfile(tokenizer, copy)
    data = DataConfig(tokenizer="sentencepiece", tokenizer_path=copy)
  config = Config(model=model, data=data)
  config.validate()
  checkpointer = checkpoint.Checkpointer(out_dir, async_save=False)
  try:
    checkpointer.save_params(0, params, config)
  finally:
    checkpointer.close()
  # Last: readers open config.json first, so a directory that has one holds a complete checkpoint.
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    f.write(config.to_json())
  return config
