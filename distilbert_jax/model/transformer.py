"""The encoder in Flax, readable top to bottom: DistilBERT/BERT by default, research variants by config.

Flax linen, because its parameters are a plain nested dict: the checkpoint name table maps onto it one to one,
and sharding, saving and optax see ordinary pytrees.

Parameter names mirror the PyTorch checkpoint (`transformer.layer.0.attention.q_lin.weight` lives at
`transformer/layer_0/attention/q_lin/kernel`; with `scan_layers` every block's parameters are stacked on a leading
axis under `transformer/layers`). Compute runs in `dtype`, parameters are stored in `param_dtype`; matmuls
accumulate in float32, and softmax, norms and activations run in float32 whatever `dtype` is.

The caller chooses the attention implementation by name (`attention.py`); nothing here looks at the platform.
`Hook` modules are identities placed where researchers look (per-head context, FFN activations): read them with
`capture_intermediates`, replace them with `nn.intercept_methods`.

Axis letters: B batch, T query tokens, S key tokens, D width, H heads, K head width, F feed-forward width,
L layers.

Sequences are described by `segment_ids` [B, T]: 0 marks padding, and tokens attend only to tokens of their own
segment. A plain padded batch has segment ids equal to its attention mask; a packed row holds several texts
numbered 1, 2, 3, ... (block-diagonal attention) with positions that restart at each text.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.model.attention import attend, matmul_precision
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.dropout import Dropout
from distilbert_jax.model.invariant import over_tiles, row_sum
from distilbert_jax.model.onednn import dot_float
from distilbert_jax.model.quantize import int8_dense

Array = jax.Array
DENSE_DOTS = ("xla", "onednn")  # the float dense layers' dot: XLA's einsum, or oneDNN's GEMM (CPU, row-invariant)


def gelu_erf(x: Array) -> Array:
  """Exact GELU as torch's nn.GELU() computes it, x / 2 * (1 + erf(x / sqrt 2)). jax.nn.gelu's exact form takes
  erfc, which XLA:CPU computes on two branches, one with an exp: its fusion took 7-9% of int8 encoding on short
  passages (profiled), and with erf the whole encoding ran 5-7% faster (AMD EPYC, 2 cores)."""
  return x * 0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def activation_fn(name: str):
  return {
    "gelu": gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
  }[name]


def used_tokens_of(segment_ids: Array, int8: bool | str, dense: str) -> Array | None:
  """Where oneDNN computes the dense layers, the tokens of the rows [B, T], flattened, up to the last real one
  (int32 scalar): a partly filled step's trailing padding (a batch's empty last rows: 6% of the tokens of 256 short
  passages) is not multiplied. Its products are zeros, which nothing reads: attention, pooling and the outputs take
  each text's own tokens. None where XLA's dot computes (its shapes are static)."""
  if int8 != "onednn" and not (dense == "onednn" and not int8):
    return None
  flat = segment_ids.reshape(-1) > 0
  return jnp.max(jnp.where(flat, jnp.arange(1, flat.size + 1, dtype=jnp.int32), 0))


class Hook(nn.Module):
  """Identity. A named place to read (capture_intermediates) or replace (nn.intercept_methods) an activation."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return x


