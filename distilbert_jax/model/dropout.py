"""Dropout for training: inverted dropout (kept values scaled by 1 / (1 - rate)), as torch's nn.Dropout, on masks
that cost a quarter of `jax.random.bernoulli`'s random bits.

`bernoulli` draws 32 bits an element and, with Threefry's partitionable mode (jax's default), runs one Threefry
evaluation an element and XORs its two words. Here each evaluation's two 32-bit words are kept and each word gives
two 16-bit draws: four elements an evaluation. Attention dropout draws [heads, tokens, tokens] bits a row and a
layer; its bits were ~10% of a fine-tuning step on CPU (all-MiniLM-L6-v2, batch 16, profiled). The keep
probability is resolved to 1/65,536 (rate 0.1 drops 6,554 / 65,536 = 0.100006 of the values).

Axis letters: any shape.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend.random import threefry_2x32

DRAW_LEVELS = 1 << 16  # a draw is 16 random bits


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """bool `shape`: True where a value is kept, each with probability 1 - rate (to 1/65,536), from key `rng` (a raw
  uint32[2] key or a typed threefry key)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate {rate} is not in [0, 1)")
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  n = math.prod(shape)
  words = -(-n // 2)  # two draws a 32-bit word
  counts = jax.lax.iota(jnp.uint32, words + words % 2)  # even: threefry_2x32 pairs the halves, 2 words an evaluation
  draws = jax.lax.bitcast_convert_type(threefry_2x32(rng, counts), jnp.uint16).reshape(-1)[:n]
  return draws.reshape(shape) >= min(round(rate * DRAW_LEVELS), DRAW_LEVELS - 1)  # a rate near 1 keeps 1/65,536


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """x with each value dropped (zero) with probability `rate`, the kept ones scaled by 1 / (1 - rate)."""
  if not rate:
    return x
  return jnp.where(keep_mask(rng, rate, x.shape), x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """nn.Dropout's interface (`rate`, `deterministic`, the "dropout" RNG stream) on `dropout`'s cheaper masks."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or not self.rate:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"))
