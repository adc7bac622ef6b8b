"""A TFDS dataset built from a directory of text files: one document per file.

The default directory is the running Python's standard library source tree, a corpus of long
documents that is on every machine with no download. Files are split into `train` and `validation`
by a hash of their relative path, so a file stays in its split whatever else the directory holds.
The dataset is written as ArrayRecord and read back with random access (`as_data_source`), with no
TensorFlow.

Each (directory, glob, validation fraction, file listing) gets its own builder config, named by a
hash of all four, so different directories never collide in one `data_dir`, and editing, adding or
removing a file (its size or mtime changes) builds a fresh copy instead of reading a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import sysconfig

import tensorflow_datasets as tfds

from longjax.config import ConfigError

# Installed third-party packages live inside the stdlib directory on most Pythons; they differ from
# machine to machine, so the default corpus leaves them out.
STDLIB_EXCLUDED_DIRS = ("site-packages", "dist-packages")
_SNIFF_BYTES = 8192


def stdlib_dir() -> str:
  """The running Python's standard library source directory (the default `data.text_dir`)."""
  return sysconfig.get_paths()["stdlib"]


def in_validation(relative_path: str, validation_fraction: float) -> bool:
  """Whether a file goes to the validation split: a fixed hash of its relative POSIX path."""
  digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction


def list_files(text_dir: str, text_glob: str, exclude_dirs: tuple[str, ...] = ()) -> list[pathlib.Path]:
  """Sorted regular, non-empty files under `text_dir` matching `text_glob`, outside `exclude_dirs`."""
  root = pathlib.Path(text_dir)
  if not root.is_dir():
    raise ConfigError(f"data.text_dir={text_dir!r} is invalid: not a directory")
  files = []
  for path in root.glob(text_glob):
    parts = path.relative_to(root).parts
    if any(part in exclude_dirs for part in parts[:-1]) or not path.is_file():
      continue
    if path.stat().st_size > 0:
      files.append(path)
  if not files:
    raise ConfigError(f"data.text_dir={text_dir!r} is invalid: no non-empty files match {text_glob!r}")
  return sorted(files)


def read_document(path: pathlib.Path) -> str | None:
  """The file's text, or None for files that are binary (a NUL byte), not UTF-8, or only whitespace."""
  data = path.read_bytes()
  if b"\0" in data[:_SNIFF_BYTES]:
    return None
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    return None
  return text if text.strip() else None


@dataclasses.dataclass(eq=False, kw_only=True)
class TextDirConfig(tfds.core.BuilderConfig):
  """Which files make the dataset; `name` hashes them (see `TextDirConfig.create`)."""

  text_dir: str = ""
  text_glob: str = "**/*.py"
  validation_fraction: float = 0.05
  exclude_dirs: tuple[str, ...] = ()

  @classmethod
  def create(cls, text_dir: str = "", text_glob: str = "**/*.py", validation_fraction: float = 0.05
            ) -> TextDirConfig:
    """A config for `text_dir` ('' = the stdlib without its installed packages), named by a hash of its files."""
    exclude_dirs = STDLIB_EXCLUDED_DIRS if not text_dir else ()
    text_dir = os.path.abspath(text_dir or stdlib_dir())
    files = list_files(text_dir, text_glob, exclude_dirs)
    fingerprint = hashlib.sha256(repr((text_dir, text_glob, validation_fraction, exclude_dirs)).encode())
    for path in files:
      stat = path.stat()
      fingerprint.update(f"\n{path.relative_to(text_dir).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(text_dir).lower()).strip("_") or "root"
    return cls(name=f"{slug}_{fingerprint.hexdigest()[:16]}", description=f"{text_dir}/{text_glob}",
               text_dir=text_dir, text_glob=text_glob, validation_fraction=validation_fraction,
               exclude_dirs=exclude_dirs)


class TextDir(tfds.core.GeneratorBasedBuilder):
  """Documents {'text', 'path'} from the files of a directory; splits `train` and `validation`."""

  name = "textdir"
  VERSION = tfds.core.Version("1.0.0")
  # TFDS looks beside the builder's code for download checksums; this builder downloads nothing, and
  # the look-up itself needs the `importlib_resources` backport, which TFDS does not install.
  code_path = None
  RELEASE_NOTES = {"1.0.0": "One example per UTF-8 text file; validation by a hash of the relative path."}

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: `dataset_info_from_configs` would look for metadata files beside this module.
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the files are local.
    config = self.builder_config
    documents = {"train": [], "validation": []}
    for path in list_files(config.text_dir, config.text_glob, config.exclude_dirs):
      if read_document(path) is not None:
        relative_path = path.relative_to(config.text_dir).as_posix()
        split = "validation" if in_validation(relative_path, config.validation_fraction) else "train"
        documents[split].append((relative_path, path))
    if not any(documents.values()):
      raise ConfigError(f"data.text_dir={config.text_dir!r} is invalid: no file matching {config.text_glob!r} "
                        "is non-empty UTF-8 text")
    # TFDS cannot write an empty split; a tiny directory may have no validation file.
    return {split: self._generate_examples(files) for split, files in documents.items() if files}

  def _generate_examples(self, files):
    for relative_path, path in files:
      yield relative_path, {"text": read_document(path), "path": relative_path}


class _NoCustomConfigNotice(logging.Filter):
  """TFDS warns "Using custom data configuration" at every open of a TextDir: that is how it is meant to work."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_NoCustomConfigNotice())


def build_text_dir(text_dir: str = "", text_glob: str = "**/*.py", validation_fraction: float = 0.05,
                   data_dir: str = "") -> TextDir:
  """The prepared TextDir builder for a directory: built as ArrayRecord on first use, reused after.

  `data_dir` '' is TFDS's default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  """
  config = TextDirConfig.create(text_dir, text_glob, validation_fraction)
  data_dir = data_dir or None
  builder = TextDir(config=config, data_dir=data_dir, file_format="array_record")
  try:
    builder.download_and_prepare(file_format="array_record")
  except OSError:
    # Another process finished the same build first and won the final rename: read its copy.
    builder = TextDir(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.data_path.exists():
      raise
  return builder
