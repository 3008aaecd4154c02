"""Checkpoint I/O: the name table (both directions), tensor files, model directories, the hub."""

from distilbert_jax.checkpoint.names import (
  LAYER_MODULES,
  CheckpointError,
  flatten_params,
  flax_to_torch,
  name_table,
  nest_params,
  stack_layers,
  torch_to_flax,
  unstack_layers,
)

__all__ = [
  "LAYER_MODULES",
  "CheckpointError",
  "flatten_params",
  "flax_to_torch",
  "name_table",
  "nest_params",
  "stack_layers",
  "torch_to_flax",
  "unstack_layers",
]
