"""A NumPy float64 forward pass: the oracle that tells how far float32 JAX and float32 PyTorch are from exact.

Independent of both: no JAX, no torch, written from the DistilBERT/BERT equations. Reads our Flax parameter
tree (converted from the checkpoint by `checkpoint.torch_to_flax`). Slow; for tests and `parity` only.
"""

from __future__ import annotations

import math

import numpy as np

from distilbert_jax.config import EncoderConfig
from distilbert_jax.pooling import PoolingConfig


def _gelu(x, approximate):
  if approximate:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
  from scipy.special import erf  # scipy ships with the test extra; erf in float64

  return 0.5 * x * (1 + erf(x / math.sqrt(2)))


_ACTIVATIONS = {
  "gelu": lambda x: _gelu(x, False),
  "gelu_new": lambda x: _gelu(x, True),
  "gelu_pytorch_tanh": lambda x: _gelu(x, True),
  "relu": lambda x: np.maximum(x, 0),
  "silu": lambda x: x / (1 + np.exp(-x)),
  "swish": lambda x: x / (1 + np.exp(-x)),
}


def _layer_norm(x, p, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _linear(x, p):
  return x @ p["kernel"] + p["bias"]


def token_embeddings(params: dict, config: EncoderConfig, ids: np.ndarray) -> np.ndarray:
  """One unpadded sequence of token ids [T] -> [T, D] float64."""
  p = to_float64(params)
  t = len(ids)
  x = p["embeddings"]["word_embeddings"][ids] + p["embeddings"]["position_embeddings"][:t]
  x = _layer_norm(x, p["embeddings"]["LayerNorm"], config.layer_norm_eps)
  heads, width = config.num_heads, config.head_dim
  for i in range(config.num_layers):
    layer = p["transformer"][f"layer_{i}"]
    att = layer["attention"]
    q, k, v = (_linear(x, att[n]).reshape(t, heads, width).transpose(1, 0, 2) for n in ("q_lin", "k_lin", "v_lin"))
    logits = q @ k.transpose(0, 2, 1) / math.sqrt(width)  # [H, T, T]
    logits -= logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(-1, keepdims=True)
    context = (weights @ v).transpose(1, 0, 2).reshape(t, heads * width)
    x = _layer_norm(x + _linear(context, att["out_lin"]), layer["sa_layer_norm"], config.layer_norm_eps)
    h = _ACTIVATIONS[config.activation](_linear(x, layer["ffn"]["lin1"]))
    x = _layer_norm(x + _linear(h, layer["ffn"]["lin2"]), layer["output_layer_norm"], config.layer_norm_eps)
  return x


def sentence_embedding(params: dict, config: EncoderConfig, pooling: PoolingConfig, ids: np.ndarray) -> np.ndarray:
  x = token_embeddings(params, config, ids)
  parts = {"cls": x[0], "max": x.max(0), "mean": x.mean(0), "mean_sqrt_len_tokens": x.sum(0) / math.sqrt(len(x))}
  out = np.concatenate([parts[m] for m in pooling.modes])
  return out / max(np.linalg.norm(out), 1e-12) if pooling.normalize else out


def to_float64(tree):
  if isinstance(tree, dict):
    return {k: to_float64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)
