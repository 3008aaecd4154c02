"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=4: all devices vs one device, printed as JSON."""

import json
import sys

import jax
import numpy as np

from distilbert_jax import SentenceEncoder, semantic_search

path = sys.argv[1]
assert len(jax.devices()) == 4, jax.devices()
rng = np.random.default_rng(0)
words = ["cell", "protein", "risk", "the", "of", "vaccine", "日本", "é", "mice", "trial"]
texts = [" ".join(rng.choice(words, size=rng.integers(0, 90))) for _ in range(37)]
all_devices = SentenceEncoder.from_pretrained(path)
one_device = SentenceEncoder.from_pretrained(path, devices=jax.devices()[:1])
report = {"devices": [len(all_devices.devices), len(one_device.devices)], "encode": {}, "search": {}}
for n_texts in (13, 37):
  for batch_size in (5, 32):
    a = all_devices.encode(texts[:n_texts], batch_size=batch_size)
    b = one_device.encode(texts[:n_texts], batch_size=batch_size)
    report["encode"][f"{n_texts}x{batch_size}"] = float(np.abs(a - b).max() / np.abs(b).max())
corpus = one_device.encode(texts)
queries = one_device.encode(texts[:9])
for corpus_size, chunk in ((37, 10), (35, 500), (33, 7)):
  kw = dict(top_k=6, query_chunk_size=4, corpus_chunk_size=chunk)
  a = semantic_search(queries, corpus[:corpus_size], **kw)
  b = semantic_search(queries, corpus[:corpus_size], devices=jax.devices()[:1], **kw)
  report["search"][f"{corpus_size}/{chunk}"] = [[h["corpus_id"] for h in x] == [h["corpus_id"] for h in y]
                                                and np.allclose([h["score"] for h in x], [h["score"] for h in y])
                                                for x, y in zip(a, b)]
print(json.dumps(report))
