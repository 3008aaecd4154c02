"""Deterministic encoding in one process with the device count XLA_FLAGS gave it: the texts in several batch sizes
and packings must give the same bits here (else exit 1); prints {"devices": n} and saves the embeddings."""

import json
import random
import sys

import jax
import numpy as np

from distilbert_jax import SentenceTransformer

checkpoint, dtype, out = sys.argv[1], sys.argv[2], sys.argv[3]
words = "the cell of a protein binds vitamin cancer risk study patients with increased levels in mice".split()
rng = random.Random(3)
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 150))) for _ in range(21)]
model = SentenceTransformer(checkpoint, deterministic=True, dtype=dtype)
first = model.encode(texts, batch_size=32, packing=True)
for batch_size, packing in ((5, False), (3, "auto")):
  again = model.encode(texts[::-1], batch_size=batch_size, packing=packing)[::-1]
  if not np.array_equal(again, first):
    sys.exit(f"batch_size {batch_size}, packing {packing}: max diff {np.abs(again - first).max():.3g}")
np.save(out, first)
print(json.dumps({"devices": len(jax.devices())}))