class Linear(nn.Module):
  """y = x @ kernel (+ bias), kernel [in, out] (the transpose of torch's weight), float32 accumulation.

  `int8`: the kernel is `kernel_int8` [out, in] with per-channel `kernel_scale` (`quantize.quantize_dense_params`
  makes them from a checkpoint), activations are quantized per token, or by the layer's `input_step` where the
  parameters hold one (static int8, `encode.calibration`); the dot accumulates in int32.
  `dense` (DENSE_DOTS): the float dot, XLA's einsum or oneDNN's GEMM ("onednn", `onednn.dot_float`: CPU, float32
  and bfloat16; a row's bits do not depend on the other rows). `token_tile`: XLA's float product runs on fixed
  tiles of that many tokens (deterministic encoding without oneDNN, `invariant.py`). The int8 dot is exact and its
  float steps elementwise, so it never needs tiles."""

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  int8: bool | str = False
  token_tile: int | None = None
  dense: str = "xla"

  @nn.compact
  def __call__(self, x: Array, used_tokens: Array | None = None) -> Array:
    """`used_tokens` (int32 scalar): the tokens of x, flattened, past which all are padding; oneDNN's dots then
    multiply only those (the others' products are zeros, never read: `used_tokens_of`). XLA's dot computes every
    token."""
    if self.int8:
      kernel = self.param("kernel_int8", nn.initializers.zeros, (self.features, x.shape[-1]), jnp.int8)
      scale = self.param("kernel_scale", nn.initializers.ones, (self.features,), jnp.float32)
      dot = "xla" if self.int8 is True else self.int8  # the int8 dot's implementation (quantize.INT8_DOTS)
      # Calibrated input steps in the parameters (quantize_dense_params) make the layer's int8 static.
      static = None
      if self.has_variable("params", "input_step"):
        static = self.param("input_step", nn.initializers.ones, (x.shape[-1],), jnp.float32)
      product = lambda x: int8_dense(x, kernel, scale, dot, used_tokens, static)  # [..., O] float32
    elif self.dense == "onednn":
      kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), self.param_dtype)
      product = lambda x: dot_float(
        x.reshape(-1, x.shape[-1]).astype(self.dtype), kernel.astype(self.dtype), used_tokens
      ).reshape(*x.shape[:-1], self.features)
    elif self.dense != "xla":
      raise ValueError(f"dense dot {self.dense!r} is not one of {DENSE_DOTS}")
    else:
      kernel = self.param("kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), self.param_dtype)
      product = lambda x: jnp.einsum(
        "...i,io->...o",
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        precision=matmul_precision(self.dtype),
        preferred_element_type=jnp.float32,
      )
    tiled = self.token_tile and not self.int8 and self.dense == "xla"
    y = over_tiles(product, x, self.token_tile) if tiled else product(x)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype).astype(jnp.float32)
    return y.astype(self.dtype)


class Norm(nn.Module):
  """LayerNorm (torch's weight/bias are `scale`/`bias`) or RMSNorm (`scale` only), computed in float32."""

  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  invariant: bool = False  # its means in a fixed order (`invariant.row_sum`; deterministic encoding)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg, d = self.config, x.shape[-1]
    mean = (lambda y: row_sum(y) * (1.0 / d)) if self.invariant else (lambda y: y.mean(-1, keepdims=True))
    scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype).astype(jnp.float32)
    bias = None if cfg.norm_type == "rmsnorm" else self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)

    def norm(x):
      x = x.astype(jnp.float32)
      if bias is None:  # RMSNorm
        return x * jax.lax.rsqrt(mean(jnp.square(x)) + cfg.layer_norm_eps) * scale
      centered = x - mean(x)
      var = mean(jnp.square(centered))  # biased, as torch
      return centered * jax.lax.rsqrt(var + cfg.layer_norm_eps) * scale + bias.astype(jnp.float32)

    return norm(x).astype(self.dtype)


def rotate(x: Array, positions: Array, theta: float) -> Array:
  """Rotary position embedding (the rotate-half form of HF's RoPE): x [B, T, H, K], positions [B, T]."""
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [K/2]
  angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, K/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, -1)[:, :, None]  # [B, T, 1, K]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, -1)[:, :, None]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], -1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


class Embeddings(nn.Module):
  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  invariant: bool = False

  @nn.compact
  def __call__(self, input_ids: Array, positions: Array, deterministic: bool) -> Array:
    cfg = self.config
    init = nn.initializers.normal(0.02)
    word = self.param("word_embeddings", init, (cfg.vocab_size, cfg.hidden_size), self.param_dtype)
    # The rows gathered, then upcast: left to itself XLA upcast the whole bfloat16 table (94 MB in float32) first,
    # once a forward call (4% of bfloat16 encoding on queries, profiled).
    gathered = lambda table, ids: jax.lax.optimization_barrier(table[ids]).astype(jnp.float32)
    x = gathered(word, input_ids)  # [B, T, D]
    if cfg.position_embedding == "learned":
      table = self.param("position_embeddings", init, (cfg.max_position_embeddings, cfg.hidden_size), self.param_dtype)
      x = x + gathered(table, positions)
    if cfg.embedding_norm:
      x = Norm(cfg, self.dtype, self.param_dtype, self.invariant, name="LayerNorm")(x)
    return Dropout(cfg.dropout)(x.astype(self.dtype), deterministic=deterministic)


