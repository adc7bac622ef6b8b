"""Convert Hugging Face LLaMA directories and llama.cpp GGUF files to longjax workdirs, and workdirs back to HF.

  # HF -> a longjax workdir (config.json + parameters at step 0 + the tokenizer), for train.init_from=DIR and
  # longjax.load(DIR)
  python -m longjax.convert --hf_dir /path/to/Llama-2-7b-hf --out_dir /ckpt/llama2_7b
  # a llama GGUF (F32/F16/BF16 or quantized: dequantized to float32) -> a workdir, its tokenizer built from its vocab
  python -m longjax.convert --gguf /path/to/SmolLM2-135M-Instruct.Q4_1.gguf --out_dir /ckpt/smollm2
  # a training run (newest step, or --step) -> HF, with LoRA merged and scanned layers unscanned
  python -m longjax.convert --workdir /runs/yarn16 --to_hf /export/yarn16_hf [--step 1000] [--dtype bfloat16]

Neither direction writes into a directory that is not empty.
"""

from absl import flags

from longjax import cli
from longjax.convert import hf, workdir

_HF_DIR = flags.DEFINE_string("hf_dir", None, "A transformers LLaMA directory to import.")
_GGUF = flags.DEFINE_string("gguf", None, "A llama.cpp .gguf file (architecture llama) to import.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "With --hf_dir or --gguf: the longjax workdir to write (new or empty).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A longjax workdir (a training run, or an import) to export.")
_STEP = flags.DEFINE_integer("step", None, "With --workdir: the checkpoint step to export (default: the newest).")
_TO_HF = flags.DEFINE_string("to_hf", None, "With --workdir: the transformers directory to write (new or empty).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "With --to_hf: dtype of the written weights.")


def main(argv):
  del argv
  sources = {"--hf_dir": _HF_DIR.value, "--gguf": _GGUF.value, "--workdir": _WORKDIR.value}
  given = [flag for flag, source in sources.items() if source is not None]
  if len(given) != 1:
    raise hf.ConversionError("--hf_dir / --gguf / --workdir: give exactly one source")
  importers = {"--hf_dir": workdir.import_hf, "--gguf": workdir.import_gguf}
  if given[0] in importers:
    if _OUT_DIR.value is None or _TO_HF.value is not None or _STEP.value is not None:
      raise hf.ConversionError(f"{given[0]} needs --out_dir (a new longjax workdir), and takes neither --to_hf nor "
                               "--step")
    config = importers[given[0]](sources[given[0]], _OUT_DIR.value)
    print(f"wrote {_OUT_DIR.value} (trained length {config.model.max_position_embeddings}, tokenizer "
          f"{config.data.tokenizer})")
    return
  if _TO_HF.value is None or _OUT_DIR.value is not None:
    raise hf.ConversionError("--workdir needs --to_hf (a new transformers directory), and takes no --out_dir")
  step = workdir.export_hf(_WORKDIR.value, _TO_HF.value, step=_STEP.value, torch_dtype=_DTYPE.value)
  print(f"wrote {_TO_HF.value} (step {step} of {_WORKDIR.value})")


if __name__ == "__main__":
  cli.run(main, keep_buffers=False)  # one-off host arrays: glibc's default malloc
