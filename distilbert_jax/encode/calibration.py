"""Static int8: each dense layer's input range, calibrated on a few hundred texts (as NNCF calibrates OpenVINO's
static int8) and saved with the model (`int8_calibration.json`), beside the per-token scales of plain "int8".

  absmax = calibrate_int8(model_dir, texts)          # float32 encoding of the texts, real tokens only
  save_int8_calibration(absmax, model_dir / CALIBRATION_FILE, n_texts=len(texts))
  SentenceTransformer(model_dir, dtype="int8", int8_calibration="model")

What is calibrated and saved is each dense layer's max |input| per input channel over the texts' real tokens
(padding never counts); the fixed quantization steps follow from it and the kernel at load
(`quantize.static_int8_layer`: SmoothQuant's migration, then one symmetric scale). Inputs beyond the calibrated
range at encoding time are clipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.encode.calibration_file import CALIBRATION_FILE, load_int8_calibration, save_int8_calibration
from distilbert_jax.encode.sentence_transformer import SentenceTransformer
from distilbert_jax.model.transformer import Linear, Transformer

__all__ = ["CALIBRATION_FILE", "calibrate_int8", "load_int8_calibration", "save_int8_calibration"]


def _absmax_interceptor(record: Callable[[str, Any], None]) -> Callable:
  """A Flax interceptor that hands `record(layer path, max |input| per channel over real tokens)` every dense
  layer's input. The Transformer's call gives the segment ids (0 = padding) of the dense layers traced after it."""
  seen: dict[str, Any] = {}

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, Transformer) and context.method_name == "__call__":
      seen["segment_ids"] = args[1]
    elif isinstance(module, Linear) and context.method_name == "__call__":
      x, segment_ids, name = args[0], seen.get("segment_ids"), "/".join(module.path)
      if segment_ids is None or x.shape[:-1] != segment_ids.shape:
        shape = None if segment_ids is None else segment_ids.shape
        raise ValueError(f"int8 calibration: {name}'s input {x.shape} is not per token of the rows {shape}")
      values = jnp.where((segment_ids > 0)[..., None], jnp.abs(x.astype(jnp.float32)), 0.0)  # real tokens only
      # XLA:CPU's maximum may drop a NaN (its YNNPACK reduction): a channel holding one is sent as inf.
      finite = jnp.all(jnp.isfinite(values), axis=tuple(range(x.ndim - 1)))
      absmax = jnp.where(finite, jnp.max(values, axis=tuple(range(x.ndim - 1))), jnp.inf)
      jax.debug.callback(functools.partial(record, name), absmax)
    return next_fun(*args, **kwargs)

  return interceptor


def calibrate_int8(
  model_name_or_path: Any, texts: Sequence[str], batch_size: int = 32, devices: Sequence[Any] | None = None
) -> dict[str, np.ndarray]:
  """{dense layer path: max |input| per input channel [I]} from encoding `texts` in float32 (the fast path,
  per-layer parameters); a NaN or inf activation is refused by layer."""
  texts = list(texts)
  if not texts:
    raise ValueError("int8 calibration needs texts: got none")
  model = SentenceTransformer(model_name_or_path, dtype="float32", deterministic=False, devices=devices)
  absmax: dict[str, np.ndarray] = {}

  def record(name: str, value: Any) -> None:
    value = np.asarray(value, np.float32)
    value = np.where(np.isnan(value), np.inf, value)  # a NaN is kept (as inf), never lost by the maximum
    absmax[name] = np.maximum(absmax[name], value) if name in absmax else value

  with model.intervene(_absmax_interceptor(record)):
    model.encode(texts, batch_size=batch_size)
  jax.effects_barrier()  # every callback has run
  bad = sorted(name for name, value in absmax.items() if not np.isfinite(value).all())
  if bad:
    raise ValueError(f"int8 calibration: the inputs of {bad} hold NaN or inf on these texts")
  return dict(sorted(absmax.items()))
