"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=4: all devices vs one device, printed as JSON."""

import json
import sys

import jax
import numpy as np

from distilbert_jax import SentenceTransformer, semantic_search

path = sys.argv[1]
assert len(jax.devices()) == 4, jax.devices()
rng = np.random.default_rng(0)
words = ["cell", "protein", "risk", "the", "of", "vaccine", "日本", "é", "mice", "trial"]
texts = [" ".join(rng.choice(words, size=rng.integers(0, 90))) for _ in range(37)]
all_devices = SentenceTransformer.from_pretrained(path)
one_device = SentenceTransformer.from_pretrained(path, devices=jax.devices()[:1])
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
  # The JAX engine: sharded over 4 devices vs on one (faiss, the CPU default, does not use devices).
  a = semantic_search(queries, corpus[:corpus_size], backend="jax", **kw)
  b = semantic_search(queries, corpus[:corpus_size], devices=jax.devices()[:1], backend="jax", **kw)
  report["search"][f"{corpus_size}/{chunk}"] = [
    [h["corpus_id"] for h in x] == [h["corpus_id"] for h in y]
    and np.allclose([h["score"] for h in x], [h["score"] for h in y])
    for x, y in zip(a, b)
  ]

# One fine-tuning step, batch sharded over 4 devices vs on one device (dropout off: same arithmetic).
from distilbert_jax.checkpoint import model_dir  # noqa: E402
from distilbert_jax.checkpoint.names import flatten_params  # noqa: E402
from distilbert_jax.train.config import TrainConfig  # noqa: E402
from distilbert_jax.train.data import Example  # noqa: E402
from distilbert_jax.train.trainer import Trainer  # noqa: E402

examples = [Example(texts[i], texts[i + 1]) for i in range(0, 16, 2)]
updated = []
for devs in (jax.devices(), jax.devices()[:1]):
  trainer = Trainer(
    model_dir.load(path), TrainConfig(loss="mnrl", steps=2, warmup_steps=1, lr=1e-3, dropout=False), devices=devs
  )
  losses = [trainer.step(examples), trainer.step(examples)]
  updated.append((losses, flatten_params(jax.device_get(trainer.params))))
report["train_loss"] = [updated[0][0], updated[1][0]]
report["train_params_rel"] = max(
  float(np.linalg.norm(a - updated[1][1][k]) / np.linalg.norm(updated[1][1][k])) for k, a in updated[0][1].items()
)
print(json.dumps(report))
