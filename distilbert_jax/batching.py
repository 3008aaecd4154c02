"""Planning fixed-shape batches from token sequences of any length: bucketing and sequence packing.

Every batch has one of two row counts (full, or small for a short tail), one of eight bucket lengths, and
room for a fixed number of texts per row, so any input compiles at most 16 shapes per mode. With packing, short texts share a row (best-fit decreasing); without it each row
holds one text. Rows are then sorted by fill and each batch is padded only to the bucket of its longest row.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

BUCKET_STEP = 32
MAX_SEGMENTS = 32  # texts per packed row; fixes the pooling output shape


def bucket_lengths(max_seq_length: int) -> tuple[int, ...]:
  return tuple(range(BUCKET_STEP, max_seq_length, BUCKET_STEP)) + (max_seq_length,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if b >= length:
      return b
  raise ValueError(f"sequence of {length} tokens is longer than the largest bucket {buckets[-1]}")


@dataclasses.dataclass
class Batch:
  input_ids: np.ndarray  # [R, L] int32
  segment_ids: np.ndarray  # [R, L] int32, 0 = padding, 1..S = text slot in the row
  positions: np.ndarray  # [R, L] int32, restarting at 0 for each text
  text_index: np.ndarray  # [R, S] int64, which input text sits in (row, slot); -1 = empty
  text_start: np.ndarray  # [R, S] int32, where that text begins in its row

  @property
  def real_tokens(self) -> int:
    return int((self.segment_ids > 0).sum())


def pack_rows(lengths: np.ndarray, capacity: int, max_segments: int) -> list[list[int]]:
  """Best-fit decreasing: each text, longest first, goes to the open row it fills most tightly."""
  order = np.argsort(-lengths, kind="stable")
  rows: list[list[int]] = []
  room: list[int] = []
  open_by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # room -> open rows with that much room
  for i in order:
    n = int(lengths[i])
    target = next((r for r in range(n, capacity + 1) if open_by_room[r]), None)
    if target is None:
      rows.append([])
      room.append(capacity)
      row = len(rows) - 1
    else:
      row = open_by_room[target].pop()
    rows[row].append(int(i))
    room[row] -= n
    if len(rows[row]) < max_segments and room[row] > 0:
      open_by_room[room[row]].append(row)
  return rows


PACKING_MIN_SAVING = 0.01  # "auto" packs when that computes at least 1% fewer tokens


def _layout(lengths: np.ndarray, buckets: Sequence[int], height: int, packed: bool) -> tuple[list[list[int]], int]:
  """Rows of text indices, sorted by fill (longest first), and the tokens their batches will compute."""
  if packed:
    rows = pack_rows(lengths, bucket_for(int(lengths.max()), buckets), MAX_SEGMENTS)
  else:
    rows = [[int(i)] for i in np.argsort(-lengths, kind="stable")]
  fill = np.array([lengths[r].sum() for r in rows])
  order = np.argsort(-fill, kind="stable")
  rows = [rows[i] for i in order]
  computed = sum(height * bucket_for(int(fill[order[s]]), buckets) for s in range(0, len(rows), height))
  return rows, computed


def plan_batches(token_ids: Sequence[np.ndarray], rows_per_batch: int, max_seq_length: int,
                 packing: bool | str = "auto", pad_token_id: int = 0, small_rows: int | None = None) -> Iterator[Batch]:
  """Batches covering every text exactly once, longest rows first.

  `packing`: True, False, or "auto": pack when that saves at least 1% of the computed tokens. Packing puts
  texts into rows of the longest text's bucket, so attention runs over longer rows: on 1,000 SciFact abstracts
  (CPU, full msmarco config) it raised padding efficiency from 93.3% to 95.0% and ran 9% faster in bfloat16,
  2% slower (within run-to-run noise) in float32; see the README for short texts.
  When all rows fit in `small_rows` (default rows_per_batch // 8), the batch has that many rows instead.
  """
  small_rows = small_rows or max(1, rows_per_batch // 8)
  if not token_ids:
    return
  lengths = np.fromiter((len(t) for t in token_ids), np.int64, len(token_ids))
  buckets = bucket_lengths(max_seq_length)
  if packing == "auto":
    packed_rows, packed_cost = _layout(lengths, buckets, rows_per_batch, True)
    plain_rows, plain_cost = _layout(lengths, buckets, rows_per_batch, False)
    packing = packed_cost <= (1 - PACKING_MIN_SAVING) * plain_cost
    rows = packed_rows if packing else plain_rows
  else:
    rows, _ = _layout(lengths, buckets, rows_per_batch, bool(packing))
  segments = MAX_SEGMENTS if packing else 1
  height = small_rows if len(rows) <= small_rows else rows_per_batch
  for start in range(0, len(rows), height):
    chunk = rows[start:start + height]
    width = bucket_for(max(int(lengths[r].sum()) for r in chunk), buckets)
    batch = Batch(
        input_ids=np.full((height, width), pad_token_id, np.int32),
        segment_ids=np.zeros((height, width), np.int32),
        positions=np.zeros((height, width), np.int32),
        text_index=np.full((height, segments), -1, np.int64),
        text_start=np.zeros((height, segments), np.int32),
    )
    for r, texts in enumerate(chunk):
      offset = 0
      for slot, i in enumerate(texts):
        n = len(token_ids[i])
        batch.input_ids[r, offset:offset + n] = token_ids[i]
        batch.segment_ids[r, offset:offset + n] = slot + 1
        batch.positions[r, offset:offset + n] = np.arange(n)
        batch.text_index[r, slot] = i
        batch.text_start[r, slot] = offset
        offset += n
    yield batch
