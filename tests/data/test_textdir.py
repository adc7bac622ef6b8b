"""The text-file TFDS builder and `open_documents` over it and over a named TFDS dataset."""

import dataclasses
import functools
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from longjax.config import ConfigError, DataConfig
from longjax.data import TextDir, TextDirConfig, build_text_dir, open_documents
from longjax.data.textdir import in_validation, stdlib_dir


def assert_one_line_config_error(error, key):
  message = str(error.value)
  assert message.startswith(f"{key}=") and " is invalid: " in message and "\n" not in message, message
  assert error.value.__cause__ is None


def test_splits_hold_every_readable_file_once(corpus_config, readable_files):
  train = open_documents(corpus_config, "train")
  validation = open_documents(corpus_config, "validation")
  assert len(train) + len(validation) == len(readable_files)
  expected = {split: {p for p in readable_files if in_validation(p, 0.3) == (split == "validation")}
              for split in ("train", "validation")}
  assert expected["train"] and expected["validation"]
  for split, documents in (("train", train), ("validation", validation)):
    texts = [documents[i] for i in range(len(documents))]
    assert sorted(texts) == sorted(readable_files[p].decode() for p in expected[split])
    assert documents[-1] == texts[-1] and isinstance(texts[0], str)
    with pytest.raises(IndexError):
      documents[len(documents)]


def test_examples_carry_their_path(corpus_config, readable_files):
  builder = build_text_dir(corpus_config.text_dir, corpus_config.text_glob, 0.3, corpus_config.data_dir)
  source = builder.as_data_source(split="train")
  for example in (source[i] for i in range(len(source))):
    assert readable_files[example["path"].decode()] == example["text"]


def test_split_depends_only_on_the_relative_path(tmp_path, readable_files, write_corpus):
  paths = [f"dir_{i}/file_{j}.py" for i in range(20) for j in range(20)]
  share = sum(in_validation(p, 0.25) for p in paths) / len(paths)
  assert 0.2 < share < 0.3
  # The same relative path lands in the same split whatever the directory and its other files.
  some = {path: readable_files[path] for path in list(readable_files)[:5]}
  other = write_corpus(tmp_path / "other", {"extra.py": b"y = 2\n", **some})
  builder = build_text_dir(str(other), validation_fraction=0.3, data_dir=str(tmp_path / "tfds"))
  for split, source in builder.as_data_source().items():
    for i in range(len(source)):
      assert in_validation(source[i]["path"].decode(), 0.3) == (split == "validation")


def test_second_build_reuses_the_prepared_data(corpus_config, monkeypatch):
  first = build_text_dir(corpus_config.text_dir, corpus_config.text_glob, 0.3, corpus_config.data_dir)
  info_file = first.data_path / "dataset_info.json"  # an epath.Path
  written = os.stat(info_file).st_mtime_ns

  def fail(*args):
    raise AssertionError("rebuilt")

  monkeypatch.setattr(TextDir, "_split_generators", fail)
  second = build_text_dir(corpus_config.text_dir, corpus_config.text_glob, 0.3, corpus_config.data_dir)
  assert second.data_path == first.data_path and os.stat(info_file).st_mtime_ns == written
  assert json.loads(info_file.read_text())["fileFormat"] == "array_record"


def test_config_name_follows_directory_glob_fraction_and_files(tmp_path, write_corpus):
  root = write_corpus(tmp_path / "src", {"a.py": b"a = 1\n", "b.txt": b"b\n"})
  name = TextDirConfig.create(str(root)).name
  assert name.startswith("src_") and name == TextDirConfig.create(str(root)).name
  assert name != TextDirConfig.create(str(root), text_glob="*.txt").name
  assert name != TextDirConfig.create(str(root), validation_fraction=0.5).name
  (root / "a.py").write_bytes(b"a = 22\n")
  assert name != TextDirConfig.create(str(root)).name


def test_default_is_the_stdlib_without_installed_packages():
  config = TextDirConfig.create()
  assert config.text_dir == os.path.abspath(stdlib_dir()) and config.exclude_dirs == ("site-packages",
                                                                                        "dist-packages")


