"""sentence-transformers' encode API, bounded compilation, and batch invariance (packing, buckets, neighbours)."""

from __future__ import annotations

import functools
import itertools

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilbert_jax import SentenceTransformer
from distilbert_jax.encode.batching import MAX_SHAPES, plan_batches
from distilbert_jax.model.forward import embed_rows, rows_per_step
from tests.conftest import TEXTS

WORDS = [
  "the",
  "protein",
  "binds",
  "receptor",
  "cells",
  "in",
  "mice",
  "ångström",
  "日本",
  "🎉",
  "increase",
  "risk",
  "of",
  "cancer",
  "vitamin",
  "d",
  "covid-19",
  "trial",
  "placebo",
  "!!",
]


# Every XLA compilation in this process (JAX has no way to unregister a listener, so one for the module).
COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
  lambda event, *args, **kwargs: (
    COMPILES.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
  )
)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
  return SentenceTransformer.from_pretrained(tiny_checkpoint)


def _random_texts(n, seed, max_words=150):
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(WORDS, size=rng.integers(0, max_words))) for _ in range(n)]


def test_shapes_dtype_and_order(tiny):
  out = tiny.encode(TEXTS, batch_size=4)
  assert out.shape == (len(TEXTS), 32) and out.dtype == np.float32
  np.testing.assert_allclose(out[::-1], tiny.encode(TEXTS[::-1], batch_size=4), atol=1e-5)
  assert tiny.encode("one text").shape == (32,)
  assert tiny.encode([]).shape == (0,)  # as sentence-transformers


def test_non_string_item_raises_type_error_naming_index(tiny):
  with pytest.raises(TypeError, match=r"sentences\[2\] is int"):
    tiny.encode(["a", "b", 3])


def test_token_embeddings_match_sentence_transformers(tiny, tiny_checkpoint):
  from sentence_transformers import SentenceTransformer

  texts = TEXTS[:12]
  ours = tiny.encode(texts, output_value="token_embeddings")
  theirs = SentenceTransformer(str(tiny_checkpoint), device="cpu").encode(texts, output_value="token_embeddings")
  for i, (a, b) in enumerate(zip(ours, theirs)):
    b = b.numpy() if hasattr(b, "numpy") else b
    assert a.shape == b.shape, (i, a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"text {i}")


def test_normalize_embeddings(tiny):
  out = tiny.encode(TEXTS, normalize_embeddings=True)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_bfloat16_computes_close_to_float32(tiny_checkpoint, tiny):
  bf16 = SentenceTransformer.from_pretrained(tiny_checkpoint, dtype="bfloat16")
  a, b = bf16.encode(TEXTS), tiny.encode(TEXTS)
  assert a.dtype == np.float32
  cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  assert cos.min() > 0.99, cos.min()


def test_plan_covers_every_text_once_and_packs_short_texts():
  rng = np.random.default_rng(0)
  token_ids = [np.arange(n, dtype=np.int32) + 1 for n in rng.integers(2, 200, size=500)]
  for packing in (True, False):
    seen = []
    real = computed = 0
    for batch in plan_batches(token_ids, rows_per_batch=8, max_seq_length=256, packing=packing):
      seen += batch.text_index[batch.text_index >= 0].tolist()
      real, computed = real + batch.real_tokens, computed + batch.input_ids.size
      for r, s in zip(*np.nonzero(batch.text_index >= 0)):
        i, start = batch.text_index[r, s], batch.text_start[r, s]
        np.testing.assert_array_equal(batch.input_ids[r, start : start + len(token_ids[i])], token_ids[i])
        np.testing.assert_array_equal(
          batch.positions[r, start : start + len(token_ids[i])], np.arange(len(token_ids[i]))
        )
    assert sorted(seen) == list(range(len(token_ids)))
    if packing:
      assert real / computed > 0.95, real / computed


