"""Text shipped with the package for the evaluation tasks (`data/`, sources and licences in `data/SOURCES.md`):
an English word list and the CIA World Factbook's country profiles (public domain), read once."""

from __future__ import annotations

import functools
import json
import os

_DATA = os.path.join(os.path.dirname(__file__), "data")


@functools.cache
def words() -> tuple[str, ...]:
  """60,540 English words of 3-12 letters (`data/words.txt`, from SCOWL via Debian's wamerican)."""
  with open(os.path.join(_DATA, "words.txt"), encoding="utf-8") as f:
    return tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))


@functools.cache
def factbook() -> tuple[dict, ...]:
  """One record a country (`data/factbook.jsonl`): name, long_name, capital, location, climate, terrain,
  highest_point, lowest_point, background and economy (prose paragraphs)."""
  with open(os.path.join(_DATA, "factbook.jsonl"), encoding="utf-8") as f:
    return tuple(json.loads(line) for line in f if line.strip())


@functools.cache
def essays() -> str:
  """The prose haystack (about 660K characters): each country's background and economy overview, one paragraph
  a line; it stands in for the Paul Graham essays of RULER and of gkamradt's needle test."""
  paragraphs = [text for record in factbook() for text in (record["background"], record["economy"]) if text]
  return "\n".join(paragraphs)