class Attention(nn.Module):
  """Self-attention. `attention_dtype`: the dtype its two products take their operands in (float32 accumulation,
  softmax in float32), None: `dtype` (int8 encoding on CPUs with bfloat16 units: bfloat16, chosen at the edge)."""

  config: EncoderConfig
  implementation: str = "dense"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  int8: bool | str = False
  token_tile: int | None = None
  dense: str = "xla"
  attention_dtype: Any = None

  @nn.compact
  def __call__(
    self, x: Array, segment_ids: Array, positions: Array, deterministic: bool, return_weights: bool = False
  ) -> tuple[Array, Array | None]:
    cfg = self.config
    used_tokens = used_tokens_of(segment_ids, self.int8, self.dense)
    dense = lambda name: Linear(
      cfg.hidden_size, cfg.use_bias, self.dtype, self.param_dtype, self.int8, self.token_tile, self.dense, name=name
    )
    split_heads = lambda y: y.reshape(*y.shape[:-1], cfg.num_heads, cfg.head_dim)  # [B, T, D] -> [B, T, H, K]
    q, k, v = (split_heads(dense(name)(x, used_tokens)) for name in ("q_lin", "k_lin", "v_lin"))
    if cfg.position_embedding == "rotary":
      q, k = rotate(q, positions, cfg.rope_theta), rotate(k, positions, cfg.rope_theta)
    rate = 0.0 if deterministic else cfg.attention_dropout
    products = self.attention_dtype or self.dtype
    q, k, v = (y.astype(products) for y in (q, k, v))
    context, weights = attend(
      self.implementation,
      q,
      k,
      v,
      segment_ids,
      dtype=products,
      dropout_rate=rate,
      dropout_rng=self.make_rng("dropout") if rate else None,
      return_weights=return_weights,
    )  # [B, T, H, K], [B, H, T, S]
    context = Hook(name="heads")(context.astype(self.dtype))  # per-head outputs: ablate a head here
    return dense("out_lin")(context.reshape(*context.shape[:-2], cfg.hidden_size), used_tokens), weights  # [B, T, D]


class FeedForward(nn.Module):
  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  int8: bool | str = False
  token_tile: int | None = None
  dense: str = "xla"

  @nn.compact
  def __call__(self, x: Array, deterministic: bool, used_tokens: Array | None = None) -> Array:
    cfg = self.config
    linear = lambda features, name: Linear(
      features, cfg.use_bias, self.dtype, self.param_dtype, self.int8, self.token_tile, self.dense, name=name
    )
    act = activation_fn(cfg.activation)
    h = linear(cfg.intermediate_size, "lin1")(x, used_tokens).astype(jnp.float32)  # [B, T, F]
    if cfg.ffn == "gated":  # GeGLU (gelu) / SwiGLU (silu)
      h = act(linear(cfg.intermediate_size, "gate")(x, used_tokens).astype(jnp.float32)) * h
    else:
      h = act(h)
    h = Hook(name="activations")(h.astype(self.dtype))
    y = linear(cfg.hidden_size, "lin2")(h, used_tokens)  # [B, T, D]
    return Dropout(cfg.dropout)(y, deterministic=deterministic)


class Block(nn.Module):
  """One transformer block. post: x = N1(x + attn(x)); x = N2(x + ffn(x)). pre: x = x + attn(N1(x)); x = x + ffn(N2(x)).

  Returns (x, (x, weights)) so that it serves as an `nn.scan` body as it is.
  """

  config: EncoderConfig
  attention: str = "dense"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  int8: bool | str = False
  token_tile: int | None = None
  dense: str = "xla"
  invariant: bool = False
  attention_dtype: Any = None

  @nn.compact
  def __call__(
    self, x: Array, segment_ids: Array, positions: Array, deterministic: bool, return_weights: bool = False
  ) -> tuple[Array, tuple[Array, Array | None]]:
    cfg = self.config
    used_tokens = used_tokens_of(segment_ids, self.int8, self.dense)
    norm1 = Norm(cfg, self.dtype, self.param_dtype, self.invariant, name="sa_layer_norm")
    norm2 = Norm(cfg, self.dtype, self.param_dtype, self.invariant, name="output_layer_norm")
    kernels = (self.int8, self.token_tile, self.dense)
    attention = Attention(
      cfg, self.attention, self.dtype, self.param_dtype, *kernels, self.attention_dtype, name="attention"
    )
    ffn = FeedForward(cfg, self.dtype, self.param_dtype, *kernels, name="ffn")
    residual = lambda x, y: x.astype(jnp.float32) + y.astype(jnp.float32)

    attn_in = norm1(x) if cfg.norm_position == "pre" else x
    attn_out, weights = attention(attn_in, segment_ids, positions, deterministic, return_weights)
    if cfg.attention_output_dropout:
      attn_out = Dropout(cfg.dropout)(attn_out, deterministic=deterministic)
    if cfg.norm_position == "pre":
      x = residual(x, attn_out).astype(self.dtype)
      x = residual(x, ffn(norm2(x), deterministic, used_tokens)).astype(self.dtype)
    else:
      x = norm1(residual(x, attn_out))
      x = norm2(residual(x, ffn(x, deterministic, used_tokens)))
    return x, (x, weights)


