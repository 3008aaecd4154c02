"""Choosing devices and building the one-axis data mesh every sharded computation here uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

# sentence-transformers' and torch's device names -> JAX platforms.
_PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "tpu": "tpu"}


def resolve_devices(device: Any = None, devices: Sequence[Any] | None = None) -> list:
  """`device` as sentence-transformers users write it ("cpu", "cuda", "cuda:1", "gpu", "tpu", a JAX device),
  or `devices` (JAX devices); neither: every local device. A platform name without an index means all of
  its local devices (the encoder is data-parallel over them); "cuda:1" means that one device."""
  if device is not None and devices is not None:
    raise ValueError("give device= or devices=, not both")
  if devices is not None:
    devices = list(devices)
    if not devices:
      raise ValueError("devices= is empty")
    return devices
  if device is None:
    return jax.local_devices()
  if isinstance(device, jax.Device):
    return [device]
  if not isinstance(device, str):
    raise TypeError(f"device must be a string or a JAX device, not {type(device).__name__}")
  name, _, index = device.lower().partition(":")
  if name not in _PLATFORMS:
    raise ValueError(f"device {device!r}: expected one of {sorted(_PLATFORMS)} (optionally ':N') or a JAX device")
  try:
    found = jax.local_devices(backend=_PLATFORMS[name])
  except RuntimeError:
    raise ValueError(
      f"device {device!r}: JAX has no {_PLATFORMS[name]} devices here (it has: "
      f"{sorted({d.platform for d in jax.local_devices()})})"
    ) from None
  if not index:
    return found
  if not index.isdigit() or int(index) >= len(found):
    raise ValueError(
      f"device {device!r}: there are {len(found)} local {_PLATFORMS[name]} devices (0..{len(found) - 1})"
    )
  return [found[int(index)]]


def data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh with one axis, `data`, over `devices` (default: every local device)."""
  return Mesh(np.array(list(devices) if devices is not None else jax.local_devices()), ("data",))


COMPILATION_CACHE_ENV = "DISTILBERT_JAX_COMPILATION_CACHE"  # a directory, or "off"


def enable_compilation_cache(setting: bool | str | None = None) -> str | None:
  """JAX's persistent compilation cache, so a fresh process with the same shapes loads its executables instead of
  compiling them again. `setting`: True/None (default: $DISTILBERT_JAX_COMPILATION_CACHE, else
  ~/.cache/distilbert_jax/jax), a directory, or False/"off". A cache directory the caller already configured in
  JAX is left as it is. Returns the directory in use, or None when off."""
  import os
  from pathlib import Path

  if setting is None or setting is True:
    setting = os.environ.get(COMPILATION_CACHE_ENV, True)
  if setting is False or str(setting).lower() in ("off", "0", "false", "no"):
    return None
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if setting is True:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    setting = base / "distilbert_jax" / "jax"
  Path(setting).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(setting))
  # Every executable is worth keeping: on CPU most compile in under JAX's default 1 s threshold, yet a warm-up
  # of many shapes adds up to minutes.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return str(setting)
