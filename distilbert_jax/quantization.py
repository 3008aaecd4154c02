"""Embedding quantization with sentence-transformers' ranges and results (int8, uint8, binary, ubinary).

int8/uint8: each dimension's [min, max] (from `ranges`, else `calibration_embeddings`, else the embeddings
themselves) is cut into 255 steps; binary/ubinary: one bit per dimension (> 0), packed 8 to a byte, binary
shifted by -128 into int8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
  return precision


def quantization_ranges(
  embeddings: np.ndarray, precision: str, calibration_embeddings: np.ndarray | None = None
) -> np.ndarray:
  """[2, D] per-dimension minimum and maximum."""
  if calibration_embeddings is None:
    if embeddings.ndim == 1 or embeddings.shape[0] == 1:
      raise ValueError(
        f"cannot compute {precision} quantization ranges from a single embedding: pass `ranges` or "
        "`calibration_embeddings` from a representative set of embeddings"
      )
    calibration_embeddings = embeddings
  calibration_embeddings = np.asarray(calibration_embeddings, np.float32)
  return np.vstack((calibration_embeddings.min(axis=0), calibration_embeddings.max(axis=0)))


def quantize_embeddings(
  embeddings: Any, precision: str, ranges: np.ndarray | None = None, calibration_embeddings: np.ndarray | None = None
) -> np.ndarray:
  """sentence_transformers.util.quantize_embeddings: [N, D] float -> [N, D] int8/uint8 or [N, D/8] packed bits."""
  from distilbert_jax.scoring import as_numpy

  check_precision(precision)
  embeddings = as_numpy(embeddings)
  if embeddings.dtype in (np.int8, np.uint8):
    raise ValueError("embeddings to quantize must be float, not int8 or uint8")
  embeddings = embeddings.astype(np.float32)
  if precision == "float32":
    return embeddings
  if embeddings.ndim == 2 and embeddings.shape[0] == 0:
    width = embeddings.shape[1] if precision.endswith("int8") else (embeddings.shape[1] + 7) // 8
    return np.zeros((0, width), np.uint8 if precision.startswith("u") else np.int8)
  if precision.endswith("int8"):
    if ranges is None:
      ranges = quantization_ranges(embeddings, precision, calibration_embeddings)
    ranges = np.asarray(ranges, np.float32)
    if ranges.shape != (2, embeddings.shape[-1]):
      raise ValueError(f"ranges have shape {ranges.shape}; expected (2, {embeddings.shape[-1]})")
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    codes = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
    return codes.astype(np.uint8) if precision == "uint8" else (codes - 128).astype(np.int8)
  bits = np.packbits(embeddings > 0, axis=-1)
  return bits if precision == "ubinary" else (bits - 128).astype(np.int8)