def test_a_pack_width_packs_short_texts_into_wide_rows_with_less_padding():
  """Texts of 30-60 tokens: packed at their longest's bucket (64) few pairs fit, so about a third of a row is
  padding; at a pack width of 256 (the frames attention's rows) the rows fill to more than 90%."""
  rng = np.random.default_rng(3)
  token_ids = [np.arange(1, n + 1, dtype=np.int32) for n in rng.integers(30, 61, 256)]
  efficiency = {}
  for pack_width in (0, 256, 10_000):  # beyond max_seq_length: capped there
    batches = list(plan_batches(token_ids, 32, 512, packing=True, pack_width=pack_width))
    assert max(b.input_ids.shape[1] for b in batches) <= min(max(pack_width, 64), 512)
    covered = sorted(i for b in batches for i in b.text_index[b.text_index >= 0].tolist())
    assert covered == list(range(256))
    efficiency[pack_width] = sum(b.real_tokens for b in batches) / sum(b.input_ids.size for b in batches)
  assert efficiency[0] < 0.8 < 0.9 < efficiency[256], efficiency
  # Queries (5-30 tokens) already fill rows of their bucket: no wider rows, which would only add padding.
  queries = [np.arange(1, n + 1, dtype=np.int32) for n in rng.integers(5, 31, 300)]
  layouts = [[(b.input_ids.shape, b.text_index.tolist()) for b in plan_batches(queries, 32, 512, True, pack_width=w)]
             for w in (0, 512)]  # fmt: skip
  assert layouts[0] == layouts[1]


def test_plan_keeps_97_percent_of_computed_tokens_real_on_scifact_abstracts(minilm, scifact):
  from distilbert_jax.data.beir import find_beir_file
  from distilbert_jax.data.records import read_texts
  from distilbert_jax.model.tokenizer import WordPieceTokenizer

  docs = [text for _, text in itertools.islice(read_texts(find_beir_file(scifact, "corpus")), 1000)]
  token_ids = WordPieceTokenizer.from_dir(minilm, max_seq_length=512).encode_batch(docs)
  batches = list(plan_batches(token_ids, rows_per_batch=32, max_seq_length=512, packing="auto"))
  real, computed = sum(b.real_tokens for b in batches), sum(b.input_ids.size for b in batches)
  assert real / computed >= 0.97, real / computed
  assert len({b.input_ids.shape for b in batches}) <= MAX_SHAPES
  assert {b.input_ids.shape[0] for b in batches} <= {32, 4}


@pytest.mark.parametrize("packing", [True, False])
def test_plan_stays_within_16_shapes_for_any_lengths(packing):
  rng = np.random.default_rng(7)
  for lengths in (rng.integers(1, 513, 3000), rng.integers(1, 513, 50), np.full(100, 512), rng.integers(1, 40, 999)):
    token_ids = [np.ones(n, np.int32) for n in lengths]
    batches = list(plan_batches(token_ids, rows_per_batch=32, max_seq_length=512, packing=packing))
    assert len({b.input_ids.shape for b in batches}) <= MAX_SHAPES
    seen = np.concatenate([b.text_index[b.text_index >= 0] for b in batches])
    assert sorted(seen) == list(range(len(lengths)))


def test_compiles_at_most_16_shapes_and_none_on_a_second_call(tiny_checkpoint):
  encoder = SentenceTransformer.from_pretrained(tiny_checkpoint)
  texts = _random_texts(1000, seed=1, max_words=200)  # up to ~400 tokens: every bucket of max_seq_length 128
  start = len(COMPILES)
  first = encoder.encode(texts, batch_size=16)
  after_first = len(COMPILES)
  second = encoder.encode(texts, batch_size=16)
  # Compiled here, or loaded from the persistent compilation cache of an earlier run: at most 16 either way.
  assert 0 < encoder.runner.forward._cache_size() <= 16 and after_first - start <= 16, after_first - start
  assert len(COMPILES) == after_first, "the second call compiled again"
  for seed in range(2, 6):  # other inputs reuse the same bounded set of shapes
    more = encoder.encode(_random_texts(300, seed=seed, max_words=200), batch_size=16)
  assert encoder.runner.forward._cache_size() <= 16
  np.testing.assert_array_equal(first, second)
  assert more.shape == (300, 32)


