"""Tensor files: safetensors read without torch, `pytorch_model.bin` with it (weights only), atomic writes, and
the parameters' content hash that job manifests and training records pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from distilbert_jax.checkpoint.names import CheckpointError, flatten_params
from distilbert_jax.core.files import checked_file, write_atomic


def read_tensors(model_dir: Path, root: Path, max_bytes: int) -> tuple[dict[str, np.ndarray], str]:
  """Tensors of `model.safetensors` (read without torch) or `pytorch_model.bin` (torch, weights_only), each
  checked as a model directory's file (inside `root`, regular, at most `max_bytes`)."""
  safetensors_file = model_dir / "model.safetensors"
  if checked_file(safetensors_file, root, max_bytes):
    return read_safetensors(safetensors_file), str(safetensors_file)
  bin_file = model_dir / "pytorch_model.bin"
  if checked_file(bin_file, root, max_bytes):
    try:
      import torch
    except ImportError:
      raise CheckpointError(
        f"{bin_file}: reading pytorch_model.bin needs torch (pip install torch); "
        "or convert it to model.safetensors elsewhere"
      ) from None
    try:
      state = torch.load(bin_file, map_location="cpu", weights_only=True)
    except Exception as e:
      raise CheckpointError(f"{bin_file}: cannot read checkpoint: {e}") from None
    return {k: v.float().numpy() for k, v in state.items()}, str(bin_file)
  raise CheckpointError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  try:
    out = {}
    with safe_open(str(path), framework="flax") as f:  # flax framework: bfloat16 tensors load too
      for key in f.keys():
        out[key] = np.asarray(f.get_tensor(key), np.float32)
    return out
  except Exception as e:
    raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  from safetensors.numpy import save

  write_atomic(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata))


def params_sha256(params: dict) -> str:
  digest = hashlib.sha256()
  for path, value in sorted(flatten_params(params).items()):
    digest.update("/".join(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(value, np.float32)).tobytes())
  return digest.hexdigest()
