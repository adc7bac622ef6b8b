"""Convert weights between Hugging Face and longjax.

  python -m longjax.convert --hf_dir /path/to/Llama-2-7b-hf --out_dir /ckpt/llama2_7b   # HF -> Orbax
  python -m longjax.convert --checkpoint /ckpt/llama2_7b --out_dir /path/to/hf_export --to_hf   # Orbax -> HF
"""

from absl import flags

from longjax import cli
from longjax.convert import hf, orbax_io

_HF_DIR = flags.DEFINE_string("hf_dir", None, "A transformers LLaMA directory to read.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "An Orbax parameter checkpoint written by this command.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the converted weights.", required=True)
_TO_HF = flags.DEFINE_bool("to_hf", False, "Write a transformers directory instead of an Orbax checkpoint.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "dtype of the written weights.")


def main(argv):
  del argv
  if (_HF_DIR.value is None) == (_CHECKPOINT.value is None):
    raise hf.ConversionError("--hf_dir / --checkpoint: give exactly one source")
  if _HF_DIR.value:
    model, params = hf.load(_HF_DIR.value)
  else:
    model, params = orbax_io.load_params(_CHECKPOINT.value)
  if _TO_HF.value:
    hf.save(model, params, _OUT_DIR.value, torch_dtype=_DTYPE.value)
  else:
    orbax_io.save_params(model, params, _OUT_DIR.value)
  print(f"wrote {_OUT_DIR.value}")


if __name__ == "__main__":
  cli.run(main)