def test_cpu_steps_of_a_few_rows_looped_or_unrolled_equal_one_whole_batch(tiny):
  assert [rows_per_step(32, length, 768) for length in (32, 128, 352, 512)] == [16, 4, 2, 1]
  assert rows_per_step(7, 128, 768) == 1 and rows_per_step(4, 64, 768) == 4 and rows_per_step(4, 64, None) == 4
  rng = np.random.default_rng(0)
  ids = rng.integers(1, tiny.config.vocab_size, (32, 128)).astype(np.int32)
  segments = (np.arange(128)[None] < rng.integers(1, 129, (32, 1))).astype(np.int32)
  positions = np.broadcast_to(np.arange(128), ids.shape)
  run = lambda step_tokens, unroll=False, rng=None, module=tiny.module: jax.jit(
    functools.partial(
      embed_rows,
      module,
      tiny.pooling,
      num_segments=1,
      outputs=("sentence_embedding", "token_embeddings"),
      step_tokens=step_tokens,
      unroll_steps=unroll,
      dropout_rng=rng,
    )
  )(tiny.params, ids, segments, positions)
  stepped, whole, unrolled = run(768), run(None), run(768, True)
  real = segments.astype(bool)  # padding tokens' rows are unspecified (oneDNN skips a step's trailing padding)
  for output, pick in (("sentence_embedding", slice(None)), ("token_embeddings", real)):
    got, want, looped_steps = (np.asarray(out[output])[pick] for out in (stepped, whole, unrolled))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=output)
    np.testing.assert_allclose(looped_steps, got, atol=1e-5, rtol=1e-5, err_msg=output)
  # Training's unrolled steps take the loop's dropout keys, step for step: the same draws, the same outputs.
  key, training = jax.random.PRNGKey(7), tiny.module.clone(attention="dense", invariant=False, dense="xla")
  looped, unrolled = run(768, False, key, training), run(768, True, key, training)
  assert not np.allclose(looped["token_embeddings"], stepped["token_embeddings"], atol=1e-3)  # dropout ran
  np.testing.assert_allclose(unrolled["token_embeddings"], looped["token_embeddings"], atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_text_does_not_depend_on_its_neighbours(tiny, data):
  texts = data.draw(st.lists(st.sampled_from(_random_texts(60, seed=3) + TEXTS), min_size=1, max_size=40))
  target = data.draw(st.integers(0, len(texts) - 1))
  batch_size = data.draw(st.sampled_from([1, 2, 3, 8, 32]))
  packing = data.draw(st.booleans())
  alone = tiny.encode([texts[target]], packing=False)[0]
  in_batch = tiny.encode(texts, batch_size=batch_size, packing=packing)[target]
  np.testing.assert_allclose(in_batch, alone, atol=1e-5, rtol=1e-5)


def test_long_texts_are_cut_before_tokenising_with_the_same_tokens(tiny):
  rng = np.random.default_rng(5)
  words = ["protein", "x" * 150, "naïve", "北京", "re-entry", "\x00\x01", "don't", "a\u2028b", "\t", "ÉCOLE"]
  texts = [" ".join(rng.choice(words, size=n)) for n in (5, 200, 2000, 20000)]
  texts += ["\x00 " * 5000 + "word " * 10, "word" * 5000, " " * 9000 + "tail"]  # words with no token; no spaces
  tokenizer = tiny.tokenizer
  full = [np.asarray(e.ids, np.int32) for e in tokenizer.backend.encode_batch([tokenizer.prepare(t) for t in texts])]
  for text, got, expected in zip(texts, tokenizer.encode_batch(texts), full):
    np.testing.assert_array_equal(got, expected, err_msg=repr(text[:40]))
  assert len(tokenizer.head("word " * 1_000_000)) < 10 * tiny.max_seq_length  # a 5 MB line is cut to ~640 chars
