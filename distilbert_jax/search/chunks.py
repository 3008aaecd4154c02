"""How a corpus reaches the search step, a part at a time: filled into a device chunk block by block (a donated
update, accelerators and several CPU devices), or handed to the one CPU device as host memory it reads in place.
Neither ever holds two parts at once."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax.search.rows import HOST_ALIGNMENT, READ_BLOCK_BYTES, aligned_empty, release_pages


@functools.lru_cache(maxsize=8)
def _put_rows_fn(sharding: NamedSharding):
  """buffer[at : at + len(rows)] = rows, in place: the buffer is donated, the result keeps its sharding."""

  def put(buffer, rows, at):
    room = buffer.shape[0] - rows.shape[0]  # a block that would run past the end is written earlier and clipped
    start = jnp.minimum(at, room)
    shift = at - start
    rows = jnp.roll(rows, shift, axis=0)
    current = jax.lax.dynamic_slice_in_dim(buffer, start, rows.shape[0], 0)
    keep = (jnp.arange(rows.shape[0]) < shift)[:, None]
    return jax.lax.dynamic_update_slice_in_dim(buffer, jnp.where(keep, current, rows), start, 0)

  return jax.jit(put, donate_argnums=0, out_shardings=sharding)


def device_chunks(read: Callable, n_corpus: int, dim: int, dtype, chunk: int, block: int, mesh):
  """(device chunk, valid mask, first row) per `chunk` rows. The device chunk is filled a read block at a time, in
  place (donated): never a host copy of the whole chunk next to the device one. Rows past the corpus end keep
  older values; the mask hides them."""
  n_dev = mesh.devices.size
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  part = jax.device_put(np.zeros((chunk, dim), dtype), sharding)
  put_rows = _put_rows_fn(sharding)
  read_block = min(chunk, max(n_dev, READ_BLOCK_BYTES // (dim * np.dtype(dtype).itemsize) // n_dev * n_dev))
  for c0 in range(0, n_corpus, chunk):
    rows = min(chunk, n_corpus - c0)
    for b0 in range(0, rows, read_block):
      size = min(read_block, rows - b0)
      rows_read = read(c0 + b0, size)
      if size < read_block:  # the chunk's last block, padded to the one compiled block shape
        rows_read = np.pad(rows_read, ((0, read_block - size), (0, 0)))
      part = put_rows(part, rows_read, np.int32(b0))
    yield part, jax.device_put(np.arange(chunk) < rows, sharding), c0, rows


def host_chunks(read: Callable, n_corpus: int, dim: int, dtype, chunk: int, block: int, mesh, view=None):
  """The same for one CPU device, which computes on host memory: XLA takes a 64-byte-aligned host array without a
  copy, so a chunk is the corpus' own rows where they are aligned (else one reused aligned staging copy). The
  corpus' last rows go in pieces of 4, 2 and 1 blocks (the binary digits of their block count), so at most one
  block is padding, a tail takes at most three steps (a step of one block cost ~1.3x a block inside a scan), and
  at most four shapes compile. `view(start, stop)`: rows of a read-only memory map, scored where they lie and
  their pages released once the part is scored (a copy per chunk cost more than scoring it at a few queries), so
  a corpus larger than memory still keeps the process at about one chunk."""
  device = mesh.devices.flat[0]
  staging = {}  # size -> one aligned buffer, reused (fresh large allocations cost page faults of scoring's order)
  for c0 in range(0, n_corpus, chunk):
    blocks = -(-(n_corpus - c0) // block)
    sizes = (
      [chunk]
      if n_corpus - c0 >= chunk
      else [block << i for i in reversed(range(blocks.bit_length())) if blocks >> i & 1]
    )
    for p0, size in zip(np.cumsum([c0] + sizes[:-1]), sizes):
      p0 = int(p0)
      rows = min(size, n_corpus - p0)
      mapped = view(p0, p0 + rows) if view is not None else None
      part = mapped if mapped is not None else read(p0, rows)
      if rows < size or part.ctypes.data % HOST_ALIGNMENT or not part.flags.c_contiguous:
        if size not in staging:
          staging[size] = aligned_empty((size, dim), dtype)
        buffer = staging[size]
        buffer[:rows], buffer[rows:] = part, 0
        part = buffer
      try:
        yield jax.device_put(part, device), jax.device_put(np.arange(size) < rows, device), p0, rows
      finally:
        del part  # the next read must not overlap this chunk (memory maps are read into fresh copies)
        if mapped is not None:
          release_pages(mapped)
