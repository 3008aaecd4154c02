"""Planning fixed-shape batches from token sequences of any length: bucketing and sequence packing.

Every batch has one of two row counts (full, or small for a bucket's remainder and the end), one of the bucket
lengths (multiples of 32), and room for a fixed number of texts per row; one call uses at most 16 shapes. With
packing, short texts share a row (best-fit decreasing); without it each row holds one text. Rows are then sorted by
fill and each batch is padded only to the bucket of its longest row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from distilbert_jax.core.shapes import count_bucket

BUCKET_STEP = 32  # tokens between bucket widths: the frames attention's tile, so deterministic rows align
MAX_SEGMENTS = 32  # texts per packed row; fixes the pooling output shape
PACKING_MIN_SAVING = 0.01  # "auto" packs when that computes at least 1% fewer tokens
MAX_SHAPES = 16  # distinct (rows, width) batch shapes one call may use, hence compile (compile_time.py's table)


def bucket_lengths(max_seq_length: int, whole_steps: bool = False) -> tuple[int, ...]:
  """Row widths: multiples of BUCKET_STEP, the last one max_seq_length (`whole_steps`: rounded up to a multiple,
  so that every row is whole blocks of the deterministic path's sums)."""
  top = -(-max_seq_length // BUCKET_STEP) * BUCKET_STEP if whole_steps else max_seq_length
  return tuple(range(BUCKET_STEP, top, BUCKET_STEP)) + (top,)


def aligned(lengths: np.ndarray, align: int) -> np.ndarray:
  """Lengths rounded up to a multiple of `align`: the room a text takes in a row whose texts start at multiples
  of `align`."""
  return -(-lengths // align) * align


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


def _rows(lengths: np.ndarray, buckets: Sequence[int], packed: bool, pack_width: int) -> list[list[int]]:
  if packed:
    capacity = bucket_for(min(max(int(lengths.max()), pack_width), buckets[-1]), buckets)
    return pack_rows(lengths, capacity, MAX_SEGMENTS)
  return [[int(i)] for i in range(len(lengths))]


def _layout(
  lengths: np.ndarray, buckets: Sequence[int], height: int, small: int, packed: bool, pack_width: int = 0
) -> list[tuple[int, int, list[list[int]]]]:
  """(width, rows, texts of each row) per batch, longest rows first.

  Rows are sorted by fill and cut into batches of `height` rows, each padded to the bucket of its longest row.
  Where a bucket's rows do not fill a whole batch, the remainder goes into batches of `small` rows (the last one
  topped up with the next bucket's longest rows) instead of a full batch padded far past the shorter rows: on
  1,000 SciFact abstracts this and the short tail batch raise padding efficiency from 95.0% to 98.0%.
  """
  rows = _rows(lengths, buckets, packed, pack_width)
  fill = np.array([lengths[r].sum() for r in rows])
  order = np.argsort(-fill, kind="stable")
  rows, fill = [rows[i] for i in order], fill[order]
  bucket = np.array([bucket_for(int(f), buckets) for f in fill])
  batches, start, n = [], 0, len(rows)
  while start < n:
    width = int(bucket[start])
    same = int(np.searchsorted(-bucket, -width, side="right")) - start  # rows of this bucket left
    for _ in range(same // height):
      batches.append((width, height, rows[start : start + height]))
      start += height
    left = same % height
    if not left:
      continue
    if left >= height - small and n - start >= height:  # nearly full: one batch, a few rows from the next bucket
      batches.append((width, height, rows[start : start + height]))
      start += height
    else:
      end = min(start + -(-left // small) * small, n)
      batches += [(width, small, rows[k : min(k + small, end)]) for k in range(start, end, small)]
      start = end
  return _within_shape_budget(batches)


def _within_shape_budget(batches: list[tuple[int, int, list[list[int]]]]) -> list[tuple[int, int, list[list[int]]]]:
  """Re-pads the batches of one shape to a larger shape already in use until at most MAX_SHAPES remain,
  each time the merge that adds the fewest computed tokens. (With two row counts and at most 16 widths,
  more than 16 shapes means some width has both, so a dominating shape always exists.)"""
  while True:
    count: dict[tuple[int, int], int] = {}
    for width, rows, _ in batches:
      count[(width, rows)] = count.get((width, rows), 0) + 1
    if len(count) <= MAX_SHAPES:
      return batches
    _, small, big = min(
      (count[s] * (b[0] * b[1] - s[0] * s[1]), s, b)
      for s in count
      for b in count
      if b != s and b[0] >= s[0] and b[1] >= s[1]
    )
    batches = [(big[0], big[1], texts) if (w, r) == small else (w, r, texts) for w, r, texts in batches]


def _computed_tokens(layout) -> int:
  return sum(width * rows for width, rows, _ in layout)


def plan_batches(
  token_ids: Sequence[np.ndarray],
  rows_per_batch: int,
  max_seq_length: int,
  packing: bool | str = "auto",
  pad_token_id: int = 0,
  small_rows: int | None = None,
  align: int = 1,
  pack_width: int = 0,
) -> Iterator[Batch]:
  """Batches covering every text exactly once, longest rows first, in at most MAX_SHAPES shapes.

  `packing`: True, False, or "auto": pack when that saves at least 1% of the computed tokens. Packing puts
  texts into rows of the longest text's bucket, or of `pack_width` tokens (capped at max_seq_length) where those
  compute fewer tokens: an attention whose cost is per text, not per row (the frames attention), packs short texts
  into wide rows with little padding; one whose cost grows with the row (dense, per_example) packs no wider than
  it must (pack_width 0).
  Batches have `rows_per_batch` rows, or `small_rows` (default rows_per_batch // 8) for the remainder of a
  bucket and for the end. `align` > 1 (the deterministic path: BUCKET_STEP): every text starts at a multiple of it
  in its row, and rows are whole multiples of it.
  """
  if packing not in (True, False, "auto"):
    raise ValueError(f"packing must be True, False or 'auto', not {packing!r}")
  if not isinstance(rows_per_batch, (int, np.integer)) or rows_per_batch <= 0:
    raise ValueError(f"rows_per_batch must be a positive integer, got {rows_per_batch!r}")
  small_rows = min(small_rows or max(1, rows_per_batch // 8), rows_per_batch)
  if not token_ids:
    return
  lengths = aligned(np.fromiter((len(t) for t in token_ids), np.int64, len(token_ids)), align)
  buckets = bucket_lengths(max_seq_length, whole_steps=align > 1)
  if align > 1 and any(b % align for b in buckets):
    raise ValueError(f"align {align} does not divide the row widths {buckets}")
  if packing in (True, "auto"):
    packed = _layout(lengths, buckets, rows_per_batch, small_rows, True)
    if pack_width:
      # Wider rows only where they compute fewer tokens: texts that already fill their bucket's rows (queries of a
      # few tokens, long abstracts) gain no padding there, and the frames attention's per-text loop copies more.
      wide = _layout(lengths, buckets, rows_per_batch, small_rows, True, pack_width)
      packed = wide if _computed_tokens(wide) < _computed_tokens(packed) else packed
  if packing == "auto":
    plain = _layout(lengths, buckets, rows_per_batch, small_rows, False)
    packing = _computed_tokens(packed) <= (1 - PACKING_MIN_SAVING) * _computed_tokens(plain)
    layout = packed if packing else plain
  else:
    layout = packed if packing else _layout(lengths, buckets, rows_per_batch, small_rows, False)
  segments = MAX_SEGMENTS if packing else 1
  for width, height, chunk in layout:
    yield filled_batch(token_ids, chunk, height, width, segments, pad_token_id, align)


def filled_batch(
  token_ids: Sequence[np.ndarray],
  rows: list[list[int]],
  height: int,
  width: int,
  segments: int,
  pad_token_id: int,
  align: int = 1,
) -> Batch:
  """A [height, width] batch holding rows[r] (text indices) in row r, one segment per text, each starting at a
  multiple of `align`; rows past len(rows) are padding."""
  batch = Batch(
    input_ids=np.full((height, width), pad_token_id, np.int32),
    segment_ids=np.zeros((height, width), np.int32),
    positions=np.zeros((height, width), np.int32),
    text_index=np.full((height, segments), -1, np.int64),
    text_start=np.zeros((height, segments), np.int32),
  )
  for r, texts in enumerate(rows):
    offset = 0
    for slot, i in enumerate(texts):
      n = len(token_ids[i])
      batch.input_ids[r, offset : offset + n] = token_ids[i]
      batch.segment_ids[r, offset : offset + n] = slot + 1
      batch.positions[r, offset : offset + n] = np.arange(n)
      batch.text_index[r, slot] = i
      batch.text_start[r, slot] = offset
      offset += -(-n // align) * align
  return batch


def pack_batch(
  token_ids: Sequence[np.ndarray], max_seq_length: int, pad_token_id: int = 0, row_multiple: int = 1, packed=True
) -> tuple[Batch, np.ndarray]:
  """Every text in one batch (a training step's): rows of the longest text's bucket, texts packed best-fit
  decreasing (`packed`), the row count rounded up by `count_bucket` and to a multiple of `row_multiple` (filler rows
  are padding). Returns the batch and `slots` [N]: text i's pooled output is at flat index r * S + s."""
  lengths = np.fromiter((len(t) for t in token_ids), np.int64, len(token_ids))
  width = bucket_for(int(lengths.max()), bucket_lengths(max_seq_length))
  rows = pack_rows(lengths, width, MAX_SEGMENTS) if packed else [[i] for i in range(len(lengths))]
  height = -(-count_bucket(len(rows)) // row_multiple) * row_multiple
  segments = MAX_SEGMENTS if packed else 1
  batch = filled_batch(token_ids, rows, height, width, segments, pad_token_id)
  filled = batch.text_index >= 0
  slots = np.zeros(len(lengths), np.int32)
  slots[batch.text_index[filled]] = np.flatnonzero(filled.reshape(-1))  # text i -> r * segments + s
  return batch, slots
