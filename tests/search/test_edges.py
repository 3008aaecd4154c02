"""Edges of the similarity helpers: vectors whose squared norm overflows float32 still get their cosine, mining of
fewer than two embeddings finds nothing (as sentence-transformers), `truncate_embeddings` as theirs, and encode's
normalised arrays are writable."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sentence_transformers import util as st_util

from distilbert_jax import SentenceTransformer, util


@pytest.mark.parametrize("scale", [1e20, 3e37])
def test_large_finite_vectors_get_their_cosine(scale):
  rng = np.random.RandomState(0)
  a, b = rng.randn(3, 16).astype(np.float32), rng.randn(4, 16).astype(np.float32)
  expected = np.asarray(util.cos_sim(a, b))
  np.testing.assert_allclose(np.asarray(util.cos_sim(a * scale, b * scale)), expected, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(util.normalize_embeddings(a * scale)), axis=1), 1.0, atol=1e-6)
  hits = util.semantic_search(a * scale, b * scale, top_k=2, score_function=util.cos_sim)
  assert [h["score"] for h in hits[0]] == pytest.approx(sorted(expected[0], reverse=True)[:2], abs=1e-6)


def test_zero_vectors_and_ordinary_ones_are_unchanged():
  x = np.asarray([[0.0, 0.0], [3.0, 4.0]], np.float32)
  np.testing.assert_array_equal(np.asarray(util.normalize_embeddings(x)), np.float32([[0.0, 0.0], [0.6, 0.8]]))


@pytest.mark.parametrize("n", [0, 1])
def test_mining_fewer_than_two_embeddings_finds_nothing(n):
  e = np.random.RandomState(0).randn(n, 8).astype(np.float32)
  assert util.paraphrase_mining_embeddings(e) == st_util.paraphrase_mining_embeddings(torch.tensor(e)) == []
  assert util.community_detection(e) == st_util.community_detection(torch.tensor(e)) == []


def test_truncate_embeddings_as_sentence_transformers():
  e = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  np.testing.assert_array_equal(util.truncate_embeddings(e, 2), st_util.truncate_embeddings(torch.tensor(e), 2).numpy())
  assert util.truncate_embeddings(e, None).shape == (2, 3, 4)
  assert isinstance(util.truncate_embeddings(torch.tensor(e), 3), torch.Tensor)


@pytest.mark.parametrize("normalize", [False, True])
def test_encoded_arrays_are_writable(tiny_checkpoint, normalize):
  model = SentenceTransformer(tiny_checkpoint)
  out = model.encode(["one", "two"], normalize_embeddings=normalize)
  assert out.flags.writeable
  out[0, 0] = 1.0
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # torch warns when it wraps a read-only array
    model.encode(["one", "two"], normalize_embeddings=normalize, convert_to_tensor=True)


@pytest.mark.parametrize(("text", "position"), [("bad \ud800 text", 4), ("\udfff", 0), ("ok then \udcff", 8)])
def test_a_lone_surrogate_is_named_with_its_text_and_position(tiny_checkpoint, text, position):
  with pytest.raises(ValueError, match=rf"sentences\[1\]: lone surrogate .* at character {position} is not valid"):
    SentenceTransformer(tiny_checkpoint).encode(["fine", text])


@pytest.mark.parametrize("scale", [0.0, 1.0, 1e25])
def test_normalisation_gradients_are_finite_at_zero_and_past_overflow(scale):
  import jax

  from distilbert_jax.model.pooling import normalize

  x = np.random.RandomState(1).randn(3, 8).astype(np.float32) * scale
  grads = jax.grad(lambda v: (normalize(v) * np.arange(8, dtype=np.float32)).sum())(x)
  assert np.isfinite(np.asarray(grads)).all()
