"""The conversion scripts, run as a user runs them (`python conversion/NAME.py`, from the repository root): the
round trip through both layouts keeps PyTorch's outputs, the parity report, the tensor listing, and the seeded
reference checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import sentence_transformers
from safetensors.numpy import load_file, save_file

from conversion.compare import parity_report
from conversion.inspect_checkpoint import inspect
from conversion.reference_checkpoint import make_reference_checkpoint
from distilbert_jax import SentenceTransformer
from distilbert_jax.checkpoint.hf_config import read_config
from distilbert_jax.checkpoint.names import parameter_shapes
from tests.conftest import TEXTS

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args) -> subprocess.CompletedProcess:
  out = subprocess.run(
    [sys.executable, f"conversion/{script}.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_round_trip_through_both_scripts_keeps_pytorch_outputs(tiny_checkpoint, tmp_path):
  run("to_jax", tiny_checkpoint, tmp_path / "jax")
  assert (tmp_path / "jax" / "params.safetensors").exists()
  run("to_sentence_transformers", tmp_path / "jax", tmp_path / "st")
  before = sentence_transformers.SentenceTransformer(str(tiny_checkpoint), device="cpu").encode(TEXTS)
  after = sentence_transformers.SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(TEXTS)
  np.testing.assert_allclose(after, before, atol=1e-6, rtol=0)
  np.testing.assert_allclose(SentenceTransformer(tmp_path / "jax").encode(TEXTS), before, atol=1e-5, rtol=0)


def test_compare_reports_jax_torch_and_the_oracle(tiny_checkpoint):
  report = parity_report(tiny_checkpoint)
  assert list(report) == ["jax_vs_oracle", "torch_vs_oracle", "jax_vs_torch"]
  assert report["jax_vs_torch"]["max_abs_diff"] < 1e-5 and report["jax_vs_torch"]["min_cosine"] > 0.99999
  assert report["jax_vs_oracle"]["top_k_agreement"] == 1.0
  only_oracle = json.loads(run("compare", tiny_checkpoint, "--no-torch", "--json").stdout)
  assert list(only_oracle) == ["jax_vs_oracle"] and only_oracle["jax_vs_oracle"]["max_abs_diff"] < 1e-5


def test_inspect_maps_every_tensor_and_marks_a_stranger(tiny_checkpoint, tmp_path):
  config = read_config(tiny_checkpoint / "config.json")
  rows = inspect(str(tiny_checkpoint))
  mapped = {r["maps_to"] for r in rows} - {"ignored"}
  assert mapped == {"/".join(p) for p in parameter_shapes(config)}
  assert all(r["dtype"] == "F32" for r in rows)
  copy = tmp_path / "copy"
  subprocess.run(["cp", "-r", str(tiny_checkpoint), str(copy)], check=True)
  tensors = load_file(copy / "model.safetensors")
  save_file({**tensors, "transformer.layer.0.extra.weight": np.zeros((2, 3), np.float32)}, copy / "model.safetensors")
  listed = json.loads(run("inspect_checkpoint", copy, "--json").stdout)
  stranger = [r for r in listed if r["name"] == "transformer.layer.0.extra.weight"]
  assert stranger == [
    {"name": "transformer.layer.0.extra.weight", "shape": [2, 3], "dtype": "F32", "maps_to": "UNMAPPED"}
  ]


def test_inspect_lists_our_directory_by_parameter(tiny_checkpoint, tmp_path):
  run("to_jax", tiny_checkpoint, tmp_path / "jax")
  rows = inspect(str(tmp_path / "jax"))
  assert {r["name"] for r in rows} == {
    "/".join(p) for p in parameter_shapes(read_config(tmp_path / "jax" / "config.json"))
  }


def test_reference_checkpoint_is_seeded_and_random_everywhere(tmp_path):
  small = dict(n_layers=1, dim=16, n_heads=2, hidden_dim=32, max_seq_length=32)
  a = load_file(make_reference_checkpoint(tmp_path / "a", seed=3, **small) / "model.safetensors")
  b = load_file(make_reference_checkpoint(tmp_path / "b", seed=3, **small) / "model.safetensors")
  c = load_file(make_reference_checkpoint(tmp_path / "c", seed=4, **small) / "model.safetensors")
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  floats = [k for k in a if a[k].dtype == np.float32]
  assert all(not np.array_equal(a[k], c[k]) for k in floats)
  # Biases and norms are random too: a dropped or swapped tensor cannot hide behind zeros and ones.
  assert all(len(np.unique(a[k])) > 1 for k in floats), [k for k in floats if len(np.unique(a[k])) <= 1]
