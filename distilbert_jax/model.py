"""The DistilBERT encoder in Flax, readable top to bottom.

Flax linen, because its parameters are a plain nested dict: the checkpoint name table maps onto it one to one,
and sharding, saving and optax see ordinary pytrees.

Parameter names mirror the PyTorch checkpoint (`transformer.layer.0.attention.q_lin.weight` lives at
`transformer/layer_0/attention/q_lin/kernel`). Compute runs in `dtype`, parameters are stored in
`param_dtype`; matmuls accumulate in float32, and softmax and LayerNorm run in float32 whatever `dtype` is.

Axis letters: B batch, T query tokens, S key tokens, D width, H heads, K head width, F feed-forward width.

Sequences are described by `segment_ids` [B, T]: 0 marks padding, and tokens attend only to tokens of their own
segment. A plain padded batch has segment ids equal to its attention mask; a packed row holds several texts
numbered 1, 2, 3, ... (block-diagonal attention) with positions that restart at each text.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from distilbert_jax.config import EncoderConfig

Array = jax.Array


def _precision(dtype) -> jax.lax.Precision:
  # TPU/GPU default to bf16/TF32 passes for float32 matmuls; parity in float32 needs the full-precision path.
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def activation_fn(name: str):
  return {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf GELU, as torch's nn.GELU()
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
  }[name]


def attention_bias(segment_ids: Array) -> Array:
  """[B, T] segment ids -> [B, 1, T, S] additive bias: 0 within a segment, float32 min elsewhere.

  Built once per forward pass, not per layer. Padding queries see nothing and get a uniform row that no
  output uses.
  """
  allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)  # [B, T, S]
  return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, None].astype(jnp.float32)


class Linear(nn.Module):
  """y = x @ kernel + bias, kernel [in, out] (the transpose of torch's weight), float32 accumulation."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    y = jnp.einsum(
      "...i,io->...o",
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      precision=_precision(self.dtype),
      preferred_element_type=jnp.float32,
    )
    return (y + bias.astype(jnp.float32)).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (torch names weight/bias are `scale`/`bias` here)."""

  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)  # biased, as torch
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class Embeddings(nn.Module):
  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, positions: Array, deterministic: bool) -> Array:
    cfg = self.config
    init = nn.initializers.normal(0.02)
    word = self.param("word_embeddings", init, (cfg.vocab_size, cfg.hidden_size), self.param_dtype)
    pos = self.param("position_embeddings", init, (cfg.max_position_embeddings, cfg.hidden_size), self.param_dtype)
    x = word[input_ids].astype(jnp.float32) + pos[positions].astype(jnp.float32)  # [B, T, D]
    x = LayerNorm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name="LayerNorm")(x)
    return nn.Dropout(cfg.dropout)(x, deterministic=deterministic)


class Attention(nn.Module):
  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, bias: Array, deterministic: bool, return_weights: bool = False
  ) -> tuple[Array, Array | None]:
    cfg = self.config
    dense = lambda name: Linear(cfg.hidden_size, self.dtype, self.param_dtype, name=name)
    split_heads = lambda y: y.reshape(*y.shape[:-1], cfg.num_heads, cfg.head_dim)  # [B, T, D] -> [B, T, H, K]
    q = split_heads(dense("q_lin")(x))
    k = split_heads(dense("k_lin")(x))
    v = split_heads(dense("v_lin")(x))

    def attention_weights(q, k, bias):  # works with or without the leading B axis
      logits = jnp.einsum(
        "...thk,...shk->...hts", q, k, precision=_precision(self.dtype), preferred_element_type=jnp.float32
      ) / math.sqrt(cfg.head_dim)  # [B, H, T, S]
      return jax.nn.softmax(logits + bias, axis=-1)  # float32

    def mix(weights, v):
      return jnp.einsum(
        "...hts,...shk->...thk",
        weights.astype(self.dtype),
        v,
        precision=_precision(self.dtype),
        preferred_element_type=jnp.float32,
      ).astype(self.dtype)  # [B, T, H, K]

    weights = None
    if not return_weights and jax.default_backend() == "cpu":
      # XLA:CPU runs the batched [B, H, T, S] form about 3x slower than one example at a time (the whole
      # [B, H, T, S] tensor leaves the caches); accelerators keep the batched form.
      rate = 0.0 if deterministic else cfg.attention_dropout
      keys = jax.random.split(self.make_rng("dropout"), q.shape[0]) if rate else jnp.zeros((q.shape[0], 2), jnp.uint32)

      def one_example(args):
        q, k, bias, v, key = args
        weights = attention_weights(q, k, bias)  # [H, T, S]
        if rate:  # dropout on the attention weights, as nn.Dropout does, with one key per example
          weights = jnp.where(jax.random.bernoulli(key, 1.0 - rate, weights.shape), weights / (1.0 - rate), 0.0)
        return mix(weights, v)

      context = jax.lax.map(one_example, (q, k, bias, v, keys))
    else:
      weights = attention_weights(q, k, bias)
      context = mix(nn.Dropout(cfg.attention_dropout)(weights, deterministic=deterministic), v)
    out = dense("out_lin")(context.reshape(*context.shape[:-2], cfg.hidden_size))  # [B, T, D]
    return out, weights


class FeedForward(nn.Module):
  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    cfg = self.config
    h = Linear(cfg.intermediate_size, self.dtype, self.param_dtype, name="lin1")(x)  # [B, T, F]
    h = activation_fn(cfg.activation)(h.astype(jnp.float32)).astype(self.dtype)
    y = Linear(cfg.hidden_size, self.dtype, self.param_dtype, name="lin2")(h)  # [B, T, D]
    return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)


class Block(nn.Module):
  """Post-LayerNorm transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, bias: Array, deterministic: bool, return_weights: bool = False
  ) -> tuple[Array, Array | None]:
    cfg = self.config
    attn_out, weights = Attention(cfg, self.dtype, self.param_dtype, name="attention")(
      x, bias, deterministic, return_weights
    )
    if cfg.model_type == "bert":  # BERT drops out the attention output; DistilBERT does not.
      attn_out = nn.Dropout(cfg.dropout)(attn_out, deterministic=deterministic)
    x = LayerNorm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name="sa_layer_norm")(
      x.astype(jnp.float32) + attn_out.astype(jnp.float32)
    )
    ffn_out = FeedForward(cfg, self.dtype, self.param_dtype, name="ffn")(x, deterministic)
    x = LayerNorm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name="output_layer_norm")(
      x.astype(jnp.float32) + ffn_out.astype(jnp.float32)
    )
    return x, weights


