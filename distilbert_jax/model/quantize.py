"""Int8 dense layers: weights quantized once (at load) per output channel, activations per token as they come.

  y[t, o] = (sum_i xq[t, i] * wq[o, i]) * x_scale[t] * w_scale[o]      (int8 x int8, int32 accumulation)

Both sides are symmetric (zero point 0, values in [-127, 127]): the integer dot is exact, and the only errors are
the two roundings. The result is dequantized into float32 before bias, residual, norms, softmax and pooling.
Kernels are stored [out, in] (the contraction axis last on both sides): XLA:CPU's int8 dot ran faster on that layout.

The integer dot has two implementations, chosen by name by the caller (the encoder, at the edge): "xla"
(`lax.dot_general`, int8 x int8 -> int32: any platform, XLA's integer units on GPU/TPU) and "onednn" (CPU: oneDNN's
`dnnl_gemm_u8s8s32`, VNNI int8 with int32 accumulation, from the `onednn-cpu-gomp` wheel, an XLA custom call:
`onednn.py`; GEMM peaks 1,667 GOP/s against XLA:CPU's 651 on this machine, benchmarks/encode_throughput.py).
Both are exact, so they give the same bits.

Axis letters: T tokens (any leading axes), I input width, O output width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.model.onednn import dot_u8s8s32

INT8_LIMIT = 127  # symmetric range: -128 is never used, so negation never overflows


def quantize_kernel(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A float kernel [..., I, O] (any leading axes: stacked layers) -> (int8 [..., O, I], float32 scales [..., O]):
  each output channel scaled by its largest |weight| / 127, rounded to nearest (ties to even)."""
  kernel = np.asarray(kernel, np.float32)
  if kernel.ndim < 2:
    raise ValueError(f"a kernel to quantize has at least 2 axes [in, out], got shape {kernel.shape}")
  if not np.isfinite(kernel).all():
    raise ValueError(f"a kernel of shape {kernel.shape} holds NaN or inf: it cannot be quantized")
  absmax = np.abs(kernel).max(axis=-2)  # [..., O]
  scale = np.where(absmax > 0, absmax / INT8_LIMIT, 1.0).astype(np.float32)
  q = np.clip(np.rint(kernel / scale[..., None, :]), -INT8_LIMIT, INT8_LIMIT).astype(np.int8)
  return np.swapaxes(q, -1, -2).copy(), scale


def quantize_dense_params(params: Any) -> Any:
  """The parameter tree with every dense layer's float `kernel` replaced by `kernel_int8` [.., O, I] and
  `kernel_scale` [.., O] (what `Linear(int8=True)` declares). Other parameters (embeddings, norms, biases) stay."""

  def walk(tree: Any) -> Any:
    if not isinstance(tree, dict):
      return tree
    if "kernel" in tree:
      q, scale = quantize_kernel(tree["kernel"])
      rest = {k: walk(v) for k, v in tree.items() if k != "kernel"}
      return {**rest, "kernel_int8": q, "kernel_scale": scale}
    return {k: walk(v) for k, v in tree.items()}

  return walk(jax.tree_util.tree_map(np.asarray, params))


def quantize_tokens(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[T.., I] float -> (int8 [T.., I], float32 scales [T..]): each token by its largest |value| / 127 (a token of
  zeros gets scale 1, so no division by zero)."""
  x = x.astype(jnp.float32)
  absmax = jnp.max(jnp.abs(x), axis=-1)
  scale = jnp.where(absmax > 0, absmax / INT8_LIMIT, 1.0)
  inverse = jnp.where(absmax > 0, INT8_LIMIT / absmax, 1.0)
  q = jnp.clip(jnp.round(x * inverse[..., None]), -INT8_LIMIT, INT8_LIMIT).astype(jnp.int8)
  return q, scale


def int8_dot(
  xq: jax.Array, kernel_int8: jax.Array, implementation: str = "xla", rows: jax.Array | None = None
) -> jax.Array:
  """xq [T.., I] int8, kernel [O, I] int8 -> [T.., O] int32, exact, by the named implementation. `rows` (int32
  scalar, "onednn" only): the flattened tokens past it are trailing padding, their products zeros."""
  if implementation == "xla":
    return jax.lax.dot_general(xq, kernel_int8, (((xq.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
  if implementation != "onednn":
    raise ValueError(f"int8 dot {implementation!r} is not one of {INT8_DOTS}")
  lead, width, out = xq.shape[:-1], xq.shape[-1], kernel_int8.shape[0]
  shifted = (xq.reshape(-1, width).astype(jnp.int16) + 128).astype(jnp.uint8)  # oneDNN's A operand is unsigned
  return dot_u8s8s32(shifted, kernel_int8, rows).reshape(*lead, out)


INT8_DOTS = ("xla", "onednn")


def int8_dense(
  x: jax.Array, kernel_int8: jax.Array, kernel_scale: jax.Array, implementation: str = "xla", rows=None
) -> jax.Array:
  """x [T.., I] float, kernel [O, I] int8, scales [O] -> x @ W [T.., O] in float32, from an int32 accumulation.
  `rows`: as `int8_dot`'s."""
  xq, x_scale = quantize_tokens(x)
  acc = int8_dot(xq, kernel_int8, implementation, rows)  # [T.., O], exact
  return acc.astype(jnp.float32) * x_scale[..., None] * kernel_scale.astype(jnp.float32)
