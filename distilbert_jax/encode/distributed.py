"""Multi-host encoding: each process encodes its contiguous slice of the input on its own devices, and the
slices are gathered back in input order.

    import jax
    jax.distributed.initialize()            # on TPU pods and SLURM/Open MPI clusters it finds its peers itself
    encoder = SentenceTransformer.from_pretrained(path)   # the process's local devices
    embeddings = encode_across_processes(encoder, texts)  # every process passes the same texts; all get all rows

Within a process the batch is data-parallel over its local devices (see `SentenceTransformer`); across processes
there is no collective in the forward pass at all, only one all-gather of the finished embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


def process_slice(n_items: int, process_index: int, process_count: int) -> slice:
  """The contiguous block of `n_items` that a process encodes; blocks differ in size by at most one."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  base, extra = divmod(n_items, process_count)
  start = process_index * base + min(process_index, extra)
  return slice(start, start + base + (process_index < extra))


def merge_slices(parts: Sequence[np.ndarray], n_items: int) -> np.ndarray:
  """Per-process results (each padded to the largest slice, in process order) -> rows in input order."""
  slices = [process_slice(n_items, p, len(parts)) for p in range(len(parts))]
  return np.concatenate([part[: s.stop - s.start] for part, s in zip(parts, slices)], axis=0)


def encode_across_processes(encoder, sentences: Sequence[str], **encode_kwargs) -> np.ndarray:
  """`encoder.encode` split over `jax.process_count()` processes; every process returns all rows in order."""
  count, index = jax.process_count(), jax.process_index()
  mine = encoder.encode(list(sentences[process_slice(len(sentences), index, count)]), **encode_kwargs)
  if count == 1:
    return mine
  if len(mine) == 0:  # encode([]) is (0,) as sentence-transformers'; every process must gather [rows, dim]
    mine = np.zeros((0, encoder.get_sentence_embedding_dimension()), np.float32)
  from jax.experimental import multihost_utils

  largest = -(-len(sentences) // count)
  padded = np.zeros((largest, *mine.shape[1:]), mine.dtype)
  padded[: len(mine)] = mine
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [processes, largest, dim]
  return merge_slices(list(gathered), len(sentences))
