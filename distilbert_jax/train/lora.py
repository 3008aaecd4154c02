"""LoRA: low-rank adapters beside frozen Linear kernels, trained alone, saved alone, merged for export.

An adapter for kernel W [in, out] is a [in, r] and b [r, out]; the layer computes with W + (alpha / r) a b. `a`
starts random and `b` at zero, so training starts from the base model exactly (Hu et al., 2021). Adapters are a
separate pytree keyed by the kernel's path ("transformer/layer_0/attention/q_lin"); the base parameters are never
handed to the optimiser, so they stay bitwise unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.checkpoint import names as checkpoint
from distilbert_jax.checkpoint import tensors
from distilbert_jax.core.files import write_json

LINEAR_NAMES = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2", "gate")
DEFAULT_TARGETS = ("q_lin", "v_lin")
ADAPTERS_FILE, ADAPTERS_CONFIG = "adapters.safetensors", "adapters.json"


def check_targets(targets: tuple[str, ...]) -> tuple[str, ...]:
  unknown = sorted(set(targets) - set(LINEAR_NAMES))
  if unknown or not targets:
    raise ValueError(f"lora_targets {unknown or '()'} are not Linear layers; choose from {LINEAR_NAMES}")
  return targets


def kernel_paths(params: dict, targets: tuple[str, ...]) -> list[str]:
  """Paths ("transformer/layer_0/attention/q_lin") of every kernel whose module is named in `targets`."""
  check_targets(targets)
  found = [
    "/".join(path[:-1])
    for path in checkpoint.flatten_params(checkpoint.unstack_layers(params))
    if path[-1] == "kernel" and path[-2] in targets
  ]
  missing = sorted(set(targets) - {p.rsplit("/", 1)[-1] for p in found})
  if missing:
    raise ValueError(f"lora targets {missing} do not exist in this model (a dense FFN has no 'gate')")
  return found


def init_adapters(params: dict, targets: tuple[str, ...], rank: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  flat = checkpoint.flatten_params(params)
  adapters = {}
  for i, path in enumerate(kernel_paths(params, targets)):
    fan_in, fan_out = flat[(*path.split("/"), "kernel")].shape
    a = np.random.default_rng([seed, i]).normal(0.0, 1.0 / np.sqrt(fan_in), (fan_in, rank)).astype(np.float32)
    adapters[path] = {"a": a, "b": np.zeros((rank, fan_out), np.float32)}
  return adapters


def merge(params: dict, adapters: dict, scale: float) -> dict:
  """params with each adapted kernel replaced by W + scale * a b (works on NumPy and traced JAX arrays)."""
  flat = dict(checkpoint.flatten_params(params))
  for path, ab in adapters.items():
    key = (*path.split("/"), "kernel")
    if key not in flat:
      raise ValueError(f"adapter {path!r} has no kernel in the model")
    w = flat[key]
    delta = jnp.asarray(ab["a"], jnp.float32) @ jnp.asarray(ab["b"], jnp.float32) * scale
    flat[key] = (jnp.asarray(w, jnp.float32) + delta).astype(jnp.asarray(w).dtype)
  return checkpoint.nest_params(flat)


def save_adapters(out_dir: str | Path, adapters: dict, rank: int, alpha: float, base: dict) -> Path:
  """OUT/adapters.safetensors (only a and b) and OUT/adapters.json (rank, alpha, targets, the base model)."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  flat = {
    f"{path}/{name}": np.asarray(jax.device_get(x), np.float32)
    for path, ab in adapters.items()
    for name, x in ab.items()
  }
  tensors.write_safetensors(out_dir / ADAPTERS_FILE, flat, metadata={"format": "distilbert-jax-lora"})
  write_json(out_dir / ADAPTERS_CONFIG, {"rank": rank, "alpha": alpha, "kernels": sorted(adapters), "base": base})
  return out_dir


def load_adapters(out_dir: str | Path) -> tuple[dict, dict]:
  """(adapters, settings) written by `save_adapters`."""
  out_dir = Path(out_dir)
  settings = json.loads((out_dir / ADAPTERS_CONFIG).read_text())
  flat = tensors.read_safetensors(out_dir / ADAPTERS_FILE)
  adapters: dict = {}
  for key, value in flat.items():
    path, name = key.rsplit("/", 1)
    adapters.setdefault(path, {})[name] = value
  return adapters, settings
