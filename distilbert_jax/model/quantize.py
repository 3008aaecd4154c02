"""Int8 dense layers: weights quantized once (at load) per output channel, activations per token as they come
(dynamic) or by fixed steps calibrated per layer (static: `static_int8_layer`, `encode.calibration`).

  y[t, o] = (sum_i xq[t, i] * wq[o, i]) * x_scale[t] * w_scale[o]      (int8 x int8, int32 accumulation)
  static:   xq[t, i] = round(x[t, i] / step[i]),  y[t, o] = (sum_i xq[t, i] * wq[o, i]) * w_scale[o]

Static steps skip each token's max |x| (a reduction before every dense layer): deterministic int8 encoding ran
1.09x / 1.11x / 1.11x the per-token path on queries / short passages / abstracts, the fast path 1.00x / 1.06x /
1.06x (benchmarks/cpu_runtimes.py, commit a3b76a6, AMD EPYC); values beyond the calibrated range clip to +-127 steps.

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
# Static int8's migration strength (`static_int8_layer`). all-MiniLM-L6-v2, calibrated on 300 SciFact abstracts, on
# 300 others and queries (min / mean cosine to float32; per-token int8 0.9959 / 0.9974): 0.5 (SmoothQuant's
# default) 0.84 / 0.906, 0.8 0.9940 / 0.9970, 0.9 0.9916 / 0.9978, 1.0 0.9935 / 0.9974 (by hand, /tmp script;
# retrieval: benchmarks/scifact_int8.py). One model's measurement, not a per-model tuning.
SMOOTHING_ALPHA = 0.8


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


def quantize_dense_params(params: Any, input_absmax: dict[str, Any] | None = None) -> Any:
  """The parameter tree with every dense layer's float `kernel` replaced by `kernel_int8` [.., O, I] and
  `kernel_scale` [.., O] (what `Linear(int8=True)` declares). Other parameters (embeddings, norms, biases) stay.
  `input_absmax` (static int8; per-layer parameters, not stacked): each dense layer's calibrated max |input| per
  input channel, by its path ("transformer/layer_0/attention/q_lin"); the layer then gets `input_step`
  (`static_int8_layer`). Every dense layer needs one and every entry a layer (all mismatches named together)."""
  stats = dict(input_absmax or {})
  missing = []

  def walk(tree: Any, path: tuple[str, ...]) -> Any:
    if not isinstance(tree, dict):
      return tree
    if "kernel" in tree:
      rest = {k: walk(v, (*path, k)) for k, v in tree.items() if k != "kernel"}
      name = "/".join(path)
      if input_absmax is None:
        q, scale = quantize_kernel(tree["kernel"])
        return {**rest, "kernel_int8": q, "kernel_scale": scale}
      if name not in stats:
        missing.append(name)
        return rest
      q, scale, step = static_int8_layer(name, tree["kernel"], stats.pop(name))
      return {**rest, "kernel_int8": q, "kernel_scale": scale, "input_step": step}
    return {k: walk(v, (*path, k)) for k, v in tree.items()}

  quantized = walk(jax.tree_util.tree_map(np.asarray, params), ())
  if missing or stats:
    raise ValueError(
      f"int8 calibration does not match the model's dense layers: none for {missing or 'none'}; "
      f"entries of no dense layer: {sorted(stats) or 'none'}"
    )
  return quantized


def static_int8_layer(name: str, kernel: Any, input_absmax: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A float kernel [I, O] and its input's calibrated max |x| per channel [I] -> (int8 kernel [O, I], kernel
  scales [O], input_step [I]): x is quantized as round(x / input_step), the product dequantized by the kernel
  scales alone.

  SmoothQuant's migration (Xiao et al., 2023): a transformer's activations carry a few outlier channels, so one
  scale for the whole input loses the others (min cosine 0.964 to float32 on SciFact texts with all-MiniLM-L6-v2,
  against 0.996 per token). Channel i is divided by s_i = max|x_i|^a / max|W_i|^(1-a) and its kernel row
  multiplied by it (the product is unchanged), which evens the channels out; then one scale c covers the
  smoothed input."""
  kernel = np.asarray(kernel, np.float32)
  absmax = np.asarray(input_absmax, np.float64)
  if kernel.ndim != 2 or absmax.shape != kernel.shape[:1]:
    raise ValueError(f"int8 calibration of {name}: max |input| of shape {absmax.shape}, kernel {kernel.shape}")
  if not np.isfinite(absmax).all() or (absmax < 0).any() or absmax.max() <= 0:
    raise ValueError(f"int8 calibration of {name}: max |input| must be finite, >= 0 and not all 0")
  x_max = np.maximum(absmax, absmax.max() * 1e-6)  # a channel never seen active still gets a usable step
  w_max = np.abs(kernel).max(axis=1).astype(np.float64)
  w_max = np.maximum(w_max, max(w_max.max(), 1e-30) * 1e-6)
  smooth = x_max**SMOOTHING_ALPHA / w_max ** (1 - SMOOTHING_ALPHA)
  c = float((x_max / smooth).max()) / INT8_LIMIT
  q, scale = quantize_kernel(kernel * smooth[:, None].astype(np.float32))
  return q, (scale * c).astype(np.float32), (smooth * c).astype(np.float32)


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


def quantize_static(x: jax.Array, input_step: jax.Array) -> jax.Array:
  """[T.., I] float -> int8 [T.., I]: x / input_step [I] rounded (ties to even), clipped to +-127."""
  inverse = 1.0 / input_step.astype(jnp.float32)
  return jnp.clip(jnp.round(x.astype(jnp.float32) * inverse), -INT8_LIMIT, INT8_LIMIT).astype(jnp.int8)


def int8_dense(
  x: jax.Array,
  kernel_int8: jax.Array,
  kernel_scale: jax.Array,
  implementation: str = "xla",
  rows=None,
  input_step: jax.Array | None = None,
) -> jax.Array:
  """x [T.., I] float, kernel [O, I] int8, scales [O] -> x @ W [T.., O] in float32, from an int32 accumulation.
  `rows`: as `int8_dot`'s. `input_step` [I] (static int8, `static_int8_layer`): x's fixed quantization steps, the
  kernel scales then dequantize alone; None: per-token scales."""
  if input_step is None:
    xq, x_scale = quantize_tokens(x)
    acc = int8_dot(xq, kernel_int8, implementation, rows)  # [T.., O], exact
    return acc.astype(jnp.float32) * x_scale[..., None] * kernel_scale.astype(jnp.float32)
  acc = int8_dot(quantize_static(x, input_step), kernel_int8, implementation, rows)
  return acc.astype(jnp.float32) * kernel_scale.astype(jnp.float32)
