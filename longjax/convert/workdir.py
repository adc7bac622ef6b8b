"""A longjax workdir <-> a Hugging Face directory: the library behind `python -m longjax.convert`.

`export_hf(workdir, out_dir)` restores a run's checkpoint (newest step by default), folds LoRA into
the kernels, unscans scanned layers and writes a `transformers.LlamaForCausalLM` directory.
`import_hf(hf_dir, out_dir)` and `import_gguf(gguf_file, out_dir)` write a pretrained model as a workdir,
as a training run leaves one: `config.json` (a full Config whose model section is the model's, its
`max_position_embeddings` the trained length) and the parameters at step 0 of `checkpoints/`, plus the
model's own tokenizer, copied in (HF: tokenizer.json and tokenizer_config.json, else tokenizer.model) or
built from the GGUF's vocabulary. `data.tokenizer_path` is relative, so the workdir can move;
`checkpoint.read_config` resolves it. `train.init_from=out_dir` and `longjax.load(out_dir)` read it.
Either output may be any etils.epath path (local, gs://...), as a training workdir may: files that a library
writes only to local disk (safetensors, a tokenizer) are written to a temporary directory and copied up.
"""

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile

from etils import epath

from longjax import checkpoint
from longjax.config import Config, DataConfig, ModelConfig
from longjax.convert import gguf, gguf_tokenizer, hf
from longjax.nn.lora import merge_lora

SENTENCEPIECE_MODEL = hf.SENTENCEPIECE_MODEL  # an import copies it in as the run's tokenizer (tokenizer.json first)


def _refuse_existing(out_dir: str, flag: str) -> epath.Path:
  """Never write over an earlier conversion or a run: `out_dir` must be new or empty; returns it as an epath."""
  path = checkpoint.workdir_path(out_dir)
  if path.exists() and (not path.is_dir() or any(True for _ in path.iterdir())):
    raise hf.ConversionError(f"{flag}={out_dir}: already exists and is not empty; allowed: a new or empty directory")
  return path


@contextlib.contextmanager
def _local_directory(out: epath.Path):
  """A local directory for writers that only write local files, whose files end up in `out`: `out` itself when it
  is local, else a temporary directory copied file by file into `out` (gs://...) when the block succeeds."""
  if "://" not in str(out):
    out.mkdir(parents=True, exist_ok=True)
    yield str(out)
    return
  with tempfile.TemporaryDirectory(prefix="longjax-convert-") as local:
    yield local
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(local)):
      with open(os.path.join(local, name), "rb") as source, (out / name).open("wb") as target:
        shutil.copyfileobj(source, target, 64 << 20)


def export_hf(workdir: str, out_dir: str, *, step: int | None = None, torch_dtype: str = "float32") -> int:
  """Write the run in `workdir` (LoRA merged, layers unscanned) as a transformers directory; returns the step."""
  out = _refuse_existing(out_dir, "--to_hf")
  config = checkpoint.read_config(workdir)
  hf.config_to_hf(config.model)  # a model transformers cannot express fails before the restore
  step, params = checkpoint.restore_model_params(workdir, config.model, step)
  params, model = merge_lora(params, config.model)
  with _local_directory(out) as local:
    hf.save(model, checkpoint.host_params(params), local, torch_dtype=torch_dtype)
  return step


def _copy_hf_tokenizer(hf_dir: str, out: epath.Path) -> DataConfig:
  """Copy `hf_dir`'s tokenizer files into `out`; the DataConfig that reads the copy (`hf.tokenizer_data`)."""
  data = hf.tokenizer_data(hf_dir)
  if data.tokenizer == "byte":
    logging.warning("%s: no %s or %s; the workdir keeps the byte tokenizer (set data.tokenizer to the model's)",
                    hf_dir, hf.TOKENIZER_JSON, hf.SENTENCEPIECE_MODEL)
    return data
  for name in (hf.TOKENIZER_JSON, hf.TOKENIZER_CONFIG, hf.SENTENCEPIECE_MODEL):
    if os.path.isfile(os.path.join(hf_dir, name)):
      (out / name).write_bytes(epath.Path(hf_dir, name).read_bytes())
  return dataclasses.replace(data, tokenizer_path=os.path.basename(data.tokenizer_path))


def _write_workdir(out: epath.Path, model: ModelConfig, params: dict, data: DataConfig) -> Config:
  """Parameters at step 0, then config.json (readers open it first, so a workdir that has one is complete)."""
  config = Config(model=model, data=data)
  config.validate()
  checkpointer = checkpoint.Checkpointer(out, async_save=False)
  try:
    checkpointer.save_params(0, params, config)
  finally:
    checkpointer.close()
  (out / "config.json").write_text(config.to_json())
  return config


def import_hf(hf_dir: str, out_dir: str) -> Config:
  """Write the transformers LLaMA in `hf_dir`, with its tokenizer, as a longjax workdir `out_dir` (params at step 0)."""
  out = _refuse_existing(out_dir, "--out_dir")
  model, params = hf.load(hf_dir)
  out.mkdir(parents=True, exist_ok=True)
  return _write_workdir(out, model, params, _copy_hf_tokenizer(hf_dir, out))


def import_gguf(gguf_file: str, out_dir: str) -> Config:
  """Write the llama GGUF `gguf_file` (dequantized), with the tokenizer of its vocabulary, as a workdir `out_dir`."""
  out = _refuse_existing(out_dir, "--out_dir")
  reader = gguf.read(gguf_file)
  model, params = gguf.load(gguf_file, reader=reader)
  with _local_directory(out) as local:
    data = gguf_tokenizer.write_tokenizer(reader, gguf_file, local)
  return _write_workdir(out, model, params, data)
