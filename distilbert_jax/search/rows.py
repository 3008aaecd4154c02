"""Host rows: inputs of any array type as NumPy rows, the finite check, and reading rows of in-memory arrays,
memory maps and stored embeddings a block at a time.

Anything with `shape`, `dtype` and `read_rows(start, stop)` is a row source (`RowSource`): `load_embeddings`'
shards implement it, so search reads them without knowing how they are stored. Memory-mapped rows are copied a
block at a time and, for read-only maps, each block's pages are released once copied, so scanning a corpus larger
than memory keeps the process at about one chunk. Nothing here changes or releases memory it does not own: a
copy-on-write or writable map is copied, never released.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST


def is_torch(x: Any) -> bool:
  return type(x).__module__.split(".")[0] == "torch"


def as_numpy(x: Any, what: str = "embeddings") -> np.ndarray:
  """NumPy, JAX, torch (any device, bfloat16 too) or nested lists -> a NumPy array (float32 if floating)."""
  if is_torch(x):
    x = x.detach().cpu()
    if str(x.layout) != "torch.strided":  # sparse (COO, CSR, ...): its dense rows
      x = x.to_dense()
    x = (x.float() if x.is_floating_point() else x).numpy()
  elif isinstance(x, (list, tuple)) and x and not isinstance(x[0], (int, float, list, tuple, np.number)):
    x = np.stack([as_numpy(row, what) for row in x])  # a list of tensors or arrays, one per row
  try:
    array = np.asarray(x)
  except ValueError as e:
    raise ValueError(f"{what}: not a rectangular array ({e})") from None
  if array.dtype == object or array.dtype.kind not in "fiub":
    raise TypeError(f"{what}: expected numbers, got dtype {array.dtype}")
  return array.astype(np.float32) if array.dtype.kind == "f" or array.dtype.kind == "b" else array


def as_rows(x: Any, what: str) -> np.ndarray:
  """[N, D] float32 rows, checked finite (a NaN would otherwise rank anywhere without a word)."""
  array = as_numpy(x, what).astype(np.float32)
  if array.ndim == 1:
    array = array[None]
  if array.ndim != 2:
    raise ValueError(f"{what}: expected [N, D] or [D], got shape {array.shape}")
  check_finite(array, what)
  return array


def check_finite(array: np.ndarray, what: str, offset: int = 0) -> None:
  """Raises naming the first row that holds NaN or inf. One pass of row sums per chunk (a NaN or inf anywhere in a
  row makes its sum non-finite; a sum that overflows means the scores would too), no array-sized mask: this runs
  on every corpus chunk, and at 1M x 768 a float64 sum cost 7% of a search. The sums come from einsum's own
  single-threaded loop, not a BLAS matrix-vector product: that is as fast (the pass is bound by memory), while
  BLAS wakes NumPy's OpenBLAS threads, which then spin beside faiss' threads (a 20k-row faiss search took 2x)."""
  array = np.asarray(array)
  rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
  sums = np.einsum("ij->i", rows) if rows.dtype.kind == "f" else None
  if sums is None or np.isfinite(sums).all():
    return
  bad = ~np.isfinite(sums)
  row = int(np.argmax(bad))
  raise ValueError(f"{what}: row {offset + row} holds NaN or inf, or overflows float32 ({int(bad.sum())} rows in all)")


def torch_world(*inputs: Any) -> bool:
  """Whether results should be torch tensors: a torch input, or (no JAX input) a process that imported torch,
  where a sentence-transformers script and its evaluators run; a JAX input keeps the JAX world."""
  if any(is_torch(x) for x in inputs):
    return True
  if any(isinstance(x, jax.Array) for x in inputs):
    return False
  return "torch" in sys.modules


def like_inputs(result: jax.Array, *inputs: Any):
  """`result` as the caller's world wants it (`torch_world`): a torch.Tensor or a jax.Array."""
  if torch_world(*inputs):
    import torch

    return torch.from_numpy(np.array(result))
  return result


READ_BLOCK_BYTES = 16 << 20  # memory-mapped rows are copied this much at a time, each block's pages then released


HOST_ALIGNMENT = 64  # XLA:CPU computes on a host array without copying it when its data is aligned to this


