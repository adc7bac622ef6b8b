import os
import sys

# Tests import the reference helpers (hf_reference.py) by path; config files load with longjax.config.load_file.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
