"""Where the deterministic path's time goes: one [16, 320] batch of the full msmarco config (random weights, 300
real tokens a row), `embed_rows` in CPU steps of 768 tokens as encoding runs it, with the parts of the
deterministic path switched on one at a time. Prints tokens/s per variant and its ratio to the fast path.

  python benchmarks/deterministic_cost.py [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import msmarco_random_checkpoint  # noqa: E402

VARIANTS = {  # name: (attention, token tile, pooling block)
  "fast (per_example)": ("per_example", None, None),
  "32-token tiles only": ("per_example", 32, None),
  "frames attention only": ("frames", None, None),
  "deterministic (all)": ("frames", 32, 32),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()
  import jax
  import jax.numpy as jnp

  from distilbert_jax import SentenceTransformer
  from distilbert_jax.model.forward import embed_rows
  from distilbert_jax.model.transformer import Encoder

  model = SentenceTransformer(msmarco_random_checkpoint(), dtype=args.dtype)
  rows, width, real = 16, 320, 300
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 20000, (rows, width)).astype(np.int32)
  seg = np.zeros((rows, width), np.int32)
  seg[:, :real] = 1
  pos = np.tile(np.arange(width), (rows, 1)).astype(np.int32)
  rates = {}
  for name, (attention, tile, block) in VARIANTS.items():
    module = Encoder(model.config, dtype=jnp.dtype(args.dtype), attention=attention, token_tile=tile)
    run = jax.jit(
      lambda p, a, b, c, module=module, block=block: embed_rows(
        module, model.pooling, p, a, b, c, num_segments=1, step_tokens=768, text_block=block
      )["sentence_embedding"]
    )
    run(model.params, ids, seg, pos).block_until_ready()
    times = []
    for _ in range(3):
      start = time.perf_counter()
      run(model.params, ids, seg, pos).block_until_ready()
      times.append(time.perf_counter() - start)
    rates[name] = rows * real / min(times)
    base = rates["fast (per_example)"]
    print(f"{name:<24} {rates[name]:8,.0f} tokens/s  {rates[name] / base:5.2f}x the fast path", flush=True)


if __name__ == "__main__":
  main()
