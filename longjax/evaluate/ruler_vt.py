"""RULER's variable tracking (NVIDIA/RULER `scripts/data/synthetic/variable_tracking.py`): chains of
`VAR X = VAR Y` among noise lines; the answer is every variable that ends up holding the queried value."""

from __future__ import annotations

import string

import numpy as np

from longjax.evaluate.ruler_niah import NOISE, scatter

TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above.",
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are assigned "
    "the value {query}, they are: ", 30)


def vt_instance(rng: np.random.Generator, num_noises: int, num_chains: int, num_hops: int,
                var_len: int) -> tuple[str, list[str]]:
  """One prompt with num_noises noise lines and the variables of its first chain."""
  names: list[str] = []
  while len(names) < num_chains * (num_hops + 1):
    name = "".join(rng.choice(list(string.ascii_uppercase), size=var_len))
    names += [name] if name not in names else []
  lines, chains, values = [NOISE] * num_noises, [], []
  for c in range(num_chains):
    chain = names[c * (num_hops + 1):(c + 1) * (num_hops + 1)]
    chains.append(chain)
    values.append(str(rng.integers(10000, 99999)))
    statements = [f"VAR {chain[0]} = {values[-1]}"] + [f"VAR {chain[j + 1]} = VAR {chain[j]} " for j in range(num_hops)]
    lines = scatter(rng, lines, statements)
  template = TEMPLATE[0] + TEMPLATE[1]
  prompt = template.format(context="\n".join(lines), query=values[0], num_v=num_hops + 1)
  return prompt, chains[0]


def fewshot_text(prompt: str, variables: list[str]) -> str:
  """A solved example as RULER inserts it: prompt, a space, the answer, then a blank line before the task."""
  return prompt + " " + " ".join(variables) + "\n\n"


def vt(rng: np.random.Generator, num_noises: int, *, num_chains: int, num_hops: int,
       fewshot_example: str = "") -> tuple[str, list[str]]:
  prompt, outputs = vt_instance(rng, num_noises, num_chains, num_hops, var_len=5)
  return fewshot_example + prompt, outputs
