"""Decoding with Self-Extend, DCA, ReRoPE and log-n scaling equals a full forward pass with the same method."""

import jax
import numpy as np
import pytest
from test_decode import PRETRAINED, ROPES, decode_errors, model_and_params, tokens_for

from longjax.config import AttentionConfig, RopeConfig

# Windows and chunks well below the 26 tokens decoded, so every pass and region is read.
METHODS = {
    "self_extend": AttentionConfig.of("self_extend", group_size=3, window=6, kernel_block=8),
    "dca": AttentionConfig.of("dca", chunk_size=8, local_window=3, kernel_block=8),
    "rerope_logn": AttentionConfig.of("rerope", window=6, logn_length=PRETRAINED, kernel_block=8),
    "full_logn": AttentionConfig(logn_length=PRETRAINED),
}


@pytest.mark.parametrize("name", METHODS)
def test_decode_matches_full_forward(name):
  model, params = model_and_params(RopeConfig(), attention=METHODS[name])
  np.testing.assert_array_less(decode_errors(model, params, tokens_for()), 1e-4)


def test_dynamic_rope_with_self_extend_decodes_exactly():
  """Keys before RoPE: a dynamic method's frequencies move with the length and the remapping reads them."""
  model, params = model_and_params(ROPES["dynamic_yarn"], layers=1, attention=METHODS["self_extend"])
  np.testing.assert_array_less(decode_errors(model, params, tokens_for()), 1e-4)


def test_remapping_changes_the_model():
  """The oracle has teeth: the remapped model's logits differ from the plain model's past the window."""
  tokens = tokens_for()
  plain, params = model_and_params(RopeConfig(), layers=1)
  remapped, _ = model_and_params(RopeConfig(), layers=1, attention=METHODS["self_extend"])
  a, b = (np.asarray(jax.jit(model.apply)({"params": params}, tokens)) for model in (plain, remapped))
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5)  # inside the window: plain attention
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3
