"""A NumPy float64 forward pass: the oracle that tells how far float32 JAX and float32 PyTorch are from exact.

Independent of both: no JAX, no torch, written from the DistilBERT/BERT equations and each variant's
(pre-norm, RMSNorm, rotary or no positions, gated FFN, no biases). Reads our Flax parameter
tree (converted from the checkpoint by `checkpoint.torch_to_flax`). Slow; for tests and `parity` only.
"""

from __future__ import annotations

import math

import numpy as np

from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.pooling import PoolingConfig


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


def _norm(x, p, config):
  if config.norm_type == "rmsnorm":
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + config.layer_norm_eps) * p["scale"]
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + config.layer_norm_eps) * p["scale"] + p["bias"]


def _linear(x, p):
  return x @ p["kernel"] + (p["bias"] if "bias" in p else 0.0)


def _rotate(x, theta):
  """Rotary positions on [H, T, K]: pairs (i, i + K/2) rotated by position * theta^(-2i/K)."""
  half = x.shape[-1] // 2
  angles = np.arange(x.shape[1])[:, None] * theta ** (-np.arange(half) / half)  # [T, K/2]
  cos, sin = np.cos(angles), np.sin(angles)
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def token_embeddings(params: dict, config: EncoderConfig, ids: np.ndarray) -> np.ndarray:
  """One unpadded sequence of token ids [T] -> [T, D] float64, for every architecture variant of the config."""
  p = to_float64(params)
  t = len(ids)
  x = p["embeddings"]["word_embeddings"][ids]
  if config.position_embedding == "learned":
    x = x + p["embeddings"]["position_embeddings"][:t]
  if config.embedding_norm:
    x = _norm(x, p["embeddings"]["LayerNorm"], config)
  heads, width = config.num_heads, config.head_dim
  act = _ACTIVATIONS[config.activation]

  def attention(x, att):
    q, k, v = (_linear(x, att[n]).reshape(t, heads, width).transpose(1, 0, 2) for n in ("q_lin", "k_lin", "v_lin"))
    if config.position_embedding == "rotary":
      q, k = _rotate(q, config.rope_theta), _rotate(k, config.rope_theta)
    logits = q @ k.transpose(0, 2, 1) / math.sqrt(width)  # [H, T, T]
    logits -= logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(-1, keepdims=True)
    return _linear((weights @ v).transpose(1, 0, 2).reshape(t, heads * width), att["out_lin"])

  def ffn(x, f):
    h = _linear(x, f["lin1"])
    h = act(_linear(x, f["gate"])) * h if config.ffn == "gated" else act(h)
    return _linear(h, f["lin2"])

  for i in range(config.num_layers):
    layer = p["transformer"][f"layer_{i}"]
    if config.norm_position == "pre":
      x = x + attention(_norm(x, layer["sa_layer_norm"], config), layer["attention"])
      x = x + ffn(_norm(x, layer["output_layer_norm"], config), layer["ffn"])
    else:
      x = _norm(x + attention(x, layer["attention"]), layer["sa_layer_norm"], config)
      x = _norm(x + ffn(x, layer["ffn"]), layer["output_layer_norm"], config)
  if config.norm_position == "pre":
    x = _norm(x, p["transformer"]["final_layer_norm"], config)
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
