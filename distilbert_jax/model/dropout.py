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


def random_words(rng: jax.Array, count: int) -> jax.Array:
  """`count` (at least) uint32 words of random bits from `rng`, a typed key or raw key data (of jax's default
  implementation). Threefry keys: both words of each evaluation; any other implementation: its own bits."""
  key = rng if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rng)
  if str(jax.random.key_impl(key)) != "threefry2x32":
    return jax.random.bits(key, (count,), jnp.uint32)
  counts = jax.lax.iota(jnp.uint32, count + count % 2)  # even: threefry_2x32 pairs the halves, 2 words an evaluation
  return threefry_2x32(jax.random.key_data(key), counts)


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """bool `shape`: True where a value is kept, each with probability 1 - rate (to 1/65,536), from key `rng` (a typed
  key or raw key data, `random_words`)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate {rate} is not in [0, 1)")
  n = math.prod(shape)
  words = random_words(rng, -(-n // 2))  # two draws a 32-bit word
  draws = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:n]
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
