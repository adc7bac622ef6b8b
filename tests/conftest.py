import os
import sys

# Tests import the reference helpers and configs by path.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
