"""Encoding and training run one forward path (`model.forward.embed_rows`): the trainer's embeddings equal the
encoder's for the same parameters and texts, packing on, and a research change (the attention implementation, an
interceptor at a `Hook`) reaches both."""

from __future__ import annotations

import numpy as np
import pytest

from distilbert_jax import SentenceTransformer
from distilbert_jax.checkpoint import model_dir
from distilbert_jax.encode import edge
from distilbert_jax.train.config import TrainConfig
from distilbert_jax.train.data import Example
from distilbert_jax.train.trainer import Trainer
from tests.conftest import TEXTS

TOL = 1e-6  # absolute, on embeddings of norm ~1: two reduction orders of the same float32 arithmetic


def _trainer_embeddings(trainer: Trainer, texts: list[str]) -> np.ndarray:
  inputs = trainer.prepare([Example(t, target=np.zeros(1)) for t in texts])
  assert inputs["rows"]["segment_ids"].max() > 1, "the batch was not packed"
  return np.asarray(trainer.embed_fields(trainer.params, inputs, None, True)["query"])


def silence_head_1_of_layer_0(next_fun, args, kwargs, context):
  out = next_fun(*args, **kwargs)
  if context.module.name == "heads" and context.module.path[1] == "layer_0":
    out = out.at[:, :, 1].set(0)
  return out


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
  return model_dir.load(tiny_checkpoint)


def _cfg(n):
  return TrainConfig(loss="embedding-mse", dropout=False, batch_size=n)


def test_the_trainers_embeddings_equal_the_encoders(loaded):
  texts = [t for t in TEXTS if t.strip()][:24]
  want = SentenceTransformer(loaded).encode(texts, packing=True)
  got = _trainer_embeddings(Trainer(loaded, _cfg(len(texts))), texts)
  assert np.abs(got - want).max() <= TOL, np.abs(got - want).max()


@pytest.mark.parametrize("attention", ["dense", "per_example"])
def test_an_attention_implementation_reaches_both(loaded, attention):
  texts = [t for t in TEXTS if t.strip()][:12]
  encoder = SentenceTransformer(loaded, attention=attention)
  trainer = Trainer(loaded, _cfg(len(texts)), attention=attention)
  assert encoder.attention == trainer.attention == attention
  got, want = _trainer_embeddings(trainer, texts), encoder.encode(texts, packing=True)
  assert np.abs(got - want).max() <= TOL


def test_a_hook_reaches_both(loaded):
  texts = [t for t in TEXTS if t.strip()][:12]
  encoder = SentenceTransformer(loaded)
  plain = encoder.encode(texts, packing=True)
  with encoder.intervene(silence_head_1_of_layer_0):
    hooked = encoder.encode(texts, packing=True)
  trained = _trainer_embeddings(Trainer(loaded, _cfg(len(texts)), interceptor=silence_head_1_of_layer_0), texts)
  assert np.abs(hooked - plain).max() > 1e-3  # the hook changed the embeddings
  assert np.abs(trained - hooked).max() <= TOL  # and the trainer computes the same change


def test_steps_count_optimiser_updates_with_gradient_accumulation(tiny_checkpoint, tmp_path):
  import json

  from distilbert_jax.train.trainer import train

  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps({"query": f"q {i}", "positive": f"p {i}"}) + "\n" for i in range(8)))
  cfg = TrainConfig(loss="mnrl", steps=3, batch_size=2, grad_accumulation=2, warmup_steps=1, dropout=False)
  summary = train(str(tiny_checkpoint), data, tmp_path / "out", cfg, checkpoint_every=1, show_progress=False)
  assert summary["steps"] == 3 and summary["micro_steps"] == 6
  trainer = Trainer(model_dir.load(tiny_checkpoint), cfg)
  trainer.load_checkpoint(tmp_path / "out" / "checkpoint.msgpack")
  assert trainer.step_count == 3 and trainer.micro_steps == 6  # the checkpoint counts updates too


def test_packed_training_of_a_normalising_model_has_finite_gradients(minilm):
  """Empty packed slots pool to zero vectors; the model's Normalize must give them a zero gradient, not NaN."""
  import jax

  trainer = Trainer(model_dir.load(minilm), TrainConfig(loss="mnrl", batch_size=3, dropout=False))
  inputs = trainer.prepare([Example("a short query", "its passage"), Example("q2", "p2"), Example("q3", "p3")])
  assert inputs["rows"]["segment_ids"].max() > 1  # packed, with empty slots
  grads = jax.grad(trainer.loss_fn)(trainer.params, inputs, jax.random.PRNGKey(0), True)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


def test_encoding_and_training_take_their_device_choices_from_one_edge(loaded):
  """The same devices give the same choices (step tokens, mesh) to the encoder's fast path and the trainer, and the
  trainer the edge's attention for training (training has dropout: never the deterministic path, which is the
  encoder's default on CPU)."""
  encoder, trainer = SentenceTransformer(loaded, deterministic=False), Trainer(loaded, _cfg(4))
  choices = encoder.runner.choices
  assert trainer.step_tokens == choices.step_tokens
  assert trainer.attention == edge.choose(encoder.devices, training=True).attention
  assert list(trainer.mesh.devices.flat) == list(choices.mesh.devices.flat) == encoder.devices
  with pytest.raises(ValueError, match="deterministic=True computes attention with 'frames'"):
    SentenceTransformer(loaded, deterministic=True, attention="dense")
