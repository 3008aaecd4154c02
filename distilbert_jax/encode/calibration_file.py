"""Static int8's calibration file, `int8_calibration.json` in a model directory: each dense layer's max |input| per
input channel (`calibration.calibrate_int8` makes it; `SentenceTransformer(int8_calibration=)` reads it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from distilbert_jax.core.files import write_json

CALIBRATION_FILE = "int8_calibration.json"  # in the model directory: what int8_calibration="model" reads
CALIBRATION_FORMAT = 1


def calibration_document(absmax: dict[str, Any], n_texts: int | None) -> dict[str, Any]:
  """The calibration as the file holds it, with how it was made (`n_texts` None: not known, a saved model's copy)."""
  return {
    "format": CALIBRATION_FORMAT,
    "method": "max |input| per input channel over real tokens, float32 encoding",
    "calibration_texts": None if n_texts is None else int(n_texts),
    "input_absmax": {name: check_absmax(name, value).tolist() for name, value in absmax.items()},
  }


def save_int8_calibration(absmax: dict[str, Any], path: str | Path, n_texts: int | None) -> Path:
  """`calibration_document` as a JSON file, written atomically."""
  return write_json(path, calibration_document(absmax, n_texts))


def check_absmax(name: str, value: Any) -> np.ndarray:
  """One layer's max |input| per channel: a non-empty vector of finite numbers >= 0, else named."""
  try:
    array = np.asarray(value, np.float32)
  except (TypeError, ValueError) as e:
    raise ValueError(f"int8 calibration of {name}: not a vector of numbers ({e})") from e
  if array.ndim != 1 or not array.size or not np.isfinite(array).all() or (array < 0).any():
    raise ValueError(f"int8 calibration of {name}: max |input| must be a non-empty vector of finite numbers >= 0")
  return array


def load_int8_calibration(path: str | Path) -> dict[str, np.ndarray]:
  """A file `save_int8_calibration` wrote; a missing file, bad JSON, another format or a bad entry is named."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(
      f"{path}: no int8 calibration (make it with distilbert_jax.encode.calibration.calibrate_int8 and "
      "save_int8_calibration)"
    )
  try:
    document = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a JSON document ({e})") from e
  if not isinstance(document, dict) or document.get("format") != CALIBRATION_FORMAT:
    found = document.get("format") if isinstance(document, dict) else type(document).__name__
    raise ValueError(f"{path}: format {found!r}, expected {CALIBRATION_FORMAT}")
  absmax = document.get("input_absmax")
  if not isinstance(absmax, dict) or not absmax:
    raise ValueError(f"{path}: key 'input_absmax' is not a non-empty object")
  return {name: check_absmax(f"{path}: input_absmax[{name!r}]", value) for name, value in absmax.items()}
