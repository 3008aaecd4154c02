"""Rounding counts to a few compiled shapes."""


def count_bucket(n: int, floor: int = 1) -> int:
  """n rounded up to 4, 5, 6 or 7 times a power of two (at least `floor`; n <= 8 stays n): the row counts of
  compiled steps, so that inputs of varying size share a few compilations at most 25% padding."""
  n = max(n, floor)
  if n <= 8:
    return n
  shift = n.bit_length() - 3
  return -(-n >> shift) << shift