def host_array_in_place(corpus: Any) -> bool:
  """Whether one CPU device can score `corpus` where it lies: an in-RAM float32 array, C-contiguous and aligned to
  HOST_ALIGNMENT (a memory map: see `mapped_in_place`; a NumPy array is aligned to 16; any
  other row source is read through `read_rows`' copies or slices)."""
  return (
    isinstance(corpus, np.ndarray)
    and not isinstance(corpus, np.memmap)
    and corpus.dtype == np.float32
    and corpus.flags.c_contiguous
    and corpus.ctypes.data % HOST_ALIGNMENT == 0
  )


def mapped_in_place(corpus: Any) -> bool:
  """Whether one CPU device can score a memory map's rows where they lie: float32, C-contiguous, aligned (a .npy
  file's data starts at a multiple of 64 bytes) and read-only, so its pages may be released once scored (a
  copy-on-write or writable map may hold the caller's changes: it is read through copies, see `read_mapped`)."""
  return (
    isinstance(corpus, np.memmap)
    and getattr(corpus, "mode", None) == "r"
    and corpus.dtype == np.float32
    and corpus.flags.c_contiguous
    and corpus.ctypes.data % HOST_ALIGNMENT == 0
  )


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """np.empty, with the data aligned to HOST_ALIGNMENT bytes (NumPy aligns to 16)."""
  dtype = np.dtype(dtype)
  raw = np.empty(int(np.prod(shape)) * dtype.itemsize + HOST_ALIGNMENT, np.uint8)
  skip = -raw.ctypes.data % HOST_ALIGNMENT
  return raw[skip : skip + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


@runtime_checkable
class RowSource(Protocol):
  """A corpus search reads without knowing how it is stored: `shape` (N, D), `dtype`, and `read_rows(start,
  stop)` giving rows [start, stop) as a NumPy array (`load_embeddings`' shards implement it)."""

  shape: tuple[int, ...]
  dtype: Any

  def read_rows(self, start: int, stop: int) -> np.ndarray: ...


def read_rows(corpus: Any, start: int, size: int) -> np.ndarray:
  """Rows [start, start + size) of a row source, a memory map (copied a block at a time, see `read_mapped`) or
  any array (a view where it is one)."""
  stop = min(start + size, int(corpus.shape[0]))
  if isinstance(corpus, RowSource):
    return corpus.read_rows(start, stop)
  if isinstance(corpus, np.memmap):
    return read_mapped(corpus, start, stop)
  return np.asarray(corpus[start:stop])


def read_mapped(array: np.memmap, start: int, stop: int) -> np.ndarray:
  """A copy of rows [start, stop) of a memory map, made READ_BLOCK_BYTES at a time. When the map is read-only
  (mode "r") each block's pages are released once copied, so scanning a corpus larger than memory keeps the
  process at about one chunk (the kernel re-reads them from the file if they are needed again). A copy-on-write
  ("c") or writable map may hold the caller's changes in its pages: those are copied and left alone."""
  rows = array[start:stop]
  out = aligned_empty(rows.shape, rows.dtype)
  row_bytes = max(1, int(np.prod(rows.shape[1:], dtype=np.int64)) * rows.dtype.itemsize)
  releasable = getattr(array, "mode", None) == "r" and rows.flags.c_contiguous
  step = max(1, READ_BLOCK_BYTES // row_bytes)
  for r in range(0, len(rows), step):
    block = rows[r : r + step]
    out[r : r + len(block)] = block
    if releasable:
      release_pages(block)
  return out


_libc = ctypes.CDLL(None, use_errno=True)


def release_pages(block: np.ndarray) -> None:
  """madvise(MADV_DONTNEED) on the whole pages inside a read-only file map's block (never beyond it): the kernel
  reads them from the file again if they are needed."""
  page = mmap.PAGESIZE
  first = -(-block.ctypes.data // page) * page
  last = (block.ctypes.data + block.nbytes) // page * page
  if last > first and _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), mmap.MADV_DONTNEED):
    # Only a cost (memory stays resident), never a wrong result: say so once rather than fail the search.
    _warn_once(f"madvise failed (errno {ctypes.get_errno()}): mapped pages stay resident until the kernel needs them")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
  if message not in _warned:
    _warned.add(message)
    logging.getLogger(__name__).warning(message)


def float_chunk(corpus: Any, start: int, size: int) -> np.ndarray:
  part = np.ascontiguousarray(read_rows(corpus, start, size), np.float32)
  check_finite(part, "corpus_embeddings", offset=start)
  return part
