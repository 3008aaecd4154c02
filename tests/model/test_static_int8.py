"""Static int8 (calibrated input steps, `quantize.static_int8_layer`, `encode.calibration`): the layer's algebra
against a float64 reference, calibration reading real tokens only, the file round trip and its damaged forms,
and the encoder: batch-invariant, stacked layers alike, close to float32 on real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from distilbert_jax.encode.calibration import (
  CALIBRATION_FILE,
  calibrate_int8,
  load_int8_calibration,
  save_int8_calibration,
)
from distilbert_jax.model.quantize import int8_dense, quantize_dense_params, static_int8_layer
from tests.conftest import SCIFACT, TEXTS


def _outlier_inputs(rng, tokens=256, width=48):
  """Activations with a few outlier channels (as a transformer's), and a kernel."""
  x = rng.normal(size=(tokens, width)).astype(np.float32)
  x[:, [3, 17]] *= 40.0
  kernel = rng.normal(scale=0.05, size=(width, 24)).astype(np.float32)
  return x, kernel


def test_static_layer_keeps_the_product_and_its_steps_follow_the_calibrated_range():
  """x / step rounds into [-127, 127] on the calibration data itself (nothing clipped), the int8 kernel rounds the
  kernel with its rows times the steps, and the product is within 2% of float64's (outlier channels 40x the
  others); an input past the range is clipped to +-127 steps and stays finite."""
  rng = np.random.default_rng(0)
  x, kernel = _outlier_inputs(rng)
  absmax = np.abs(x).max(0)
  q, scale, step = static_int8_layer("layer", kernel, absmax)
  assert q.shape == (24, 48) and scale.shape == (24,) and step.shape == (48,)
  codes = x / step
  assert np.abs(codes).max() <= 127 * (1 + 1e-6)
  # The folded kernel (each row times its step) is what the int8 codes round, at most half a step off per weight.
  folded = kernel.astype(np.float64) * step[:, None]
  assert (np.abs(q.T * scale.astype(np.float64) - folded) <= scale / 2 * (1 + 1e-5)).all()
  want = x.astype(np.float64) @ kernel.astype(np.float64)
  got = np.asarray(int8_dense(jnp.asarray(x), jnp.asarray(q), jnp.asarray(scale), input_step=jnp.asarray(step)))
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02
  big = x[:1] * 3  # past the calibrated range: codes clip, the product stays finite
  out = np.asarray(int8_dense(jnp.asarray(big), jnp.asarray(q), jnp.asarray(scale), input_step=jnp.asarray(step)))
  assert np.isfinite(out).all()


def test_static_parameters_name_every_mismatch_and_bad_range_together():
  rng = np.random.default_rng(1)
  tree = {
    "a": {"kernel": rng.normal(size=(8, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)},
    "b": {"kernel": rng.normal(size=(4, 8)).astype(np.float32)},
  }
  out = quantize_dense_params(tree, {"a": np.ones(8), "b": np.ones(4)})
  assert set(out["a"]) == {"kernel_int8", "kernel_scale", "input_step", "bias"} and out["b"]["input_step"].shape == (4,)
  with pytest.raises(ValueError, match=r"none for \['b'\]; entries of no dense layer: \['c'\]"):
    quantize_dense_params(tree, {"a": np.ones(8), "c": np.ones(4)})
  with pytest.raises(ValueError, match=r"calibration of a: max \|input\| of shape \(4,\), kernel \(8, 4\)"):
    quantize_dense_params(tree, {"a": np.ones(4), "b": np.ones(4)})
  with pytest.raises(ValueError, match="calibration of b: max .input. must be finite"):
    quantize_dense_params(tree, {"a": np.ones(8), "b": np.array([1, np.nan, 1, 1])})
  with pytest.raises(ValueError, match="calibration of b: max .input. must be finite, >= 0 and not all 0"):
    quantize_dense_params(tree, {"a": np.ones(8), "b": np.zeros(4)})


def test_calibration_counts_real_tokens_only(tiny_checkpoint):
  """Batched with padding (a short text beside long ones) the ranges equal the maximum of each text calibrated
  alone (no padding at all): padding never counts. Every dense layer of the model gets one, per input channel."""
  texts = ["a", TEXTS[0], TEXTS[1] * 3, "short one"]
  together = calibrate_int8(tiny_checkpoint, texts, batch_size=4)
  alone = [calibrate_int8(tiny_checkpoint, [t], batch_size=1) for t in texts]
  assert len(together) == 2 * 6 and all(name.startswith("transformer/layer_") for name in together)
  for name, value in together.items():
    np.testing.assert_allclose(value, np.max([a[name] for a in alone], axis=0), rtol=1e-5, atol=1e-6)
  assert together["transformer/layer_0/ffn/lin2"].shape == (64,)
  with pytest.raises(ValueError, match="needs texts: got none"):
    calibrate_int8(tiny_checkpoint, [])


def test_calibration_file_round_trip_and_damaged_files_are_named(tmp_path):
  absmax = {"transformer/layer_0/ffn/lin1": np.array([1.5, 0.0, 2.0], np.float32)}
  path = save_int8_calibration(absmax, tmp_path / CALIBRATION_FILE, n_texts=3)
  back = load_int8_calibration(path)
  np.testing.assert_array_equal(back["transformer/layer_0/ffn/lin1"], absmax["transformer/layer_0/ffn/lin1"])
  assert json.loads(path.read_text())["calibration_texts"] == 3
  with pytest.raises(FileNotFoundError, match="no int8 calibration .make it with"):
    load_int8_calibration(tmp_path / "missing.json")
  bad = tmp_path / "bad.json"
  cases = [
    ("{not json", "not a JSON document"),
    (json.dumps([1, 2]), "format 'list', expected 1"),
    (json.dumps({"format": 2, "input_absmax": {}}), "format 2, expected 1"),
    (json.dumps({"format": 1, "input_absmax": {}}), "'input_absmax' is not a non-empty object"),
    (json.dumps({"format": 1, "input_absmax": {"x": [1, -2]}}), r"input_absmax\['x'\].*finite numbers >= 0"),
    (json.dumps({"format": 1, "input_absmax": {"x": "abc"}}), r"input_absmax\['x'\]"),
    (json.dumps({"format": 1, "input_absmax": {"x": [[1.0]]}}), r"input_absmax\['x'\]"),
  ]
  for text, message in cases:
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
      load_int8_calibration(bad)
  with pytest.raises(ValueError, match="finite numbers >= 0"):
    save_int8_calibration({"x": [np.inf]}, tmp_path / "out.json", n_texts=1)
  assert not (tmp_path / "out.json").exists()


def test_static_int8_encoding_is_batch_invariant_saved_with_the_model_and_refuses_misuse(tiny_checkpoint, tmp_path):
  """Deterministic static int8: a text's bits do not depend on the batch; stacked layers give the same bits; a
  saved model carries its calibration, which int8_calibration="model" reads back to the same embeddings."""
  from distilbert_jax import SentenceTransformer

  absmax = calibrate_int8(tiny_checkpoint, TEXTS[:6])
  model = SentenceTransformer(tiny_checkpoint, dtype="int8", int8_calibration=absmax, deterministic=True)
  full = model.encode(TEXTS, batch_size=8)
  for i in (0, 3):
    np.testing.assert_array_equal(model.encode([TEXTS[i]], batch_size=1)[0], full[i])
  stacked = SentenceTransformer(tiny_checkpoint, dtype="int8", int8_calibration=absmax, scan_layers=True)
  np.testing.assert_array_equal(stacked.encode(TEXTS, batch_size=8), full)
  dynamic = SentenceTransformer(tiny_checkpoint, dtype="int8").encode(TEXTS, batch_size=8)
  assert not np.array_equal(dynamic, full)  # the static steps are in use
  float32 = SentenceTransformer(tiny_checkpoint).encode(TEXTS, batch_size=8)
  cos = (full * float32).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(float32, axis=1)
  assert cos.min() > 0.99, cos.min()
  saved = model.save(tmp_path / "saved")
  assert (saved / CALIBRATION_FILE).is_file()
  again = SentenceTransformer(saved, dtype="int8", int8_calibration="model", deterministic=True)
  np.testing.assert_array_equal(again.encode(TEXTS, batch_size=8), full)
  with pytest.raises(ValueError, match="needs dtype 'int8', not 'float32'"):
    SentenceTransformer(tiny_checkpoint, int8_calibration=absmax)
  with pytest.raises(FileNotFoundError, match=CALIBRATION_FILE):
    SentenceTransformer(tiny_checkpoint, dtype="int8", int8_calibration="model")
  with pytest.raises(ValueError, match="none for .*'transformer/layer_1/ffn/lin2'"):
    partial = {k: v for k, v in absmax.items() if k != "transformer/layer_1/ffn/lin2"}
    SentenceTransformer(tiny_checkpoint, dtype="int8", int8_calibration=partial)


def test_static_int8_of_real_minilm_stays_close_to_float32_on_held_out_texts(minilm, scifact):
  """Calibrated on 60 SciFact abstracts, checked on 60 others and 60 queries none of them calibrated on: within
  the cosine the per-token int8 keeps (tolerance: 0.99 every text, 0.995 on average; measured 0.994 / 0.997 at
  300 calibration texts, quantize.SMOOTHING_ALPHA)."""
  from distilbert_jax import SentenceTransformer
  from distilbert_jax.data import beir

  data = beir.load_beir(SCIFACT, split="test")
  absmax = calibrate_int8(minilm, data.corpus_texts[0:120:2])
  held_out = data.corpus_texts[1:120:2] + data.query_texts[:60]
  float32 = SentenceTransformer(minilm).encode(held_out)
  static = SentenceTransformer(minilm, dtype="int8", int8_calibration=absmax).encode(held_out)
  cos = (static * float32).sum(1) / np.linalg.norm(static, axis=1) / np.linalg.norm(float32, axis=1)
  assert cos.min() > 0.99 and cos.mean() > 0.995, (cos.min(), cos.mean())


def test_a_nan_activation_in_calibration_is_refused_by_layer(tiny_checkpoint, monkeypatch):
  """A NaN reaching dense layers' inputs (a NaN GELU output channel in every FFN) is named by layer, from the first
  it reaches on: the running maximum never loses it (XLA:CPU's own maximum may)."""
  from distilbert_jax.model import transformer

  real = transformer.activation_fn
  monkeypatch.setattr(transformer, "activation_fn", lambda name: lambda x: real(name)(x).at[..., 5].set(jnp.nan))
  with pytest.raises(ValueError, match=r"inputs of \['transformer/layer_0/ffn/lin2', .* hold NaN") as raised:
    calibrate_int8(tiny_checkpoint, TEXTS[:2])
  named = str(raised.value)
  assert "layer_0/attention" not in named and "layer_0/ffn/lin1" not in named and "layer_1/ffn/lin2" in named