def test_stdlib_default_builds(tmp_path_factory):
  data = DataConfig(data_dir=str(tmp_path_factory.mktemp("stdlib_tfds")))
  train, validation = open_documents(data, "train"), open_documents(data, "validation")
  assert len(train) > 500 and 0 < len(validation) < len(train) / 5
  with open(os.path.join(stdlib_dir(), "json", "decoder.py"), encoding="utf-8") as f:
    decoder = f.read()
  texts = {train[i] for i in range(len(train))} | {validation[i] for i in range(len(validation))}
  assert decoder in texts


@pytest.mark.parametrize("files, glob", [(None, "**/*.py"), ({}, "**/*.py"), ({"a.txt": b"text"}, "**/*.py"),
                                         ({"empty.py": b""}, "**/*.py"), ({"binary.py": b"\0\1"}, "**/*.py")])
def test_unusable_text_dir_is_a_config_error(tmp_path, files, glob, write_corpus):
  text_dir = tmp_path / "missing"
  if files is not None:
    write_corpus(text_dir, files).mkdir(exist_ok=True)
  with pytest.raises(ConfigError) as error:
    open_documents(DataConfig(text_dir=str(text_dir), text_glob=glob, data_dir=str(tmp_path / "tfds")), "train")
  assert_one_line_config_error(error, "data.text_dir")
  assert str(text_dir) in str(error.value)


def test_missing_split_is_a_config_error(corpus_config):
  for key, config, split in (("data.eval_split", dataclasses.replace(corpus_config, eval_split="test"), "test"),
                             ("data.train_split", dataclasses.replace(corpus_config, train_split="x"), "x")):
    with pytest.raises(ConfigError) as error:
      open_documents(config, split)
    assert_one_line_config_error(error, key)
    assert "train, validation" in str(error.value)


class LongjaxTestDocs(tfds.core.GeneratorBasedBuilder):
  """A registered TFDS dataset built offline, standing in for a named dataset such as pg19."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # See TextDir: nothing to download, no checksums to find.

  def _info(self):
    features = {"body": tfds.features.Text(), "number": tfds.features.Scalar(np.int64)}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(10)), "test": self._generate_examples(range(10, 13))}

  def _generate_examples(self, numbers):
    for number in numbers:
      yield number, {"body": f"book {number} — ünïcode", "number": number}


@pytest.fixture(scope="module")
def named_config(tmp_path_factory):
  return DataConfig(source="tfds", tfds_name="longjax_test_docs", tfds_text_key="body", eval_split="test",
                    data_dir=str(tmp_path_factory.mktemp("named_tfds")))


def test_named_tfds_dataset(named_config):
  test = open_documents(named_config, "test")
  assert sorted(test[i] for i in range(len(test))) == [f"book {n} — ünïcode" for n in (10, 11, 12)]
  assert len(open_documents(named_config, "train[:50%]")) == 5


def test_named_tfds_errors(named_config):
  replace = functools.partial(dataclasses.replace, named_config)
  with pytest.raises(ConfigError) as error:
    open_documents(replace(tfds_name="no_such_dataset_anywhere"), "train")
  assert_one_line_config_error(error, "data.tfds_name")
  with pytest.raises(ConfigError) as error:
    open_documents(named_config, "validation")
  assert_one_line_config_error(error, "split")
  with pytest.raises(ConfigError) as error:
    open_documents(replace(eval_split="validation"), "validation")
  assert_one_line_config_error(error, "data.eval_split")
  with pytest.raises(ConfigError) as error:
    open_documents(replace(tfds_text_key="text"), "train")
  assert_one_line_config_error(error, "data.tfds_text_key")


def test_losing_a_concurrent_build_reads_the_winners_copy(tmp_path, monkeypatch, write_corpus):
  """Processes that share a data_dir may build at once; the last one's final rename fails."""
  text_dir = str(write_corpus(tmp_path / "src", {"a.py": b"a = 1\n"}))
  prepare = TextDir.download_and_prepare

  def lose_the_race(builder, **kwargs):
    prepare(TextDir(config=builder.builder_config, data_dir=str(tmp_path / "tfds")), **kwargs)
    raise FileExistsError("Destination already exists.")

  monkeypatch.setattr(TextDir, "download_and_prepare", lose_the_race)
  builder = build_text_dir(text_dir, data_dir=str(tmp_path / "tfds"))
  assert builder.as_data_source(split="train")[0]["text"] == b"a = 1\n"