class Transformer(nn.Module):
  """The stack of blocks, named `layer_0`, `layer_1`, ... as in the checkpoint's `transformer.layer.N`."""

  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, bias: Array, deterministic: bool, return_weights: bool = False
  ) -> tuple[list[Array], list[Array | None]]:
    hidden_states, attentions = [x], []
    for i in range(self.config.num_layers):
      x, weights = Block(self.config, self.dtype, self.param_dtype, name=f"layer_{i}")(
        x, bias, deterministic, return_weights
      )
      hidden_states.append(x)
      attentions.append(weights)
    return hidden_states, attentions


class Encoder(nn.Module):
  """Token ids -> contextual token embeddings [B, T, D] (and, on request, every layer's states and attention)."""

  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self,
    input_ids: Array,
    segment_ids: Array,
    positions: Array | None = None,
    *,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> dict[str, Any]:
    cfg = self.config
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)  # [B, T]
    x = Embeddings(cfg, self.dtype, self.param_dtype, name="embeddings")(input_ids, positions, deterministic)
    hidden_states, attentions = Transformer(cfg, self.dtype, self.param_dtype, name="transformer")(
      x, attention_bias(segment_ids), deterministic, output_attentions
    )
    out = {"token_embeddings": hidden_states[-1]}
    if output_hidden_states:
      out["hidden_states"] = tuple(hidden_states)  # embeddings output, then each block's, as transformers
    if output_attentions:
      out["attentions"] = tuple(attentions)  # [B, H, T, S] per block, float32
    return out

  def init_params(self, rng: Array) -> dict[str, Any]:
    """Randomly initialised parameters (shapes and names as a converted checkpoint's)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return self.init(rng, ids, jnp.ones_like(ids))["params"]
