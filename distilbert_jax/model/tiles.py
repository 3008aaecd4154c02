"""Fixed shapes for batch-invariant (deterministic) encoding.

A float sum's bits depend on its order, and XLA:CPU's kernels pick their order from the shapes they are given:
measured, a token's row of [M, 32] x [32, 64] changes with M, and a row of a [T, 64] x [64, S] product with S.
So the deterministic path gives every reduction a shape that depends on one text alone: the per-token layers run on
fixed tiles of TILE tokens (`over_tiles`), attention on one tile of queries against the text's own frame of keys
(`attention.frames`), and pooling sums a tile at a time, tiles in order (`pooling`). Texts start at multiples of
TILE in their rows (the planner's `align`), so no tile holds two texts.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

TILE = 32  # tokens: the rows' widths are multiples of it on the deterministic path


def isolated(fn: Callable) -> Callable:
  """fn behind optimization barriers: XLA compiles its ops as they are, whatever surrounds them (measured: a
  one-tile loop is inlined, and fusing a LayerNorm's reductions with the ops around it changed their bits)."""
  barrier = jax.lax.optimization_barrier
  return lambda *args: barrier(fn(*barrier(args)))


def map_isolated(fn: Callable, xs):
  """`lax.map(isolated(fn), xs)` run for at least two trips (a one-trip loop is inlined by XLA, and its ops then
  fuse with their neighbours in ways that change a reduction's order: measured, a 32-wide LayerNorm 5e-7 off the
  looped result). One compiled body computes every element."""
  n = jax.tree_util.tree_leaves(xs)[0].shape[0]
  if n == 1:
    xs = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x]), xs)
  out = jax.lax.map(isolated(fn), xs)
  return jax.tree_util.tree_map(lambda y: y[:n], out)


def over_tiles(fn: Callable[[jax.Array], jax.Array], x: jax.Array, tile: int) -> jax.Array:
  """fn over fixed [tile, D] slices of the tokens of x [..., D] (one compiled body, `lax.map`): every token's
  result is computed by the same kernel at the same shape, whatever the batch around it. -> [..., D']"""
  lead, width = x.shape[:-1], x.shape[-1]
  n = 1
  for d in lead:
    n *= d
  flat = x.reshape(n, width)
  padded = -(-n // tile) * tile
  if padded != n:
    flat = jnp.pad(flat, [(0, padded - n), (0, 0)])
  y = map_isolated(fn, flat.reshape(padded // tile, tile, width))  # [tiles, tile, D']
  return y.reshape(padded, y.shape[-1])[:n].reshape(*lead, y.shape[-1])
