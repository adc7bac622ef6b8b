"""What the benchmarks read from a compiled step: XLA's memory analysis and cost, and a FLOP count of the program.

  from benchmarks.compiled import compiled_stats, jaxpr_flops
"""

import math
import time

import jax
from jax.extend import core


def jaxpr_flops(jaxpr) -> int:
  """2 m n k per dot_general, 2.5 N log2 N per real FFT of length N (complex: 5 N log2 N), times batch; scan
  bodies count `length` times, cond its costliest branch. (XLA's cost_analysis counts a loop body once.)"""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contract)
      continue
    if name == "fft":
      lengths = eqn.params["fft_lengths"]
      n = math.prod(lengths)
      batch = math.prod(eqn.invars[0].aval.shape[:-len(lengths)])
      real = "R" in eqn.params["fft_type"].name  # RFFT / IRFFT: half the work of a complex transform
      total += int((2.5 if real else 5.0) * n * math.log2(n) * batch)
      continue
    subs = []
    for value in eqn.params.values():
      for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, (core.Jaxpr, core.ClosedJaxpr)):
          subs.append(jaxpr_flops(getattr(item, "jaxpr", item)))
    if name == "cond":
      total += max(subs)
    else:
      total += sum(subs) * eqn.params.get("length", 1)
  return total


def compiled_stats(fn, *args) -> dict:
  """Compile `jax.jit(fn)` for abstract `args`: compile time, XLA's temp/argument/output bytes and flops, and the
  program's own FLOP count (`jaxpr_flops`)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"compile_s": round(compile_s, 2), "temp_bytes": memory.temp_size_in_bytes,
          "argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
          "xla_flops": cost.get("flops"), "jaxpr_flops": jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)}
