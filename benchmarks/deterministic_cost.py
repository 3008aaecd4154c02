"""What deterministic=True costs (issue 38): `encode` of the full msmarco config (random weights, CPU) with
deterministic=True against the fast path, at float32, bfloat16 and int8, on short passages (30-60 tokens) and long
texts (250-300 tokens), batch 32, `encode`'s default packing. Every variant of a (dtype, length) is warmed up (each
batch shape compiled and run once), then the variants are timed in turns, `--rounds` times, and each one's fastest
pass counts (this VM's speed drifts between minutes, and other processes share its 2 cores: turns put the drift on
every variant alike). Prints tokens/s and the ratio to the fast path, with the CPU model.

VARIANTS: "fast" (deterministic=False), "deterministic" (the default on CPU, with its default kernels: oneDNN's
row-invariant GEMM for the dense layers, `model/onednn.py`), and for float dtypes "deterministic, tiles" (XLA's
dot on fixed 32-token tiles: the path where oneDNN is not at hand). `--parts`: the parts of the deterministic path
switched on one at a time on one batch (short: [48, 64], long: [16, 320]) through `embed_rows` (PARTS).

  python benchmarks/deterministic_cost.py [--dtypes float32,bfloat16,int8] [--lengths short,long] [--parts]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import msmarco_random_checkpoint  # noqa: E402
from benchmarks.row_invariance import cpu_model  # noqa: E402

WORDS = "the cell of a protein binds vitamin cancer risk study patients with increased levels in mice".split()
LENGTHS = {"short": (28, 58, 300), "long": (248, 298, 48)}  # words (one token each, plus [CLS] [SEP]), texts
VARIANTS = {  # name: SentenceTransformer keyword arguments (float dtypes only where dense_dot is named)
  "fast": {"deterministic": False},
  "deterministic": {"deterministic": True},
  "deterministic, tiles": {"deterministic": True, "dense_dot": "xla"},
}
PARTS = {  # name: (attention, token tile, invariant norms and pooling, dense dot), on one [16, 320] batch
  "fast (per_example)": ("per_example", None, False, "xla"),
  "32-token tiles (XLA dense)": ("per_example", 32, False, "xla"),
  "oneDNN dense": ("per_example", None, False, "onednn"),
  "fixed-order norms and pooling": ("per_example", None, True, "xla"),
  "frames attention only": ("frames", None, False, "xla"),
  "deterministic, XLA tiles": ("frames", 32, True, "xla"),
  "deterministic, oneDNN": ("frames", None, True, "onednn"),
}


def texts_of(length: str) -> list[str]:
  low, high, n = LENGTHS[length]
  rng = random.Random(0)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def in_turns(calls: dict, rounds: int) -> dict[str, float]:
  """Seconds of each call's fastest pass, the calls timed in turns."""
  best = dict.fromkeys(calls, float("inf"))
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      call()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def end_to_end(dtypes: list[str], lengths: list[str], rounds: int) -> None:
  from distilbert_jax import SentenceTransformer

  path = msmarco_random_checkpoint()
  for dtype in dtypes:
    for length in lengths:
      texts = texts_of(length)
      calls, tokens = {}, 0
      for name, kwargs in VARIANTS.items():
        if "dense_dot" in kwargs and dtype == "int8":
          continue
        model = SentenceTransformer(path, dtype=dtype, **kwargs)
        model.warmup(texts, batch_size=32)
        model.encode(texts, batch_size=32)
        tokens = model.last_encode_stats["real_tokens"]
        calls[name] = lambda model=model, texts=texts: model.encode(texts, batch_size=32)
      seconds = in_turns(calls, rounds)
      for name, s in seconds.items():
        ratio = seconds["fast"] / s
        print(f"{dtype:<9} {length:<6} {name:<22} {tokens / s:8,.0f} tokens/s  {ratio:5.2f}x fast", flush=True)


def parts(dtype: str, rounds: int, long: bool) -> None:
  import jax
  import jax.numpy as jnp

  from distilbert_jax import SentenceTransformer
  from distilbert_jax.model.forward import embed_rows
  from distilbert_jax.model.transformer import Encoder

  model = SentenceTransformer(msmarco_random_checkpoint(), dtype=dtype)
  rows, width, real = (16, 320, 300) if long else (48, 64, 45)
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 20000, (rows, width)).astype(np.int32)
  seg = np.zeros((rows, width), np.int32)
  seg[:, :real] = 1
  pos = np.tile(np.arange(width), (rows, 1)).astype(np.int32)
  calls = {}
  for name, (attention, tile, invariant, dense) in PARTS.items():
    module = Encoder(
      model.config, dtype=jnp.dtype(dtype), attention=attention, token_tile=tile, dense=dense, invariant=invariant
    )
    run = jax.jit(
      lambda p, a, b, c, module=module, invariant=invariant: embed_rows(
        module, model.pooling, p, a, b, c, num_segments=1, step_tokens=768, invariant=invariant
      )["sentence_embedding"]
    )
    run(model.params, ids, seg, pos).block_until_ready()
    calls[name] = lambda run=run: run(model.params, ids, seg, pos).block_until_ready()
  seconds = in_turns(calls, rounds)
  for name, s in seconds.items():
    print(
      f"{dtype:<9} {width:<4} {name:<30} {rows * real / s:8,.0f} tokens/s  {seconds[next(iter(PARTS))] / s:5.2f}x fast"
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtypes", default="float32,bfloat16,int8")
  parser.add_argument("--lengths", default="short,long")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--parts", action="store_true", help="the deterministic path's parts on one batch (float dtypes)")
  args = parser.parse_args()
  print("CPU:", cpu_model(), "| load average", os.getloadavg(), flush=True)
  if args.parts:
    for dtype in args.dtypes.split(","):
      for length in args.lengths.split(","):
        parts(dtype, args.rounds, length == "long")
  else:
    end_to_end(args.dtypes.split(","), args.lengths.split(","), args.rounds)
  print("load average at the end", os.getloadavg())


if __name__ == "__main__":
  main()