class Transformer(nn.Module):
  """The stack of blocks: `layer_0`, `layer_1`, ... as the checkpoint's `transformer.layer.N`, or with
  `scan_layers` one `layers` block scanned over parameters stacked on a leading L axis (one compiled body)."""

  config: EncoderConfig
  attention: str = "dense"
  scan_layers: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  int8: bool | str = False
  token_tile: int | None = None
  dense: str = "xla"
  invariant: bool = False
  attention_dtype: Any = None

  @nn.compact
  def __call__(
    self, x: Array, segment_ids: Array, positions: Array, deterministic: bool, return_weights: bool = False
  ) -> tuple[list[Array], list[Array | None]]:
    cfg = self.config
    args = (segment_ids, positions, deterministic, return_weights)
    if self.scan_layers:
      scanned = nn.scan(
        Block,
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args),
        length=cfg.num_layers,
      )
      kernels = (self.int8, self.token_tile, self.dense, self.invariant, self.attention_dtype)
      block = scanned(cfg, self.attention, self.dtype, self.param_dtype, *kernels, name="layers")
      x, (states, weights) = block(x, *args)
      hidden_states = [states[i] for i in range(cfg.num_layers)]
      attentions = [None if weights is None else weights[i] for i in range(cfg.num_layers)]
    else:
      hidden_states, attentions = [], []
      for i in range(cfg.num_layers):
        kernels = (self.int8, self.token_tile, self.dense, self.invariant, self.attention_dtype)
        block = Block(cfg, self.attention, self.dtype, self.param_dtype, *kernels, name=f"layer_{i}")
        x, (_, weights) = block(x, *args)
        hidden_states.append(x)
        attentions.append(weights)
    if cfg.norm_position == "pre":  # pre-norm stacks end with a norm; it is the last hidden state
      final = Norm(cfg, self.dtype, self.param_dtype, self.invariant, name="final_layer_norm")
      hidden_states[-1] = final(hidden_states[-1])
    return hidden_states, attentions


class Encoder(nn.Module):
  """Token ids -> contextual token embeddings [B, T, D] (and, on request, every layer's states and attention).

  `attention` names the implementation (attention.IMPLEMENTATIONS); `scan_layers` stacks the blocks' parameters;
  `int8`: the blocks' dense layers compute in int8 (`quantize.py`; parameters from `quantize_dense_params`); True
  or the name of the int8 dot's implementation (`quantize.INT8_DOTS`, True: "xla").
  `invariant` (deterministic encoding, with attention "frames"): the norms' sums in a fixed order
  (`invariant.py`). `dense`: the float dense layers' dot (DENSE_DOTS): "onednn" is row-invariant; with "xla",
  `token_tile` runs XLA's float products on fixed tiles of that many tokens (deterministic encoding without oneDNN).
  `attention_dtype`: the attention products' operand dtype (`Attention`), None: `dtype`.
  """

  config: EncoderConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = "dense"
  scan_layers: bool = False
  int8: bool | str = False
  token_tile: int | None = None
  dense: str = "xla"
  invariant: bool = False
  attention_dtype: Any = None

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
    embeddings = Embeddings(cfg, self.dtype, self.param_dtype, self.invariant, name="embeddings")
    x = embeddings(input_ids, positions, deterministic)
    kernels = (self.int8, self.token_tile, self.dense, self.invariant, self.attention_dtype)
    hidden_states, attentions = Transformer(
      cfg, self.attention, self.scan_layers, self.dtype, self.param_dtype, *kernels, name="transformer"
    )(x, segment_ids, positions, deterministic, output_attentions)
    out = {"token_embeddings": hidden_states[-1]}
    if output_hidden_states:
      out["hidden_states"] = (x, *hidden_states)  # embeddings output, then each block's, as transformers
    if output_attentions:
      out["attentions"] = tuple(attentions)  # [B, H, T, S] per block, float32
    return out

  def init_params(self, rng: Array) -> dict[str, Any]:
    """Randomly initialised parameters (shapes and names as a converted checkpoint's)."""
    ids = jnp.zeros((1, 2), jnp.int32)
    return self.init(rng, ids, jnp.ones_like(ids))["params"]
