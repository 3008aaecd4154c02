"""The building blocks of deterministic encoding (`model/invariant.py`), each against what it replaces: a row's sum
keeps its bits whatever the other rows (their number and its place among them), and frames attention and per-text
pooling compute what the dense attention and the matmul pooling compute, with each text's bits independent of its
row."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_jax.model import attention
from distilbert_jax.model.invariant import MIN_ROWS, frame_sizes, row_sum, text_spans
from distilbert_jax.model.pooling import PoolingConfig, normalize, pool

RNG = np.random.default_rng(0)
ROWS = (RNG.standard_normal((300, 768)) * RNG.random((300, 1)) * 10).astype(np.float32)


def test_row_sum_has_a_rows_bits_whatever_the_other_rows():
  """XLA's own row sum takes another order below 8 rows than from 8 on (checked here, so that a change in XLA that
  removes the difference is seen); row_sum gives every row one order."""
  plain = jax.jit(lambda x: x.sum(-1, keepdims=True))
  reference = np.asarray(jax.jit(row_sum)(ROWS))
  assert not all(np.array_equal(plain(ROWS[i : i + 1]), reference[i : i + 1]) for i in range(16)), (
    "XLA's row sum of one row now matches its many-row order: MIN_ROWS may no longer be needed"
  )
  summed = jax.jit(row_sum)
  for count in (1, 2, 7, 8, 9, MIN_ROWS - 1, MIN_ROWS + 1, 200):
    for offset in (0, 3, 37):
      got = np.asarray(summed(ROWS[offset : offset + count]))
      assert np.array_equal(got, reference[offset : offset + count]), (count, offset)
  narrow = ROWS[:, :32]  # 16 and 32 features: XLA's order changes with the row count even past 8 rows
  assert np.array_equal(jax.jit(row_sum)(narrow[3:12]), jax.jit(row_sum)(narrow)[3:12])
  fused = jax.jit(lambda x, y: row_sum(jnp.square(x - y)))  # a producer fused in front changes nothing
  assert np.array_equal(fused(ROWS[5:9], 0.5 * ROWS[5:9]), jax.jit(row_sum)(jnp.square(0.5 * ROWS))[5:9])
  np.testing.assert_allclose(reference, ROWS.astype(np.float64).sum(-1, keepdims=True), rtol=1e-5, atol=1e-3)


def test_invariant_normalize_is_normalize_and_keeps_a_rows_bits():
  full = np.asarray(jax.jit(lambda x: normalize(x, invariant=True))(ROWS))
  np.testing.assert_allclose(full, np.asarray(normalize(ROWS)), rtol=0, atol=1e-6)
  for count in (1, 3, 50):
    assert np.array_equal(jax.jit(lambda x: normalize(x, invariant=True))(ROWS[10 : 10 + count]), full[10 : 10 + count])


def _rows(layout: list[list[int]], width: int) -> np.ndarray:
  """Segment ids [B, width] from each row's text lengths (texts packed from the row's start)."""
  seg = np.zeros((len(layout), width), np.int32)
  for r, lengths in enumerate(layout):
    start = 0
    for s, n in enumerate(lengths):
      seg[r, start : start + n] = s + 1
      start += n
  return seg


def test_text_spans_lists_every_text_with_its_row_start_and_length():
  seg = _rows([[3, 5], [], [8]], 10)
  row, start, length, segment, count = (np.asarray(a) for a in jax.jit(text_spans)(jnp.asarray(seg)))
  assert count == 3
  assert list(zip(row[:3], start[:3], length[:3], segment[:3], strict=True)) == [
    (0, 0, 3, 1),
    (0, 3, 5, 2),
    (2, 0, 8, 1),
  ]
  assert frame_sizes(40) == (32, 64) and frame_sizes(512)[-1] == 512 and len(frame_sizes(512)) == 16


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_frames_attention_is_dense_attention_and_a_text_keeps_its_bits_in_any_row(dtype):
  heads, width = 2, 8
  layout = [[5, 33, 2], [40], [1, 1, 7]]
  seg = jnp.asarray(_rows(layout, 48))
  q, k, v = (jnp.asarray(RNG.standard_normal((3, 48, heads, width)), dtype) for _ in range(3))
  got = attention.frames(q, k, v, seg, dtype=dtype)[0]
  expected = attention.dense(q, k, v, seg, dtype=dtype)[0]
  real = np.asarray(seg) > 0
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(got, np.float32)[real], np.asarray(expected, np.float32)[real], atol=tolerance)
  assert not np.asarray(got, np.float32)[~real].any()  # padding tokens get 0
  # The 33-token text of row 0 (tokens 5..37) alone in a 40-wide row, from its start: the same bits.
  alone = jnp.asarray(_rows([[33]], 40))
  moved = [jnp.pad(x[:1, 5:38], [(0, 0), (0, 7), (0, 0), (0, 0)]) for x in (q, k, v)]
  single = attention.frames(*moved, alone, dtype=dtype)[0]
  assert np.array_equal(np.asarray(single[0, :33]), np.asarray(got[0, 5:38]))


def test_per_text_pooling_is_the_matmul_pooling_and_a_text_keeps_its_bits_in_any_row():
  layout = [[5, 33, 2], [40], [1, 1, 7]]
  seg = jnp.asarray(_rows(layout, 48))
  positions = jnp.zeros_like(seg)
  x = jnp.asarray(RNG.standard_normal((3, 48, 16)), jnp.float32)
  got = pool(x, seg, positions, 3, PoolingConfig(), invariant=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(pool(x, seg, positions, 3, PoolingConfig())), atol=1e-6)
  alone = pool(jnp.pad(x[:1, 5:38], [(0, 0), (0, 3), (0, 0)]), jnp.asarray(_rows([[33]], 36)), positions[:1, :36], 1,
               PoolingConfig(), invariant=True)  # fmt: skip
  assert np.array_equal(np.asarray(alone[0, 0]), np.asarray(got[0, 1]))
