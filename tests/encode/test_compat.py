"""One sentence-transformers script body, run twice: with `sentence_transformers` and with `distilbert_jax` as the
import. Every call a sentence-transformers user makes is compared: embeddings within 1e-5 relative, identical
top-k (ties aside), identical quantized codes (int8: one step on at most 0.1% of entries, from float rounding).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import sentence_transformers
import torch

import distilbert_jax
from conversion.reference_checkpoint import make_reference_checkpoint
from tests.conftest import TEXTS

PROMPTS = {"query": "query: ", "passage": "passage: ", "classify": "topic of: "}
DOCS = [t for t in TEXTS if t.strip()][:24]
QUERIES = ["cats and dogs", "the capital of France", "vitamin D and cancer", "a long sentence about nothing"]


def script(lib, path: str) -> dict:
  """What a user writes, with `lib` standing for `from LIB import SentenceTransformer, util`."""
  SentenceTransformer, util = lib.SentenceTransformer, lib.util
  model = SentenceTransformer(path, device="cpu", prompts={"classify": PROMPTS["classify"]})
  out = {
    "dim": model.get_sentence_embedding_dimension(),
    "similarity_fn_name": model.similarity_fn_name,
    "max_seq_length": model.max_seq_length,
    "prompts": dict(model.prompts),
    "default_prompt_name": model.default_prompt_name,
  }
  docs = model.encode(DOCS, batch_size=7)
  queries = model.encode_query(QUERIES)
  out["encode"] = docs
  out["encode_single"] = model.encode(DOCS[0])
  out["encode_query"] = queries
  out["encode_document"] = model.encode_document(DOCS)
  out["prompt_name"] = model.encode(QUERIES, prompt_name="classify")
  out["prompt"] = model.encode(QUERIES, prompt="Represent this: ")
  out["normalized"] = model.encode(DOCS, normalize_embeddings=True)
  out["truncated"] = model.encode(DOCS, truncate_dim=16)
  out["truncated_normalized"] = model.encode(DOCS, truncate_dim=16, normalize_embeddings=True)
  out["tensor"] = np.asarray(model.encode(DOCS[:3], convert_to_tensor=True))
  out["list"] = np.stack([np.asarray(v) for v in model.encode(DOCS[:3], convert_to_numpy=False)])
  out["tokens"] = [np.asarray(t) for t in model.encode(DOCS[:3], output_value="token_embeddings")]
  everything = model.encode(DOCS[:3], output_value=None)
  out["all_sentence"] = np.stack([np.asarray(e["sentence_embedding"]) for e in everything])
  for precision in ("int8", "uint8", "binary", "ubinary"):
    out[f"precision_{precision}"] = model.encode(DOCS, precision=precision)
    out[f"quantize_{precision}"] = util.quantize_embeddings(docs, precision)
  out["quantize_calibrated"] = util.quantize_embeddings(queries, "int8", calibration_embeddings=docs)
  out["similarity"] = np.asarray(model.similarity(queries, docs))
  out["similarity_pairwise"] = np.asarray(model.similarity_pairwise(docs[:5], docs[5:10]))
  out["cos_sim"] = np.asarray(util.cos_sim(queries, docs))
  out["dot_score"] = np.asarray(util.dot_score(queries, docs))
  out["pairwise_cos_sim"] = np.asarray(util.pairwise_cos_sim(docs[:5], docs[5:10]))
  out["pairwise_dot_score"] = np.asarray(util.pairwise_dot_score(docs[:5], docs[5:10]))
  out["cos_sim_torch"] = np.asarray(util.cos_sim(torch.from_numpy(queries), torch.from_numpy(docs)))
  out["dot_score_lists"] = np.asarray(util.dot_score(queries.tolist(), docs.tolist()))
  out["search_default"] = util.semantic_search(queries, docs, top_k=5)
  out["search_positional"] = util.semantic_search(queries, docs, 2, 500000, 7, util.cos_sim)
  out["search_dot"] = util.semantic_search(queries, docs, top_k=5, score_function=util.dot_score)
  out["search_callable"] = util.semantic_search(
    queries,
    docs,
    top_k=4,
    corpus_chunk_size=5,
    score_function=lambda a, b: -torch.cdist(torch.as_tensor(a), torch.as_tensor(b)),
  )
  out["paraphrases"] = util.paraphrase_mining(model, DOCS, top_k=3)
  clustered = np.concatenate([docs[:3] + 0.01 * i for i in range(4)])
  out["communities"] = util.community_detection(clustered, threshold=0.9, min_community_size=3)
  # Settings and calls their tests and users rely on (issue 21).
  dim = model.get_sentence_embedding_dimension()
  model.truncate_dim = 4 * dim  # larger than the model's width: nothing is truncated
  out["dim_truncate_larger"] = model.get_sentence_embedding_dimension()
  out["encode_truncate_larger"] = model.encode(DOCS[:2])
  model.truncate_dim = None
  with model.truncate_embeddings(8):
    out["truncate_context"] = model.encode(DOCS[:2])
    out["truncate_context_dim"] = model.get_sentence_embedding_dimension()
  out["after_truncate_context"] = model.encode(DOCS[:1]).shape
  out["max_seq_length_get"] = model.get_max_seq_length()
  out["save_none"] = model.save(None)
  out["encode_empty"] = model.encode([]).shape
  same = model.encode([DOCS[1]] * 20 + DOCS[:3])
  out["identical_texts_identical"] = all(np.array_equal(same[0], row) for row in same[:20])
  copied = copy.deepcopy(model)
  out["deepcopy_same"] = bool(np.allclose(copied.encode(DOCS[:2]), model.encode(DOCS[:2]), atol=1e-6))
  out["normalize_torch"] = util.normalize_embeddings(torch.as_tensor(docs[:3]))
  out["normalize_torch_type"] = type(util.normalize_embeddings(torch.as_tensor(docs[:3]))).__name__
  out["quantize_empty_list"] = util.quantize_embeddings([], "int8")
  out["cos_sim_sparse"] = util.cos_sim(torch.as_tensor(docs[:2]).to_sparse(), torch.as_tensor(docs[:3]))
  tokenized = model.tokenize(DOCS[:4])
  out["tokenize"] = {k: np.asarray(tokenized[k]) for k in ("input_ids", "attention_mask")}
  model.max_seq_length = 16
  out["short"] = model.encode(DOCS)
  return out


def _flips_only_at_bucket_boundaries(a, b, floats, calibration, key, tol=1e-3) -> None:
  """int8/uint8 codes of the two pipelines may differ by one step, and only where the float value sits within
  `tol` of a bucket boundary (float32 noise of ~1e-7 is ~1e-4 of a bucket here); the quantizer itself is held
  exact on identical inputs in tests/search/test_quantization.py."""
  off = np.abs(a.astype(np.int32) - b.astype(np.int32))
  start, stop = calibration.min(0), calibration.max(0)
  position = (floats - start) / np.where(stop > start, (stop - start) / 255, 1)  # in buckets
  near = np.abs(position - np.round(position)) <= tol
  assert off.max() <= 1 and near[off > 0].all(), (key, off.max(), int((off > 0).sum()), int((off > near).sum()))


def _compare(ours: dict, theirs: dict) -> None:
  assert ours.keys() == theirs.keys()
  for key in ours:
    a, b = ours[key], theirs[key]
    if key.startswith("search") or key == "paraphrases":
      _same_hits(a, b, key)
    elif key == "communities":
      assert sorted(map(sorted, a)) == sorted(map(sorted, b)), key
      assert [c[0] for c in a] == [c[0] for c in b] or len({len(c) for c in a}) < len(a), key  # centres
    elif key == "tokenize":
      for name in b:
        np.testing.assert_array_equal(a[name], b[name].astype(np.int64), err_msg=name)
    elif key == "tokens":
      assert len(a) == len(b)
      for x, y in zip(a, b):
        _close(x, y, key)
    elif key.startswith(("precision_", "quantize_")):
      a, b = np.asarray(a), np.asarray(b)
      assert a.dtype == b.dtype and a.shape == b.shape, (key, a.dtype, b.dtype, a.shape, b.shape)
      if "int8" in key or "calibrated" in key:
        floats = np.asarray(theirs["encode_query" if key == "quantize_calibrated" else "encode"])
        _flips_only_at_bucket_boundaries(a, b, floats, np.asarray(theirs["encode"]), key)
      else:
        np.testing.assert_array_equal(a, b, err_msg=key)
    elif isinstance(b, (np.ndarray, torch.Tensor)):
      _close(np.asarray(a), np.asarray(b), key)
    else:
      assert a == b, (key, a, b)


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
  assert a.shape == b.shape, (what, a.shape, b.shape)
  scale = max(1.0, float(np.abs(b).max()))
  assert float(np.abs(a - b).max()) <= 1e-5 * scale, (what, float(np.abs(a - b).max()))


def _same_hits(a: list, b: list, what: str) -> None:
  """The same hits in the same order, where scores (to 1e-5) do not tie."""
  if what == "paraphrases":
    a = [[{"corpus_id": (i, j), "score": s} for s, i, j in a]]
    b = [[{"corpus_id": (i, j), "score": s} for s, i, j in b]]
  assert len(a) == len(b), what
  for x, y in zip(a, b):
    assert len(x) == len(y), what
    np.testing.assert_allclose([h["score"] for h in x], [h["score"] for h in y], atol=1e-5, err_msg=what)
    for h, g in zip(x, y):
      tied = sum(abs(k["score"] - h["score"]) <= 1e-5 for k in y) > 1
      assert tied or h["corpus_id"] == g["corpus_id"], (what, x, y)


@pytest.fixture(scope="module")
def dot_model_with_prompts(tmp_path_factory):
  """A random dot-product DistilBERT with prompts and a default prompt name in its config."""
  return make_reference_checkpoint(
    tmp_path_factory.mktemp("dot_prompts"),
    seed=4,
    n_layers=2,
    dim=64,
    n_heads=4,
    hidden_dim=128,
    max_seq_length=64,
    prompts=PROMPTS,
    default_prompt_name="passage",
  )


@pytest.mark.parametrize("which", ["minilm", "dot_model_with_prompts"])
def test_one_script_two_imports(which, request):
  path = str(request.getfixturevalue(which))
  theirs = script(sentence_transformers, path)
  ours = script(distilbert_jax, path)
  _compare(ours, theirs)
  if which == "dot_model_with_prompts":
    assert ours["similarity_fn_name"] == "dot" and ours["default_prompt_name"] == "passage"
    without_prompt = distilbert_jax.SentenceTransformer(path).encode(DOCS, prompt="")
    assert not np.allclose(ours["encode"], without_prompt, atol=1e-3)  # the default prompt is applied


def test_save_round_trips_similarity_and_prompts(dot_model_with_prompts, tmp_path):
  model = distilbert_jax.SentenceTransformer(str(dot_model_with_prompts), truncate_dim=32)
  model.max_seq_length = 48
  model.save(tmp_path / "st")
  theirs = sentence_transformers.SentenceTransformer(str(tmp_path / "st"), device="cpu")
  assert theirs.similarity_fn_name == "dot" and theirs.default_prompt_name == "passage"
  assert theirs.prompts["classify"] == PROMPTS["classify"] and theirs.max_seq_length == 48
  assert theirs.truncate_dim == 32
  _close(model.encode(DOCS), theirs.encode(DOCS), "saved model")
  back = distilbert_jax.SentenceTransformer(tmp_path / "st")
  assert (back.similarity_fn_name, back.default_prompt_name, back.truncate_dim) == ("dot", "passage", 32)
  _close(back.encode(DOCS), model.encode(DOCS), "reloaded")
  model.save_jax(tmp_path / "ours")
  ours = distilbert_jax.SentenceTransformer(tmp_path / "ours")
  assert ours.prompts == model.prompts and ours.similarity_fn_name == "dot" and ours.max_seq_length == 48


def test_sentence_transformers_evaluators_give_their_numbers(minilm):
  from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
  )

  corpus = {f"d{i}": t for i, t in enumerate(DOCS)}
  queries = {f"q{i}": q for i, q in enumerate(QUERIES)}
  relevant = {"q0": {"d1", "d2"}, "q1": {"d3"}, "q2": {"d5"}, "q3": {"d0", "d7"}}
  ir = InformationRetrievalEvaluator(queries, corpus, relevant, name="ir")
  sts = EmbeddingSimilarityEvaluator(DOCS[:8], DOCS[8:16], [i / 8 for i in range(8)], name="sts")
  theirs = sentence_transformers.SentenceTransformer(str(minilm), device="cpu")
  ours = distilbert_jax.SentenceTransformer(str(minilm), tensor_type="torch")
  for evaluator in (ir, sts):
    a, b = evaluator(ours), evaluator(theirs)
    assert a.keys() == b.keys()
    for key in a:
      assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
  assert ours.model_card_data.eval_results  # recorded as theirs records them


@pytest.mark.parametrize(
  "call,error,match",
  [
    (lambda m: m.encode([1, "a"]), TypeError, r"sentences\[0\] is int"),
    (lambda m: m.encode(["a", None]), TypeError, r"sentences\[1\] is NoneType"),
    (lambda m: m.encode(None), TypeError, "needs sentences"),
    (lambda m: m.encode(["a"], batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
    (lambda m: m.encode(["a"], batch_size=-1), ValueError, "batch_size must be a positive integer, got -1"),
    (lambda m: m.encode(["a", "b"], precision="int4"), ValueError, "precision 'int4' is not one of"),
    (
      lambda m: m.encode(["a"], prompt_name="nope"),
      ValueError,
      "Prompt name 'nope' not found in the configured prompts dictionary with keys",
    ),
    (lambda m: m.encode(["a"], output_value="cls"), ValueError, "output_value 'cls'"),
    (
      lambda m: setattr(m, "max_seq_length", 513),
      ValueError,
      "max_seq_length 513 is larger than the model's max_position_embeddings 512",
    ),
    (lambda m: setattr(m, "similarity_fn_name", "jaccard"), ValueError, "similarity_fn_name 'jaccard'"),
    (lambda m: distilbert_jax.util.semantic_search(np.ones((1, 4)), np.ones((2, 4)), top_k=0), ValueError, "top_k"),
    (
      lambda m: distilbert_jax.util.semantic_search(np.ones((1, 4)), np.ones((2, 4)), score_function="jaccard"),
      ValueError,
      "score_function 'jaccard'",
    ),
  ],
)
def test_bad_input_is_a_clear_error(tiny_model, call, error, match):
  tiny_model.max_seq_length = 128
  with pytest.raises(error, match=match):
    call(tiny_model)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
  return distilbert_jax.SentenceTransformer(tiny_checkpoint)


def test_max_seq_length_follows_setting(tiny_checkpoint):
  model = distilbert_jax.SentenceTransformer(tiny_checkpoint)
  long_text = " ".join(["word"] * 300)
  model.max_seq_length = 32
  assert model.tokenize([long_text])["input_ids"].shape == (1, 32)
  short = model.encode(long_text)
  model.max_seq_length = 128  # and back up: longer buckets, no "longer than the largest bucket" error
  assert model.tokenize([long_text])["input_ids"].shape == (1, 128)
  assert not np.allclose(model.encode(long_text), short)


def test_non_finite_embeddings_are_an_error():
  corpus = np.ones((5, 4), np.float32)
  corpus[3, 1] = np.nan
  with pytest.raises(ValueError, match="corpus_embeddings: row 3 holds NaN or inf"):
    distilbert_jax.util.semantic_search(np.ones((1, 4)), corpus)
  with pytest.raises(ValueError, match="query_embeddings: row 0 holds NaN or inf"):
    distilbert_jax.util.semantic_search(np.full((1, 4), np.inf), np.ones((5, 4)))


def test_device_names(tiny_checkpoint):
  import jax

  model = distilbert_jax.SentenceTransformer(tiny_checkpoint, device="cpu:0", tensor_type="jax")
  assert model.device == jax.devices("cpu")[0] and model.devices == [jax.devices("cpu")[0]]
  torch_world = distilbert_jax.SentenceTransformer(tiny_checkpoint, device="cpu:0", tensor_type="torch")
  assert torch_world.device == torch.device("cpu")  # where the returned tensors are
  assert torch_world.encode(["a"], convert_to_tensor=True).device == torch_world.device
  if not any(d.platform == "gpu" for d in jax.devices()):
    with pytest.raises(ValueError, match="device 'cuda': JAX has no gpu devices here"):
      distilbert_jax.SentenceTransformer(tiny_checkpoint, device="cuda")
  with pytest.raises(ValueError, match="device 'mps'"):
    distilbert_jax.SentenceTransformer(tiny_checkpoint, device="mps")
