"""Building blocks of batch-invariant (deterministic) encoding: a text's result has the same bits whatever else its
batch holds, wherever its row puts it, whatever the row's width and the device count.

A float sum's bits depend on its order, and XLA:CPU picks an order from the shapes it is given and from what it
fuses around it (measured: a token's row of [M, 32] x [32, 64] changes with M; a LayerNorm's mean changed when
fused with its neighbours; `x / broadcast(s)` is rewritten as `x * (1 / s)` in some programs and not in others).
So each reduction here has an order that depends on one token or one text alone:
- per token (LayerNorm, L2 normalisation): `row_sum`, XLA's row sum on at least MIN_ROWS rows, isolated;
- per text (attention, pooling): `over_texts` computes each text in its own frame, its length rounded up to a
  multiple of FRAME, one compiled body per frame size, starting at the text's first token: a frame's shape and
  contents (the text, then masked zeros) depend on the text alone, not on its row or its neighbours;
- dense layers on rows whose bits do not depend on the other rows (oneDNN's GEMM, `onednn.py`; int8 dots are
  exact) or, where those are not available, on fixed tiles of TILE tokens (`over_tiles`; texts then start at
  multiples of TILE, the planner's `align`).
Divisions are written as a multiplication by an explicit reciprocal.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

TILE = 32  # tokens per tile of `over_tiles` (XLA's float dot on the deterministic path without oneDNN)
WIDTH_STEP = 64  # `row_sum` pads a row's width to a multiple of this (16 and 32 features measured not invariant)
MIN_ROWS = 64  # `row_sum` pads fewer rows to this many: 8 suffice where measured, 64 leaves room for wider vectors
FRAME = 32  # a text's frame is its length rounded up to a multiple of this (16 frame sizes up to 512 tokens)


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


def row_sum(x: jax.Array) -> jax.Array:
  """[..., N] -> [..., 1]: the sum over the last axis, a row's bits independent of the other rows. XLA:CPU sums a
  row in one order whenever it is given at least 8 rows, whatever their number and the row's place among them, and
  in another below 8, and rows of 16 or 32 features in an order that changes with the row count (measured,
  tests/model/test_invariant.py, AMD EPYC Zen 4); so the rows are padded to MIN_ROWS and their width with zeros
  to a multiple of WIDTH_STEP, and the sum is isolated from its neighbours (fused with them its order is the
  compiler's to choose)."""
  lead, width = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, width)
  rows = flat.shape[0]
  padded_width = -(-width // WIDTH_STEP) * WIDTH_STEP
  flat = jnp.pad(flat, [(0, max(MIN_ROWS - rows, 0)), (0, padded_width - width)])
  return isolated(lambda y: y.sum(-1, keepdims=True))(flat)[:rows].reshape(*lead, 1)


def frame_sizes(length: int) -> tuple[int, ...]:
  """FRAME, 2 FRAME, 3 FRAME, ... up to the first that holds `length` tokens (a row's width: the frames its texts
  can need). Each frame size is its own compiled body, so the set compiled beside a text's own does not change
  its bits (tested with rows of every bucket width); fewer frames for narrow rows compile 2.4x faster."""
  return tuple(range(FRAME, -(-max(length, 1) // FRAME) * FRAME + 1, FRAME))


def text_spans(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """The texts of rows [B, T] (runs of one segment id > 0): (row, start, length, segment id, count), the first
  four of static size B * T with the texts first and zeros after, count the number of texts."""
  batch, width = segment_ids.shape
  previous = jnp.pad(segment_ids[:, :-1], [(0, 0), (1, 0)])
  first = ((segment_ids > 0) & (segment_ids != previous)).reshape(-1)
  (index,) = jnp.nonzero(first, size=batch * width, fill_value=0)
  row, start = index // width, index % width
  tokens = jnp.zeros((batch, width + 1), jnp.int32).at[jnp.arange(batch)[:, None], segment_ids].add(1)
  segment = segment_ids[row, start]
  return row, start, tokens[row, segment], segment, first.sum()


def over_texts(body: Callable, out, spans, sizes: tuple[int, ...]):
  """`out = body(frame, out, row, start, length, segment)` for every text of `spans` (`text_spans`), with `frame`
  the smallest of `sizes` that holds the text: the texts ordered by frame size, then one loop per size (one
  compiled body each). A loop of `lax.switch` over the sizes copied the whole carry `out` into every branch, once
  per text. Texts stay one a trip: frames of several texts in one batched product gave other bits with 4 devices
  than with 1 (tests/encode/test_deterministic.py)."""
  row, start, length, segment, count = spans
  branch = jnp.searchsorted(jnp.asarray(sizes), length)  # sizes[branch] >= length
  branch = jnp.where(jnp.arange(branch.shape[0]) < count, branch, len(sizes))  # the padding entries last
  order = jnp.argsort(branch, stable=True)
  bounds = jnp.searchsorted(branch[order], jnp.arange(len(sizes) + 1))  # texts of size j: bounds[j] .. bounds[j+1]
  for j, frame in enumerate(sizes):

    def step(i, out, frame=frame):
      t = order[i]
      return body(frame, out, row[t], start[t], length[t], segment[t])

    out = jax.lax.fori_loop(bounds[j], bounds[j + 1], step, out)
  return out


def frame_of(x: jax.Array, row: jax.Array, start: jax.Array, length: jax.Array, frame: int):
  """Rows [B, T, ...] -> (the text's frame [frame, ...]: its tokens, then zeros; the frame's valid mask
  [frame]; the row positions to write its results back to, T where nothing is written)."""
  width = x.shape[1]
  valid = jnp.arange(frame) < length
  index = start + jnp.arange(frame)
  tokens = jnp.take(jax.lax.dynamic_index_in_dim(x, row, 0, keepdims=False), jnp.minimum(index, width - 1), axis=0)
  mask = valid.reshape(frame, *([1] * (tokens.ndim - 1)))
  return jnp.where(mask, tokens, jnp.zeros((), tokens.dtype)), valid, jnp.where(valid, index, width)
