"""Documents as a random-access sequence of strings, from the text-file builder or any TFDS dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from longjax.config import ConfigError, DataConfig
from longjax.data import textdir


class Documents(Sequence):
  """The `text_key` feature of a TFDS data source, decoded to `str` (bytes that are not UTF-8 are replaced)."""

  def __init__(self, data_source: Sequence[dict[str, Any]], text_key: str):
    self._data_source = data_source
    self._text_key = text_key

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> str:
    if not -len(self) <= index < len(self):
      raise IndexError(f"document {index} of {len(self)}")
    text = self._data_source[index % len(self)][self._text_key]
    if isinstance(text, np.ndarray):  # A scalar Text feature can come back as a 0-d array.
      text = text.item()
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def split_key(data: DataConfig, split: str) -> str:
  """The config key that names `split`, for error messages."""
  if split == data.train_split:
    return "data.train_split"
  if split == data.eval_split:
    return "data.eval_split"
  return "split"


def _builder(data: DataConfig) -> tfds.core.DatasetBuilder:
  if data.source == "textdir":
    return textdir.build_text_dir(data.text_dir, data.text_glob, data.validation_fraction, data.data_dir)
  try:
    builder = tfds.builder(data.tfds_name, data_dir=data.data_dir or None, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(f"data.tfds_name={data.tfds_name!r} is invalid: no registered TFDS dataset has that name "
                      "(see tfds.list_builders())") from None
  # Reuses data already in data_dir; otherwise builds it, as ArrayRecord (random access needs it).
  builder.download_and_prepare(file_format="array_record")
  return builder


def _prepared_builder(data: DataConfig) -> tfds.core.DatasetBuilder:
  """`_builder(data)`, prepared by process 0 first while the others wait (a collective in a multi-process run).

  Every process preparing the same shared data_dir at once races on TFDS's temporary directories and final
  rename, and reads (or downloads) everything P times. After process 0, the others find the data prepared and
  only open it; on hosts without a shared data_dir each prepares its own copy then.
  """
  if jax.process_count() == 1:
    return _builder(data)
  error = None
  if jax.process_index() == 0:
    try:
      builder = _builder(data)
    except Exception as e:  # noqa: BLE001 - raised below, after the others have passed the barrier
      error = e
  prepared = np.asarray(multihost_utils.process_allgather(np.int32(error is None)))
  if error is not None:
    raise error
  if not prepared.all():
    raise ConfigError(f"{split_key(data, data.train_split)}: process 0 failed to prepare the dataset (its log has "
                      "the error)")
  return builder if jax.process_index() == 0 else _builder(data)


def open_documents(data: DataConfig, split: str) -> Documents:
  """The documents of `split` ('train', 'validation', or TFDS split syntax such as 'train[:1%]').

  In a multi-process run every process calls it (process 0 prepares the dataset while the others wait)."""
  if data.source not in ("textdir", "tfds"):
    raise ConfigError(f"data.source={data.source!r} is invalid: allowed: textdir, tfds")
  builder = _prepared_builder(data)
  dataset = f"data.tfds_name={data.tfds_name!r}" if data.source == "tfds" else f"data.text_dir={data.text_dir!r}"
  try:
    data_source = builder.as_data_source(split=split)
  except ValueError:  # An unknown split name, or split syntax TFDS cannot parse.
    raise ConfigError(f"{split_key(data, split)}={split!r} is invalid: {dataset} has splits "
                      f"{', '.join(sorted(builder.info.splits))}") from None
  except NotImplementedError:  # The dataset was prepared as TFRecord, which has no random access.
    raise ConfigError(f"{dataset} is invalid: it is stored as {builder.info.file_format.value}, random access needs "
                      f"array_record (prepare it again with file_format='array_record' in another data_dir)") from None
  features = builder.info.features
  if data.source == "tfds" and data.tfds_text_key not in features:
    raise ConfigError(f"data.tfds_text_key={data.tfds_text_key!r} is invalid: {dataset} has features "
                      f"{', '.join(sorted(features))}")
  return Documents(data_source, data.tfds_text_key if data.source == "tfds" else "text")
