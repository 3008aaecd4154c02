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


def platform_of(devices: Sequence[Any]) -> str:
  """The one platform of `devices` ("cpu", "gpu", "tpu"): the one place a platform is read. Callers turn it into
  plain choices (attention implementation, step sizes, search engine) before any compute is built."""
  platforms = sorted({d.platform for d in devices})
  if len(platforms) != 1:
    raise ValueError(f"devices of several platforms {platforms}: give devices of one platform")
  return platforms[0]


def device_names(devices: Sequence[Any]) -> list[tuple[str, int]]:
  """(platform, id) of each device: how a pickled model names its devices."""
  return [(d.platform, d.id) for d in devices]


def devices_named(names: Sequence[Sequence[Any]]) -> list:
  """The devices `device_names` named, in this process; an error naming those it does not have."""
  by_name = {(d.platform, d.id): d for d in jax.devices()}
  missing = [tuple(name) for name in names if tuple(name) not in by_name]
  if missing:
    raise ValueError(f"devices {missing} are not in this process (it has {sorted(by_name)})")
  return [by_name[tuple(name)] for name in names]
