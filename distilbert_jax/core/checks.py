"""Argument checks shared by every entry point, so each rule and its message live in one place."""

from __future__ import annotations

from typing import Any

import numpy as np


def positive_int(value: Any, name: str) -> int:
  """`value` as an int when it is a whole number > 0 (bools refused); else ValueError naming `name` and value."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)
