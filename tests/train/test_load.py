"""`longjax.load(workdir)` in a fresh process gives the logits of the parameters the training run ended with."""

import jax
import numpy as np

from longjax import checkpoint
from longjax.data import get_tokenizer
from longjax.train.loop import Trainer

SCRIPT = """
import json, sys
import numpy as np
import longjax

model = longjax.load(sys.argv[1])
np.save(sys.argv[3], np.asarray(model.logits(np.load(sys.argv[2]))))
print(json.dumps({"step": model.step, "hidden_size": model.config.model.hidden_size,
                  "text": model.generate("import json", max_new_tokens=4)}))
"""


def test_load_reproduces_the_training_logits(runner, trained_workdir, tmp_path):
  text = "import json\n\ndef encode(obj):\n    return json.dumps(obj)\n"
  trainer = Trainer(checkpoint.read_config(trained_workdir), trained_workdir)
  try:
    with trainer.context():
      step, params, _, _ = trainer.checkpointer.restore(trainer.abstract_params, trainer.abstract_opt)
      tokens = np.asarray([get_tokenizer(trainer.config.data).encode(text, bos=True)], np.int32)
      expected = np.asarray(jax.jit(trainer.model.apply)({"params": params}, tokens))
  finally:
    trainer.checkpointer.close()
  assert step == 30

  np.save(tmp_path / "tokens.npy", tokens)
  loaded = runner.python(SCRIPT, trained_workdir, str(tmp_path / "tokens.npy"), str(tmp_path / "logits.npy"))
  assert loaded["step"] == step and loaded["hidden_size"] == 64
  assert isinstance(loaded["text"], str) and loaded["text"]
  logits = np.load(tmp_path / "logits.npy")
  assert logits.shape == (1, tokens.shape[1], 259) and logits.dtype == np.float32
  np.testing.assert_allclose(logits, expected, atol=1e-6, rtol=0)
