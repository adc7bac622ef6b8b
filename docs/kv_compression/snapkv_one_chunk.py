"""SnapKV 1/4 passkey at 4K with the whole prompt prefilled in one chunk (the paper's prefill-then-compress)."""
import dataclasses, json, os, time
from longjax import load
from longjax.evaluate import passkey
from longjax.evaluate.tasks import EvalRun
loaded = load("/tmp/real/out2/smollm2")
path = "/tmp/kvwork/cells/snapkv_1-4/passkey_4096_one_chunk.json"
start = time.time()
run = EvalRun(loaded.config, {"snapkv 1/4": loaded.config}, loaded.params, loaded.tokenizer,
              generate_options={"kv_policy": "snapkv", "kv_budget": 1024, "max_length": 4608, "prefill_chunk": 4608})
grid = passkey.evaluate_passkey(run.generate, lambda t: len(run.encode(t)), [4096], [0.5], keys_per_cell=1, seed=4096)
result = {**dataclasses.asdict(grid), "prefill_chunk": 4608, "seconds": round(time.time() - start, 1)}
json.dump(result, open(path, "w"))
print(result["accuracy"], result["samples"][0]["output"][:40], result["seconds"], flush=True)
